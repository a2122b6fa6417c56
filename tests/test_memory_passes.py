"""The memory passes: each changes where and when tensors live, never a computed number.

Every pass is checked twice: the step's losses, updated parameters and predictions are
identical with the pass on and off (Relax VM on the lowered module, the module that
becomes C), and the memory effect the pass exists for is visible in the schedule.
"""

import dataclasses

import numpy as np
import pytest

import torch

from conftest import assert_c_matches_vm
from tvm_tinytrain.config import SparseUpdateConfig
from tvm_tinytrain.demo import INPUT_SHAPE, DigitsNet
from tvm_tinytrain.frontend.torch_frontend import import_torch
from tvm_tinytrain.pipeline import MemoryOptions, TrainOptions, build_training_program
from tvm_tinytrain.quantize import post_training_quantize
from tvm_tinytrain.reference import RelaxVMTrainer
from tvm_tinytrain.targets.c_emitter import emit, schedule_buffers
from tvm_tinytrain.targets.lower import join_split, lower, memory_passes
from tvm_tinytrain.targets.tensorize import STAGE, STAGE_MIN_BYTES, STAGE_PLANES_MAX_BYTES

FLAGS = [f.name for f in dataclasses.fields(MemoryOptions)]


def samples(n, seed, shape=INPUT_SHAPE):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, *shape[1:])).astype(np.float32), rng.integers(0, 4, n)


def _quantized_digits_net():
    """The demo's CNN, int8 (PTQ), and a config training a conv on half its input channels."""
    torch.manual_seed(0)
    imported = import_torch(DigitsNet().eval(), torch.zeros(INPUT_SHAPE))
    quantized = post_training_quantize(imported, samples(64, seed=5)[0])
    return quantized, SparseUpdateConfig(n_bias_update=2, manual_weight_idx=(3,), weight_update_ratio=(0.5,))


@pytest.fixture(scope="module")
def int8_program():
    return build_training_program(*_quantized_digits_net(), TrainOptions(lr=0.05, momentum=0.9))


