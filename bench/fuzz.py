"""Benchmark: fuzz every file tinytrain reads (issue #10) and count what happens.

What is measured: N generated inputs (default 10,000), split between the seven input kinds
of `tests/fuzzing.py` (zoo_bytes 20 %, zoo_struct 20 %, pickle_hostile 10 %, onnx 15 %,
config 15 %, npz 10 %, weights 10 %), each a deterministic function of (kind, seed, index).
Each input is written to a fresh directory and loaded by the real entry point the CLI uses
(`load_zoo_model`, a few through `cli.load_model` / `cli.main`; `import_onnx`;
`SparseUpdateConfig.from_file` + `resolve`; the npz loader + `train_and_evaluate` up to the
C build; `cli.load_model` with `--weights`) in a child forked from a worker that imported
everything once, under RLIMIT_AS (4 GiB), RLIMIT_CPU (timeout + 5 s) and a wall-clock
timeout (20 s). Outcomes: loaded, clean_error (TinyTrainError, one line of at most 2,000
characters), crash (any other exception, an unbounded message or a broken CLI contract),
hang, signal, code_executed (a hostile payload's sentinel file exists afterwards).

    python bench/fuzz.py [--n 10000] [--seed 0] [--workers 1] [--timeout 20]
        -> bench/results/fuzz.json (also printed): counts overall and per kind, the first
           examples of each bad outcome, the distinct findings, and what was run.
    python bench/fuzz.py --case onnx:0:42      # rerun one input, print its full result
    python bench/fuzz.py --case onnx:0:42 --dump DIR   # write that input's files to DIR
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fuzzing  # noqa: E402  (tests/fuzzing.py: the generators and the runner)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (each forks a child per input)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per input before it counts as a hang")
    parser.add_argument("--mem-gib", type=float, default=4.0, help="RLIMIT_AS of each child (GiB)")
    parser.add_argument("--kinds", nargs="+", default=list(fuzzing.KINDS), choices=fuzzing.KINDS)
    parser.add_argument("--case", help="run one input KIND:SEED:INDEX and print its result")
    parser.add_argument("--dump", help="with --case: write the input's files to this directory")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "fuzz.json"))
    parser.add_argument("--jsonl", help="also write every input's result, one JSON object a line, here")
    args = parser.parse_args()
    runner_kwargs = dict(timeout=args.timeout, mem_bytes=int(args.mem_gib * (1 << 30)))

    if args.case:
        kind, seed, index = args.case.split(":")
        case = fuzzing.generate(kind, int(seed), int(index))
        if args.dump:
            Path(args.dump).mkdir(parents=True, exist_ok=True)
            for name, data in case.files.items():
                (Path(args.dump) / name).write_bytes(data)
        runner = fuzzing.Runner(**runner_kwargs)
        try:
            print(json.dumps(runner.run(case), indent=1))
        finally:
            runner.close()
        return

    from tqdm import tqdm

    items = fuzzing.plan(args.n, args.seed, kinds=tuple(args.kinds))
    t0 = time.time()
    with tqdm(total=len(items), unit="input", desc="fuzz", smoothing=0.05) as bar:
        bad = {o: 0 for o in fuzzing.BAD_OUTCOMES}

        def on_result(res):
            if res["outcome"] in bad:
                bad[res["outcome"]] += 1
                bar.set_postfix({k: v for k, v in bad.items() if v}, refresh=False)

        import tempfile
        with tempfile.TemporaryDirectory(prefix="tinytrain-fuzz-") as work:
            results = fuzzing.run_many(items, workers=args.workers, progress=bar.update,
                                       runner_kwargs={**runner_kwargs, "workdir": work}, on_result=on_result)
    duration = time.time() - t0
    if args.jsonl:
        Path(args.jsonl).write_text("".join(json.dumps(r, default=str) + "\n" for r in results))
    probe = fuzzing.Runner(**runner_kwargs)
    settings = probe.settings()
    probe.close()
    summary = fuzzing.summarize(results)
    slowest = sorted(results, key=lambda r: -r.get("seconds", 0))[:5]
    report = {
        "what": "fuzzing tinytrain's file loaders (tests/fuzzing.py): outcome counts per input kind",
        "total_inputs": summary["total_inputs"],
        "outcomes": summary["outcomes"],
        "per_kind": summary["per_kind"],
        "run": {
            "seed": args.seed, "n": args.n, "kinds": args.kinds, "workers": args.workers,
            "kind_weights": fuzzing.KIND_WEIGHTS, **settings,
            "duration_s": round(duration, 1), "inputs_per_s": round(len(results) / max(duration, 1e-9), 2),
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "examples": summary["examples"],
        "distinct_findings": summary["distinct_findings"],
        "loaded_though_invalid": summary["loaded_though_invalid"],
        "slowest_inputs": [{k: r.get(k) for k in ("case", "outcome", "seconds", "desc")} for r in slowest],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=1, default=str)
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
