"""Static memory planning: one arena, offsets from buffer lifetimes.

Every buffer the program needs at run time (the input sample, activations, the activations
kept for the backward pass, gradients, kernel workspaces) has a lifetime [first step, last
step] in the schedule. Two buffers may share bytes only if their lifetimes do not overlap.
No arena can be smaller than the most bytes live at one step (the live peak); placing
buffers so that the arena reaches it is NP-hard in general, so we run four greedy
placements, each putting a buffer at the lowest offset free over its whole lifetime, and
keep the smallest arena: busiest step first (the buffers of the most crowded steps first,
long-lived ones first among them: "greedy by breadth", Pisarchyk and Lee 2020), largest
first (as TVM's and TFLite Micro's planners do), longest-lived first, earliest first. Pinned buffers (the input, which the caller writes before a
step) keep their given offset.

When the best greedy arena is above the live peak, OR-Tools' CP-SAT solver searches for a
smaller one from it (offsets as variables, one rectangle per buffer in time x bytes, no two
overlapping: `AddNoOverlap2D`), and stops at the live peak or when its effort is spent.
The effort is CP-SAT's deterministic time on one worker, a count of work, not seconds: the
generated C must not depend on the machine's speed or load.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ALIGN = 16
SOLVER_EFFORT = 2.0  # CP-SAT deterministic time: about 7 s for MCUNet's full update (230 buffers)


@dataclass(frozen=True)
class Buffer:
    name: str
    size: int
    start: int   # index of the call that writes it first
    end: int     # index of the last call that reads it (inclusive)
    kind: str    # "input" | "forward" | "saved for backward" | "backward" | "workspace" | "output"

    def overlaps(self, other: "Buffer") -> bool:
        return self.start <= other.end and other.start <= self.end


@dataclass
class Plan:
    offsets: dict[str, int]
    arena_bytes: int
    buffers: list[Buffer]
    strategy: str = ""                      # the placement order that gave the smallest arena
    peak_step: int = 0                      # step with the most live bytes
    live_at_peak: dict[str, int] = field(default_factory=dict)  # kind -> bytes live then

    @property
    def live_peak_bytes(self) -> int:
        return sum(self.live_at_peak.values())


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


# Placement orders; `busiest` is the most bytes live at any step of the buffer's lifetime.
ORDERS = {
    "busiest step first": lambda b, busiest: (-busiest, -(b.end - b.start), -b.size, b.name),
    "largest first": lambda b, busiest: (-b.size, b.start, b.name),
    "longest-lived first": lambda b, busiest: (-(b.end - b.start), -b.size, b.name),
    "earliest first": lambda b, busiest: (b.start, -b.size, b.name),
}


def plan(buffers: list[Buffer], pinned: dict[str, int] | None = None) -> Plan:
    pinned = pinned or {}
    steps = range(min((b.start for b in buffers), default=0), max((b.end for b in buffers), default=-1) + 1)
    live = {s: sum(_align(b.size) for b in buffers if b.start <= s <= b.end) for s in steps}
    busiest = {b.name: max(live[s] for s in range(b.start, b.end + 1)) for b in buffers}
    best = None
    for name, key in ORDERS.items():
        offsets = _place(sorted((b for b in buffers if b.name not in pinned), key=lambda b: key(b, busiest[b.name])),
                         [b for b in buffers if b.name in pinned], pinned)
        arena = max((offsets[b.name] + _align(b.size) for b in buffers), default=0)
        if best is None or arena < best[1]:
            best = (offsets, arena, name)
    offsets, arena, strategy = best
    if arena > max(live.values(), default=0):
        solved = _solve(buffers, pinned, arena, max(live.values()))
        if solved is not None:
            offsets, arena, how = solved
            strategy = f"CP-SAT from {strategy}, {how}"
    result = Plan(offsets, arena, list(buffers), strategy=strategy)
    if buffers:
        result.peak_step = max(steps, key=lambda s: (live[s], -s))
        for b in buffers:
            if b.start <= result.peak_step <= b.end:
                result.live_at_peak[b.kind] = result.live_at_peak.get(b.kind, 0) + _align(b.size)
    return result


def _place(order: list[Buffer], fixed: list[Buffer], pinned: dict[str, int]) -> dict[str, int]:
    placed = [(pinned[b.name], b) for b in fixed]
    offsets = {b.name: pinned[b.name] for b in fixed}
    for buf in order:
        busy = sorted((off, off + _align(b.size)) for off, b in placed if b.overlaps(buf))
        offset = 0
        for lo, hi in busy:
            if offset + _align(buf.size) <= lo:
                break
            offset = max(offset, hi)
        offsets[buf.name] = offset
        placed.append((offset, buf))
    return offsets


def _solve(buffers: list[Buffer], pinned: dict[str, int], arena: int,
           lower_bound: int) -> tuple[dict[str, int], int, str] | None:
    """A placement in a smaller arena than `arena` (the greedy one), or None. (Given the
    greedy placement as a hint, CP-SAT stayed near it and found less.)"""
    from ortools.sat.python import cp_model

    model = cp_model.CpModel()
    top = model.NewIntVar(lower_bound // ALIGN, arena // ALIGN, "arena")
    offsets, times, spaces = {}, [], []
    for b in buffers:
        size = _align(b.size) // ALIGN
        if b.name in pinned:
            offset = model.NewConstant(pinned[b.name] // ALIGN)
        else:
            offset = model.NewIntVar(0, arena // ALIGN - size, b.name)
        offsets[b.name] = offset
        times.append(model.NewFixedSizeIntervalVar(b.start, b.end - b.start + 1, ""))
        spaces.append(model.NewFixedSizeIntervalVar(offset, size, ""))
        model.Add(offset + size <= top)
    model.AddNoOverlap2D(times, spaces)
    model.Minimize(top)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = 0
    solver.parameters.max_deterministic_time = SOLVER_EFFORT
    status = solver.Solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE) or solver.Value(top) * ALIGN >= arena:
        return None
    how = "optimal" if status == cp_model.OPTIMAL else "effort spent"
    return {name: solver.Value(v) * ALIGN for name, v in offsets.items()}, solver.Value(top) * ALIGN, how
