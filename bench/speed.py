"""Benchmark: where the instructions of one training step go, per kernel kind and target.

    python bench/speed.py [--models mcunet-5fps mbv2-w0.35 resnet8-float] [--schemes ...]
                          [--targets cortex-m4 cortex-m7 cortex-m33 riscv32]
        ->  bench/results/speed.json and bench/results/speed.png

For tiny-training's int8 MCUNet-5FPS and MobileNetV2-w0.35 (new 10-class head) and each of
the paper's sparse-update schemes, and for a float32 ResNet-style CNN at 32x32 (`resnet8-float`,
its last block trained), the training step (SGD, batch 1, the memory passes on) is compiled
once and built for every target; `tinytrain profile`'s machinery runs one step on a fixed
random sample under QEMU with `-icount shift=0` and the counting
plugin split at every kernel call. Instructions are guest instructions (deterministic), not
time. Per row:

  * `instructions_per_step` (and `instructions_per_prediction`, one inference), and per
    phase (forward up to the loss, backward, update): instructions, MACs (from each
    kernel's TIR: executions of its reduction bodies) and instructions per MAC;
  * per (phase, kind) group (pointwise, depthwise, conv, weight-grad, matmul, ...): the same;
  * `baseline_instructions_per_step`: the same row measured before the speed work of issue
    #9 (`bench/results/speed_baseline.json`: legalized TIR at -O2, libm rounding), and the
    `speedup` since;
  * for MCUNet-5FPS's 49 KB scheme on Cortex-M7, TinyEngine's step measured on the same
    emulator with the same compiler (`../shared/DESIGN.md` section 7): 128.6 M instructions
    (forward 65.4 M, loss + backward + update 63.2 M).

The physical limit for int8 MACs on Cortex-M4/M7 is 2 per `SMLAD`, so 0.5 instructions per
MAC before loads; TinyEngine's whole step averages 3.9.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ZOO = Path(os.environ.get("TINYTRAIN_MODELS_DIR") or HERE.parent.parent / "shared" / "models" / "tiny-training")
SCHEMES = {"mcunet-5fps": ["mcunet-49kb", "mcunet-74kb", "mcunet-99kb", "mcunet-124kb", "mcunet-148kb"],
           "mbv2-w0.35": ["mbv2-49kb", "mbv2-73kb", "mbv2-99kb", "mbv2-123kb", "mbv2-138kb"],
           "resnet8-float": ["last-block"]}
TARGETS = ["cortex-m4", "cortex-m7", "cortex-m33", "riscv32"]
BASELINE = HERE / "results" / "speed_baseline.json"
TINYENGINE = {"model": "mcunet-5fps", "scheme": "mcunet-49kb", "target": "cortex-m7",
              "instructions_per_step": 128.6e6, "forward": 65.4e6, "backward_and_update": 63.2e6,
              "source": "TinyEngine's code generator on its MCUNet-5FPS 49 KB training graph, gcc 12 -O2, "
                        "QEMU mps2-an500 -icount shift=0 (DESIGN.md section 7)"}


def resnet8_float():
    """A float32 ResNet-style CNN at 32x32 as a user would write it (3x3 convs with batch norm,
    three residual stages of 16, 32 and 64 channels, 17 M MACs forward): float models' convs."""
    import torch
    from torch import nn

    def conv_bn(cin, cout, stride=1, relu=True):
        layers = [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, *([nn.ReLU()] if relu else []))

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.a, self.b = conv_bn(c, c), conv_bn(c, c, relu=False)

        def forward(self, x):
            return torch.relu(x + self.b(self.a(x)))

    class ResNet8(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(conv_bn(3, 16), Block(16), conv_bn(16, 32, 2), Block(32), conv_bn(32, 64, 2),
                                      Block(64))
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(self.body(x).mean((2, 3)))

    torch.manual_seed(0)
    return ResNet8().eval(), torch.zeros(1, 3, 32, 32)


def program_for(model: str, scheme: str):
    from tvm_tinytrain.config import SparseUpdateConfig
    from tvm_tinytrain.frontend.zoo_frontend import import_zoo
    from tvm_tinytrain.pipeline import TrainOptions, build_training_program

    if model == "resnet8-float":  # scheme "last-block": the last block's second conv, the biases of the last 2 convs
        from tvm_tinytrain.frontend.torch_frontend import import_torch

        config = SparseUpdateConfig(n_bias_update=2, manual_weight_idx=(6,), weight_update_ratio=(1.0,))
        return build_training_program(import_torch(*resnet8_float()), config, TrainOptions(lr=0.01, momentum=0.0))
    imported = import_zoo(ZOO / f"{model}.pkl", num_classes=10)
    return build_training_program(imported, SparseUpdateConfig.scheme(scheme), TrainOptions(lr=0.002, momentum=0.0))


def phases(step: dict) -> dict:
    """Instructions, MACs and instructions per MAC of each phase (the 'all' groups)."""
    return {g["phase"]: {k: g[k] for k in ("calls", "instructions", "macs", "instructions_per_mac")}
            for g in step["by_phase_and_kind"] if g["kind"] == "all"}


def baseline() -> dict[tuple[str, str, str], int]:
    """(model, scheme, target) -> instructions per step before the speed work."""
    if not BASELINE.is_file():
        return {}
    rows = json.loads(BASELINE.read_text())["rows"]
    return {(r["model"], r["scheme"], r["target"]): r["instructions_per_step"] for r in rows}


def measure(model: str, scheme: str, targets: list[str], work: Path) -> list[dict]:
    from tvm_tinytrain.profile import profile_project
    from tvm_tinytrain.targets.boards import get_board
    from tvm_tinytrain.targets.c_emitter import emit
    from tvm_tinytrain.targets.lower import lower
    from tvm_tinytrain.targets.project import write_project

    program = program_for(model, scheme)
    emitted = emit(program, lower(program))
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(program.input_shape) if model == "resnet8-float"
         else rng.integers(-128, 128, program.input_shape)).astype(np.float32)
    rows = []
    for target in targets:
        board = get_board(target)
        out = work / f"{model}-{scheme}-{target}"
        write_project(program, out, board, ram_bytes=256 * 1024, flash_bytes=4 << 20, emitted=emitted)
        prof = profile_project(board, out, x, 3, timeout_s=3600)
        step = prof["train_step"]
        row = {"model": model, "scheme": scheme, "target": target, "ran_on": prof["ran_on"],
               "instructions_per_step": step["instructions"], "macs_per_step": step["macs"],
               "instructions_per_prediction": prof["predict"]["instructions"],
               "instructions_per_mac": round(step["instructions"] / step["macs"], 2),
               "phases": phases(step),
               "by_phase_and_kind": [g for g in step["by_phase_and_kind"] if g["kind"] != "all"],
               "dearest_calls": sorted(step["calls"], key=lambda c: -c["instructions"])[:10]}
        before = baseline().get((model, scheme, target))
        if before:
            row["baseline_instructions_per_step"] = before
            row["speedup"] = round(before / step["instructions"], 2)
        if (model, scheme, target) == (TINYENGINE["model"], TINYENGINE["scheme"], TINYENGINE["target"]):
            row["tinyengine"] = TINYENGINE
            row["ratio_to_tinyengine"] = round(step["instructions"] / TINYENGINE["instructions_per_step"], 2)
        print(f"  {model} {scheme} {target}: {step['instructions'] / 1e6:.1f} M instructions, "
              f"{row['instructions_per_mac']} per MAC", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"forward": "tab:blue", "backward": "tab:orange", "update": "tab:green"}
    labels = [f"{r['scheme']}\n{r['target']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(8.0, 0.55 * len(rows)), 4.5))
    bottom = np.zeros(len(rows))
    for phase, color in colors.items():
        values = np.array([r["phases"].get(phase, {}).get("instructions", 0) / 1e6 for r in rows])
        ax.bar(range(len(rows)), values, bottom=bottom, color=color, label=phase)
        bottom += values
    ax.scatter([i for i, r in enumerate(rows) if "baseline_instructions_per_step" in r],
               [r["baseline_instructions_per_step"] / 1e6 for r in rows if "baseline_instructions_per_step" in r],
               marker="_", s=120, color="black", label="before (speed_baseline.json)")
    ax.axhline(TINYENGINE["instructions_per_step"] / 1e6, color="black", linestyle="--",
               label="TinyEngine, MCUNet 49 KB, Cortex-M7 (128.6 M)")
    ax.set_xticks(range(len(rows)), labels, rotation=90, fontsize=7)
    ax.set_ylabel("instructions per training step (millions)")
    ax.set_title("One training step (batch 1) under QEMU, by phase")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    ap.add_argument("--schemes", nargs="+", help="default: every paper scheme of each model")
    ap.add_argument("--targets", nargs="+", default=TARGETS)
    ap.add_argument("--out", default=str(HERE / "results" / "speed.json"))
    args = ap.parse_args()
    t0 = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tinytrain-speed-") as work:
        for model in args.models:
            for scheme in args.schemes or SCHEMES[model]:
                if scheme in SCHEMES[model]:
                    rows.extend(measure(model, scheme, args.targets, Path(work)))
    result = {"what": __doc__.split("\n\n")[2].strip().replace("\n", " "),
              "machine": platform.platform(), "seconds": round(time.time() - t0), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(rows, out.with_suffix(".png"))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
