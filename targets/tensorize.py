"""Tensorize: the hot loop nests of the kernels become calls of C micro-kernels.

A fused kernel (passes/fuse_kernels.py) computes a pointwise conv a row at a time: for each
output channel and row, a float32 accumulator of one row is zeroed, then

    acc[x] += (float(a[i, x]) - zx) * float(w[i])     int8 a and w (the forward)
    acc[x] += a[i, x] * float(w[i])                    float32 a, int8 w (input gradients)

for x < width, i < channels. Printed as C, such a loop converts its int8 operands to float
on every multiply-accumulate and keeps nothing in registers. This step matches those loop
nests with TVM's `tensorize` against a `TensorIntrin` whose description is that very
computation and whose implementation calls a micro-kernel of `runtime/tt_kernels.c`
(`tt_pw_row_s8`: int32 sums, SXTB16/SMLA on Cortex-M; `tt_pw_row_f32s8`: 4 pixels in
registers), each giving the same bits as the loop it replaces (see there). Matching is TVM's
structural comparison, so a loop that differs in any way (another operand expression, a
strided or padded input) is left as it is.

It runs when lowering to C only: the Relax VM reference keeps the plain TIR.
"""

from __future__ import annotations

import tvm
from tvm.s_tir import Schedule, ScheduleError, TensorIntrin
from tvm.script import tirx as T

from tvm_tinytrain.passes.fuse_kernels import scheduled

INT8_ROW = "tt_pw_row_s8"      # acc[x] += (float(a[i, x]) - zx) * float(w[i]), int8 a
FLOAT_ROW = "tt_pw_row_f32s8"  # acc[x] += a[i, x] * float(w[i]), float32 a
_REDUCE = 2  # IterVar.CommReduce


def pointwise_row_intrin(kernel: str, channels: int, width: int, zero: int = 0) -> str:
    """The registered name of the intrinsic of `kernel` for one (channels, width, zero point)."""
    name = f"tinytrain.{kernel}.c{channels}.w{width}.z{zero}"
    if TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    K, W, zx, one = T.int64(channels), T.int64(width), T.float32(zero), T.int64(1)
    a_dtype = "int8" if kernel == INT8_ROW else "float32"

    # The descriptions: one per form of the sum (TVM drops a "- 0" zero point).
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
    def int8_desc_zero(a: T.handle, b: T.handle, c: T.handle):
        A = T.match_buffer(a, (one, K, one, W), "int8", offset_factor=1)
        B = T.match_buffer(b, (one, K, one, one), "int8", offset_factor=1)
        C = T.match_buffer(c, (one, one, one, W), "float32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0, 0, 0, 0:W], A[0, 0:K, 0, 0:W], B[0, 0:K, 0, 0])
            T.writes(C[0, 0, 0, 0:W])
            for n, f, y, x, k, ry, rx in T.grid(one, one, one, W, K, one, one):
                with T.sblock("update"):
                    vx, vk = T.axis.remap("SR", [x, k])
                    C[0, 0, 0, vx] = C[0, 0, 0, vx] + T.Cast("float32", A[0, vk, 0, vx]) * T.Cast(
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
            T.evaluate(T.call_extern("int32", INT8_ROW, C.access_ptr("rw"), A.access_ptr("r"),
                                     T.Cast("int32", a_stride), B.access_ptr("r"), T.Cast("int32", b_stride),
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
            T.evaluate(T.call_extern("int32", FLOAT_ROW, C.access_ptr("rw"), A.access_ptr("r"),
                                     T.Cast("int32", a_stride), B.access_ptr("r"), T.Cast("int32", b_stride),
                                     channels, width))

    if kernel == INT8_ROW:
        TensorIntrin.register(name, int8_desc_zero if zero == 0 else int8_desc, int8_impl)
    else:
        assert a_dtype == "float32" and zero == 0
        TensorIntrin.register(name, float_desc, float_impl)
    return name


def _loaded(expr, dtype: str) -> bool:
    return isinstance(expr, tvm.ir.expr.TensorLoad) and str(expr.ty) == dtype


def _int8_cast(expr) -> bool:
    return isinstance(expr, tvm.tirx.Cast) and _loaded(expr.value, "int8")


def _row_form(block) -> tuple[str, int] | None:
    """(micro-kernel, zero point) when `block` is one of the module doc's sums over one 1x1
    conv's (n, f, y, x | c, ky, kx); else None."""
    ivs = block.iter_vars
    if len(ivs) != 7 or [int(v.iter_type) == _REDUCE for v in ivs] != [False] * 4 + [True] * 3:
        return None
    if any(int(v.dom.extent) != 1 for v in ivs[5:]):
        return None
    store = block.body
    if not isinstance(store, tvm.tirx.BufferStore) or not isinstance(store.value, tvm.tirx.Add):
        return None
    mul = store.value.b
    if not isinstance(mul, tvm.tirx.Mul) or not _int8_cast(mul.b):
        return None
    if _loaded(mul.a, "float32"):
        return FLOAT_ROW, 0
    a, zero = (mul.a.a, mul.a.b) if isinstance(mul.a, tvm.tirx.Sub) else (mul.a, tvm.tirx.FloatImm("float32", 0.0))
    if not _int8_cast(a) or not isinstance(zero, tvm.tirx.FloatImm):
        return None
    if zero.value != int(zero.value) or not -128 <= zero.value <= 127:
        return None
    return INT8_ROW, int(zero.value)


def sblocks(stmt) -> list:
    """Every SBlock under a TIR statement (TVM 0.27 has no Python TIR visitor: this walks the
    statement kinds blocks sit in)."""
    found, stack = [], [stmt]
    while stack:
        node = stack.pop()
        if isinstance(node, tvm.s_tir.SBlock):
            found.append(node)
        for attr in ("block", "body", "then_case", "else_case"):
            child = getattr(node, attr, None)
            if isinstance(child, (tvm.tirx.Stmt, tvm.s_tir.SBlock)):
                stack.append(child)
        stack.extend(getattr(node, "seq", None) or [])
    return found


def tensorize(func: tvm.tirx.PrimFunc) -> tuple[tvm.tirx.PrimFunc, int]:
    """`func` with every matching pointwise row computed by a micro-kernel, and how many
    loop nests were replaced."""
    sch, replaced = Schedule(func), 0
    for block in sblocks(func.body):
        form = _row_form(block)
        if form is None:
            continue
        loops = sch.get_loops(sch.get_sblock(block.name_hint))
        if len(loops) < 7:
            continue
        width, channels = (int(sch.get(loop).extent) for loop in loops[-4:-2])
        try:
            sch.tensorize(loops[-7], pointwise_row_intrin(form[0], channels, width, form[1]))
            replaced += 1
        except ScheduleError:
            continue  # not a row of a stride-1 pointwise conv: keep the loop nest
    return (scheduled(sch, func) if replaced else func), replaced
