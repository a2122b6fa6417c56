"""Training the int8 zoo graphs: gradients against an independent torch autograd model of
the same quantized semantics (tiny-training's `*Diff` ops), QAS in the IR, int8 updates."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from tvm import relax

from conftest import MODEL_FILES
from tvm_tinytrain.config import SparseUpdateConfig
from tvm_tinytrain.errors import ConfigError
from tvm_tinytrain.frontend.zoo_format import load_zoo_model
from tvm_tinytrain.frontend.zoo_frontend import import_zoo, new_classifier
from tvm_tinytrain.layers import find_layers
from tvm_tinytrain.passes import AppendCrossEntropyLoss, BuildGradient, FloatTrainableParams
from tvm_tinytrain.pipeline import TrainOptions, build_training_program
from tvm_tinytrain.reference import RelaxVMTrainer

SCHEME_49KB = SparseUpdateConfig.scheme("mcunet-49kb")


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


class _Truncate(torch.autograd.Function):
    """int8 saturation; the gradient passes for -128 <= x <= 127 (bounds included)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward((x >= -128) & (x <= 127))
        return x.clamp(-128, 127)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.saved_tensors[0]


def torch_int8_loss(model, x, label, params):
    """tiny-training's quantized forward in torch, written from its rules, differentiable in
    the integer weights (float tensors holding int8 / int32 values)."""
    def conv(x, c, name):
        w, b = params[f"{name}.weight"], params[f"{name}.bias"]
        acc = F.conv2d(x - c.x_zero, w, None, c.stride, c.padding, 1, c.groups)
        s = (acc + b.view(1, -1, 1, 1)) * torch.from_numpy(c.effective_scale()).view(1, -1, 1, 1)
        return _Truncate.apply(_RoundSTE.apply(s) + c.y_zero)

    y = conv(x, model.first_conv, "first_conv")
    for block in model.blocks:
        block_in = y
        for part in ("pointwise1", "depthwise", "pointwise2"):
            c = getattr(block, part)
            if c is not None:
                y = conv(y, c, f"blocks.{block.index}.{part}")
        if block.residual is not None:
            r, last = block.residual, block.pointwise2
            s = ((block_in - r.x_zero) * np.float32(r.x_scale) + (y - last.y_zero) * np.float32(last.y_scale))
            y = _Truncate.apply(_RoundSTE.apply(s / np.float32(r.y_scale)) + r.y_zero)
    y = _RoundSTE.apply(y.mean((2, 3), keepdim=True))
    c = model.classifier
    q = conv(y, c, "classifier").flatten(1)
    logits = (q - c.y_zero) * np.float32(c.y_scale)
    return F.cross_entropy(logits, torch.tensor([label]))


@pytest.fixture(scope="module")
def mcunet(zoo_dir):
    model = load_zoo_model(zoo_dir / MODEL_FILES[0])
    model.classifier = new_classifier(model.classifier, 10, seed=0)
    return model, import_zoo(model)


def test_int8_gradients_match_torch_autograd(mcunet):
    """Gradients w.r.t. the integer weights and biases (before QAS) of the last blocks and
    the head, on a real-looking input: Relax `Gradient` on our graph vs torch autograd on
    the independent model above. rtol 1e-4 (float32 sums in different orders)."""
    model, imported = mcunet
    main = imported.mod["main"]
    config = SparseUpdateConfig(n_bias_update=6, manual_weight_idx=(36, 39, 41))
    names = list(config.resolve(find_layers(main), [p.name for p in main.params[1:]]).names)
    mod = tvm.transform.Sequential([AppendCrossEntropyLoss(), FloatTrainableParams(names),
                                    BuildGradient(names)])(imported.mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (1, *model.input_shape)).astype(np.float32)
    args = [tvm.runtime.tensor(x), tvm.runtime.tensor(np.array([7], np.int64))]
    args += [tvm.runtime.tensor(v.astype(np.float32) if n in names else v) for n, v in imported.params.items()]
    loss, grads = vm["main_loss_adjoint"](*args)

    params = {n: torch.tensor(v.astype(np.float32), requires_grad=n in names) for n, v in imported.params.items()}
    ref = torch_int8_loss(model, torch.from_numpy(x), 7, params)
    ref.backward()
    assert float(loss.numpy()) == pytest.approx(ref.item(), rel=1e-6)
    for name, grad in zip(names, grads):
        expected = params[name].grad.numpy()
        assert np.abs(expected).max() > 0, name
        np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max(),
                                   err_msg=name)


def test_qas_appears_exactly_on_the_quantized_gradients(mcunet):
    _, imported = mcunet
    program = build_training_program(imported, SCHEME_49KB, TrainOptions(lr=0.05, momentum=0.9))
    script = program.mod["train_step"].script()
    n = len(program.trainable.names)
    assert script.count("_grad_qas: R.Tensor") == n
    off = build_training_program(imported, SCHEME_49KB, TrainOptions(lr=0.05, momentum=0.9, qas=False))
    assert "_grad_qas" not in off.mod["train_step"].script()


