"""Tensorize: the hot loop nests of the kernels become calls of C micro-kernels.

A fused kernel (passes/fuse_kernels.py) computes a pointwise conv a row at a time: for each
output channel and row, a float32 accumulator of one row is zeroed, then

    acc[x] += (float(a[i, x]) - zx) * float(w[i])     int8 a and w (the forward)
    acc[x] += a[i, x] * float(w[i])                    float32 a, int8 w (input gradients)

for x < width, i < channels (two output channels' rows at a time where the kernel ends
with the conv, the accumulator holding both, `_pair_channel_rows` in
passes/fuse_kernels.py); a small depthwise conv a channel plane at a time (the
accumulator an out_h x out_w plane, TOPI's padding tests in the sum), and the same for a
float32 conv with a window, over all its input channels (float models). Printed as C, such
a loop converts its int8 operands to float on every multiply-accumulate and keeps nothing in
registers. This step matches those loop nests with TVM's `tensorize` against a
`TensorIntrin` whose description is that very computation and whose implementation calls a
micro-kernel of `runtime/tt_kernels.c` (`tt_pw_row_s8`: int32 sums, SXTB16/SMLA on
Cortex-M; `tt_pw_rows2_s8`: two channels, each input loaded once for both, SMLAD on
channel pairs; `tt_pw_row_f32s8`: 8 pixels in registers; `tt_pw_rows2_f32s8`: the same for
two rows, or two small planes whole, each gradient value loaded once for both;
`tt_pw_wgrad_f32s8`: a 4 x 4 tile of a pointwise conv's weight gradient
(`_tile_weight_gradient` in passes/fuse_kernels.py), 16 sums in registers;
`tt_dw_plane_s8`: int32 sums, no bounds tests inside the plane; `tt_conv_plane_s8`: the
same for an int8 conv over several input channels (a ResNet's 3x3 convs), an output
channel's plane a call, four outputs a step with SMLAD (`tt_conv_row_wide_s8` its code for a
large plane's rows whose window has more than 49 taps); `tt_conv_plane_f32`: a
row's outputs in registers, the padding as zeros, for a conv and for its input gradient at
stride 1, conv2d_transpose, the window read flipped). An int8 conv's requantization, the loop that turns a row of its float32 sums into
int8 outputs (bias, scale, rounding, zero point, clamp), becomes `tt_requant_s8` (the
rounding as one float addition, QSUB/SSAT for the zero point and the clamp). Each gives the
same bits as the loop it replaces (see there). Last, `_fused_rows` rewrites what tensorizing
left in a row: a pointwise row's zeroing, call and requantization become one call
(`tt_pw_row_requant_s8`), and the zeroing loop in front of a kernel that can zero its own
accumulator is dropped (its `zeroed` argument set); then `_fused_pairs` makes a two-channel
row and the loop requantizing its two rows one call (`tt_pw_rows2_requant_s8`); each only
where the blocks' regions show the loops touch exactly the same accumulator. Matching is
TVM's structural comparison, so a loop that differs in any way (another operand expression, a
strided input) is left as it is. Then the input is packed for SMLAD once instead of once per
output channel: `_staged_loop` gives a loop over a row's channel pairs a staged row (and each
pair's weight folds, summed once per kernel), `_staged_planes_loop` gives a fused expansion's
loop over output channels its whole input staged once (where that fits
STAGE_PLANES_MAX_BYTES), and so a loop over output channel pairs outside rows (weights that
the kernel concatenates a pair at a time), and `_whole_plane_loop` makes such a channel's
plane one call instead of one per row, as it does the requantization of a depthwise plane.
One kernel tensorize cannot match is swapped whole for a call (`_mask_bits`, a documented
lowering rule): PackBackwardMasks' packing of a condition 8 elements a byte, whose index
expressions differ with every shape.

It runs when lowering to C only: the Relax VM reference keeps the plain TIR.
"""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np
import tvm
import tvm_ffi
from tvm.s_tir import Schedule, ScheduleError, TensorIntrin
from tvm.script import tirx as T
from tvm.tirx.analysis import undefined_vars

from tvm_tinytrain.passes.fuse_kernels import padded_float_conv, scheduled, transposed_depthwise

INT8_ROW = "tt_pw_row_s8"      # acc[x] += (float(a[i, x]) - zx) * float(w[i]), int8 a
FLOAT_ROW = "tt_pw_row_f32s8"  # acc[x] += a[i, x] * float(w[i]), float32 a
INT8_ROWS2 = "tt_pw_rows2_s8"  # two output channels' rows: acc[f, x] += (float(a[i, x]) - zx) * float(w[f, i])
FLOAT_ROWS2 = "tt_pw_rows2_f32s8"  # the same for input gradients: acc[f, x] += a[i, x] * float(w[i, f])
DEPTHWISE_PLANE = "tt_dw_plane_s8"  # one channel of an int8 depthwise conv, padding included
CONV_ROW = "tt_conv_row_s8"  # one row of an int8 conv with a window, away from the top and bottom padding
CONV_ROW_WIDE = "tt_conv_row_wide_s8"  # the same for windows of more than 49 taps (tt_conv_plane_s8's code)
CONV_ROW_MAX_TAPS = 49  # tt_conv_row_s8's int32 path (TT_DW_MAX_TAPS); wider windows call CONV_ROW_WIDE
CONV_PLANE = "tt_conv_plane_s8"  # one output channel of an int8 conv with a window over several channels, padding included
DW_TRANSPOSE = "tt_dw_transpose_f32s8"  # one channel of an int8 depthwise conv's input gradient
FLOAT_CONV_PLANE = "tt_conv_plane_f32"  # one output channel of a float32 conv, padding included
WEIGHT_GRADIENT = "tt_pw_wgrad_f32s8"  # a tile of a pointwise conv's weight gradient: (float(int8 a) - zx) x gradient
REQUANT = "tt_requant_s8"  # an int8 conv's outputs from its float32 sums: bias, scale, round, zero point, clamp
INT8_ROW_REQUANT = "tt_pw_row_requant_s8"  # INT8_ROW on a zeroed row, then REQUANT of it, in one call
INT8_ROWS2_REQUANT = "tt_pw_rows2_requant_s8"  # INT8_ROWS2 on zeroed rows, then REQUANT of each, in one call
STAGED = {INT8_ROWS2: "tt_pw_rows2_staged_s8", INT8_ROWS2_REQUANT: "tt_pw_rows2_requant_staged_s8"}  # + a staged row
ROW_REQUANT_STAGED = "tt_pw_row_requant_staged_s8"  # INT8_ROW_REQUANT reading the staged input planes
ROWS2_PLANES_STAGED = "tt_pw_rows2_planes_staged_s8"  # INT8_ROWS2 reading the staged input planes
ROWS2_REQUANT_PLANES_STAGED = "tt_pw_rows2_requant_planes_staged_s8"  # the same for INT8_ROWS2_REQUANT
DW_PLANE_REQUANT = "tt_dw_plane_requant_s8"  # DEPTHWISE_PLANE on a zeroed plane, then REQUANT of it, in one call
_REQUANT_MIN_WIDTH = 4  # narrower rows keep TVM's loop: a call costs about what it saves per output
_CLAMP = (127.49, -128.49)  # the bounds TVM's int8 requantization clamps to before its last rounding
_REDUCE = 2  # IterVar.CommReduce


