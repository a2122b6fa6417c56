"""The micro-kernels of tensorized kernels (targets/runtime/tt_kernels.c) against what they
replace: the same TIR kernel built by TVM without tensorizing, NumPy's integer arithmetic,
and a plain float32 loop in C run on every board (the Arm DSP path on Cortex-M, the
portable one on RISC-V and the host), bit for bit."""

import ctypes
import re
import subprocess

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_tinytrain.frontend import int8_ops
from tvm_tinytrain.passes import FuseKernels
from tvm_tinytrain.passes.fuse_kernels import GRADIENT_PAIR_PLANES_BYTES, PAIR_PLANE_MAX_BYTES
from tvm_tinytrain.targets.boards import TARGETS_DIR, build, get_board, run, write_board_files
from tvm_tinytrain.targets.invariant_loads import hoist_invariant_loads
from tvm_tinytrain.targets.tensorize import (CONV_PLANE, CONV_ROW, CONV_ROW_WIDE, DEPTHWISE_PLANE, DW_PLANE_REQUANT, DW_TRANSPOSE, FLOAT_CONV_PLANE, FLOAT_ROW, FLOAT_ROWS2, INT8_ROW,
                                             INT8_ROW_REQUANT, INT8_ROWS2, INT8_ROWS2_REQUANT, REQUANT,
                                             FOLDS, ROW_REQUANT_STAGED, ROWS2_REQUANT_PLANES_STAGED, STAGE, STAGED,
                                             tensorize)

KERNELS_C = TARGETS_DIR / "runtime" / "tt_kernels.c"
BOARDS = ["host", "cortex-m4", "cortex-m7", "cortex-m33", "riscv32"]


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    """tt_kernels.c as a host shared library, loaded globally so that TVM's LLVM JIT finds
    the micro-kernel symbol a tensorized PrimFunc calls."""
    lib = tmp_path_factory.mktemp("kernels") / "libtt_kernels.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror",
                    "-o", str(lib), str(KERNELS_C)], check=True)
    return ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)


