"""How a trainable int8 weight takes an update smaller than one integer step
(`TrainOptions.int8_update`): round to nearest, stochastic rounding, int16 or float32
master copies. The kernels against a NumPy model of the rule; the whole step on the Relax
VM against itself with the memory passes off, and the generated C on the host and on a
board against the Relax VM, bit for bit."""

import dataclasses

import numpy as np
import pytest
import torch
import tvm

from conftest import assert_c_matches_vm
from tvm_tinytrain.config import SparseUpdateConfig
from tvm_tinytrain.demo import DigitsNet, INPUT_SHAPE
from tvm_tinytrain.frontend.torch_frontend import import_torch
from tvm_tinytrain.passes.sgd_kernels import sgd_update_kernel
from tvm_tinytrain.pipeline import MemoryOptions, TrainOptions, build_training_program
from tvm_tinytrain.quantize import post_training_quantize
from tvm_tinytrain.reference import RelaxVMTrainer
from tvm_tinytrain.targets.lower import join_split, memory_passes

M32 = 0xFFFFFFFF


def murmur_noise(index: np.ndarray, step: int, salt: int) -> np.ndarray:
    """The noise the stochastic kernel adds before flooring, written out in NumPy: the
    murmur3 finalizer of index * 0x9E3779B1 + a salt constant, plus step * 0x9E3779B9,
    its top 24 bits as a float32 in [0, 1)."""
    h = (index.astype(np.uint64) * np.uint64(0x9E3779B1) + np.uint64((salt * 0xC2B2AE3D + 0x27D4EB2F) & M32)) \
        & np.uint64(M32)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & np.uint64(M32)
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & np.uint64(M32)
    h ^= h >> np.uint64(16)
    h = (h + np.uint64(step * 0x9E3779B9 & M32)) & np.uint64(M32)
    return (h >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -24)


def run_kernel(kernel, p: np.ndarray, g: np.ndarray, step: int | None = None) -> np.ndarray:
    f = tvm.tirx.build(tvm.IRModule({"main": kernel.with_attr("global_symbol", "main")}), target="llvm")["main"]
    args = [tvm.runtime.tensor(p), tvm.runtime.tensor(g)]
    if step is not None:
        args.append(tvm.runtime.tensor(np.array([step], np.uint32)))
    f(*args)
    return args[0].numpy()


def test_stochastic_update_kernel_matches_its_numpy_model():
    rng = np.random.default_rng(0)
    p = rng.integers(-128, 128, (6, 5), dtype=np.int8)
    g = rng.normal(0, 40, (6, 5)).astype(np.float32)
    g[0, :2] = [1e6, -1e6]  # saturates both ways
    lr = 0.01
    kernel = sgd_update_kernel(p.shape, g.shape, lr, dtype="int8", rounding="stochastic", salt=3)
    for step in (0, 1, 12345):
        new = p.astype(np.float32) - np.float32(lr) * g
        want = np.clip(np.floor(new + murmur_noise(np.arange(p.size).reshape(p.shape), step, 3)), -128, 127)
        np.testing.assert_array_equal(run_kernel(kernel, p, g, step), want.astype(np.int8))


def test_stochastic_rounding_is_unbiased_where_nearest_loses_the_update():
    """A step of 0.3 of an integer: rounding to nearest never moves the weight; stochastic
    rounding moves 30 % of 4096 weights by one, the mean update is the exact one."""
    p = np.zeros(4096, np.int8)
    g = np.full(4096, 30.0, np.float32)
    lr = 0.01
    nearest = run_kernel(sgd_update_kernel(p.shape, g.shape, lr, axis=0, dtype="int8"), p, g)
    assert not nearest.any()
    stochastic = sgd_update_kernel(p.shape, g.shape, lr, axis=0, dtype="int8", rounding="stochastic")
    moved = [run_kernel(stochastic, p, g, step).astype(np.float64) for step in range(4)]
    for m in moved:
        assert set(np.unique(m)) == {-1.0, 0.0}
        assert abs(m.mean() + 0.3) < 0.03
    assert not np.array_equal(moved[0], moved[1])  # fresh noise each step


def test_int16_master_kernel_counts_in_256ths_of_a_step():
    p = np.array([0, 100, -32768, 32000, 5], np.int16)
    g = np.array([0.3, -0.3, 1e6, -1e6, np.nan], np.float32)
    new = run_kernel(sgd_update_kernel(p.shape, g.shape, 0.01, axis=0, dtype="int16", master_of="int8"), p, g)
    # 256 * 0.01 * 0.3 = 0.768 steps; saturated to the int8 range, 127 * 256 at most; NaN: kept
    np.testing.assert_array_equal(new, [-1, 101, -32768, 127 * 256, 5])
    with pytest.raises(ValueError, match="only masters"):
        sgd_update_kernel(p.shape, g.shape, 0.01, axis=0, dtype="int16")


def test_stochastic_rounding_needs_an_integer_parameter():
    with pytest.raises(ValueError, match="stochastic"):
        sgd_update_kernel((4,), (4,), 0.1, axis=0, rounding="stochastic")


# ---------------------------------------------------------------------- the whole step

def _samples(n, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, *INPUT_SHAPE[1:])).astype(np.float32), rng.integers(0, 5, n)


@pytest.fixture(scope="module")
def int8_digits_net():
    """The demo's CNN, int8 (PTQ); a config training a conv on half its input channels."""
    torch.manual_seed(0)
    imported = import_torch(DigitsNet().eval(), torch.zeros(INPUT_SHAPE))
    return (post_training_quantize(imported, _samples(64, seed=5)[0]),
            SparseUpdateConfig(n_bias_update=2, manual_weight_idx=(3,), weight_update_ratio=(0.5,)))


