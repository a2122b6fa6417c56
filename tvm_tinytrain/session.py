"""Compile, build and run a training program on a board, feeding it a stream of samples.

This is the one path shared by `tinytrain run`, `tinytrain demo` and the end-to-end tests:
predict the held-out set, train on the stream (batch 1, in order), predict again, and
report what happened with the memory and instruction numbers of the real program.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import TinyTrainError
from .targets.boards import Board, BuildResult, build, run
from .targets.harness import DUMP, PREDICT, TRAIN, HarnessOutput, Record, parse_output, write_input


@dataclass
class StreamResult:
    output: HarnessOutput
    build: BuildResult
    ran_on: str
    train_instructions: list[int]    # one per training step (empty on host)
    predict_instructions: list[int]


def run_stream(board: Board, project_dir: Path, records: list[Record], *, timeout_s: float = 1800,
               progress: bool = False, built: BuildResult | None = None) -> StreamResult:
    """Build the project (unless given) and run it on `records`."""
    model = json.loads((project_dir / "memory_report.json").read_text())["model"]
    _check_records(records, model)
    built = built or build(board, project_dir)
    write_input(project_dir / "input.bin", records, int(np.prod(model["input_shape"])))
    bar = None
    on_line = None
    if progress:
        from tqdm import tqdm
        n_steps = sum(r.op in (TRAIN, PREDICT) for r in records)
        bar = tqdm(total=n_steps, desc=f"{board.name}", unit="sample", leave=False, disable=None)

        def on_line(line: str) -> None:
            if line.startswith(("loss ", "pred ")):
                bar.update(1)
    try:
        result = run(board, built, cwd=project_dir, timeout_s=timeout_s, on_line=on_line)
    finally:
        if bar is not None:
            bar.close()
    output = parse_output(result.lines, records)
    regions = list(result.region_instructions)
    ops = [r.op for r in records if r.op in (TRAIN, PREDICT)]
    train_ins = [n for op, n in zip(ops, regions) if op == TRAIN] if regions else []
    pred_ins = [n for op, n in zip(ops, regions) if op == PREDICT] if regions else []
    return StreamResult(output, built, result.ran_on, train_ins, pred_ins)


def _check_records(records: list[Record], model: dict) -> None:
    """Refuse data that does not fit the compiled model, before anything runs."""
    shape, classes = tuple(model["input_shape"]), model["num_classes"]
    for i, r in enumerate(records):
        if r.x is not None and np.asarray(r.x).size != int(np.prod(shape)):
            raise TinyTrainError(f"sample {i} has shape {np.asarray(r.x).shape}, the model takes {shape}")
        if r.op == TRAIN and not 0 <= int(r.label) < classes:
            raise TinyTrainError(f"sample {i} has label {r.label}, the model has classes 0..{classes - 1}")


def train_and_evaluate(board: Board, project_dir: Path, x_train: np.ndarray, y_train: np.ndarray,
                       x_test: np.ndarray, y_test: np.ndarray, *, epochs: int = 1, dump_params: bool = False,
                       progress: bool = False, timeout_s: float = 1800) -> dict:
    """Held-out accuracy before and after training on the stream, with the program's numbers."""
    test = [Record(PREDICT, x) for x in x_test]
    stream = [Record(TRAIN, x, int(y)) for _ in range(epochs) for x, y in zip(x_train, y_train)]
    records = test + stream + test + ([Record(DUMP)] if dump_params else [])
    res = run_stream(board, project_dir, records, timeout_s=timeout_s, progress=progress)
    out = res.output
    n = len(test)
    before, after = np.array(out.predictions[:n]), np.array(out.predictions[n:])
    losses = np.array(out.losses)
    report = json.loads((project_dir / "memory_report.json").read_text())
    curve = [float(chunk.mean()) for chunk in np.array_split(losses, min(20, len(losses)))]
    return {
        "target": board.name,
        "ran_on": res.ran_on,
        "steps": int(len(losses)),
        "loss_first": float(losses[0]),
        "loss_last": float(losses[-1]),
        "loss_first_window_mean": curve[0],
        "loss_last_window_mean": curve[-1],
        "loss_curve": curve,
        "loss_curve_points": "mean loss over 20 equal consecutive chunks of the steps",
        "accuracy_before": float((before == y_test).mean()),
        "accuracy_after": float((after == y_test).mean()),
        "peak_sram_bytes": res.build.static_ram_bytes + out.stack_bytes,
        "static_ram_bytes": res.build.static_ram_bytes,
        "stack_high_water_bytes": out.stack_bytes if board.is_emulated else None,
        "arena_bytes": report["planned"]["arena_bytes"],
        "workspace_used_bytes": out.workspace_bytes,
        "flash_bytes": res.build.flash_bytes,
        "instructions_per_step": float(np.mean(res.train_instructions)) if res.train_instructions else None,
        "instructions_per_prediction": float(np.mean(res.predict_instructions)) if res.predict_instructions else None,
        "budget": report["budget"],
        "params": out.params[0] if dump_params else None,
        "losses": losses.tolist(),
    }
