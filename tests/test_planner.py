import random
from unittest import mock

from tvm_tinytrain import planner
from tvm_tinytrain.planner import Buffer, plan


def _overlap(a_off, a_size, b_off, b_size):
    return a_off < b_off + b_size and b_off < a_off + a_size


def test_buffers_alive_together_never_share_bytes():
    bufs = [Buffer("a", 100, 0, 3, "forward"), Buffer("b", 64, 1, 2, "forward"),
            Buffer("c", 200, 2, 5, "backward"), Buffer("ws", 48, 2, 2, "workspace")]
    p = plan(bufs)
    for x in bufs:
        for y in bufs:
            if x is not y and x.overlaps(y):
                assert not _overlap(p.offsets[x.name], x.size, p.offsets[y.name], y.size), (x, y)
        assert p.offsets[x.name] % 16 == 0
        assert p.offsets[x.name] + x.size <= p.arena_bytes


def test_disjoint_lifetimes_reuse_memory():
    p = plan([Buffer("a", 1000, 0, 1, "forward"), Buffer("b", 1000, 2, 3, "forward"),
              Buffer("c", 500, 4, 4, "forward")])
    assert p.arena_bytes == 1008  # one slot of the largest, 16-byte aligned
    assert p.offsets["a"] == p.offsets["b"] == p.offsets["c"] == 0


def test_peak_step_and_breakdown():
    p = plan([Buffer("x", 160, 0, 4, "saved for backward"), Buffer("g", 320, 3, 4, "backward"),
              Buffer("w", 32, 3, 3, "workspace"), Buffer("t", 16, 0, 0, "forward")])
    assert p.peak_step == 3
    assert p.live_at_peak == {"saved for backward": 160, "backward": 320, "workspace": 32}
    assert p.live_peak_bytes <= p.arena_bytes


def test_random_plans_are_valid_and_keep_pinned_offsets():
    """200 random schedules: no two buffers alive together share bytes, pinned buffers sit
    where they were pinned, and no arena is below the live peak (the lower bound)."""
    rng = random.Random(0)
    for _ in range(200):
        bufs = []
        for i in range(rng.randint(1, 12)):
            start = rng.randint(0, 10)
            bufs.append(Buffer(f"b{i}", rng.randint(1, 4096), start, start + rng.randint(0, 5), "forward"))
        pinned = {bufs[0].name: 16 * rng.randint(0, 8)}
        p = plan(bufs, pinned=pinned)
        assert p.offsets[bufs[0].name] == pinned[bufs[0].name]
        assert p.arena_bytes >= p.live_peak_bytes
        for x in bufs:
            for y in bufs:
                if x is not y and x.overlaps(y):
                    assert not _overlap(p.offsets[x.name], x.size, p.offsets[y.name], y.size), (x, y)


def test_the_solver_closes_the_gap_greedy_orders_leave():
    """Six buffers where every greedy order needs 240 bytes; 208 are live at once, and
    CP-SAT places them in exactly that (proved optimal)."""
    shape = [(32, 1, 4), (128, 3, 3), (112, 5, 6), (64, 4, 7), (16, 1, 3), (32, 4, 6)]
    bufs = [Buffer(f"b{i}", size, start, end, "forward") for i, (size, start, end) in enumerate(shape)]
    with mock.patch.object(planner, "_solve", lambda *args: None):
        assert plan(bufs).arena_bytes == 240
    p = plan(bufs)
    assert p.arena_bytes == p.live_peak_bytes == 208
    assert p.strategy.startswith("CP-SAT from ") and p.strategy.endswith("optimal")
    _assert_valid(p, bufs)


def test_the_solver_is_deterministic():
    """120 random buffers where greedy misses the live peak: the same offsets twice (one
    worker, a fixed seed, its effort a work count, not seconds), never more than the greedy
    arena, and valid."""
    rng = random.Random(5)
    bufs = []
    for i in range(120):
        start = rng.randint(0, 60)
        bufs.append(Buffer(f"b{i}", rng.randint(1, 64) * 100, start, start + rng.randint(0, 12), "forward"))
    with mock.patch.object(planner, "_solve", lambda *args: None):
        greedy = plan(bufs).arena_bytes
    assert greedy > plan(bufs).live_peak_bytes
    first, second = plan(bufs), plan(bufs)
    assert first.offsets == second.offsets and first.arena_bytes <= greedy
    _assert_valid(first, bufs)
    print(f"greedy {greedy}, solver {first.arena_bytes} ({first.strategy}), live peak {first.live_peak_bytes}")


def _assert_valid(p, bufs):
    for x in bufs:
        assert p.offsets[x.name] % 16 == 0 and p.offsets[x.name] + x.size <= p.arena_bytes
        for y in bufs:
            if x is not y and x.overlaps(y):
                assert not _overlap(p.offsets[x.name], x.size, p.offsets[y.name], y.size), (x, y)
