"""Loads that do not change along a kernel's innermost loop, read once per pass of it.

A fused kernel's epilogue reads per-channel values (a bias, a scale) for every output of a
row, and TVM prints each read as a load inside the innermost loop. In C the same loop's int8
stores may alias anything (character types alias every object), so gcc loads and converts
those values again for every output. Cached in a one-element buffer just outside the
innermost loop (TIR `cache_read` + `compute_at`), they become a local array whose address
never escapes, which gcc keeps in a register. The same values are read, once per row
instead of once per output: no computed number changes.

It runs when lowering to C only (`lower.py`), after tensorize.
"""

from __future__ import annotations

import tvm
from tvm.s_tir import Schedule, ScheduleError
from tvm.tirx.analysis import undefined_vars

from tvm_tinytrain.passes.fuse_kernels import scheduled
from tvm_tinytrain.targets.tensorize import tir_nodes


def _uses(expr, var) -> bool:
    return any(v.same_as(var) for v in undefined_vars(expr, []))


def _invariant_reads(realize, inner) -> list[int]:
    """Indices of the single-element reads of a spatial block that its innermost loop
    variable `inner` does not move (the block's own output excluded)."""
    block = realize.block
    moving = [iv.var for iv, value in zip(block.iter_vars, realize.iter_values) if _uses(value, inner)]
    found = []
    for i, region in enumerate(block.reads):
        if any(region.source.same_as(w.source) for w in block.writes):
            continue
        if not all(isinstance(r.extent, tvm.tirx.IntImm) and int(r.extent) == 1 for r in region.region):
            continue
        if not any(_uses(r.min, v) for r in region.region for v in moving):
            found.append(i)
    return found


def hoist_invariant_loads(func: tvm.tirx.PrimFunc) -> tuple[tvm.tirx.PrimFunc, int]:
    """`func` with the invariant single-element reads of its spatial blocks cached outside
    their innermost loop, and how many were."""
    sch, hoisted = Schedule(func), 0
    for realize in tir_nodes(func.body):
        if not isinstance(realize, tvm.s_tir.SBlockRealize) or realize.block.name_hint == "root":
            continue
        name = realize.block.name_hint
        if any(int(iv.iter_type) != tvm.tirx.IterVar.DataPar for iv in realize.block.iter_vars):
            continue
        loops = sch.get_loops(sch.get_sblock(name))
        if len(loops) < 2:
            continue
        for index in _invariant_reads(realize, sch.get(loops[-1]).loop_var):
            trial = sch.copy()
            block = trial.get_sblock(name)
            try:  # "global": TVM prints a one-element array on the stack ("local" asks for workspace)
                cache = trial.cache_read(block, index, "global", consumer_blocks=[block])
                trial.compute_at(cache, trial.get_loops(block)[-2])
            except ScheduleError:
                continue  # another block needs the value where this one does not
            sch, hoisted = trial, hoisted + 1
    return (scheduled(sch, func) if hoisted else func), hoisted
