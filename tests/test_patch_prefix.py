"""PatchFrozenPrefix: the frozen early stage computed tile by tile changes no number.

References: the unpatched program on the Relax VM (every cut and several grids, uneven
tiles and borders included), and the host C build without the pass."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from tvm_tinytrain.config import SparseUpdateConfig
from tvm_tinytrain.frontend.torch_frontend import import_torch
from tvm_tinytrain.passes import PatchFrozenPrefix
from tvm_tinytrain.passes.patch_frozen_prefix import prefix_cuts, tile_regions
from tvm_tinytrain.pipeline import MemoryOptions, TrainOptions, build_training_program
from tvm_tinytrain.quantize import post_training_quantize
from tvm_tinytrain.reference import RelaxVMTrainer
from tvm_tinytrain.targets.lower import join_split, lower, memory_passes

INPUT_SHAPE = (1, 2, 127, 129)  # odd sizes: the tiles are uneven and the strided convs end early


class PatchNet(torch.nn.Module):
    """A stride-2 stem, a 5x5 depthwise conv with a residual add, a strided conv, then the
    trained layers: every kind of op the prefix may hold. The stem's output is larger than
    the sample, as in MCUNet: the step peaks in the prefix."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(2, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(12, 12, 5, padding=2, groups=12), nn.BatchNorm2d(12), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(12, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 8, 1)
        self.classifier = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        x = self.down(x + self.dw(x))
        return self.classifier(self.head(x).mean((2, 3)))


def samples(n, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, *INPUT_SHAPE[1:])).astype(np.float32), rng.integers(0, 4, n)


def _program(quantized: bool):
    torch.manual_seed(3)
    net = PatchNet().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    imported = import_torch(net, torch.zeros(INPUT_SHAPE))
    if quantized:
        imported = post_training_quantize(imported, samples(32, seed=5)[0])
    config = SparseUpdateConfig(n_bias_update=1, manual_weight_idx=(3,), weight_update_ratio=(1.0,))
    return build_training_program(imported, config, TrainOptions(lr=0.05, momentum=0.9))


@pytest.fixture(scope="module", params=[False, True], ids=["float", "int8"])
def program(request):
    return _program(request.param)


def _run(program, steps=2):
    vm = RelaxVMTrainer(program)
    xs, ys = samples(steps, seed=7)
    losses = [vm.step(x, int(y)) for x, y in zip(xs, ys)]
    return losses, {n: vm.param(n) for n in program.params}, vm.predict(xs[0])


def _assert_same(a, b):
    assert a[0] == b[0]
    for name in a[1]:
        np.testing.assert_array_equal(a[1][name], b[1][name], err_msg=name)
    np.testing.assert_array_equal(a[2], b[2])


def test_the_frozen_prefix_has_cuts_up_to_the_trained_layers(program):
    names = [c.name for c in prefix_cuts(program.mod["train_step"])]
    assert names, "no cut"
    # the last cut is the strided conv's output: the 1x1 conv after it trains
    cuts = prefix_cuts(program.mod["train_step"])
    assert cuts[-1].shape[2:] == (32, 33)
    assert {c.shape[2:] for c in cuts} <= {(127, 129), (64, 65), (32, 33)}  # (127, 129): quantizing the sample


def test_cuts_and_grids_change_no_number(program):
    """Cuts at each resolution of the prefix, each with another grid (even, uneven, one
    row of tiles): losses, weights and logits as unpatched."""
    reference = _run(program)
    cuts = prefix_cuts(program.mod["train_step"])
    stem = [c for c in cuts if c.shape[2:] == (64, 65)]
    for cut, (rows, cols) in [(cuts[0], (2, 3)), (stem[0], (4, 3)), (stem[-1], (3, 2)), (cuts[-1], (1, 4))]:
        tiling = {"train_step": (cut.name, rows, cols), "main": (cut.name, rows, cols)}
        mod = PatchFrozenPrefix(tiling)(program.mod)
        _assert_same(_run(dataclasses.replace(program, mod=mod)), reference)


def test_a_tile_computes_its_receptive_field_only(program):
    """3x3 tiles over the 64x65 stem output (after the residual add): the corner tile is
    rows and columns 0-21; with the 5x5 depthwise conv's halo of 2 the stem computes rows
    0-23, which read sample rows 0-47 (stride 2, kernel 3, padding 1). Every conv keeps its
    own padding, so the depthwise conv also computes rows 22-23 from the zeros past the
    tile's inner edge: computed, never written into the cut."""
    cut = [c for c in prefix_cuts(program.mod["train_step"]) if c.shape[2:] == (64, 65)][-1]  # after the add
    corner = tile_regions(program.mod["train_step"], cut, [(3, 3)])[(3, 3)][0]
    assert (corner[cut.name].r0, corner[cut.name].r1, corner[cut.name].c0, corner[cut.name].c1) == (0, 24, 0, 24)
    x = program.mod["train_step"].params[0].name
    assert (corner[x].r0, corner[x].r1) == (0, 48) and (corner[x].c0, corner[x].c1) == (0, 48)


