"""Post-training quantization of a float model into the zoo's kind of int8 graph."""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from int8_reference import (avg_pool_int8, dequantize_int8, elementwise_int8, hardsigmoid_f32, hardswish_f32,
                            quantize_int8, sigmoid_f32, silu_f32)
from tvm_tinytrain.config import SparseUpdateConfig
from tvm_tinytrain.demo import DigitsNet, INPUT_SHAPE, load_digits_split
from tvm_tinytrain.frontend.torch_frontend import import_torch
from tvm_tinytrain.layers import find_layers
from tvm_tinytrain.pipeline import TrainOptions, build_training_program
from tvm_tinytrain.quantize import post_training_quantize
from tvm_tinytrain.reference import RelaxVMTrainer


@pytest.fixture(scope="module")
def digits_models():
    (x_old, y_old), _, (x_test, _) = load_digits_split()
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same model whatever the machine's cores (and pytest's workers)
    net = DigitsNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x_old), torch.from_numpy(y_old)
    for _ in range(3):  # a little training, so that the ranges are those of a real model
        for idx in torch.randperm(len(xt)).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    torch.set_num_threads(threads)
    imported = import_torch(net.eval(), torch.zeros(INPUT_SHAPE))
    return imported, post_training_quantize(imported, x_old[:100]), x_test


def _logits(imported, xs):
    vm = relax.VirtualMachine(tvm.compile(imported.mod, target="llvm"), tvm.cpu())
    params = [tvm.runtime.tensor(v) for v in imported.params.values()]
    return np.stack([vm["main"](tvm.runtime.tensor(x[None]), *params).numpy()[0] for x in xs])


def test_int8_graph_agrees_with_the_float_model(digits_models):
    float_model, int8_model, x_test = digits_models
    lf, lq = _logits(float_model, x_test), _logits(int8_model, x_test)
    print(f"int8 and float32 predictions agree on {(lf.argmax(1) == lq.argmax(1)).mean():.4f} of the test digits")
    assert (lf.argmax(1) == lq.argmax(1)).mean() >= 0.95
    assert np.abs(lf - lq).max() < 0.1 * np.abs(lf).max()


def test_parameters_are_int8_per_channel_with_scales(digits_models):
    float_model, int8_model, _ = digits_models
    assert list(int8_model.params) == list(float_model.params)
    for name, value in int8_model.params.items():
        assert value.dtype == (np.int8 if name.endswith("weight") else np.int32), name
        assert name in int8_model.quant_scales
    w, q = float_model.params["down.0.weight"], int8_model.params["down.0.weight"]
    s = int8_model.quant_scales["down.0.weight"]
    assert np.abs(q).reshape(len(q), -1).max(axis=1).tolist() == [127] * len(q)  # symmetric, full range
    np.testing.assert_allclose(q * s.reshape(-1, 1, 1, 1), w, atol=float(s.max()) / 2 + 1e-7)
    assert [l.weight for l in find_layers(int8_model.mod["main"])] == \
        [l.weight for l in find_layers(float_model.mod["main"])]


def test_quantized_model_trains_with_qas_and_float_masters(digits_models):
    _, int8_model, x_test = digits_models
    config = SparseUpdateConfig(n_bias_update=2, manual_weight_idx=(3,))
    program = build_training_program(int8_model, config, TrainOptions(0.1, int8_update="float32"))
    assert program.params["down.0.weight"].dtype == np.float32  # the master copy
    assert program.params["stem.0.weight"].dtype == np.int8      # frozen: stays int8
    assert "_grad_qas" in program.mod["train_step"].script()
    vm = RelaxVMTrainer(program)
    losses = [vm.step(x, i % 5) for i, x in enumerate(x_test[:20])]
    assert np.isfinite(losses).all()
    assert not np.array_equal(vm.param("down.0.weight"), program.params["down.0.weight"])
    assert np.array_equal(vm.param("stem.0.weight"), program.params["stem.0.weight"])


def test_a_fresh_head_gets_room_to_grow(digits_models):
    """The head's weight scale is at least logit_range / x_max / 127 (x_max: the largest
    input its int8 input represents): a scale fitted to a fresh head's random weights
    (|w| <= 1/sqrt(24)) saturated as training grew them, and a saturated master weight
    gets no gradient again (the int8 demo learned 5-9 to 0.885 instead of 0.944)."""
    float_model, int8_model, _ = digits_models
    s = int8_model.quant_scales["classifier.weight"].astype(np.float64)
    x_scale = int8_model.quant_scales["classifier.bias"] / s  # s_b = s_W * s_x
    steps = 8.0 / (s * 127 * x_scale)  # x_max in input steps: max(128 + zero, 127 - zero)
    assert np.allclose(steps, np.round(steps), atol=1e-3) and (127 <= steps).all() and (steps <= 256).all()
    fitted = np.abs(float_model.params["classifier.weight"]).max(axis=1) / 127
    assert (s > 2 * fitted).all()  # the floor, well above the fitted scale
    assert np.abs(int8_model.params["classifier.weight"]).max() < 127
    down = int8_model.quant_scales["down.0.weight"]
    assert np.abs(int8_model.params["down.0.weight"]).reshape(len(down), -1).max(axis=1).tolist() == [127] * len(down)


