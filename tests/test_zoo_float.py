"""The fp32 counterpart of a zoo model (`import_zoo_float`): the int8 network dequantized."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm

from conftest import MODEL_FILES
from int8_reference import forward_int8
from tvm_tinytrain.config import SparseUpdateConfig
from tvm_tinytrain.frontend.zoo_float import dequantize_conv, import_zoo_float, real_range
from tvm_tinytrain.frontend.zoo_format import load_zoo_model
from tvm_tinytrain.frontend.zoo_frontend import import_zoo, new_classifier
from tvm_tinytrain.layers import find_layers
from tvm_tinytrain.pipeline import TrainOptions, build_training_program
from tvm_tinytrain.reference import RelaxVMTrainer


@pytest.fixture(scope="module")
def mcunet(zoo_dir):
    return load_zoo_model(zoo_dir / MODEL_FILES[0])


@pytest.fixture(scope="module")
def fp32_program(mcunet):
    """The fp32 graph with the original ImageNet head as a 49 KB-scheme training program."""
    return build_training_program(import_zoo_float(mcunet), SparseUpdateConfig.scheme("mcunet-49kb"),
                                  TrainOptions(lr=0.01, momentum=0.9))


@pytest.fixture(scope="module")
def trainer(fp32_program):
    """Compiled once: its `main` (run on the initial params) is the fp32 predict function."""
    return RelaxVMTrainer(fp32_program)


def _fp32_logits(trainer, x):
    params = [tvm.runtime.tensor(v) for v in trainer.program.params.values()]
    return trainer.vm["main"](tvm.runtime.tensor(x), *params).numpy()[0]


def _int8_logits(model, x):
    """The dequantized int8 logits of `import_zoo(model)`, from the NumPy oracle that
    tests/test_zoo_frontend.py proves bit-exact with that graph (no second compile)."""
    c = model.classifier
    q = forward_int8(model, x.astype(np.int8)).astype(np.float32).reshape(-1)
    return (q - np.float32(c.y_zero)) * np.float32(c.y_scale)


def _smooth_images(n, shape, seed=0):
    """Photo-like inputs: smooth int8 patterns (a float32 tensor of int8 values)."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    return [np.rint(np.stack([np.sin(rng.uniform(1, 4) * xx + rng.uniform(0, 6) + k) *
                              np.cos(rng.uniform(1, 4) * yy - k) for k in range(c)]) * 120)
            .astype(np.float32)[None] for _ in range(n)]


def torch_float_logits(model, x, classifier):
    """The dequantized network written independently in torch (from the zoo format's rules)."""
    def conv(x, c, clip=True):
        w, b = dequantize_conv(c)
        y = F.conv2d(x, torch.from_numpy(w), torch.from_numpy(b), c.stride, c.padding, 1, c.groups)
        return y.clamp(*real_range(c.y_zero, c.y_scale)) if clip else y

    fc = model.first_conv
    y = conv((torch.from_numpy(x) - fc.x_zero) * fc.x_scale, fc)
    for block in model.blocks:
        block_in = y
        for c in block.convs:
            y = conv(y, c)
        if block.residual is not None:
            y = (block_in + y).clamp(*real_range(block.residual.y_zero, block.residual.y_scale))
    return conv(y.mean((2, 3), keepdim=True), classifier, clip=False).flatten(1)[0].numpy()


def test_same_names_layers_and_head(mcunet):
    fp32, int8 = import_zoo_float(mcunet, num_classes=10, seed=3), import_zoo(mcunet, num_classes=10, seed=3)
    assert list(fp32.params) == list(int8.params)
    assert all(v.dtype == np.float32 for v in fp32.params.values())
    assert not fp32.is_quantized and fp32.num_classes == 10
    layers = find_layers(fp32.mod["main"])
    assert len(layers) == len(mcunet.convs()) == 43
    assert layers == find_layers(int8.mod["main"])  # same names, groups, channel axes, in order
    assert layers[0].weight == "first_conv.weight" and layers[-1].weight == "classifier.weight"
    head = new_classifier(mcunet.classifier, 10, seed=3)
    np.testing.assert_array_equal(int8.params["classifier.weight"], head.weight)
    np.testing.assert_allclose(fp32.params["classifier.weight"],
                               head.weight * head.w_scales.reshape(-1, 1, 1, 1), rtol=1e-6)
    c = mcunet.blocks[3].depthwise
    np.testing.assert_allclose(fp32.params["blocks.3.depthwise.bias"],
                               c.bias.astype(np.float64) * c.w_scales * c.x_scale, rtol=1e-6)


def test_matches_an_independent_torch_model(mcunet, trainer):
    """The float graph is exactly the dequantized network: torch agrees to float32 noise."""
    for x in _smooth_images(2, mcunet.input_shape, seed=1):
        got = _fp32_logits(trainer, x)
        expected = torch_float_logits(mcunet, x, mcunet.classifier)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_close_to_the_int8_model(mcunet, trainer):
    """Original 1000-class head, smooth images: the fp32 logits are the int8 logits up to
    quantization noise. The int8 logits move in steps of the head's y_scale (0.17) and carry
    the rounding of 43 layers; measured here: max |diff| 0.65..1.4 on logits spanning about
    -7..9, mean |diff| 0.16..0.25, correlation >= 0.99, the same top-1 on 5 of 6 images
    (the sixth's two leading classes swap). Asserted loosely: mean |diff| < 0.4, max |diff|
    < 2.5, correlation > 0.98, top-1 equal on >= 4 of 6 and always among the other's top 3."""
    agree = 0
    for x in _smooth_images(6, mcunet.input_shape, seed=0):
        f, q = _fp32_logits(trainer, x), _int8_logits(mcunet, x)
        d = np.abs(f - q)
        assert d.mean() < 0.4 and d.max() < 2.5, (d.mean(), d.max())
        assert np.corrcoef(f, q)[0, 1] > 0.98
        assert np.argmax(f) in np.argsort(-q)[:3] and np.argmax(q) in np.argsort(-f)[:3]
        agree += int(np.argmax(f) == np.argmax(q))
    assert agree >= 4


def test_a_training_step_runs_on_the_vm(mcunet, fp32_program, trainer):
    """The 49 KB scheme selects the same tensors as in the int8 graph, without QAS; steps on
    the VM change exactly the trainable ones (sub-tensor: only the first channels)."""
    program, vm = fp32_program, trainer
    int8_main = import_zoo(mcunet).mod["main"]
    assert program.trainable == SparseUpdateConfig.scheme("mcunet-49kb").resolve(
        find_layers(int8_main), [p.name for p in int8_main.params[1:]])
    assert "_grad_qas" not in program.mod["train_step"].script()
    xs = _smooth_images(3, mcunet.input_shape, seed=2)
    losses = [vm.step(x, label) for x, label in zip(xs, (1, 400, 818))]
    assert all(np.isfinite(losses))
    for name, before in program.params.items():
        after = vm.param(name)
        if name not in program.trainable:
            assert np.array_equal(after, before), name
    assert not np.array_equal(vm.param("classifier.weight"), program.params["classifier.weight"])
    w = "blocks.8.pointwise1.weight"  # conv 24, the first 25 % of its input channels train
    k = round(program.params[w].shape[1] * 0.25)
    assert not np.array_equal(vm.param(w)[:, :k], program.params[w][:, :k])
    assert np.array_equal(vm.param(w)[:, k:], program.params[w][:, k:])
