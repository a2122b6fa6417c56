"""The models a user hands `compile`: factory contract and arguments, a new head for float
models (`--num-classes`), and post-training quantization from the command line."""

import os
import textwrap
import warnings

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

from conftest import INPUT_SHAPE, make_small_net, samples
from test_errors import assert_clean_error, tinytrain
from tvm_tinytrain.cli import load_model, parse_factory_args
from tvm_tinytrain.errors import TinyTrainError
from tvm_tinytrain.frontend.new_head import with_new_head
from tvm_tinytrain.frontend.torch_frontend import import_torch
from tvm_tinytrain.quantize import post_training_quantize

SHAPE = ",".join(map(str, INPUT_SHAPE))


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    d = tmp_path_factory.mktemp("nets")
    (d / "nets.py").write_text(textwrap.dedent("""
        import sys
        sys.path.insert(0, %r)
        import torch
        from torch import nn
        from conftest import INPUT_SHAPE, SmallNet, make_small_net

        def with_example():
            return make_small_net(), torch.zeros(INPUT_SHAPE)

        def sized(classes=4, seed=0, name="x"):
            assert isinstance(classes, int) and isinstance(name, str)
            torch.manual_seed(seed)
            return SmallNet(classes=classes).eval()

        def not_a_model():
            return 42

        def three():
            return make_small_net(), torch.zeros(INPUT_SHAPE), 1

        def plain(classes=4):  # conv-BN-ReLU, a strided conv with ReLU6, global pool, linear
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                 nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(8, classes)).eval(), torch.zeros(INPUT_SHAPE)

        class HardNet(nn.Module):  # Hardswish after the stem, a gate multiply, a scalar add
            def __init__(self):
                super().__init__()
                self.stem, self.gate, self.head = nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 1), nn.Linear(4, 3)

            def forward(self, x):
                x = nn.functional.hardswish(self.stem(x))
                x = x * torch.sigmoid(self.gate(x))
                return self.head(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)) + 1.0

        def hard():
            torch.manual_seed(0)
            return HardNet().eval(), torch.zeros(INPUT_SHAPE)

        class OddNet(nn.Module):  # float ops that PTQ cannot quantize, in three places
            def __init__(self):
                super().__init__()
                self.stem, self.gate, self.head = nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 1), nn.Linear(4, 3)
                self.pool = nn.AvgPool2d(3, stride=1, padding=1)
                self.alpha = nn.Parameter(torch.full((3,), 0.5))

            def forward(self, x):
                x = self.pool(self.gate(nn.functional.pad(self.stem(x), (1, 1, 1, 1))))
                return self.head(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)) * self.alpha

        def odd():
            torch.manual_seed(0)
            return OddNet().eval(), torch.zeros(INPUT_SHAPE)

        def conv_head():
            return nn.Sequential(nn.Conv2d(2, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()), torch.zeros(INPUT_SHAPE)
    """ % os.path.dirname(__file__)))
    x, y = samples(40)
    np.savez(d / "data.npz", x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])
    return d


def _vm_logits(model, x):
    vm = relax.VirtualMachine(tvm.compile(model.mod, target="llvm"), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(v) for v in model.params.values()]).numpy()


def test_factory_may_return_model_and_example(nets):
    """(module, example) needs no --input-shape: the shape comes from the example."""
    model = load_model(f"{nets}/nets.py:with_example", None, None)
    assert tuple(model.input_shape) == INPUT_SHAPE
    with pytest.raises(TinyTrainError, match="differs from the factory's example input"):
        load_model(f"{nets}/nets.py:with_example", "1,2,4,4", None)


def test_factory_arguments_are_literals_or_strings(nets):
    assert parse_factory_args(["classes=7", "seed=2", "name=abc", "shape=(3, 3)", "flag=True"]) == \
        {"classes": 7, "seed": 2, "name": "abc", "shape": (3, 3), "flag": True}
    assert parse_factory_args(["cmd=__import__('os').system('x')"])["cmd"] == "__import__('os').system('x')"
    model = load_model(f"{nets}/nets.py:sized", SHAPE, None, factory_args=["classes=7", "name=abc"])
    assert model.num_classes == 7
    with pytest.raises(TinyTrainError, match="is not NAME=VALUE"):
        parse_factory_args(["7"])
    with pytest.raises(TinyTrainError, match=r"sized\(wrong=1\) failed: .*unexpected keyword"):
        load_model(f"{nets}/nets.py:sized", SHAPE, None, factory_args=["wrong=1"])


@pytest.mark.parametrize("factory, needle", [("not_a_model", "returned a int"),
                                             ("three", "returned a tuple of 3 (SmallNet, Tensor, int)")])
def test_factory_returning_something_else_is_a_clear_error(nets, tmp_path, factory, needle):
    proc = tinytrain("compile", f"{nets}/nets.py:{factory}", "--input-shape", SHAPE, "-o", tmp_path / "p")
    assert_clean_error(proc, needle, "a factory returns an nn.Module, or (nn.Module, example input tensor)")


