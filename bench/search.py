"""Benchmark: the searched sparse update against the paper's manual schemes, at their budgets.

    python bench/search.py [--models mcunet-5fps mbv2-w0.35]   ->  bench/results/search.json, search.png

What is measured. For each zoo model (int8, ImageNet pre-trained, a new 10-class head) and the
digits transfer task of `bench/qas.py` (all 10 scikit-learn digits upsampled to 128x128, the
same train / validation / test split): the contribution analysis (`tvm_tinytrain.contribution`)
runs on the training split, scored on the validation split, with one seed of `ANALYSIS_STEPS`
steps per point: the bias curve, then the weights of the last `LAST_LAYERS` layers at ratios
1/8 .. 1 on top of its best point (layers whose smallest update cannot fit the largest budget
left out). For each of the paper's five schemes of the model, the budget is that scheme's
planned RAM (`estimate_memory`: arena, trainable weights, momenta, I/O, 8 KB stack), and the
evolutionary search (`tvm_tinytrain.search`, population 16, 10 generations, seed 0) picks a
scheme within it. Then both schemes, searched and manual, are trained exactly as `bench/qas.py`
trains its int8 SGD + QAS row (lr 1e-2, no momentum, 2 passes over the training split,
batch 1, the Relax VM step) on 3 seeds (head initialisation and sample order) and scored on
the test split, and each is compiled for Cortex-M7 and run for one step under QEMU: the peak
SRAM measured there (static RAM from the ELF + the stack's high-water mark) and the
instructions of the step. The paper's reference points get the same treatment at each
budget: bias-only (the best point of the analysed bias curve that fits) and the full update
of the last k layers (weights and biases, the largest k that fits). Runs are cached in bench/results/search.work/, so a re-run resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

import qas

RESULTS = qas.RESULTS
WORK = RESULTS / "search.work"
MODELS = {"mcunet-5fps": "mcunet", "mbv2-w0.35": "mbv2"}   # zoo file -> its schemes' prefix
TASK = "digits"
ANALYSIS_STEPS = 600
LAST_LAYERS = 12
SEEDS = (0, 1, 2)
LR, MOMENTUM = 1e-2, 0.0   # bench/qas.py's int8 SGD + QAS row (the paper's schemes' memory: no momenta)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def options():
    from tvm_tinytrain.pipeline import TrainOptions
    return TrainOptions(LR, MOMENTUM, int8_update=qas.INT8_UPDATE)


def spec_of(model: str):
    from tvm_tinytrain.cli import ModelSpec
    return ModelSpec(str(qas.models_dir() / f"{model}.pkl"), num_classes=qas.NUM_CLASSES)


def as_inputs(x: np.ndarray) -> np.ndarray:
    return np.stack([qas.as_input(img)[0] for img in x])


def evaluate(model: str, config: dict) -> list[float]:
    """Test accuracy (%) per seed of `bench/qas.py`'s protocol for one scheme (a worker)."""
    from tvm_tinytrain.config import SparseUpdateConfig
    from tvm_tinytrain.pipeline import build_training_program

    splits = qas.split_data(*qas.digits_int8())
    path = qas.models_dir() / f"{model}.pkl"
    program = build_training_program(qas.import_graph(path, "int8", SEEDS[0]), SparseUpdateConfig.from_dict(config),
                                     options())
    trainer = qas.make_trainer_class()(program)
    accs = []
    for seed in SEEDS:
        trainer.reset(qas.import_graph(path, "int8", seed).params)
        result = qas.train(trainer, splits["train"], seed, qas.EPOCHS, None)
        accs.append(0.0 if result["diverged"] else qas.accuracy(trainer, splits["test"]))
    return accs


def measure_board(model: str, config: dict, out: Path) -> dict:
    """One training step of the scheme on Cortex-M7 under QEMU: measured peak, instructions."""
    from tvm_tinytrain.cli import compile_to_project
    from tvm_tinytrain.config import SparseUpdateConfig
    from tvm_tinytrain.session import run_stream
    from tvm_tinytrain.targets.harness import TRAIN, Record

    from tvm_tinytrain.contribution import model_of

    imported = model_of(spec_of(model))
    board, _, _, est = compile_to_project(imported, SparseUpdateConfig.from_dict(config), options(), "cortex-m7",
                                          out, flash_kb=2048)
    x = np.random.default_rng(0).integers(-128, 128, imported.input_shape).astype(np.float32)
    run = run_stream(board, out, [Record(TRAIN, x, 3)], timeout_s=3600)
    return {"measured_peak_bytes": run.build.static_ram_bytes + run.output.stack_bytes,
            "planned_ram_bytes": est.ram_bytes, "instructions_per_step": run.train_instructions[0],
            "flash_bytes": run.build.flash_bytes}


