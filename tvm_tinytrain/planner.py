"""Static memory planning: one arena, offsets from buffer lifetimes.

Every buffer the program needs at run time (activations, the activations kept for the
backward pass, gradients, kernel workspaces) has a lifetime [first step, last step] in the
schedule. Two buffers may share bytes only if their lifetimes do not overlap. We place the
largest buffers first, each at the lowest offset that is free over its whole lifetime
(greedy by size, as in TVM's and TFLite Micro's planners); the arena is the highest end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ALIGN = 16


@dataclass(frozen=True)
class Buffer:
    name: str
    size: int
    start: int   # index of the call that writes it first
    end: int     # index of the last call that reads it (inclusive)
    kind: str    # "forward" | "saved for backward" | "backward" | "workspace" | "output"

    def overlaps(self, other: "Buffer") -> bool:
        return self.start <= other.end and other.start <= self.end


@dataclass
class Plan:
    offsets: dict[str, int]
    arena_bytes: int
    buffers: list[Buffer]
    peak_step: int = 0                      # step with the most live bytes
    live_at_peak: dict[str, int] = field(default_factory=dict)  # kind -> bytes live then

    @property
    def live_peak_bytes(self) -> int:
        return sum(self.live_at_peak.values())


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan(buffers: list[Buffer]) -> Plan:
    placed: list[tuple[int, Buffer]] = []
    offsets: dict[str, int] = {}
    for buf in sorted(buffers, key=lambda b: (-b.size, b.start, b.name)):
        busy = sorted((off, off + _align(b.size)) for off, b in placed if b.overlaps(buf))
        offset = 0
        for lo, hi in busy:
            if offset + _align(buf.size) <= lo:
                break
            offset = max(offset, hi)
        offsets[buf.name] = offset
        placed.append((offset, buf))
    arena = max((off + _align(b.size) for off, b in placed), default=0)
    result = Plan(offsets, arena, list(buffers))
    if buffers:
        steps = range(min(b.start for b in buffers), max(b.end for b in buffers) + 1)
        live = {s: sum(_align(b.size) for b in buffers if b.start <= s <= b.end) for s in steps}
        result.peak_step = max(steps, key=lambda s: (live[s], -s))
        for b in buffers:
            if b.start <= result.peak_step <= b.end:
                result.live_at_peak[b.kind] = result.live_at_peak.get(b.kind, 0) + _align(b.size)
    return result