def test_new_head_computes_what_torch_does_with_that_linear():
    """The new head's logits are torch's for the same network with an nn.Linear holding the
    new weights; the old parameters are untouched, the new ones keep the names."""
    net = make_small_net().eval()
    imported = import_torch(net, torch.zeros(INPUT_SHAPE))
    new = with_new_head(imported, 10, seed=3)
    assert new.num_classes == 10 and list(new.params) == list(imported.params)
    assert new.params["head.weight"].shape == (10, 8) and not new.params["head.bias"].any()
    for name in imported.params:
        if not name.startswith("head."):
            assert new.params[name] is imported.params[name]
    net.head = nn.Linear(8, 10)
    with torch.no_grad():
        net.head.weight.copy_(torch.from_numpy(new.params["head.weight"]))
        net.head.bias.zero_()
    x = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)
    np.testing.assert_allclose(_vm_logits(new, x), net(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_new_head_needs_a_final_linear_layer(nets):
    with pytest.raises(TinyTrainError, match="replaces a final linear layer"):
        load_model(f"{nets}/nets.py:conv_head", None, None, num_classes=5)
    with pytest.raises(TinyTrainError, match=r"must be in \[2, 4096\]"):
        load_model(f"{nets}/nets.py:with_example", None, None, num_classes=1)


def test_new_head_on_an_onnx_model(tmp_path):
    from tvm_tinytrain.frontend.onnx_frontend import import_onnx

    path = tmp_path / "small.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(make_small_net().eval(), (torch.zeros(INPUT_SHAPE),), str(path), dynamo=False)
    model = load_model(str(path), None, None, num_classes=6)
    assert model.num_classes == 6 and import_onnx(str(path)).num_classes == 4


def test_quantize_from_the_command_line_is_the_api_on_the_first_samples(nets, tmp_path):
    """--quantize int8 --calibration data.npz: the project trains the int8 graph that
    post_training_quantize makes from x_train[:N], with QAS."""
    from tvm_tinytrain.cli import _parser, quantize_from_args

    args = _parser().parse_args(["compile", f"{nets}/nets.py:plain", "--quantize", "int8", "--calibration",
                                 str(nets / "data.npz"), "--calibration-samples", "16", "-o", str(tmp_path / "q")])
    model = load_model(args.model, None, None)
    ours = quantize_from_args(model, args)
    theirs = post_training_quantize(model, samples(40)[0][:16])
    assert ours.is_quantized and list(ours.params) == list(theirs.params)
    for name in ours.params:
        assert np.array_equal(ours.params[name], theirs.params[name]), name
    proc = tinytrain("compile", f"{nets}/nets.py:plain", "--factory-args", "classes=5", "--num-classes", "3",
                     "--quantize", "int8", "--calibration", nets / "data.npz", "--target", "host",
                     "-o", tmp_path / "p")
    assert proc.returncode == 0, proc.stderr
    assert "its C compiles" in proc.stdout and (tmp_path / "p" / "tinytrain_model.c").exists()
    assert "int8" in proc.stdout and "3 classes" in proc.stdout, proc.stdout


@pytest.mark.parametrize("flags, needle", [
    (["--quantize", "int8"], "--quantize int8 needs --calibration DATA.npz"),
    (["--calibration", "DATA"], "--calibration goes with --quantize int8"),
    (["--quantize", "int8", "--calibration", "DATA", "--calibration-samples", "0"], "--calibration-samples must be"),
])
def test_quantize_flags_errors(nets, tmp_path, flags, needle):
    flags = [str(nets / "data.npz") if f == "DATA" else f for f in flags]
    proc = tinytrain("compile", f"{nets}/nets.py:with_example", *flags, "-o", tmp_path / "p")
    assert_clean_error(proc, needle)


def test_quantize_refuses_calibration_samples_of_another_shape(nets, tmp_path):
    x, y = samples(4)
    np.savez(tmp_path / "other.npz", x_train=x[:, :1], y_train=y, x_test=x[:, :1], y_test=y)
    proc = tinytrain("compile", f"{nets}/nets.py:with_example", "--quantize", "int8", "--calibration",
                     tmp_path / "other.npz", "-o", tmp_path / "p")
    assert_clean_error(proc, "x_train holds samples of shape (1, 8, 8), the model takes (1, 2, 8, 8)")


def test_quantize_lists_every_place_it_cannot_quantize(nets, tmp_path):
    """PTQ of a model with a pad, a padded average pool and a multiply by a parameter: one
    clean error naming each place by the layer before it, in graph order, then what PTQ
    supports."""
    proc = tinytrain("compile", f"{nets}/nets.py:odd", "--quantize", "int8", "--calibration",
                     nets / "data.npz", "-o", tmp_path / "p")
    assert_clean_error(proc, "3 places hold ops that cannot be quantized (in graph order): "
                             "after stem (conv): cannot quantize pad; after gate (conv): cannot quantize "
                             "avg_pool2d with padding; after head (linear): cannot quantize multiply of a parameter")
    assert "Supported ops: conv2d and linear layers" in proc.stderr
    assert "BlockBuilder" not in proc.stderr and not (tmp_path / "p").exists()


def test_quantize_takes_hardswish_a_sigmoid_gate_and_scalars(nets, tmp_path):
    """The MobileNetV3-style ops PTQ once refused (Hardswish, a sigmoid gate, a scalar add)
    quantize from the command line, and the project builds."""
    proc = tinytrain("compile", f"{nets}/nets.py:hard", "--quantize", "int8", "--calibration",
                     nets / "data.npz", "--target", "host", "-o", tmp_path / "p")
    assert proc.returncode == 0, proc.stderr
    assert "its C compiles" in proc.stdout and "int8" in proc.stdout


def test_an_onnx_file_from_torch_default_exporter_compiles_from_the_command_line(tmp_path):
    """torch.onnx.export as a user calls it (dynamo, weights in m.onnx.data), then `compile`
    with a new head: the project is written and its parameters keep the module names."""
    import json

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(make_small_net().eval(), (torch.zeros(INPUT_SHAPE),), str(tmp_path / "m.onnx"), verbose=False)
    assert (tmp_path / "m.onnx.data").exists()
    proc = tinytrain("compile", tmp_path / "m.onnx", "--num-classes", "3", "--target", "host", "-o", tmp_path / "p")
    assert proc.returncode == 0, proc.stderr
    model = json.loads((tmp_path / "p" / "memory_report.json").read_text())["model"]
    assert model["num_classes"] == 3 and "head.weight" in model["trainable"], model