def _tag(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def _keyed(tag: str, fn, *args):
    return tag, fn(*args)


def _in_pool(pool, folder: Path, fn, calls: dict[str, tuple]) -> dict:
    """fn(*args) per tag, in the pool, each result kept in folder/tag.json (a re-run reads it)."""
    from tvm_tinytrain import contribution

    folder.mkdir(parents=True, exist_ok=True)
    todo = [(t, fn, *args) for t, args in calls.items() if not (folder / f"{t}.json").exists()]

    def keep(result):
        (folder / f"{result[0]}.json").write_text(json.dumps(result[1], indent=1))
    contribution.map_in_pool(pool, _keyed, todo, keep)
    return {t: json.loads((folder / f"{t}.json").read_text()) for t in calls}


def run_model(model: str, pool, references: bool) -> tuple[list[dict], dict]:
    from tvm_tinytrain import contribution, search
    from tvm_tinytrain.config import PAPER_SCHEMES, SparseUpdateConfig
    from tvm_tinytrain.contribution import Scheme, Setup, run_cache
    from tvm_tinytrain.layers import find_layers
    from tvm_tinytrain.pipeline import MemoryOptions

    spec = spec_of(model)
    work = WORK / model
    splits = qas.split_data(*qas.digits_int8())
    train = (as_inputs(splits["train"][0]), splits["train"][1])
    val = (as_inputs(splits["val"][0]), splits["val"][1])
    n_layers = len(find_layers(spec.load().mod["main"])) - 1
    setup = Setup(ANALYSIS_STEPS, (0,), options())

    key = contribution.fingerprint(spec, setup, train, val)
    pricer = search.pool_pricer(pool, spec, options(), MemoryOptions(), 8192, work / "prices.json", key)
    manual = {name: Scheme.from_config(SparseUpdateConfig.scheme(name))
              for name in PAPER_SCHEMES if name.startswith(MODELS[model])}
    manual_price = dict(zip(manual, pricer(list(manual.values()))))
    largest = search.Budget(max(p["ram_bytes"] for p in manual_price.values()))

    def affordable(base_k):
        return search.affordable_layers(pricer, base_k, range(n_layers - LAST_LAYERS, n_layers), largest)
    log(f"{model}: contribution analysis ({n_layers} layers, the last {LAST_LAYERS} analysed)")
    contrib = contribution.analyse(spec, n_layers, setup, train, val, run_cache(work / "runs.json", key),
                                   layers_for=affordable, pool=pool)
    chosen = {}
    for name, scheme in manual.items():
        budget = search.Budget(manual_price[name]["ram_bytes"])
        log(f"{model} {name}: search within {budget.ram_bytes} bytes")
        result = search.evolve(contrib, pricer, budget, population=search.POPULATION,
                               generations=search.GENERATIONS, seed=0,
                               state_path=work / f"state-{name}.json", fingerprint=f"{key}|{budget}")
        chosen[name] = (result, budget, {"searched": result.best.config_dict(),
                                         "manual": scheme.config_dict(),
                                         **(reference_points(contrib, pricer, budget, n_layers) if references
                                            else {})})
    configs = {_tag(c): c for _, _, pair in chosen.values() for c in pair.values()}
    log(f"{model}: training {len(configs)} schemes x {len(SEEDS)} seeds, and one step of each on Cortex-M7")
    accuracy = _in_pool(pool, work / "eval", evaluate, {t: (model, c) for t, c in configs.items()})
    board = _in_pool(pool, work / "board", measure_board,
                     {t: (model, c, work / "projects" / t) for t, c in configs.items()})
    rows = []
    for name, (result, budget, pair) in chosen.items():
        acc = {w: accuracy[_tag(c)] for w, c in pair.items()}
        mcu = {w: board[_tag(c)] for w, c in pair.items()}
        row = {"model": model, "task": TASK, "budget_scheme": name, "budget_planned_bytes": budget.ram_bytes,
               "searched_gain_estimate": result.gain, "manual_gain_estimate": contrib.gain(manual[name]) if contrib.covers(manual[name]) else None}
        for w in pair:
            row[f"{w}_scheme"] = pair[w]
            row |= {f"{w}_accuracy_mean": float(np.mean(acc[w])), f"{w}_accuracy_std": float(np.std(acc[w], ddof=1)),
                    f"{w}_accuracies": acc[w], f"{w}_planned_bytes": mcu[w]["planned_ram_bytes"],
                    f"{w}_peak_bytes": mcu[w]["measured_peak_bytes"],
                    f"{w}_instructions_per_step": mcu[w]["instructions_per_step"]}
        log(f"{model} {name}: searched {row['searched_accuracy_mean']:.1f} +- {row['searched_accuracy_std']:.1f} % "
            f"at {row['searched_peak_bytes']} B, manual {row['manual_accuracy_mean']:.1f} +- "
            f"{row['manual_accuracy_std']:.1f} % at {row['manual_peak_bytes']} B")
        rows.append(row)
    return rows, contrib.to_json()


def reference_points(contrib, pricer, budget, n_layers: int) -> dict:
    """The paper's baselines within a budget: the best point of the analysed bias curve that
    fits (bias-only), and the full update (weights and biases) of the last k layers, k the
    largest that fits."""
    from tvm_tinytrain.contribution import Scheme

    bias = [Scheme(k) for k in sorted(contrib.bias)]
    best = max((s for s, p in zip(bias, pricer(bias)) if budget.fits(p)),
               key=lambda s: (contrib.bias[s.n_bias], -s.n_bias))
    last = [Scheme(k, tuple((i, 1.0) for i in range(n_layers - k, n_layers))) for k in range(1, LAST_LAYERS + 1)]
    fitting = [s for s, p in zip(last, pricer(last)) if budget.fits(p)]
    return {"bias_only": best.config_dict(), **({"last_k_full": fitting[-1].config_dict()} if fitting else {})}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in report["rows"]})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = [r for r in report["rows"] if r["model"] == model]
        for which, color, fmt in (("manual", "#4c72b0", "o-"), ("searched", "#dd8452", "o-"),
                                  ("bias_only", "#55a868", "s:"), ("last_k_full", "#8172b2", "^:")):
            have = [r for r in rows if f"{which}_peak_bytes" in r]
            if have:
                ax.errorbar([r[f"{which}_peak_bytes"] / 1024 for r in have],
                            [r[f"{which}_accuracy_mean"] for r in have], yerr=[r[f"{which}_accuracy_std"] for r in have],
                            fmt=fmt, color=color, capsize=4, label=f"{which.replace('_', ' ')} (3 seeds)")
        ax.set_xlabel("peak SRAM measured on Cortex-M7 (KB)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{model}, digits: searched vs the paper's schemes", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--no-reference-points", action="store_true",
                        help="only the searched and the manual scheme (bias-only and last-k full left out)")
    parser.add_argument("--out", type=Path, default=RESULTS / "search.json")
    args = parser.parse_args()
    from tvm_tinytrain import contribution, search

    t0 = time.time()
    rows, analyses = [], {}
    with contribution.process_pool(args.workers) as pool:
        for model in args.models:
            model_rows, analyses[model] = run_model(model, pool, not args.no_reference_points)
            rows += model_rows
    report = {"what": __doc__.split("What is measured. ")[1].strip(),
              "setup": {"analysis_steps": ANALYSIS_STEPS, "last_layers": LAST_LAYERS, "seeds": list(SEEDS),
                        "lr": LR, "momentum": MOMENTUM, "epochs": qas.EPOCHS,
                        "population": search.POPULATION, "generations": search.GENERATIONS,
                        "reference_points": not args.no_reference_points},
              "rows": rows, "contributions": analyses, "seconds": round(time.time() - t0)}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, args.out.with_suffix(".png"))
    print(json.dumps([{k: r[k] for k in ("model", "budget_scheme", "searched_accuracy_mean", "manual_accuracy_mean",
                                         "searched_peak_bytes", "manual_peak_bytes")} for r in rows]))


if __name__ == "__main__":
    main()
