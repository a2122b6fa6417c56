"""PackBackwardMasks: the backward pass keeps 1-bit masks, not float32 pre-activations.

The gradient of a saturation or ReLU, `where(lo < x < hi, dy, 0)`, needs only whether each
element of `x` was inside the bounds, but as written it keeps the float32 `x` alive from
the forward pass to the backward pass: 32 bits per element where one is enough. This pass
computes the condition in the forward pass, right where `x` is produced, packs it eight
elements to a byte, and unpacks it where the backward pass reads it. `x` then dies in the
forward pass. The condition is the same comparison of the same values: nothing changes.

Before::

    x = ...                                    # forward
    ...
    m = R.logical_and(R.greater(x, lo), R.less(x, hi)); g = R.where(m, dy, 0)

After::

    x = ...; bits = R.sum(R.astype(R.reshape(cond(x), (n // 8, 8)), "uint8") * [1, 2, ..., 128], axis=1)
    ...
    m = R.not_equal(R.bitwise_and(R.right_shift(R.reshape(bits, (n // 8, 1)), [0..7]), 1), 0)
    g = R.where(R.reshape(m, x.shape), dy, 0)

Tensors whose size is not a multiple of 8 keep a 1-byte bool mask, still computed forward.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_tinytrain.relax_utils import backward_start, function_attrs, map_functions, op_name

COMPARISONS = {"relax.greater", "relax.less", "relax.greater_equal", "relax.less_equal", "relax.logical_and"}
BIT_WEIGHTS = np.array([1 << k for k in range(8)], np.uint8)


@tvm.transform.module_pass(opt_level=0, name="PackBackwardMasks")
class PackBackwardMasks:
    def __init__(self, func_name: str = "train_step", label: str = "label"):
        self.func_name, self.label = func_name, label

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod = map_functions(mod, [self.func_name], lambda func: _rewrite(func, self.label))
        return relax.transform.DeadCodeElimination([self.func_name])(mod)



def _condition_of(cond, values) -> tuple[list, relax.Var] | None:
    """The comparison bindings computing `cond` from exactly one tensor, and that tensor."""
    chain, leaves, todo = [], set(), [cond]
    while todo:
        v = todo.pop()
        value = values.get(v)
        if op_name(value) not in COMPARISONS:
            return None
        chain.append(v)
        for a in value.args:
            if isinstance(a, relax.Var) and op_name(values.get(a)) in COMPARISONS:
                todo.append(a)
            elif isinstance(a, relax.Var):
                leaves.add(a)
            elif not isinstance(a, tvm.ir.expr.Constant):
                return None
    if len(leaves) != 1:
        return None
    return chain, leaves.pop()


def _rewrite(func: relax.Function, label: str) -> relax.Function:
    if len(func.body.blocks) != 1:
        return func
    bindings = list(func.body.blocks[0].bindings)
    values = {b.var: b.value for b in bindings}
    start = backward_start(func, bindings, label)
    forward = {b.var for b in bindings[:start]}  # values the forward pass computes
    hoist: dict = {}   # forward tensor x -> list of (condition var, comparison chain)
    readers: dict = {}  # where binding var -> condition var
    for b in bindings[start:]:
        if op_name(b.value) != "relax.where" or not isinstance(b.value.args[0], relax.Var):
            continue
        found = _condition_of(b.value.args[0], values)
        if found is None or found[1] not in forward or found[0][0] in forward:
            continue
        chain, x = found
        hoist.setdefault(x, []).append((b.value.args[0], chain))
        readers[b.var] = b.value.args[0]

    bb = relax.BlockBuilder()
    packed = {}  # condition var -> callable emitting its unpacked value
    with bb.function(func.attrs["global_symbol"], list(func.params), attrs=function_attrs(func), private=False):
        with bb.dataflow():
            for b in bindings:
                if b.var in readers:
                    cond = packed[readers[b.var]]()
                    value = relax.Call(b.value.op, [cond, *b.value.args[1:]], b.value.attrs)
                    bb.emit_normalized(relax.VarBinding(b.var, bb.normalize(value)))
                    continue
                bb.emit_normalized(b)
                for cond_var, chain in hoist.get(b.var, []):
                    if cond_var not in packed:
                        packed[cond_var] = _emit_mask(bb, cond_var, chain, values)
        bb.emit_func_output(func.body.body)
    return bb.get()[func.attrs["global_symbol"]]


def _emit_mask(bb, cond_var, chain, values):
    """Emit the condition and its packing now; return how to unpack it later."""
    mapping = {}
    for v in reversed(chain):  # leaves first
        value = values[v]
        args = [mapping.get(a, a) if isinstance(a, relax.Var) else a for a in value.args]
        mapping[v] = bb.emit(relax.Call(value.op, args, value.attrs), f"{v.name}_fwd")
    mask = mapping[cond_var]
    shape = [int(d) for d in cond_var.ty.shape]
    n = int(np.prod(shape))
    if n % 8:
        return lambda: mask
    bytes_ = relax.op.astype(relax.op.reshape(mask, (n // 8, 8)), "uint8")
    bits = bb.emit(relax.op.sum(relax.op.multiply(bytes_, relax.const(BIT_WEIGHTS)), axis=[1]),
                   f"{cond_var.name}_bits")

    def unpack():
        shifted = relax.op.right_shift(relax.op.reshape(bits, (n // 8, 1)), relax.const(np.arange(8, dtype=np.uint8)))
        flags = relax.op.bitwise_and(shifted, relax.const(np.uint8(1)))
        cond = relax.op.not_equal(flags, relax.const(np.uint8(0)))
        return bb.emit(relax.op.reshape(cond, shape), f"{cond_var.name}_unpacked")

    return unpack