@pytest.fixture
def cheap_halos(monkeypatch):
    """This small net's halos are a larger share of its MACs than MCUNet's (5x5 depthwise
    on 64 rows): let the grid search accept them."""
    from tvm_tinytrain.targets import tiling

    monkeypatch.setattr(tiling, "MAX_HALO_MACS", 0.25)


def test_the_chosen_grid_lowers_the_peak_and_changes_no_number(program, cheap_halos):
    """memory_passes picks the grid with the planner; the lowered module computes as the
    one without the pass."""
    on, off = (dataclasses.replace(program, memory=dataclasses.replace(MemoryOptions(), patch_prefix=flag))
               for flag in (True, False))
    low_on, low_off = lower(on), lower(off)
    assert "train_step" in low_on.patched_prefix

    from tvm_tinytrain.planner import plan
    from tvm_tinytrain.targets.c_emitter import schedule_buffers

    arena = [plan(schedule_buffers(low.schedules["train_step"])).arena_bytes for low in (low_on, low_off)]
    assert arena[0] < arena[1]
    macs = [sum(c.macs for c in low.schedules["train_step"].calls) for low in (low_on, low_off)]
    assert macs[0] <= 1.25 * macs[1]  # the halos' cost is bounded

    runs = []
    for p in (on, off):
        mod, values, split = memory_passes(p)
        vm = RelaxVMTrainer(dataclasses.replace(p, mod=mod, params=values))
        xs, ys = samples(2, seed=8)
        losses = [vm.step(x, int(y)) for x, y in zip(xs, ys)]
        runs.append((losses, join_split({n: vm.param(n) for n in values}, split), vm.predict(xs[0])))
    _assert_same(runs[0], runs[1])


def test_the_patched_c_program_trains_as_the_unpatched_one(tmp_path, cheap_halos):
    """int8, host build: the tiles' kernels (per-tile padding, slices of the sample, the
    writes into the cut) give the losses and weights of the unpatched build."""
    from tvm_tinytrain.session import run_stream
    from tvm_tinytrain.targets.boards import get_board
    from tvm_tinytrain.targets.harness import DUMP, PREDICT, TRAIN, Record
    from tvm_tinytrain.targets.project import write_project

    program, board = _program(quantized=True), get_board("host")
    xs, ys = samples(3, seed=9)
    records = [Record(TRAIN, x, int(y)) for x, y in zip(xs, ys)] + [Record(PREDICT, xs[0]), Record(DUMP)]
    runs = []
    for flag in (True, False):
        memory = dataclasses.replace(program.memory, patch_prefix=flag)
        out = tmp_path / str(flag)
        write_project(dataclasses.replace(program, memory=memory), out, board)
        runs.append(run_stream(board, out, records).output)
        report = json.loads((out / "memory_report.json").read_text())
        assert ("train_step" in report["patched_prefix"]) == flag
    assert runs[0].losses == runs[1].losses
    assert runs[0].predictions == runs[1].predictions
    np.testing.assert_array_equal(runs[0].logits, runs[1].logits)
    for name in program.trainable.names:
        np.testing.assert_array_equal(runs[0].params[0][name], runs[1].params[0][name], err_msg=name)


def make_patch_net():
    """PatchNet for the CLI (`tests/test_patch_prefix.py:make_patch_net`)."""
    torch.manual_seed(3)
    return PatchNet().eval(), torch.zeros(INPUT_SHAPE)


def test_the_cli_says_where_the_prefix_is_patched(tmp_path, capsys, cheap_halos):
    """`tinytrain compile --patch-prefix` through the real CLI: the project builds, and the
    summary and the memory report name the same grid."""
    from pathlib import Path

    from tvm_tinytrain import cli

    spec = f"{Path(__file__).resolve()}:make_patch_net"
    assert cli.main(["compile", spec, "--target", "host", "--patch-prefix", "-o", str(tmp_path / "p")]) == 0
    report = json.loads((tmp_path / "p" / "memory_report.json").read_text())
    rows, cols = report["patched_prefix"]["train_step"]["tiles"]
    assert f"runs in {rows}x{cols} tiles" in capsys.readouterr().out
