"""Int8Activations: keep a quantized graph's activations as int8 between kernels.

The int8 graphs carry activations as float32 tensors holding exact integers (so that
Relax's `Gradient` can differentiate them). Every saturated value `round(clip(q, lo, hi))`
with bounds inside [-128.5, 127.5] is an int8 number (so is the rounded mean of such
values); this pass stores it as int8
(`astype` after the saturation) and gives each reader its own `astype` back to float32.
`FuseKernels` then fuses the store into the producing kernel and each load into its
reader, so the arena holds 1 byte per activation element instead of 4, also for the
activations kept for the backward pass. Casts of integer parameters to float32 (weights,
biases) get the same treatment: one cast per reader, fused into it, so no float32 copy of
a weight is ever materialised; so do values derived from either by a scalar or a reshape (`x - x_zero`,
kept for a weight gradient, is recomputed there from the int8 `x`). The values are exact integers in range: nothing changes.

The input too: when the graph starts by quantizing its float32 input
(`sat(round(x / scale) + zero)`, `int8_ops.quantize`, or just `sat(x)` for a model
whose samples are int8 values, as the zoo models), the function takes the int8
sample instead and records `tinytrain.input_quantization = (scale, zero)`; the caller
quantizes with the same float32 operations (the generated header's `tt_input_from_float`).

Before::

    lv1 = R.clip(q, -128.49, 127.49); y = R.round(lv1)
    a = R.subtract(y, c1); b = R.multiply(y, c2)

After::

    lv1 = R.clip(q, -128.49, 127.49); y = R.round(lv1); y8 = R.astype(y, "int8")
    a = R.subtract(R.astype(y8, "float32"), c1); b = R.multiply(R.astype(y8, "float32"), c2)
"""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_tinytrain.relax_utils import function_attrs, map_functions, op_name, substitute_vars

INT8_RANGE = (-128.5, 127.5)
SCALAR_OPS = {"relax.subtract", "relax.add", "relax.multiply", "relax.divide"}


@tvm.transform.module_pass(opt_level=0, name="Int8Activations")
class Int8Activations:
    def __init__(self, func_names=("main", "train_step")):
        self.func_names = tuple(func_names)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return map_functions(mod, self.func_names, _rewrite)



def int8_valued(bindings) -> set:
    """The float32 values that are int8 numbers: each `round(clip(q, lo, hi))` with bounds
    inside INT8_RANGE, and the rounded mean of such a value (global pooling)."""
    values = {b.var: b.value for b in bindings}
    found = set()
    for b in bindings:
        v = b.value
        if op_name(v) == "relax.round" and str(getattr(b.var.ty, "dtype", None)) == "float32":
            inner = values.get(v.args[0])
            if op_name(inner) == "relax.clip":
                lo, hi = scalar(inner.args[1]), scalar(inner.args[2])
                if lo is not None and hi is not None and INT8_RANGE[0] <= lo and hi <= INT8_RANGE[1]:
                    found.add(b.var)
            elif op_name(inner) == "relax.mean" and inner.args[0] in found:
                found.add(b.var)
    return found


def scalar(expr) -> float | None:
    """A clip bound: a PrimValue/FloatImm (relax.op.clip's form) or a scalar constant."""
    value = getattr(expr, "value", None)
    if isinstance(value, (int, float)):  # FloatImm / IntImm
        return float(value)
    if value is not None and not isinstance(expr, tvm.ir.expr.Constant):  # PrimValue(FloatImm)
        return scalar(value)
    if isinstance(expr, tvm.ir.expr.Constant) and value.numpy().size == 1:
        return float(value.numpy().reshape(()))
    return None


