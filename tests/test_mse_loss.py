"""`--loss mse`: an autoencoder trained on its reconstruction error, against torch autograd.

A fully connected autoencoder as MLPerf Tiny's anomaly detector is built (Linear, BatchNorm1d
and ReLU, a (1, features) input): BatchNorm1d folds into the linear layer before it, the
sparse-update indices count its hidden layers, and the step's loss is
`mean((model(x) - x) ** 2)`: the Relax VM and the C program on the host equal torch's
`mse_loss` + `torch.optim.SGD`, and `tinytrain run` reports the held-out reconstruction error.
"""

import json
import os
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from conftest import torch_sgd_reference
from test_errors import assert_clean_error, tinytrain
from tvm_tinytrain.config import SparseUpdateConfig
from tvm_tinytrain.frontend.torch_frontend import import_torch
from tvm_tinytrain.pipeline import TrainOptions, build_training_program
from tvm_tinytrain.reference import RelaxVMTrainer
from tvm_tinytrain.session import run_stream
from tvm_tinytrain.targets.boards import get_board
from tvm_tinytrain.targets.harness import DUMP, PREDICT, TRAIN, Record

FEATURES = 24
N_STEPS = 4
# hidden biases of the last 3 layers, the code layer's weight on half its inputs, the output layer
CONFIG = SparseUpdateConfig(n_bias_update=3, manual_weight_idx=(2,), weight_update_ratio=(0.5,))
OPTIONS = TrainOptions(lr=0.05, momentum=0.9, loss="mse")


def make_autoencoder(features: int = FEATURES, hidden: int = 16, code: int = 4):
    """Linear-BN1d-ReLU blocks down to a code and back, then a linear output layer."""
    torch.manual_seed(0)
    sizes = [features, hidden, code, hidden]
    layers = []
    for i, o in zip(sizes, sizes[1:]):
        layers += [nn.Linear(i, o), nn.BatchNorm1d(o), nn.ReLU()]
    net = nn.Sequential(*layers, nn.Linear(hidden, features))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return net.eval(), torch.zeros(1, features)


def samples(n: int, seed: int = 1):
    return np.random.default_rng(seed).standard_normal((n, FEATURES)).astype(np.float32)


@pytest.fixture(scope="module")
def program():
    net, example = make_autoencoder()
    return build_training_program(import_torch(net, example), CONFIG, OPTIONS)


def test_batch_norm_after_a_linear_layer_is_folded(program):
    ops = {getattr(b.value.op, "name", "") for blk in program.mod["main"].body.blocks for b in blk.bindings
           if hasattr(b.value, "op")}
    assert not any("batch_norm" in op for op in ops), ops
    assert program.trainable.names == ("0.bias", "3.bias", "6.weight", "6.bias", "9.weight", "9.bias")