def pointwise_row_intrin(kernel: str, channels: int, width: int, zero: int = 0) -> str:
    """The registered name of the intrinsic of `kernel` for one (channels, width, zero point)."""
    name = f"tinytrain.{kernel}.c{channels}.w{width}.z{zero}"
    if TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    K, W, zx, one = T.int64(channels), T.int64(width), T.float32(zero), T.int64(1)

    # The descriptions. A zero point of 0 folds away as it does in the kernels ("x - 0.0" is x).
    @T.prim_func(s_tir=True)
    def int8_desc(a: T.handle, b: T.handle, c: T.handle):
        A = T.match_buffer(a, (one, K, one, W), "int8", offset_factor=1)
        B = T.match_buffer(b, (one, K, one, one), "int8", offset_factor=1)
        C = T.match_buffer(c, (one, one, one, W), "float32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0, 0, 0, 0:W], A[0, 0:K, 0, 0:W], B[0, 0:K, 0, 0])
            T.writes(C[0, 0, 0, 0:W])
            for n, f, y, x, k, ry, rx in T.grid(one, one, one, W, K, one, one):
                with T.sblock("update"):
                    vx, vk = T.axis.remap("SR", [x, k])
                    C[0, 0, 0, vx] = C[0, 0, 0, vx] + (T.Cast("float32", A[0, vk, 0, vx]) - zx) * T.Cast(
                        "float32", B[0, vk, 0, 0])

    @T.prim_func(s_tir=True)
    def float_desc(a: T.handle, b: T.handle, c: T.handle):
        A = T.match_buffer(a, (one, K, one, W), "float32", offset_factor=1)
        B = T.match_buffer(b, (K, one, one, one), "int8", offset_factor=1)
        C = T.match_buffer(c, (one, one, one, W), "float32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0, 0, 0, 0:W], A[0, 0:K, 0, 0:W], B[0:K, 0, 0, 0])
            T.writes(C[0, 0, 0, 0:W])
            for n, f, y, x, k, ry, rx in T.grid(one, one, one, W, K, one, one):
                with T.sblock("update"):
                    vx, vk = T.axis.remap("SR", [x, k])
                    C[0, 0, 0, vx] = C[0, 0, 0, vx] + A[0, vk, 0, vx] * T.Cast("float32", B[vk, 0, 0, 0])

    # The implementations: a call of the micro-kernel with the operands' row strides.
    @T.prim_func(s_tir=True)
    def int8_impl(a: T.handle, b: T.handle, c: T.handle):
        a_stride = T.int64()
        b_stride = T.int64()
        A = T.match_buffer(a, (one, K, one, W), "int8", offset_factor=1, strides=[T.int64(), a_stride, T.int64(), one])
        B = T.match_buffer(b, (one, K, one, one), "int8", offset_factor=1,
                           strides=[T.int64(), b_stride, T.int64(), T.int64()])
        C = T.match_buffer(c, (one, one, one, W), "float32", offset_factor=1,
                           strides=[T.int64(), T.int64(), T.int64(), one])
        with T.sblock("root"):
            T.reads(C[0, 0, 0, 0:W], A[0, 0:K, 0, 0:W], B[0, 0:K, 0, 0])
            T.writes(C[0, 0, 0, 0:W])
            T.evaluate(T.call_extern("int32", INT8_ROW, T.address_of(C[0, 0, 0, 0]), T.address_of(A[0, 0, 0, 0]),
                                     T.Cast("int32", a_stride), T.address_of(B[0, 0, 0, 0]), T.Cast("int32", b_stride),
                                     channels, width, zero))

    @T.prim_func(s_tir=True)
    def float_impl(a: T.handle, b: T.handle, c: T.handle):
        a_stride = T.int64()
        b_stride = T.int64()
        A = T.match_buffer(a, (one, K, one, W), "float32", offset_factor=1,
                           strides=[T.int64(), a_stride, T.int64(), one])
        B = T.match_buffer(b, (K, one, one, one), "int8", offset_factor=1,
                           strides=[b_stride, T.int64(), T.int64(), T.int64()])
        C = T.match_buffer(c, (one, one, one, W), "float32", offset_factor=1,
                           strides=[T.int64(), T.int64(), T.int64(), one])
        with T.sblock("root"):
            T.reads(C[0, 0, 0, 0:W], A[0, 0:K, 0, 0:W], B[0:K, 0, 0, 0])
            T.writes(C[0, 0, 0, 0:W])
            T.evaluate(T.call_extern("int32", FLOAT_ROW, T.address_of(C[0, 0, 0, 0]), T.address_of(A[0, 0, 0, 0]),
                                     T.Cast("int32", a_stride), T.address_of(B[0, 0, 0, 0]), T.Cast("int32", b_stride),
                                     channels, width))

    if kernel == INT8_ROW:
        TensorIntrin.register(name, int8_desc, int8_impl)
    else:  # FLOAT_ROW: no zero point
        TensorIntrin.register(name, float_desc, float_impl)
    return name


def rows2_intrin(kernel: str, channels: int, width: int, zero: int = 0) -> str:
    """The registered name of the intrinsic computing two output channels' rows of a
    pointwise conv (`_pair_channel_rows` in passes/fuse_kernels.py) over `channels` input
    channels of `width` pixels: `kernel` INT8_ROWS2 (the forward, zero point `zero`) or
    FLOAT_ROWS2 (an input gradient)."""
    name = f"tinytrain.{kernel}.c{channels}.w{width}.z{zero}"
    if TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    K, W, two, one, zx = T.int64(channels), T.int64(width), T.int64(2), T.int64(1), T.float32(zero)

    @T.prim_func(s_tir=True)
    def int8_desc(a: T.handle, b: T.handle, c: T.handle):
        A = T.match_buffer(a, (one, K, one, W), "int8", offset_factor=1)
        B = T.match_buffer(b, (two, K, one, one), "int8", offset_factor=1)
        C = T.match_buffer(c, (one, two, one, W), "float32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0, 0:2, 0, 0:W], A[0, 0:K, 0, 0:W], B[0:2, 0:K, 0, 0])
            T.writes(C[0, 0:2, 0, 0:W])
            for n, f, y, x, k, ry, rx in T.grid(one, two, one, W, K, one, one):
                with T.sblock("update"):
                    vf, vx, vk = T.axis.remap("SSR", [f, x, k])
                    C[0, vf, 0, vx] = C[0, vf, 0, vx] + (T.Cast("float32", A[0, vk, 0, vx]) - zx) * T.Cast(
                        "float32", B[vf, vk, 0, 0])

    @T.prim_func(s_tir=True)
    def float_desc(a: T.handle, b: T.handle, c: T.handle):
        A = T.match_buffer(a, (one, K, one, W), "float32", offset_factor=1)
        B = T.match_buffer(b, (K, two, one, one), "int8", offset_factor=1)
        C = T.match_buffer(c, (one, two, one, W), "float32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0, 0:2, 0, 0:W], A[0, 0:K, 0, 0:W], B[0:K, 0:2, 0, 0])
            T.writes(C[0, 0:2, 0, 0:W])
            for n, f, y, x, k, ry, rx in T.grid(one, two, one, W, K, one, one):
                with T.sblock("update"):
                    vf, vx, vk = T.axis.remap("SSR", [f, x, k])
                    C[0, vf, 0, vx] = C[0, vf, 0, vx] + A[0, vk, 0, vx] * T.Cast("float32", B[vk, vf, 0, 0])

    # The implementations: the micro-kernel with the operands' strides (b_pair between the two
    # channels' weights, b_stride between input channels, c_pair between the two rows).
    @T.prim_func(s_tir=True)
    def int8_impl(a: T.handle, b: T.handle, c: T.handle):
        a_stride = T.int64()
        b_stride = T.int64()
        b_pair = T.int64()
        c_pair = T.int64()
        A = T.match_buffer(a, (one, K, one, W), "int8", offset_factor=1, strides=[T.int64(), a_stride, T.int64(), one])
        B = T.match_buffer(b, (two, K, one, one), "int8", offset_factor=1,
                           strides=[b_pair, b_stride, T.int64(), T.int64()])
        C = T.match_buffer(c, (one, two, one, W), "float32", offset_factor=1,
                           strides=[T.int64(), c_pair, T.int64(), one])
        with T.sblock("root"):
            T.reads(C[0, 0:2, 0, 0:W], A[0, 0:K, 0, 0:W], B[0:2, 0:K, 0, 0])
            T.writes(C[0, 0:2, 0, 0:W])
            T.evaluate(T.call_extern("int32", INT8_ROWS2, T.address_of(C[0, 0, 0, 0]), T.address_of(A[0, 0, 0, 0]),
                                     T.Cast("int32", a_stride), T.address_of(B[0, 0, 0, 0]), T.Cast("int32", b_pair),
                                     T.Cast("int32", b_stride), channels, width, T.Cast("int32", c_pair), zero, 0))

    @T.prim_func(s_tir=True)
    def float_impl(a: T.handle, b: T.handle, c: T.handle):
        a_stride = T.int64()
        b_stride = T.int64()
        b_pair = T.int64()
        c_pair = T.int64()
        A = T.match_buffer(a, (one, K, one, W), "float32", offset_factor=1,
                           strides=[T.int64(), a_stride, T.int64(), one])
        B = T.match_buffer(b, (K, two, one, one), "int8", offset_factor=1,
                           strides=[b_stride, b_pair, T.int64(), T.int64()])
        C = T.match_buffer(c, (one, two, one, W), "float32", offset_factor=1,
                           strides=[T.int64(), c_pair, T.int64(), one])
        with T.sblock("root"):
            T.reads(C[0, 0:2, 0, 0:W], A[0, 0:K, 0, 0:W], B[0:K, 0:2, 0, 0])
            T.writes(C[0, 0:2, 0, 0:W])
            T.evaluate(T.call_extern("int32", FLOAT_ROWS2, T.address_of(C[0, 0, 0, 0]), T.address_of(A[0, 0, 0, 0]),
                                     T.Cast("int32", a_stride), T.address_of(B[0, 0, 0, 0]), T.Cast("int32", b_pair),
                                     T.Cast("int32", b_stride), channels, width, T.Cast("int32", c_pair)))

    if kernel == INT8_ROWS2:
        TensorIntrin.register(name, int8_desc, int8_impl)
    else:  # FLOAT_ROWS2: no zero point
        TensorIntrin.register(name, float_desc, float_impl)
    return name


def planes2_intrin(channels: int, height: int, width: int) -> str:
    """The registered name of the intrinsic computing two output channels' whole planes
    (height x width) of an input gradient's pointwise conv, the small planes that
    `_small_gradient_planes` in passes/fuse_kernels.py pairs: FLOAT_ROWS2 walks each plane as
    one row of height x width pixels, so the planes' rows must lie one after the other, as
    they do in the accumulator and in an NCHW tensor (the strides below say so)."""
    name = f"tinytrain.{FLOAT_ROWS2}.c{channels}.h{height}.w{width}"
    if TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    K, H, W, two, one = T.int64(channels), T.int64(height), T.int64(width), T.int64(2), T.int64(1)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle):
        A = T.match_buffer(a, (one, K, H, W), "float32", offset_factor=1)
        B = T.match_buffer(b, (K, two, one, one), "int8", offset_factor=1)
        C = T.match_buffer(c, (one, two, H, W), "float32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0, 0:2, 0:H, 0:W], A[0, 0:K, 0:H, 0:W], B[0:K, 0:2, 0, 0])
            T.writes(C[0, 0:2, 0:H, 0:W])
            for n, f, y, x, k, ry, rx in T.grid(one, two, H, W, K, one, one):
                with T.sblock("update"):
                    vf, vy, vx, vk = T.axis.remap("SSSR", [f, y, x, k])
                    C[0, vf, vy, vx] = C[0, vf, vy, vx] + A[0, vk, vy, vx] * T.Cast("float32", B[vk, vf, 0, 0])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle):
        a_stride = T.int64()
        b_stride = T.int64()
        b_pair = T.int64()
        c_pair = T.int64()
        A = T.match_buffer(a, (one, K, H, W), "float32", offset_factor=1, strides=[T.int64(), a_stride, W, one])
        B = T.match_buffer(b, (K, two, one, one), "int8", offset_factor=1,
                           strides=[b_stride, b_pair, T.int64(), T.int64()])
        C = T.match_buffer(c, (one, two, H, W), "float32", offset_factor=1, strides=[T.int64(), c_pair, W, one])
        with T.sblock("root"):
            T.reads(C[0, 0:2, 0:H, 0:W], A[0, 0:K, 0:H, 0:W], B[0:K, 0:2, 0, 0])
            T.writes(C[0, 0:2, 0:H, 0:W])
            T.evaluate(T.call_extern("int32", FLOAT_ROWS2, T.address_of(C[0, 0, 0, 0]), T.address_of(A[0, 0, 0, 0]),
                                     T.Cast("int32", a_stride), T.address_of(B[0, 0, 0, 0]), T.Cast("int32", b_pair),
                                     T.Cast("int32", b_stride), channels, height * width, T.Cast("int32", c_pair)))

    TensorIntrin.register(name, desc, impl)
    return name


def weight_gradient_intrin(out_channels: int, channels: int, height: int, width: int, zero: int) -> str:
    """The registered name of the intrinsic summing an out_channels x channels tile of a
    pointwise conv's weight gradient over height x width planes (`_tile_weight_gradient` in
    passes/fuse_kernels.py): acc[f, c] += (float(a[c, y, x]) - zx) * b[f, y, x], int8 inputs a
    of zero point zx, the float32 output gradient b, whose planes must be contiguous (the
    strides below say so)."""
    name = f"tinytrain.{WEIGHT_GRADIENT}.f{out_channels}.c{channels}.h{height}.w{width}.z{zero}"
    if TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    F, C, H, W, one = (T.int64(n) for n in (out_channels, channels, height, width, 1))
    zx = T.float32(zero)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle):
        A = T.match_buffer(a, (one, C, H, W), "int8", offset_factor=1)
        B = T.match_buffer(b, (one, F, H, W), "float32", offset_factor=1)
        Acc = T.match_buffer(c, (F, C, one, one), "float32", offset_factor=1)
        with T.sblock("root"):
            T.reads(Acc[0:F, 0:C, 0, 0], A[0, 0:C, 0:H, 0:W], B[0, 0:F, 0:H, 0:W])
            T.writes(Acc[0:F, 0:C, 0, 0])
            for f, c, y, x, rc, ry, rx in T.grid(F, C, one, one, one, H, W):
                with T.sblock("update"):
                    vf, vc, vry, vrx = T.axis.remap("SSRR", [f, c, ry, rx])
                    Acc[vf, vc, 0, 0] = Acc[vf, vc, 0, 0] + (T.Cast("float32", A[0, vc, vry, vrx]) - zx) * B[
                        0, vf, vry, vrx]

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle):
        a_chan = T.int64()
        b_chan = T.int64()
        acc_f = T.int64()
        acc_c = T.int64()
        A = T.match_buffer(a, (one, C, H, W), "int8", offset_factor=1, strides=[T.int64(), a_chan, W, one])
        B = T.match_buffer(b, (one, F, H, W), "float32", offset_factor=1, strides=[T.int64(), b_chan, W, one])
        Acc = T.match_buffer(c, (F, C, one, one), "float32", offset_factor=1,
                             strides=[acc_f, acc_c, T.int64(), T.int64()])
        with T.sblock("root"):
            T.reads(Acc[0:F, 0:C, 0, 0], A[0, 0:C, 0:H, 0:W], B[0, 0:F, 0:H, 0:W])
            T.writes(Acc[0:F, 0:C, 0, 0])
            T.evaluate(T.call_extern("int32", WEIGHT_GRADIENT, T.address_of(Acc[0, 0, 0, 0]), T.Cast("int32", acc_f),
                                     T.Cast("int32", acc_c), T.address_of(A[0, 0, 0, 0]), T.Cast("int32", a_chan),
                                     T.address_of(B[0, 0, 0, 0]), T.Cast("int32", b_chan), out_channels, channels,
                                     height * width, zero))

    TensorIntrin.register(name, desc, impl)
    return name


def depthwise_plane_intrin(h: int, w: int, kh: int, kw: int, stride: int, pad: int, zero: int) -> str:
    """The registered name of the intrinsic for one channel of an int8 depthwise conv: an
    h x w input plane, a kh x kw window, `stride`, `pad` zeros on every side, zero point."""
    out_h, out_w = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    name = f"tinytrain.{DEPTHWISE_PLANE}.{h}x{w}.k{kh}x{kw}.s{stride}.p{pad}.z{zero}"
    if TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    # The conv reads the window's bounding box, padding included: rows -pad .. -pad + AH.
    H, Wd, KH, KW, OH, OW = (T.int64(v) for v in (h, w, kh, kw, out_h, out_w))
    AH, AW = T.int64((out_h - 1) * stride + kh), T.int64((out_w - 1) * stride + kw)
    s, p, zx, one = T.int64(stride), T.int64(pad), T.float32(zero), T.int64(1)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle):
        A = T.match_buffer(a, (one, one, AH, AW), "int8", offset_factor=1)
        B = T.match_buffer(b, (one, one, KH, KW), "int8", offset_factor=1)
        C = T.match_buffer(c, (one, one, OH, OW), "float32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0, 0, 0:OH, 0:OW], A[0, 0, 0:AH, 0:AW], B[0, 0, 0:KH, 0:KW])
            T.writes(C[0, 0, 0:OH, 0:OW])
            for n, f, y, x, r, ky, kx in T.grid(one, one, OH, OW, one, KH, KW):
                with T.sblock("update"):
                    vy, vx, vky, vkx = T.axis.remap("SSRR", [y, x, ky, kx])
                    C[0, 0, vy, vx] = C[0, 0, vy, vx] + T.if_then_else(
                        p <= vy * s + vky and vy * s + vky < H + p and p <= vx * s + vkx and vx * s + vkx < Wd + p,
                        T.Cast("float32", A[0, 0, vy * s + vky, vx * s + vkx]) - zx,
                        T.float32(0.0)) * T.Cast("float32", B[0, 0, vky, vkx])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle):
        a_row = T.int64()
        b_row = T.int64()
        A = T.match_buffer(a, (one, one, AH, AW), "int8", offset_factor=1,
                           strides=[T.int64(), T.int64(), a_row, one])
        B = T.match_buffer(b, (one, one, KH, KW), "int8", offset_factor=1,
                           strides=[T.int64(), T.int64(), b_row, one])
        C = T.match_buffer(c, (one, one, OH, OW), "float32", offset_factor=1,
                           strides=[T.int64(), T.int64(), OW, one])
        with T.sblock("root"):
            T.reads(C[0, 0, 0:OH, 0:OW], A[0, 0, 0:AH, 0:AW], B[0, 0, 0:KH, 0:KW])
            T.writes(C[0, 0, 0:OH, 0:OW])
            # the plane's element (0, 0): `pad` rows and columns into the box (addresses, not
            # access_ptr: TVM's storage rewrite may give an int8 buffer a float32 allocation)
            T.evaluate(T.call_extern("int32", DEPTHWISE_PLANE, T.address_of(C[0, 0, 0, 0]), T.address_of(A[0, 0, p, p]),
                                     T.Cast("int32", a_row), T.address_of(B[0, 0, 0, 0]), T.Cast("int32", b_row),
                                     h, w, kh, kw, stride, pad, out_h, out_w, zero, 0))

    TensorIntrin.register(name, desc, impl)
    return name