def test_qas_on_a_float_graph_is_explained(small_imported):
    with pytest.raises(ConfigError, match="float model"):
        build_training_program(small_imported, SparseUpdateConfig(), TrainOptions(qas=True))


def test_int8_step_updates_integers_in_place(mcunet):
    """A few steps on the Relax VM: weights stay int8 (saturated, rounded), the frozen ones
    and the untrained channels of a sub-tensor update are bit-identical."""
    model, imported = mcunet
    program = build_training_program(imported, SCHEME_49KB, TrainOptions(lr=0.01, momentum=0.9))
    vm = RelaxVMTrainer(program)
    rng = np.random.default_rng(1)
    losses = [vm.step(rng.integers(-128, 128, (1, *model.input_shape)).astype(np.float32), int(rng.integers(10)))
              for _ in range(3)]
    assert all(np.isfinite(losses))
    for name, before in imported.params.items():
        after = vm.param(name)
        assert after.dtype == before.dtype, name
        if name not in program.trainable:
            assert np.array_equal(after, before), name
    head = vm.param("classifier.weight")
    assert not np.array_equal(head, imported.params["classifier.weight"])
    w = "blocks.8.pointwise1.weight"  # conv 24, ratio 0.25 of its input channels
    k = round(imported.params[w].shape[1] * 0.25)
    assert np.array_equal(vm.param(w)[:, k:], imported.params[w][:, k:])


def _smooth_images(n, shape, seed):
    rng = np.random.default_rng(seed)
    c, h, w = shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    return [np.rint(np.stack([np.sin(rng.uniform(1, 4) * xx + rng.uniform(0, 6)) *
                              np.cos(rng.uniform(1, 4) * yy + k) for k in range(c)]) * 120)
            .astype(np.float32)[None] for _ in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["mcunet-49kb", "mcunet-99kb"])
def test_mcunet_trains_on_cortex_m7_like_on_the_host(mcunet, scheme, tmp_path):
    """The int8 training step of MCUNet-5FPS (paper scheme, new 10-class head) compiled for
    the host and for Cortex-M7 under QEMU: the same losses and the same updated int8
    weights and int32 biases (one integer step allowed where a float32 value sits on a
    rounding boundary: libm differs; none was seen), with flash, RAM and instructions."""
    from tvm_tinytrain.session import run_stream
    from tvm_tinytrain.targets.boards import get_board
    from tvm_tinytrain.targets.harness import DUMP, TRAIN, Record
    from tvm_tinytrain.targets.project import write_project

    model, imported = mcunet
    program = build_training_program(imported, SparseUpdateConfig.scheme(scheme),
                                     TrainOptions(lr=0.002, momentum=0.9))
    records = [Record(TRAIN, x, i) for i, x in enumerate(_smooth_images(2, model.input_shape, 3))]
    records.append(Record(DUMP))
    runs, emitted = {}, None
    for target in ("host", "cortex-m7"):
        board = get_board(target)
        # SGD momentum keeps a float32 buffer per trained element: more than 256 KB in all;
        # one lowering for both targets (the C sources do not depend on the board)
        emitted, _ = write_project(program, tmp_path / target, board, ram_bytes=1 << 20, flash_bytes=1 << 20,
                                   emitted=emitted)
        runs[target] = run_stream(board, tmp_path / target, records, timeout_s=1200)
    host, mcu = runs["host"].output, runs["cortex-m7"].output
    np.testing.assert_allclose(mcu.losses, host.losses, rtol=1e-6)
    for name in program.trainable.names:
        a, b = host.params[0][name], mcu.params[0][name]
        assert a.dtype == b.dtype == imported.params[name].dtype, name
        assert np.abs(a.astype(np.int64) - b.astype(np.int64)).max() <= 1, name
    m7 = runs["cortex-m7"]
    assert len(m7.train_instructions) == 2 and min(m7.train_instructions) > 5e7  # a real count (about 1e8)
    assert m7.build.flash_bytes <= 1 << 20
    assert m7.output.stack_bytes > 0


def _fits_sample(model):
    return _smooth_images(1, model.input_shape, 4)[0], 3


