"""Tensorize: the hot loop nests of the kernels become calls of C micro-kernels.

A fused kernel (passes/fuse_kernels.py) computes an int8 pointwise conv a row at a time:
for each output channel and row, a float32 accumulator of one row is zeroed, then

    acc[x] += (float(a[i, x]) - zx) * float(w[i])     for x < width, i < channels

with `a` the int8 input (one row of every input channel) and `w` the int8 weights of the
output channel. Printed as C, that loop converts both operands to float on every
multiply-accumulate. This step matches the loop nest with TVM's `tensorize` against a
`TensorIntrin` whose description is that very computation and whose implementation calls
`tt_pw_row_s8` (`runtime/tt_kernels.c`: int32 sums, SMLAD on Cortex-M, the same bits as the
float loop, see there). Matching is TVM's structural comparison, so a loop that differs in
any way (another zero point expression, a strided or padded input) is left as it is.

It runs when lowering to C only: the Relax VM reference keeps the plain TIR.
"""

from __future__ import annotations

import tvm
from tvm.s_tir import Schedule, ScheduleError, TensorIntrin
from tvm.script import tirx as T

from tvm_tinytrain.passes.fuse_kernels import scheduled

MICRO_KERNEL = "tt_pw_row_s8"
_REDUCE = 2  # IterVar.CommReduce


