"""`tinytrain search`: contribution analysis on the compiled step, the planner's price of a
scheme, and an evolutionary search that keeps the budget and resumes where it stopped."""

import dataclasses
import json
import textwrap

import numpy as np
import pytest
import yaml

from conftest import SPARSE, OPTIONS
from tvm_tinytrain import cli, contribution, demo, search
from tvm_tinytrain.contribution import Contributions, Run, Scheme, Setup, run_cache
from tvm_tinytrain.pipeline import TrainOptions, build_training_program
from tvm_tinytrain.reference import RelaxVMTrainer
from tvm_tinytrain.targets.boards import get_board
from tvm_tinytrain.targets.project import estimate_memory, write_project

SETUP = Setup(steps=60, seeds=(0, 1), options=TrainOptions(lr=0.05))


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """As a user gives them: a PyTorch factory file with pretrained weights (the demo's CNN on
    digits 0-4, a fresh 5-class head) and the new task's data (digits 5-9)."""
    import torch

    d = tmp_path_factory.mktemp("search")
    (d / "nets.py").write_text(textwrap.dedent("""
        import torch
        from tvm_tinytrain.demo import DigitsNet

        def digits():
            return DigitsNet(), torch.zeros(1, 1, 8, 8)
    """))
    old, new, test = demo.load_digits_split()
    torch.save(demo.pretrain(*old, epochs=5).state_dict(), d / "weights.pt")
    np.savez(d / "digits.npz", x_train=new[0][:240], y_train=new[1][:240], x_test=test[0][:60],
             y_test=test[1][:60])
    return d


@pytest.fixture(scope="module")
def spec(nets):
    return cli.ModelSpec(f"{nets}/nets.py:digits", weights=str(nets / "weights.pt"))


@pytest.fixture(scope="module")
def split(nets):
    d = np.load(nets / "digits.npz")
    return contribution.split_train(d["x_train"], d["y_train"])