def conv_plane_intrin(c: int, h: int, w: int, kh: int, kw: int, stride: int, pad: int, zero: int) -> str:
    """The registered name of the intrinsic for one output channel of an int8 conv with a
    window over `c` > 1 input channels of h x w: a kh x kw window, `stride`, `pad` zeros on
    every side, zero point `zero` (the depthwise plane's, summed over channels)."""
    out_h, out_w = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    name = f"tinytrain.{CONV_PLANE}.c{c}.{h}x{w}.k{kh}x{kw}.s{stride}.p{pad}.z{zero}"
    if TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    C, H, Wd, KH, KW, OH, OW = (T.int64(v) for v in (c, h, w, kh, kw, out_h, out_w))
    AH, AW = T.int64((out_h - 1) * stride + kh), T.int64((out_w - 1) * stride + kw)
    s, p, zx, one = T.int64(stride), T.int64(pad), T.float32(zero), T.int64(1)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, o: T.handle):
        A = T.match_buffer(a, (one, C, AH, AW), "int8", offset_factor=1)
        B = T.match_buffer(b, (one, C, KH, KW), "int8", offset_factor=1)
        O = T.match_buffer(o, (one, one, OH, OW), "float32", offset_factor=1)
        with T.sblock("root"):
            T.reads(O[0, 0, 0:OH, 0:OW], A[0, 0:C, 0:AH, 0:AW], B[0, 0:C, 0:KH, 0:KW])
            T.writes(O[0, 0, 0:OH, 0:OW])
            for n, f, y, x, r, ky, kx in T.grid(one, one, OH, OW, C, KH, KW):
                with T.sblock("update"):
                    vy, vx, vr, vky, vkx = T.axis.remap("SSRRR", [y, x, r, ky, kx])
                    O[0, 0, vy, vx] = O[0, 0, vy, vx] + T.if_then_else(
                        p <= vy * s + vky and vy * s + vky < H + p and p <= vx * s + vkx and vx * s + vkx < Wd + p,
                        T.Cast("float32", A[0, vr, vy * s + vky, vx * s + vkx]) - zx,
                        T.float32(0.0)) * T.Cast("float32", B[0, vr, vky, vkx])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, o: T.handle):
        a_chan = T.int64()
        a_row = T.int64()
        b_chan = T.int64()
        b_row = T.int64()
        A = T.match_buffer(a, (one, C, AH, AW), "int8", offset_factor=1, strides=[T.int64(), a_chan, a_row, one])
        B = T.match_buffer(b, (one, C, KH, KW), "int8", offset_factor=1, strides=[T.int64(), b_chan, b_row, one])
        O = T.match_buffer(o, (one, one, OH, OW), "float32", offset_factor=1,
                           strides=[T.int64(), T.int64(), OW, one])
        with T.sblock("root"):
            T.reads(O[0, 0, 0:OH, 0:OW], A[0, 0:C, 0:AH, 0:AW], B[0, 0:C, 0:KH, 0:KW])
            T.writes(O[0, 0, 0:OH, 0:OW])
            # the plane's element (0, 0) of channel 0: `pad` rows and columns into the box
            T.evaluate(T.call_extern("int32", CONV_PLANE, T.address_of(O[0, 0, 0, 0]), T.address_of(A[0, 0, p, p]),
                                     T.Cast("int32", a_chan), T.Cast("int32", a_row), T.address_of(B[0, 0, 0, 0]),
                                     T.Cast("int32", b_chan), T.Cast("int32", b_row), c, h, w, kh, kw, stride, pad,
                                     out_h, out_w, zero, 0))

    TensorIntrin.register(name, desc, impl)
    return name


def conv_row_intrin(c: int, w: int, kh: int, kw: int, stride: int, pad: int, out_w: int, zero: int) -> str:
    """The registered name of the intrinsic for one output row of an int8 conv with a window
    whose input rows all lie inside the plane (`_split_padded_rows`): `c` input channels (1
    for a depthwise conv) of width w, a kh x kw window, `stride`, `pad` zeros left and right."""
    name = f"tinytrain.{CONV_ROW}.c{c}.w{w}.k{kh}x{kw}.s{stride}.p{pad}.o{out_w}.z{zero}"
    # a wide window takes the conv plane's code, linked only into the programs that call it
    kernel = CONV_ROW if c * kh * kw <= CONV_ROW_MAX_TAPS else CONV_ROW_WIDE
    if TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    C, Wd, KH, KW, OW = (T.int64(v) for v in (c, w, kh, kw, out_w))
    AW = T.int64((out_w - 1) * stride + kw)  # the row's columns -pad .. -pad + AW
    s, p, zx, one = T.int64(stride), T.int64(pad), T.float32(zero), T.int64(1)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, o: T.handle):
        A = T.match_buffer(a, (one, C, KH, AW), "int8", offset_factor=1)
        B = T.match_buffer(b, (one, C, KH, KW), "int8", offset_factor=1)
        O = T.match_buffer(o, (one, one, one, OW), "float32", offset_factor=1)
        with T.sblock("root"):
            T.reads(O[0, 0, 0, 0:OW], A[0, 0:C, 0:KH, 0:AW], B[0, 0:C, 0:KH, 0:KW])
            T.writes(O[0, 0, 0, 0:OW])
            for n, f, y, x, r, ky, kx in T.grid(one, one, one, OW, C, KH, KW):
                with T.sblock("update"):
                    vx, vr, vky, vkx = T.axis.remap("SRRR", [x, r, ky, kx])
                    O[0, 0, 0, vx] = O[0, 0, 0, vx] + T.if_then_else(
                        p <= vx * s + vkx and vx * s + vkx < Wd + p,
                        T.Cast("float32", A[0, vr, vky, vx * s + vkx]) - zx, T.float32(0.0)) * T.Cast(
                            "float32", B[0, vr, vky, vkx])

    # one input channel (a depthwise conv): TVM drops the unit channel axis from the block it
    # matches, so the description has none either
    @T.prim_func(s_tir=True)
    def depthwise_desc(a: T.handle, b: T.handle, o: T.handle):
        A = T.match_buffer(a, (one, C, KH, AW), "int8", offset_factor=1)
        B = T.match_buffer(b, (one, C, KH, KW), "int8", offset_factor=1)
        O = T.match_buffer(o, (one, one, one, OW), "float32", offset_factor=1)
        with T.sblock("root"):
            T.reads(O[0, 0, 0, 0:OW], A[0, 0:C, 0:KH, 0:AW], B[0, 0:C, 0:KH, 0:KW])
            T.writes(O[0, 0, 0, 0:OW])
            for n, f, y, x, r, ky, kx in T.grid(one, one, one, OW, C, KH, KW):
                with T.sblock("update"):
                    vx, vky, vkx = T.axis.remap("SRR", [x, ky, kx])
                    O[0, 0, 0, vx] = O[0, 0, 0, vx] + T.if_then_else(
                        p <= vx * s + vkx and vx * s + vkx < Wd + p,
                        T.Cast("float32", A[0, 0, vky, vx * s + vkx]) - zx, T.float32(0.0)) * T.Cast(
                            "float32", B[0, 0, vky, vkx])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, o: T.handle):
        a_chan = T.int64()
        a_row = T.int64()
        b_chan = T.int64()
        b_row = T.int64()
        A = T.match_buffer(a, (one, C, KH, AW), "int8", offset_factor=1, strides=[T.int64(), a_chan, a_row, one])
        B = T.match_buffer(b, (one, C, KH, KW), "int8", offset_factor=1, strides=[T.int64(), b_chan, b_row, one])
        O = T.match_buffer(o, (one, one, one, OW), "float32", offset_factor=1,
                           strides=[T.int64(), T.int64(), T.int64(), one])
        with T.sblock("root"):
            T.reads(O[0, 0, 0, 0:OW], A[0, 0:C, 0:KH, 0:AW], B[0, 0:C, 0:KH, 0:KW])
            T.writes(O[0, 0, 0, 0:OW])
            # column 0 of the first row: `pad` columns into the box
            T.evaluate(T.call_extern("int32", kernel, T.address_of(O[0, 0, 0, 0]), T.address_of(A[0, 0, 0, p]),
                                     T.Cast("int32", a_chan), T.Cast("int32", a_row), T.address_of(B[0, 0, 0, 0]),
                                     T.Cast("int32", b_chan), T.Cast("int32", b_row), c, w, kh, kw, stride, pad,
                                     out_w, zero, 0))

    TensorIntrin.register(name, depthwise_desc if c == 1 else desc, impl)
    return name


def depthwise_transpose_intrin(h: int, w: int, kh: int, kw: int, stride: int, pad: int, out_h: int,
                               out_w: int) -> str:
    """The registered name of the intrinsic for one channel of the input gradient of an int8
    depthwise conv with a stride (TOPI's conv2d_transpose: the h x w float32 output gradient
    spread on a grid of `stride`, `pad` zeros around it, a kh x kw window of the flipped int8
    weights)."""
    name = f"tinytrain.{DW_TRANSPOSE}.{h}x{w}.k{kh}x{kw}.s{stride}.p{pad}.o{out_h}x{out_w}"
    if TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    # the gradient rows (and columns) the window reaches, grid and padding included, start at
    # floor(-pad / stride): the gradient's row 0 is `top` rows into that box
    top = -(-pad // stride)
    AH, AW = (T.int64((o - 1 + k - 1 - pad) // stride + top + 1) for o, k in ((out_h, kh), (out_w, kw)))
    KH, KW, OH, OW = (T.int64(v) for v in (kh, kw, out_h, out_w))
    s, p, one, zero = T.int64(stride), T.int64(pad), T.int64(1), T.float32(0.0)
    end_h, end_w = T.int64(pad + (h - 1) * stride + 1), T.int64(pad + (w - 1) * stride + 1)
    t, flip_h, flip_w = T.int64(top), T.int64(kh - 1), T.int64(kw - 1)

    def spread(A, y, x):  # the gradient a window tap at (y, x) of the padded box reads: on the stride's grid, else 0
        if stride == 1:
            return A[0, 0, y - p + t, x - p + t]
        on_grid = tvm.tirx.And(tvm.tirx.EQ(tvm.tirx.floormod(y - p, s), T.int64(0)),
                               tvm.tirx.EQ(tvm.tirx.floormod(x - p, s), T.int64(0)))
        return T.if_then_else(on_grid, A[0, 0, tvm.tirx.floordiv(y - p, s) + t, tvm.tirx.floordiv(x - p, s) + t], zero)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, o: T.handle):
        A = T.match_buffer(a, (one, one, AH, AW), "float32", offset_factor=1)
        B = T.match_buffer(b, (one, one, KH, KW), "int8", offset_factor=1)
        O = T.match_buffer(o, (one, one, OH, OW), "float32", offset_factor=1)
        with T.sblock("root"):
            T.reads(O[0, 0, 0:OH, 0:OW], A[0, 0, 0:AH, 0:AW], B[0, 0, 0:KH, 0:KW])
            T.writes(O[0, 0, 0:OH, 0:OW])
            for n, f, y, x, r, ky, kx in T.grid(one, one, OH, OW, one, KH, KW):
                with T.sblock("update"):
                    vy, vx, vky, vkx = T.axis.remap("SSRR", [y, x, ky, kx])
                    O[0, 0, vy, vx] = O[0, 0, vy, vx] + T.if_then_else(
                        p <= vy + vky and vy + vky < end_h and p <= vx + vkx and vx + vkx < end_w,
                        spread(A, vy + vky, vx + vkx), zero) * T.Cast("float32", B[0, 0, flip_h - vky, flip_w - vkx])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, o: T.handle):
        a_row = T.int64()
        b_row = T.int64()
        A = T.match_buffer(a, (one, one, AH, AW), "float32", offset_factor=1,
                           strides=[T.int64(), T.int64(), a_row, one])
        B = T.match_buffer(b, (one, one, KH, KW), "int8", offset_factor=1, strides=[T.int64(), T.int64(), b_row, one])
        O = T.match_buffer(o, (one, one, OH, OW), "float32", offset_factor=1,
                           strides=[T.int64(), T.int64(), OW, one])
        with T.sblock("root"):
            T.reads(O[0, 0, 0:OH, 0:OW], A[0, 0, 0:AH, 0:AW], B[0, 0, 0:KH, 0:KW])
            T.writes(O[0, 0, 0:OH, 0:OW])
            # the gradient's element (0, 0)
            T.evaluate(T.call_extern("int32", DW_TRANSPOSE, T.address_of(O[0, 0, 0, 0]), T.address_of(A[0, 0, t, t]),
                                     T.Cast("int32", a_row), T.address_of(B[0, 0, 0, 0]), T.Cast("int32", b_row),
                                     h, w, kh, kw, stride, pad, out_h, out_w))

    TensorIntrin.register(name, desc, impl)
    return name


def float_conv_plane_intrin(c: int, h: int, w: int, kh: int, kw: int, stride: int, pad: int, relu: bool,
                            transposed: bool = False) -> str:
    """The registered name of the intrinsic for one output channel of a float32 conv: `c`
    input channels of h x w (1 for a depthwise conv), a kh x kw window, `stride`, `pad`
    zeros on every side; its input through a ReLU when `relu` (one fused in front of it).
    `transposed`: TOPI's conv2d_transpose at stride 1 (a conv's input gradient), which reads
    its weights as w[i][o][kh - 1 - ky][kw - 1 - kx], the window flipped, channels swapped."""
    out_h, out_w = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    name = f"tinytrain.{FLOAT_CONV_PLANE}.c{c}.{h}x{w}.k{kh}x{kw}.s{stride}.p{pad}.r{int(relu)}.t{int(transposed)}"
    if TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    C, H, Wd, KH, KW, OH, OW = (T.int64(v) for v in (c, h, w, kh, kw, out_h, out_w))
    AH, AW = T.int64((out_h - 1) * stride + kh), T.int64((out_w - 1) * stride + kw)
    s, p, one = T.int64(stride), T.int64(pad), T.int64(1)
    op = (lambda v: T.max(v, T.float32(0.0))) if relu else (lambda v: v)  # the input as the conv reads it
    b_shape = (C, one, KH, KW) if transposed else (one, C, KH, KW)
    b_region = (slice(0, C), 0, slice(0, KH), slice(0, KW)) if transposed else (0, slice(0, C), slice(0, KH), slice(0, KW))

    def tap(B, r, ky, kx):  # the weight of input channel r at window tap (ky, kx)
        return B[r, 0, KH - one - ky, KW - one - kx] if transposed else B[0, r, ky, kx]

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, o: T.handle):
        A = T.match_buffer(a, (one, C, AH, AW), "float32", offset_factor=1)
        B = T.match_buffer(b, b_shape, "float32", offset_factor=1)
        O = T.match_buffer(o, (one, one, OH, OW), "float32", offset_factor=1)
        with T.sblock("root"):
            T.reads(O[0, 0, 0:OH, 0:OW], A[0, 0:C, 0:AH, 0:AW], B[b_region])
            T.writes(O[0, 0, 0:OH, 0:OW])
            for n, f, y, x, r, ky, kx in T.grid(one, one, OH, OW, C, KH, KW):
                with T.sblock("update"):
                    vy, vx, vr, vky, vkx = T.axis.remap("SSRRR", [y, x, r, ky, kx])
                    O[0, 0, vy, vx] = O[0, 0, vy, vx] + T.if_then_else(
                        p <= vy * s + vky and vy * s + vky < H + p and p <= vx * s + vkx and vx * s + vkx < Wd + p,
                        op(A[0, vr, vy * s + vky, vx * s + vkx]), T.float32(0.0)) * tap(B, vr, vky, vkx)

    # one input channel (a depthwise conv): TVM drops the unit channel axis from the block it
    # matches, so the description has none either
    @T.prim_func(s_tir=True)
    def depthwise_desc(a: T.handle, b: T.handle, o: T.handle):
        A = T.match_buffer(a, (one, C, AH, AW), "float32", offset_factor=1)
        B = T.match_buffer(b, b_shape, "float32", offset_factor=1)
        O = T.match_buffer(o, (one, one, OH, OW), "float32", offset_factor=1)
        with T.sblock("root"):
            T.reads(O[0, 0, 0:OH, 0:OW], A[0, 0:C, 0:AH, 0:AW], B[b_region])
            T.writes(O[0, 0, 0:OH, 0:OW])
            for n, f, y, x, r, ky, kx in T.grid(one, one, OH, OW, C, KH, KW):
                with T.sblock("update"):
                    vy, vx, vky, vkx = T.axis.remap("SSRR", [y, x, ky, kx])
                    O[0, 0, vy, vx] = O[0, 0, vy, vx] + T.if_then_else(
                        p <= vy * s + vky and vy * s + vky < H + p and p <= vx * s + vkx and vx * s + vkx < Wd + p,
                        op(A[0, 0, vy * s + vky, vx * s + vkx]), T.float32(0.0)) * tap(B, 0, vky, vkx)

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, o: T.handle):
        a_chan = T.int64()
        a_row = T.int64()
        b_first = T.int64()
        b_second = T.int64()
        b_row = T.int64()
        A = T.match_buffer(a, (one, C, AH, AW), "float32", offset_factor=1,
                           strides=[T.int64(), a_chan, a_row, one])
        B = T.match_buffer(b, b_shape, "float32", offset_factor=1,
                           strides=[b_first, b_second, b_row, one])
        O = T.match_buffer(o, (one, one, OH, OW), "float32", offset_factor=1,
                           strides=[T.int64(), T.int64(), OW, one])
        with T.sblock("root"):
            T.reads(O[0, 0, 0:OH, 0:OW], A[0, 0:C, 0:AH, 0:AW], B[b_region])
            T.writes(O[0, 0, 0:OH, 0:OW])
            T.evaluate(T.call_extern("int32", FLOAT_CONV_PLANE, T.address_of(O[0, 0, 0, 0]),
                                     T.address_of(A[0, 0, p, p]), T.Cast("int32", a_chan), T.Cast("int32", a_row),
                                     T.address_of(tap(B, 0, 0, 0)),
                                     T.Cast("int32", b_first if transposed else b_second),
                                     T.Cast("int32", -b_row if transposed else b_row), -1 if transposed else 1,
                                     c, h, w, kh, kw, stride, pad, out_h, out_w, int(relu)))

    TensorIntrin.register(name, depthwise_desc if c == 1 else desc, impl)
    return name


