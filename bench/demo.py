"""Benchmark: the digits demo on every target, one JSON row per target.

What is measured, per target, by the real program (one fresh `tinytrain demo` process each;
int8 + QAS unless --float): held-out accuracy before/after learning digits 5-9 on device
(3 passes over 627 samples for int8, 2 for float, batch 1), the first and last loss windows, peak SRAM (static .data + .bss from the ELF plus
the stack high-water mark measured by stack painting), flash (ELF load image), and
instructions per training step (QEMU TCG plugin, -icount shift=0: deterministic counts,
not time). Host rows carry no instruction count.

    python bench/demo.py [--targets host cortex-m4 ...]   ->  bench/results/demo.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

TARGETS = ["host", "cortex-m4", "cortex-m7", "cortex-m33", "riscv32"]
KEYS = ["target", "ran_on", "precision", "steps", "loss_first_window_mean", "loss_last_window_mean", "accuracy_before",
        "accuracy_after", "peak_sram_bytes", "static_ram_bytes", "stack_high_water_bytes", "arena_bytes",
        "flash_bytes", "instructions_per_step", "instructions_per_prediction"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=TARGETS)
    parser.add_argument("--float", action="store_true", help="the float32 demo instead of int8 + QAS")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "demo.json"))
    args = parser.parse_args()
    rows = []
    for target in args.targets:
        cmd = [sys.executable, "-m", "tvm_tinytrain", "demo", "--target", target, "--json"]
        proc = subprocess.run(cmd + (["--float"] if args.float else []), capture_output=True, text=True, check=True)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append({k: result.get(k) for k in KEYS})
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