def by_hand(model, run: Run, setup: Setup, train, val) -> float:
    """A fine-tuning run written out with the Relax VM trainer: the numbers the analysis must give."""
    trainer = RelaxVMTrainer(build_training_program(model, run.scheme.config, setup.options))
    rng = np.random.default_rng(run.seed)
    order = np.concatenate([rng.permutation(len(train[1])) for _ in range(-(-setup.steps // len(train[1])))])
    for i in order[:setup.steps]:
        trainer.step(train[0][i], int(train[1][i]))
    return float(np.mean([int(np.argmax(trainer.predict(x))) == y for x, y in zip(*val)]))


def test_estimate_is_what_the_compiled_project_plans(small_imported, tmp_path):
    """The search's price of a scheme (no kernels built to C) against `write_project`'s."""
    for config in (SPARSE, Scheme(3, ((0, 1.0), (1, 0.5))).config, Scheme(0).config):
        program = build_training_program(small_imported, config, OPTIONS)
        est = estimate_memory(program, 8192)
        _, built = write_project(program, tmp_path / "p", get_board("host"), stack_bytes=8192)
        for f in ("arena_bytes", "trainable_bytes", "momentum_bytes", "io_bytes", "stack_bytes", "ram_bytes",
                  "peak_call", "arena_at_peak", "frozen_flash_bytes"):
            assert getattr(est, f) == getattr(built, f), f


def test_analysis_runs_the_compiled_step(spec, split, tmp_path):
    """Runs in worker processes give exactly the accuracies of the Relax VM trainer run by
    hand; a second analysis reads them from the cache and trains nothing."""
    train, val = split
    runs = [Run(Scheme(0), 0), Run(Scheme(2, ((2, 0.5),)), 1)]
    cache = run_cache(tmp_path / "runs.json", "fp")
    with contribution.process_pool(2) as pool:
        got = contribution.run_all(spec, runs, SETUP, train, val, cache, pool=pool)
    model = spec.load()
    assert got == {r.key: by_hand(model, r, SETUP, train, val) for r in runs}
    assert len(set(got.values())) > 1  # the runs differ: the test would see a shared state

    class NoModel(cli.ModelSpec):
        def load(self):
            raise AssertionError("a cached run was computed again")
    again = contribution.run_all(NoModel(spec.model, spec.input_shape), runs, SETUP, train, val,
                                 run_cache(tmp_path / "runs.json", "fp"))
    assert again == got
    assert run_cache(tmp_path / "runs.json", "other setup").results == {}  # another fingerprint: nothing reused


def test_analysis_on_ray_gives_the_same_numbers(spec, split, tmp_path):
    pytest.importorskip("ray")
    train, val = split
    runs = [Run(Scheme(1), 0), Run(Scheme(0, ((1, 1.0),)), 0)]
    on_ray = contribution.run_all(spec, runs, SETUP, train, val, run_cache(tmp_path / "a.json", "fp"),
                                  ray_address="local")
    here = contribution.run_all(spec, runs, SETUP, train, val, run_cache(tmp_path / "b.json", "fp"))
    assert on_ray == here


def test_analysis_gains(spec, split, tmp_path):
    """The bias curve, its best point as the weights' baseline, and the gains as differences."""
    train, val = split
    setup = dataclasses.replace(SETUP, seeds=(0,))
    c = contribution.analyse(spec, 3, setup, train, val, run_cache(tmp_path / "r.json", "fp"),
                             layers_for=lambda k: [2], ratios=(0.5, 1.0))
    assert sorted(c.bias) == [0, 1, 2, 3] and c.baseline == c.bias[0]
    assert c.bias[c.base_k] == max(c.bias.values())
    assert sorted(c.weight) == [(2, 0.5), (2, 1.0)]
    assert c.gain(Scheme(1, ((2, 1.0),))) == pytest.approx(c.bias[1] - c.bias[0] + c.weight[(2, 1.0)]
                                                           - c.bias[c.base_k])


# ---------------------------------------------------------------------------------------
# The search itself, on made-up gains and prices: the mechanics, fast
# ---------------------------------------------------------------------------------------

def made_up(n_layers: int = 8):
    rng = np.random.default_rng(5)
    ratios = contribution.RATIOS
    bias = {k: 0.5 + 0.02 * k - 0.001 * k * k for k in range(n_layers + 1)}
    weight = {(i, r): bias[3] + rng.uniform(0, 0.05) * r ** 0.5 * (i + 1) / n_layers
              for i in range(n_layers) for r in ratios}
    contrib = Contributions(n_layers, 3, bias[0], bias, weight)

    def price_many(schemes):
        return [{"ram_bytes": 2000 + 1000 * s.n_bias + sum(int(4000 * r * (i + 1)) for i, r in s.weights),
                 "flash_bytes": 0} for s in schemes]
    return contrib, price_many


def test_search_keeps_the_budget_and_beats_bias_only():
    contrib, price_many = made_up()
    budget = search.Budget(30_000)
    result = search.evolve(contrib, search.Pricer(price_many), budget, population=12, generations=15, seed=1)
    assert result.price["ram_bytes"] <= budget.ram_bytes
    best_bias_only = max(contrib.gain(Scheme(k)) for k in contrib.bias if 2000 + 1000 * k <= budget.ram_bytes)
    assert result.gain > best_bias_only
    front = search.pareto_front(result.candidates)
    assert [c["ram_bytes"] for c in front] == sorted(c["ram_bytes"] for c in front)
    assert all(a["gain"] < b["gain"] for a, b in zip(front, front[1:]))
    # a larger budget, sharing the prices (as the CLI's cache does), never ends worse
    shared = search.Pricer(price_many)
    small = search.evolve(contrib, shared, search.Budget(20_000), population=6, generations=3, seed=1)
    large = search.evolve(contrib, shared, search.Budget(40_000), population=6, generations=3, seed=2)
    assert small.price["ram_bytes"] <= 20_000 and large.gain >= small.gain
    with pytest.raises(Exception, match="no scheme the search priced fits"):
        search.evolve(contrib, search.Pricer(price_many), search.Budget(500), population=4, generations=2)


def test_interrupted_search_resumes_to_the_same_result(tmp_path):
    contrib, price_many = made_up()
    budget = search.Budget(30_000)
    kw = dict(population=10, generations=8, seed=3, fingerprint="fp")
    whole = search.evolve(contrib, search.Pricer(price_many), budget, state_path=tmp_path / "a.json", **kw)

    calls = []

    def dies_in_generation_5(schemes):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return price_many(schemes)
    with pytest.raises(KeyboardInterrupt):
        search.evolve(contrib, search.Pricer(dies_in_generation_5, tmp_path / "p.json", "fp"), budget,
                      state_path=tmp_path / "b.json", **kw)
    assert json.loads((tmp_path / "b.json").read_text())["state"]["generation"] == 4
    resumed = search.evolve(contrib, search.Pricer(price_many, tmp_path / "p.json", "fp"), budget,
                            state_path=tmp_path / "b.json", **kw)
    assert (resumed.best, resumed.gain, resumed.price) == (whole.best, whole.gain, whole.price)
    other_seed = search.evolve(contrib, search.Pricer(price_many), budget, state_path=tmp_path / "b.json",
                               **{**kw, "seed": 4})  # the state of seed 3 is not used for seed 4
    assert other_seed.generations == 8


# ---------------------------------------------------------------------------------------
# The command, end to end on a float PyTorch model
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def searched(nets, spec, tmp_path_factory):
    """`tinytrain search` on the float model, with a budget between the cheapest scheme (the
    classifier alone) and the dearest: (its arguments, RAM budget in KB, the config written)."""
    out = tmp_path_factory.mktemp("searched") / "scheme.yaml"
    args = ["search", spec.model, "--weights", spec.weights, "--data", str(nets / "digits.npz"), "--target", "host",
            "--lr", "0.05", "--steps", "60", "--population", "6", "--generations", "3", "--workers", "2",
            "-o", str(out), "--plot", str(out.with_suffix(".png"))]
    cheapest = estimate_memory(build_training_program(spec.load(), Scheme(0).config, TrainOptions(lr=0.05)))
    ram_kb = cheapest.ram_bytes // 1024 + 3
    assert cli.main([*args, "--ram-kb", str(ram_kb)]) == 0
    return [*args, "--ram-kb", str(ram_kb)], ram_kb, out


def test_search_command_writes_a_config_that_fits(searched, spec, tmp_path):
    _, ram_kb, out = searched
    report = json.loads(out.with_suffix(".json").read_text())
    chosen = report["chosen"]
    assert chosen["compiled"]["ram_bytes"] == chosen["estimated"]["ram_bytes"] <= ram_kb * 1024
    assert chosen["compiled"]["flash_bytes"] == chosen["estimated"]["flash_bytes"]
    assert all(c["ram_bytes"] <= ram_kb * 1024 for c in report["candidates"] if c["fits"])
    assert any(not c["fits"] for c in report["candidates"])  # the budget binds
    assert out.with_suffix(".png").stat().st_size > 0
    config = yaml.safe_load(out.read_text())
    assert config == chosen["config"]
    # the config compiles within the budget through `compile --config`: the project the search checked
    assert cli.main(["compile", spec.model, "--weights", spec.weights, "--config", str(out), "--lr", "0.05",
                     "--target", "host", "--ram-kb", str(ram_kb), "-o", str(tmp_path / "p")]) == 0
    compiled = json.loads((tmp_path / "p" / "memory_report.json").read_text())
    assert compiled == json.loads((out.with_name("scheme.work") / "project" / "memory_report.json").read_text())


def test_search_command_resumes_from_its_work_dir(searched):
    """A re-run trains and prices nothing again and writes the same config."""
    args, _, out = searched
    work = out.with_name("scheme.work")
    first = out.read_text()
    caches = [work / "runs.json", work / "prices.json"]
    mtimes = [p.stat().st_mtime_ns for p in caches]
    assert cli.main(args) == 0
    assert out.read_text() == first
    assert [p.stat().st_mtime_ns for p in caches] == mtimes


@pytest.mark.slow
def test_searched_scheme_trains_on_the_board(searched, spec, nets, tmp_path, capsys):
    _, ram_kb, out = searched
    assert cli.main(["compile", spec.model, "--weights", spec.weights, "--config", str(out), "--lr", "0.05",
                     "--target", "cortex-m4", "--ram-kb", str(ram_kb), "-o", str(tmp_path / "p")]) == 0
    d = np.load(nets / "digits.npz")
    np.savez(tmp_path / "few.npz", x_train=d["x_train"][:30], y_train=d["y_train"][:30], x_test=d["x_test"][:10],
             y_test=d["y_test"][:10])
    capsys.readouterr()
    assert cli.main(["run", str(tmp_path / "p"), "--data", str(tmp_path / "few.npz"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 30 and np.isfinite(result["loss_last"])
    assert result["peak_sram_bytes"] <= ram_kb * 1024


@pytest.mark.slow
def test_search_on_a_zoo_model(zoo_dir, tmp_path):
    """The same command on MCUNet-5FPS (int8, QAS), cut short: a few steps per run, the bias
    curve at 3 points, the last two layers' weights; its scheme compiles within the budget."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    up = F.interpolate(torch.from_numpy(digits.images[:48, None].astype(np.float32)), size=(128, 128),
                       mode="bilinear", align_corners=False)[:, 0].numpy()
    x = np.repeat((np.clip(np.rint(up / 16 * 255) - 128, -128, 127))[:, None], 3, axis=1).astype(np.float32)
    y = digits.target[:48]
    np.savez(tmp_path / "d.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    out = tmp_path / "scheme.yaml"
    assert cli.main(["search", str(zoo_dir / "mcunet-5fps.pkl"), "--num-classes", "10", "--data",
                     str(tmp_path / "d.npz"), "--target", "cortex-m7", "--ram-kb", "160", "--steps", "10",
                     "--bias-points", "2", "--last-layers", "2", "--population", "4", "--generations", "2",
                     "--workers", "2", "-o", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert sorted(report["contributions"]["bias"]) == ["0", "10", "42"]
    assert report["chosen"]["compiled"]["ram_bytes"] == report["chosen"]["estimated"]["ram_bytes"] <= 160 * 1024
    assert yaml.safe_load(out.read_text()) == report["chosen"]["config"]


def test_search_refuses_a_budget_nothing_fits_before_any_analysis(nets, spec, tmp_path, capsys):
    assert cli.main(["search", spec.model, "--weights", spec.weights, "--data", str(nets / "digits.npz"),
                     "--target", "host", "--ram-kb", "4", "--workers", "1", "-o", str(tmp_path / "s.yaml")]) == 1
    assert "even the classifier alone needs" in capsys.readouterr().err
    assert not (tmp_path / "s.work" / "runs.json").exists() and not (tmp_path / "s.yaml").exists()
