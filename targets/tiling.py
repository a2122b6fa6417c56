"""Choosing where the patched prefix ends and its grid of tiles (PatchFrozenPrefix).

The choice is made on the unpatched program's schedule and the planner's lifetimes: the
calls after the cut are the same with or without patches, so their live bytes stay; a call
of the prefix runs once per tile, each time on a region of every prefix tensor (its
receptive field, `tile_regions`), so a prefix buffer live at that call counts with the
region's share of its bytes, while the input, the cut's whole buffer and everything else
count whole. The grid with the smallest such peak wins; among equal peaks, the one with the
fewest tiles, then the one that recomputes the fewest multiply-accumulates in its halos. Grids whose halos would add
more than `MAX_HALO_MACS` of the step's MACs are not considered. The estimate is only the
choice: the compiled program is planned for real, and `bench/memory.py` reports both.
"""

from __future__ import annotations

import tvm

from tvm_tinytrain.passes.patch_frozen_prefix import Cut, prefix_cuts, tile_regions
from tvm_tinytrain.planner import _align
from .c_emitter import schedule_buffers
from .lower import SCHEDULE_OF

GRIDS = [(r, c) for r in range(1, 5) for c in range(1, 5) if (r, c) != (1, 1)]
MAX_HALO_MACS = 0.05  # of the whole function's MACs: a tile's smaller kernels also cost more per MAC
MAX_CUTS = 12          # the first cuts at or after the peak: later ones only add halo


def choose_tiling(mod: tvm.IRModule, schedules: dict) -> dict[str, tuple[str, int, int]]:
    """Function name -> (cut, rows, cols) for every function worth patching. `mod` is the
    module PatchFrozenPrefix would rewrite, `schedules` its unpatched lowering. The
    training step goes first: predict shares its arena, so predict needs no smaller peak."""
    chosen, floor = {}, 0
    for func_name, schedule_name in SCHEDULE_OF.items():
        if func_name in [gv.name_hint for gv in mod.get_global_vars()] and schedule_name in schedules:
            best, peak = _best(mod[func_name], schedules[schedule_name], floor)
            floor = max(floor, peak)
            if best is not None:
                chosen[func_name] = best
    return chosen


def _best(func, schedule, floor: int):
    """((cut, rows, cols) or None, the estimated peak bytes with it)."""
    buffers = schedule_buffers(schedule)
    calls = schedule.calls
    live = [[b for b in buffers if b.start <= i <= b.end] for i in range(len(calls))]
    totals = [sum(_align(b.size) for b in bs) for bs in live]
    if not totals:
        return None, 0
    peak_call = max(range(len(totals)), key=lambda i: totals[i])
    made_by = {t.name: i for i, c in enumerate(calls) for t in c.outputs}
    cuts = [c for c in prefix_cuts(func) if made_by.get(c.name, -1) >= peak_call][:MAX_CUTS]
    all_macs = sum(c.macs for c in calls) or 1
    best, best_key = None, (max(totals[peak_call], floor), 1, 0)
    for cut in cuts:
        last = made_by[cut.name]
        rest = max(totals[last + 1:], default=0)
        grids = [(rows, cols) for rows, cols in GRIDS if rows <= cut.shape[2] and cols <= cut.shape[3]]
        for (rows, cols), regions in tile_regions(func, cut, grids).items():
            peak, extra = _estimate(cut, regions, calls[:last + 1], live[:last + 1], func.params[0].name)
            key = (max(peak, rest, floor), rows * cols, extra)
            if extra <= MAX_HALO_MACS * all_macs and key < best_key:
                best, best_key = (cut.name, rows, cols), key
    return best, best_key[0]


def _estimate(cut: Cut, regions, calls, live, sample: str) -> tuple[int, int]:
    """(peak bytes, recomputed MACs) of the prefix's calls run tile by tile. The sample stays
    whole; while it is read, so is its tile's copy (`read_tile`)."""
    full = {name: _full_area(name, regions) for name in regions[0]}
    peak, macs = 0, 0
    for tile in regions:
        share = {name: _area(r) / full[name] for name, r in tile.items()}
        for i, call in enumerate(calls):
            here = _align(cut.nbytes) if cut.name not in {b.name for b in live[i]} else 0
            here += _align(int(cut.nbytes * share[cut.name]))  # the tile before it is written
            for b in live[i]:
                here += _align(int(b.size * share[b.name])) if b.name in share and b.name != cut.name else _align(b.size)
                if b.kind == "input":
                    here += _align(int(b.size * share[sample]))
            peak = max(peak, here)
            out = call.outputs[0].name if call.outputs else None
            if out in share:
                macs += int(call.macs * share[out])
    return peak, max(0, macs - sum(c.macs for c in calls))


def _area(r) -> int:
    return r.rows * r.cols


def _full_area(name, regions) -> int:
    """The value's whole rows x columns: the union of every tile's region."""
    r = regions[0][name]
    for tile in regions[1:]:
        r = r.union(tile[name])
    return _area(r)
