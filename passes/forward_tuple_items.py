"""ForwardTupleItems: `g = t[i]` where `t = (a, b, ...)` becomes `g = a`.

Relax's `Gradient` returns its results in one tuple built at the very end of the backward
pass, and `train_step` reads each gradient (and the loss) back out of it. To a pass that
follows uses, every gradient then looks used twice and every update waits for the whole
backward pass. Reading the field directly (and dropping the tuple when nothing else uses
it) shows the real data flow to `FuseKernels` and `ReorderForMemory`; nothing is computed
differently.
"""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_tinytrain.relax_utils import map_functions


@tvm.transform.module_pass(opt_level=0, name="ForwardTupleItems")
class ForwardTupleItems:
    def __init__(self, func_names=("main", "train_step")):
        self.func_names = tuple(func_names)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod = map_functions(mod, self.func_names, _rewrite)
        mod = relax.transform.CanonicalizeBindings()(mod)
        return relax.transform.DeadCodeElimination(list(self.func_names))(mod)


def _rewrite(func: relax.Function) -> relax.Function:
    if len(func.body.blocks) != 1:
        return func
    block = relax.DataflowBlock(_forward(list(func.body.blocks[0].bindings)))
    return relax.Function(func.params, relax.SeqExpr([block], func.body.body), func.ret_ty, func.is_pure,
                          func.attrs)


def _forward(bindings):
    tuples = {b.var: b.value for b in bindings if isinstance(b.value, relax.Tuple)}
    out = []
    for b in bindings:
        value = b.value
        while isinstance(value, relax.TupleGetItem) and value.tuple_value in tuples:
            value = tuples[value.tuple_value].fields[value.index]
        out.append(b if value.same_as(b.value) else relax.VarBinding(b.var, value))
    return out