def requant_intrin(width: int, zero: int) -> str:
    """The registered name of the intrinsic requantizing `width` float32 sums of an int8 conv
    to int8 outputs with zero point `zero` (tt_requant_s8)."""
    name = f"tinytrain.{REQUANT}.w{width}.z{zero}"
    if TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    W, one, hi, lo = T.int64(width), T.int64(1), T.float32(_CLAMP[0]), T.float32(_CLAMP[1])

    def requantized(rounded):  # a zero point of 0 is no addition, as in the kernels
        return T.Cast("int8", T.nearbyint(T.max(T.min(rounded + T.float32(zero) if zero else rounded, hi), lo)))

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, s: T.handle, o: T.handle):
        A = T.match_buffer(a, (W,), "float32", offset_factor=1)
        B = T.match_buffer(b, (one,), "int32", offset_factor=1)
        S = T.match_buffer(s, (one,), "float32", offset_factor=1)
        O = T.match_buffer(o, (W,), "int8", offset_factor=1)
        with T.sblock("root"):
            T.reads(A[0:W], B[0], S[0])
            T.writes(O[0:W])
            for x in range(W):
                with T.sblock("requant"):
                    vx = T.axis.remap("S", [x])
                    O[vx] = requantized(T.nearbyint((A[vx] + T.Cast("float32", B[0])) * S[0]))

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, s: T.handle, o: T.handle):
        A = T.match_buffer(a, (W,), "float32", offset_factor=1)
        B = T.match_buffer(b, (one,), "int32", offset_factor=1)
        S = T.match_buffer(s, (one,), "float32", offset_factor=1)
        O = T.match_buffer(o, (W,), "int8", offset_factor=1)
        with T.sblock("root"):
            T.reads(A[0:W], B[0], S[0])
            T.writes(O[0:W])
            T.evaluate(T.call_extern("int32", REQUANT, T.address_of(O[0]), T.address_of(A[0]), width,
                                     T.address_of(B[0]), T.address_of(S[0]), zero))

    TensorIntrin.register(name, desc, impl)
    return name


def _iter_types(block) -> list[int]:
    return [int(v.iter_type) for v in block.iter_vars]


def _loaded(expr, dtype: str) -> bool:
    return isinstance(expr, tvm.ir.expr.TensorLoad) and str(expr.ty) == dtype


def _int8_cast(expr) -> bool:
    return isinstance(expr, tvm.tirx.Cast) and _loaded(expr.value, "int8")


def _conv_product(block):
    """The product of `acc = acc + operand * float(int8 weight)` when `block` is the update
    of an NCHW conv's accumulator, (n, f, y, x) spatial and (c, ky, kx) reduced; else None."""
    if _iter_types(block) != [0] * 4 + [_REDUCE] * 3:
        return None
    store = block.body
    if not isinstance(store, tvm.tirx.BufferStore) or not isinstance(store.value, tvm.tirx.Add):
        return None
    mul = store.value.b
    return mul if isinstance(mul, tvm.tirx.Mul) and _int8_cast(mul.b) else None


def _zero_point(value):
    """(int8 operand, zero point) of `float(a) - zx` (or `float(a)`, zx = 0), else None."""
    a, zero = (value.a, value.b) if isinstance(value, tvm.tirx.Sub) else (value, tvm.tirx.FloatImm("float32", 0.0))
    if not _int8_cast(a) or not isinstance(zero, tvm.tirx.FloatImm):
        return None
    if zero.value != int(zero.value) or not -128 <= zero.value <= 127:
        return None
    return a, int(zero.value)


def _row_form(block) -> tuple[str, int] | None:
    """(micro-kernel, zero point) when `block` is one of the module doc's sums over one 1x1
    conv; else None."""
    mul = _conv_product(block)
    if mul is None or any(int(v.dom.extent) != 1 for v in block.iter_vars[5:]):
        return None
    if _loaded(mul.a, "float32"):
        return FLOAT_ROW, 0
    operand = _zero_point(mul.a)
    return None if operand is None else (INT8_ROW, operand[1])


def _window(cond, source, loops_extents) -> tuple[int, int, int, int] | None:
    """(h, w, stride, pad) of a conv plane whose padding test is `cond` ("pad <= y * stride +
    ky and ...") on an input buffer `source`, read off the access; TVM's structural match
    then confirms it."""
    while isinstance(cond, tvm.tirx.And):  # the first test is "pad <= y * stride + ky"
        cond = cond.a
    if not (isinstance(cond, tvm.tirx.LE) and isinstance(cond.a, tvm.tirx.IntImm)):
        return None
    pad, shape = int(cond.a.value), [int(d) for d in source.shape]
    out_h, out_w, kh, kw = (loops_extents[i] for i in (2, 3, 5, 6))
    if len(shape) != 4 or kh * kw <= 1:
        return None
    h, w = shape[2], shape[3]
    for stride in range(1, kh + 1):
        if (h + 2 * pad - kh) // stride + 1 == out_h and (w + 2 * pad - kw) // stride + 1 == out_w:
            return h, w, stride, pad
    return None


def _padded_int8(block):
    """(padding condition, int8 load, zero point) when `block` updates an int8 conv's
    accumulator in TOPI's padded form, `acc + if_then_else(inside, float(a) - zx, 0) * float(w)`;
    else None."""
    mul = _conv_product(block)
    if mul is None or not isinstance(mul.a, tvm.ir.expr.Call) or mul.a.op.name != "prim.if_then_else":
        return None
    operand = _zero_point(mul.a.args[1])
    return None if operand is None else (mul.a.args[0], operand[0].value, operand[1])


def _depthwise_form(block, loops_extents) -> str | None:
    """The intrinsic for `block` when it is one channel plane of an int8 depthwise conv,
    `acc += if_then_else(inside, float(a) - zx, 0) * float(w)`; else None."""
    padded = _padded_int8(block)
    if padded is None or int(block.iter_vars[4].dom.extent) != 1:
        return None
    window = _window(padded[0], padded[1].source, loops_extents)
    if not window:
        return None
    h, w, stride, pad = window
    return depthwise_plane_intrin(h, w, loops_extents[5], loops_extents[6], stride, pad, padded[2])


def _conv_row_form(block, loops_extents) -> str | None:
    """The intrinsic for `block` when it is one output row of an int8 conv with a window,
    its padding tests on columns only (`_split_padded_rows`); else None."""
    padded, out_h = _padded_int8(block), int(block.iter_vars[2].dom.extent)
    if padded is None or loops_extents[2] != 1 or out_h == 1:
        return None
    window = _window(padded[0], padded[1].source, loops_extents[:2] + [out_h] + loops_extents[3:])
    if not window:
        return None
    h, w, stride, pad = window
    c, kh, kw, out_w = loops_extents[4], loops_extents[5], loops_extents[6], loops_extents[3]
    return conv_row_intrin(c, w, kh, kw, stride, pad, out_w, padded[2])


def _conv_plane_form(block, loops_extents) -> str | None:
    """The intrinsic for `block` when it is one output channel's plane of an int8 conv with a
    window over several input channels, in TOPI's padded form; else None."""
    padded = _padded_int8(block)
    if padded is None or loops_extents[4] == 1 or loops_extents[2] != int(block.iter_vars[2].dom.extent):
        return None
    window = _window(padded[0], padded[1].source, loops_extents)
    if not window:
        return None
    h, w, stride, pad = window
    return conv_plane_intrin(loops_extents[4], h, w, loops_extents[5], loops_extents[6], stride, pad, padded[2])


def _depthwise_transpose_form(block, loops_extents) -> str | None:
    """The intrinsic for `block` when it is one channel plane of the input gradient of an int8
    depthwise conv (`transposed_depthwise`; at a stride above 1 its taps off the stride's
    grid are tested apart); else None."""
    form = transposed_depthwise(block)
    if form is None or int(block.iter_vars[4].dom.extent) != 1:
        return None
    cond, grid, load, _ = form
    first = _terms(cond)[0]  # "pad <= y + ky"
    if not (isinstance(first, tvm.tirx.LE) and isinstance(first.a, tvm.tirx.IntImm)):
        return None
    stride = 1
    if grid is not None:
        parity = _terms(grid)[0]  # "(y + ky - pad) % stride == 0"
        if not (isinstance(parity, tvm.tirx.EQ) and isinstance(parity.a, tvm.tirx.FloorMod)
                and isinstance(parity.a.b, tvm.tirx.IntImm)):
            return None
        stride = int(parity.a.b.value)
    shape = [int(d) for d in load.source.shape]
    return depthwise_transpose_intrin(shape[2], shape[3], loops_extents[5], loops_extents[6], stride,
                                      int(first.a.value), loops_extents[2], loops_extents[3])


def _terms(cond) -> list:
    """The operands of a chain of `and`s, left to right."""
    return _terms(cond.a) + _terms(cond.b) if isinstance(cond, tvm.tirx.And) else [cond]


def _rebuild(stmt, on_block=lambda block: block, on_loop=lambda loop: None, on_seq=lambda seq: seq):
    """`stmt` with every SBlock replaced by `on_block(block)`, every loop for which
    `on_loop(loop)` gives a statement by that statement, and the statements of every sequence
    by `on_seq(statements)` (TVM 0.27 has no Python TIR mutator: this walks the statement
    kinds a scheduled kernel is made of)."""
    def again(child):
        return _rebuild(child, on_block, on_loop, on_seq)

    if isinstance(stmt, tvm.tirx.For):
        replaced = on_loop(stmt)
        return replaced if replaced is not None else tvm.tirx.For(
            stmt.loop_var, stmt.min, stmt.extent, stmt.kind, again(stmt.body), stmt.thread_binding, stmt.annotations)
    if isinstance(stmt, tvm.tirx.SeqStmt):
        seq = on_seq([again(x) for x in stmt.seq])
        return seq[0] if len(seq) == 1 else tvm.tirx.SeqStmt(seq)
    if isinstance(stmt, tvm.tirx.IfThenElse):
        return tvm.tirx.IfThenElse(stmt.condition, again(stmt.then_case),
                                   None if stmt.else_case is None else again(stmt.else_case))
    if isinstance(stmt, tvm.s_tir.SBlockRealize):
        return tvm.s_tir.SBlockRealize(stmt.iter_values, stmt.predicate, again(stmt.block))
    if isinstance(stmt, tvm.s_tir.SBlock):
        b = on_block(stmt)
        return tvm.s_tir.SBlock(b.iter_vars, b.reads, b.writes, b.name_hint, again(b.body),
                                b.init, b.alloc_buffers, b.match_buffers, b.annotations)
    return stmt


