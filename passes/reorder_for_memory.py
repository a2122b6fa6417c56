"""ReorderForMemory: apply each update as soon as it can run; weight gradients first.

Relax's `Gradient` computes every gradient, then `FuseSGDUpdate` applies the updates at
the end of the step: all weight and bias gradients are alive at once, at the backward
pass's busiest point. This pass re-sorts a legalized `train_step` (a topological order of
the same kernels, nothing else changes):

- the *update path* of a parameter (the kernels whose results only feed its in-place
  update: its gradient, QAS rescale, the update itself) runs as soon as its inputs are
  ready, so a gradient buffer dies right after it is produced, and a layer's weight
  gradient runs before the input gradient that comes next in the original order;
- an update never runs before a kernel that still reads the old parameter (the input
  gradient of its own layer reads the weight), nor before the loss is computed (the
  driver checks the loss for NaN/Inf before any weight changes);
- everything else keeps its original relative order.
"""

from __future__ import annotations

import heapq

import tvm
from tvm import relax

from tvm_tinytrain.relax_utils import map_functions, op_name


@tvm.transform.module_pass(opt_level=0, name="ReorderForMemory")
class ReorderForMemory:
    def __init__(self, func_name: str = "train_step"):
        self.func_name = func_name

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return map_functions(mod, [self.func_name], _reorder)


def _is_update(binding, params) -> bool:
    """An in-place kernel call on a parameter (an SGD or momentum update); an in-place
    write into a value the step computes (a tile, PatchFrozenPrefix) is not one."""
    if op_name(binding.value) != "relax.call_tir_inplace":
        return False
    args = binding.value.args[1].fields
    return any(args[k] in params for k in binding.value.attrs.inplace_indices)


def _reorder(func: relax.Function) -> relax.Function:
    if len(func.body.blocks) != 1:
        return func
    bindings = list(func.body.blocks[0].bindings)
    params = set(func.params)
    n = len(bindings)
    index = {b.var: i for i, b in enumerate(bindings)}
    reads = [set(relax.analysis.free_vars(b.value)) for b in bindings]
    deps = [{index[v] for v in r if v in index} for r in reads]
    data_users: list[set[int]] = [set() for _ in range(n)]
    for i, d in enumerate(deps):
        for j in d:
            data_users[j].add(i)
    escaping = {index[v] for v in relax.analysis.free_vars(func.body.body) if v in index}

    # The update path of a parameter: kernels whose results reach its update and no other
    # (its weight or bias gradient, the QAS rescale); input gradients reach many updates.
    reach = [0] * n  # bit set of the updates each binding's result flows into
    for i in reversed(range(n)):
        if _is_update(bindings[i], params):
            reach[i] = 1 << i
        else:
            for u in data_users[i]:
                reach[i] |= reach[u]
    on_path = [r != 0 and r & (r - 1) == 0 and i not in escaping for i, r in enumerate(reach)]

    loss = _loss_binding(func, index)
    for i, b in enumerate(bindings):
        if not _is_update(b, params):
            continue
        mutated = {b.value.args[1].fields[k] for k in b.value.attrs.inplace_indices}
        for j in range(n):  # every other reader of the old value runs first
            if j != i and mutated & reads[j] and i not in deps[j]:
                deps[i].add(j)
        if loss is not None and loss != i:
            deps[i].add(loss)
    users: list[set[int]] = [set() for _ in range(n)]
    for i, d in enumerate(deps):
        for j in d:
            users[j].add(i)

    def priority(i):  # update paths first, and among them the updates themselves: an
        # update allocates nothing and may free its inputs (a fused gradient's operands)
        return (0 if on_path[i] else 1), (0 if _is_update(bindings[i], params) else 1), i

    remaining = [len(d) for d in deps]
    ready = [priority(i) for i in range(n) if remaining[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)[-1]
        order.append(i)
        for u in users[i]:
            remaining[u] -= 1
            if remaining[u] == 0:
                heapq.heappush(ready, priority(u))
    if len(order) != n:
        raise AssertionError("internal: ReorderForMemory found a cycle")
    new_block = relax.DataflowBlock([bindings[i] for i in order])
    return relax.Function(func.params, relax.SeqExpr([new_block], func.body.body), func.ret_ty,
                          func.is_pure, func.attrs)


def _loss_binding(func, index) -> int | None:
    """The binding that defines the loss (first field of train_step's result)."""
    out = func.body.body
    if isinstance(out, relax.Var):
        for b in func.body.blocks[0].bindings:
            if b.var.same_as(out) and isinstance(b.value, relax.Tuple):
                out = b.value
    if isinstance(out, relax.Tuple) and isinstance(out.fields[0], relax.Var):
        return index.get(out.fields[0])
    return None