def _program(net, update, lr=0.05, momentum=0.0):
    return build_training_program(*net, TrainOptions(lr=lr, momentum=momentum, int8_update=update))


def _train(program, steps=4, lowered=True):
    if lowered:
        mod, values, split = memory_passes(program)
        vm = RelaxVMTrainer(dataclasses.replace(program, mod=mod, params=values))
    else:
        vm, values, split = RelaxVMTrainer(program), program.params, {}
    xs, ys = _samples(steps, seed=7)
    losses = [vm.step(x, int(y)) for x, y in zip(xs, ys)]
    return vm, losses, join_split({n: vm.param(n) for n in values}, split)


def test_each_option_stores_what_it_says(int8_digits_net):
    stored = {u: _program(int8_digits_net, u).params for u in ("nearest", "stochastic", "int16", "float32")}
    w, b = "down.0.weight", "down.0.bias"
    assert [stored[u][w].dtype for u in stored] == [np.int8, np.int8, np.int16, np.float32]
    assert [stored[u][b].dtype for u in stored] == [np.int32, np.int32, np.int32, np.float32]
    np.testing.assert_array_equal(stored["int16"][w], stored["nearest"][w].astype(np.int16) * 256)
    assert stored["int16"]["stem.0.weight"].dtype == np.int8  # frozen: as it was


@pytest.mark.parametrize("update", ["stochastic", "int16", "float32"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_memory_passes_change_no_number(int8_digits_net, update, momentum):
    """Lowered (split channels, fused updates, reordering) against the program as built."""
    program = _program(int8_digits_net, update, momentum=momentum)
    _, on_losses, on = _train(program)
    _, off_losses, off = _train(dataclasses.replace(program, memory=MemoryOptions.none()))
    _, plain_losses, plain = _train(program, lowered=False)
    assert on_losses == off_losses == plain_losses
    for name in program.params:
        np.testing.assert_array_equal(on[name], off[name], err_msg=name)
        np.testing.assert_array_equal(on[name], plain[name], err_msg=name)


def test_no_option_brings_a_gradient_tensor_back(int8_digits_net):
    """Every option keeps the update fusion (each gradient element applied as it is summed)
    and the arena of round-to-nearest: masters differ only by the trainable tensors. (A
    clip of the master in the forward pass kept the classifier's gradient whole, and its
    rounded float32 weight lived from the forward to the backward pass.)"""
    from tvm_tinytrain.targets.lower import lower
    from tvm_tinytrain.targets.project import estimate_memory

    def gradients(program):
        calls = lower(program).schedules["train_step"].calls
        return [t.name for c in calls if c.outputs[0].storage in ("param", "momentum") for t in c.inputs
                if t.storage == "arena" and "grad" in t.name]

    nearest = _program(int8_digits_net, "nearest")
    base = estimate_memory(nearest)
    _, values, _ = memory_passes(nearest)  # the trained channels of a split weight only
    trained = {n: v.size for n, v in values.items() if n in nearest.trainable.names}
    for update, weight_bytes in (("stochastic", 1), ("int16", 2), ("float32", 4)):
        program = _program(int8_digits_net, update)
        assert gradients(program) == gradients(nearest) == ["down_0_weight_grad_qas"], update  # (a sliced one)
        est = estimate_memory(program)
        assert est.arena_bytes == base.arena_bytes, update
        want = sum(n * (weight_bytes if name.endswith("weight") else 4) for name, n in trained.items())
        assert est.trainable_bytes == want, update


def test_sub_step_updates_are_kept_by_every_option_but_nearest(int8_digits_net):
    """At a learning rate whose updates stay under half an integer step, nearest leaves the
    trained weight as it was; stochastic rounding and the masters move it."""
    w = "down.0.weight"
    moved = {}
    for update in ("nearest", "stochastic", "int16", "float32"):
        program = _program(int8_digits_net, update, lr=1e-4)
        _, _, params = _train(program, steps=8, lowered=False)
        start = program.params[w].astype(np.float64)
        moved[update] = int((params[w].astype(np.float64) != start).sum())
    assert moved["nearest"] == 0
    assert min(moved["stochastic"], moved["int16"], moved["float32"]) > 0, moved


def test_predict_reads_the_rounded_int16_master(int8_digits_net):
    """After training, `main` with int16 masters predicts as the int8 model whose weights
    are the masters rounded to whole steps."""
    program = _program(int8_digits_net, "int16", lr=0.5)
    vm, _, params = _train(program, steps=6, lowered=False)
    assert (params["down.0.weight"] % 256 != 0).any()  # sub-step progress is held
    rounded = dict(_program(int8_digits_net, "nearest").params)
    for name in program.trainable.names:
        value = params[name]
        rounded[name] = np.clip(np.rint(value / 256.0), -128, 127).astype(np.int8) \
            if value.dtype == np.int16 else value
    int8 = RelaxVMTrainer(dataclasses.replace(_program(int8_digits_net, "nearest"), params=rounded))
    x = _samples(1, seed=11)[0][0]
    np.testing.assert_array_equal(vm.predict(x), int8.predict(x))


@pytest.mark.parametrize("update,board", [("stochastic", "host"), ("int16", "host"),
                                          ("stochastic", "cortex-m4")])
def test_generated_c_matches_the_vm(int8_digits_net, update, board, tmp_path):
    """The C (its step counter in the driver, int16 masters in RAM) against the Relax VM:
    losses and every trained integer, exactly, after tt_init and 6 steps."""
    program = _program(int8_digits_net, update, momentum=0.9 if update == "int16" else 0.0)
    assert_c_matches_vm(program, board, tmp_path, *_samples(6, seed=9))
    if update == "stochastic":
        assert "tt_steps[0]" in (tmp_path / "tinytrain_model.c").read_text()
