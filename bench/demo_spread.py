"""Benchmark: how much the digits demo's accuracies move with the host's pretraining.

    python bench/demo_spread.py [--seeds 0 1 2]   ->  bench/results/demo_spread.json (~1 min)

What is measured. The demo pretrains its network on the host with PyTorch before the
device learns; the device part is bit-exact on every target, the pretraining is not: torch's
CPU kernels round differently by instruction set and library (oneDNN or its own). Each row
runs the whole host demo (`tinytrain demo --target host`, int8 + QAS) in a fresh process
with torch's oneDNN kernels on (the default) and off, which changes only how the pretraining's
convolutions round, for each seed (`demo.SEED`, which also draws the 5-9 train/test split).
The on/off pairs give the spread another machine's torch may show; the seeds give the
spread of the task itself.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

RUN = """
import contextlib, io, json, sys
import torch
from tvm_tinytrain import cli, demo
demo.SEED = {seed}
torch.backends.mkldnn.enabled = {onednn}
out = io.StringIO()
with contextlib.redirect_stdout(out):
    cli.main(["demo", "--target", "host", "--json", "--out", {out!r}])
print(out.getvalue().strip().splitlines()[-1])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "demo_spread.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for onednn in (True, False):
                code = RUN.format(seed=seed, onednn=onednn, out=f"{tmp}/p{seed}{int(onednn)}")
                proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append({"seed": seed, "onednn": onednn, "accuracy_before": result["accuracy_before"],
                             "accuracy_after": result["accuracy_after"]})
                print(json.dumps(rows[-1]), flush=True)
    report = {"what": __doc__.split("What is measured. ")[1].strip(), "rows": rows}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
