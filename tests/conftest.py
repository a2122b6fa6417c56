"""Shared fixtures: small CNNs covering the supported ops, and compiled programs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tvm_tinytrain.config import SparseUpdateConfig
from tvm_tinytrain.frontend.torch_frontend import import_torch
from tvm_tinytrain.pipeline import TrainOptions, build_training_program

INPUT_SHAPE = (1, 2, 8, 8)


class SmallNet(nn.Module):
    """conv-BN-ReLU, depthwise + ReLU6, residual add, max pool, conv, global pool, linear."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv0 = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        x = self.conv0(x)
        x = x + nn.functional.relu6(self.dw(x))
        x = self.pool(x)
        x = torch.clamp(self.conv2(x), 0.0, 4.0)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(x)


def make_small_net(seed: int = 0) -> SmallNet:
    torch.manual_seed(seed)
    net = SmallNet()
    bn = net.conv0[1]
    bn.running_mean.uniform_(-0.2, 0.2)
    bn.running_var.uniform_(0.5, 1.5)
    bn.weight.data.uniform_(0.5, 1.5)
    return net.eval()


def make_sequential() -> nn.Sequential:
    """A bare Sequential with Sequentials inside: parameters `0.weight` ... `5.0.weight`."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.ReLU6()),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(6, 8, 1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    bn = net[1]
    bn.running_mean.uniform_(-0.2, 0.2)
    bn.running_var.uniform_(0.5, 1.5)
    bn.weight.data.uniform_(0.5, 1.5)
    return net.eval()



class ManyTanhs(nn.Module):
    """`count` unsupported ops (a tanh each), to check the error stays bounded."""

    def __init__(self, count: int):
        super().__init__()
        self.count = count
        self.conv = nn.Conv2d(2, 2, 1)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        x = self.conv(x)
        for _ in range(self.count):
            x = torch.tanh(x)
        return self.fc(x.mean((2, 3)))


class SoftGate(nn.Module):
    def forward(self, x):
        return x * torch.tanh(x)


class ThreeUnsupported(nn.Module):
    """Three ops we cannot train, in three submodules: `GELU` in `stem.1`, `LeakyReLU` in
    `block.1` and a functional `tanh` in `block.gate`."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 4, 3), nn.GELU())
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3), nn.LeakyReLU(0.1))
        self.block.add_module("gate", SoftGate())
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.block(self.stem(x)).mean((2, 3)))


class MobileNetV3Net(nn.Module):
    """Every MobileNetV3-style op the torch frontend trains: Hardswish, SiLU, a
    squeeze-excitation with a sigmoid gate, channel concatenation, scalar arithmetic and a
    Hardsigmoid, around BN-folded and depthwise convs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.SiLU())
        self.se1 = nn.Conv2d(4, 4, 1)
        self.se2 = nn.Conv2d(4, 4, 1)
        self.pw = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x)
        y = y * torch.sigmoid(self.se2(torch.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        x = torch.cat([x, (y - 1.0) / 2.0 * 0.5], dim=1)
        x = nn.functional.hardsigmoid(self.pw(x)) * 2.0 + 1.0
        return self.fc(x.mean((2, 3)))


def make_mobilenet_v3_net() -> MobileNetV3Net:
    torch.manual_seed(0)
    net = MobileNetV3Net()
    with torch.no_grad():
        net.stem[1].running_mean.uniform_(-1, 1)
        net.stem[1].running_var.uniform_(0.5, 2)
    return net.eval()


def samples(n: int, seed: int = 1, classes: int = 4):
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((n, *INPUT_SHAPE[1:])).astype(np.float32)
    ys = rng.integers(0, classes, n)
    return xs, ys


# Bias of the last conv + conv2's weight on half its input channels + the head; momentum.
SPARSE = SparseUpdateConfig(n_bias_update=1, manual_weight_idx=(2,), weight_update_ratio=(0.5,))
OPTIONS = TrainOptions(lr=0.05, momentum=0.9)


@pytest.fixture(scope="session")
def small_net():
    return make_small_net()


@pytest.fixture(scope="session")
def small_imported(small_net):
    return import_torch(small_net, torch.zeros(INPUT_SHAPE))


@pytest.fixture(scope="session")
def small_program(small_imported):
    return build_training_program(small_imported, SPARSE, OPTIONS)


def torch_sgd_reference(net: nn.Module, program, xs, ys):
    """Train a copy of `net` with torch autograd + torch.optim.SGD on the program's trainable
    set (sub-tensor updates: the gradient of the channels that do not train is zeroed)."""
    import copy

    from torch.fx.experimental.optimization import fuse  # a submodule torch does not import itself

    ref = fuse(copy.deepcopy(net).eval())  # fold BN as the frontend does
    named = dict(ref.named_parameters())
    for name, p in named.items():
        p.requires_grad_(name in program.trainable)
    opt = torch.optim.SGD([named[n] for n in program.trainable.names], lr=program.options.lr,
                          momentum=program.options.momentum)
    losses = []
    for x, y in zip(xs, ys):
        opt.zero_grad()
        xt = torch.from_numpy(x[None])
        out = ref(xt)
        if program.options.loss == "mse":  # an autoencoder: the output against the input
            loss = nn.functional.mse_loss(out, xt.reshape(out.shape))
        else:
            loss = nn.functional.cross_entropy(out, torch.tensor([int(y)]))
        loss.backward()
        for name in program.trainable.names:
            ratio = program.trainable.ratio[name]
            if ratio < 1.0:
                axis = program.trainable.channel_axis[name]
                k = max(1, round(named[name].shape[axis] * ratio))
                named[name].grad.narrow(axis, k, named[name].shape[axis] - k).zero_()
        opt.step()
        losses.append(loss.item())
    return losses, {n: p.detach().numpy().copy() for n, p in named.items()}


def assert_c_matches_vm(program, board_name: str, project_dir: Path, xs, ys):
    """Write `program` for the board, train it on (xs, ys) there and on the Relax VM: the
    same losses and every trained tensor, bit for bit. Returns the board's run."""
    from tvm_tinytrain.reference import RelaxVMTrainer
    from tvm_tinytrain.session import run_stream
    from tvm_tinytrain.targets.boards import get_board
    from tvm_tinytrain.targets.harness import DUMP, TRAIN, Record
    from tvm_tinytrain.targets.project import write_project

    board = get_board(board_name)
    write_project(program, project_dir, board)
    run = run_stream(board, project_dir, [Record(TRAIN, x, int(y)) for x, y in zip(xs, ys)] + [Record(DUMP)])
    vm = RelaxVMTrainer(program)
    np.testing.assert_allclose(run.output.losses, [vm.step(x, int(y)) for x, y in zip(xs, ys)], rtol=1e-6)
    for name in program.trainable.names:
        np.testing.assert_array_equal(run.output.params[0][name], vm.param(name).ravel(), err_msg=name)
    return run


# The tiny-training int8 zoo models: read from shared/ beside the repository, never copied.
MODEL_FILES = ("mcunet-5fps.pkl", "mbv2-w0.35.pkl")


def models_dir() -> Path:
    env = os.environ.get("TINYTRAIN_MODELS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "models" / "tiny-training"


@pytest.fixture(scope="session")
def zoo_dir() -> Path:
    d = models_dir()
    missing = [name for name in MODEL_FILES if not (d / name).is_file()]
    if missing:
        pytest.fail(f"tiny-training zoo models {missing} not found in {d}: they live in "
                    "shared/models/tiny-training beside the repository (CI copies them "
                    "there); set TINYTRAIN_MODELS_DIR to use another directory",
                    pytrace=False)
    return d
