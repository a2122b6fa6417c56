"""Benchmark: the MCU model gallery, end to end on real data, through the real command line.

    python bench/gallery.py [--models resnet8 dscnn mbv1 mbv3 autoencoder] [--target cortex-m4]
        ->  bench/results/gallery.json

For each model of `tests/gallery_models.py` (MLPerf Tiny's ResNet-8, DS-CNN, MobileNetV1-0.25
and fully connected autoencoder, a MobileNetV3-small-style net), float32 and, where
post-training quantization supports its ops, int8 + QAS, a short on-device adaptation on
real data, as a user would run it:

  1. the data: scikit-learn's real handwritten digits (the only real data on hand offline),
     resized to the model's input (bilinear; grey replicated to RGB; the autoencoder's 640
     inputs are a digit resized to 64x10): digits 0-4 to pretrain, 5-9 split into an
     on-device training stream and a held-out set (`tvm_tinytrain.demo.load_digits_split`);
  2. pretraining on the host with torch (Adam, a few epochs, seeded) on 0-4, then a new
     5-class head (the autoencoder: no head, it learns 5-9 as the new normal);
  3. `tinytrain compile` with the gallery's sparse scheme, the pretrained `--weights`, and
     for int8 `--quantize int8 --calibration` on the 0-4 digits; then `tinytrain run` on the
     board under QEMU: one pass over the first TRAIN_SAMPLES of the stream, batch 1, held-out
     accuracy on the first TEST_SAMPLES (a short run: MobileNetV1's float step alone is
     about 10^8 instructions).

Per row: held-out accuracy (the autoencoder: mean squared reconstruction error) before and
after, peak SRAM (static + measured stack high-water), flash, instructions per training
step (QEMU `-icount shift=0`, deterministic), the planned RAM, and the seconds it took.
The tasks are small and built from digits, so accuracies say that each model learns on the
board, not how it does on its own benchmark's data.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
MODELS_FILE = HERE.parent / "tests" / "gallery_models.py"
sys.path.insert(0, str(MODELS_FILE.parent))

from gallery_models import GALLERY, PTQ, SCHEMES  # noqa: E402

from tvm_tinytrain.demo import load_digits_split  # noqa: E402

PRETRAIN_EPOCHS = 8
SEED = 0
TRAIN_SAMPLES = 200  # of the 627 in the stream of 5-9 digits
TEST_SAMPLES = 100   # of the 269 held out


def resized(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Digits (N, 1, 8, 8) in [0, 1] -> the model's input shape (1, C, H, W) or (1, F)."""
    t = torch.from_numpy(x)
    if len(shape) == 2:  # (1, 640): a digit as a 64x10 image, flattened
        return nn.functional.interpolate(t, size=(64, shape[1] // 64), mode="bilinear",
                                         align_corners=False).reshape(len(x), -1).numpy()
    t = nn.functional.interpolate(t, size=shape[2:], mode="bilinear", align_corners=False)
    return t.repeat(1, shape[1], 1, 1).numpy()


def pretrain(model: nn.Module, x: np.ndarray, y: np.ndarray | None) -> nn.Module:
    """Adam on the host; y None: an autoencoder, on its reconstruction error."""
    torch.manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt = torch.from_numpy(x)
    yt = None if y is None else torch.from_numpy(y)
    model.train()
    for _ in range(PRETRAIN_EPOCHS):
        for idx in torch.randperm(len(xt)).split(32):
            opt.zero_grad()
            out = model(xt[idx])
            loss = nn.functional.mse_loss(out, xt[idx]) if yt is None else nn.functional.cross_entropy(out, yt[idx])
            loss.backward()
            opt.step()
    return model.eval()


def tinytrain(*args) -> str:
    proc = subprocess.run([sys.executable, "-m", "tvm_tinytrain", *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"tinytrain {' '.join(map(str, args[:2]))}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def run_model(name: str, precision: str, target: str, work: Path, train_samples: int = TRAIN_SAMPLES,
              test_samples: int = TEST_SAMPLES) -> dict:
    t0 = time.time()
    torch.set_num_threads(1)  # runs go in parallel, one a core
    work = work / f"{name}-{precision}"
    work.mkdir()
    autoencoder = name == "autoencoder"
    factory = GALLERY[name]
    (x_old, y_old), (x_train, y_train), (x_test, y_test) = load_digits_split()
    x_train, y_train, x_test, y_test = x_train[:train_samples], y_train[:train_samples], x_test[:test_samples], \
        y_test[:test_samples]
    kwargs = {} if autoencoder else {"num_classes": 5}
    model, example = factory(**kwargs, seed=SEED)
    shape = tuple(example.shape)
    x_old, x_train, x_test = (resized(x, shape) for x in (x_old, x_train, x_test))
    model = pretrain(model, x_old, None if autoencoder else y_old)
    if not autoencoder:  # the new task's head, freshly initialised (the factory's own, seeded)
        fresh, _ = factory(num_classes=5, seed=SEED + 1)
        head = [n for n, _ in model.named_parameters()][-2].rsplit(".", 1)[0]
        model.get_submodule(head).load_state_dict(fresh.get_submodule(head).state_dict())
    weights = work / f"{name}.pt"
    torch.save(model.state_dict(), weights)
    data = work / f"{name}.npz"
    np.savez(data, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    calibration = work / f"{name}_cal.npz"
    np.savez(calibration, x_train=x_old, y_train=y_old, x_test=x_old[:1], y_test=y_old[:1])
    out = work / "project"
    flags = [f"{MODELS_FILE}:{factory.__name__}", "--weights", weights, *SCHEMES[name], "--target", target,
             "--flash-kb", "2048", "-o", out]
    flags += ["--factory-args", f"seed={SEED}"] + ([] if autoencoder else ["num_classes=5"])
    if autoencoder:
        flags += ["--loss", "mse"]
    if precision == "int8":
        flags += ["--quantize", "int8", "--calibration", calibration]
    compiled = tinytrain("compile", *flags)
    result = json.loads(tinytrain("run", out, "--data", data, "--json").splitlines()[-1])
    report = json.loads((out / "memory_report.json").read_text())
    row = {"model": name, "precision": "int8 + QAS" if precision == "int8" else "float32",
           "input_shape": list(shape), "scheme": " ".join(map(str, SCHEMES[name])),
           "trainable": report["model"]["trainable"], "planned_ram_bytes": report["planned"]["ram_total_bytes"],
           "seconds": round(time.time() - t0, 1), "compile_summary": compiled.strip().splitlines()[1:3]}
    keep = ("target", "ran_on", "steps", "accuracy_before", "accuracy_after", "reconstruction_error_before",
            "reconstruction_error_after", "loss_first_window_mean", "loss_last_window_mean", "peak_sram_bytes",
            "static_ram_bytes", "stack_high_water_bytes", "flash_bytes", "instructions_per_step",
            "instructions_per_prediction")
    row.update({k: result[k] for k in keep})
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(GALLERY), choices=list(GALLERY))
    p.add_argument("--target", default="cortex-m4")
    p.add_argument("--out", default=str(HERE / "results" / "gallery.json"))
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (each compiles, then runs QEMU)")
    args = p.parse_args()
    t0 = time.time()
    runs = [(name, precision) for name in args.models for precision in ["float32"] + (["int8"] if name in PTQ else [])]

    rows = []
    with tempfile.TemporaryDirectory() as tmp, \
            ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_model, name, precision, args.target, Path(tmp)) for name, precision in runs]
        for future in futures:  # in order; each run in a process of its own (torch's RNG is global)
            row = future.result()
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("model", "precision", "accuracy_before", "accuracy_after",
                                                   "reconstruction_error_before", "reconstruction_error_after",
                                                   "peak_sram_bytes", "flash_bytes", "instructions_per_step",
                                                   "seconds")}), flush=True)
    result = {"what": __doc__.split("\n\n")[1].strip() + " " + __doc__.split("\n\n")[2].strip(),
              "machine": f"{platform.machine()} {platform.python_version()} torch {torch.__version__}",
              "seconds": round(time.time() - t0, 1), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out} ({len(rows)} rows, {result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
