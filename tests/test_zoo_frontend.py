"""The zoo models as Relax graphs: bit-exact with the independent NumPy int8 oracle."""

import numpy as np
import pytest
import tvm
from tvm import relax

from conftest import MODEL_FILES
from int8_reference import forward_int8
from tvm_tinytrain.frontend.zoo_format import load_zoo_model
from tvm_tinytrain.frontend.zoo_frontend import import_zoo
from tvm_tinytrain.layers import find_layers


def _inputs(model, n=3, seed=0):
    rng = np.random.default_rng(seed)
    xs = [rng.integers(-128, 128, (1, *model.input_shape)).astype(np.int8) for _ in range(n - 1)]
    c, h, w = model.input_shape  # and a smooth image, like a photo
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    smooth = np.stack([np.sin(3 * xx + k) * np.cos(2 * yy - k) for k in range(c)]) * 120
    return xs + [np.rint(smooth).astype(np.int8)[None]]


@pytest.mark.parametrize("name", MODEL_FILES)
def test_int8_forward_is_bit_exact(zoo_dir, name):
    """Relax VM vs the NumPy oracle on real inputs: every int8 logit identical."""
    model = load_zoo_model(zoo_dir / name)
    imported = import_zoo(model)
    vm = relax.VirtualMachine(tvm.compile(imported.mod, target="llvm"), tvm.cpu())
    params = [tvm.runtime.tensor(v) for v in imported.params.values()]
    c = model.classifier
    for x in _inputs(model):
        got = vm["main"](tvm.runtime.tensor(x.astype(np.float32)), *params).numpy()
        expected = (forward_int8(model, x).astype(np.float32) - np.float32(c.y_zero)) * np.float32(c.y_scale)
        assert np.array_equal(got, expected)


def test_params_are_int8_weights_and_int32_biases(zoo_dir):
    model = load_zoo_model(zoo_dir / MODEL_FILES[0])
    imported = import_zoo(model)
    assert len(imported.params) == 2 * len(model.convs())
    assert imported.params["first_conv.weight"].dtype == np.int8
    assert imported.params["blocks.3.depthwise.bias"].dtype == np.int32
    assert np.array_equal(imported.params["classifier.weight"], model.classifier.weight)


def test_new_head_and_layer_order(zoo_dir):
    model = load_zoo_model(zoo_dir / MODEL_FILES[0])
    imported = import_zoo(model, num_classes=10)
    assert imported.num_classes == 10
    assert imported.params["classifier.weight"].shape == (10, model.classifier.in_channel, 1, 1)
    layers = find_layers(imported.mod["main"])
    assert len(layers) == len(model.convs()) == 43  # 42 convs + the classifier, from the input
    assert layers[0].weight == "first_conv.weight" and layers[-1].weight == "classifier.weight"
    assert all(l.bias == l.weight.replace(".weight", ".bias") for l in layers)
