"""Benchmark: how a trainable int8 weight should take an update smaller than one integer step.

    python bench/int8_update.py   ->  bench/results/int8_update.json (~20 min on 2 cores)

What is measured. Each option of `--int8-update` (`TrainOptions.int8_update`) trains the
same two tasks with the same steps, data and seeds; nothing else changes:

    nearest     every update rounded to the nearest integer (updates under half a step lost)
    stochastic  rounded down or up at random in proportion (unbiased; a hash of element,
                parameter and step count in the generated C, deterministic)
    int16       int8 weights held as int16 masters in 1/256 steps; int32 biases to nearest
    float32     weights and biases held as float32 masters (as tiny-training trains)

Tasks, both real data:

    demo        `tinytrain demo`'s task: DigitsNet pretrained on the host on scikit-learn
                digits 0-4, int8 by post-training quantization, learns 5-9 with the demo's
                sparse update, learning rate and epochs (`tvm_tinytrain.demo`), one sample
                at a time, in stream order. Run as the generated C built for the host
                (bit-identical to the boards' builds, tests/test_int8_update.py). Seeds
                0-2 are `demo.SEED`: the pretraining and the 5-9 train/test split.
    mcunet-qas  `bench/qas.py`'s int8 SGD + QAS row: MCUNet-5FPS (the zoo's int8 model),
                the paper's 49 KB scheme, digits 128x128, lr 0.01 without momentum,
                `qas.EPOCHS` passes; seeds 0-2 draw the new head and the sample order. Run
                on the Relax VM (the reference the C matches).

Each task runs at its learning rate and at a tenth of it (`LR_SCALES`), where more updates
fall under one integer step. Accuracy is on each task's held-out split. RAM comes from the planner for the compiled step
(`targets.project.estimate_memory`): the trainable tensors as held in RAM, and the whole
planned RAM (arena + trainable + momentum + I/O + an 8 KB stack allowance).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import qas

OPTIONS = ("nearest", "stochastic", "int16", "float32")
SEEDS = (0, 1, 2)
MCUNET_LR = 1e-2  # bench/qas.py's int8 SGD + QAS row, best on validation
# Each task at its own learning rate and at a tenth of it (a cautious user's choice, and
# where most updates are smaller than an integer step).
LR_SCALES = (1.0, 0.1)


def scaled(lr: float, scale: float) -> float:
    return float(f"{lr * scale:.6g}")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def memory(program) -> dict:
    from tvm_tinytrain.targets.project import estimate_memory

    est = estimate_memory(program)
    return {"trainable_bytes": est.trainable_bytes, "planned_ram_bytes": est.ram_bytes,
            "arena_bytes": est.arena_bytes}


def demo_run(update: str, seed: int, lr_scale: float) -> dict:
    """The demo's task with one option and seed, on the host build (a worker)."""
    import dataclasses

    import torch

    from tvm_tinytrain import demo
    from tvm_tinytrain.cli import compile_to_project
    from tvm_tinytrain.frontend.torch_frontend import import_torch
    from tvm_tinytrain.quantize import post_training_quantize
    from tvm_tinytrain.session import train_and_evaluate

    demo.SEED = seed
    (x_old, y_old), (x_train, y_train), (x_test, y_test) = demo.load_digits_split()
    imported = import_torch(demo.pretrain(x_old, y_old), torch.zeros(demo.INPUT_SHAPE))
    imported = post_training_quantize(imported, x_old[:demo.CALIBRATION_SAMPLES])
    options = dataclasses.replace(demo.DEMO_OPTIONS["int8"], int8_update=update, lr=scaled(demo.DEMO_LR, lr_scale))
    with tempfile.TemporaryDirectory() as out:
        board, program, _, _ = compile_to_project(imported, demo.DEMO_CONFIG, options, "host", Path(out))
        result = train_and_evaluate(board, Path(out), x_train, y_train, x_test, y_test,
                                    epochs=demo.DEMO_EPOCHS["int8"])
    return {"task": "demo", "lr": options.lr, "int8_update": update, "seed": seed,
            "accuracy": 100 * result["accuracy_after"],
            "accuracy_before": 100 * result["accuracy_before"], **memory(program)}