@pytest.fixture(scope="module")
def mcunet_first_loss(mcunet):
    """The Relax VM's loss of one step from the zoo weights. A step's loss is its forward
    pass on the weights before the update, so it is the same for every scheme: one VM
    compile (about 20 s) serves them all, and each scheme's C must match it."""
    model, imported = mcunet
    program = build_training_program(imported, SCHEME_49KB, TrainOptions(lr=0.002))
    return RelaxVMTrainer(program).step(*_fits_sample(model))


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["mcunet-49kb", "mcunet-74kb", "mcunet-99kb", "mcunet-124kb", "mcunet-148kb"])
def test_mcunet_step_fits_256kb_on_cortex_m7(mcunet, mcunet_first_loss, scheme, tmp_path):
    """One training step (plain SGD) in 256 KB of SRAM and 1 MB of flash on Cortex-M7, the
    run-time RAM guard on, everything counted (static RAM from the ELF + the measured stack
    high-water mark). The program agrees with its plan: the ELF's arena is the planner's,
    static RAM is the arena, the trainable weights and a small runtime; its loss is the
    Relax VM's (the same for every scheme: `mcunet_first_loss`)."""
    from tvm_tinytrain.session import run_stream
    from tvm_tinytrain.targets.boards import get_board, symbol_size
    from tvm_tinytrain.targets.harness import TRAIN, Record
    from tvm_tinytrain.targets.project import write_project

    model, imported = mcunet
    program = build_training_program(imported, SparseUpdateConfig.scheme(scheme), TrainOptions(lr=0.002))
    board = get_board("cortex-m7")
    _, est = write_project(program, tmp_path, board, ram_bytes=256 * 1024, flash_bytes=1 << 20)
    x, label = _fits_sample(model)
    run = run_stream(board, tmp_path, [Record(TRAIN, x, label)], timeout_s=1200)
    assert run.build.static_ram_bytes + run.output.stack_bytes <= 256 * 1024
    assert run.build.flash_bytes <= 1 << 20
    assert symbol_size(run.build.elf, "tt_arena") == est.arena_bytes
    runtime = run.build.static_ram_bytes - (est.arena_bytes + est.trainable_bytes + est.momentum_bytes)
    assert 0 <= runtime <= 2048
    np.testing.assert_allclose(run.output.losses[0], mcunet_first_loss, rtol=1e-5)


def test_over_budget_step_says_what_it_needs_and_where(mcunet, tmp_path):
    """With SGD momentum the 148 KB scheme does not fit 256 KB (a float32 momentum per
    trained element): the error breaks the need down, names the peak's call, and writes
    nothing."""
    from tvm_tinytrain.errors import BudgetError
    from tvm_tinytrain.targets.boards import get_board
    from tvm_tinytrain.targets.project import write_project

    program = build_training_program(mcunet[1], SparseUpdateConfig.scheme("mcunet-148kb"),
                                     TrainOptions(lr=0.002, momentum=0.9))
    with pytest.raises(BudgetError, match=r"arena \d+ \(at its peak: .*call \d+ of \d+ \((forward|backward)\).*"
                                          r"trainable weights \d+, momentum [1-9]\d+"):
        write_project(program, tmp_path / "p", get_board("cortex-m7"), ram_bytes=256 * 1024)
    assert not (tmp_path / "p").exists()


@pytest.mark.slow
def test_mcunet_patched_prefix_on_cortex_m7(mcunet, mcunet_first_loss, tmp_path):
    """`patch_prefix` (PatchFrozenPrefix, the planner's grid): MCUNet-5FPS's 49 KB scheme on
    Cortex-M7 under QEMU, RAM guard on, everything counted, in less RAM than without it
    (150.1 KB measured by bench/memory.py): the sample and the stem's output no longer
    meet, the peak moves to the backward pass; the ELF's arena is the planner's, the loss
    is the unpatched Relax VM's, and the host build of the same C gives the same weights."""
    import dataclasses
    import json

    from tvm_tinytrain.pipeline import MemoryOptions
    from tvm_tinytrain.session import run_stream
    from tvm_tinytrain.targets.boards import get_board, symbol_size
    from tvm_tinytrain.targets.harness import DUMP, TRAIN, Record
    from tvm_tinytrain.targets.project import write_project

    model, imported = mcunet
    program = dataclasses.replace(build_training_program(imported, SCHEME_49KB, TrainOptions(lr=0.002)),
                                  memory=MemoryOptions(patch_prefix=True))
    x, label = _fits_sample(model)
    runs, emitted = {}, None
    for target in ("cortex-m7", "host"):
        board = get_board(target)
        emitted, est = write_project(program, tmp_path / target, board, ram_bytes=256 * 1024,
                                     flash_bytes=1 << 20, emitted=emitted)
        runs[target] = run_stream(board, tmp_path / target, [Record(TRAIN, x, label), Record(DUMP)], timeout_s=1200)
    report = json.loads((tmp_path / "cortex-m7" / "memory_report.json").read_text())
    assert report["patched_prefix"]["train_step"]["cut_shape"][2] >= 32  # the early, high-resolution stage
    assert "(backward)" in report["train_step"]["peak_call"]
    m7 = runs["cortex-m7"]
    assert m7.build.static_ram_bytes + m7.output.stack_bytes <= 130 * 1024
    assert symbol_size(m7.build.elf, "tt_arena") == est.arena_bytes < 97 * 1024
    np.testing.assert_allclose(m7.output.losses[0], mcunet_first_loss, rtol=1e-5)
    assert m7.output.losses == runs["host"].output.losses
    for name in program.trainable.names:
        np.testing.assert_array_equal(m7.output.params[0][name], runs["host"].output.params[0][name], err_msg=name)
