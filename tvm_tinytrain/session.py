"""Compile, build and run a training program on a board, feeding it a stream of samples.

This is the one path shared by `tinytrain run`, `tinytrain demo` and the end-to-end tests:
predict the held-out set, train on the stream (batch 1, in order), predict again, and
report what happened with the memory and instruction numbers of the real program.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import TinyTrainError, brief
from .targets.boards import Board, BuildResult, build, run
from .targets.harness import DUMP, PREDICT, SAVE, TRAIN, HarnessOutput, Record, parse_output, write_input


@dataclass
class StreamResult:
    output: HarnessOutput
    build: BuildResult
    ran_on: str
    train_instructions: list[int]    # one per training step (empty on host)
    predict_instructions: list[int]
    save_instructions: list[int] = field(default_factory=list)  # --persist: one per SAVE record
    restore_instructions: int | None = None                     # --persist: the restore at start
    # with split_at: per step (prediction), the instruction offsets at which each kernel began
    train_splits: list[list[int]] = field(default_factory=list)
    predict_splits: list[list[int]] = field(default_factory=list)


def run_stream(board: Board, project_dir: Path, records: list[Record], *, timeout_s: float = 1800,
               progress: bool = False, built: BuildResult | None = None,
               split_at: str | None = None) -> StreamResult:
    """Build the project (unless given) and run it on `records` (`split_at`: see boards.run)."""
    report = json.loads((project_dir / "memory_report.json").read_text())
    model, persist = report["model"], report.get("persist") is not None
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
        result = run(board, built, cwd=project_dir, timeout_s=timeout_s, on_line=on_line, split_at=split_at)
    finally:
        if bar is not None:
            bar.close()
    output = parse_output(result.lines, records)
    regions = list(result.region_instructions)
    # one region per step, prediction and save, after the restore of a --persist program
    ops = ["restore"] * persist + [r.op for r in records if r.op in (TRAIN, PREDICT, SAVE)]

    def of(kind, values):
        return [v for op, v in zip(ops, values) if op == kind]

    splits = result.region_splits
    return StreamResult(output, built, result.ran_on, of(TRAIN, regions), of(PREDICT, regions),
                        of(SAVE, regions), regions[0] if persist and regions else None,
                        of(TRAIN, splits), of(PREDICT, splits))


def _check_records(records: list[Record], model: dict) -> None:
    """Refuse data that does not fit the compiled model, before anything is built or runs:
    sample sizes, finite real samples, integer labels within the classes."""
    shape, classes = tuple(model["input_shape"]), model["num_classes"]
    labelled = model.get("loss", "cross-entropy") == "cross-entropy"
    for i, r in enumerate(records):
        if r.x is not None:
            x = np.asarray(r.x)
            if x.size != int(np.prod(shape)):
                raise TinyTrainError(f"sample {i} has shape {x.shape}, the model takes {shape}")
            with np.errstate(over="ignore", invalid="ignore"):
                finite = x.dtype.kind in "biuf" and np.isfinite(x.astype(np.float32)).all()
            if not finite:
                raise TinyTrainError(f"sample {i} is not finite real numbers (dtype {x.dtype})")
        label = r.label
        if labelled and r.op == TRAIN and (isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer))
                              or not 0 <= label < classes):
            raise TinyTrainError(f"sample {i} has label {brief(label)}, the model has classes "
                                 f"0..{classes - 1}")


def train_and_evaluate(board: Board, project_dir: Path, x_train: np.ndarray, y_train: np.ndarray,
                       x_test: np.ndarray, y_test: np.ndarray, *, epochs: int = 1, dump_params: bool = False,
                       progress: bool = False, timeout_s: float = 1800) -> dict:
    """Held-out accuracy (an autoencoder's reconstruction error) before and after training on
    the stream, with the program's numbers."""
    report = json.loads((project_dir / "memory_report.json").read_text())
    labelled = report["model"].get("loss", "cross-entropy") == "cross-entropy"
    test = [Record(PREDICT, x) for x in x_test]
    stream = [Record(TRAIN, x, int(y) if labelled else 0) for _ in range(epochs) for x, y in zip(x_train, y_train)]
    records = test + stream + test + ([Record(DUMP)] if dump_params else [])
    res = run_stream(board, project_dir, records, timeout_s=timeout_s, progress=progress)
    out = res.output
    n = len(test)
    before, after = np.array(out.predictions[:n]), np.array(out.predictions[n:])
    losses = np.array(out.losses)
    error = None
    if not labelled:  # an autoencoder: its outputs against the held-out samples themselves
        outputs = np.array(out.logits, np.float64).reshape(2, n, -1)
        error = ((outputs - np.asarray(x_test, np.float64).reshape(1, n, -1)) ** 2).mean(axis=(1, 2))
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
        "accuracy_before": float((before == y_test).mean()) if labelled else None,
        "accuracy_after": float((after == y_test).mean()) if labelled else None,
        # mse models: the mean squared error between output and input over the held-out set
        "reconstruction_error_before": None if labelled else float(error[0]),
        "reconstruction_error_after": None if labelled else float(error[1]),
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
