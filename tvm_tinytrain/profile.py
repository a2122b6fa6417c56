"""Where a training step's instructions go: every kernel call, measured on the board.

`tinytrain profile PROJECT` builds the project, runs one training step and one prediction
under QEMU with the instruction counter split at every kernel call (the driver calls
`tt_workspace_set` right before each kernel), and puts each call's instructions beside what
the compiler knows of it (`kernel_calls.json`): its phase (forward, backward, update), its
kind (pointwise, depthwise, conv, weight-grad, matmul, ...) and its MACs, counted from the
kernel's TIR (executions of its reduction bodies). Instructions per MAC, by kind, are the
figure to compare with the physical limit (an int8 `SMLAD` does 2 MACs).

A call's instructions include the driver's few instructions around it (setting its
workspace, the call, the status check); the step's prologue and epilogue are reported
apart as `driver`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from .errors import TinyTrainError
from .targets.boards import Board
from .targets.harness import PREDICT, TRAIN, Record

SPLIT_AT = "tt_workspace_set"  # the driver calls it right before every kernel call


def profile_project(board: Board, project_dir: Path, sample: np.ndarray | None = None, label: int = 0,
                    *, timeout_s: float = 600) -> dict:
    """Instructions of every kernel call of one training step and one prediction."""
    from .session import run_stream

    if not board.is_emulated:
        raise TinyTrainError(f"profiling counts instructions under QEMU; {project_dir} is built for "
                             f"{board.name}: compile it for an emulated board (see `tinytrain targets`)")
    table_path = project_dir / "kernel_calls.json"
    if not table_path.is_file():
        raise TinyTrainError(f"{project_dir} has no kernel_calls.json: recompile it with this version "
                             "of tvm-tinytrain")
    table = json.loads(table_path.read_text())
    model = json.loads((project_dir / "memory_report.json").read_text())["model"]
    if sample is None:  # a fixed, plausible sample: the count barely depends on the values
        sample = np.random.default_rng(0).standard_normal(model["input_shape"]).astype(np.float32)
    res = run_stream(board, project_dir, [Record(TRAIN, sample, label), Record(PREDICT, sample)],
                     timeout_s=timeout_s, split_at=SPLIT_AT)
    out = {"board": board.name, "ran_on": res.ran_on, "model": model["source"],
           "counted": "guest instructions under QEMU -icount shift=0 (TCG plugin), per kernel call"}
    out["train_step"] = _function_profile(table["train_step"], res.train_instructions[0], res.train_splits[0])
    out["predict"] = _function_profile(table["predict"], res.predict_instructions[0], res.predict_splits[0])
    return out


def _function_profile(calls: list[dict], total: int, splits: list[int]) -> dict:
    if len(splits) != len(calls):
        raise TinyTrainError(f"the program ran {len(splits)} kernel calls where kernel_calls.json lists "
                             f"{len(calls)}: the project was edited after it was compiled")
    ends = splits[1:] + [total]
    rows = []
    for call, start, end in zip(calls, splits, ends):
        ins = end - start
        rows.append(call | {"instructions": ins, "instructions_per_mac": _per_mac(ins, call["macs"])})
    groups: dict[tuple[str, str], dict] = defaultdict(lambda: {"calls": 0, "instructions": 0, "macs": 0})
    for r in rows:
        for key in ((r["phase"], r["kind"]), (r["phase"], "all")):
            g = groups[key]
            g["calls"] += 1
            g["instructions"] += r["instructions"]
            g["macs"] += r["macs"]
    summary = [{"phase": p, "kind": k, **g, "instructions_per_mac": _per_mac(g["instructions"], g["macs"])}
               for (p, k), g in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "all",
                                                                       -kv[1]["instructions"]))]
    return {"instructions": total, "macs": sum(r["macs"] for r in rows),
            "driver_instructions": total - sum(r["instructions"] for r in rows),
            "by_phase_and_kind": summary, "calls": rows}


def _per_mac(instructions: int, macs: int) -> float | None:
    return round(instructions / macs, 2) if macs else None


def format_table(profile: dict, top: int = 15) -> str:
    """A readable summary: totals by phase and kind, then the dearest calls."""
    lines = [f"profile of one training step on {profile['ran_on']} ({profile['model']})"]
    for name in ("train_step", "predict"):
        f = profile[name]
        lines += ["", f"{name}: {f['instructions']:,} instructions, {f['macs']:,} MACs "
                      f"(driver outside kernels: {f['driver_instructions']:,})",
                  f"  {'phase':<9} {'kind':<12} {'calls':>5} {'instructions':>14} {'share':>6} "
                  f"{'MACs':>12} {'ins/MAC':>8}"]
        for g in f["by_phase_and_kind"]:
            share = 100.0 * g["instructions"] / max(1, f["instructions"])
            per = "-" if g["instructions_per_mac"] is None else f"{g['instructions_per_mac']:.1f}"
            lines.append(f"  {g['phase']:<9} {g['kind']:<12} {g['calls']:>5} {g['instructions']:>14,} "
                         f"{share:>5.1f}% {g['macs']:>12,} {per:>8}")
        if name == "train_step":
            lines += ["", f"  the {top} dearest calls:",
                      f"  {'#':>4} {'phase':<9} {'kind':<12} {'instructions':>14} {'MACs':>12} {'ins/MAC':>8}  kernel"]
            for r in sorted(f["calls"], key=lambda r: -r["instructions"])[:top]:
                per = "-" if r["instructions_per_mac"] is None else f"{r['instructions_per_mac']:.1f}"
                lines.append(f"  {r['index']:>4} {r['phase']:<9} {r['kind']:<12} {r['instructions']:>14,} "
                             f"{r['macs']:>12,} {per:>8}  {r['kernel']}")
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot (headless), or a clear error before any work is done."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TinyTrainError("--plot needs matplotlib: pip install -e \".[bench]\"") from None
    return plt


def plot(profile: dict, path: Path) -> None:
    """Instructions of every train_step call in order, coloured by phase."""
    from matplotlib.patches import Patch

    plt = pyplot()
    calls = profile["train_step"]["calls"]
    colors = {"forward": "tab:blue", "backward": "tab:orange", "update": "tab:green"}
    fig, ax = plt.subplots(figsize=(max(6.0, len(calls) * 0.12), 4))
    ax.bar([c["index"] for c in calls], [c["instructions"] / 1e6 for c in calls],
           color=[colors[c["phase"]] for c in calls])
    ax.set_xlabel("kernel call (driver order)")
    ax.set_ylabel("instructions (millions)")
    ax.set_title(f"one training step on {profile['board']}: "
                 f"{profile['train_step']['instructions'] / 1e6:.1f} M instructions")
    ax.legend(handles=[Patch(color=c, label=p) for p, c in colors.items()])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