class InvertedResidualNet(torch.nn.Module):
    """A stem, then a MobileNetV2 block without residual: 1x1 expansion, 3x3 depthwise, 1x1 projection."""

    def __init__(self, stride: int = 2):
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU6(),
            nn.Conv2d(4, 16, 1), nn.BatchNorm2d(16), nn.ReLU6(),
            nn.Conv2d(16, 16, 3, stride=stride, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),
            nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8))
        self.classifier = nn.Linear(8, 4)

    def forward(self, x):
        return self.classifier(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def _mobile_program(quantized: bool, stride: int = 2, weights: tuple[int, ...] = (3,)):
    """By default training the projection on half its channels and the last two biases:
    the expansion and the depthwise conv stay frozen, as in the paper's sparse schemes.
    `weights=(1, 3)` trains the expansion too: the backward pass crosses the depthwise conv."""
    torch.manual_seed(1)
    imported = import_torch(InvertedResidualNet(stride).eval(), torch.zeros(INPUT_SHAPE))
    if quantized:
        imported = post_training_quantize(imported, samples(64, seed=5)[0])
    config = SparseUpdateConfig(n_bias_update=2 * len(weights), manual_weight_idx=weights,
                                weight_update_ratio=(0.5,) * len(weights))
    return build_training_program(imported, config, TrainOptions(lr=0.05, momentum=0.9))


@pytest.fixture(scope="module")
def mobile_program():
    return _mobile_program(quantized=True)


@pytest.fixture(scope="module")
def depthwise_backward_program():
    """Stride 1, the expansion trains: the depthwise conv's input gradient has the shape of
    its output gradient."""
    return _mobile_program(quantized=True, stride=1, weights=(1, 3))


def with_memory(program, **flags):
    return dataclasses.replace(program, memory=dataclasses.replace(MemoryOptions(), **flags))


def train_on_vm(program, steps=3):
    """Losses, whole parameters and logits of `steps` steps of the lowered module."""
    mod, values, split = memory_passes(program)
    vm = RelaxVMTrainer(dataclasses.replace(program, mod=mod, params=values))
    xs, ys = samples(steps, seed=7, shape=program.input_shape)
    losses = [vm.step(x, int(y)) for x, y in zip(xs, ys)]
    return losses, join_split({n: vm.param(n) for n in values}, split), vm.predict(xs[0])


@pytest.mark.parametrize("flag", ["all", *FLAGS])
def test_turning_a_memory_pass_off_changes_no_number(int8_program, flag):
    on = train_on_vm(int8_program)
    off_program = dataclasses.replace(int8_program, memory=MemoryOptions.none()) if flag == "all" \
        else with_memory(int8_program, **{flag: False})
    off = train_on_vm(off_program)
    assert on[0] == off[0]
    for name in int8_program.params:
        np.testing.assert_array_equal(on[1][name], off[1][name], err_msg=name)
    np.testing.assert_array_equal(on[2], off[2])


@pytest.mark.parametrize("flag", ["fuse_depthwise", "fuse_updates", "inplace_depthwise"])
@pytest.mark.parametrize("quantized", [True, False], ids=["int8", "float"])
def test_fusions_change_no_number_on_an_inverted_residual_block(mobile_program, depthwise_backward_program,
                                                                flag, quantized):
    if flag == "inplace_depthwise":
        program = depthwise_backward_program if quantized else _mobile_program(False, 1, (1, 3))
    else:
        program = mobile_program if quantized else _mobile_program(quantized=False)
    on, off = train_on_vm(program), train_on_vm(with_memory(program, **{flag: False}))
    assert on[0] == off[0]
    for name in program.params:
        np.testing.assert_array_equal(on[1][name], off[1][name], err_msg=name)
    np.testing.assert_array_equal(on[2], off[2])


def test_memory_passes_with_float_master_weights(int8_program):
    """float32 master copies of the trainable int8 tensors (the demo's setting): the
    forward rounds and saturates a parameter, whose mask is not a forward activation."""
    program = build_training_program(*_quantized_digits_net(), TrainOptions(lr=0.05, int8_update="float32"))
    on, off = train_on_vm(program), train_on_vm(dataclasses.replace(program, memory=MemoryOptions.none()))
    assert on[0] == off[0]
    for name in program.params:
        np.testing.assert_array_equal(on[1][name], off[1][name], err_msg=name)


def test_memory_passes_change_no_number_on_a_float_model(small_program):
    on = train_on_vm(small_program)
    off = train_on_vm(dataclasses.replace(small_program, memory=MemoryOptions.none()))
    np.testing.assert_allclose(on[0], off[0], rtol=1e-6)
    for name in small_program.params:
        np.testing.assert_allclose(on[1][name], off[1][name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_memory_passes_change_no_number_on_mcunet(zoo_dir):
    from tvm_tinytrain.config import SparseUpdateConfig
    from tvm_tinytrain.frontend.zoo_frontend import import_zoo

    imported = import_zoo(zoo_dir / "mcunet-5fps.pkl", num_classes=10)
    program = build_training_program(imported, SparseUpdateConfig.scheme("mcunet-99kb"), TrainOptions(lr=0.002))
    x = np.random.default_rng(0).integers(-128, 128, imported.input_shape).astype(np.float32)
    runs = []
    for memory in (MemoryOptions(), MemoryOptions.none()):
        mod, values, split = memory_passes(dataclasses.replace(program, memory=memory))
        vm = RelaxVMTrainer(dataclasses.replace(program, mod=mod, params=values))
        runs.append(([vm.step(x, 3), vm.step(x, 7)], join_split({n: vm.param(n) for n in values}, split)))
    assert runs[0][0] == runs[1][0]
    for name in program.trainable.names:
        np.testing.assert_array_equal(runs[0][1][name], runs[1][1][name], err_msg=name)


def _buffers(program, **flags):
    low = lower(with_memory(program, **flags))
    return low, {b.name: b for b in schedule_buffers(low.schedules["train_step"])}


def _stages_input(low, kernel: str) -> bool:
    """Whether a kernel's C stages its input for a pointwise micro-kernel (targets/tensorize.py),
    in a workspace of its own."""
    body = low.kernels_c.split(f"__tvm_ffi_{kernel}(void* self_handle")[-1].split("\nTVM_DLL")[0]
    return f"{STAGE}(" in body


def _tensors(low):
    return {t.name: t for t in low.tensors}


def test_int8_activations_keep_int8_between_kernels(int8_program):
    """Before: activations and the sample are float32 tensors holding integers. After: the
    sample and every activation kept for backward are 1-byte tensors (the float logits,
    which the loss gradient reads, excepted)."""
    low, bufs = _buffers(int8_program)
    tensors = _tensors(low)
    x = low.schedules["train_step"].inputs[0]
    assert x.dtype == "int8" and low.input_quantization is not None
    saved = [tensors[n] for n, b in bufs.items() if b.kind == "saved for backward"]
    wide = [(t.name, t.shape) for t in saved if t.dtype not in ("int8", "uint8", "bool")]
    assert saved and all(shape == (1, int8_program.num_classes) for _, shape in wide), wide  # logits only
    low_off, bufs_off = _buffers(int8_program, int8_activations=False)
    assert low_off.schedules["train_step"].inputs[0].dtype == "float32"
    assert any(_tensors(low_off)[n].dtype == "float32" for n, b in bufs_off.items() if b.kind == "saved for backward")


def test_fuse_kernels_removes_intermediates(int8_program):
    """Before: padding and float32 copies are kernel workspaces and separate kernels. After:
    fewer kernels and no workspace beyond an accumulator: a few floats, a row of a pointwise
    conv, or the 8x8 float32 plane of an int8 depthwise conv (what its micro-kernel fills),
    besides the staged input row of a pointwise micro-kernel (targets/tensorize.py)."""
    on, _ = _buffers(int8_program, inplace_depthwise=False)  # which stages a channel in a workspace
    off, _ = _buffers(int8_program, fuse_kernels=False, inplace_depthwise=False)
    calls_on, calls_off = (low.schedules["train_step"].calls for low in (on, off))
    assert len(calls_on) < len(calls_off) / 1.5
    staging = 2 * STAGE_MIN_BYTES  # this model's staged row and its pairs' weight folds, each at the minimum
    assert all(c.workspace_bytes <= 8 * 8 * 4 or (_stages_input(on, c.kernel) and c.workspace_bytes <= staging)
               for c in calls_on)
    assert max(c.workspace_bytes for c in calls_off) > 8 * 8 * 4


def test_a_linear_layer_computes_its_int8_input_once():
    """An int8 MLP (the autoencoder of test_mse_loss, PTQ, every hidden bias training, so
    each layer reads the rounding of a float activation kept for backward): inlined, the
    rounding ran inside the product, once per multiply-accumulate (37.7 instructions a MAC on
    Cortex-M4); staged, the input vector is rounded once, before it. Same numbers."""
    from test_mse_loss import make_autoencoder

    net, example = make_autoencoder()
    imported = post_training_quantize(import_torch(net, example), samples(32, 5, tuple(example.shape))[0])
    program = build_training_program(imported, SparseUpdateConfig(n_bias_update=3),
                                     TrainOptions(lr=0.05, momentum=0.9, loss="mse"))
    low = lower(program)
    products = [c.kernel for c in low.schedules["train_step"].calls if "matmul" in c.kernel]
    assert products
    for kernel in products:
        body = low.kernels_c.split(f"__tvm_ffi_{kernel}(void* self_handle")[-1].split("\nTVM_DLL")[0]
        sums = [line for line in body.splitlines() if line.strip().startswith("matmul_intermediate")
                and "= (matmul_intermediate" in line]  # the multiply-accumulate statement
        assert sums and not any("nearbyintf" in line for line in sums), (kernel, sums)
    on, off = train_on_vm(program), train_on_vm(with_memory(program, fuse_kernels=False))
    assert on[0] == off[0]
    for name in program.params:
        np.testing.assert_array_equal(on[1][name], off[1][name], err_msg=name)
    np.testing.assert_array_equal(on[2], off[2])


def test_fuse_updates_leaves_no_gradient_tensor(int8_program):
    """Before: each weight and bias gradient is a tensor in the arena that its update reads.
    After: each gradient element is applied as it is summed, except where TVM computes a
    larger weight gradient and slices it (a 3x3 stride-2 conv here): fusing that would keep
    the whole unsliced sum as the kernel's workspace, so it stays a tensor."""
    def update_inputs(**flags):
        calls = lower(with_memory(int8_program, **flags)).schedules["train_step"].calls
        return [t.name for c in calls if c.outputs[0].storage in ("param", "momentum") for t in c.inputs
                if t.storage == "arena" and "grad" in t.name]

    assert update_inputs() == ["down_0_weight_grad_qas"]
    assert len(update_inputs(fuse_updates=False)) == len(int8_program.trainable.names)


@pytest.mark.parametrize("quantized", [True, False], ids=["int8", "float"])
def test_fuse_depthwise_computes_its_input_a_channel_at_a_time(mobile_program, quantized):
    """Before: the 16-channel expansion is a tensor in the arena. After: the depthwise
    kernel computes it one 8x8 plane at a time (about one plane, int8 or float32, not
    sixteen: under 1 KB, TVM puts it on the C stack, so no call asks for a workspace of the
    expansion's size)."""
    program = mobile_program if quantized else _mobile_program(quantized=False)
    expansion = (1, 16, 8, 8)

    def arena(**flags):
        low = lower(with_memory(program, **flags))
        calls = low.schedules["train_step"].calls
        return [t.shape for c in calls for t in c.outputs if t.storage == "arena"], calls, low

    shapes, calls, low = arena()
    assert expansion not in shapes
    plane = 8 * 8 * (1 if quantized else 4)
    # (a pointwise micro-kernel's staged input is bounded on its own: STAGE_PLANES_MAX_BYTES)
    assert max(c.workspace_bytes for c in calls if not _stages_input(low, c.kernel)) < 16 * plane
    assert all(c.workspace_bytes <= STAGE_PLANES_MAX_BYTES for c in calls)
    assert expansion in arena(fuse_depthwise=False)[0]


def test_inplace_depthwise_writes_the_input_gradient_over_the_output_gradient(depthwise_backward_program):
    """Before: the depthwise conv's output gradient and input gradient are two arena
    tensors. After: its kernel stages one channel at a time and writes over its input."""
    def schedule(**flags):
        return lower(with_memory(depthwise_backward_program, **flags)).schedules["train_step"]

    s = schedule()
    inplace = [i for i, c in enumerate(s.calls) if c.kernel.endswith("_inplace")]
    assert inplace and all(s.calls[i].outputs[0] in s.calls[i].inputs for i in inplace)
    backward = [s.calls[i] for i in inplace if i >= s.loss_index and "conv2d_transpose" in s.calls[i].kernel]
    assert backward and backward[0].outputs[0].shape == (1, 16, 8, 8)
    assert backward[0].workspace_bytes < 2 * 8 * 8 * 4  # one float32 plane at most (256 bytes: on the C stack)
    assert not any(c.kernel.endswith("_inplace") for c in schedule(inplace_depthwise=False).calls)


@pytest.mark.parametrize("which", ["frozen depthwise", "depthwise backward"])
def test_fused_kernels_in_c_match_the_vm(mobile_program, depthwise_backward_program, which, tmp_path):
    """The generated C of the fused kernels (depthwise with its expansion, gradients with
    their updates, the projection's weight gradient summed in 4 x 4 tiles by a micro-kernel,
    the in-place depthwise backward) on the host: the unfused Relax VM's losses and integers,
    exactly."""
    mobile_program = mobile_program if which == "frozen depthwise" else depthwise_backward_program
    if which == "frozen depthwise":  # the projection trains 8 x 8 weights: two tiles
        assert lower(mobile_program).kernels_c.count("tt_pw_wgrad_f32s8((") == 1
    run = assert_c_matches_vm(mobile_program, "host", tmp_path, *samples(4, seed=9))
    planned = max(c.workspace_bytes for c in lower(mobile_program).schedules["train_step"].calls)
    assert run.output.workspace_bytes <= planned  # TVM puts buffers under 1 KB on the stack


def test_bit_masks_replace_saved_pre_activations(int8_program):
    """Before: the float32 input of each saturation stays alive for its gradient. After: a
    packed 1-bit mask (uint8, an eighth of the elements) does."""
    def saved(**flags):
        low, bufs = _buffers(int8_program, **flags)
        t = _tensors(low)
        return {n: t[n] for n, b in bufs.items() if b.kind == "saved for backward"}

    on, off = saved(), saved(bit_masks=False)
    bits = [t for t in on.values() if t.dtype == "uint8"]
    assert bits and all(t.name.endswith("_bits") or "bits" in t.name for t in bits)
    assert sum(t.nbytes for t in on.values()) < sum(t.nbytes for t in off.values())


def test_split_channels_keeps_only_trained_channels_in_ram(int8_program):
    name = next(n for n in int8_program.trainable.names if int8_program.trainable.ratio[n] < 1)
    low = lower(int8_program)
    assert name in low.split and name + ".frozen" in low.params
    axis, k = low.split[name]
    np.testing.assert_array_equal(np.concatenate([low.params[name], low.params[name + ".frozen"]], axis),
                                  int8_program.params[name])
    on = emit(int8_program, low).trainable_bytes
    off = emit(int8_program, lower(with_memory(int8_program, split_channels=False))).trainable_bytes
    assert on < off


def test_reorder_applies_each_update_as_soon_as_it_may(int8_program):
    """Before: every update after the whole backward pass. After: each right after its
    gradient, never before a kernel that reads the old parameter, never before the loss."""
    def positions(**flags):
        low = lower(with_memory(int8_program, **flags))
        s = low.schedules["train_step"]
        updates = [i for i, c in enumerate(s.calls) if c.outputs[0].storage in ("param", "momentum")]
        return s, updates

    s, updates = positions()
    for u in updates:
        assert u >= s.loss_index
        updated = s.calls[u].outputs[0]
        if updated.storage == "param":
            assert all(updated not in c.inputs for c in s.calls[u + 1:]), updated.name
    _, updates_off = positions(reorder=False)
    assert min(updates) < min(updates_off)
    assert updates_off == list(range(len(s.calls) - len(updates_off), len(s.calls)))


def test_mcunet_memory_report_names_its_peak(zoo_dir, tmp_path):
    """The planned RAM of MCUNet-5FPS (49 KB scheme), broken down, with the peak's call."""
    import json

    from tvm_tinytrain.config import SparseUpdateConfig
    from tvm_tinytrain.frontend.zoo_frontend import import_zoo
    from tvm_tinytrain.targets.boards import get_board
    from tvm_tinytrain.targets.project import write_project

    imported = import_zoo(zoo_dir / "mcunet-5fps.pkl", num_classes=10)
    program = build_training_program(imported, SparseUpdateConfig.scheme("mcunet-49kb"), TrainOptions(lr=0.002))
    write_project(program, tmp_path / "p", get_board("cortex-m7"))
    report = json.loads((tmp_path / "p" / "memory_report.json").read_text())
    step = report["train_step"]
    assert step["live_bytes_at_peak"] == step["arena_bytes"] < 125 * 1024
    assert step["peak_call"].startswith(f"call {step['peak_step']} of ")
    ram = report["ram_at_peak"]
    assert sum(ram.values()) == report["planned"]["ram_total_bytes"] <= 173 * 1024  # the paper's
    # the peak is the first kernel: the sample and the stem's output (with the depthwise
    # conv fused in, one channel plane of workspace)
    assert step["peak_call"].startswith("call 0 of ") and "(forward)" in step["peak_call"]
    assert {"input sample", "activations", "kernel workspaces", "trainable weights", "stack (reserved)"} <= set(ram)


def test_a_long_elementwise_chain_is_cut_into_bounded_kernels():
    """A model with 300 ReLUs in a row (what a hostile file can ask for) compiles into kernels
    of at most MAX_GROUP_OPS ops: scheduling a kernel costs time quadratic in its ops."""
    from tvm_tinytrain.passes.fuse_kernels import MAX_GROUP_OPS

    chain = 300
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), *[torch.nn.ReLU() for _ in range(chain)],
                              torch.nn.Flatten(), torch.nn.Linear(2 * 8 * 8, 3)).eval()
    program = build_training_program(import_torch(net, torch.zeros(INPUT_SHAPE)), SparseUpdateConfig(),
                                     TrainOptions())
    calls = lower(program).schedules["predict"].calls
    assert len(calls) >= chain // MAX_GROUP_OPS


class HardActivationsNet(torch.nn.Module):
    """MobileNetV3's activations between int8 convs: a hard-swish after the stem, a
    hard-sigmoid after a pointwise conv, then pooling and the classifier."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardswish())
        self.pointwise = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.Hardsigmoid())
        self.classifier = nn.Linear(8, 4)

    def forward(self, x):
        return self.classifier(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(self.pointwise(self.stem(x)), 1), 1))


@pytest.fixture(scope="module")
def hard_activations_program():
    """int8 (PTQ); the pointwise conv trains, so its hard-sigmoid is on the gradient path
    (its backward reads the chain's values) and only the stem's hard-swish is tabulated."""
    torch.manual_seed(2)
    net = HardActivationsNet()
    for bn in (net.stem[1], net.pointwise[1]):  # BN statistics of a trained network, not the identity
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
    imported = post_training_quantize(import_torch(net.eval(), torch.zeros(INPUT_SHAPE)), samples(64, seed=5)[0])
    config = SparseUpdateConfig(n_bias_update=1, manual_weight_idx=(1,), weight_update_ratio=(1.0,))
    return build_training_program(imported, config, TrainOptions(lr=0.05, momentum=0.9))


def test_int8_functions_become_tables_and_change_no_number(hard_activations_program):
    """Before: a hard-swish between int8 tensors is a dozen float32 ops per element. After:
    one lookup in a 256-entry int8 table, where no backward pass reads the chain; the Relax
    VM gives the untabulated chain's losses, parameters and logits, exactly."""
    from tvm_tinytrain.passes import TabulateInt8Functions
    from tvm_tinytrain.relax_utils import op_name

    program = hard_activations_program
    tabulated = TabulateInt8Functions()(program.mod)

    def tables(func):
        return [b.value.args[0] for b in func.body.blocks[0].bindings if op_name(b.value) == "relax.take"]

    assert len(tables(tabulated["main"])) == 2      # predict: the hard-swish and the hard-sigmoid
    (table,) = tables(tabulated["train_step"])      # training: the hard-sigmoid's backward reads it
    assert table.value.numpy().dtype == np.int8 and table.value.numpy().shape == (256,)
    on, off = train_on_vm(program), train_on_vm(with_memory(program, tabulate=False))
    assert on[0] == off[0]
    for name in program.params:
        np.testing.assert_array_equal(on[1][name], off[1][name], err_msg=name)
    np.testing.assert_array_equal(on[2], off[2])


def test_a_table_lookup_is_its_own_int8_kernel_in_c(hard_activations_program, tmp_path):
    """The lookup writes its int8 result once, in place (a conv reading through it would
    look up each input element at every read); the host build trains with the table exactly
    as without it."""
    from tvm_tinytrain.session import run_stream
    from tvm_tinytrain.targets.boards import get_board
    from tvm_tinytrain.targets.harness import DUMP, TRAIN, Record
    from tvm_tinytrain.targets.project import write_project

    program, board = hard_activations_program, get_board("host")
    kernels = [c.kernel for c in lower(program).schedules["train_step"].calls]
    lookups = [k for k in kernels if "take" in k]
    assert lookups and not any("conv2d" in k for k in lookups), lookups
    xs, ys = samples(4, seed=9)
    records = [Record(TRAIN, x, int(y)) for x, y in zip(xs, ys)] + [Record(DUMP)]
    runs = []
    for memory in (program.memory, dataclasses.replace(program.memory, tabulate=False)):
        write_project(dataclasses.replace(program, memory=memory), tmp_path / str(len(runs)), board)
        runs.append(run_stream(board, tmp_path / str(len(runs)), records).output)
    assert runs[0].losses == runs[1].losses
    for name in program.trainable.names:
        np.testing.assert_array_equal(runs[0].params[0][name], runs[1].params[0][name], err_msg=name)


def _forward_until(func, var):
    """`func`'s forward from the sample to `var`, returning it."""
    from tvm import relax

    bindings = list(func.body.blocks[0].bindings)
    cut = bindings[:[b.var for b in bindings].index(var) + 1]
    bb = relax.BlockBuilder()
    with bb.function("main", [func.params[0]]):
        with bb.dataflow():
            for b in cut[:-1]:
                bb.emit_normalized(b)
            out = bb.emit_output(cut[-1].value)
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("activation", [torch.nn.Hardswish, torch.nn.Hardsigmoid])
def test_a_table_holds_the_chain_for_every_int8_value(activation):
    """The activation reads the quantized sample, whose 1,024 values cover every int8 code
    (and saturate at both ends): compiled by TVM, the table gives the untabulated float32
    chain's int8 result for each of the 256 codes, bit for bit."""
    import tvm
    from tvm_tinytrain.passes import TabulateInt8Functions
    from tvm_tinytrain.passes.int8_activations import int8_valued

    torch.manual_seed(3)
    shape = (1, 1, 32, 32)
    net = torch.nn.Sequential(activation(), torch.nn.Flatten(), torch.nn.Linear(32 * 32, 4)).eval()
    calibration = np.random.default_rng(0).uniform(-4, 4, (16, *shape[1:])).astype(np.float32)
    imported = post_training_quantize(import_torch(net, torch.zeros(shape)), calibration)
    main = build_training_program(imported, SparseUpdateConfig(), TrainOptions()).mod["main"]
    bindings = list(main.body.blocks[0].bindings)
    source, result = [b.var for b in bindings if b.var in int8_valued(bindings)][:2]  # the sample's, the activation's
    x = tvm.runtime.tensor(np.linspace(-5, 5, 32 * 32, dtype=np.float32).reshape(shape))

    def run(mod):
        return tvm.runtime.vm.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())["main"](x).numpy()

    assert len(np.unique(run(_forward_until(main, source)))) == 256
    plain = _forward_until(main, result)
    tabulated = TabulateInt8Functions()(plain)
    assert tabulated["main"].script().count("R.take(") == 1
    np.testing.assert_array_equal(run(tabulated), run(plain))