def mcunet_runs(update: str, lr_scale: float) -> list[dict]:
    """bench/qas.py's int8 SGD + QAS row with one option, every seed (a worker)."""
    from tvm_tinytrain.config import SparseUpdateConfig
    from tvm_tinytrain.pipeline import TrainOptions, build_training_program

    splits = qas.split_data(*qas.digits_int8())
    path = qas.models_dir() / qas.MODEL_FILE
    options = TrainOptions(lr=scaled(MCUNET_LR, lr_scale), momentum=0.0, qas=True, int8_update=update)
    program = build_training_program(qas.import_graph(path, "int8", SEEDS[0]),
                                     SparseUpdateConfig.scheme(qas.SCHEME), options)
    trainer = qas.make_trainer_class()(program)
    rows, mem = [], memory(program)
    for seed in SEEDS:
        trainer.reset(qas.import_graph(path, "int8", seed).params)
        run = qas.train(trainer, splits["train"], seed, qas.EPOCHS, None)
        acc = 0.0 if run["diverged"] else qas.accuracy(trainer, splits["test"])
        rows.append({"task": "mcunet-qas", "lr": options.lr, "int8_update": update, "seed": seed, "accuracy": acc,
                     "diverged": run["diverged"], "steps": run["steps"], **mem})
    return rows


def summarise(runs: list[dict]) -> list[dict]:
    table = []
    for task, lr in dict.fromkeys((r["task"], r["lr"]) for r in runs):
        for update in OPTIONS:
            rs = sorted((r for r in runs if (r["task"], r["lr"], r["int8_update"]) == (task, lr, update)),
                        key=lambda r: r["seed"])
            if not rs:
                continue
            accs = [r["accuracy"] for r in rs]
            table.append({"task": task, "lr": lr, "int8_update": update, "accuracy_mean": float(np.mean(accs)),
                          "accuracy_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                          "accuracies": accs, "trainable_bytes": rs[0]["trainable_bytes"],
                          "planned_ram_bytes": rs[0]["planned_ram_bytes"]})
    return table


def main() -> None:
    from tvm_tinytrain.contribution import map_in_pool, process_pool

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["demo", "mcunet-qas"], choices=["demo", "mcunet-qas"])
    parser.add_argument("--lr-scales", type=float, nargs="+", default=list(LR_SCALES))
    parser.add_argument("--workers", type=int)
    parser.add_argument("--reuse", action="store_true",
                        help="keep the runs the output file already holds (same task, lr, option, seed)")
    parser.add_argument("--out", default=str(qas.RESULTS / "int8_update.json"))
    args = parser.parse_args()
    t0 = time.time()
    runs = json.loads(Path(args.out).read_text())["runs"] if args.reuse and Path(args.out).exists() else []
    done = {(r["task"], r["lr"], r["int8_update"], r["seed"]) for r in runs}
    calls = []
    for scale in args.lr_scales:
        if "mcunet-qas" in args.tasks:
            calls += [(mcunet_runs, (u, scale)) for u in OPTIONS
                      if any(("mcunet-qas", scaled(MCUNET_LR, scale), u, s) not in done for s in SEEDS)]
        if "demo" in args.tasks:
            from tvm_tinytrain import demo

            calls += [(demo_run, (u, s, scale)) for u in OPTIONS for s in SEEDS
                      if ("demo", scaled(demo.DEMO_LR, scale), u, s) not in done]

    def collect(result):
        for r in result if isinstance(result, list) else [result]:
            log(f"{r['task']} lr {r['lr']:g} {r['int8_update']} seed {r['seed']}: {r['accuracy']:.1f} %, "
                f"trainable {r['trainable_bytes']} B, planned RAM {r['planned_ram_bytes']} B")
            runs.append(r)

    with process_pool(args.workers) as pool:
        map_in_pool(pool, _call, calls, collect)
    report = {"what": __doc__.split("What is measured. ")[1].strip(), "seconds": round(time.time() - t0),
              "table": summarise(runs), "runs": sorted(runs, key=lambda r: (r["task"], -r["lr"], r["int8_update"], r["seed"]))}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["table"], indent=1))


def _call(fn, args):
    return fn(*args)


if __name__ == "__main__":
    main()
