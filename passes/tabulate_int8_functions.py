"""TabulateInt8Functions: a float32 function of one int8 tensor becomes a 256-entry table.

Post-training quantization runs a hard-swish (or a hard-sigmoid, a clip, scalar
arithmetic) between int8 tensors in float32: dequantize, the float ops, requantize
(`quantize.py`). Each output element depends only on the input element at the same place,
and that input is one of 256 int8 values; so the whole chain is a table of 256 int8
results (256 bytes of flash), indexed by the input. The table is computed here, op by op
in NumPy float32 (IEEE arithmetic, as the C kernels compute without contraction), so the
lookup returns the very numbers the chain would: no computed number changes. `FuseKernels`
stores the lookup's int8 result instead of fusing it into the conv that reads it (which
would look each element up at every read), and `InplaceDepthwise` writes it over its
source. A chain is tabulated only when nothing but the chain reads its intermediate values
(the backward pass of a chain on the gradient path reads them, so that chain stays as it
is) and it uses only exactly rounded ops (no `exp`: a C library's `expf` may differ from
NumPy's in the last bit).

Before::

    d = R.multiply(R.subtract(x, z), s); t = R.clip(R.add(d, 3), 0, 6); y = R.multiply(d, t) ...
    q = R.round(R.clip(R.add(R.round(R.divide(y, s_out)), z_out), -128.49, 127.49))

After::

    t = R.take(table_int8, R.add(R.astype(x, "int32"), 128), axis=0, mode="clip")
    q = R.round(R.clip(R.astype(t, "float32"), -128.49, 127.49))  # still an int8 value to Int8Activations
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_tinytrain.passes.int8_activations import int8_valued, scalar
from tvm_tinytrain.relax_utils import function_attrs, map_functions, op_name, readers

# ops whose float32 results NumPy reproduces exactly, elementwise over a tensor and scalars
_F32 = np.float32
_OPS = {
    "relax.add": lambda a, b: a + b, "relax.subtract": lambda a, b: a - b,
    "relax.multiply": lambda a, b: a * b, "relax.divide": lambda a, b: a / b,
    "relax.maximum": np.maximum, "relax.minimum": np.minimum,
    "relax.nn.relu": lambda a: np.maximum(a, _F32(0)), "relax.round": np.rint,  # half to even, as rintf
    "relax.clip": lambda a, lo, hi: np.maximum(np.minimum(a, _F32(hi)), _F32(lo)),
}
INT8_VALUES = np.arange(-128, 128, dtype=np.float32)


@tvm.transform.module_pass(opt_level=0, name="TabulateInt8Functions")
class TabulateInt8Functions:
    def __init__(self, func_names=("main", "train_step")):
        self.func_names = tuple(func_names)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        names = [gv.name_hint for gv in mod.get_global_vars() if gv.name_hint in self.func_names]
        return relax.transform.DeadCodeElimination(names)(map_functions(mod, names, _rewrite))


def _rewrite(func: relax.Function) -> relax.Function:
    if len(func.body.blocks) != 1 or not isinstance(func.body.blocks[0], relax.DataflowBlock):
        return func
    bindings = list(func.body.blocks[0].bindings)
    values = {b.var: b.value for b in bindings}
    index = {b.var: i for i, b in enumerate(bindings)}
    read_by = readers(bindings)
    escaping = set(relax.analysis.free_vars(func.body.body))
    int8 = int8_valued(bindings)
    tables = {}  # saturated var -> (its source, table)
    for b in bindings:
        if b.var in int8 and op_name(values[b.value.args[0]]) == "relax.clip":
            found = _chain(b.var, values, int8, read_by, index, escaping)
            if found is not None:
                tables[b.var] = found
    if not tables:
        return func
    bb = relax.BlockBuilder()
    with bb.function(func.attrs["global_symbol"], list(func.params), attrs=function_attrs(func), private=False):
        with bb.dataflow():
            for b in bindings:
                if b.var not in tables:
                    bb.emit_normalized(b)
                    continue
                source, table = tables[b.var]
                clip = values[b.value.args[0]]  # round(clip(., lo, hi)): kept, so it stays an int8 value
                index_ = relax.op.add(relax.op.astype(source, "int32"), relax.const(128, "int32"))
                # mode clip: the index is in range, and TVM's "fast" mode warns on every lookup
                lookup = bb.emit(relax.op.take(relax.const(table, "int8"), index_, axis=0, mode="clip"))
                bounded = bb.emit(relax.Call(clip.op, [relax.op.astype(lookup, "float32"), *clip.args[1:]], clip.attrs))
                bb.emit_normalized(relax.VarBinding(b.var, bb.normalize(relax.op.round(bounded))))
        bb.emit_func_output(func.body.body)
    return bb.get()[func.attrs["global_symbol"]]


def _chain(end, values, int8, read_by, index, escaping):
    """(source, table) when `end` is a function of one int8 tensor through exactly rounded
    elementwise ops whose results nothing else reads, else None."""
    chain, sources, todo = set(), set(), [values[end].args[0]]
    while todo:
        var = todo.pop()
        if var in int8:
            sources.add(var)
            continue
        value = values.get(var)
        if op_name(value) not in _OPS or var in escaping:
            return None
        chain.add(var)
        for arg in value.args:
            if isinstance(arg, relax.Var):
                todo.append(arg)
            elif scalar(arg) is None:
                return None  # a per-channel constant: not one function of the element
    if len(sources) != 1 or not any(op_name(values[v]) != "relax.clip" for v in chain):
        return None
    members = {index[v] for v in chain} | {index[end]}
    if any(set(read_by.get(v, [])) - members for v in chain):
        return None  # an intermediate value another op (the backward pass) reads
    (source,) = sources
    if tuple(source.ty.shape) != tuple(end.ty.shape):
        return None  # broadcasting: not elementwise in the source
    computed = {source: INT8_VALUES}

    def evaluate(var):
        if var not in computed:
            value = values[var]
            args = [evaluate(a) if isinstance(a, relax.Var) else _F32(scalar(a)) for a in value.args]
            computed[var] = _OPS[op_name(value)](*args).astype(np.float32)
        return computed[var]

    clip = values[values[end].args[0]]
    lo, hi = scalar(clip.args[1]), scalar(clip.args[2])
    with np.errstate(all="ignore"):  # an inf on the way is clipped, as in C
        table = np.rint(_OPS["relax.clip"](evaluate(clip.args[0]), lo, hi))
    if np.isnan(table).any():
        return None  # (0 * inf on the way) C's min and max may treat a NaN unlike NumPy's
    return source, table.astype(np.int8)
