"""Fuzzing the loaders (issue #10): every file a user hands tinytrain is untrusted.

A bounded, seeded subset of what `bench/fuzz.py` runs (generators and runner in
`tests/fuzzing.py`): a few hundred inputs over all seven kinds (zoo_bytes, zoo_struct,
pickle_hostile, onnx, config, npz, weights), plus every hand-written hostile pickle, each
loaded by the real entry point in a forked child with a timeout and resource limits. None
may crash, hang, die of a signal or run code from the file; each kind must both load some
inputs and refuse some with a clean `TinyTrainError`. The fuzz cases that found bugs are
kept as named regression cases. 599 inputs + 22 regression cases + 9 runner self-checks:
50 s with one worker on a 2-core machine (3 min when the machine is busy).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest

import fuzzing
from fuzzing import BAD_OUTCOMES, KINDS

SEED = 1
N_INPUTS = 300  # split between the kinds as in bench/fuzz.py
# every hand-written hostile pickle, plain and inside a torch.save zip
HOSTILE = [("pickle_hostile", SEED, i) for i in range(2 * len(fuzzing.hostile_pickles()))]
# every structural ONNX mutation once (index 3k+1 is the k-th)
ONNX_SWEEP = [("onnx", SEED, 3 * k + 1) for k in range(len(fuzzing._onnx_mutations()))]
# weights inputs that load cost seconds each (a torch import of the model): fewer of them here
CI_WEIGHTS = {**fuzzing.KIND_WEIGHTS, "weights": 0.05}
SUBSET = ([item for item in fuzzing.plan(N_INPUTS, SEED, weights=CI_WEIGHTS) if item[0] != "pickle_hostile"
           and not (item[0] == "onnx" and item[2] % 3 == 1)] + HOSTILE + ONNX_SWEEP)

# Fuzz inputs that found bugs: (KIND:SEED:INDEX as `python bench/fuzz.py --case` takes, the
# start of the generator's description of that input (so a changed generator fails loudly
# instead of silently testing something else), what it found on the code of 2026-11-30).
REGRESSIONS = [
    ("npz:0:1", "plain .npy named .npz", "TypeError: ndarray is not a context manager"),
    ("npz:0:3", "bytes mutated", "zipfile.BadZipFile (bad magic number) escaped"),
    ("npz:0:6", "empty file", "EOFError escaped"),
    ("npz:0:7", "NaN label", "ValueError in train_and_evaluate's int(y)"),
    ("npz:0:9", "Inf label", "OverflowError in int(y)"),
    ("npz:0:11", "not a zip", "BadZipFile"),
    ("npz:0:21", "npy header claims 10**12", "MemoryError (a 3.6 TiB allocation)"),
    ("npz:0:35", "0-d x_train", "through the CLI: TypeError, iteration over a 0-d array"),
    ("npz:0:37", "0-d y_train", "TypeError, iteration over a 0-d array"),
    ("npz:0:39", "0-d x_test", "TypeError, iteration over a 0-d array"),
    ("npz:0:46", "npy header garbage dict", "tokenize.TokenError"),
    ("npz:0:61", "npy header 100 KB", "a multi-line error message"),
    ("npz:0:78", "bytes mutated", "through the CLI: BadZipFile (bad CRC-32)"),
    ("weights:0:1", "os.system in data.pkl", "refused, but with a 20-line error message"),
    ("weights:0:4", "None", "TypeError from load_state_dict"),
    ("weights:0:6", "an int", "TypeError from load_state_dict"),
    ("weights:0:12", "nested dict", "RuntimeError (missing keys) from load_state_dict"),
    ("weights:0:14", "missing key", "RuntimeError (missing key) from load_state_dict"),
    ("weights:0:30", "meta tensor", "RuntimeError: Tensor.item() cannot be called on meta tensors"),
    ("config:0:3", "bytes mutated", "a YAML syntax error gave a multi-line error message"),
    ("onnx:0:167", "Tanh (unsupported); Pad reflect",
     "listing two unsupported ops gave a multi-line message (found with Sigmoid, since supported)"),
]


def _relu_chain_cli() -> fuzzing.Case:
    import onnx
    m = onnx.ModelProto()
    m.ParseFromString(fuzzing._onnx_base_bytes())
    dict(fuzzing._onnx_mutations())["2000 Relu chain"](m, None)
    return fuzzing.Case("onnx", 0, -1, "2000 Relu chain, tinytrain compile", {"model.onnx": m.SerializeToString()},
                        "model.onnx", mode="cli")


def _zoo_num_classes(n) -> fuzzing.Case:
    blob = fuzzing.torch_zip(fuzzing.zoo_pickle(fuzzing.synthetic_zoo()))
    return fuzzing.Case("zoo_struct", 0, -1, f"valid model, --num-classes {n}", {"model.pkl": blob}, "model.pkl",
                        mode="full", num_classes=n)


# Inputs built here (not by index), with what they found.
EXPLICIT = {
    "zoo_num_classes_2**31": (lambda: _zoo_num_classes(2 ** 31),
                              "MemoryError: a 96 GiB new classifier (--num-classes had no upper bound)"),
    "onnx_2000_relu_compile": (_relu_chain_cli,
                               "hang: compile time grows quadratically with an elementwise chain "
                               "(fuse_kernels.shrink_intermediates -> compute_inline); 400 ops take 70 s"),
}


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    r = fuzzing.Runner(tmp_path_factory.mktemp("fuzz"), timeout=20.0)
    yield r
    r.close()


@pytest.fixture(scope="module")
def results(runner):
    t0 = time.time()
    out = [fuzzing._run_one(runner, *item) for item in SUBSET]
    print(f"\nfuzz subset: {len(out)} inputs in {time.time() - t0:.0f} s: "
          f"{dict(Counter(r['outcome'] for r in out))}")
    return out


def _describe(res: dict) -> str:
    what = res.get("signal") or res.get("reason") or ""
    return (f"{res['case']} [{res.get('mode')}] {res['outcome']} {res.get('exc_type') or ''} {what}: "
            f"{(res.get('message') or '')[:160]!r} at {res.get('project_frame') or res.get('frame')} "
            f"| input: {res.get('desc', '')[:100]}")


@pytest.mark.parametrize("kind", KINDS)
def test_no_crash_hang_signal_or_code_execution(results, kind):
    mine = [r for r in results if r["kind"] == kind]
    assert mine
    bad = [r for r in mine if r["outcome"] in BAD_OUTCOMES or r["outcome"] == "generator_error"]
    counts = Counter(r["outcome"] for r in bad)
    assert not bad, (f"{len(bad)} of {len(mine)} {kind} inputs: {dict(counts)} "
                     f"(rerun one with: python bench/fuzz.py --case KIND:SEED:INDEX)\n"
                     + "\n".join(_describe(r) for r in bad[:15]))


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_loads_some_and_refuses_some(results, kind):
    counts = Counter(r["outcome"] for r in results if r["kind"] == kind)
    assert counts["clean_error"] > 0, counts
    if kind != "pickle_hostile":  # hostile pickles are all refused
        assert counts["loaded"] > 0, counts


def test_hostile_code_never_runs(results):
    """Every code-execution attempt is refused (a separate count: the worst outcome)."""
    ran = [r for r in results if r["outcome"] == "code_executed"]
    assert not ran, "\n".join(_describe(r) for r in ran)


@pytest.mark.parametrize("case_id, desc, found", REGRESSIONS, ids=[c for c, _, _ in REGRESSIONS])
def test_regression(runner, case_id, desc, found):
    kind, seed, index = case_id.split(":")
    case = fuzzing.generate(kind, int(seed), int(index))
    assert case.desc.startswith(desc), f"the generator changed: {case_id} is now {case.desc!r}"
    res = runner.run(case)
    assert res["outcome"] in ("loaded", "clean_error"), f"{found}\n{_describe(res)}"


@pytest.mark.parametrize("name", sorted(EXPLICIT))
def test_regression_explicit(runner, name):
    make, found = EXPLICIT[name]
    res = runner.run(make())
    assert res["outcome"] in ("loaded", "clean_error"), f"{found}\n{_describe(res)}"


# ------------------------------------------------------------------ the runner itself

class _Probe(fuzzing.Runner):
    """A runner whose 'loader' misbehaves on purpose, to check the classification."""

    def _execute(self, case, path):
        from tvm_tinytrain.errors import TinyTrainError
        what = case.desc
        if what == "hang":
            time.sleep(60)
        elif what == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif what == "crash":
            raise ValueError("boom")
        elif what == "code":
            open(fuzzing.SENTINEL, "w").close()
            raise TinyTrainError("refused (but too late)")
        elif what == "multiline":
            raise TinyTrainError("line one\nline two")
        elif what == "long":
            raise TinyTrainError("x" * (fuzzing.MAX_MESSAGE + 1))
        elif what == "memory":
            bytearray(8 << 30)
        elif what == "clean":
            raise TinyTrainError("a clean one-line message")
        return {}


@pytest.mark.parametrize("what, outcome", [
    ("ok", "loaded"), ("clean", "clean_error"), ("crash", "crash"), ("multiline", "crash"),
    ("long", "crash"), ("memory", "crash"), ("segv", "signal"), ("hang", "hang"),
    ("code", "code_executed"),
])
def test_runner_classifies(tmp_path, what, outcome):
    probe = _Probe(tmp_path, timeout=2.0)
    case = fuzzing.Case("config", 0, 0, what, {"x.yaml": b""}, "x.yaml")
    res = probe.run(case)
    assert res["outcome"] == outcome, res
    if what == "memory":
        assert res["exc_type"] == "MemoryError"