def test_relax_vm_step_equals_torch_mse_and_sgd(program):
    xs = samples(N_STEPS)
    ref_losses, ref_params = torch_sgd_reference(make_autoencoder()[0], program, xs, [0] * N_STEPS)
    vm = RelaxVMTrainer(program)
    losses = [vm.step(x, 0) for x in xs]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for name in program.trainable.names:
        np.testing.assert_allclose(vm.param(name), ref_params[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def ae_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("ae")
    (d / "ae.py").write_text(textwrap.dedent("""
        import sys
        sys.path.insert(0, %r)
        from test_mse_loss import make_autoencoder
    """ % os.path.dirname(__file__)))
    x = samples(40, seed=2)
    # labels of an anomaly detector's test set (1 = anomaly): an mse model ignores them
    np.savez(d / "data.npz", x_train=x[:30], y_train=np.full(30, 7), x_test=x[30:], y_test=np.arange(10) % 2)
    return d


def test_host_program_trains_like_torch_and_run_reports_reconstruction_error(ae_file, program, tmp_path):
    out = tmp_path / "p"
    proc = tinytrain("compile", f"{ae_file}/ae.py:make_autoencoder", "--loss", "mse", "--n-bias-update", "3",
                     "--weight-idx", "2", "--ratio", "0.5", "--lr", "0.05", "--momentum", "0.9",
                     "--target", "host", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert f"{FEATURES} outputs, mse" in proc.stdout, proc.stdout
    assert "an autoencoder's reconstruction); `label` is ignored" in (out / "tinytrain_model.h").read_text()
    assert json.loads((out / "memory_report.json").read_text())["model"]["loss"] == "mse"
    xs = samples(N_STEPS)
    res = run_stream(get_board("host"), out, [Record(TRAIN, x, 0) for x in xs] + [Record(DUMP)]).output
    ref_losses, ref_params = torch_sgd_reference(make_autoencoder()[0], program, xs, [0] * N_STEPS)
    np.testing.assert_allclose(res.losses, ref_losses, rtol=1e-5)
    for name in program.trainable.names:
        np.testing.assert_allclose(res.params[0][name], ref_params[name].ravel(), rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    run = tinytrain("run", out, "--data", ae_file / "data.npz", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["accuracy_before"] is None and result["steps"] == 30
    # the error before training is the untrained model's: recompute it with torch
    net = make_autoencoder()[0]
    x_test = np.load(ae_file / "data.npz")["x_test"]
    with torch.no_grad():
        expected = float(((net(torch.from_numpy(x_test)).numpy() - x_test) ** 2).mean())
    assert result["reconstruction_error_before"] == pytest.approx(expected, rel=1e-5)
    assert result["reconstruction_error_after"] < result["reconstruction_error_before"]


def test_mse_needs_an_output_of_the_input_size(tmp_path):
    (tmp_path / "clf.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def make():
            return nn.Sequential(nn.Linear(24, 8), nn.ReLU(), nn.Linear(8, 3)), torch.zeros(1, 24)
    """))
    proc = tinytrain("compile", f"{tmp_path}/clf.py:make", "--loss", "mse", "-o", tmp_path / "p")
    assert_clean_error(proc, "the model's output (1, 3) must have as many elements as its input (1, 24)")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("dynamo", [True, False])
def test_onnx_autoencoder_from_both_exporters_trains_like_torch(tmp_path, dynamo):
    """torch.onnx.export's default (dynamo: BatchNorm1d folded by the exporter) and
    TorchScript (BatchNormalization after each Gemm, folded here) files: the same names and
    the same steps as torch."""
    import warnings

    from tvm_tinytrain.frontend.onnx_frontend import import_onnx

    net, example = make_autoencoder()
    path = tmp_path / "ae.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), str(path), dynamo=dynamo)
    program = build_training_program(import_onnx(str(path)), CONFIG, OPTIONS)
    assert program.trainable.names == ("0.bias", "3.bias", "6.weight", "6.bias", "9.weight", "9.bias")
    xs = samples(N_STEPS)
    ref_losses, ref_params = torch_sgd_reference(net, program, xs, [0] * N_STEPS)
    vm = RelaxVMTrainer(program)
    np.testing.assert_allclose([vm.step(x, 0) for x in xs], ref_losses, rtol=1e-5)
    for name in program.trainable.names:
        np.testing.assert_allclose(vm.param(name), ref_params[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_int8_autoencoder_reconstructs_its_int8_sample(tmp_path):
    """PTQ + QAS with --loss mse: the device keeps the sample only as int8, so the target is
    the quantized sample, and training and prediction both take the int8 input. The host
    program equals the Relax VM (losses, trained parameters, outputs)."""
    from tvm_tinytrain.cli import compile_to_project
    from tvm_tinytrain.quantize import post_training_quantize

    net, example = make_autoencoder()
    imported = post_training_quantize(import_torch(net, example), samples(32, seed=5))
    program = build_training_program(imported, CONFIG, TrainOptions(lr=0.01, loss="mse"))
    compile_to_project(imported, CONFIG, program.options, "host", tmp_path / "p")
    assert "typedef int8_t tt_input_t;" in (tmp_path / "p" / "tinytrain_model.h").read_text()
    xs = samples(N_STEPS)
    res = run_stream(get_board("host"), tmp_path / "p",
                     [Record(TRAIN, x, 0) for x in xs] + [Record(PREDICT, xs[0]), Record(DUMP)]).output
    vm = RelaxVMTrainer(program)
    np.testing.assert_allclose(res.losses, [vm.step(x, 0) for x in xs], rtol=1e-5)
    np.testing.assert_allclose(res.logits[0], vm.predict(xs[0]), rtol=1e-5, atol=1e-6)
    for name in program.trainable.names:
        np.testing.assert_allclose(res.params[0][name], vm.param(name).ravel(), rtol=1e-5, atol=1e-6,
                                   err_msg=name)
