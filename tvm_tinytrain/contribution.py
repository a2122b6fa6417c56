"""Contribution analysis (Lin et al. 2022, section 2.2): what each part of a sparse update buys.

Every number comes from short fine-tuning runs of the project's own compiled training step
(`RelaxVMTrainer`, the Relax VM reference of the generated C) on the user's data, scored by
accuracy on a validation split held out of `x_train`:

* the baseline: the classifier alone;
* bias curve: the biases of the last k layers (k in `bias_ks`) on top of the classifier;
* weight gains: on top of the bias baseline (`base_k` biases), the weights of one layer at
  each ratio of its input channels.

A run is independent of every other: they go to a process pool of every local core, or to
a Ray cluster (`ray_address`, Ray being an optional extra), and each result is written to a
cache file as it arrives, keyed by everything that makes the run, so an interrupted analysis
resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .config import SparseUpdateConfig
from .errors import TinyTrainError
from .pipeline import TrainOptions

RATIOS = (0.125, 0.25, 0.5, 1.0)
VALIDATION_FRACTION = 0.25


@dataclass(frozen=True)
class Scheme:
    """A sparse update in the analysis' terms: the classifier, the biases of the last
    `n_bias` layers and the weights of `weights` ((layer index, ratio > 0), by layer)."""

    n_bias: int
    weights: tuple[tuple[int, float], ...] = ()

    @property
    def key(self) -> str:
        return f"bias{self.n_bias}|" + ",".join(f"{i}@{r:g}" for i, r in self.weights)

    @classmethod
    def from_key(cls, key: str) -> "Scheme":
        bias, _, weights = key.partition("|")
        pairs = [w.split("@") for w in weights.split(",") if w]
        return cls(int(bias[4:]), tuple((int(i), float(r)) for i, r in pairs))

    @classmethod
    def from_config(cls, config: SparseUpdateConfig) -> "Scheme":
        return cls(config.n_bias_update, tuple(zip(config.manual_weight_idx, config.weight_update_ratio)))

    def config_dict(self) -> dict:
        """As `tinytrain compile --config` reads it."""
        return {"n_bias_update": self.n_bias, "manual_weight_idx": [i for i, _ in self.weights],
                "weight_update_ratio": [r for _, r in self.weights]}

    @property
    def config(self) -> SparseUpdateConfig:
        return SparseUpdateConfig.from_dict(self.config_dict())


@dataclass(frozen=True)
class Run:
    """One fine-tuning run of a scheme, with one seed (the sample order)."""

    scheme: Scheme
    seed: int = 0

    @property
    def key(self) -> str:
        return f"{self.scheme.key}|seed{self.seed}"


@dataclass(frozen=True)
class Setup:
    """How every run trains and is scored."""

    steps: int = 300
    seeds: tuple[int, ...] = (0,)
    options: TrainOptions = TrainOptions()


@dataclass
class Contributions:
    """Validation accuracies (fractions) and the gains a search adds up."""

    n_layers: int                          # layers before the classifier
    base_k: int                            # the bias baseline the weight gains are measured on
    baseline: float                        # classifier only
    bias: dict[int, float]                 # k -> accuracy with the last k biases
    weight: dict[tuple[int, float], float] = field(default_factory=dict)  # (layer, ratio) -> accuracy

    def bias_gain(self, k: int) -> float:
        return self.bias[k] - self.baseline

    def weight_gain(self, layer: int, ratio: float) -> float:
        return self.weight[(layer, ratio)] - self.bias[self.base_k]

    def gain(self, scheme: Scheme) -> float:
        """The paper's additive model: the bias curve's gain plus each weight's."""
        return self.bias_gain(scheme.n_bias) + sum(self.weight_gain(i, r) for i, r in scheme.weights)

    def covers(self, scheme: Scheme) -> bool:
        """Whether every part of `scheme` was analysed (its gain is known)."""
        return scheme.n_bias in self.bias and all(w in self.weight for w in scheme.weights)

    def to_json(self) -> dict:
        return {"n_layers": self.n_layers, "base_k": self.base_k, "baseline": self.baseline,
                "bias": {str(k): v for k, v in sorted(self.bias.items())},
                "weight": [{"layer": i, "ratio": r, "accuracy": a, "gain": self.weight_gain(i, r)}
                           for (i, r), a in sorted(self.weight.items())]}