def _one_fused_kernel(bb: relax.BlockBuilder) -> tvm.tirx.PrimFunc:
    """The single kernel FuseKernels makes of the builder's legalized function."""
    mod = FuseKernels(func_names=("main",))(relax.transform.LegalizeOps()(bb.get()))
    prims = [f for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(prims) == 1
    return prims[0]


def test_softmax_reductions_are_computed_once():
    """A log-softmax's maximum and sum of exponentials, one value each, stay in front of the
    loop writing its outputs: inside it they were computed again for every output (ten
    exponentials each, in double precision: a library routine where the FPU has single
    precision only)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 10), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.log_softmax(relax.op.multiply(x, relax.const(np.float32(0.5)))))
        bb.emit_func_output(out)
    sch = tvm.s_tir.Schedule(_one_fused_kernel(bb))
    *reductions, last = sch.get_child_blocks(sch.get_sblock("root"))
    outer = [sch.get_sref(loop) for loop in sch.get_loops(last)]
    assert len(reductions) == 2
    assert not any(sch.get_sref(loop).same_as(o) for r in reductions for loop in sch.get_loops(r) for o in outer)


def mask_bits_kernel(shape: tuple, condition):
    """The fused PrimFunc packing `condition(x)` 8 elements a byte, as PackBackwardMasks
    writes it."""
    n = int(np.prod(shape))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            cond = bb.emit(condition(x))
            bits = relax.op.astype(relax.op.reshape(cond, (n // 8, 8)), "uint8")
            weights = relax.const(np.array([1 << k for k in range(8)], np.uint8))
            out = bb.emit_output(relax.op.sum(relax.op.multiply(bits, weights), axis=1))
        bb.emit_func_output(out)
    return _one_fused_kernel(bb)


def _f32(value):
    return relax.const(np.float32(value))


@pytest.mark.parametrize("shape, condition", [
    ((1, 16, 4, 4), lambda x: relax.op.logical_and(relax.op.greater(x, _f32(-128.49)), relax.op.less(x, _f32(127.49)))),
    ((1, 8, 2, 4), lambda x: relax.op.greater(x, _f32(0.0))),
    ((2, 12), lambda x: relax.op.logical_and(relax.op.greater_equal(x, _f32(0.0)), relax.op.less_equal(x, _f32(6.0)))),
    ((1, 3, 8, 8), lambda x: relax.op.logical_and(relax.op.less(_f32(-1.5), x), relax.op.greater(_f32(-0.0), x))),
    ((1, 40), lambda x: relax.op.less_equal(x, _f32(float("inf")))),
])
def test_mask_bits_equal_the_tir_kernel(host_kernels, shape, condition):
    """The bit masks the backward pass keeps, 8 conditions a byte (tt_mask_bits_f32: each
    element's bits mapped to an integer that orders as the floats do, the bounds one unsigned
    range test): the same bytes as TVM's float compares, on values at and around the bounds,
    both zeros, infinities and NaNs of either sign."""
    func = mask_bits_kernel(shape, condition)
    swapped, replaced = tensorize(func)
    assert replaced == 1 and '"tt_mask_bits_f32"' in swapped.script()
    rng = np.random.default_rng(len(shape))
    special = np.float32([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 6.0, -1.5, 127.49, -128.49, 1e-45, -1e-45])
    special = np.concatenate([special, np.nextafter(special, np.float32(np.inf)), np.nextafter(special, np.float32(-np.inf))])
    for trial in range(3):
        x = (rng.standard_normal(shape) * 10.0 ** rng.integers(-2, 3)).astype(np.float32)
        x.reshape(-1)[:: 3] = rng.choice(special, x.size)[:: 3]
        # the bit weights, a parameter of the kernel: powers of two, or any bytes (sums that wrap)
        weights = np.uint8([1 << k for k in range(8)]) if trial < 2 else rng.integers(0, 256, 8).astype(np.uint8)
        out = np.zeros((x.size // 8,), np.uint8)
        assert np.array_equal(_run_llvm(func, [x, weights, out]), _run_llvm(swapped, [x, weights, out.copy()]))


def conv_kernel(channels: int, out_channels: int, h: int, w: int, x_zero: int, y_zero: int, *,
                kernel: int = 1, stride: int = 1, groups: int = 1):
    """The fused PrimFunc of one int8 conv with its requantization, as the project builds
    it (int8_ops + LegalizeOps + FuseKernels); padding keeps the size ("same")."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, channels, h, w), "int8"))
    wt = relax.Var("w", relax.TensorType((out_channels, channels // groups, kernel, kernel), "int8"))
    b = relax.Var("b", relax.TensorType((out_channels,), "int32"))
    scale = np.linspace(0.001, 0.02, out_channels).astype(np.float32)
    with bb.function("main", [x, wt, b]):
        with bb.dataflow():
            xf = bb.emit(relax.op.astype(x, "float32"))  # int8 activations, as Int8Activations stores them
            y = int8_ops.quantized_conv(bb, xf, wt, b, x_zero, scale, y_zero, strides=stride,
                                        padding=kernel // 2, groups=groups)
            out = bb.emit_output(relax.op.astype(y, "int8"))
        bb.emit_func_output(out)
    return _one_fused_kernel(bb), scale


def _run_llvm(func, args):
    lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target="llvm")
    tensors = [tvm.runtime.tensor(a) for a in args]
    lib["main"](*tensors)
    return tensors[-1].numpy()


@pytest.mark.parametrize("channels, out_channels, h, w, x_zero", [
    (8, 4, 3, 16, -128), (13, 3, 2, 7, -6), (120, 5, 2, 16, 0), (3, 2, 4, 4, 127), (576, 3, 1, 4, -128),
    (576, 4, 1, 5, -128), (9, 6, 2, 7, 5),
])
def test_tensorized_pointwise_equals_the_tir_kernel_and_numpy(host_kernels, channels, out_channels, h, w, x_zero):
    """Even output channels take two channels' rows and their requantization a call
    (tt_pw_rows2_requant_s8; a zero point of 0 is no addition in the TIR), from a staged row
    where a row has several channel pairs (tt_pw_rows2_requant_staged_s8); odd ones one
    channel's plane and its requantization (tt_pw_row_requant_s8, from staged input planes if
    its rows are 4k pixels wide: tt_pw_row_requant_staged_s8)."""
    y_zero = 0 if x_zero == 0 else -3
    func, scale = conv_kernel(channels, out_channels, h, w, x_zero, y_zero=y_zero)
    tensorized, replaced = tensorize(func)
    assert replaced == 2
    calls = re.findall(r"\b(tt_\w+_s8)\b", tensorized.script())
    if out_channels % 2 == 0:  # the pairs' weight folds once, the row staged once for its pairs
        assert calls == ([FOLDS, STAGE, STAGED[INT8_ROWS2_REQUANT]] if out_channels > 2 else [INT8_ROWS2_REQUANT])
    else:  # whole planes a call, from input planes staged once where the rows are 4k pixels wide
        assert calls == ([STAGE, ROW_REQUANT_STAGED] if w % 4 == 0 else [INT8_ROW_REQUANT])
    rng = np.random.default_rng(channels)
    for trial in range(5):
        x = rng.integers(-128, 128, (1, channels, h, w)).astype(np.float32)
        wt = rng.integers(-128, 128, (out_channels, channels, 1, 1)).astype(np.int8)
        if trial == 1:  # the extremes: saturated outputs, and sums past 2^24 (the float fallback)
            x[:] = 127 if x_zero < 0 else -128
            wt[0] = -128
            wt[1:] = 127
        b = rng.integers(-20000, 20000, out_channels).astype(np.int32)
        out = np.zeros((1, out_channels, h, w), np.int8)
        es = scale.reshape(1, -1, 1, 1)  # the requantization scales, a constant the kernel takes
        if trial == 3:  # biases past 2^24, which float32 rounds (the kernels' float fallback), unsaturated
            b[::2] = np.int32(2**25 + 1)
            es = np.full_like(es, 40.0 / 2**25)
        if trial == 4:  # scales whose products overflow, and scales that are not finite
            es = np.resize(np.float32([1e30, -1e30, np.inf, np.nan, -np.inf, 0.0]), out_channels).reshape(es.shape)
        plain = _run_llvm(func, [x.astype(np.int8), wt, b, es, out])
        fast = _run_llvm(tensorized, [x.astype(np.int8), wt, b, es, out.copy()])
        assert np.array_equal(plain, fast)
        if trial >= 3:  # NumPy's model adds the bias in int64: only TVM's kernel is the reference here
            continue
        acc = np.einsum("nchw,fc->nfhw", x.astype(np.int64) - x_zero, wt[:, :, 0, 0].astype(np.int64))
        bound = np.abs(wt[:, :, 0, 0].astype(np.int64)).sum(1) * max(127 - x_zero, 128 + x_zero)
        exact = bound <= 1 << 24  # float32 sums are exact integers: NumPy's int64 model applies
        ref = np.float32(acc + b[None, :, None, None]) * scale[None, :, None, None]
        ref = np.clip(np.rint(np.rint(ref) + np.float32(y_zero)), -128, 127).astype(np.int8)
        assert np.array_equal(fast[:, exact], ref[:, exact])
        if trial == 1 and channels * 128 * 255 > 1 << 24:
            assert not exact.all()  # the float fallback ran, and still equals the TIR


def split_conv_kernel(channels: int, out_channels: int, h: int, w: int, trained: int, x_zero: int):
    """conv_kernel whose weights are the concatenation of trained input channels and frozen
    ones (SplitTrainedChannels), which the kernel computes an output channel pair at a time."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, channels, h, w), "int8"))
    wt = relax.Var("w", relax.TensorType((out_channels, trained, 1, 1), "int8"))
    frozen = relax.Var("w_frozen", relax.TensorType((out_channels, channels - trained, 1, 1), "int8"))
    b = relax.Var("b", relax.TensorType((out_channels,), "int32"))
    scale = np.linspace(0.001, 0.02, out_channels).astype(np.float32)
    with bb.function("main", [x, wt, frozen, b]):
        with bb.dataflow():
            xf = bb.emit(relax.op.astype(x, "float32"))
            whole = bb.emit(relax.op.concat([wt, frozen], axis=1))
            y = int8_ops.quantized_conv(bb, xf, whole, b, x_zero, scale, -3, strides=1, padding=0, groups=1)
            out = bb.emit_output(relax.op.astype(y, "int8"))
        bb.emit_func_output(out)
    return _one_fused_kernel(bb), scale.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("channels, out_channels, h, w, trained", [(48, 6, 8, 8, 12), (20, 4, 3, 6, 5), (9, 2, 4, 4, 1)])
def test_tensorized_pointwise_with_split_weights_equals_the_tir_kernel(host_kernels, channels, out_channels, h, w,
                                                                      trained):
    """Weights concatenated in the kernel keep output channel pairs outside rows: the pairs'
    input, whole planes 4k pixels wide, is staged once for all of them (if there are several:
    tt_pw_rows2_requant_planes_staged_s8), the same bits as the TIR's loops."""
    func, scale = split_conv_kernel(channels, out_channels, h, w, trained, x_zero=-128)
    tensorized, _ = tensorize(func)
    calls = re.findall(r'"(tt_\w+)"', tensorized.script())
    staged = w % 4 == 0 and out_channels > 2  # one pair reads its input once anyway
    assert calls == ([STAGE, ROWS2_REQUANT_PLANES_STAGED] if staged else [INT8_ROWS2_REQUANT])
    rng = np.random.default_rng(channels)
    for trial in range(3):
        x = rng.integers(-128, 128, (1, channels, h, w)).astype(np.int8)
        wt = rng.integers(-128, 128, (out_channels, channels, 1, 1)).astype(np.int8)
        if trial == 1:  # sums past 2^24 where the rows are long enough: the float fallback
            x[:] = 127
            wt[:] = -128
        b = rng.integers(-20000, 20000, out_channels).astype(np.int32)
        out = np.zeros((1, out_channels, h, w), np.int8)
        args = [x, np.ascontiguousarray(wt[:, :trained]), np.ascontiguousarray(wt[:, trained:]), b, scale]
        plain = _run_llvm(func, args + [out])
        fast = _run_llvm(tensorized, args + [out.copy()])
        assert np.array_equal(plain, fast)


def _windowed_conv_matches(channels, out_channels, h, w, kernel, stride, x_zero, groups, micro_kernel):
    """An int8 conv with a window ("same" padding), tensorized: `micro_kernel` is called, and
    on random inputs and on saturating ones the result equals TVM's untensorized kernel and
    NumPy's integer model, bit for bit."""
    func, scale = conv_kernel(channels, out_channels, h, w, x_zero, y_zero=5, kernel=kernel, stride=stride,
                              groups=groups)
    tensorized, replaced = tensorize(func)
    calls = re.findall(r'"(tt_\w+)"', tensorized.script())
    assert calls == [micro_kernel] if micro_kernel == DW_PLANE_REQUANT else micro_kernel in calls and REQUANT in calls
    rng = np.random.default_rng(h * kernel + groups)
    pad = kernel // 2
    out_h, out_w = (h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1
    per_group = channels // groups
    for trial in range(3):
        x = rng.integers(-128, 128, (1, channels, h, w)).astype(np.int8)
        wt = rng.integers(-128, 128, (out_channels, per_group, kernel, kernel)).astype(np.int8)
        if trial == 1:  # saturation: every product at its largest
            x[:] = 127 if x_zero < 0 else -128
            wt[:] = -128
        b = rng.integers(-20000, 20000, out_channels).astype(np.int32)
        es = scale.reshape(1, -1, 1, 1)
        out = np.zeros((1, out_channels, out_h, out_w), np.int8)
        plain = _run_llvm(func, [x, wt, b, es, out])
        fast = _run_llvm(tensorized, [x, wt, b, es, out.copy()])
        assert np.array_equal(plain, fast)
        xp = np.pad(x.astype(np.int64) - x_zero, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        acc = np.zeros((1, out_channels, out_h, out_w), np.int64)
        for f in range(out_channels):
            g = f // (out_channels // groups)
            for c in range(per_group):
                for ky in range(kernel):
                    for kx in range(kernel):
                        acc[0, f] += xp[0, g * per_group + c, ky:ky + stride * out_h:stride,
                                        kx:kx + stride * out_w:stride] * np.int64(wt[f, c, ky, kx])
        ref = np.float32(acc + b[None, :, None, None]) * scale[None, :, None, None]
        ref = np.clip(np.rint(np.rint(ref) + np.float32(5)), -128, 127).astype(np.int8)
        assert np.array_equal(fast, ref)


@pytest.mark.parametrize("channels, h, w, kernel, stride, x_zero", [
    (4, 8, 8, 3, 1, -128), (3, 9, 7, 3, 2, -6), (2, 16, 16, 7, 2, 0), (2, 8, 8, 5, 1, 127), (2, 32, 32, 3, 1, 3),
    (2, 64, 64, 3, 2, -128), (2, 3, 200, 3, 1, -5),  # bands of padded rows; too wide for a band: the border path
])
def test_tensorized_depthwise_equals_the_tir_kernel_and_numpy(host_kernels, channels, h, w, kernel, stride, x_zero):
    """Each channel's plane and its requantization in one call, the float32 sums never stored."""
    _windowed_conv_matches(channels, channels, h, w, kernel, stride, x_zero, channels, DW_PLANE_REQUANT)


@pytest.mark.parametrize("channels, out_channels, h, w, kernel, stride, x_zero, groups", [
    (2, 2, 40, 36, 3, 1, -128, 2), (3, 4, 72, 70, 3, 2, 0, 1), (2, 2, 36, 40, 5, 1, 7, 2), (1, 2, 66, 66, 3, 2, -3, 1),
    (2, 2, 34, 34, 7, 1, 127, 2),
])
def test_tensorized_large_plane_conv_equals_the_tir_kernel_and_numpy(host_kernels, channels, out_channels, h, w,
                                                                     kernel, stride, x_zero, groups):
    """An int8 conv with a window whose output plane is too large for a plane accumulator (a
    stem, a depthwise conv at full resolution): a row accumulator, the rows that read no top or
    bottom padding computed by tt_conv_row_s8, the others by TVM's loop."""
    _windowed_conv_matches(channels, out_channels, h, w, kernel, stride, x_zero, groups, CONV_ROW)


@pytest.mark.parametrize("channels, out_channels, h, w, kernel, stride, x_zero", [
    (16, 2, 40, 36, 3, 1, -128), (8, 3, 130, 66, 3, 2, 7), (4, 2, 36, 34, 5, 1, 0),
])
def test_tensorized_large_plane_wide_window_conv_equals_the_tir_kernel_and_numpy(host_kernels, channels, out_channels,
                                                                                h, w, kernel, stride, x_zero):
    """A large plane's rows with windows of more than 49 taps (16 channels at 3x3): the row
    split as for the stem, each inside row through tt_conv_row_wide_s8 (tt_conv_plane_s8's
    code, a plane of one row)."""
    _windowed_conv_matches(channels, out_channels, h, w, kernel, stride, x_zero, 1, CONV_ROW_WIDE)


@pytest.mark.parametrize("channels, out_channels, h, w, kernel, stride, x_zero", [
    (8, 8, 8, 8, 3, 1, -3),      # the digits demo's conv
    (16, 3, 32, 32, 3, 1, -128),  # a ResNet-8 stage: 32x32, 16x16 and 8x8 planes
    (32, 2, 16, 16, 3, 2, 5),
    (64, 3, 8, 8, 3, 1, 127),     # 576 taps: the channels in passes; saturated, past 2^24 (the float loop)
    (5, 2, 9, 7, 3, 2, -6),       # an odd width at stride 2: the edges cut on the left only
    (3, 4, 6, 11, 5, 1, 4),       # a 5x5 window: every tap minus the zero point
    (2, 2, 4, 5, 3, 1, 0),        # rows narrower than a step of four: a pair, then one
])
def test_tensorized_conv_plane_equals_the_tir_kernel_and_numpy(host_kernels, channels, out_channels, h, w, kernel,
                                                               stride, x_zero):
    """An int8 conv with a window over several input channels on a plane of at most
    PLANE_ACCUMULATOR_BYTES (ResNet's convs, the digits demo's): a plane accumulator, an
    output channel's plane a call of tt_conv_plane_s8, padding included."""
    _windowed_conv_matches(channels, out_channels, h, w, kernel, stride, x_zero, 1, CONV_PLANE)


def int8_conv_input_gradient_kernel(channels: int, out_channels: int, h: int, w: int, kernel: int, trained: int):
    """The fused PrimFunc of an int8 conv's input gradient as the gradient pass writes it for
    a conv whose weights join `trained` input channels to frozen ones (SplitTrainedChannels):
    conv2d_transpose of the float32 output gradient with the int8 weights cast to float32."""
    bb = relax.BlockBuilder()
    g = relax.Var("g", relax.TensorType((1, out_channels, h, w), "float32"))
    wt = relax.Var("w", relax.TensorType((out_channels, trained, kernel, kernel), "int8"))
    frozen = relax.Var("w_frozen", relax.TensorType((out_channels, channels - trained, kernel, kernel), "int8"))
    with bb.function("main", [g, wt, frozen]):
        with bb.dataflow():
            whole = bb.emit(relax.op.astype(relax.op.concat([wt, frozen], axis=1), "float32"))
            dx = bb.emit(relax.op.nn.conv2d_transpose(g, whole, padding=kernel // 2))
            out = bb.emit_output(relax.op.multiply(dx, relax.const(np.float32(0.25))))
        bb.emit_func_output(out)
    return _one_fused_kernel(bb)


@pytest.mark.parametrize("channels, out_channels, h, w, kernel, trained", [(16, 8, 8, 8, 3, 4), (5, 3, 6, 9, 3, 1)])
def test_int8_conv_input_gradient_is_a_float_conv_plane(host_kernels, channels, out_channels, h, w, kernel, trained):
    """An int8 conv's input gradient: its weights cast to float32 an input-gradient channel at a
    time (exact), then the float conv plane kernel reading the window flipped (tt_conv_plane_f32);
    the same bits as TVM's own build, infinities and NaNs included."""
    func = int8_conv_input_gradient_kernel(channels, out_channels, h, w, kernel, trained)
    tensorized, replaced = tensorize(func)
    assert replaced == 1 and FLOAT_CONV_PLANE in tensorized.script()
    rng = np.random.default_rng(channels)
    for trial in range(3):
        g = (rng.standard_normal((1, out_channels, h, w)) * np.float32(1e-3)).astype(np.float32)
        if trial == 1:
            g[0, 0, 0, 0], g[0, -1, h // 2, w // 2] = np.float32(3e38), np.nan
        wt = rng.integers(-128, 128, (out_channels, channels, kernel, kernel)).astype(np.int8)
        args = [np.ascontiguousarray(wt[:, :trained]), np.ascontiguousarray(wt[:, trained:]), g]  # weights first
        out = np.zeros((1, channels, h, w), np.float32)
        plain = _run_llvm(func, args + [out])
        fast = _run_llvm(tensorized, args + [out.copy()])
        assert np.array_equal(plain.view(np.uint32), fast.view(np.uint32))


def expansion_kernel(channels: int, expanded: int, h: int, w: int, kernel: int, stride: int, x_zero: int,
                     m_zero: int):
    """The fused PrimFunc of an inverted bottleneck's expansion (an int8 pointwise conv, its
    int8 result) and the depthwise conv after it, as the project builds it."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, channels, h, w), "int8"))
    w1 = relax.Var("w1", relax.TensorType((expanded, channels, 1, 1), "int8"))
    b1 = relax.Var("b1", relax.TensorType((expanded,), "int32"))
    w2 = relax.Var("w2", relax.TensorType((expanded, 1, kernel, kernel), "int8"))
    b2 = relax.Var("b2", relax.TensorType((expanded,), "int32"))
    s1 = np.linspace(0.001, 0.02, expanded).astype(np.float32)
    s2 = np.linspace(0.002, 0.01, expanded).astype(np.float32)
    with bb.function("main", [x, w1, b1, w2, b2]):
        with bb.dataflow():
            xf = bb.emit(relax.op.astype(x, "float32"))
            m = int8_ops.quantized_conv(bb, xf, w1, b1, x_zero, s1, m_zero, strides=1, padding=0, groups=1)
            m = bb.emit(relax.op.astype(bb.emit(relax.op.astype(m, "int8")), "float32"))  # int8 activations
            y = int8_ops.quantized_conv(bb, m, w2, b2, m_zero, s2, -5, strides=stride, padding=kernel // 2,
                                        groups=expanded)
            out = bb.emit_output(relax.op.astype(y, "int8"))
        bb.emit_func_output(out)
    return _one_fused_kernel(bb), s1.reshape(1, -1, 1, 1), s2.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("channels, expanded, h, w, kernel, stride, x_zero", [
    (8, 16, 16, 16, 3, 2, -128), (5, 6, 7, 9, 3, 1, 3), (16, 12, 8, 8, 5, 1, -128), (6, 5, 6, 6, 3, 1, -7),
    (16, 6, 6, 10, 3, 2, -128),
])
def test_tensorized_expansion_equals_the_tir_kernel(host_kernels, channels, expanded, h, w, kernel, stride, x_zero):
    """An expansion fused with its depthwise conv, two expanded channels at a time (one where
    their number is odd): both channels' whole planes and their requantization in one call
    (from the input planes staged once where its rows are 4k pixels wide), then, for each of
    the two, the depthwise conv's plane requantized in the same call that computes it."""
    func, s1, s2 = expansion_kernel(channels, expanded, h, w, kernel, stride, x_zero, m_zero=-128)
    tensorized, _ = tensorize(func)
    calls = re.findall(r'"(tt_\w+)"', tensorized.script())
    if expanded % 2:
        pointwise = ROW_REQUANT_STAGED if w % 4 == 0 else INT8_ROW_REQUANT
    else:
        pointwise = ROWS2_REQUANT_PLANES_STAGED if w % 4 == 0 else INT8_ROWS2_REQUANT
    assert calls[-2:] == [pointwise, DW_PLANE_REQUANT]
    assert re.search(rf'"{pointwise}", [^\n]*, {h * w}, ', tensorized.script())  # whole planes, not a row
    out_h, out_w = (h + 2 * (kernel // 2) - kernel) // stride + 1, (w + 2 * (kernel // 2) - kernel) // stride + 1
    rng = np.random.default_rng(channels * h)
    for trial in range(3):
        x = rng.integers(-128, 128, (1, channels, h, w)).astype(np.int8)
        w1 = rng.integers(-128, 128, (expanded, channels, 1, 1)).astype(np.int8)
        if trial == 1:  # saturated expanded values
            x[:] = 127
            w1[::2] = 127
        b1 = rng.integers(-20000, 20000, expanded).astype(np.int32)
        w2 = rng.integers(-128, 128, (expanded, 1, kernel, kernel)).astype(np.int8)
        b2 = rng.integers(-20000, 20000, expanded).astype(np.int32)
        out = np.zeros((1, expanded, out_h, out_w), np.int8)
        plain = _run_llvm(func, [x, w1, b1, s1, w2, b2, s2, out])  # the scales: constants the kernel takes
        fast = _run_llvm(tensorized, [x, w1, b1, s1, w2, b2, s2, out.copy()])
        assert np.array_equal(plain, fast)


def test_expansions_pair_only_small_planes():
    """Two expanded channels' planes a call only where one int8 plane takes at most
    PAIR_PLANE_MAX_BYTES (64x64), so the second plane adds at most 4 KB of workspace; a
    larger expansion keeps one channel's plane at a time."""
    assert 64 * 64 == PAIR_PLANE_MAX_BYTES < 64 * 68  # the two cases below lie either side of it
    for h, w, paired in ((64, 64, True), (64, 68, False)):
        func, _, _ = expansion_kernel(8, 4, h, w, 3, 2, -128, m_zero=-128)
        calls = set(re.findall(r'"(tt_\w+)"', tensorize(func)[0].script()))
        assert bool(calls & {INT8_ROWS2_REQUANT, ROWS2_REQUANT_PLANES_STAGED}) == paired, (h, w, calls)
        assert bool(calls & {INT8_ROW_REQUANT, ROW_REQUANT_STAGED}) == (not paired), (h, w, calls)


def depthwise_input_gradient_kernel(channels: int, h: int, w: int, kernel: int, stride: int):
    """The fused PrimFunc of an int8 depthwise conv's input gradient (h x w, padding kernel // 2),
    as Relax's gradient writes it: a conv2d_transpose of the float32 output gradient with the
    int8 weights."""
    pad = kernel // 2
    out_h, out_w = (h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1
    bb = relax.BlockBuilder()
    dy = relax.Var("dy", relax.TensorType((1, channels, out_h, out_w), "float32"))
    wt = relax.Var("w", relax.TensorType((channels, 1, kernel, kernel), "int8"))
    extra = (h - ((out_h - 1) * stride - 2 * pad + kernel), w - ((out_w - 1) * stride - 2 * pad + kernel))
    with bb.function("main", [dy, wt]):
        with bb.dataflow():
            dx = bb.emit(relax.op.nn.conv2d_transpose(dy, relax.op.astype(wt, "float32"), strides=stride,
                                                      padding=pad, output_padding=extra, groups=channels))
            out = bb.emit_output(relax.op.multiply(dx, relax.const(np.float32(0.25))))  # an epilogue (QAS)
        bb.emit_func_output(out)
    return _one_fused_kernel(bb), (out_h, out_w)


@pytest.mark.parametrize("channels, h, w, kernel, stride", [
    (3, 8, 8, 7, 2), (2, 4, 4, 5, 1), (2, 9, 7, 3, 2), (2, 16, 16, 3, 1), (1, 10, 6, 5, 2), (2, 9, 9, 5, 3),
    (2, 8, 8, 3, 1), (2, 4, 4, 3, 1), (1, 6, 6, 7, 1),
])
def test_tensorized_depthwise_input_gradient_equals_the_tir_kernel(host_kernels, channels, h, w, kernel, stride):
    """The input gradient of an int8 depthwise conv (float32 gradient, int8 weights): with a
    stride, a plane accumulator and tt_dw_transpose_f32s8, which adds only the taps on the
    stride's grid, bit for bit the TIR's sums (infinities and NaNs in the gradient included).
    At stride 1 the same (the taps off the plane skipped) from 5x5 windows up; 3x3 windows,
    and planes above 512 bytes, keep TVM's loop."""
    func, (out_h, out_w) = depthwise_input_gradient_kernel(channels, h, w, kernel, stride)
    tensorized, replaced = tensorize(func)
    expected = (stride > 1 or kernel >= 5) and h * w * 4 <= 512
    assert replaced == expected and (DW_TRANSPOSE in tensorized.script()) == expected
    rng = np.random.default_rng(h * kernel + stride)
    for trial in range(3):
        dy = (rng.standard_normal((1, channels, out_h, out_w)) * 10.0 ** rng.integers(-30, 30)).astype(np.float32)
        if trial == 2:
            dy[0, 0, 0, 0], dy[0, -1, -1, -1] = np.inf, np.nan
        wt = rng.integers(-128, 128, (channels, 1, kernel, kernel)).astype(np.int8)
        out = np.zeros((1, channels, h, w), np.float32)
        plain = _run_llvm(func, [wt, dy, out])  # the fused kernel takes the weights first
        fast = _run_llvm(tensorized, [wt, dy, out.copy()])
        assert np.array_equal(plain, fast, equal_nan=True)
        assert np.array_equal(np.signbit(plain), np.signbit(fast))


def input_gradient_kernel(channels: int, out_channels: int, h: int, w: int):
    """The fused PrimFunc of a pointwise conv's input gradient with int8 weights, as the
    gradient pass writes it (a 1x1 transposed conv of the float32 output gradient)."""
    bb = relax.BlockBuilder()
    dy = relax.Var("dy", relax.TensorType((1, out_channels, h, w), "float32"))
    wt = relax.Var("w", relax.TensorType((out_channels, channels, 1, 1), "int8"))
    with bb.function("main", [dy, wt]):
        with bb.dataflow():
            dx = bb.emit(relax.op.nn.conv2d_transpose(dy, relax.op.astype(wt, "float32")))
            out = bb.emit_output(relax.op.multiply(dx, relax.const(np.float32(0.25))))  # an epilogue (QAS)
        bb.emit_func_output(out)
    return _one_fused_kernel(bb)


@pytest.mark.parametrize("channels, out_channels, h, w", [
    (8, 16, 4, 8), (5, 3, 3, 7), (160, 48, 2, 4), (6, 4, 5, 5), (8, 16, 8, 8), (4, 6, 1, 12),
])
def test_tensorized_input_gradient_equals_the_tir_kernel(host_kernels, channels, out_channels, h, w):
    """An even number of input channels computes two channels' rows per call (FuseKernels
    pairs them), two whole planes where they take at most GRADIENT_PAIR_PLANES_BYTES (one
    call of h * w pixels), an odd one a row at a time."""
    func = input_gradient_kernel(channels, out_channels, h, w)
    tensorized, replaced = tensorize(func)
    calls = re.findall(r'"(tt_pw_rows?2?_f32s8)", (.*)\)', tensorized.script())
    assert replaced == 1 and [c for c, _ in calls] == [FLOAT_ROWS2 if channels % 2 == 0 else FLOAT_ROW]
    channels_and_width = re.search(r", (\d+), (\d+)", re.sub(r"\[[^]]*\]", "", calls[0][1])).groups()
    whole = channels % 2 == 0 and 2 * h * w * 4 <= GRADIENT_PAIR_PLANES_BYTES
    assert [int(n) for n in channels_and_width] == [out_channels, h * w if whole else w]
    rng = np.random.default_rng(channels)
    dy = (rng.standard_normal((1, out_channels, h, w)) * np.float32(1e-3)).astype(np.float32)
    dy[0, 0, 0, 0] = np.float32(3e38)  # an overflow to inf must come out the same too
    wt = rng.integers(-128, 128, (out_channels, channels, 1, 1)).astype(np.int8)
    out = np.zeros((1, channels, h, w), np.float32)
    plain = _run_llvm(func, [wt, dy, out])  # TVM puts the weights first
    fast = _run_llvm(tensorized, [wt, dy, out.copy()])
    assert np.array_equal(plain.view(np.uint32), fast.view(np.uint32))  # bit for bit, inf and NaN included


def float_conv_kernel(channels: int, out_channels: int, h: int, w: int, kernel: int, stride: int, groups: int,
                      relu_input: bool = False):
    """The fused PrimFunc of a float32 conv with its bias and ReLU, as a float model's; with
    `relu_input`, a ReLU in front of it too (FuseKernels fuses it into the conv)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, channels, h, w), "float32"))
    wt = relax.Var("w", relax.TensorType((out_channels, channels // groups, kernel, kernel), "float32"))
    b = relax.Var("b", relax.TensorType((1, out_channels, 1, 1), "float32"))
    with bb.function("main", [x, wt, b]):
        with bb.dataflow():
            xin = bb.emit(relax.op.nn.relu(x)) if relu_input else x
            y = bb.emit(relax.op.nn.conv2d(xin, wt, strides=stride, padding=kernel // 2, groups=groups))
            out = bb.emit_output(relax.op.nn.relu(relax.op.add(y, b)))
        bb.emit_func_output(out)
    return _one_fused_kernel(bb)


def float_conv_transpose_kernel(channels: int, out_channels: int, h: int, w: int, kernel: int):
    """The fused PrimFunc of a float32 conv's input gradient as the gradient pass writes it:
    conv2d_transpose at stride 1, padding keeping the size, then a ReLU mask."""
    bb = relax.BlockBuilder()
    g = relax.Var("g", relax.TensorType((1, channels, h, w), "float32"))
    wt = relax.Var("w", relax.TensorType((channels, out_channels, kernel, kernel), "float32"))
    with bb.function("main", [g, wt]):
        with bb.dataflow():
            dx = bb.emit(relax.op.nn.conv2d_transpose(g, wt, padding=kernel // 2))
            out = bb.emit_output(relax.op.nn.relu(dx))
        bb.emit_func_output(out)
    return _one_fused_kernel(bb)


@pytest.mark.parametrize("channels, out_channels, h, w, kernel", [(16, 8, 8, 8, 3), (3, 5, 9, 7, 3), (4, 2, 6, 6, 5)])
def test_tensorized_float_conv_transpose_equals_the_tir_kernel(host_kernels, channels, out_channels, h, w, kernel):
    """A float32 conv's input gradient (conv2d_transpose, stride 1) through tt_conv_plane_f32
    reading the window flipped: the same bits as TVM's own build, NaN and infinite inputs too."""
    func = float_conv_transpose_kernel(channels, out_channels, h, w, kernel)
    tensorized, replaced = tensorize(func)
    assert replaced == 1 and FLOAT_CONV_PLANE in tensorized.script()
    rng = np.random.default_rng(h * kernel + channels)
    for trial in range(3):
        g = rng.standard_normal((1, channels, h, w)).astype(np.float32)
        wt = rng.standard_normal((channels, out_channels, kernel, kernel)).astype(np.float32)
        if trial == 1:
            g[0, 0, h // 2, w // 2] = np.nan
            wt[0, 0, 0, 0] = np.inf
        if trial == 2:
            g[:, :, ::2] = -0.0
        out = np.zeros((1, out_channels, h, w), np.float32)
        plain = _run_llvm(func, [g, wt, out])
        fast = _run_llvm(tensorized, [g, wt, out.copy()])
        assert np.array_equal(plain.view(np.uint32), fast.view(np.uint32))


@pytest.mark.parametrize("channels, out_channels, h, w, kernel, stride, groups, relu_input", [
    (3, 4, 9, 7, 3, 1, 1, False), (4, 4, 8, 8, 3, 2, 1, True), (16, 2, 16, 16, 3, 1, 1, True),
    (6, 6, 10, 10, 5, 1, 6, False), (2, 3, 6, 6, 7, 1, 1, True), (4, 4, 32, 32, 3, 1, 4, False),
    (3, 2, 11, 13, 3, 2, 1, False),
])
def test_tensorized_float_conv_equals_the_tir_kernel(host_kernels, channels, out_channels, h, w, kernel, stride,
                                                     groups, relu_input):
    """A float32 conv with a window, a plane per output channel through tt_conv_plane_f32:
    the same bits as TVM's own build, with NaN inputs, infinite weights (the padded taps
    then matter: 0 * inf is NaN), zeros and negative zeros, and a ReLU fused in front."""
    func = float_conv_kernel(channels, out_channels, h, w, kernel, stride, groups, relu_input)
    tensorized, replaced = tensorize(func)
    assert replaced == 1 and FLOAT_CONV_PLANE in tensorized.script()
    rng = np.random.default_rng(h * kernel + channels)
    out_h, out_w = (h + 2 * (kernel // 2) - kernel) // stride + 1, (w + 2 * (kernel // 2) - kernel) // stride + 1
    for trial in range(4):
        x = rng.standard_normal((1, channels, h, w)).astype(np.float32)
        wt = rng.standard_normal((out_channels, channels // groups, kernel, kernel)).astype(np.float32)
        b = rng.standard_normal((1, out_channels, 1, 1)).astype(np.float32)
        if trial == 1:
            x[0, 0, h // 2, w // 2] = np.nan
            wt[0, 0, 0, 0] = np.inf
        if trial == 2:
            x[:] = 0.0
            x[0, 0, ::2] = -0.0
            b[:] = -0.0
        out = np.zeros((1, out_channels, out_h, out_w), np.float32)
        plain = _run_llvm(func, [x, wt, b, out])
        fast = _run_llvm(tensorized, [x, wt, b, out.copy()])
        assert np.array_equal(plain.view(np.uint32), fast.view(np.uint32))


def test_hoisted_epilogue_loads_read_once_per_row_and_change_nothing(host_kernels):
    """The requantization's bias and scale, read once per row instead of once per output
    (a one-element array gcc keeps in a register), give the same bits as before."""
    func, scale = conv_kernel(24, 6, 36, 30, x_zero=-6, y_zero=2, kernel=3, groups=24 // 4)  # rows too large for a plane
    hoisted, n = hoist_invariant_loads(func)
    assert n >= 2  # the bias and the scale
    tensorized, replaced = tensorize(hoisted)  # as lowering does: hoisted, then tensorized
    assert CONV_ROW in tensorized.script() and REQUANT in tensorized.script()
    for variant in (hoisted, tensorized):
        source = tvm.tirx.build(tvm.IRModule({"k": variant.with_attr("global_symbol", "k")}), target="c")
        assert re.search(r"\w+_global_ptr\[1\];", source.inspect_source())  # a local array, not workspace
        rng = np.random.default_rng(n)
        x = rng.integers(-128, 128, (1, 24, 36, 30)).astype(np.int8)
        wt = rng.integers(-128, 128, (6, 4, 3, 3)).astype(np.int8)
        b = rng.integers(-20000, 20000, 6).astype(np.int32)
        args = [x, wt, b, scale.reshape(1, -1, 1, 1)]
        out = np.zeros((1, 6, 36, 30), np.int8)
        assert np.array_equal(_run_llvm(func, args + [out]), _run_llvm(variant, args + [out.copy()]))


def test_mcunet_pointwise_rows_are_tensorized(mcunet_49kb_lowered):
    """Every int8 pointwise conv whose input is an int8 tensor calls a micro-kernel, two output
    channels a call, requantized in the call where int8 outputs follow (the trained blocks'
    float outputs take TVM's loop); those fused with a depthwise conv compute both channels'
    whole planes in one call."""
    kinds = (INT8_ROW, INT8_ROW_REQUANT, INT8_ROWS2, INT8_ROWS2_REQUANT, *STAGED.values(), ROW_REQUANT_STAGED,
             ROWS2_REQUANT_PLANES_STAGED)
    calls = re.findall(rf"\b({'|'.join(kinds)})\(\(", mcunet_49kb_lowered.kernels_c)
    assert len(calls) >= 30
    pairs, staged_pairs = calls.count(INT8_ROWS2_REQUANT), calls.count(STAGED[INT8_ROWS2_REQUANT])
    assert pairs + staged_pairs >= 12 and calls.count(INT8_ROWS2) + calls.count(STAGED[INT8_ROWS2]) >= 8
    assert staged_pairs >= 12 and calls.count(STAGED[INT8_ROWS2]) >= 8  # rows outside channel pairs, staged once
    # the expansions fused with a depthwise conv, two channels' planes a call, requantized in the
    # call, the late ones' input staged once; none a channel at a time (every expansion is even)
    assert calls.count(INT8_ROWS2_REQUANT) >= 3 and calls.count(ROWS2_REQUANT_PLANES_STAGED) >= 6
    assert calls.count(INT8_ROW_REQUANT) + calls.count(ROW_REQUANT_STAGED) == 0
    # the depthwise convs' planes requantized in the call that computes them, every one with int8 outputs
    assert len(re.findall(rf"\b{DW_PLANE_REQUANT}\(\(", mcunet_49kb_lowered.kernels_c)) >= 12
    assert not re.search(rf"\b{DEPTHWISE_PLANE}\([^;]*;\s*(\w+_global_ptr\[0\] = [^;]*;\s*)*{REQUANT}\(",
                         mcunet_49kb_lowered.kernels_c)


def test_micro_kernel_operands_in_shared_storage_build(zoo_dir):
    """A kernel whose int8 staging buffers TVM's storage rewrite places in a float32
    allocation (MCUNet's 99 KB scheme without reordering) still lowers: the calls take
    element addresses, not typed access pointers (found by bench/memory.py)."""
    import dataclasses

    from tvm_tinytrain.config import SparseUpdateConfig
    from tvm_tinytrain.frontend.zoo_frontend import import_zoo
    from tvm_tinytrain.pipeline import TrainOptions, build_training_program
    from tvm_tinytrain.targets.lower import lower

    imported = import_zoo(zoo_dir / "mcunet-5fps.pkl", num_classes=10)
    program = build_training_program(imported, SparseUpdateConfig.scheme("mcunet-99kb"), TrainOptions(lr=0.002))
    program = dataclasses.replace(program, memory=dataclasses.replace(program.memory, reorder=False))
    assert DEPTHWISE_PLANE in lower(program).kernels_c


@pytest.fixture(scope="module")
def mcunet_49kb_lowered(zoo_dir):
    from tvm_tinytrain.config import SparseUpdateConfig
    from tvm_tinytrain.frontend.zoo_frontend import import_zoo
    from tvm_tinytrain.pipeline import TrainOptions, build_training_program
    from tvm_tinytrain.targets.lower import lower

    imported = import_zoo(zoo_dir / "mcunet-5fps.pkl", num_classes=10)
    return lower(build_training_program(imported, SparseUpdateConfig.scheme("mcunet-49kb"), TrainOptions(lr=0.002)))


# A checker run on every board: random rows (zero points, strides, widths that are not a
# multiple of 4, sums past 2^24, accumulators that do not start at zero) through the
# micro-kernel and through the float32 loop it replaces, written out here.
CHECK_C = r"""
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "board.h"

int32_t tt_pw_row_s8(void *acc, void *a, int32_t a_stride, void *w, int32_t w_stride, int32_t k, int32_t width,
                     int32_t zx);

static uint32_t state = 12345u;
/* FNV-1a over the bits of n floats: one number that every board must print alike (a NaN
 * counted as one NaN: which NaN 0 * inf gives is the FPU's choice, x86 and Arm differ) */
static uint32_t fnv(uint32_t hash, const float *x, int32_t n) {
  for (int32_t i = 0; i < n; ++i) {
    uint32_t u;
    memcpy(&u, &x[i], 4);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0) {
      u = 0x7fc00000u;
    }
    hash = (hash ^ u) * 16777619u;
  }
  return hash;
}
static uint32_t next(void) { state ^= state << 13; state ^= state >> 17; state ^= state << 5; return state; }

int32_t tt_pw_rows2_s8(void *acc, void *a, int32_t a_stride, void *w, int32_t w_fstride, int32_t w_stride, int32_t k,
                       int32_t width, int32_t acc_stride, int32_t zx, int32_t zeroed);
int32_t tt_pw_row_f32s8(void *acc, void *a, int32_t a_stride, void *w, int32_t w_stride, int32_t k, int32_t width);
int32_t tt_pw_rows2_f32s8(void *acc, void *a, int32_t a_stride, void *w, int32_t w_fstride, int32_t w_stride, int32_t k,
                          int32_t width, int32_t acc_stride);
int32_t tt_conv_plane_f32(void *acc, void *a, int32_t a_chan, int32_t a_row, void *w, int32_t w_chan, int32_t w_row,
                          int32_t w_col, int32_t c, int32_t h, int32_t wd, int32_t kh, int32_t kw, int32_t stride, int32_t pad,
                          int32_t out_h, int32_t out_w, int32_t relu);

int32_t tt_conv_row_s8(void *acc, void *a, int32_t a_chan, int32_t a_row, void *w, int32_t w_chan, int32_t w_row,
                       int32_t c, int32_t wd, int32_t kh, int32_t kw, int32_t stride, int32_t pad, int32_t out_w,
                       int32_t zx, int32_t zeroed);
int32_t tt_conv_plane_s8(void *acc, void *a, int32_t a_chan, int32_t a_row, void *w, int32_t w_chan, int32_t w_row,
                         int32_t c, int32_t h, int32_t wd, int32_t kh, int32_t kw, int32_t stride, int32_t pad,
                         int32_t out_h, int32_t out_w, int32_t zx, int32_t zeroed);
int32_t tt_conv_row_wide_s8(void *acc, void *a, int32_t a_chan, int32_t a_row, void *w, int32_t w_chan,
                            int32_t w_row, int32_t c, int32_t wd, int32_t kh, int32_t kw, int32_t stride, int32_t pad,
                            int32_t out_w, int32_t zx, int32_t zeroed);
int32_t tt_dw_transpose_f32s8(void *acc, void *a, int32_t a_row, void *w, int32_t w_row, int32_t h, int32_t wd,
                              int32_t kh, int32_t kw, int32_t stride, int32_t pad, int32_t out_h, int32_t out_w);
int32_t tt_dw_plane_s8(void *acc, void *a, int32_t a_row, void *w, int32_t w_row, int32_t h, int32_t wd, int32_t kh,
                       int32_t kw, int32_t stride, int32_t pad, int32_t out_h, int32_t out_w, int32_t zx,
                       int32_t zeroed);
int32_t tt_requant_s8(void *out, void *acc, int32_t n, void *bias, void *scale, int32_t zo);
int32_t tt_dw_plane_requant_s8(void *acc, void *a, int32_t a_row, void *w, int32_t w_row, int32_t h, int32_t wd,
                               int32_t kh, int32_t kw, int32_t stride, int32_t pad, int32_t out_h, int32_t out_w,
                               int32_t zx, void *out, void *bias, void *scale, int32_t zo);
int32_t tt_pw_row_requant_s8(void *acc, void *a, int32_t a_stride, void *w, int32_t w_stride, int32_t k,
                             int32_t width, int32_t zx, void *out, void *bias, void *scale, int32_t zo,
                             int32_t keep_acc, int32_t acc_width);
int32_t tt_pw_rows2_requant_s8(void *acc, void *a, int32_t a_stride, void *w, int32_t w_fstride, int32_t w_stride,
                               int32_t k, int32_t width, int32_t acc_stride, int32_t zx, void *out0, void *out1,
                               void *bias, void *scale, int32_t zo, int32_t keep_acc);

int32_t tt_pw_stage_s8(void *stage, void *a, int32_t a_stride, int32_t k, int32_t pixels);
int32_t tt_pw_folds_s8(void *folds, void *w, int32_t w_fstride, int32_t k, int32_t zx, int32_t pairs);
int32_t tt_pw_rows2_staged_s8(void *acc, void *a, int32_t a_stride, void *w, int32_t w_fstride, int32_t w_stride,
                              int32_t k, int32_t width, int32_t acc_stride, int32_t zx, int32_t zeroed, void *stage,
                              void *folds);
int32_t tt_pw_rows2_requant_staged_s8(void *acc, void *a, int32_t a_stride, void *w, int32_t w_fstride,
                                      int32_t w_stride, int32_t k, int32_t width, int32_t acc_stride, int32_t zx,
                                      void *out0, void *out1, void *bias, void *scale, int32_t zo, int32_t keep_acc,
                                      void *stage, void *folds);
static int32_t folds[3 * 12];
int32_t tt_pw_row_requant_staged_s8(void *acc, void *a, int32_t a_stride, void *w, int32_t w_stride, int32_t k,
                                    int32_t width, int32_t zx, void *out, void *bias, void *scale, int32_t zo,
                                    int32_t keep_acc, int32_t acc_width, void *stage, void *plane);
static int32_t stage[(20 / 4) * 8 * (160 / 4)];
int32_t tt_pw_wgrad_f32s8(void *acc, int32_t acc_f, int32_t acc_c, void *a, int32_t a_chan, void *b, int32_t b_chan,
                          int32_t f, int32_t c, int32_t pixels, int32_t zx);
int32_t tt_pw_rows2_planes_staged_s8(void *acc, void *a, int32_t a_stride, void *w, int32_t w_fstride,
                                     int32_t w_stride, int32_t k, int32_t width, int32_t acc_stride, int32_t zx,
                                     int32_t zeroed, void *stage, void *plane);
int32_t tt_pw_rows2_requant_planes_staged_s8(void *acc, void *a, int32_t a_stride, void *w, int32_t w_fstride,
                                             int32_t w_stride, int32_t k, int32_t width, int32_t acc_stride,
                                             int32_t zx, void *out0, void *out1, void *bias, void *scale,
                                             int32_t zo, int32_t keep_acc, void *stage, void *plane);

/* TVM's requantization of one float32 sum */
static int8_t requantized(float s, int32_t bias, float scale, int32_t zo) {
  float v = nearbyintf((s + (float)bias) * scale) + (float)zo;
  v = v < 127.49f ? v : 127.49f;
  v = v > -128.49f ? v : -128.49f;
  return (int8_t)nearbyintf(v);
}

static int8_t a[600 * 40], w[600 * 8];
static float fa[16 * 256], fw[16 * 49], plane[20 * 20], ref_plane[20 * 20];
static float acc[40], ref[40];

int main(void) {
  board_init();
  uint32_t bad = 0, hash = 2166136261u, timed_macs = 0;
  for (int t = 0; t < 300; ++t) {
    int32_t k = t == 0 ? 600 : 1 + (int32_t)(next() % 200), width = 1 + (int32_t)(next() % 33);
    int32_t a_stride = width + (int32_t)(next() % 4), w_stride = t % 3 == 2 ? 3 : 1;
    int32_t zx = t % 5 == 0 ? -128 : (int32_t)(next() % 256) - 128;
    for (int32_t i = 0; i < k * a_stride; ++i) a[i] = (int8_t)(t == 0 ? 127 : next());
    for (int32_t i = 0; i < k * w_stride; ++i) w[i] = (int8_t)(t == 0 ? 0x80u : next());
    for (int32_t x = 0; x < width; ++x) acc[x] = ref[x] = t % 7 == 3 ? (float)x - 2.5f : 0.0f;
    for (int32_t x = 0; x < width; ++x) {
      float s = ref[x];
      for (int32_t i = 0; i < k; ++i) s = s + ((float)a[i * a_stride + x] - (float)zx) * (float)w[i * w_stride];
      ref[x] = s;
    }
    int timed = t == 1;
    if (timed) {
      k = 128, width = 16, a_stride = 16, w_stride = 1, timed_macs = (uint32_t)(k * width);
      memset(acc, 0, sizeof acc);
    }
    if (timed) board_mark_begin();
    tt_pw_row_s8(acc, a, a_stride, w, w_stride, k, width, zx);
    if (timed) board_mark_end();
    if (timed) continue;
    if (memcmp(acc, ref, (size_t)width * sizeof(float)) != 0) ++bad;
    hash = fnv(hash, acc, width);
  }
  /* tt_pw_row_f32s8 (input gradients) against its float32 loop, the same way */
  for (int t = 0; t < 200; ++t) {
    int32_t k = 1 + (int32_t)(next() % 100), width = 1 + (int32_t)(next() % 33);
    int32_t a_stride = width + (int32_t)(next() % 4), w_stride = 1 + (int32_t)(next() % 3);
    for (int32_t i = 0; i < k * a_stride; ++i) fa[i] = (float)(int32_t)next() * 1e-12f;
    for (int32_t i = 0; i < k * w_stride; ++i) w[i] = (int8_t)next();
    for (int32_t x = 0; x < width; ++x) acc[x] = ref[x] = (float)(int32_t)next() * 1e-10f;
    for (int32_t x = 0; x < width; ++x) {
      float s = ref[x];
      for (int32_t i = 0; i < k; ++i) s = s + fa[i * a_stride + x] * (float)w[i * w_stride];
      ref[x] = s;
    }
    int timed = t == 0;
    if (timed) {  /* k = 64 channels, 16 pixels */
      k = 64, width = 16, a_stride = 16, w_stride = 16;
    }
    if (timed) board_mark_begin();
    tt_pw_row_f32s8(acc, fa, a_stride, w, w_stride, k, width);
    if (timed) board_mark_end();
    if (timed) continue;
    if (memcmp(acc, ref, (size_t)width * sizeof(float)) != 0) ++bad;
    hash = fnv(hash, acc, width);
  }
  /* tt_dw_plane_s8 (depthwise) against the float32 loop with its padding tests */
  for (int t = 0; t < 150; ++t) {
    int32_t kh = 1 + 2 * (int32_t)(next() % 4), kw = t % 4 == 1 ? kh : 1 + 2 * (int32_t)(next() % 4);
    int32_t h = 1 + (int32_t)(next() % 20), wd = 1 + (int32_t)(next() % 20), stride = 1 + (int32_t)(next() % 2);
    int32_t pad = (int32_t)(next() % (uint32_t)((kh < kw ? kh : kw) / 2 + 1)), a_row = wd + (int32_t)(next() % 3);
    int32_t zx = (int32_t)(next() % 256) - 128, out_h = (h + 2 * pad - kh) / stride + 1, out_w = (wd + 2 * pad - kw) / stride + 1;
    int timed = t == 0;
    if (timed) kh = kw = 3, h = wd = a_row = 16, stride = 1, pad = 1, out_h = out_w = 16;
    if (t % 10 == 5) { /* a plane too wide for a band of padded rows: the border path */
      h = 1 + (int32_t)(next() % 3), wd = a_row = 170 + (int32_t)(next() % 30);
      out_h = (h + 2 * pad - kh) / stride + 1, out_w = (wd + 2 * pad - kw) / stride + 1;
    }
    if (h + 2 * pad < kh || wd + 2 * pad < kw || out_h * out_w > 20 * 20) continue; /* no conv has that shape */
    for (int32_t i = 0; i < h * a_row; ++i) a[i] = (int8_t)next();
    for (int32_t i = 0; i < kh * kw; ++i) w[i] = (int8_t)next();
    for (int32_t i = 0; i < out_h * out_w; ++i) plane[i] = ref_plane[i] = t % 9 == 4 ? 0.5f : 0.0f;
    int32_t zeroed = t % 3 == 1; /* TVM's zeroing left to the kernel: whatever the plane held */
    for (int32_t i = 0; zeroed && i < out_h * out_w; ++i) plane[i] = t % 2 ? 7.0f : -0.0f, ref_plane[i] = 0.0f;
    for (int32_t oy = 0; oy < out_h; ++oy)
      for (int32_t ox = 0; ox < out_w; ++ox) {
        float s = ref_plane[oy * out_w + ox];
        for (int32_t ky = 0; ky < kh; ++ky)
          for (int32_t kx = 0; kx < kw; ++kx) {
            int32_t iy = oy * stride + ky - pad, ix = ox * stride + kx - pad;
            s = s + (iy >= 0 && iy < h && ix >= 0 && ix < wd ? (float)a[iy * a_row + ix] - (float)zx : 0.0f) * (float)w[ky * kw + kx];
          }
        ref_plane[oy * out_w + ox] = s;
      }
    if (timed) board_mark_begin();
    tt_dw_plane_s8(plane, a, a_row, w, kw, h, wd, kh, kw, stride, pad, out_h, out_w, zx, zeroed);
    if (timed) board_mark_end();
    if (memcmp(plane, ref_plane, (size_t)(out_h * out_w) * sizeof(float)) != 0) ++bad;
    hash = fnv(hash, plane, out_h * out_w);
  }
  /* tt_pw_rows2_f32s8 (two channels' input gradient rows) against the float32 loop per row */
  for (int t = 0; t < 150; ++t) {
    int32_t k = 1 + (int32_t)(next() % 100), width = 1 + (int32_t)(next() % 20);
    int32_t a_stride = width + (int32_t)(next() % 4), w_fstride = 1 + (int32_t)(next() % 2);
    int32_t w_stride = 2 * w_fstride + (int32_t)(next() % 2), acc_stride = 20;
    int timed = t == 0;
    if (timed) k = 64, width = 16, a_stride = 16, w_fstride = 1, w_stride = 16; /* 2 x 1,024 MACs */
    for (int32_t i = 0; i < k * a_stride; ++i) fa[i] = (float)(int32_t)next() * 1e-12f;
    for (int32_t i = 0; i < k * w_stride; ++i) w[i] = (int8_t)next();
    for (int32_t x = 0; x < 2 * acc_stride; ++x) acc[x] = ref[x] = (float)(int32_t)next() * 1e-10f;
    for (int32_t r = 0; r < 2; ++r)
      for (int32_t x = 0; x < width; ++x) {
        float s = ref[r * acc_stride + x];
        for (int32_t i = 0; i < k; ++i) s = s + fa[i * a_stride + x] * (float)w[i * w_stride + r * w_fstride];
        ref[r * acc_stride + x] = s;
      }
    if (timed) board_mark_begin();
    tt_pw_rows2_f32s8(acc, fa, a_stride, w, w_fstride, w_stride, k, width, acc_stride);
    if (timed) board_mark_end();
    if (memcmp(acc, ref, (size_t)(2 * acc_stride) * sizeof(float)) != 0) ++bad;
    hash = fnv(hash, acc, 2 * acc_stride);
  }
  /* tt_conv_plane_f32 (float32 convs) against the float32 loop with its padding tests */
  for (int t = 0; t < 120; ++t) {
    int32_t kh = 1 + 2 * (int32_t)(next() % 4), kw = t % 3 ? kh : 1 + 2 * (int32_t)(next() % 4);
    int32_t c = 1 + (int32_t)(next() % 4), h = 1 + (int32_t)(next() % 14), wd = 1 + (int32_t)(next() % 14);
    int32_t stride = 1 + (int32_t)(next() % 2), pad = (int32_t)(next() % (uint32_t)((kh < kw ? kh : kw) / 2 + 1));
    int32_t a_row = wd + (int32_t)(next() % 3), a_chan = h * a_row + (int32_t)(next() % 3), relu = t % 2;
    int32_t flip = t % 4 == 3; /* conv2d_transpose's reading: the window's weights flipped */
    int timed = t == 0;
    if (timed) c = 16, kh = kw = 3, h = wd = a_row = 16, a_chan = 256, stride = 1, pad = 1; /* 16 x 16 x 16 x 9 MACs */
    if (h + 2 * pad < kh || wd + 2 * pad < kw) continue;
    int32_t out_h = (h + 2 * pad - kh) / stride + 1, out_w = (wd + 2 * pad - kw) / stride + 1;
    for (int32_t i = 0; i < c * a_chan; ++i) fa[i] = (float)(int32_t)next() * 1e-9f;
    for (int32_t i = 0; i < c * kh * kw; ++i) fw[i] = (float)(int32_t)next() * 1e-9f;
    if (t % 11 == 5) fw[0] = 1.0f / 0.0f; /* infinite weight: the padded taps give NaN */
    if (t % 13 == 6) fa[1] = 0.0f / 0.0f;
    if (t % 10 == 3 || t % 10 == 7) { /* positive NaNs, quiet and signalling, which a fused ReLU zeroes */
      uint32_t bits = t % 10 == 3 ? 0x7fc00001u : 0x7f800001u;
      memcpy(&fa[(h / 2) * a_row + wd / 2], &bits, sizeof bits);
    }
    for (int32_t i = 0; i < out_h * out_w; ++i) plane[i] = ref_plane[i] = t % 7 == 2 && i == 0 ? -0.0f : 0.0f;
    for (int32_t oy = 0; oy < out_h; ++oy)
      for (int32_t ox = 0; ox < out_w; ++ox) {
        float s = ref_plane[oy * out_w + ox];
        for (int32_t i = 0; i < c; ++i)
          for (int32_t ky = 0; ky < kh; ++ky)
            for (int32_t kx = 0; kx < kw; ++kx) {
              int32_t iy = oy * stride + ky - pad, ix = ox * stride + kx - pad;
              float v = iy >= 0 && iy < h && ix >= 0 && ix < wd ? fa[i * a_chan + iy * a_row + ix] : 0.0f;
              int32_t tap = flip ? (i * kh + kh - 1 - ky) * kw + kw - 1 - kx : (i * kh + ky) * kw + kx;
              s = s + (relu && !(v > 0.0f) ? 0.0f : v) * fw[tap];
            }
        ref_plane[oy * out_w + ox] = s;
      }
    if (timed) board_mark_begin();
    if (flip)
      tt_conv_plane_f32(plane, fa, a_chan, a_row, fw + kh * kw - 1, kh * kw, -kw, -1, c, h, wd, kh, kw, stride, pad, out_h,
                        out_w, relu);
    else
      tt_conv_plane_f32(plane, fa, a_chan, a_row, fw, kh * kw, kw, 1, c, h, wd, kh, kw, stride, pad, out_h, out_w, relu);
    if (timed) board_mark_end();
    if (memcmp(plane, ref_plane, (size_t)(out_h * out_w) * sizeof(float)) != 0) ++bad;
    hash = fnv(hash, plane, out_h * out_w);
  }
  /* tt_pw_rows2_s8 (two output channels' rows) against the float32 loop per row: int32 sums,
   * and the fallbacks (a row not at zero, sums past 2^24, strided weights) */
  for (int t = 0; t < 200; ++t) {
    int32_t k = t == 1 ? 600 : 1 + (int32_t)(next() % 200), width = 1 + (int32_t)(next() % 20);
    int32_t a_stride = width + (int32_t)(next() % 4), w_stride = t % 5 == 2 ? 2 : 1;
    int32_t w_fstride = w_stride == 1 ? k + (int32_t)(next() % 3) : 1, acc_stride = 20;
    int32_t zx = t % 4 == 0 ? -128 : (int32_t)(next() % 256) - 128;
    int timed = t == 0;
    if (timed) k = 128, width = 16, a_stride = 16, w_stride = 1, w_fstride = 128; /* 2 x 2,048 MACs */
    for (int32_t i = 0; i < k * a_stride; ++i) a[i] = (int8_t)(t == 1 ? 127 : next());
    for (int32_t i = 0; i < w_fstride + k * w_stride; ++i) w[i] = (int8_t)(t == 1 ? 0x80u : next());
    for (int32_t x = 0; x < 2 * acc_stride; ++x) acc[x] = ref[x] = t % 7 == 3 && x == acc_stride ? 1.5f : 0.0f;
    int32_t zeroed = t % 3 == 1;
    for (int32_t x = 0; zeroed && x < width; ++x) acc[x] = acc[acc_stride + x] = 7.0f, ref[x] = ref[acc_stride + x] = 0.0f;
    for (int32_t r = 0; r < 2; ++r)
      for (int32_t x = 0; x < width; ++x) {
        float s = ref[r * acc_stride + x];
        for (int32_t i = 0; i < k; ++i)
          s = s + ((float)a[i * a_stride + x] - (float)zx) * (float)w[r * w_fstride + i * w_stride];
        ref[r * acc_stride + x] = s;
      }
    if (timed) board_mark_begin();
    tt_pw_rows2_s8(acc, a, a_stride, w, w_fstride, w_stride, k, width, acc_stride, zx, zeroed);
    if (timed) board_mark_end();
    if (memcmp(acc, ref, (size_t)(2 * acc_stride) * sizeof(float)) != 0) ++bad;
    hash = fnv(hash, acc, 2 * acc_stride);
  }
  /* tt_conv_row_s8 (a row of an int8 conv with a window, the padding left and right only)
   * against the float32 loop with its column tests */
  for (int t = 0; t < 200; ++t) {
    int32_t kh = 1 + 2 * (int32_t)(next() % 3), kw = t % 3 ? kh : 1 + 2 * (int32_t)(next() % 4);
    int32_t c = 1 + (int32_t)(next() % 4), wd = 1 + (int32_t)(next() % 40), stride = 1 + (int32_t)(next() % 2);
    int32_t pad = (int32_t)(next() % (uint32_t)(kw / 2 + 1)), a_row = wd + (int32_t)(next() % 3);
    int32_t a_chan = kh * a_row + (int32_t)(next() % 3), zx = (int32_t)(next() % 256) - 128;
    int timed = t == 0;
    if (timed) c = 3, kh = kw = 3, wd = a_row = 128, a_chan = 3 * 128, stride = 2, pad = 1, zx = 0; /* a stem row */
    if (wd + 2 * pad < kw) continue;
    int32_t out_w = (wd + 2 * pad - kw) / stride + 1;
    if (out_w > 64) continue;
    for (int32_t i = 0; i < c * a_chan; ++i) a[i] = (int8_t)(t == 1 ? 127 : next());
    for (int32_t i = 0; i < c * kh * kw; ++i) w[i] = (int8_t)(t == 1 ? 0x80u : next());
    for (int32_t x = 0; x < out_w; ++x) plane[x] = ref_plane[x] = t % 9 == 4 && x == 0 ? 0.5f : 0.0f;
    int32_t zeroed = t % 3 == 1;
    for (int32_t x = 0; zeroed && x < out_w; ++x) plane[x] = 7.0f, ref_plane[x] = 0.0f;
    for (int32_t ox = 0; ox < out_w; ++ox) {
      float s = ref_plane[ox];
      for (int32_t i = 0; i < c; ++i)
        for (int32_t ky = 0; ky < kh; ++ky)
          for (int32_t kx = 0; kx < kw; ++kx) {
            int32_t ix = ox * stride + kx - pad;
            float v = ix >= 0 && ix < wd ? (float)a[i * a_chan + ky * a_row + ix] - (float)zx : 0.0f;
            s = s + v * (float)w[(i * kh + ky) * kw + kx];
          }
      ref_plane[ox] = s;
    }
    float wide[64];
    for (int32_t x = 0; x < out_w; ++x) wide[x] = plane[x];
    if (timed) board_mark_begin();
    tt_conv_row_s8(plane, a, a_chan, a_row, w, kh * kw, kw, c, wd, kh, kw, stride, pad, out_w, zx, zeroed);
    if (timed) board_mark_end();
    if (memcmp(plane, ref_plane, (size_t)out_w * sizeof(float)) != 0) ++bad;
    hash = fnv(hash, plane, out_w);
    /* the same row through tt_conv_row_wide_s8 (what wider windows call) */
    tt_conv_row_wide_s8(wide, a, a_chan, a_row, w, kh * kw, kw, c, wd, kh, kw, stride, pad, out_w, zx, zeroed);
    if (memcmp(wide, ref_plane, (size_t)out_w * sizeof(float)) != 0) ++bad;
  }
  /* tt_dw_transpose_f32s8 (a depthwise conv's input gradient) against the loop over every tap */
  for (int t = 0; t < 150; ++t) {
    int32_t k = 3 + 2 * (int32_t)(next() % 3), stride = 1 + (int32_t)(next() % 2), h = 1 + (int32_t)(next() % 8);
    int32_t wd = 1 + (int32_t)(next() % 8), pad = (int32_t)(next() % (uint32_t)k), a_row = wd + (int32_t)(next() % 3);
    int timed = t == 0;
    if (timed) k = 7, stride = 2, h = wd = a_row = 4, pad = 3; /* MCUNet's 7x7 stride-2 block: 8 x 8 outputs */
    int32_t out_h = (h - 1) * stride + 1 + 2 * pad - k + 1, out_w = (wd - 1) * stride + 1 + 2 * pad - k + 1;
    if (out_h < 1 || out_w < 1 || out_h * out_w > 400) continue;
    for (int32_t i = 0; i < h * a_row; ++i) fa[i] = (float)(int32_t)next() * 1e-9f;
    if (t % 13 == 6) fa[0] = 1.0f / 0.0f;
    for (int32_t i = 0; i < k * k; ++i) w[i] = (int8_t)next();
    for (int32_t i = 0; i < out_h * out_w; ++i) plane[i] = ref_plane[i] = t % 7 == 2 && i == 0 ? -0.0f : 0.0f;
    for (int32_t y = 0; y < out_h; ++y)
      for (int32_t x = 0; x < out_w; ++x) {
        float s = ref_plane[y * out_w + x];
        for (int32_t ky = 0; ky < k; ++ky)
          for (int32_t kx = 0; kx < k; ++kx) {
            int32_t ty = y + ky - pad, tx = x + kx - pad;
            int on = ty >= 0 && ty <= (h - 1) * stride && tx >= 0 && tx <= (wd - 1) * stride && ty % stride == 0 &&
                     tx % stride == 0;
            s = s + (on ? fa[ty / stride * a_row + tx / stride] : 0.0f) * (float)w[(k - 1 - ky) * k + k - 1 - kx];
          }
        ref_plane[y * out_w + x] = s;
      }
    if (timed) board_mark_begin();
    tt_dw_transpose_f32s8(plane, fa, a_row, w, k, h, wd, k, k, stride, pad, out_h, out_w);
    if (timed) board_mark_end();
    if (memcmp(plane, ref_plane, (size_t)(out_h * out_w) * sizeof(float)) != 0) ++bad;
    hash = fnv(hash, plane, out_h * out_w);
  }
  /* tt_requant_s8 against TVM's float32 requantization: sums up to 2^24 and beyond, any
   * int32 bias, scales from tiny to overflowing, infinite and NaN, zero points past int8 */
  for (int t = 0; t < 400; ++t) {
    int32_t n = 1 + (int32_t)(next() % 40), zo = (int32_t)(next() % 601) - 300, bias = (int32_t)next() >> (next() % 32);
    float scale = (float)((int32_t)next() >> 8) * (t % 4 == 0 ? 1e-9f : t % 4 == 1 ? 1e-4f : t % 4 == 2 ? 1e-2f : 1e30f);
    if (t % 50 == 7) scale = 1.0f / 0.0f;
    if (t % 50 == 9) scale = -(1.0f / 0.0f);
    if (t % 50 == 11) scale = 0.0f / 0.0f;
    if (t % 50 == 13) scale = 0.0f;
    int timed = t == 0;
    if (timed) n = 32, zo = -128, scale = 0.004f, bias = 1000;
    for (int32_t x = 0; x < n; ++x) acc[x] = (float)((int32_t)next() >> (8 + next() % 20));
    int8_t out[40];
    if (timed) board_mark_begin();
    tt_requant_s8(out, acc, n, &bias, &scale, zo);
    if (timed) board_mark_end();
    for (int32_t x = 0; x < n; ++x) {
      float v = nearbyintf((acc[x] + (float)bias) * scale) + (float)zo;
      v = v < 127.49f ? v : 127.49f;
      v = v > -128.49f ? v : -128.49f;
      if ((int8_t)nearbyintf(v) != out[x]) ++bad;
      ref[x] = (float)out[x];
    }
    hash = fnv(hash, ref, n);
  }
  /* tt_pw_row_requant_s8 against zeroing, the float32 loop and TVM's requantization */
  for (int t = 0; t < 200; ++t) {
    int32_t k = t == 0 ? 600 : 1 + (int32_t)(next() % 48), width = 1 + (int32_t)(next() % 33);
    int32_t a_stride = width + (int32_t)(next() % 4), w_stride = t % 3 == 2 ? 3 : 1;
    int32_t zx = (int32_t)(next() % 256) - 128, zo = (int32_t)(next() % 256) - 128, bias = (int32_t)next() >> 12;
    float scale = (float)((int32_t)next() >> 16) * 1e-6f;
    if (t % 40 == 5) scale = 0.0f / 0.0f;
    if (t % 40 == 9) bias = 33554433, scale = 40.0f / 33554432.0f; /* a bias float32 rounds: the float path */
    int timed = t == 2;
    if (timed) k = 16, width = 32, a_stride = 1024, w_stride = 1, zx = -6, zo = -128, scale = 0.004f;
    for (int32_t i = 0; i < k; ++i)
      for (int32_t x = 0; x < width; ++x) a[i * a_stride + x] = (int8_t)(t == 0 ? 127 : next());
    for (int32_t i = 0; i < k * w_stride; ++i) w[i] = (int8_t)(t == 0 ? 0x80u : next());
    int8_t out[40];
    if (timed) board_mark_begin();
    int32_t keep = t % 2;
    for (int32_t x = 0; x < width; ++x) acc[x] = 1.5f;
    tt_pw_row_requant_s8(acc, a, a_stride, w, w_stride, k, width, zx, out, &bias, &scale, zo, keep, width);
    if (timed) board_mark_end();
    for (int32_t x = 0; x < width; ++x) {
      float s = 0.0f;
      for (int32_t i = 0; i < k; ++i)
        s = s + ((float)a[i * a_stride + x] - (float)zx) * (float)w[i * w_stride];
      float v = nearbyintf((s + (float)bias) * scale) + (float)zo;
      v = v < 127.49f ? v : 127.49f;
      v = v > -128.49f ? v : -128.49f;
      if ((keep && memcmp(&s, &acc[x], 4) != 0) || (int8_t)nearbyintf(v) != out[x]) ++bad;
      ref[x] = (float)out[x];
    }
    hash = fnv(fnv(hash, acc, width), ref, width);
  }
  /* tt_pw_rows2_requant_s8 against the float32 loop and TVM's requantization, per channel */
  for (int t = 0; t < 200; ++t) {
    int32_t k = t == 0 ? 600 : 1 + (int32_t)(next() % 48), width = 1 + (int32_t)(next() % 20);
    int32_t a_stride = width + (int32_t)(next() % 4), w_stride = t % 5 == 2 ? 2 : 1;
    int32_t w_fstride = w_stride == 1 ? k + (int32_t)(next() % 3) : 1, acc_stride = 20;
    int32_t zx = (int32_t)(next() % 256) - 128, zo = (int32_t)(next() % 256) - 128;
    int32_t bias[2] = {(int32_t)next() >> 12, (int32_t)next() >> 12};
    float scale[2] = {(float)((int32_t)next() >> 16) * 1e-6f, (float)((int32_t)next() >> 16) * 1e-6f};
    if (t % 40 == 5) scale[1] = 0.0f / 0.0f;
    if (t % 40 == 9) bias[0] = 33554433, scale[0] = 40.0f / 33554432.0f; /* a bias float32 rounds */
    int timed = t == 2;
    if (timed) k = 48, width = 16, a_stride = 256, w_stride = 1, w_fstride = 48, zx = -128, zo = 14;
    if (timed) scale[0] = 0.004f, scale[1] = 0.003f;
    for (int32_t i = 0; i < k; ++i)
      for (int32_t x = 0; x < width; ++x) a[i * a_stride + x] = (int8_t)(t == 0 ? 127 : next());
    for (int32_t i = 0; i < w_fstride + k * w_stride; ++i) w[i] = (int8_t)(t == 0 ? 0x80u : next());
    int8_t out[2][40];
    int32_t keep = t % 2;
    for (int32_t x = 0; x < 2 * acc_stride; ++x) acc[x] = 1.5f;
    if (timed) board_mark_begin();
    tt_pw_rows2_requant_s8(acc, a, a_stride, w, w_fstride, w_stride, k, width, acc_stride, zx, out[0], out[1], bias,
                           scale, zo, keep);
    if (timed) board_mark_end();
    for (int32_t r = 0; r < 2; ++r) {
      for (int32_t x = 0; x < width; ++x) {
        float s = 0.0f;
        for (int32_t i = 0; i < k; ++i)
          s = s + ((float)a[i * a_stride + x] - (float)zx) * (float)w[r * w_fstride + i * w_stride];
        if ((keep && memcmp(&s, &acc[r * acc_stride + x], 4) != 0) || requantized(s, bias[r], scale[r], zo) != out[r][x])
          ++bad;
        ref[x] = (float)out[r][x];
      }
      hash = fnv(hash, ref, width);
    }
    if (keep) hash = fnv(hash, acc, 2 * acc_stride);
  }
  /* the staged kernels, two rows' channel pairs in turn (tt_pw_stage_s8 stages each row before
   * its pairs, tt_pw_folds_s8 sums every pair's weights once first, as the kernels tensorize.py
   * writes do), against the unstaged ones: the same bits (those are checked against the
   * float32 loop above) */
  for (int t = 0; t < 60; ++t) {
    int timed = t == 1;
    int32_t k = timed ? 160 : 1 + (int32_t)(next() % 160), width = timed ? 8 : 1 + (int32_t)(next() % 20);
    int32_t a_stride = width + (int32_t)(next() % 4), w_stride = t % 7 == 3 ? 2 : 1;
    int32_t w_fstride = w_stride == 1 ? k + (int32_t)(next() % 3) : 1, acc_stride = 20, pairs = timed ? 12 : 3;
    int32_t zx = (int32_t)(next() % 256) - 128, zo = (int32_t)(next() % 256) - 128, keep = t % 2;
    if (timed) a_stride = 64, zx = -128;
    for (int32_t i = 0; i < 2 * k; ++i)
      for (int32_t x = 0; x < width; ++x) a[i * a_stride + x] = (int8_t)next();
    for (int32_t i = 0; i < 2 * pairs * w_fstride + k * w_stride; ++i) w[i] = (int8_t)(next() >> (t % 3 == 0 ? 0 : 3));
    int32_t bias[24];
    float scale[24];
    for (int32_t c = 0; c < 2 * pairs; ++c) bias[c] = (int32_t)next() >> 12, scale[c] = (float)((int32_t)next() >> 16) * 1e-6f;
    int32_t requant = t % 2 == 1;
    if (timed) board_mark_begin();
    if (w_stride == 1) tt_pw_folds_s8(folds, w, w_fstride, k, zx, pairs);
    for (int32_t row = 0; row < (timed ? 1 : 2); ++row)
    for (int32_t p = 0; p < pairs; ++p) {
      int8_t *ar = a + row * k * a_stride;
      if (p == 0) tt_pw_stage_s8(stage, ar, a_stride, k, width);
      int8_t out[2][40], staged_out[2][40];
      float *plain = plane, *staged = plane + 2 * acc_stride;
      int8_t *wp = w + 2 * p * w_fstride * (w_stride == 1 ? 1 : 0) + 2 * p * (w_stride == 1 ? 0 : 1);
      if (requant) {
        tt_pw_rows2_requant_staged_s8(staged, ar, a_stride, wp, w_fstride, w_stride, k, width, acc_stride, zx,
                                      staged_out[0], staged_out[1], bias + 2 * p, scale + 2 * p, zo, keep, stage,
                                      folds + 3 * p);
        if (!timed) {
          tt_pw_rows2_requant_s8(plain, ar, a_stride, wp, w_fstride, w_stride, k, width, acc_stride, zx, out[0], out[1],
                                 bias + 2 * p, scale + 2 * p, zo, keep);
          for (int32_t r = 0; r < 2; ++r) bad += memcmp(out[r], staged_out[r], (size_t)width) != 0;
        }
      } else {
        tt_pw_rows2_staged_s8(staged, ar, a_stride, wp, w_fstride, w_stride, k, width, acc_stride, zx, 1, stage,
                              folds + 3 * p);
        if (!timed) tt_pw_rows2_s8(plain, ar, a_stride, wp, w_fstride, w_stride, k, width, acc_stride, zx, 1);
      }
      if (!timed && (!requant || keep)) {
        for (int32_t r = 0; r < 2; ++r) bad += memcmp(plain + r * acc_stride, staged + r * acc_stride, 4 * (size_t)width) != 0;
        hash = fnv(hash, staged, width);
      }
    }
    if (timed) board_mark_end();
  }
  /* tt_pw_row_requant_staged_s8, a conv fused with a depthwise one: each output channel's
   * plane from input planes staged once (tt_pw_stage_s8), a row a call or the whole plane in one,
   * against tt_pw_row_requant_s8 (checked against the float32 loop above): the same bits */
  for (int t = 0; t < 40; ++t) {
    int timed = t == 1;
    int32_t k = timed ? 24 : 1 + (int32_t)(next() % 48), h = timed ? 8 : 1 + (int32_t)(next() % 6);
    int32_t wd = timed ? 16 : 4 * (1 + (int32_t)(next() % 4)), channels = timed ? 6 : 3, whole = t % 3 == 0 || timed;
    int32_t zx = (int32_t)(next() % 256) - 128, zo = (int32_t)(next() % 256) - 128, keep = t % 2 && !whole;
    int32_t pixels = h * wd, w_stride = t % 7 == 3 ? 2 : 1;
    if (k * pixels > 24 * 128) k = 24 * 128 / pixels;
    for (int32_t i = 0; i < k * pixels; ++i) a[i] = (int8_t)next();
    for (int32_t i = 0; i < channels * k * w_stride; ++i) w[i] = (int8_t)(next() >> (t % 3 == 1 ? 0 : 3));
    if (timed) board_mark_begin();
    tt_pw_stage_s8(stage, a, pixels, k, pixels);
    for (int32_t c = 0; c < channels; ++c) {
      int32_t bias = (int32_t)next() >> 12;
      float scale = (float)((int32_t)next() >> 16) * 1e-6f;
      int8_t out[128], staged_out[128];
      int8_t *wc = w + c * k * w_stride;
      for (int32_t y = 0; y < (whole ? 1 : h); ++y) { /* whole: a row's accumulator for the plane */
        int32_t n = whole ? pixels : wd;
        tt_pw_row_requant_staged_s8(plane, a + y * wd, pixels, wc, w_stride, k, n, zx, staged_out + y * wd,
                                    &bias, &scale, zo, keep, wd, stage, a);
        if (keep) memcpy(ref, plane, 4 * (size_t)n);
      }
      for (int32_t y = 0; y < h && !timed; ++y) { /* the reference: a row a call */
        tt_pw_row_requant_s8(plane, a + y * wd, pixels, wc, w_stride, k, wd, zx, out + y * wd, &bias, &scale, zo,
                             keep, wd);
        if (keep && y == h - 1) bad += memcmp(ref, plane, 4 * (size_t)wd) != 0;
      }
      if (!timed) {
        bad += memcmp(out, staged_out, (size_t)pixels) != 0;
        for (int32_t x = 0; x < pixels; ++x) ref[x % 40] = (float)staged_out[x];
        hash = fnv(hash, ref, pixels < 40 ? pixels : 40);
      }
    }
    if (timed) board_mark_end();
  }
  /* tt_pw_rows2(_requant)_planes_staged_s8, output channel pairs outside rows: each row from
   * input planes staged once, against tt_pw_rows2(_requant)_s8 (checked above): the same bits */
  for (int t = 0; t < 40; ++t) {
    int32_t k = 1 + (int32_t)(next() % 48), h = 1 + (int32_t)(next() % 6), wd = 4 * (1 + (int32_t)(next() % 4));
    int32_t zx = (int32_t)(next() % 256) - 128, zo = (int32_t)(next() % 256) - 128, pixels = h * wd;
    int32_t requant = t % 2, keep = t % 4 == 1;
    if (k * pixels > 24 * 128) k = 24 * 128 / pixels;
    for (int32_t i = 0; i < k * pixels; ++i) a[i] = (int8_t)next();
    for (int32_t i = 0; i < 4 * k; ++i) w[i] = (int8_t)(next() >> (t % 3 == 1 ? 0 : 3));
    tt_pw_stage_s8(stage, a, pixels, k, pixels);
    for (int32_t pair = 0; pair < 2; ++pair) {
      int32_t bias[2] = {(int32_t)next() >> 12, (int32_t)next() >> 12};
      float scale[2] = {(float)((int32_t)next() >> 16) * 1e-6f, (float)((int32_t)next() >> 16) * 1e-6f};
      int8_t *wp = w + 2 * pair * k;
      for (int32_t y = 0; y < h; ++y) {
        int8_t out[2][16], staged_out[2][16];
        float staged_acc[32];
        memset(acc, 0, sizeof acc), memset(staged_acc, 0, sizeof staged_acc);
        memset(out, 0, sizeof out), memset(staged_out, 0, sizeof staged_out);
        if (requant) {
          tt_pw_rows2_requant_planes_staged_s8(staged_acc, a + y * wd, pixels, wp, k, 1, k, wd, 16, zx, staged_out[0],
                                               staged_out[1], bias, scale, zo, keep, stage, a);
          tt_pw_rows2_requant_s8(acc, a + y * wd, pixels, wp, k, 1, k, wd, 16, zx, out[0], out[1], bias, scale, zo,
                                 keep);
          bad += memcmp(out, staged_out, sizeof out) != 0;
          for (int32_t x = 0; x < wd; ++x) ref[x] = (float)staged_out[0][x], ref[16 + x] = (float)staged_out[1][x];
          hash = fnv(fnv(hash, ref, wd), ref + 16, wd);
        } else {
          tt_pw_rows2_planes_staged_s8(staged_acc, a + y * wd, pixels, wp, k, 1, k, wd, 16, zx, 1, stage, a);
          tt_pw_rows2_s8(acc, a + y * wd, pixels, wp, k, 1, k, wd, 16, zx, 1);
        }
        if (!requant || keep) {
          bad += memcmp(acc, staged_acc, 32 * sizeof(float)) != 0;
          hash = fnv(hash, staged_acc, 32);
        }
      }
    }
  }
  /* tt_pw_wgrad_f32s8, a tile of a pointwise conv's weight gradient, against its float32 loop:
   * accumulators that do not start at zero, zero points, tiles with edges, infinities and NaNs */
  for (int t = 0; t < 60; ++t) {
    int timed = t == 0;
    int32_t f = timed ? 4 : 1 + (int32_t)(next() % 6), c = timed ? 4 : 1 + (int32_t)(next() % 6);
    int32_t pixels = timed ? 64 : 1 + (int32_t)(next() % 70), zx = (int32_t)(next() % 256) - 128;
    int32_t a_chan = pixels + (timed ? 0 : (int32_t)(next() % 3)), b_chan = pixels + (timed ? 0 : (int32_t)(next() % 3));
    float tile[36], ref_tile[36];
    for (int32_t i = 0; i < c * a_chan; ++i) a[i] = (int8_t)next();
    for (int32_t i = 0; i < f * b_chan; ++i) fa[i] = (float)(int32_t)next() * (t % 3 == 0 ? 1e-12f : 1e-3f);
    if (t % 10 == 9) fa[0] = 1.0f / 0.0f, fa[b_chan - 1] = 0.0f / 0.0f;
    for (int32_t i = 0; i < f * c; ++i) tile[i] = ref_tile[i] = timed ? 0.0f : (float)(int32_t)next() * 1e-9f;
    for (int32_t i = 0; i < f; ++i) {
      for (int32_t j = 0; j < c; ++j) {
        float s = ref_tile[i * c + j];
        for (int32_t q = 0; q < pixels; ++q) s = s + ((float)a[j * a_chan + q] - (float)zx) * fa[i * b_chan + q];
        ref_tile[i * c + j] = s;
      }
    }
    if (timed) board_mark_begin();
    tt_pw_wgrad_f32s8(tile, c, 1, a, a_chan, fa, b_chan, f, c, pixels, zx);
    if (timed) board_mark_end();
    bad += memcmp(tile, ref_tile, (size_t)(f * c) * sizeof(float)) != 0;
    hash = fnv(hash, tile, f * c);
  }
  /* tt_conv_plane_s8 (an int8 conv with a window over several input channels, a whole output
   * plane, padding included) against the float32 loop with its padding tests: 3x3 windows at
   * stride 1 and 2 (the fast path; more channels than a pass of its table), other windows,
   * sums past 2^24 and accumulators that do not start at zero (the float loop) */
  for (int t = 0; t < 150; ++t) {
    int timed = t == 0;
    int32_t kh = t % 4 == 3 ? 1 + (int32_t)(next() % 5) : 3, kw = t % 6 == 5 ? 1 + (int32_t)(next() % 5) : 3;
    int32_t c = 2 + (int32_t)(next() % (t % 3 == 0 ? 70u : 12u)), h = 1 + (int32_t)(next() % 16);
    int32_t wd = 1 + (int32_t)(next() % 20), stride = 1 + (int32_t)(next() % 2);
    int32_t pad = (int32_t)(next() % (uint32_t)((kh < kw ? kh : kw) / 2 + 1)), a_row = wd + (int32_t)(next() % 3);
    int32_t a_chan = h * a_row + (int32_t)(next() % 3), zx = (int32_t)(next() % 256) - 128;
    if (timed) c = 16, kh = kw = 3, h = wd = a_row = 16, a_chan = 256, stride = 1, pad = 1, zx = -128;
    int32_t out_h = (h + 2 * pad - kh) / stride + 1, out_w = (wd + 2 * pad - kw) / stride + 1;
    if (h + 2 * pad < kh || wd + 2 * pad < kw || out_h * out_w > 20 * 20 || c * a_chan > 600 * 40) continue;
    for (int32_t i = 0; i < c * a_chan; ++i) a[i] = (int8_t)(t == 1 ? 127 : next());
    for (int32_t i = 0; i < c * kh * kw; ++i) w[i] = (int8_t)(t == 1 ? -128 : t % 2 ? (int32_t)next() >> 26 : (int32_t)next());
    for (int32_t i = 0; i < out_h * out_w; ++i) plane[i] = ref_plane[i] = t % 9 == 4 && i == 0 ? 0.5f : 0.0f;
    int32_t zeroed = t % 3 == 1;
    for (int32_t i = 0; zeroed && i < out_h * out_w; ++i) plane[i] = 7.0f, ref_plane[i] = 0.0f;
    for (int32_t oy = 0; oy < out_h; ++oy)
      for (int32_t ox = 0; ox < out_w; ++ox) {
        float s = ref_plane[oy * out_w + ox];
        for (int32_t i = 0; i < c; ++i)
          for (int32_t ky = 0; ky < kh; ++ky)
            for (int32_t kx = 0; kx < kw; ++kx) {
              int32_t iy = oy * stride + ky - pad, ix = ox * stride + kx - pad;
              float v = iy >= 0 && iy < h && ix >= 0 && ix < wd ? (float)a[i * a_chan + iy * a_row + ix] - (float)zx : 0.0f;
              s = s + v * (float)w[(i * kh + ky) * kw + kx];
            }
        ref_plane[oy * out_w + ox] = s;
      }
    if (timed) board_mark_begin();
    tt_conv_plane_s8(plane, a, a_chan, a_row, w, kh * kw, kw, c, h, wd, kh, kw, stride, pad, out_h, out_w, zx, zeroed);
    if (timed) board_mark_end();
    if (memcmp(plane, ref_plane, (size_t)(out_h * out_w) * sizeof(float)) != 0) ++bad;
    hash = fnv(hash, plane, out_h * out_w);
  }
  /* timed: MCUNet's wide depthwise windows, one channel each: 7x7 at stride 2 on 32x32
   * (padding 3, 16x16 outputs, 12,544 MACs), then 5x5 at stride 1 on 8x8 (padding 2, 1,600) */
  for (int t = 0; t < 2; ++t) {
    int32_t k = t ? 5 : 7, stride = t ? 1 : 2, n = t ? 8 : 32, pad = k / 2, out = (n + 2 * pad - k) / stride + 1;
    for (int32_t i = 0; i < n * n; ++i) a[i] = (int8_t)next();
    for (int32_t i = 0; i < k * k; ++i) w[i] = (int8_t)next();
    for (int32_t oy = 0; oy < out; ++oy)
      for (int32_t ox = 0; ox < out; ++ox) {
        float s = 0.0f;
        for (int32_t ky = 0; ky < k; ++ky)
          for (int32_t kx = 0; kx < k; ++kx) {
            int32_t iy = oy * stride + ky - pad, ix = ox * stride + kx - pad;
            s = s + (iy >= 0 && iy < n && ix >= 0 && ix < n ? (float)a[iy * n + ix] + 128.0f : 0.0f) * (float)w[ky * k + kx];
          }
        ref_plane[oy * out + ox] = s;
      }
    board_mark_begin();
    tt_dw_plane_s8(plane, a, n, w, k, n, n, k, k, stride, pad, out, out, -128, 1);
    board_mark_end();
    if (memcmp(plane, ref_plane, (size_t)(out * out) * sizeof(float)) != 0) ++bad;
    hash = fnv(hash, plane, out * out);
  }
  /* tt_pw_rows2_requant_s8 and its planes-staged form for whole planes (the sums not kept,
   * width > acc_stride, as tensorize.py's `_whole_plane_loop` calls them for an expansion fused
   * with its depthwise conv): against a call per row (checked above), the same bits. 8 and 16
   * input channels (the two-channel path that splits the weights once a call), other counts,
   * and the float fallback (a NaN scale, a weight stride of 2), which goes through the planes
   * acc_stride pixels at a time. Timed: 8 input channels, two 32x32 planes (16,384 MACs). */
  for (int t = 0; t < 48; ++t) {
    static int8_t whole[2][1024], rows[2][1024], staged[2][1024];
    static float plane_acc[64];
    int timed = t == 0;
    int32_t k = t % 4 == 0 ? 8 : t % 4 == 1 ? 16 : 1 + (int32_t)(next() % 40);
    int32_t wd = timed ? 32 : 1 + (int32_t)(next() % 20), h = timed ? 32 : 1 + (int32_t)(next() % 8);
    int32_t pixels = h * wd, w_stride = t % 7 == 3 ? 2 : 1, w_fstride = w_stride == 1 ? k : 1;
    int32_t zx = (int32_t)(next() % 256) - 128, zo = (int32_t)(next() % 256) - 128;
    int32_t bias[2] = {(int32_t)next() >> 12, (int32_t)next() >> 12};
    float scale[2] = {(float)((int32_t)next() >> 16) * 1e-6f, (float)((int32_t)next() >> 16) * 1e-6f};
    if (t % 9 == 5) scale[1] = 0.0f / 0.0f;
    for (int32_t i = 0; i < k * pixels; ++i) a[i] = (int8_t)next();
    for (int32_t i = 0; i < 2 * k * w_stride + w_fstride; ++i) w[i] = (int8_t)next();
    if (timed) board_mark_begin();
    tt_pw_rows2_requant_s8(plane_acc, a, pixels, w, w_fstride, w_stride, k, pixels, wd, zx, whole[0], whole[1], bias,
                           scale, zo, 0);
    if (timed) board_mark_end();
    for (int32_t y = 0; y < h; ++y)
      tt_pw_rows2_requant_s8(plane_acc, a + y * wd, pixels, w, w_fstride, w_stride, k, wd, wd, zx, rows[0] + y * wd,
                             rows[1] + y * wd, bias, scale, zo, 0);
    bad += memcmp(whole[0], rows[0], (size_t)pixels) != 0 || memcmp(whole[1], rows[1], (size_t)pixels) != 0;
    if (wd % 4 == 0 && w_stride == 1 && k * pixels <= 3200) {
      tt_pw_stage_s8(stage, a, pixels, k, pixels);
      tt_pw_rows2_requant_planes_staged_s8(plane_acc, a, pixels, w, w_fstride, 1, k, pixels, wd, zx, staged[0],
                                           staged[1], bias, scale, zo, 0, stage, a);
      bad += memcmp(staged[0], rows[0], (size_t)pixels) != 0 || memcmp(staged[1], rows[1], (size_t)pixels) != 0;
    }
    for (int32_t r = 0; r < 2; ++r) {
      for (int32_t x = 0; x < pixels && x < 40; ++x) ref[x] = (float)whole[r][x];
      hash = fnv(hash, ref, pixels < 40 ? pixels : 40);
    }
  }
  /* tt_dw_plane_requant_s8 against tt_dw_plane_s8 on a zeroed plane and tt_requant_s8 of it
   * (both checked above): the same int8 outputs, also where the fallback runs (a scale that
   * is not finite, a bias beyond 2^24, more than 49 taps, stride 3) and on the border path; timed: a
   * 16x16 channel, 3x3, stride 1, padding 1 (2,304 MACs, as region 2 and its requantization) */
  for (int t = 0; t < 150; ++t) {
    static int8_t fused[20 * 20], unfused[20 * 20];
    int32_t kh = 1 + 2 * (int32_t)(next() % 4), kw = t % 4 == 1 ? kh : 1 + 2 * (int32_t)(next() % 4);
    int32_t h = 1 + (int32_t)(next() % 20), wd = 1 + (int32_t)(next() % 20), stride = 1 + (int32_t)(next() % 2);
    int32_t pad = (int32_t)(next() % (uint32_t)((kh < kw ? kh : kw) / 2 + 1)), a_row = wd + (int32_t)(next() % 3);
    int32_t zx = (int32_t)(next() % 256) - 128, zo = (int32_t)(next() % 256) - 128;
    int32_t out_h = (h + 2 * pad - kh) / stride + 1, out_w = (wd + 2 * pad - kw) / stride + 1;
    int32_t bias = (int32_t)(next() % 40001) - 20000;
    float scale = (float)(next() % 1000 + 1) * 2e-5f;
    int timed = t == 0;
    if (timed) kh = kw = 3, h = wd = a_row = 16, stride = 1, pad = 1, out_h = out_w = 16;
    if (t % 10 == 5) { /* a plane too wide for a band of padded rows: the border path */
      h = 1 + (int32_t)(next() % 3), wd = a_row = 170 + (int32_t)(next() % 30);
      out_h = (h + 2 * pad - kh) / stride + 1, out_w = (wd + 2 * pad - kw) / stride + 1;
    }
    if (t % 10 == 7) kh = kw = 9, h = wd = a_row = 12, stride = 1, pad = 4, out_h = out_w = 12; /* 81 taps */
    if (t % 19 == 11) kh = kw = 5, h = wd = a_row = 16, stride = 3, pad = 2, out_h = out_w = 6; /* the fallback too */
    if (t % 7 == 3) scale = t % 2 ? NAN : INFINITY;
    if (t % 11 == 6) bias = t % 2 ? 16777217 : -20000000;
    if (t % 17 == 9) bias = t % 2 ? 16000000 : -16777216; /* the int32 path on Cortex-M, the fallback on RV32 */
    if (t % 13 == 8) scale = 1.0f; /* every output saturates */
    if (h + 2 * pad < kh || wd + 2 * pad < kw || out_h * out_w > 20 * 20) continue; /* no conv has that shape */
    for (int32_t i = 0; i < h * a_row; ++i) a[i] = (int8_t)next();
    for (int32_t i = 0; i < kh * kw; ++i) w[i] = (int8_t)next();
    for (int32_t i = 0; i < out_h * out_w; ++i) plane[i] = t % 2 ? 7.0f : -0.0f; /* whatever the plane held */
    tt_dw_plane_s8(plane, a, a_row, w, kw, h, wd, kh, kw, stride, pad, out_h, out_w, zx, 1);
    tt_requant_s8(unfused, plane, out_h * out_w, &bias, &scale, zo);
    for (int32_t i = 0; i < out_h * out_w; ++i) plane[i] = 3.0f;
    if (timed) board_mark_begin();
    tt_dw_plane_requant_s8(plane, a, a_row, w, kw, h, wd, kh, kw, stride, pad, out_h, out_w, zx, fused, &bias, &scale,
                           zo);
    if (timed) board_mark_end();
    if (memcmp(fused, unfused, (size_t)(out_h * out_w)) != 0) ++bad;
    for (int32_t i = 0; i < out_h * out_w && i < 40; ++i) ref[i] = (float)fused[i];
    hash = fnv(hash, ref, out_h * out_w < 40 ? out_h * out_w : 40);
  }
  printf("bad %lu hash %08lx timed_macs %lu\n", (unsigned long)bad, (unsigned long)hash, (unsigned long)timed_macs);
  return 0;
}
"""


@pytest.fixture(scope="module")
def checker_runs(tmp_path_factory):
    runs = {}
    for name in BOARDS:
        board = get_board(name)
        project = tmp_path_factory.mktemp(f"check-{name}")
        (project / "main.c").write_text(CHECK_C)
        (project / "tt_kernels.c").write_text(KERNELS_C.read_text())
        write_board_files(board, project)
        result = run(board, build(board, project), cwd=project, timeout_s=300)
        match = re.search(r"bad (\d+) hash ([0-9a-f]{8}) timed_macs (\d+)", "\n".join(result.lines))
        assert match, result.lines
        runs[name] = (int(match[1]), match[2], int(match[3]), result)
    return runs


@pytest.mark.slow
def test_micro_kernel_equals_the_float_loop_on_every_board(checker_runs):
    assert {name: bad for name, (bad, *_) in checker_runs.items()} == {name: 0 for name in BOARDS}
    assert len({h for _, h, _, _ in checker_runs.values()}) == 1  # the same bits everywhere


@pytest.mark.slow
def test_micro_kernel_instructions_per_mac(checker_runs):
    """One 16-pixel row of 128 input channels (2,048 MACs), call and zero-point fold
    included: at most 2.5 instructions per MAC with SMLAD on Cortex-M4/M7/M33 (measured
    2.15-2.20), at most 4.2 in plain C on RV32 (3.62, 8 pixels a step). The TIR loop it
    replaces took 10-15."""
    for name, limit in (("cortex-m4", 2.5), ("cortex-m7", 2.5), ("cortex-m33", 2.5), ("riscv32", 4.2)):
        _, _, macs, result = checker_runs[name]
        assert len(result.region_instructions) == 19
        assert result.region_instructions[0] / macs <= limit, (name, result.region_instructions[0] / macs)


@pytest.mark.slow
def test_depthwise_micro_kernel_instructions_per_mac(checker_runs):
    """One 16x16 channel of a 3x3 depthwise conv, stride 1, padding 1 (2,304 MACs): at most
    4.5 instructions per MAC on Cortex-M4/M7/M33 and 6.5 on RV32 (measured 3.57-3.82 and 4.00:
    the plane copied into a frame of zero points, so that no output tests a tap; 7.1-7.2 and
    8.45 with the border's outputs testing each tap, a quarter of them here; the TIR loop
    took 11-16 on Cortex-M7, float conversions and padding tests on every tap)."""
    for name, limit in (("cortex-m4", 4.5), ("cortex-m7", 4.5), ("cortex-m33", 4.5), ("riscv32", 6.5)):
        result = checker_runs[name][3]
        assert result.region_instructions[2] / 2304 <= limit, (name, result.region_instructions[2] / 2304)


@pytest.mark.slow
def test_depthwise_requant_micro_kernel_instructions_per_mac(checker_runs):
    """The same 16x16 channel requantized in the call that computes it (tt_dw_plane_requant_s8,
    2,304 MACs, 256 outputs): at most 4.4 instructions per MAC on Cortex-M4/M7/M33 (measured
    3.78-4.00: the requantization adds under 4 instructions an output to the plane alone,
    where storing the float sums and requantizing them in a second call added about 9) and
    4.9 on RV32 (4.42, from the float window sums)."""
    for name, limit in (("cortex-m4", 4.4), ("cortex-m7", 4.4), ("cortex-m33", 4.4), ("riscv32", 4.9)):
        result = checker_runs[name][3]
        assert result.region_instructions[18] / 2304 <= limit, (name, result.region_instructions[18] / 2304)


@pytest.mark.slow
def test_float_micro_kernel_instructions_per_mac(checker_runs):
    """The input-gradient row, 64 channels x 16 pixels (1,024 MACs): at most 2.6
    instructions per MAC on Cortex-M4/M7/M33 (measured 2.22: each MAC one VMLA, 8 gradient
    values one VLDM), at most 4 in plain C on RV32 (3.71; the TIR loop took about 7 on
    Cortex-M7); two channels' rows in one call, each gradient value loaded once for both: at
    most 2.1 on Cortex-M (1.82), 3.5 on RV32 (3.05, the loop over channels unrolled 4 times)."""
    for name, row, rows2 in (("cortex-m4", 2.6, 2.1), ("cortex-m7", 2.6, 2.1), ("cortex-m33", 2.6, 2.1),
                             ("riscv32", 4.0, 3.5)):
        result = checker_runs[name][3]
        assert result.region_instructions[1] / 1024 <= row, (name, result.region_instructions[1] / 1024)
        assert result.region_instructions[3] / 2048 <= rows2, (name, result.region_instructions[3] / 2048)


@pytest.mark.slow
def test_float_conv_micro_kernel_instructions_per_mac(checker_runs):
    """A float32 3x3 conv, 16 channels of 16x16, stride 1, padding 1 (36,864 MACs): at most 2.0
    instructions per MAC on Cortex-M4/M7/M33, border included (measured 1.50-1.68: each MAC
    one VMLA, a multiply-accumulate that rounds the product as C does, so the same bits as a
    multiply and an add, which took 2.74-2.80; a window row's 8 inputs one VLDM), at most
    3.0 on RV32 (2.79: its FMADD.S is
    fused, so a multiply and an add it is; the TIR loop took about 6.6 on Cortex-M7)."""
    for name, limit in (("cortex-m4", 2.0), ("cortex-m7", 2.0), ("cortex-m33", 2.0), ("riscv32", 3.0)):
        result = checker_runs[name][3]
        assert result.region_instructions[4] / 36864 <= limit, (name, result.region_instructions[4] / 36864)


@pytest.mark.slow
def test_two_channel_micro_kernel_instructions_per_mac(checker_runs):
    """Two output channels' rows of 128 input channels x 16 pixels (4,096 MACs), each input
    value loaded once for both: at most 2.3 instructions per MAC with SMLAD on Cortex-M4/M7/M33
    (measured 2.10-2.22 with 4 pixels x 2 channels a step, 2.02-2.15 before the staged loop
    beside it in the same function went to inline asm, 2.23 with 2 x 2; one channel a call
    takes 2.15-2.20), at most 3.1 in plain C on RV32 (2.67 with 8 pixels x 2 channels a step,
    FMADD.S on the exact integer sums; 3.17 with MUL and ADD; one channel 3.69)."""
    for name, limit in (("cortex-m4", 2.3), ("cortex-m7", 2.3), ("cortex-m33", 2.3), ("riscv32", 3.1)):
        result = checker_runs[name][3]
        assert result.region_instructions[5] / 4096 <= limit, (name, result.region_instructions[5] / 4096)


@pytest.mark.slow
def test_conv_row_micro_kernel_instructions_per_mac(checker_runs):
    """A stem row: 3 channels of 128 pixels, a 3x3 window at stride 2, 64 outputs (1,728 MACs),
    the call's weight packing and zero check included: at most 3.0 instructions per MAC on
    Cortex-M4/M7/M33 (measured 2.65-2.78: four outputs a step, two input words giving 12 taps
    with SMLAD/SMLA, the loop over the window's 9 rows unrolled, the weights read once into
    their table and their column sums, the border output from the table; two outputs a step
    took 3.64-3.70), at most 4.2 in plain C on RV32 (3.46, eight outputs a step: no integer
    multiply-accumulate instruction, so the exact integer sums in float with FMADD.S; 5.89 two
    outputs a step with MUL and ADD). The TIR loop with its padding tests took 11.1 on Cortex-M7."""
    for name, limit in (("cortex-m4", 3.0), ("cortex-m7", 3.0), ("cortex-m33", 3.0), ("riscv32", 4.2)):
        result = checker_runs[name][3]
        assert result.region_instructions[6] / 1728 <= limit, (name, result.region_instructions[6] / 1728)


@pytest.mark.slow
def test_depthwise_input_gradient_micro_kernel_instructions_per_mac(checker_runs):
    """MCUNet's 7x7 stride-2 depthwise input gradient, one channel: 8 x 8 outputs of 49 taps
    each (3,136 MACs as TIR counts them, a quarter on the stride's grid): at most 3
    instructions per counted MAC on every board (measured 2.28-2.57; the TIR loop, testing
    every tap, took 11.4 on Cortex-M7)."""
    for name in ("cortex-m4", "cortex-m7", "cortex-m33", "riscv32"):
        result = checker_runs[name][3]
        assert result.region_instructions[7] / 3136 <= 3.0, (name, result.region_instructions[7] / 3136)


@pytest.mark.slow
def test_requantization_micro_kernel_instructions_per_output(checker_runs):
    """32 outputs of an int8 conv requantized (bias, scale, rounding, zero point, clamp): at most
    11 instructions per output on Cortex-M4/M7/M33 (measured 10.1 with the call: the rounding
    as a float addition and QSUB/SSAT for the zero point and clamp, where TVM's loop took
    about 17.5 on Cortex-M7 with VRINTR and more where nearbyintf is a function), at most 24
    in plain C on RV32 (20.8)."""
    for name, limit in (("cortex-m4", 11.0), ("cortex-m7", 11.0), ("cortex-m33", 11.0), ("riscv32", 24.0)):
        result = checker_runs[name][3]
        assert result.region_instructions[8] / 32 <= limit, (name, result.region_instructions[8] / 32)


@pytest.mark.slow
def test_fused_row_and_requantization_instructions_per_output(checker_runs):
    """An expansion conv's row fused with its requantization (tt_pw_row_requant_s8): 32
    outputs of 16 input channels, the sums not kept (as in MCUNet's expansions): at most 54
    instructions per output on Cortex-M4/M7/M33 (measured 47.1-50.0, 2.9-3.1 per MAC with the
    requantization, the bias added in int32, the 16 weights split once into halfword pairs in
    registers; 53.8-55.1 with the weights loaded and split every 4 pixels; the three loops it
    replaces, zeroing, tt_pw_row_s8 and tt_requant_s8, took about 66 on MCUNet's rows), at
    most 82 on RV32 (75.3)."""
    for name, limit in (("cortex-m4", 54.0), ("cortex-m7", 54.0), ("cortex-m33", 54.0), ("riscv32", 82.0)):
        result = checker_runs[name][3]
        assert result.region_instructions[9] / 32 <= limit, (name, result.region_instructions[9] / 32)


@pytest.mark.slow
def test_two_channel_row_and_requantization_instructions_per_mac(checker_runs):
    """Two output channels' rows of 48 input channels x 16 pixels with their requantization
    (tt_pw_rows2_requant_s8, 1,536 MACs, 32 outputs, as MCUNet's pointwise projections): at
    most 2.6 instructions per MAC on Cortex-M4/M7/M33 everything included (measured 2.41-2.50:
    4 pixels x 2 channels a step with SMLAD, each output requantized from registers), at most
    3.6 on RV32 (2.95, 8 pixels x 2 channels a step, the sums in float to the end)."""
    for name, limit in (("cortex-m4", 2.6), ("cortex-m7", 2.6), ("cortex-m33", 2.6), ("riscv32", 3.6)):
        result = checker_runs[name][3]
        assert result.region_instructions[10] / 1536 <= limit, (name, result.region_instructions[10] / 1536)


@pytest.mark.slow
def test_two_channel_expansion_planes_instructions_per_mac(checker_runs):
    """Two output channels' whole 32x32 planes of 8 input channels with their requantization
    in one call (tt_pw_rows2_requant_s8 as MCUNet's first expansion, fused with its depthwise
    conv, calls it; 16,384 MACs): at most 3.0 instructions per MAC on Cortex-M4/M7/M33
    (measured 2.76: each pair of input rows packed once for both channels, a requantization
    per 8 MACs; one channel a call took 2.94 in the step's profile), at most 4.3 on RV32
    (3.92)."""
    for name, limit in (("cortex-m4", 3.0), ("cortex-m7", 3.0), ("cortex-m33", 3.0), ("riscv32", 4.3)):
        result = checker_runs[name][3]
        assert result.region_instructions[17] / 16384 <= limit, (name, result.region_instructions[17] / 16384)


@pytest.mark.slow
def test_staged_two_channel_rows_instructions_per_mac(checker_runs):
    """12 output channel pairs of one row of 160 input channels x 8 pixels from a row staged
    once (tt_pw_rows2_staged_s8 and its requantizing form alternately, 30,720 MACs, as MCUNet's
    late pointwise convs): at most 1.7 instructions per MAC on Cortex-M4/M7/M33 (measured
    1.49-1.50 with the staged loop in inline asm, 1.68-1.81 as gcc compiled it, which spilled
    a sum, a scratch value, the stride and the loop's end; unstaged, each pair repacks the
    rows: 2.3-2.4), at most 3.1 on RV32 (2.77: half the channels staged as float32, read
    without a conversion, FMADD.S on the exact integer sums; 2.92 with nothing staged)."""
    for name, limit in (("cortex-m4", 1.7), ("cortex-m7", 1.7), ("cortex-m33", 1.7), ("riscv32", 3.1)):
        result = checker_runs[name][3]
        assert result.region_instructions[11] / 30720 <= limit, (name, result.region_instructions[11] / 30720)


@pytest.mark.slow
def test_staged_planes_instructions_per_mac(checker_runs):
    """6 output channels' 8x16 planes of 24 input channels, a plane a call, from input planes
    staged once (tt_pw_row_requant_staged_s8, 18,432 MACs with the requantization, as the
    expansions fused with a depthwise conv in MCUNet's late stages): at most 2.8 instructions
    per MAC on Cortex-M4/M7/M33 (measured 2.55-2.61; a row a call from the rows, 3.3-3.4), at
    most 4.6 on RV32 (3.93: the plain C rows, half the channels from the float32 stage)."""
    for name, limit in (("cortex-m4", 2.8), ("cortex-m7", 2.8), ("cortex-m33", 2.8), ("riscv32", 4.6)):
        result = checker_runs[name][3]
        assert result.region_instructions[12] / 18432 <= limit, (name, result.region_instructions[12] / 18432)


@pytest.mark.slow
def test_weight_gradient_micro_kernel_instructions_per_mac(checker_runs):
    """A 4 x 4 tile of a pointwise conv's weight gradient over 64 pixels (tt_pw_wgrad_f32s8,
    1,024 MACs, as MCUNet's trained blocks at 8x8): at most 3 instructions per MAC on
    Cortex-M4/M7/M33 (measured 2.76 with the call; TVM's loop, one sum in memory and an input
    converted for every product, took 7.5 with the SGD update), at most 4.5 on RV32 (4.10)."""
    for name, limit in (("cortex-m4", 3.0), ("cortex-m7", 3.0), ("cortex-m33", 3.0), ("riscv32", 4.5)):
        result = checker_runs[name][3]
        assert result.region_instructions[13] / 1024 <= limit, (name, result.region_instructions[13] / 1024)


@pytest.mark.slow
def test_conv_plane_micro_kernel_instructions_per_mac(checker_runs):
    """A ResNet stage's int8 3x3 conv, one output channel: 16 input channels of 16x16,
    stride 1, padding 1 (36,864 MACs), the call's checks and weight packing and the border
    included: at most 2.5 instructions per MAC on Cortex-M4/M7/M33 (measured 1.90-2.25: SMLAD,
    four outputs a step, 1.58 in the inner loop; the outputs on the left and right edges two
    at a time with their neighbours), at most 3.1 in plain C on RV32 (2.69 summing the exact
    integers in float with FMADD.S, eight outputs a step; 3.33 with MUL and ADD). TVM's loop, one output at a time
    with its padding tests, took 11.5 on Cortex-M4."""
    for name, limit in (("cortex-m4", 2.5), ("cortex-m7", 2.5), ("cortex-m33", 2.5), ("riscv32", 3.1)):
        result = checker_runs[name][3]
        assert result.region_instructions[14] / 36864 <= limit, (name, result.region_instructions[14] / 36864)


@pytest.mark.slow
def test_wide_depthwise_micro_kernel_instructions_per_mac(checker_runs):
    """MCUNet's 7x7 stride-2 depthwise plane (32x32, 12,544 MACs) and 5x5 stride-1 plane (8x8,
    1,600 MACs), one channel each, the call's weight packing and zero-point frame included: at
    most 2.6 and 3.2 instructions per MAC on Cortex-M4/M7/M33 (measured 2.22-2.39 and 2.80-2.83:
    four outputs a step, each window row's packed weights loaded once for them and, at stride 1,
    each input word split once for the four; two outputs a step took 2.72-2.92 and 4.4), at
    most 3.4 and 3.3 on RV32 (3.04 and 2.85: a window row's inputs converted to float once for
    four outputs, eight for 5x5 at stride 1, FMADD.S; one output at a time with MUL and ADD took
    4.94 and 5.38)."""
    for name, wide, small in (("cortex-m4", 2.6, 3.2), ("cortex-m7", 2.6, 3.2), ("cortex-m33", 2.6, 3.2),
                              ("riscv32", 3.4, 3.3)):
        result = checker_runs[name][3]
        assert result.region_instructions[15] / 12544 <= wide, (name, result.region_instructions[15] / 12544)
        assert result.region_instructions[16] / 1600 <= small, (name, result.region_instructions[16] / 1600)