def _rewrite(func: relax.Function) -> relax.Function:
    if len(func.body.blocks) != 1 or not isinstance(func.body.blocks[0], relax.DataflowBlock):
        return func
    bindings = list(func.body.blocks[0].bindings)
    values = {b.var: b.value for b in bindings}
    params = list(func.params)
    quantized_input = input_quantization_chain(func, bindings)
    skip, stored, input_attr = set(), {}, None
    if quantized_input is not None:
        chain, y, scale, zero = quantized_input
        x8 = relax.Var(params[0].name, relax.TensorType(params[0].ty.shape, "int8"))
        params[0], skip, stored[y], input_attr = x8, set(chain), x8, [scale, zero]
    saturated, casts, derived = int8_valued(bindings), {}, {}
    for b in bindings:
        v = b.value
        if b.var in saturated:
            continue
        if op_name(v) == "relax.astype" and str(v.attrs.dtype) == "float32" \
                and str(v.args[0].ty.dtype) in ("int8", "int32"):
            casts[b.var] = v.args[0]
        elif (op_name(v) == "relax.reshape" or (op_name(v) in SCALAR_OPS and scalar(v.args[1]) is not None)) and \
                (v.args[0] in saturated or v.args[0] in casts or v.args[0] in derived or v.args[0] in stored):
            derived[b.var] = v  # e.g. x - x_zero: recomputed by each reader from the int8 x
    escaping = set(relax.analysis.free_vars(func.body.body))

    def reload(u):
        """A fresh float32 copy of u for one reader, from the int8 storage it derives from."""
        if u in stored:
            return bb.emit(relax.op.astype(stored[u], "float32"), f"{u.name}_f32")
        if u in casts:
            return bb.emit(relax.op.astype(casts[u], "float32"), f"{u.name}_f32")
        value = derived[u]
        return bb.emit(relax.Call(value.op, [reload(value.args[0]), *value.args[1:]], value.attrs), u.name)

    bb = relax.BlockBuilder()
    attrs = function_attrs(func)
    if input_attr is not None:
        attrs["tinytrain.input_quantization"] = input_attr
    with bb.function(func.attrs["global_symbol"], params, attrs=attrs, private=False):
        with bb.dataflow():
            for b in bindings:
                if b.var in skip:
                    continue  # the input's quantization: done by the caller
                if (b.var in casts or b.var in derived) and b.var not in escaping:
                    continue  # re-emitted before each reader instead
                mapping = {}
                for u in relax.analysis.free_vars(b.value):
                    if u in stored or ((u in casts or u in derived) and u not in escaping):
                        mapping[u] = reload(u)
                value = substitute_vars(b.value, mapping) if mapping else b.value
                bb.emit_normalized(relax.VarBinding(b.var, bb.normalize(value)))
                if b.var in saturated and b.var not in stored:
                    stored[b.var] = bb.emit(relax.op.astype(b.var, "int8"), f"{b.var.name}_i8")
        bb.emit_func_output(func.body.body)
    return bb.get()[func.attrs["global_symbol"]]


def input_quantization_chain(func, bindings):
    """(bindings, result, scale, zero) if the graph begins `sat(round(x / s) + z)`, else None."""
    x = func.params[0]
    if str(getattr(x.ty, "dtype", "")) != "float32":
        return None
    users = {}
    for b in bindings:
        for v in relax.analysis.free_vars(b.value):
            users.setdefault(v, []).append(b)
    chain, var, scale, zero = [], x, 1.0, 0.0
    steps = ["relax.divide", "relax.round", "relax.add", "relax.clip", "relax.round"]
    while steps:
        use = users.get(var, [])
        if len(use) != 1 or not use[0].value.args[0].same_as(var):
            return None
        op = op_name(use[0].value)
        if op not in steps:
            return None
        steps = steps[steps.index(op) + 1:]  # divide, round and add are optional
        args = use[0].value.args
        if op == "relax.divide":
            scale = scalar(args[1])
        elif op == "relax.add":
            zero = scalar(args[1])
        elif op == "relax.clip":
            lo, hi = scalar(args[1]), scalar(args[2])
            if lo is None or hi is None or lo < INT8_RANGE[0] or hi > INT8_RANGE[1]:
                return None
        chain.append(use[0].var)
        var = use[0].var
    if scale is None or zero is None or var in relax.analysis.free_vars(func.body.body):
        return None
    return chain, var, float(scale), float(zero)

