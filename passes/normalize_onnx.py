"""NormalizeONNX: give back the Relax ops that TVM's ONNX importer hides in `call_tir`."""

from __future__ import annotations

import math

import tvm
import tvm_ffi
from tvm import relax, tirx, topi
from tvm.relax.dpl import is_const, is_op, is_tuple, rewrite_call, wildcard


@tvm.transform.module_pass(opt_level=0, name="NormalizeONNX")
class NormalizeONNX:
    """Turn the TE kernels `relax.frontend.onnx.from_onnx` emits for `Clip` and `Pad` into ops.

    TVM 0.27's ONNX importer lowers `Clip` (opset >= 11, constant bounds) to two `call_tir`
    of `topi.maximum` / `topi.minimum`, and a constant-mode `Pad` to a `call_tir` of
    `topi.nn.pad`. `relax.transform.Gradient` cannot differentiate a `call_tir`, and later
    passes cannot see what it computes, so this pass rewrites them to `R.clip` and
    `R.nn.pad` (what the torch frontend emits). It reads the bounds from the call's
    arguments and the pad widths from the PrimFunc, regenerates the PrimFunc the importer
    would have built for them, and rewrites only on an exact structural match: any other
    `call_tir` is left alone. PrimFuncs that become unused are removed.

    A one-sided `Clip` (only `min` or only `max`) is left as it is.

    Before (what `from_onnx` emits for `Pad(x, [0, 0, 1, 1, 0, 0, 1, 1])` then
    `Clip(0, 6)`; the PrimFuncs `pad`, `maximum` and `minimum` are TE-generated)::

        @R.function
        def main(x: R.Tensor((1, 3, 4, 4), "float32")) -> R.Tensor((1, 3, 6, 6), "float32"):
            cls = Module
            with R.dataflow():
                lv = R.call_tir(cls.pad, (x,), out_ty=R.Tensor((1, 3, 6, 6), "float32"))
                lv1 = R.isnan(R.const(0.0, "float32"))
                lv2 = R.where(lv1, R.const(float("-inf"), "float32"), R.const(0.0, "float32"))
                lv3 = R.call_tir(cls.maximum, (lv, lv2), out_ty=R.Tensor((1, 3, 6, 6), "float32"))
                lv4 = R.isnan(R.const(6.0, "float32"))
                lv5 = R.where(lv4, R.const(float("inf"), "float32"), R.const(6.0, "float32"))
                lv6 = R.call_tir(cls.minimum, (lv3, lv5), out_ty=R.Tensor((1, 3, 6, 6), "float32"))
                gv = lv6
                R.output(gv)
            return gv

    After (the PrimFuncs are gone)::

        @R.function
        def main(x: R.Tensor((1, 3, 4, 4), "float32")) -> R.Tensor((1, 3, 6, 6), "float32"):
            with R.dataflow():
                lv = R.nn.pad(x, pad_width=[0, 0, 0, 0, 1, 1, 1, 1], pad_mode="constant",
                              pad_value=0.0)
                gv = R.clip(lv, T.float64(0.0), T.float64(6.0))
                R.output(gv)
            return gv
    """

    def __init__(self, func_name: str = "main"):
        self.func_name = func_name

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        func = mod[self.func_name]
        func = rewrite_call(_CLIP, lambda expr, m: _rewrite_clip(mod, expr, m), func)
        func = rewrite_call(_PAD, lambda expr, m: _rewrite_pad(mod, expr, m), func)
        mod = mod.clone()
        mod[self.func_name] = func
        # Drops the bound computations (isnan / where) and the PrimFuncs now unused.
        return relax.transform.DeadCodeElimination()(mod)


def _call_tir(*args):
    return is_op("relax.call_tir")(wildcard(), is_tuple(list(args)))


def _bound(const):
    """The importer wraps each Clip bound as `where(isnan(c), +-inf, c)` (NaN = no bound)."""
    return is_op("relax.where")(is_op("relax.isnan")(const), is_const(), const) | const


_X, _LO, _HI = wildcard(), is_const(), is_const()
_MAX = _call_tir(_X, _bound(_LO))
_CLIP = _call_tir(_MAX, _bound(_HI))
_PAD = _call_tir(_X)


def _rewrite_clip(mod: tvm.IRModule, expr: relax.Call, m: dict) -> relax.Expr:
    lo, hi = (m[c].value.numpy() for c in (_LO, _HI))
    if lo.shape or hi.shape or math.isnan(lo) or math.isnan(hi):
        return expr
    if not (_is_te(mod, m[_MAX], topi.maximum) and _is_te(mod, expr, topi.minimum)):
        return expr
    return relax.op.clip(m[_X], float(lo), float(hi))


def _rewrite_pad(mod: tvm.IRModule, expr: relax.Call, m: dict) -> relax.Expr:
    x = m[_X]
    guess = _read_pad(mod[expr.args[0]], x.ty, expr.ty)
    if guess is None or not _is_te(mod, expr, topi.nn.pad, *guess):
        return expr
    before, after, value = guess
    widths = [w for pair in zip(before, after) for w in pair]
    return relax.op.nn.pad(x, widths, pad_mode="constant", pad_value=value)


def _read_pad(func: tirx.PrimFunc, x_ty, out_ty) -> tuple[list, list, float] | None:
    """Guess (before, after, value) from `out[i] = if_then_else(inside, x[i - before], value)`.

    Only a guess: `_is_te` then proves it by regenerating the whole PrimFunc.
    """
    stores = []
    tvm_ffi.structural_walk(func.body, (tirx.BufferStore, stores.append))
    if len(stores) != 1:
        return None
    value = stores[0].value
    if_then_else = tvm.ir.Op.get("prim.if_then_else")
    if not (isinstance(value, tvm.ir.Call) and value.op.same_as(if_then_else)):
        return None
    load, fill = value.args[1], value.args[2]
    if not (isinstance(load, tvm.ir.TensorLoad) and isinstance(fill, tirx.FloatImm)):
        return None
    before = []
    for index in load.indices:
        if isinstance(index, tirx.Sub) and isinstance(index.b, tirx.IntImm):
            before.append(int(index.b.value))
        else:
            before.append(0)
    in_shape = [int(d) for d in x_ty.shape]
    out_shape = [int(d) for d in out_ty.shape]
    after = [o - i - b for o, i, b in zip(out_shape, in_shape, before)]
    return before, after, float(fill.value)


def _is_te(mod: tvm.IRModule, call: relax.Call, compute, *extra) -> bool:
    """Is `call` a call_tir of exactly the PrimFunc `bb.emit_te(compute, *args, *extra)` makes?"""
    arg_types = [arg.ty for arg in call.args[1].fields]
    return tvm_ffi.structural_equal(mod[call.args[0]], _te_prim_func(compute, arg_types, extra))


def _te_prim_func(compute, arg_types, extra) -> tirx.PrimFunc:
    bb = relax.BlockBuilder()
    args = [relax.Var(f"a{i}", ty) for i, ty in enumerate(arg_types)]
    with bb.function("f", args):
        with bb.dataflow():
            out = bb.emit_output(bb.emit_te(compute, *args, *extra))
        bb.emit_func_output(out)
    call = bb.get()["f"].body.blocks[0].bindings[0].value
    return bb.get()[call.args[0]]
