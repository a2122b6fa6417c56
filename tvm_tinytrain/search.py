"""Which weights should train: an evolutionary search under a memory budget (Lin et al. 2022,
section 2.2), on the gains of the contribution analysis (`contribution.py`).

A scheme is the biases of the last k layers (k a point of the analysed bias curve), and per
analysed layer a ratio of its weight's input channels (0: frozen). Its value is the sum of
the measured gains (the paper's additive model); its cost is what the compiler plans for it
(`targets.project.estimate_memory`: the planner's arena, trainable weights, momenta, I/O and
stack), one compile per scheme, cached. The search keeps a population of the best feasible
schemes, breeds children by uniform crossover and mutation, and after every generation
saves its state (population, random generator, prices), so an interrupted search resumes
and ends where an uninterrupted one with the same seed would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .contribution import Contributions, JsonCache, Scheme
from .errors import TinyTrainError

POPULATION = 16
GENERATIONS = 10
MUTATION = 0.15   # per gene


@dataclass(frozen=True)
class Budget:
    ram_bytes: int
    flash_bytes: int | None = None

    def fits(self, price: dict) -> bool:
        return price["ram_bytes"] <= self.ram_bytes and (self.flash_bytes is None
                                                         or price["flash_bytes"] <= self.flash_bytes)


@dataclass
class SearchResult:
    best: Scheme
    gain: float
    price: dict
    candidates: list[dict] = field(default_factory=list)  # every priced scheme: key, gain, ram, fits
    generations: int = 0


class Pricer:
    """Prices of schemes ({"ram_bytes", "flash_bytes", ...}) by key, from `price_many`
    (which compiles; run in parallel by the caller), cached (`JsonCache`, in memory only
    without a path)."""

    def __init__(self, price_many, path: Path | None = None, fingerprint: str = ""):
        self.price_many = price_many
        self.cache = JsonCache(path, fingerprint, "prices")
        self.prices = self.cache.results

    def __call__(self, schemes: list[Scheme]) -> list[dict]:
        todo = [s for s in dict.fromkeys(schemes) if s.key not in self.prices]
        if todo:
            self.cache.update({s.key: price for s, price in zip(todo, self.price_many(todo))})
        return [self.prices[s.key] for s in schemes]


def pool_pricer(pool, spec, options, memory, stack_bytes: int, path: Path | None, fingerprint: str) -> Pricer:
    """A `Pricer` that prices in `pool` (`contribution.process_pool`) with `price_in_worker`."""
    from .contribution import map_in_pool

    def price_many(schemes):
        prices = {}
        map_in_pool(pool, price_in_worker, [(spec, s, options, memory, stack_bytes) for s in schemes],
                    lambda r: prices.__setitem__(*r))
        return [prices[s.key] for s in schemes]
    return Pricer(price_many, path, fingerprint)


def affordable_layers(pricer: Pricer, base_k: int, layers, budget: Budget) -> list[int]:
    """The layers whose weight, at the smallest analysed ratio, fits on top of the bias baseline."""
    from .contribution import RATIOS

    layers = list(layers)
    singles = [Scheme(base_k, ((i, min(RATIOS)),)) for i in layers]
    return [i for i, p in zip(layers, pricer(singles)) if budget.fits(p)]


def evolve(contrib: Contributions, pricer: Pricer, budget: Budget, *, population: int = POPULATION,
           generations: int = GENERATIONS, seed: int = 0, state_path: Path | None = None,
           fingerprint: str = "", progress: bool = False) -> SearchResult:
    """The feasible scheme with the largest summed gain among every one priced: those of
    `generations` generations, started from the bias-only schemes and the best that fit
    among those already priced (the cache: a search at another budget), and the cache's."""
    ks = sorted(contrib.bias)
    layers = sorted({i for i, _ in contrib.weight})
    ratios = {i: sorted(r for j, r in contrib.weight if j == i) for i in layers}
    rng = np.random.default_rng(seed)
    start, pop = 0, None
    state = JsonCache(state_path, f"{fingerprint}|seed {seed}|population {population}", "state")
    if state.results:
        start, pop = state.results["generation"], [Scheme.from_key(k) for k in state.results["population"]]
        rng.bit_generator.state = state.results["rng"]
    if pop is None:  # the bias-only schemes, the best already priced that fit (another budget's search), random
        priced = [Scheme.from_key(k) for k in sorted(pricer.prices) if contrib.covers(Scheme.from_key(k))]
        pop = list(dict.fromkeys([Scheme(k) for k in ks] + _rank(priced, contrib, pricer, budget, fitting=True)
                                 [:population // 2]))
        while len(pop) < population:
            pop.append(_random(rng, ks, layers, ratios))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=generations, initial=min(start, generations), desc="search", unit="generation",
                   disable=None)
    try:
        for gen in range(start, generations):
            ranked = _rank(pop, contrib, pricer, budget)
            parents = ranked[:max(2, population // 4)]
            children, seen = list(parents), {s.key for s in parents}
            tries = 0
            while len(children) < population and tries < 50 * population:
                tries += 1
                a, b = (parents[j] for j in rng.integers(len(parents), size=2))
                child = _mutate(rng, _crossover(rng, a, b, layers), ks, layers, ratios)
                if child.key not in seen:
                    seen.add(child.key)
                    children.append(child)
            pop = children
            state.update({"generation": gen + 1, "population": [s.key for s in pop], "rng": rng.bit_generator.state})
            if bar is not None:
                bar.update(1)
                best = ranked[0]
                bar.set_postfix_str(f"best +{100 * contrib.gain(best):.1f} pts, "
                                    f"{pricer.prices[best.key]['ram_bytes'] / 1024:.0f} KB")
    finally:
        if bar is not None:
            bar.close()
    _rank(pop, contrib, pricer, budget)  # the last generation priced
    # every scheme priced is a real candidate with its real price, whichever generation (or
    # search at another budget) made it: the best that fits
    ranked = _rank([Scheme.from_key(k) for k in sorted(pricer.prices) if contrib.covers(Scheme.from_key(k))], contrib, pricer,
                   budget, fitting=True)
    if not ranked:
        cheapest = min(pricer.prices.values(), key=lambda p: p["ram_bytes"])
        raise TinyTrainError(f"no scheme the search priced fits the budget: the cheapest needs "
                             f"{cheapest['ram_bytes']} bytes of RAM, the budget is {budget.ram_bytes}")
    best = ranked[0]
    candidates = [{"scheme": key, "gain": contrib.gain(Scheme.from_key(key)), "ram_bytes": p["ram_bytes"],
                   "flash_bytes": p["flash_bytes"], "fits": budget.fits(p)}
                  for key, p in sorted(pricer.prices.items()) if contrib.covers(Scheme.from_key(key))]
    return SearchResult(best, contrib.gain(best), pricer.prices[best.key], candidates, generations)


def _rank(pop: list[Scheme], contrib: Contributions, pricer: Pricer, budget: Budget,
          fitting: bool = False) -> list[Scheme]:
    """Feasible schemes by gain (ties: less RAM, then key), then (unless `fitting`) the
    infeasible by RAM."""
    prices = dict(zip((s.key for s in pop), pricer(pop)))

    def order(s: Scheme):
        p = prices[s.key]
        if budget.fits(p):
            return (0, -contrib.gain(s), p["ram_bytes"], s.key)
        return (1, 0.0, p["ram_bytes"], s.key)
    ranked = sorted(dict((s.key, s) for s in pop).values(), key=order)
    return [s for s in ranked if budget.fits(prices[s.key])] if fitting else ranked


def _random(rng, ks, layers, ratios) -> Scheme:
    p = min(1.0, 2.0 / max(1, len(layers)))
    weights = tuple((i, float(ratios[i][rng.integers(len(ratios[i]))])) for i in layers if rng.random() < p)
    return Scheme(int(ks[rng.integers(len(ks))]), weights)


def _crossover(rng, a: Scheme, b: Scheme, layers) -> Scheme:
    wa, wb = dict(a.weights), dict(b.weights)
    weights = {}
    for i in layers:
        pick = wa if rng.random() < 0.5 else wb
        if i in pick:
            weights[i] = pick[i]
    return Scheme(a.n_bias if rng.random() < 0.5 else b.n_bias, tuple(sorted(weights.items())))


def _mutate(rng, s: Scheme, ks, layers, ratios) -> Scheme:
    k = s.n_bias
    if rng.random() < MUTATION:
        j = ks.index(k) + (1 if rng.random() < 0.5 else -1)
        k = ks[min(max(j, 0), len(ks) - 1)]
    weights = dict(s.weights)
    for i in layers:
        if rng.random() < MUTATION / 2:
            options = [0.0, *ratios[i]]
            r = float(options[rng.integers(len(options))])
            if r > 0:
                weights[i] = r
            else:
                weights.pop(i, None)
    return Scheme(k, tuple(sorted(weights.items())))


def pareto_front(candidates: list[dict]) -> list[dict]:
    """The candidates no other beats on both gain and RAM, by RAM."""
    front, best = [], -np.inf
    for c in sorted(candidates, key=lambda c: (c["ram_bytes"], -c["gain"])):
        if c["gain"] > best:
            front.append(c)
            best = c["gain"]
    return front


def plot(result: SearchResult, budget: Budget, path: Path, title: str) -> None:
    """Accuracy gain against planned RAM: every priced candidate, the Pareto front, the pick."""
    from .profile import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    c = result.candidates
    ax.scatter([x["ram_bytes"] / 1024 for x in c], [100 * x["gain"] for x in c], s=10, alpha=0.5,
               c=["#4c72b0" if x["fits"] else "#999999" for x in c], label="candidates (grey: over budget)")
    front = pareto_front(c)
    ax.step([x["ram_bytes"] / 1024 for x in front], [100 * x["gain"] for x in front], where="post",
            color="#c44e52", label="Pareto front")
    ax.scatter([result.price["ram_bytes"] / 1024], [100 * result.gain], marker="*", s=200, color="#dd8452",
               zorder=3, label="chosen")
    ax.axvline(budget.ram_bytes / 1024, color="black", linestyle="--", linewidth=1, label="RAM budget")
    ax.set_xlabel("planned RAM (KB)")
    ax.set_ylabel("summed validation accuracy gain (points)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def price_in_worker(spec, scheme: Scheme, options, memory, stack_bytes: int) -> tuple[str, dict]:
    """What the compiler plans for `scheme` (`estimate_memory`), in a worker process."""
    import dataclasses

    from .contribution import model_of
    from .pipeline import build_training_program
    from .targets.project import estimate_memory

    program = dataclasses.replace(build_training_program(model_of(spec), scheme.config, options), memory=memory)
    est = estimate_memory(program, stack_bytes)
    return scheme.key, {"ram_bytes": est.ram_bytes, "flash_bytes": est.frozen_flash_bytes + est.trainable_bytes,
            "arena_bytes": est.arena_bytes, "trainable_bytes": est.trainable_bytes,
            "momentum_bytes": est.momentum_bytes, "peak_call": est.peak_call}