# ------------------------------------------------ elementwise functions of int8 tensors (rule 9)

def _hardswish_se(x):  # MobileNetV3's squeeze-excitation gate, without its two convs
    return x * torch.nn.functional.hardsigmoid(x.mean((2, 3), keepdim=True))


ELEMENTWISE = {  # name -> (the torch function, the NumPy integer model of its int8 graph)
    "hardswish": (torch.nn.functional.hardswish, lambda q, zs, out: elementwise_int8(hardswish_f32, [(q, *zs)], *out)),
    "hardsigmoid": (torch.nn.functional.hardsigmoid,
                    lambda q, zs, out: elementwise_int8(hardsigmoid_f32, [(q, *zs)], *out)),
    "sigmoid": (torch.sigmoid, lambda q, zs, out: elementwise_int8(sigmoid_f32, [(q, *zs)], *out)),
    "silu": (torch.nn.functional.silu, lambda q, zs, out: elementwise_int8(silu_f32, [(q, *zs)], *out)),
    "scalars": (lambda x: (x * 2.0 - 1.0) / 4.0 + 0.5,
                lambda q, zs, out: elementwise_int8(lambda x: (x * np.float32(2) - np.float32(1)) / np.float32(4)
                                                    + np.float32(0.5), [(q, *zs)], *out)),
    "se_gate": (_hardswish_se,  # the pooled gate keeps the input's scale (rule 7)
                lambda q, zs, out: elementwise_int8(lambda x, g: x * hardsigmoid_f32(g),
                                                    [(q, *zs), (avg_pool_int8(q), *zs)], *out)),
    "concat": (lambda x: torch.cat([x, torch.nn.functional.hardswish(x)], 1),
               lambda q, zs, out: elementwise_int8(lambda x: np.concatenate([x, hardswish_f32(x)], 1),
                                                   [(q, *zs)], *out)),
}


def _output_qparams(model) -> tuple[int, float]:
    """(zero, scale) of the int8 output, as the graph dequantizes it: `(q - zero) * scale`.
    Calibration chose them (the op's range); the arithmetic around them is what is checked."""
    values = {b.var: b.value for block in model.mod["main"].body.blocks for b in block.bindings}
    out = model.mod["main"].body.body
    while isinstance(values[out], relax.Var):
        out = values[out]
    multiply = values[out]
    subtract = values[multiply.args[0]]
    return int(subtract.args[1].value.numpy()), float(multiply.args[1].value.numpy())


class _Elementwise(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x).flatten(1)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_int8_ops_match_the_integer_model(name):
    """PTQ of MobileNetV3's elementwise ops (int8 in, int8 out) against the NumPy integer model
    (tests/int8_reference.py, rule 9), on the Relax VM: every output identical, except, for
    exp-based ops, where the float32 result is within an ulp of a rounding half (the C
    library's expf may differ from the correctly rounded one there)."""
    fn, integer_model = ELEMENTWISE[name]
    rng = np.random.default_rng(1)
    calibration = rng.uniform(-4, 4, (16, 1, 4, 4, 4)).astype(np.float32)
    calibration[0, 0, 0, 0, :2] = [-4.0, 4.0]  # the input's range, exactly
    zs = (int(np.rint(-128 + 4.0 / (8 / 255.0))), float(np.float32(8 / 255.0)))  # asymmetric: (zero, scale)
    imported = import_torch(_Elementwise(fn), torch.zeros(1, 4, 4, 4))
    quantized = post_training_quantize(imported, calibration)
    xs = rng.uniform(-5, 5, (12, 1, 4, 4, 4)).astype(np.float32)  # beyond the range too: saturation
    got = _logits(quantized, xs[:, 0])
    q = quantize_int8(xs[:, 0], *zs)
    out = _output_qparams(quantized)
    expected = dequantize_int8(integer_model(q, zs, out).reshape(len(xs), -1), *out)
    bad = got != expected
    if name in ("sigmoid", "silu"):
        y = np.asarray(dequantize_int8(q, *zs))
        real = (sigmoid_f32(y) if name == "sigmoid" else silu_f32(y)).reshape(len(xs), -1) / np.float32(out[1])
        assert np.all(np.abs(np.abs(real[bad] - np.floor(real[bad])) - 0.5) < 1e-5), real[bad]
        assert bad.mean() < 0.01
    else:
        assert not bad.any(), f"{bad.sum()} of {bad.size} differ"
    assert len(np.unique(got)) > 20  # not a saturated or constant output