def _padded_rows(func) -> list:
    """(row loop, conv block, first and last + 1 rows that read no top or bottom padding) for
    each int8 conv with a window and a row accumulator (`_row_accumulated` in
    passes/fuse_kernels.py) whose padding tests cover rows outside [first, last)."""
    found = []

    def visit(stmt, loops):
        if isinstance(stmt, tvm.tirx.For):
            visit(stmt.body, loops + [stmt])
        elif isinstance(stmt, tvm.tirx.SeqStmt):
            for x in stmt.seq:
                visit(x, loops)
        elif isinstance(stmt, tvm.s_tir.SBlockRealize):
            block = stmt.block
            padded = _padded_int8(block)
            extents = [int(loop.extent) for loop in loops[-7:]]
            if padded is not None and len(loops) >= 8 and extents[2] == 1 and extents[5] * extents[6] > 1:
                out_h = int(block.iter_vars[2].dom.extent)
                window = _window(padded[0], padded[1].source, extents[:2] + [out_h] + extents[3:])
                if window and out_h > 1:
                    h, _, stride, pad = window
                    first, last = -(-pad // stride), min(out_h, (h + pad - extents[5]) // stride + 1)
                    if first < last and (first, last) != (0, out_h):
                        found.append((loops[-8], block.name_hint, first, last))
            visit(block.body, loops)

    visit(func.body, [])
    return found


def _split_padded_rows(func):
    """`func` with the body of the row loop of each `_padded_rows` conv in two copies, one for
    the rows that read no top or bottom padding and one for the others (`if first <= y <
    last`). In the first the conv's row tests are provably true and dropped, which leaves the
    column tests only: the form of `conv_row_intrin`. The other keeps TVM's loop nest (a row
    or two) under renamed blocks."""
    splits = []
    for row, conv, first, last in _padded_rows(func):
        def copy(tag, conv=conv, first=first, last=last, row=row):
            def on_block(block):
                if block.name_hint == conv and not tag:
                    return _without_row_tests(block, first, last)
                return tvm.s_tir.SBlock(block.iter_vars, block.reads, block.writes, block.name_hint + tag,
                                        block.body, block.init, block.alloc_buffers, block.match_buffers,
                                        block.annotations)
            return _rebuild(row.body, on_block)

        y, dtype = row.loop_var, str(row.loop_var.ty)
        inside = tvm.tirx.And(tvm.tirx.LE(tvm.tirx.IntImm(dtype, first), y), tvm.tirx.LT(y, tvm.tirx.IntImm(dtype, last)))
        splits.append((row, tvm.tirx.For(y, row.min, row.extent, row.kind,
                                         tvm.tirx.IfThenElse(inside, copy(""), copy("_border")))))
    if not splits:
        return func
    split = func.with_body(_rebuild(func.body, on_loop=lambda loop: next(
        (new for old, new in splits if old.same_as(loop)), None)))
    # printed and parsed back: the two copies then define their loop and block variables anew
    # (TVM's renew_defs refuses a variable defined twice)
    return tvm.script.from_source(split.script())


def _without_row_tests(block, first: int, last: int):
    """The conv `block` with the padding tests dropped that hold on rows [first, last)."""
    store = block.body
    padded = store.value.b.a
    analyzer = tvm.sym.Analyzer()
    y, ky = block.iter_vars[2].var, block.iter_vars[5].var
    analyzer.bind(y, tvm.ir.Range(first, last))
    analyzer.bind(ky, block.iter_vars[5].dom)
    kept = [t for t in _terms(padded.args[0]) if not (uses(t, y) and analyzer.can_prove(t))]
    operand = padded.args[1]
    if kept:
        cond = kept[0]
        for t in kept[1:]:
            cond = tvm.tirx.And(cond, t)
        operand = tvm.tirx.if_then_else(cond, padded.args[1], padded.args[2])
    value = tvm.tirx.Add(store.value.a, tvm.tirx.Mul(operand, store.value.b.b))
    return tvm.s_tir.SBlock(block.iter_vars, block.reads, block.writes, block.name_hint,
                            tvm.tirx.BufferStore(store.buffer, value, store.indices), block.init,
                            block.alloc_buffers, block.match_buffers, block.annotations)


def uses(expr, var) -> bool:
    """Whether `var` occurs in `expr`."""
    return any(v.same_as(var) for v in undefined_vars(expr, []))


def _float_conv_plane_form(block, loops_extents) -> str | None:
    """The intrinsic for `block` when it is one output channel's plane of a float32 conv,
    `acc += if_then_else(inside, a, 0.0) * w` (`padded_float_conv`), or of a stride-1
    conv2d_transpose, the same with the window's weights flipped; else None."""
    if [int(v.iter_type) for v in block.iter_vars] != [0] * 4 + [_REDUCE] * 3:
        return None
    form = padded_float_conv(block)
    window = form and _window(form[0], form[1].source, loops_extents)
    if not window:
        return None
    h, w, stride, pad = window
    flipped = isinstance(form[3].indices[-1], tvm.tirx.Sub)  # w[.., kw - 1 - kx]: conv2d_transpose
    return float_conv_plane_intrin(loops_extents[4], h, w, loops_extents[5], loops_extents[6], stride, pad, form[2],
                                   transposed=flipped)


def _int8_sums(func) -> list:
    """The buffers that only int8 convs' sums and their zero inits write: their values are
    finite, integers of at most 2^24 in magnitude or the float32 sum of such products."""
    writers: dict = {}
    for block in sblocks(func.body):
        for region in block.writes:
            writers.setdefault(region.source, []).append(block)

    def int8_sum(block) -> bool:
        mul = _conv_product(block)
        return mul is not None and (_zero_point(mul.a) is not None or _padded_int8(block) is not None)

    return [buf for buf, blocks in writers.items()
            if any(map(int8_sum, blocks)) and all(int8_sum(b) or _zeroing(b) for b in blocks)]


def _zeroing(block) -> bool:
    """Whether `block` stores 0.0 (a reduction's init, once decomposed)."""
    store = block.body
    return isinstance(store, tvm.tirx.BufferStore) and isinstance(store.value, tvm.tirx.FloatImm) \
        and store.value.value == 0.0


def _rounded(expr):
    """The operand of `nearbyint(operand)`, else None."""
    ok = isinstance(expr, tvm.ir.expr.Call) and expr.op.name == "tirx.nearbyint"
    return expr.args[0] if ok else None


def _requant_form(block, sums: list) -> int | None:
    """The zero point when `block` requantizes the sums of an int8 conv (a buffer of `sums`)
    to int8 outputs, `int8(nearbyint(max(min(nearbyint((acc + float(bias)) * scale) + zero,
    127.49), -128.49)))`; else None. TVM's structural match confirms the rest."""
    store = block.body
    if any(int(v.iter_type) != 0 for v in block.iter_vars) or not isinstance(store, tvm.tirx.BufferStore):
        return None
    if not (isinstance(store.value, tvm.tirx.Cast) and str(store.value.ty) == "int8"):
        return None
    clamp = _rounded(store.value.value)
    if not (isinstance(clamp, tvm.tirx.Max) and isinstance(clamp.a, tvm.tirx.Min)):
        return None
    if (getattr(clamp.a.b, "value", None), getattr(clamp.b, "value", None)) != _CLAMP:
        return None
    shifted, zero = clamp.a.a, 0
    if isinstance(shifted, tvm.tirx.Add) and isinstance(shifted.b, tvm.tirx.FloatImm):
        shifted, zero = shifted.a, shifted.b.value
    if zero != int(zero) or abs(zero) > 2 ** 15:
        return None
    scaled = _rounded(shifted)
    if not (isinstance(scaled, tvm.tirx.Mul) and isinstance(scaled.a, tvm.tirx.Add)):
        return None
    acc = scaled.a.a
    if not (_loaded(acc, "float32") and any(acc.source.same_as(buf) for buf in sums)):
        return None
    return int(zero)


def _extern(realize, *kernels: str):
    """The call of one of `kernels` that the block of `realize` consists of (a tensorized
    block), else None."""
    body = realize.block.body if isinstance(realize, tvm.s_tir.SBlockRealize) else None
    call = body.value if isinstance(body, tvm.tirx.Evaluate) else None
    ok = isinstance(call, tvm.ir.expr.Call) and call.op.name == "tirx.call_extern" and call.args[0].value in kernels
    return call if ok else None


def _analyzer(units: list, *realizes):
    """An analyzer that knows the loops of extent 1 in `units` by their value and the block
    variables of `realizes` by their bindings."""
    analyzer = tvm.sym.Analyzer()
    for loop in units:
        analyzer.bind(loop.loop_var, loop.min)
    for realize in realizes:
        for iv, value in zip(realize.block.iter_vars, realize.iter_values):
            analyzer.bind(iv.var, value)
    return analyzer


def _matched(realize, buffer):
    """The region of the block's operand that `buffer` (a match_buffer of the block) views."""
    return next(m.source for m in realize.block.match_buffers if m.buffer.same_as(buffer))


def _address_buffer(arg):
    """The buffer of `address_of(buf[...])`."""
    return arg.args[0].source


def _zeroes(loops, region, analyzer) -> bool:
    """Whether `loops` is a nest that zeroes exactly `region` of an accumulator: a block storing
    0.0 under loops that walk the region's dimensions of more than one element, in order, the
    others of extent 1."""
    nest = []
    while isinstance(loops, tvm.tirx.For):
        nest.append(loops)
        loops = loops.body
    if not nest or not isinstance(loops, tvm.s_tir.SBlockRealize):
        return False
    store = loops.block.body
    if not (_zeroing(loops.block) and store.buffer.same_as(region.source)):
        return False

    def unit(extent) -> bool:
        return isinstance(extent, tvm.tirx.IntImm) and int(extent) == 1

    ranges = list(region.region)
    walking = [loop for loop in nest if not unit(loop.extent)]
    dims = [i for i, r in enumerate(ranges) if not unit(r.extent)]
    if len(walking) != len(dims) or not all(analyzer.can_prove_equal(loop.extent, ranges[d].extent)
                                            for loop, d in zip(walking, dims)):
        return False
    for loop in nest:
        if unit(loop.extent):
            analyzer.bind(loop.loop_var, loop.min)
        else:
            analyzer.bind(loop.loop_var, tvm.ir.Range.from_min_extent(loop.min, loop.extent))
    for iv, value in zip(loops.block.iter_vars, loops.iter_values):
        analyzer.bind(iv.var, value)
    at = dict(zip(dims, walking))
    for d, (index, r) in enumerate(zip(store.indices, ranges)):
        loop = at.get(d)
        offset = r.min if loop is None else r.min + (loop.loop_var - loop.min)
        if not analyzer.can_prove_equal(index, offset):
            return False
    return True


_ZEROED = (INT8_ROWS2, DEPTHWISE_PLANE, CONV_ROW, CONV_ROW_WIDE, CONV_PLANE)  # kernels whose last argument says TVM's zeroing was left to them


def _fused_rows(seq: list, units: list, readers: dict) -> list:
    """`seq` with what tensorizing left in a row rewritten, where the zeroing loop in front
    of a call zeroes exactly the call's accumulator:
    - a `_ZEROED` kernel's call: the zeroing loop dropped, its `zeroed` argument set;
    - a pointwise row and its requantization: the zeroing, the tt_pw_row_s8 block on the row,
      the blocks caching the requantization's bias and scale, and the tt_requant_s8 block
      reading that row become the cache blocks and one block calling tt_pw_row_requant_s8,
      which writes the outputs, and the row only if another block reads it.
    `units`: the kernel's loops of extent 1; `readers`: the blocks that read each buffer, by
    name."""
    out, i = list(seq), 1
    while i < len(out):
        zeroed = _extern(out[i], *_ZEROED)
        if zeroed is not None and _zeroes(out[i - 1], _matched(out[i], _address_buffer(zeroed.args[1])),
                                          _analyzer(units, out[i])):
            call = tvm.tirx.call_extern("int32", zeroed.args[0].value, *zeroed.args[1:-1], 1)
            block = out[i].block
            out[i] = tvm.s_tir.SBlockRealize(out[i].iter_values, out[i].predicate, tvm.s_tir.SBlock(
                block.iter_vars, block.reads, block.writes, block.name_hint, tvm.tirx.Evaluate(call), block.init,
                block.alloc_buffers, block.match_buffers, block.annotations))
            del out[i - 1]
            continue
        pw = _extern(out[i], INT8_ROW)
        j = i + 1
        while pw is not None and j < len(out) and isinstance(out[j], tvm.s_tir.SBlockRealize) \
                and out[j].block.name_hint.endswith("_global"):
            j += 1  # the hoisted loads (invariant_loads.py): small buffers that pw does not use
        rq = _extern(out[j], REQUANT) if pw is not None and j < len(out) else None
        if rq is None:
            i += 1
            continue
        acc = _matched(out[i], _address_buffer(pw.args[1]))
        read = _matched(out[j], _address_buffer(rq.args[2]))
        analyzer = _analyzer(units, out[i], out[j])
        same_row = acc.source.same_as(read.source) and all(
            analyzer.can_prove_equal(a.min, b.min) and analyzer.can_prove_equal(a.extent, b.extent)
            for a, b in zip(acc.region, read.region))
        if not (same_row and _zeroes(out[i - 1], acc, _analyzer(units, out[i]))):
            i += 1
            continue
        pw_block, rq_block = out[i].block, out[j].block
        others = lambda regions: [r for r in regions if not r.source.same_as(acc.source)]
        keep = any(b not in (pw_block.name_hint, rq_block.name_hint) for b in readers[acc.source.name])
        call = tvm.tirx.call_extern("int32", INT8_ROW_REQUANT, *pw.args[1:], rq.args[1], *rq.args[4:], int(keep),
                                    pw.args[7])  # the accumulator's width: the row's
        fused = tvm.s_tir.SBlock(
            list(pw_block.iter_vars) + list(rq_block.iter_vars), others(pw_block.reads) + others(rq_block.reads),
            list(pw_block.writes) + list(rq_block.writes), rq_block.name_hint, tvm.tirx.Evaluate(call), None, [],
            list(pw_block.match_buffers) + [m for m in rq_block.match_buffers if not m.source.source.same_as(acc.source)],
            rq_block.annotations)
        out[j] = tvm.s_tir.SBlockRealize(list(out[i].iter_values) + list(out[j].iter_values), True, fused)
        del out[i - 1:i + 1]
    return out


def _cached(items: list, region, analyzer):
    """The buffer and indices behind a requantization operand's one-element `region`: the
    parameter that one of the `items` (invariant_loads.py's cache blocks, `x_global[i] =
    x[i]`) copies it from, else the region's own buffer; None if neither is plain."""
    indices = [analyzer.simplify(r.min) for r in region.region]
    for item in items:
        store = item.block.body
        if not (isinstance(store, tvm.tirx.BufferStore) and store.buffer.same_as(region.source)):
            continue
        load = store.value
        same = isinstance(load, tvm.ir.expr.TensorLoad) and len(load.indices) == len(store.indices) and all(
            a.same_as(b) for a, b in zip(load.indices, store.indices))
        return (load.source, indices) if same else None
    return region.source, indices


def _flat(buffer, indices):
    """The element offset of `indices` in a parameter (row-major, no strides of its own)."""
    offset = 0
    for extent, index in zip(buffer.shape, indices):
        offset = offset * extent + index
    return offset


def _pair_region(buffer, first: list, second: list, extents: list, analyzer):
    """The region of `buffer` covering two equal boxes of `extents` at `first` and `second`,
    adjacent along one dimension; None if they are not."""
    ranges, apart = [], 0
    for m0, m1, extent in zip(first, second, extents):
        if analyzer.can_prove_equal(m0, m1):
            ranges.append(tvm.ir.Range.from_min_extent(m0, extent))
        elif analyzer.can_prove_equal(m1 - m0, extent):
            ranges.append(tvm.ir.Range.from_min_extent(m0, extent * 2))
            apart += 1
        else:
            return None
    return tvm.tirx.BufferRegion(buffer, ranges) if apart == 1 else None


def _fused_pair(realize, loop, units: list, readers: dict):
    """One block calling tt_pw_rows2_requant_s8 for `realize`, a tt_pw_rows2_s8 block on
    zeroed rows, and `loop`, the loop right after it that requantizes each of the two rows
    (caching the channel's bias and scale first), if they fit each other exactly; else None.
    The channels' biases and scales must lie side by side, and so must the output rows."""
    rows2 = _extern(realize, INT8_ROWS2)
    if rows2 is None or int(rows2.args[-1]) != 1 or not isinstance(loop, tvm.tirx.For) \
            or not isinstance(loop.extent, tvm.tirx.IntImm) or int(loop.extent) != 2:
        return None
    items = list(loop.body.seq) if isinstance(loop.body, tvm.tirx.SeqStmt) else [loop.body]
    if not all(isinstance(x, tvm.s_tir.SBlockRealize) for x in items) \
            or not all(x.block.name_hint.endswith("_global") for x in items[:-1]):
        return None
    rq = _extern(items[-1], REQUANT)
    if rq is None:
        return None
    block, rq_block = realize.block, items[-1].block
    by_loop = {value: iv.var for iv, value in zip(block.iter_vars, realize.iter_values)
               if isinstance(value, tvm.tirx.Var)}
    block_vars = [iv.var for iv in block.iter_vars]

    def at(row: int):  # the requantization's operands for one row, in the fused block's variables
        analyzer = tvm.sym.Analyzer()
        for iv in block.iter_vars:
            analyzer.bind(iv.var, iv.dom)
        for unit in units:
            analyzer.bind(unit.loop_var, unit.min)
        analyzer.bind(loop.loop_var, loop.min + row)
        for var, block_var in by_loop.items():
            analyzer.bind(var, block_var)
        for iv, value in zip(rq_block.iter_vars, items[-1].iter_values):
            analyzer.bind(iv.var, value)
        regions = [_matched(items[-1], _address_buffer(rq.args[k])) for k in (1, 2, 4, 5)]  # out, acc, bias, scale
        operands = [(r.source, [analyzer.simplify(x.min) for x in r.region]) for r in regions[:2]]
        operands += [_cached(items[:-1], r, analyzer) for r in regions[2:]]
        defined = all(o is not None for o in operands) and all(
            all(any(v.same_as(b) for b in block_vars) for v in undefined_vars(i)) for o in operands for i in o[1])
        return (operands, regions, analyzer) if defined else None

    rows = [at(0), at(1)]
    if None in rows:
        return None
    (first, regions, analyzer), (second, _, _) = rows
    acc = _matched(realize, _address_buffer(rows2.args[1]))  # both rows, in the fused block's variables
    pair_dim = [i for i, r in enumerate(acc.region) if isinstance(r.extent, tvm.tirx.IntImm) and int(r.extent) == 2]
    if len(pair_dim) != 1 or not first[1][0].same_as(acc.source):
        return None
    for row, operands in enumerate((first, second)):
        mins = [r.min + (row if d == pair_dim[0] else 0) for d, r in enumerate(acc.region)]
        if not all(analyzer.can_prove_equal(m, i) for m, i in zip(mins, operands[1][1])):
            return None
    if not all(analyzer.can_prove_equal(r.extent, 1 if d == pair_dim[0] else a.extent)
               for d, (r, a) in enumerate(zip(regions[1].region, acc.region))):
        return None  # the requantization must cover each row whole, as the kernel does
    out = _pair_region(first[0][0], first[0][1], second[0][1], [r.extent for r in regions[0].region], analyzer)
    params = [(_pair_region(a[0], a[1], b[1], [1] * len(a[1]), analyzer), a, b) for a, b in zip(first[2:], second[2:])]
    if out is None or not all(r is not None and analyzer.can_prove_equal(_flat(a[0], b[1]) - _flat(a[0], a[1]), 1)
                              for r, a, b in params):
        return None
    keep = any(b not in (block.name_hint, rq_block.name_hint) for b in readers[acc.source.name])
    address = lambda buffer, indices: tvm.tirx.address_of(tvm.tirx.BufferLoad(buffer, indices))
    call = tvm.tirx.call_extern("int32", INT8_ROWS2_REQUANT, *rows2.args[1:-1], address(*first[0]),
                                address(*second[0]), address(*first[2]), address(*first[3]), rq.args[6], int(keep))
    reads = [r for r in block.reads if not r.source.same_as(acc.source)] + [r for r, _, _ in params]
    fused = tvm.s_tir.SBlock(block.iter_vars, reads, list(block.writes) + [out], rq_block.name_hint,
                             tvm.tirx.Evaluate(call), None, [], block.match_buffers, rq_block.annotations)
    return tvm.s_tir.SBlockRealize(realize.iter_values, realize.predicate, fused)


def _fused_pairs(seq: list, units: list, readers: dict) -> list:
    """`seq` with each two-channel pointwise row and the loop requantizing its two rows
    after it made one tt_pw_rows2_requant_s8 block (`_fused_pair`)."""
    out, i = list(seq), 0
    while i + 1 < len(out):
        fused = _fused_pair(out[i], out[i + 1], units, readers)
        if fused is not None:
            out[i:i + 2] = [fused]
        i += 1
    return out


STAGE_MIN_BYTES = 1024  # TVM puts smaller buffers on the stack; a staged input belongs in the planned arena
STAGE = "tt_pw_stage_s8"  # packs an input (a row, or whole planes) once for the staged kernels


def _filling_block(kernel: str, name: str, region, words: int, strides: list, stride: int, stages: list, *args):
    """A block calling `kernel` to fill an int32 buffer of `words` words (at least
    STAGE_MIN_BYTES: in the arena, not on the stack) from the int8 `region`, viewed with
    `strides`, and the buffer, appended to `stages`. The call takes the buffer's address, the
    region's, its stride at dimension `stride`, then `args`."""
    words = max(words, STAGE_MIN_BYTES // 4)
    filled = tvm.tirx.decl_buffer((words,), "int32", name=f"{name}{len(stages)}")
    stages.append(filled)
    whole = tvm.tirx.BufferRegion(filled, [tvm.ir.Range.from_min_extent(0, words)])
    operand = tvm.tirx.decl_buffer([r.extent for r in region.region], "int8", name="A", strides=strides,
                                   offset_factor=1)
    view = tvm.tirx.decl_buffer((words,), "int32", name="S")
    call = tvm.tirx.call_extern("int32", kernel, tvm.tirx.address_of(tvm.tirx.BufferLoad(view, [0])),
                                tvm.tirx.address_of(tvm.tirx.BufferLoad(operand, [0] * len(region.region))),
                                tvm.tirx.Cast("int32", strides[stride]), *args)
    block = tvm.s_tir.SBlock([], [region], [whole], f"{name}{len(stages) - 1}", tvm.tirx.Evaluate(call), None, [],
                             [tvm.s_tir.MatchBufferRegion(operand, region), tvm.s_tir.MatchBufferRegion(view, whole)],
                             {})
    return tvm.s_tir.SBlockRealize([], tvm.tirx.const(True, "bool"), block), filled


def _stage_block(region, k: int, pixels: int, stages: list):
    """A block calling STAGE on `region` (an int8 input: k channels x `pixels` pixels, in the
    variables of the loops around the block), and the buffer it fills, appended to `stages`.
    The block comes before the loop whose calls read the buffer, so that TVM allocates the
    buffer around that loop and keeps it alive across it (touched only inside, it would be
    allocated inside the loop, its contents void at each pass and its storage shared with what
    the loop computes after the call)."""
    idx = str(region.region[0].extent.ty)
    strides = [tvm.tirx.Var(f"a_s{d}", idx) for d in range(len(region.region) - 1)] + [tvm.tirx.IntImm(idx, 1)]
    return _filling_block(STAGE, "pw_stage", region, (pixels // 4) * 8 * (k // 4), strides, 1, stages, k, pixels)


FOLDS = "tt_pw_folds_s8"  # the zero-point folds of every output channel pair's weights, once per kernel


def _folds_block(region, k: int, zx, pairs: int, stages: list):
    """A block calling FOLDS on `region` (the weights of `pairs` output channel pairs, in no
    loop's variables: it runs first in the kernel) and the buffer it fills (3 words a pair),
    appended to `stages`."""
    idx = str(region.region[0].extent.ty)
    strides = [tvm.tirx.Var(f"w_s{d}", idx) for d in range(len(region.region))]
    return _filling_block(FOLDS, "pw_folds", region, 3 * pairs, strides, 0, stages, k, zx, pairs)


def _staged_call(realize, call, name: str, stage, *extra):
    """`realize` calling `name` with `call`'s arguments, the staged buffer and `extra`."""
    whole = tvm.tirx.BufferRegion(stage, [tvm.ir.Range.from_min_extent(0, stage.shape[0])])
    view = tvm.tirx.decl_buffer(stage.shape, "int32", name="S")  # the block sees it whole, as its other operands
    staged = tvm.tirx.call_extern("int32", name, *call.args[1:], tvm.tirx.address_of(tvm.tirx.BufferLoad(view, [0])),
                                  *extra)
    b = realize.block
    block = tvm.s_tir.SBlock(b.iter_vars, list(b.reads) + [whole], b.writes, b.name_hint, tvm.tirx.Evaluate(staged),
                             b.init, b.alloc_buffers, list(b.match_buffers) + [tvm.s_tir.MatchBufferRegion(view, whole)],
                             b.annotations)
    return tvm.s_tir.SBlockRealize(realize.iter_values, realize.predicate, block)


def _outside(region, realize, inner: list):
    """`region` (in `realize`'s block variables) in the variables of the loops outside `inner`
    (the loops between them and the block, each taken at its first value), or None."""
    analyzer = tvm.sym.Analyzer()
    for loop in inner:
        analyzer.bind(loop.loop_var, loop.min)
    for iv, value in zip(realize.block.iter_vars, realize.iter_values):
        analyzer.bind(iv.var, analyzer.simplify(value))
    ranges = [tvm.ir.Range.from_min_extent(analyzer.simplify(r.min), analyzer.simplify(r.extent)) for r in region.region]
    bound = [iv.var for iv in realize.block.iter_vars] + [l.loop_var for l in inner]
    if any(uses(e, v) for r in ranges for e in (r.min, r.extent) for v in bound):
        return None
    return tvm.tirx.BufferRegion(region.source, ranges)


def _staged_loop(loop, above: list, written: list, stages: list, first: list):
    """`loop` preceded by a block staging the input row if the loop runs over output channel
    pairs of one input row: one tt_pw_rows2(_requant)_s8 block in its body whose input region
    does not move with the loop, and no block in the loop that writes that input, the pairs'
    weights moving with the loop only and never written by the kernel (`written`). The call
    becomes its staged form, reading the buffer the block fills and its pair's weight folds,
    which a block appended to `first` (run first in the kernel) computes; else None."""
    if not isinstance(loop.extent, tvm.tirx.IntImm) or int(loop.extent) < 2:
        return None
    items = list(loop.body.seq) if isinstance(loop.body, tvm.tirx.SeqStmt) else [loop.body]
    calls = [(i, _extern(x, *STAGED)) for i, x in enumerate(items) if isinstance(x, tvm.s_tir.SBlockRealize)]
    calls = [(i, c) for i, c in calls if c is not None]
    if len(calls) != 1:
        return None
    (i, call), realize = calls[0], items[calls[0][0]]
    k, width = call.args[7], call.args[8]
    if not all(isinstance(v, tvm.tirx.IntImm) for v in (k, width)) or int(k) < 4 or int(width) < 4:
        return None
    source = _matched(realize, _address_buffer(call.args[2]))
    moving = [iv.var for iv, value in zip(realize.block.iter_vars, realize.iter_values) if uses(value, loop.loop_var)]
    if any(uses(e, v) for r in source.region for e in (r.min, r.extent) for v in moving) or any(
            w.source.same_as(source.source) for n in tir_nodes(loop.body) if isinstance(n, tvm.s_tir.SBlock)
            for w in n.writes):
        return None
    region = _outside(source, realize, [loop])
    pair = [iv.var for iv, value in zip(realize.block.iter_vars, realize.iter_values) if value.same_as(loop.loop_var)]
    weights = _matched(realize, _address_buffer(call.args[4]))
    if region is None or len(pair) != 1 or not (isinstance(loop.min, tvm.tirx.IntImm) and int(loop.min) == 0) \
            or any(weights.source.same_as(b) for b in written):
        return None
    weights = _outside(weights, realize, list(above) + [loop])  # the first pair's, then every pair's
    if weights is None or not isinstance(weights.region[0].extent, tvm.tirx.IntImm) \
            or int(weights.region[0].extent) != 2:
        return None
    pairs = int(loop.extent)
    weights = tvm.tirx.BufferRegion(weights.source, [tvm.ir.Range.from_min_extent(weights.region[0].min, 2 * pairs)]
                                    + list(weights.region[1:]))
    block, stage = _stage_block(region, int(k), int(width), stages)
    fold_block, folds = _folds_block(weights, int(k), call.args[10], pairs, stages)
    first.append(fold_block)
    whole = tvm.tirx.BufferRegion(folds, [tvm.ir.Range.from_min_extent(0, folds.shape[0])])
    view = tvm.tirx.decl_buffer(folds.shape, "int32", name="F")
    staged = _staged_call(realize, call, STAGED[call.args[0].value], stage,
                          tvm.tirx.address_of(tvm.tirx.BufferLoad(view, [3 * pair[0]])))
    b = staged.block
    items[i] = tvm.s_tir.SBlockRealize(staged.iter_values, staged.predicate, tvm.s_tir.SBlock(
        b.iter_vars, list(b.reads) + [whole], b.writes, b.name_hint, b.body, b.init, b.alloc_buffers,
        list(b.match_buffers) + [tvm.s_tir.MatchBufferRegion(view, whole)], b.annotations))
    staged = tvm.tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind,
                          items[0] if len(items) == 1 else tvm.tirx.SeqStmt(items), loop.thread_binding,
                          loop.annotations)
    return tvm.tirx.SeqStmt([block, staged])


STAGE_PLANES_MAX_BYTES = 12 * 1024  # a fused conv's whole input, staged once: the late stages only


def _path_to(stmt, block, loops: tuple = ()) -> list | None:
    """The loops from `stmt` down to `block`'s realize, if `block` is under `stmt`."""
    if isinstance(stmt, tvm.s_tir.SBlockRealize):
        return list(loops) if stmt.block.same_as(block) else _path_to(stmt.block.body, block, loops)
    if isinstance(stmt, tvm.tirx.For):
        return _path_to(stmt.body, block, loops + (stmt,))
    children = list(stmt.seq) if isinstance(stmt, tvm.tirx.SeqStmt) else []
    return next((p for p in (_path_to(c, block, loops) for c in children) if p is not None), None)


# The rows whose loop over output channels (or channel pairs) `_staged_planes_loop` stages the
# input planes for: row kernel -> (its staged form, the position of its argument k).
_PLANES_STAGED = {INT8_ROW_REQUANT: (ROW_REQUANT_STAGED, 6), INT8_ROWS2: (ROWS2_PLANES_STAGED, 7),
                  INT8_ROWS2_REQUANT: (ROWS2_REQUANT_PLANES_STAGED, 7)}


def _staged_planes_loop(loop, above: list, stages: list):
    """`loop` preceded by a block staging its whole input if the loop runs over output
    channels of a pointwise conv whose input does not move with it, one row kernel under it:
    a tt_pw_row_requant_s8 row (a conv fused with the depthwise conv after it: one output
    channel's plane at a time) or a tt_pw_rows2(_requant)_s8 row (channel pairs outside rows:
    weights the kernel computes a pair at a time). The input must be whole rows of contiguous planes
    (4k pixels wide), staged in at most STAGE_PLANES_MAX_BYTES, not written under the loop,
    nor moving with the loops `above` it (rows walked outside channels would stage the
    planes again for each); else None."""
    if not isinstance(loop.extent, tvm.tirx.IntImm) or int(loop.extent) < 2:
        return None
    rows = [n for n in tir_nodes(loop.body)
            if isinstance(n, tvm.s_tir.SBlockRealize) and _extern(n, *_PLANES_STAGED) is not None]
    if len(rows) != 1:
        return None
    realize = rows[0]
    call = _extern(realize, *_PLANES_STAGED)
    kernel, at = _PLANES_STAGED[call.args[0].value]
    k, width = call.args[at], call.args[at + 1]
    source = _matched(realize, _address_buffer(call.args[2]))
    planes = source.source
    if not all(isinstance(v, tvm.tirx.IntImm) for v in (k, width)) or int(k) < 4 or len(planes.shape) != 4 \
            or len(planes.strides) or not all(isinstance(d, tvm.tirx.IntImm) for d in planes.shape):
        return None
    h, w = int(planes.shape[2]), int(planes.shape[3])
    if int(width) != w or w % 4 or not _analyzer([], realize).can_prove_equal(source.region[3].min, 0):
        return None
    if 2 * h * w * (int(k) // 4 * 4) > STAGE_PLANES_MAX_BYTES:
        return None
    bindings = list(zip(realize.block.iter_vars, realize.iter_values))
    moving = lambda loops: [iv.var for iv, value in bindings if any(uses(value, l.loop_var) for l in loops)]
    moves = lambda loops: any(uses(e, v) for r in source.region for e in (r.min, r.extent) for v in moving(loops))
    writers = [n for n in tir_nodes(loop.body) if isinstance(n, tvm.s_tir.SBlock)]
    if moves([loop]) or moves(above) or any(wr.source.same_as(planes) for n in writers for wr in n.writes):
        return None
    path = [loop] + _path_to(loop.body, realize.block)
    whole = tvm.tirx.BufferRegion(planes, list(source.region[:2]) + [tvm.ir.Range.from_min_extent(0, d)
                                                                      for d in planes.shape[2:]])
    region = _outside(whole, realize, path)
    if region is None:
        return None
    block, stage = _stage_block(region, int(k), h * w, stages)
    origin = [source.region[0].min, source.region[1].min, 0, 0]  # pixel (0, 0) of the input's first channel
    staged = _staged_call(realize, call, kernel, stage, tvm.tirx.address_of(tvm.tirx.BufferLoad(planes, origin)))
    body = _rebuild(loop.body, on_block=lambda b: staged.block if b.same_as(realize.block) else b)
    return tvm.tirx.SeqStmt([block, tvm.tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, body,
                                                 loop.thread_binding, loop.annotations)])


def _whole_rows(region, loop, analyzer) -> bool:
    """Whether `region` is one whole row of its buffer's planes, the row `loop` counts, so that
    the loop's rows lie one after the other: a plane."""
    buf, r = region.source, region.region
    if len(buf.strides) or len(r) < 2 or not all(isinstance(d, tvm.tirx.IntImm) for d in buf.shape[-2:]):
        return False
    rows, width = int(buf.shape[-2]), int(buf.shape[-1])
    row = analyzer.simplify(r[-2].min - loop.loop_var)
    return (analyzer.can_prove_equal(r[-1].min, 0) and analyzer.can_prove_equal(r[-1].extent, width)
            and analyzer.can_prove_equal(r[-2].extent, 1) and not uses(row, loop.loop_var)
            and analyzer.can_prove_equal(row, 0) and int(loop.extent) == rows)


# The row calls `_whole_plane_loop` widens: kernel -> (the arguments that address a row
# which must be a whole row of a plane, the width's argument, an argument that must be 0).
_PLANE_CALLS = {INT8_ROW_REQUANT: ((2, 9), 7, 13), ROW_REQUANT_STAGED: ((2, 9), 7, 13),  # input, output; keep_acc
                INT8_ROWS2_REQUANT: ((2, 11, 12), 8, 16),  # input, the two outputs; keep_acc
                ROWS2_REQUANT_PLANES_STAGED: ((2, 11, 12), 8, 16),
                REQUANT: ((1, 2), 3, None)}  # output, sums


def _row_region(realize, arg):
    """The row a call's argument addresses: its match_buffer's region, or, for
    `address_of(buf[indices])` of a buffer the block does not match (the two output rows of
    `_fused_pair`), the row of buf that starts there."""
    load = arg.args[0]
    match = [m.source for m in realize.block.match_buffers if m.buffer.same_as(load.source)]
    if match:
        return match[0]
    ranges = [tvm.ir.Range.from_min_extent(i, 1) for i in load.indices[:-1]]
    width = load.source.shape[-1]
    return tvm.tirx.BufferRegion(load.source, ranges + [tvm.ir.Range.from_min_extent(load.indices[-1], width)])


def _whole_plane_loop(loop):
    """`loop` as one call for its whole plane if it runs over the rows of a plane and its body
    is one row call of `_PLANE_CALLS` whose rows are whole rows of planes, besides blocks that
    do not move with it (a bias and a scale cached for the row): the call's width becomes the
    plane's pixels and the loop runs once, saving each row's call. That is a pointwise row
    (or two channels' rows) with its requantization (tt_pw_row(s2)_requant_*_s8, the sums
    not kept: about 150 instructions a row, the weights' sum, the checks, the tail of the
    last step), or the requantization of a plane's rows (tt_requant_s8 after a depthwise
    plane: about 35 a row with the loop's own); else None."""
    if not isinstance(loop.extent, tvm.tirx.IntImm) or int(loop.extent) < 2 or not (
            isinstance(loop.min, tvm.tirx.IntImm) and int(loop.min) == 0):
        return None
    items = list(loop.body.seq) if isinstance(loop.body, tvm.tirx.SeqStmt) else [loop.body]
    if not all(isinstance(x, tvm.s_tir.SBlockRealize) for x in items):
        return None
    calls = [(i, _extern(x, *_PLANE_CALLS)) for i, x in enumerate(items)]
    calls = [(i, c) for i, c in calls if c is not None]
    if len(calls) != 1 or any(uses(v, loop.loop_var) for j, x in enumerate(items) if j != calls[0][0]
                              for v in x.iter_values):
        return None
    (i, call), realize = calls[0], items[calls[0][0]]
    row_args, width_arg, zero_arg = _PLANE_CALLS[call.args[0].value]
    if zero_arg is not None and not (isinstance(call.args[zero_arg], tvm.tirx.IntImm) and int(call.args[zero_arg]) == 0):
        return None  # the sums kept: the accumulator holds one row
    analyzer = tvm.sym.Analyzer()
    for iv, value in zip(realize.block.iter_vars, realize.iter_values):
        analyzer.bind(iv.var, value)
    rows = [_row_region(realize, call.args[n]) for n in row_args]
    if not all(_whole_rows(r, loop, analyzer) for r in rows) or not isinstance(call.args[width_arg], tvm.tirx.IntImm):
        return None
    pixels = int(call.args[width_arg]) * int(loop.extent)
    plane = tvm.tirx.call_extern("int32", call.args[0].value, *call.args[1:width_arg], pixels,
                                 *call.args[width_arg + 1:])
    b = realize.block
    block = tvm.s_tir.SBlock(b.iter_vars, b.reads, b.writes, b.name_hint, tvm.tirx.Evaluate(plane), b.init,
                             b.alloc_buffers, b.match_buffers, b.annotations)
    items[i] = tvm.s_tir.SBlockRealize(realize.iter_values, realize.predicate, block)
    return tvm.tirx.For(loop.loop_var, loop.min, 1, loop.kind, items[0] if len(items) == 1 else tvm.tirx.SeqStmt(items),
                        loop.thread_binding, loop.annotations)


def _plane_requant(stmt):
    """(the requantization's block, the path of loops and sequences to it) if `stmt` is a
    tt_requant_s8 block, or a loop run once (`_whole_plane_loop`'s) around it and blocks
    caching its bias and scale; else None."""
    if _extern(stmt, REQUANT) is not None:
        return stmt, []
    if not (isinstance(stmt, tvm.tirx.For) and isinstance(stmt.extent, tvm.tirx.IntImm) and int(stmt.extent) == 1):
        return None
    items = list(stmt.body.seq) if isinstance(stmt.body, tvm.tirx.SeqStmt) else [stmt.body]
    if not all(isinstance(x, tvm.s_tir.SBlockRealize) and x.block.name_hint.endswith("_global") for x in items[:-1]):
        return None
    return (items[-1], [stmt]) if _extern(items[-1], REQUANT) is not None else None


def _fused_plane_requants(seq: list, units: list, readers: dict) -> list:
    """`seq` with each depthwise plane on a zeroed plane (tt_dw_plane_s8) and the
    requantization of exactly that plane right after it (tt_requant_s8, made one call for the
    plane by `_whole_plane_loop`) made one tt_dw_plane_requant_s8 block where the
    requantization stood, if no other block reads the plane: the float32 sums are then never
    stored. `units`: the kernel's loops of extent 1; `readers`: the blocks that read each
    buffer, by name."""
    out, i = list(seq), 0
    while i + 1 < len(out):
        dw, found = _extern(out[i], DEPTHWISE_PLANE), _plane_requant(out[i + 1])
        if dw is None or found is None or int(dw.args[-1]) != 1:
            i += 1
            continue
        (realize, loops), dw_realize = found, out[i]
        rq = _extern(realize, REQUANT)
        acc = _matched(dw_realize, _address_buffer(dw.args[1]))
        read = _matched(realize, _address_buffer(rq.args[2]))
        analyzer = _analyzer(units + loops, dw_realize, realize)
        plane = int(dw.args[12]) * int(dw.args[13])  # out_h * out_w
        same_plane = acc.source.same_as(read.source) and isinstance(rq.args[3], tvm.tirx.IntImm) and int(
            rq.args[3]) == plane and all(analyzer.can_prove_equal(a.min, b.min) for a, b in zip(acc.region, read.region))
        blocks = (dw_realize.block.name_hint, realize.block.name_hint)
        if not same_plane or any(b not in blocks for b in readers[acc.source.name]):
            i += 1
            continue
        dw_block, rq_block = dw_realize.block, realize.block
        others = lambda regions: [r for r in regions if not r.source.same_as(acc.source)]
        call = tvm.tirx.call_extern("int32", DW_PLANE_REQUANT, *dw.args[1:-1], rq.args[1], *rq.args[4:])
        fused = tvm.s_tir.SBlock(
            list(dw_block.iter_vars) + list(rq_block.iter_vars), others(dw_block.reads) + others(rq_block.reads),
            list(dw_block.writes) + list(rq_block.writes), rq_block.name_hint, tvm.tirx.Evaluate(call), None, [],
            list(dw_block.match_buffers) + [m for m in rq_block.match_buffers if not m.source.source.same_as(acc.source)],
            rq_block.annotations)  # the plane stays written: the call's fallback uses it
        fused = tvm.s_tir.SBlockRealize(list(dw_realize.iter_values) + list(realize.iter_values), True, fused)
        if loops:
            loop = loops[0]
            items = list(loop.body.seq) if isinstance(loop.body, tvm.tirx.SeqStmt) else [loop.body]
            body = items[:-1] + [fused]
            fused = tvm.tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind,
                                 body[0] if len(body) == 1 else tvm.tirx.SeqStmt(body), loop.thread_binding,
                                 loop.annotations)
        out[i:i + 2] = [fused]
        i += 1
    return out


def _loops_above(stmt, above: tuple = (), found: list | None = None) -> list:
    """(loop, the loops around it, outermost first) for every loop under `stmt`."""
    found = [] if found is None else found
    if isinstance(stmt, tvm.tirx.For):
        found.append((stmt, list(above)))
        _loops_above(stmt.body, above + (stmt,), found)
    elif isinstance(stmt, tvm.tirx.SeqStmt):
        for x in stmt.seq:
            _loops_above(x, above, found)
    elif isinstance(stmt, tvm.tirx.IfThenElse):
        for x in (stmt.then_case, stmt.else_case):
            if x is not None:
                _loops_above(x, above, found)
    elif isinstance(stmt, tvm.s_tir.SBlockRealize):
        _loops_above(stmt.block.body, above, found)
    return found


def _staged_rows(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """`func` with `_staged_loop` or `_staged_planes_loop` applied to every loop, the staged
    buffers allocated in its root block."""
    stages: list = []
    first: list = []  # blocks that run first in the kernel: the pairs' weight folds
    above = _loops_above(func.body)
    written = [w.source for n in tir_nodes(func.body) if isinstance(n, tvm.s_tir.SBlock) for w in n.writes]

    def on_loop(loop):
        outer = next(a for l, a in above if l.same_as(loop))
        staged = _staged_loop(loop, outer, written, stages, first)
        return staged if staged is not None else _staged_planes_loop(loop, outer, stages)
    body = _rebuild(func.body, on_loop=on_loop)
    if not stages:
        return func
    root = body.block
    root = tvm.s_tir.SBlock(root.iter_vars, root.reads, root.writes, root.name_hint,
                            tvm.tirx.SeqStmt(first + [root.body]) if first else root.body, root.init,
                            list(root.alloc_buffers) + stages, root.match_buffers, root.annotations)
    return func.with_body(tvm.s_tir.SBlockRealize(body.iter_values, body.predicate, root))


def tir_nodes(stmt) -> list:
    """Every statement and SBlock under a TIR statement (TVM 0.27 has no Python TIR visitor:
    this walks the statement kinds blocks sit in)."""
    found, stack = [], [stmt]
    while stack:
        node = stack.pop()
        found.append(node)
        for attr in ("block", "body", "then_case", "else_case"):
            child = getattr(node, attr, None)
            if isinstance(child, (tvm.tirx.Stmt, tvm.s_tir.SBlock)):
                stack.append(child)
        stack.extend(getattr(node, "seq", None) or [])
    return found


def sblocks(stmt) -> list:
    """Every SBlock under a TIR statement."""
    return [node for node in tir_nodes(stmt) if isinstance(node, tvm.s_tir.SBlock)]


def _weight_gradient_form(block, extents: list[int]) -> str | None:
    """The intrinsic for `block` when it sums a tile of a pointwise conv's weight gradient,
    `acc + (float(int8 input) - zx) * float32 gradient` over a plane (`_tile_weight_gradient` in
    passes/fuse_kernels.py); else None. TVM's structural match confirms the operands."""
    if _iter_types(block) != [0] * 4 + [_REDUCE] * 3 or extents[2:5] != [1, 1, 1] or extents[5] * extents[6] <= 1:
        return None
    store = block.body
    mul = store.value.b if isinstance(store, tvm.tirx.BufferStore) and isinstance(store.value, tvm.tirx.Add) else None
    operand = _zero_point(mul.a) if isinstance(mul, tvm.tirx.Mul) else None
    if operand is None or not _loaded(mul.b, "float32"):
        return None
    return weight_gradient_intrin(extents[0], extents[1], extents[5], extents[6], operand[1])


def _intrinsic(block, extents: list[int]) -> str | None:
    """The tensor intrinsic for the loop nest of `block` (its 7 innermost loops' extents), if any."""
    if _conv_product(block) is None:
        return _weight_gradient_form(block, extents) or _float_conv_plane_form(block, extents)
    row = _conv_row_form(block, extents) or _conv_plane_form(block, extents) or _depthwise_transpose_form(block, extents)
    if row:
        return row
    form = _row_form(block)
    if form and extents[1] == 2 and extents[2] > 1:  # two channels' small planes (input gradients)
        return planes2_intrin(extents[4], extents[2], extents[3]) if form[0] == FLOAT_ROW else None
    if form and extents[1] == 2:  # two channels' rows
        return rows2_intrin(INT8_ROWS2 if form[0] == INT8_ROW else FLOAT_ROWS2, extents[4], extents[3], form[1])
    if form:
        return pointwise_row_intrin(form[0], extents[4], extents[3], form[1])
    return _depthwise_form(block, extents)


MASK_BITS = "tt_mask_bits_f32"  # a float32 tensor's condition lo < x < hi, 8 elements a byte

# comparison `x op c` -> (c is a lower bound, strict)
_BOUNDS = {tvm.tirx.LT: (False, True), tvm.tirx.LE: (False, False), tvm.tirx.GT: (True, True),
           tvm.tirx.GE: (True, False)}


def _bound(cmp, x):
    """(is a lower bound, strict, the bound) when `cmp` compares `x` with a float32 constant."""
    if type(cmp) not in _BOUNDS:
        return None
    lower, strict = _BOUNDS[type(cmp)]
    if tvm_ffi.structural_equal(cmp.a, x) and isinstance(cmp.b, tvm.tirx.FloatImm):
        return lower, strict, cmp.b.value
    if tvm_ffi.structural_equal(cmp.b, x) and isinstance(cmp.a, tvm.tirx.FloatImm):
        return not lower, strict, cmp.a.value  # c < x is x > c
    return None


def _order_key(value: float) -> int:
    """The integer tt_mask_bits_f32 maps a float32 to: its bits read as sign and magnitude, so
    that keys order as the floats do (-0.0 and +0.0 both 0)."""
    bits = int(np.array(value, np.float32).view(np.uint32))
    return -(bits & 0x7FFFFFFF) if bits >> 31 else bits


def _mask_bits(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc | None:
    """`func` as one MASK_BITS call when it is PackBackwardMasks' packing of a float32 tensor's
    condition, `bits[i] = sum_k uint8(cond(x[8 i + k])) * weights[k]` with cond one bound or
    two (`lo < x`, `x <= hi`, ...), x read in row-major order; else None. Tensorize cannot
    match it (the reshape leaves a different index expression for every shape), so the whole
    body is swapped for the call (a documented lowering rule, the same arithmetic)."""
    root = func.body.block if isinstance(func.body, tvm.s_tir.SBlockRealize) else None
    nest = root.body if root is not None else None
    loops = []
    while isinstance(nest, tvm.tirx.For):
        loops.append(nest)
        nest = nest.body
    if len(loops) != 2 or not isinstance(nest, tvm.s_tir.SBlockRealize) or [int(l.extent) for l in loops][1] != 8:
        return None
    block, store = nest.block, nest.block.body
    if _iter_types(block) != [0, _REDUCE] or not isinstance(store, tvm.tirx.BufferStore) \
            or str(store.buffer.dtype) != "uint8" or not isinstance(store.value, tvm.tirx.Add) \
            or not isinstance(store.value.b, tvm.tirx.Mul):
        return None
    cast, weights = store.value.b.a, store.value.b.b
    if not (isinstance(cast, tvm.tirx.Cast) and _loaded(weights, "uint8")):
        return None
    cond = cast.value
    terms = [cond.a, cond.b] if isinstance(cond, tvm.tirx.And) else [cond]
    first = terms[0].a if _loaded(terms[0].a, "float32") else terms[0].b
    if not _loaded(first, "float32"):
        return None
    bounds = [_bound(t, first) for t in terms]
    if None in bounds or len({b[0] for b in bounds}) != len(bounds):
        return None  # one lower and one upper bound at most
    lo = next((_order_key(b[2]) - (0 if b[1] else 1) for b in bounds if b[0]), _order_key(float("-inf")) - 1)
    hi = next((_order_key(b[2]) + (0 if b[1] else 1) for b in bounds if not b[0]), _order_key(float("inf")) + 1)
    if lo >= hi:
        return None
    v0, v1 = (iv.var for iv in block.iter_vars)
    analyzer = tvm.sym.Analyzer()
    for iv in block.iter_vars:
        analyzer.bind(iv.var, iv.dom)
    x = first.source
    flat = _flat(x, list(first.indices))
    if len(x.strides) or not analyzer.can_prove_equal(flat, v0 * 8 + v1) \
            or not analyzer.can_prove_equal(store.indices[0], v0) or not analyzer.can_prove_equal(weights.indices[0], v1):
        return None
    n = int(block.iter_vars[0].dom.extent)
    address = lambda buffer: tvm.tirx.address_of(tvm.tirx.BufferLoad(buffer, [0] * len(buffer.shape)))
    base, span = lo + 1, hi - lo - 1  # lo < key < hi: key - base < span, unsigned
    call = tvm.tirx.call_extern("int32", MASK_BITS, address(store.buffer), address(x), n, base,
                                span - (1 << 32) if span >= 1 << 31 else span, address(weights.source))
    whole = lambda buffer: tvm.tirx.BufferRegion(buffer, [tvm.ir.Range.from_min_extent(0, d) for d in buffer.shape])
    swapped = tvm.s_tir.SBlock([], [whole(x), whole(weights.source)], [whole(store.buffer)], block.name_hint,
                               tvm.tirx.Evaluate(call))
    body = tvm.s_tir.SBlock(root.iter_vars, root.reads, root.writes, root.name_hint,
                            tvm.s_tir.SBlockRealize([], tvm.tirx.const(True, "bool"), swapped), root.init,
                            root.alloc_buffers, root.match_buffers, root.annotations)
    return func.with_body(tvm.s_tir.SBlockRealize(func.body.iter_values, func.body.predicate, body))


@contextlib.contextmanager
def _quiet_stderr():
    """Around a tensorize that may not match: TVM then renders the mismatch, and its printer
    warns on the process's stderr about the intrinsic's own variables ("Variable is not
    defined in the environment: v_rx_o") before the ScheduleError that says the loop stays.
    The failure is expected and handled; its warnings would only alarm the user."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def tensorize(func: tvm.tirx.PrimFunc) -> tuple[tvm.tirx.PrimFunc, int]:
    """`func` with every matching pointwise row, depthwise plane and float conv plane
    computed by a micro-kernel, and how many loop nests were replaced."""
    packed = _mask_bits(func)
    if packed is not None:
        return packed, 1
    func = _split_padded_rows(func)
    sch, replaced = Schedule(func), 0
    for block in sblocks(func.body):
        loops = sch.get_loops(sch.get_sblock(block.name_hint))
        if len(loops) < 7:
            continue
        intrin = _intrinsic(block, [int(sch.get(loop).extent) for loop in loops[-7:]])
        if intrin is None:
            continue
        try:
            with _quiet_stderr():
                sch.tensorize(loops[-7], intrin)
            replaced += 1
        except ScheduleError:
            continue  # not the loop nest the intrinsic describes: keep it
    sums = _int8_sums(func)
    for block in sblocks(func.body):
        zero = _requant_form(block, sums)
        if zero is None:
            continue
        loop = sch.get_loops(sch.get_sblock(block.name_hint))[-1]
        width = int(sch.get(loop).extent)
        if width < _REQUANT_MIN_WIDTH:
            continue
        try:
            with _quiet_stderr():
                sch.tensorize(loop, requant_intrin(width, zero))
            replaced += 1
        except ScheduleError:
            continue
    if not replaced:
        return func, 0
    func = scheduled(sch, func)
    units = [n for n in tir_nodes(func.body) if isinstance(n, tvm.tirx.For) and isinstance(n.extent, tvm.tirx.IntImm)
             and int(n.extent) == 1]
    readers: dict = {}
    for block in sblocks(func.body):
        for region in block.reads:
            readers.setdefault(region.source.name, []).append(block.name_hint)
    func = func.with_body(_rebuild(func.body, on_seq=lambda seq: _fused_pairs(_fused_rows(seq, units, readers), units,
                                                                               readers)))
    func = _staged_rows(func)
    func = func.with_body(_rebuild(func.body, on_loop=_whole_plane_loop))
    return func.with_body(_rebuild(func.body, on_seq=lambda seq: _fused_plane_requants(seq, units, readers))), replaced