def split_train(x: np.ndarray, y: np.ndarray, seed: int = 0):
    """(x_train, y_train), (x_val, y_val): a stratified hold-out of VALIDATION_FRACTION when
    every class has two samples, else a plain seeded one."""
    from sklearn.model_selection import train_test_split

    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 else None
    idx = np.arange(len(y))
    tr, va = train_test_split(idx, test_size=VALIDATION_FRACTION, random_state=seed, stratify=stratify)
    return (x[tr], y[tr]), (x[va], y[va])


def fine_tune(model, run: Run, setup: Setup, train, val) -> float:
    """Validation accuracy after `setup.steps` batch-1 steps of the compiled step (0 if the
    loss diverges, as `bench/qas.py` scores it)."""
    from .pipeline import build_training_program
    from .reference import RelaxVMTrainer

    trainer = RelaxVMTrainer(build_training_program(model, run.scheme.config, setup.options))
    x, y = train
    rng = np.random.default_rng(run.seed)
    order = np.concatenate([rng.permutation(len(y)) for _ in range(-(-setup.steps // len(y)))])[:setup.steps]
    try:
        for i in order:
            trainer.step(x[i], int(y[i]))
    except TinyTrainError:  # the loss became NaN / Inf
        return 0.0
    xv, yv = val
    predicted = [int(np.argmax(trainer.predict(s))) for s in xv]
    return float(np.mean(np.array(predicted) == yv))


# ---------------------------------------------------------------------------------------
# Running many: a process pool or Ray, and the cache
# ---------------------------------------------------------------------------------------

_MODELS: dict = {}


def model_of(spec):
    """`spec.load()`, once per process (a worker runs many runs of one model)."""
    if spec not in _MODELS:
        _MODELS[spec] = spec.load()
    return _MODELS[spec]


def _run_in_worker(spec, run: Run, setup: Setup, train, val) -> tuple[str, float]:
    return run.key, fine_tune(model_of(spec), run, setup, train, val)


class JsonCache:
    """Results by key in a JSON file, under a fingerprint of what makes them: a file of
    another fingerprint, or one that cannot be read, is an empty cache. Each `update`
    rewrites the file atomically, so an interrupted run keeps every result it had."""

    def __init__(self, path: Path | None, fingerprint: str, field: str = "results"):
        self.path, self.fingerprint, self.field = (Path(path) if path else None), fingerprint, field
        self.results: dict = {}
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                data = None
            if isinstance(data, dict) and data.get("fingerprint") == fingerprint \
                    and isinstance(data.get(field), dict):
                self.results = data[field]

    def update(self, results: dict) -> None:
        self.results.update(results)
        if self.path is not None:
            write_json(self.path, {"fingerprint": self.fingerprint, self.field: self.results})


def write_json(path: Path, data) -> None:
    """`data` to `path` by a rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def run_cache(path: Path | None, fingerprint: str) -> JsonCache:
    """Validation accuracy by run key."""
    return JsonCache(path, fingerprint, "runs")


def run_all(spec, runs: list[Run], setup: Setup, train, val, cache: JsonCache, *, pool=None,
            ray_address: str | None = None, progress: bool = False) -> dict[str, float]:
    """Accuracy of every run, the cached ones read, the others computed on Ray, in `pool`
    (a `process_pool`), or one after the other in this process."""
    todo = [r for r in dict.fromkeys(runs) if r.key not in cache.results]
    bar = None
    if progress and todo:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc="contribution analysis", unit="run", disable=None)

    def done(result):
        cache.update(dict([result]))
        if bar is not None:
            bar.update(1)
    try:
        if ray_address:
            _run_on_ray(ray_address, spec, todo, setup, train, val, done)
        else:
            map_in_pool(pool, _run_in_worker, [(spec, r, setup, train, val) for r in todo], done)
    finally:
        if bar is not None:
            bar.close()
    return {r.key: cache.results[r.key] for r in runs}


def process_pool(workers: int | None = None):
    """Worker processes for runs and prices (every core by default); a context manager."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: TVM's runtime threads do not survive a fork
    return ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1,
                               mp_context=multiprocessing.get_context("spawn"))


def map_in_pool(pool, fn, calls: list[tuple], on_result) -> None:
    """`fn(*args)` for every args in `calls`, in `pool` (or here if None), `on_result` called
    in this process with each result as it comes."""
    from concurrent.futures import as_completed

    if pool is None:
        for args in calls:
            on_result(fn(*args))
        return
    for future in as_completed([pool.submit(fn, *args) for args in calls]):
        on_result(future.result())


def _run_on_ray(address, spec, todo, setup, train, val, on_result) -> None:
    try:
        import ray
    except ImportError:
        raise TinyTrainError("--ray needs Ray: pip install 'tvm-tinytrain[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(_run_in_worker)
        train_ref, val_ref = ray.put(train), ray.put(val)
        pending = [remote.remote(spec, r, setup, train_ref, val_ref) for r in todo]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            on_result(ray.get(done[0]))
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------------------------------
# The analysis
# ---------------------------------------------------------------------------------------

def bias_ks(n_layers: int, points: int = 8) -> list[int]:
    """The k of the bias curve: 0, n_layers and up to `points` steps between, denser at the
    output end (the paper's curve rises fastest over the last layers)."""
    ks = {0, n_layers}
    for j in range(1, points):
        ks.add(round(n_layers * (j / points) ** 2))
    return sorted(ks)


def fingerprint(spec, setup: Setup, train, val) -> str:
    """What makes every run's number: the model (its spec and files), the data, the setup."""
    h = hashlib.sha256()
    h.update(repr(spec).encode())
    for f in spec.files():
        h.update(Path(f).read_bytes())
    for a in (*train, *val):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(json.dumps(asdict(setup), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def analyse(spec, n_layers: int, setup: Setup, train, val, cache: JsonCache, *, layers_for=None,
            ks: list[int] | None = None, ratios=RATIOS, pool=None,
            ray_address: str | None = None, progress: bool = False) -> Contributions:
    """The bias curve over `ks` (with 0), then the weight gain of each layer at each ratio on
    top of the best point of the bias curve (`base_k`; ties: fewer biases). `layers_for(base_k)`
    says which layers to analyse (default: all; `tinytrain search` leaves out those that
    cannot fit the budget). Accuracies are means over `setup.seeds`."""
    ks = sorted(set(ks if ks is not None else bias_ks(n_layers)) | {0})
    seeds = setup.seeds

    def mean(results, scheme):
        return float(np.mean([results[Run(scheme, s).key] for s in seeds]))

    def run(schemes):
        runs = [Run(scheme, s) for scheme in schemes for s in seeds]
        results = run_all(spec, runs, setup, train, val, cache, pool=pool, ray_address=ray_address,
                          progress=progress)
        return {scheme: mean(results, scheme) for scheme in schemes}

    bias = {s.n_bias: a for s, a in run([Scheme(k) for k in ks]).items()}
    base_k = max(ks, key=lambda k: (bias[k], -k))
    layers = list(range(n_layers)) if layers_for is None else list(layers_for(base_k))
    weight = {s.weights[0]: a for s, a in run([Scheme(base_k, ((i, r),)) for i in layers for r in ratios]).items()}
    return Contributions(n_layers, base_k, bias[0], bias, weight)
