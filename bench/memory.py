"""Benchmark: the memory of one training step, on the emulated Cortex-M7 and in PyTorch.

    python bench/memory.py [--models mcunet-5fps mbv2-w0.35] [--schemes ...]
        ->  bench/results/memory.json and bench/results/memory.png

For MCUNet-5FPS and MobileNetV2-w0.35 (tiny-training's int8 zoo, new 10-class head), each
of the paper's sparse-update schemes and a full update, in three configurations: operator
reordering (`MemoryOptions.reorder`: ReorderForMemory, each update as soon as it may run)
off, on, and on with the frozen prefix computed tile by tile (`MemoryOptions.patch_prefix`:
PatchFrozenPrefix, the grid chosen by the planner; `patched_prefix` says where it cuts and
how many tiles); the other memory passes on in all three. Per row:

  * `planner_peak_bytes`: the RAM the compiler plans for the step: the arena (its packed
    size; `arena_live_peak_bytes` is the most bytes live at one call, the lower bound of
    any placement; `arena_placement` says which placement won), trainable weights,
    momentum, the harness's buffers and the reserved stack;
  * `measured_peak_bytes`: the real program built for `cortex-m7` (mps2-an500) and run for
    one training step under QEMU with the run-time RAM guard: static RAM from the ELF
    (.data + .bss: arena, trainable weights, runtime) plus the stack high-water mark
    measured by stack painting; `fits_256kb` says whether that is inside 256 KB. The
    budget given to the build is 256 KB when the plan fits it, else the next power of two;
  * `flash_bytes` (ELF load image), `instructions_per_step` (QEMU TCG plugin,
    -icount shift=0: a deterministic count, not time); on patched rows,
    `halo_instructions_ratio`: their instructions over the reordered row's (the halos'
    recomputation, and the tiles' slices and writes);
  * `pytorch_peak_bytes` and `pytorch_tensor_peak_bytes` from `bench/pytorch_memory.py`
    (same network in fp32, same trainable tensors, batch 1, a fresh process each): the
    process's peak resident memory while training, and the peak of live tensor memory
    during one step (torch profiler); each with its ratio to `measured_peak_bytes`.

SGD without momentum, batch 1, learning rate 0.002, one step on a random int8 sample.
Each row also says where the peak is (`peak_call`) and what fills the arena there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from tvm_tinytrain.errors import TinyTrainError

HERE = Path(__file__).resolve().parent
ZOO = HERE.parent.parent / "shared" / "models" / "tiny-training"
SCHEMES = {"mcunet-5fps": ["mcunet-49kb", "mcunet-74kb", "mcunet-99kb", "mcunet-124kb", "mcunet-148kb", "full"],
           "mbv2-w0.35": ["mbv2-49kb", "mbv2-73kb", "mbv2-99kb", "mbv2-123kb", "mbv2-138kb", "full"]}
PAPER_KB = {"mcunet-5fps": 173, "mbv2-w0.35": 141}  # sparse update + reordering, the paper's Table
BUDGET = 256 * 1024


CONFIGS = {"plain": dict(reorder=False, patch_prefix=False), "reordered": dict(reorder=True, patch_prefix=False),
           "patched": dict(reorder=True, patch_prefix=True)}


def program_for(model: str, scheme: str, config: str):
    from tvm_tinytrain.config import SparseUpdateConfig
    from tvm_tinytrain.frontend.zoo_frontend import import_zoo
    from tvm_tinytrain.pipeline import MemoryOptions, TrainOptions, build_training_program

    imported = import_zoo(ZOO / f"{model}.pkl", num_classes=10)
    names = [p.name for p in imported.mod["main"].params[1:]]
    sparse = SparseUpdateConfig(params=names) if scheme == "full" else SparseUpdateConfig.scheme(scheme)
    program = build_training_program(imported, sparse, TrainOptions(lr=0.002, momentum=0.0))
    return dataclasses.replace(program, memory=MemoryOptions(**CONFIGS[config]))


def measure_mcu(model: str, scheme: str, config: str, work: Path) -> dict:
    from tvm_tinytrain.session import run_stream
    from tvm_tinytrain.targets.boards import get_board, symbol_size
    from tvm_tinytrain.targets.c_emitter import emit
    from tvm_tinytrain.targets.harness import TRAIN, Record
    from tvm_tinytrain.targets.lower import lower
    from tvm_tinytrain.targets.project import write_project

    program = program_for(model, scheme, config)
    board = get_board("cortex-m7")
    emitted = emit(program, lower(program))
    planned = emitted.arena_bytes + emitted.trainable_bytes + emitted.momentum_bytes + 8 * 1024 + 1024
    budget = BUDGET if planned <= BUDGET else min(1 << int(np.ceil(np.log2(planned))), board.max_ram_bytes)
    out = work / f"{model}-{scheme}-{config}"
    _, est = write_project(program, out, board, ram_bytes=budget, flash_bytes=4 << 20, emitted=emitted)
    x = np.random.default_rng(0).integers(-128, 128, program.input_shape).astype(np.float32)
    run = run_stream(board, out, [Record(TRAIN, x, 3)], timeout_s=3600)
    step = emitted.plans["train_step"]
    measured = run.build.static_ram_bytes + run.output.stack_bytes
    return {
        "model": model, "scheme": scheme, "config": config, **CONFIGS[config],
        "patched_prefix": {name: {"cut_shape": list(shape), "tiles": [rows, cols]}
                           for name, (_, shape, rows, cols) in emitted.patched_prefix.items()},
        "planner_peak_bytes": est.ram_bytes,
        "measured_peak_bytes": measured,
        "fits_256kb": measured <= BUDGET,
        "flash_bytes": run.build.flash_bytes,
        "instructions_per_step": run.train_instructions[0],
        "arena_bytes": est.arena_bytes,
        "arena_in_elf_bytes": symbol_size(run.build.elf, "tt_arena"),
        "arena_live_peak_bytes": step.live_peak_bytes,
        "arena_placement": step.strategy,
        "arena_at_peak": step.live_at_peak,
        "peak_call": est.peak_call,
        "trainable_weights_bytes": est.trainable_bytes,
        "static_ram_bytes": run.build.static_ram_bytes,
        "stack_high_water_bytes": run.output.stack_bytes,
        "ram_budget_bytes": budget,
        "loss": run.output.losses[0],
    }


def measure_pytorch(model: str, scheme: str) -> dict:
    """bench/pytorch_memory.py in its own process (it starts a fresh one per measurement)."""
    cmd = [sys.executable, str(HERE / "pytorch_memory.py"), "--model", model, "--scheme", scheme,
           "--zoo-dir", str(ZOO)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        schemes = list(dict.fromkeys(r["scheme"] for r in rows if r["model"] == model))
        xs = np.arange(len(schemes))
        labels = {"plain": "sparse update", "reordered": "+ operator reordering", "patched": "+ patched prefix"}
        for k, (config, label) in enumerate(labels.items()):
            kb = [next(((r["measured_peak_bytes"] or 0) / 1024 for r in rows if r["model"] == model
                        and r["scheme"] == s and r["config"] == config), 0) for s in schemes]
            ax.bar(xs + (k - 1) * 0.28, kb, 0.28, label=label)
        ax.axhline(256, color="k", lw=1, ls="--", label="256 KB")
        ax.axhline(PAPER_KB[model], color="r", lw=1, ls=":", label=f"paper: {PAPER_KB[model]} KB")
        ax.set_xticks(xs, [s.split("-")[-1] for s in schemes])
        ax.set_yscale("log")
        ax.set_ylabel("measured peak SRAM on Cortex-M7 (KB, log)")
        ax.set_title(f"{model}: one training step, all counted")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SCHEMES))
    parser.add_argument("--schemes", nargs="+", help="only these schemes (default: all of each model)")
    parser.add_argument("--out", default=str(HERE / "results" / "memory.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tinytrain-memory-") as work:
        for model in args.models:
            for scheme in SCHEMES[model]:
                if args.schemes and scheme not in args.schemes:
                    continue
                torch_row = measure_pytorch(model, scheme)
                for config in CONFIGS:
                    try:
                        row = measure_mcu(model, scheme, config, Path(work))
                    except TinyTrainError as err:  # e.g. more RAM than the emulated board has
                        row = {"model": model, "scheme": scheme, "config": config, **CONFIGS[config],
                               "error": str(err), "measured_peak_bytes": None}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                        continue
                    row["pytorch_peak_bytes"] = torch_row["pytorch_peak_bytes"]
                    row["pytorch_tensor_peak_bytes"] = torch_row["pytorch_tensor_peak_bytes"]
                    row["pytorch_ratio"] = round(row["pytorch_peak_bytes"] / row["measured_peak_bytes"], 1)
                    row["pytorch_tensor_ratio"] = round(row["pytorch_tensor_peak_bytes"] / row["measured_peak_bytes"], 2)
                    if config == "patched":
                        reordered = next(r for r in rows if r["model"] == model and r["scheme"] == scheme
                                         and r["config"] == "reordered")
                        if reordered.get("instructions_per_step"):
                            row["halo_instructions_ratio"] = round(
                                row["instructions_per_step"] / reordered["instructions_per_step"], 4)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"method": __doc__.split("\n\n", 2)[2].strip(), "rows": rows}, indent=2) + "\n")
    plot(rows, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
