"""Loads that do not change along a kernel's innermost loop, read once per pass of it.

A fused kernel's epilogue reads per-channel values (a bias, a scale) for every output of a
row, and TVM prints each read as a load inside the innermost loop. In C the same loop's int8
stores may alias anything (character types alias every object), so gcc loads and converts
those values again for every output. Cached in a one-element buffer just outside the
innermost loop (TIR `cache_read` + `compute_at`), they become a local array whose address
never escapes, which gcc keeps in a register. The same values are read, once per row
instead of once per output: no computed number changes.

It runs when lowering to C only (`lower.py`), before tensorize: the split of a conv's row
loop there (`_split_padded_rows`) puts an `if` in the loop nest, past which TVM's
`compute_at` no longer moves a block.
"""

from __future__ import annotations

import tvm
from tvm.s_tir import Schedule, ScheduleError

from tvm_tinytrain.passes.fuse_kernels import scheduled
from tvm_tinytrain.targets.tensorize import tir_nodes, uses


def _invariant_reads(realize, inner, constants) -> list[int]:
    """Indices of the single-element reads of a spatial block, from the `constants` (inputs
    the kernel never writes), that its innermost loop variable `inner` does not move. Only
    values of at most 32 bits: TVM's storage rewrite never shares such small arrays with
    another buffer, so the C never reinterprets one buffer's bytes as another type."""
    block = realize.block
    moving = [iv.var for iv, value in zip(block.iter_vars, realize.iter_values) if uses(value, inner)]
    found = []
    for i, region in enumerate(block.reads):
        if not any(region.source.same_as(c) for c in constants):
            continue
        if tvm.runtime.DataType(str(region.source.ty.dtype)).bits > 32:
            continue
        if not all(isinstance(r.extent, tvm.tirx.IntImm) and int(r.extent) == 1 for r in region.region):
            continue
        if not any(uses(r.min, v) for r in region.region for v in moving):
            found.append(i)
    return found


def hoist_invariant_loads(func: tvm.tirx.PrimFunc) -> tuple[tvm.tirx.PrimFunc, int]:
    """`func` with the invariant single-element reads of its spatial blocks cached outside
    their innermost loop, and how many were."""
    sch, hoisted = Schedule(func), 0
    nodes = tir_nodes(func.body)
    written = [w.source for node in nodes if isinstance(node, tvm.s_tir.SBlock) for w in node.writes]
    constants = [p for p in func.params if not any(p.same_as(w) for w in written)]
    for realize in nodes:
        if not isinstance(realize, tvm.s_tir.SBlockRealize) or realize.block.name_hint == "root":
            continue
        name = realize.block.name_hint
        if any(int(iv.iter_type) != tvm.tirx.IterVar.DataPar for iv in realize.block.iter_vars):
            continue
        loops = sch.get_loops(sch.get_sblock(name))
        if len(loops) < 2:
            continue
        for index in _invariant_reads(realize, sch.get(loops[-1]).loop_var, constants):
            trial = sch.copy()
            block = trial.get_sblock(name)
            try:  # "global": TVM prints a one-element array on the stack ("local" asks for workspace)
                cache = trial.cache_read(block, index, "global", consumer_blocks=[block])
                trial.compute_at(cache, trial.get_loops(block)[-2])
            except ScheduleError:
                continue  # another block needs the value where this one does not
            sch, hoisted = trial, hoisted + 1
    return (scheduled(sch, func) if hoisted else func), hoisted