def pointwise_row_intrin(channels: int, width: int, zero: int) -> str:
    """The registered name of the intrinsic for one (channels, width, zero point)."""
    name = f"tinytrain.{MICRO_KERNEL}.c{channels}.w{width}.z{zero}"
    if TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    K, W, zx = T.int64(channels), T.int64(width), T.float32(zero)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle):
        A = T.match_buffer(a, (T.int64(1), K, T.int64(1), W), "int8", offset_factor=1)
        B = T.match_buffer(b, (T.int64(1), K, T.int64(1), T.int64(1)), "int8", offset_factor=1)
        C = T.match_buffer(c, (T.int64(1), T.int64(1), T.int64(1), W), "float32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0, 0, 0, 0:W], A[0, 0:K, 0, 0:W], B[0, 0:K, 0, 0])
            T.writes(C[0, 0, 0, 0:W])
            for n, f, y, x, k, ry, rx in T.grid(T.int64(1), T.int64(1), T.int64(1), W, K, T.int64(1), T.int64(1)):
                with T.sblock("update"):
                    vx, vk = T.axis.remap("SR", [x, k])
                    C[0, 0, 0, vx] = C[0, 0, 0, vx] + (T.Cast("float32", A[0, vk, 0, vx]) - zx) * T.Cast(
                        "float32", B[0, vk, 0, 0])

    @T.prim_func(s_tir=True)
    def desc_zero(a: T.handle, b: T.handle, c: T.handle):  # a zero point of 0: TVM drops the "- 0"
        A = T.match_buffer(a, (T.int64(1), K, T.int64(1), W), "int8", offset_factor=1)
        B = T.match_buffer(b, (T.int64(1), K, T.int64(1), T.int64(1)), "int8", offset_factor=1)
        C = T.match_buffer(c, (T.int64(1), T.int64(1), T.int64(1), W), "float32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0, 0, 0, 0:W], A[0, 0:K, 0, 0:W], B[0, 0:K, 0, 0])
            T.writes(C[0, 0, 0, 0:W])
            for n, f, y, x, k, ry, rx in T.grid(T.int64(1), T.int64(1), T.int64(1), W, K, T.int64(1), T.int64(1)):
                with T.sblock("update"):
                    vx, vk = T.axis.remap("SR", [x, k])
                    C[0, 0, 0, vx] = C[0, 0, 0, vx] + T.Cast("float32", A[0, vk, 0, vx]) * T.Cast(
                        "float32", B[0, vk, 0, 0])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle):
        a_stride = T.int64()
        b_stride = T.int64()
        A = T.match_buffer(a, (T.int64(1), K, T.int64(1), W), "int8", offset_factor=1,
                           strides=[T.int64(), a_stride, T.int64(), T.int64(1)])
        B = T.match_buffer(b, (T.int64(1), K, T.int64(1), T.int64(1)), "int8", offset_factor=1,
                           strides=[T.int64(), b_stride, T.int64(), T.int64()])
        C = T.match_buffer(c, (T.int64(1), T.int64(1), T.int64(1), W), "float32", offset_factor=1,
                           strides=[T.int64(), T.int64(), T.int64(), T.int64(1)])
        with T.sblock("root"):
            T.reads(C[0, 0, 0, 0:W], A[0, 0:K, 0, 0:W], B[0, 0:K, 0, 0])
            T.writes(C[0, 0, 0, 0:W])
            T.evaluate(T.call_extern("int32", MICRO_KERNEL, C.access_ptr("rw"), A.access_ptr("r"),
                                     T.Cast("int32", a_stride), B.access_ptr("r"), T.Cast("int32", b_stride),
                                     channels, width, zero))

    TensorIntrin.register(name, desc_zero if zero == 0 else desc, impl)
    return name


def _pointwise_zero(block) -> int | None:
    """The input zero point when `block` is `acc += (float(a) - zx) * float(w)` (or, zx = 0,
    `acc += float(a) * float(w)`) over one
    1x1 conv's (n, f, y, x | c, ky, kx) with int8 a and w and an integer zx; else None."""
    ivs = block.iter_vars
    if len(ivs) != 7 or [int(v.iter_type) == _REDUCE for v in ivs] != [False] * 4 + [True] * 3:
        return None
    if any(int(v.dom.extent) != 1 for v in ivs[5:]):
        return None
    store = block.body
    if not isinstance(store, tvm.tirx.BufferStore) or not isinstance(store.value, tvm.tirx.Add):
        return None
    mul = store.value.b
    if not isinstance(mul, tvm.tirx.Mul):
        return None
    if isinstance(mul.a, tvm.tirx.Sub):
        a, zero, w = mul.a.a, mul.a.b, mul.b
    else:
        a, zero, w = mul.a, tvm.tirx.FloatImm("float32", 0.0), mul.b
    for cast in (a, w):
        if not (isinstance(cast, tvm.tirx.Cast) and isinstance(cast.value, tvm.ir.expr.TensorLoad)
                and str(cast.value.ty) == "int8"):
            return None
    if not isinstance(zero, tvm.tirx.FloatImm) or zero.value != int(zero.value) or not -128 <= zero.value <= 127:
        return None
    return int(zero.value)


def _reduction_blocks(func: tvm.tirx.PrimFunc) -> list:
    found, stack = [], [func.body]
    while stack:  # TVM 0.27 has no Python TIR visitor: walk the statement kinds blocks sit in
        node = stack.pop()
        if isinstance(node, tvm.s_tir.SBlock):
            if any(int(v.iter_type) == _REDUCE for v in node.iter_vars):
                found.append(node)
        for attr in ("block", "body", "then_case", "else_case"):
            child = getattr(node, attr, None)
            if isinstance(child, (tvm.tirx.Stmt, tvm.s_tir.SBlock)):
                stack.append(child)
        stack.extend(getattr(node, "seq", None) or [])
    return found


def tensorize(func: tvm.tirx.PrimFunc) -> tuple[tvm.tirx.PrimFunc, int]:
    """`func` with every matching int8 pointwise row computed by the micro-kernel, and how
    many loop nests were replaced."""
    sch, replaced = Schedule(func), 0
    for block in _reduction_blocks(func):
        zero = _pointwise_zero(block)
        if zero is None:
            continue
        rv = sch.get_sblock(block.name_hint)
        loops = sch.get_loops(rv)
        if len(loops) < 7:
            continue
        width, channels = (int(sch.get(loop).extent) for loop in loops[-4:-2])
        try:
            sch.tensorize(loops[-7], pointwise_row_intrin(channels, width, zero))
            replaced += 1
        except ScheduleError:
            continue  # not a row of a stride-1 pointwise conv: keep the loop nest
    return (scheduled(sch, func) if replaced else func), replaced
