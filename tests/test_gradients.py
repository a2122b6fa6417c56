"""`relax.transform.Gradient` against torch autograd, op by op.

Each case is a tiny torch model, usually `body -> flatten -> Linear(., 5)`. It is exported
with `torch.export.export` and imported with `from_exported_program(ep,
keep_params_as_input=True, unwrap_unit_return_tuple=True)`; a cross-entropy loss
(`log_softmax` + `nll_loss`, int64 label of shape (1,)) is appended in Relax, `Gradient`
differentiates it w.r.t. the input *and* every parameter (so every op's data gradient and
every weight gradient is checked), the result is compiled for `llvm` (`TARGET`) and run on the Relax VM,
and the loss and every gradient are compared with torch autograd on the same numbers.

Tolerance: `rtol=1e-5, atol=1e-6` (float32 throughout; observed differences are ~1e-7).

Speed: one LLVM build costs about a second, so all torch cases are differentiated into one
IRModule (one function per case) and compiled once per test session (`batch` fixture); a case
whose import or differentiation fails still fails on its own.

Boundary convention (see `tvm_tinytrain.passes.gradients`): `clip` passes the gradient only
strictly inside `(lo, hi)`, `relu` only for `x > 0`, as torch does for relu6 / hardtanh /
relu. torch's `clamp` backward is inclusive at the bounds, but the torch frontend imports
clamp as the same `relax.clip`; so at inputs exactly on a bound we give 0 where torch's clamp
gives the output gradient. `test_clamp_boundaries` pins that difference.
"""

from __future__ import annotations

import importlib
import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import tvm
from tvm import relax
from tvm.relax.frontend.torch import from_exported_program

import tvm_tinytrain.passes.gradients as gradients  # registers the missing gradients

RTOL, ATOL = 1e-5, 1e-6
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.export internals
NUM_CLASSES = 5
LABEL = 3

# ----------------------------------------------------------------------------- harness


def append_ce_loss(mod: tvm.IRModule, name: str = "main_loss") -> tvm.IRModule:
    """`main(x, *params) -> logits` becomes `name(x, *params, label) -> scalar mean CE loss`."""
    main = relax.utils.copy_with_new_vars(mod["main"])
    label = relax.Var("label", relax.TensorType((1,), "int64"))
    bb = relax.BlockBuilder()
    with bb.function(name, list(main.params) + [label]):
        with bb.dataflow():
            for binding in main.body.blocks[0].bindings:
                bb.emit_normalized(binding)
            log_probs = bb.emit(relax.op.nn.log_softmax(main.body.body))
            loss = bb.emit_output(relax.op.nn.nll_loss(log_probs, label, reduction="mean"))
        bb.emit_func_output(loss)
    return bb.get()


def differentiate(mod: tvm.IRModule, name: str) -> relax.Function:
    """`name_adjoint(x, *params, label) -> (loss, (d x, d params...))` for `mod["main"]`."""
    loss_mod = append_ce_loss(mod, name)
    wrt = list(loss_mod[name].params[:-1])  # the input and every parameter, not the label
    return relax.transform.Gradient(name, require_grads=wrt)(loss_mod)[name + "_adjoint"]


# The llvm target with LLVM's optimizer off: same IEEE float32 arithmetic (no fast-math either
# way), and it halves the build + JIT time of the ~280 kernels the cases need.
TARGET = tvm.target.Target({"kind": "llvm", "opt-level": 0})


def build(funcs: dict[str, relax.Function]) -> relax.VirtualMachine:
    funcs = {tvm.ir.GlobalVar(n): f.with_attr("global_symbol", n) for n, f in funcs.items()}
    return relax.VirtualMachine(tvm.compile(tvm.IRModule(funcs), target=TARGET), tvm.cpu())


def run(vm, name: str, inputs: list[np.ndarray], label: int = LABEL):
    tensors = [tvm.runtime.tensor(np.ascontiguousarray(a), tvm.cpu()) for a in inputs]
    tensors.append(tvm.runtime.tensor(np.array([label], dtype="int64"), tvm.cpu()))
    loss, grads = vm[name](*tensors)
    return float(loss.numpy()), [g.numpy() for g in grads]


def torch_loss_and_grads(model: nn.Module, x: np.ndarray, names: list[str], label: int = LABEL):
    """Loss and the gradients w.r.t. `x` and the named parameters, from torch autograd."""
    params = dict(model.named_parameters())
    xt = torch.tensor(x, requires_grad=True)
    loss = F.cross_entropy(model(xt), torch.tensor([label]))
    grads = torch.autograd.grad(loss, [xt] + [params[n] for n in names])
    return float(loss.detach()), [g.numpy() for g in grads]


def import_torch(model: nn.Module, x: np.ndarray):
    """Relax module plus the torch parameter names in the order of `main`'s parameters."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(model, (torch.tensor(x),))
    mod = from_exported_program(ep, keep_params_as_input=True, unwrap_unit_return_tuple=True)
    names = list(ep.graph_signature.parameters)
    assert len(mod["main"].params) == 1 + len(names)
    return mod, names


def assert_matches(got_loss, got_grads, ref_loss, ref_grads, names):
    np.testing.assert_allclose(got_loss, ref_loss, rtol=RTOL, atol=ATOL, err_msg="loss")
    for name, got, ref in zip(["input"] + names, got_grads, ref_grads, strict=True):
        assert got.shape == ref.shape, name
        np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL, err_msg=f"d loss / d {name}")


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def classifier(body: nn.Module, x: np.ndarray) -> nn.Module:
    """`body -> flatten -> Linear(., NUM_CLASSES)` in eval mode, seeded (deterministic)."""
    torch.manual_seed(0)
    body = body.eval()
    with torch.no_grad():
        features = body(torch.tensor(x)).flatten(1).shape[1]
    torch.manual_seed(1)
    return nn.Sequential(body, nn.Flatten(), nn.Linear(features, NUM_CLASSES)).eval()


def random_input(shape=(1, 4, 8, 8), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def with_values_on(bounds, scale=4.0, shift=0.0, shape=(1, 4, 8, 8)) -> np.ndarray:
    """Random input in which every tenth element is exactly one of `bounds`."""
    x = random_input(shape) * scale + shift
    flat = x.reshape(-1)
    for i, b in enumerate(bounds):
        flat[i :: 10 * len(bounds)] = b
    return x


def integer_input(shape=(1, 4, 8, 8)) -> np.ndarray:
    """Small integers: plenty of exact ties inside pooling windows."""
    return np.round(random_input(shape) * 1.2).astype("float32")


# ----------------------------------------------------------------------------- cases

# CONV_CASES / OP_CASES: name -> body factory, run on random_input(); the other tables map
# name -> (body factory, input). The model is always classifier(body, input).
CONV_CASES = {  # Conv2d(in, out, kernel, stride, padding, groups=..., bias=...) on 1x4x8x8
    "conv_k3_s1_p1": lambda: nn.Conv2d(4, 6, 3, 1, 1),  # also followed by every OP_CASE
    "conv_k1_s1_p0": lambda: nn.Conv2d(4, 6, 1, 1, 0),
    "conv_k1_s2_p0": lambda: nn.Conv2d(4, 6, 1, 2, 0),  # weight grad is sliced
    "conv_k3_s2_p0": lambda: nn.Conv2d(4, 6, 3, 2, 0),  # data grad needs output_padding
    "conv_k5_s1_p0": lambda: nn.Conv2d(4, 6, 5, 1, 0),
    "conv_k5_s2_p2": lambda: nn.Conv2d(4, 6, 5, 2, 2),
    "conv_k3_s1_p1_nobias": lambda: nn.Conv2d(4, 6, 3, 1, 1, bias=False),
    "dwconv_k3_s1_p1": lambda: nn.Conv2d(4, 4, 3, 1, 1, groups=4),
    "dwconv_k3_s2_p1": lambda: nn.Conv2d(4, 4, 3, 2, 1, groups=4),
    "dwconv_k5_s1_p2": lambda: nn.Conv2d(4, 4, 5, 1, 2, groups=4),
    "dwconv_mult2_k3_s1_p1": lambda: nn.Conv2d(4, 8, 3, 1, 1, groups=4),
    "gconv2_k3_s1_p1": lambda: nn.Conv2d(4, 6, 3, 1, 1, groups=2),
    "gconv2_k3_s2_p2": lambda: nn.Conv2d(4, 6, 3, 2, 2, groups=2),
    "gconv2_k1_s1_p0": lambda: nn.Conv2d(4, 6, 1, 1, 0, groups=2),
    "gconv2_k5_s2_p0_nobias": lambda: nn.Conv2d(4, 6, 5, 2, 0, groups=2, bias=False),
}


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, 1, 1)
        self.conv2 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(x))) + x


def conv_then(*layers):
    return lambda: nn.Sequential(nn.Conv2d(4, 6, 3, 1, 1), *layers)


OP_CASES = {
    "relu6": conv_then(nn.ReLU6()),
    "hardtanh": conv_then(nn.Hardtanh(-0.3, 0.4)),
    "clamp": conv_then(Lambda(lambda x: torch.clamp(x, -0.3, 0.4))),
    "clamp_min_only": conv_then(Lambda(lambda x: torch.clamp(x, min=0.1))),
    "residual_add": Residual,
    "avg_pool2d_k2": conv_then(nn.AvgPool2d(2)),
    "avg_pool2d_k3_s2_p1": conv_then(nn.AvgPool2d(3, 2, 1)),
    "avg_pool2d_k3_s2_p1_exclude_pad": conv_then(nn.AvgPool2d(3, 2, 1, count_include_pad=False)),
    "max_pool2d_k3_s2_p1": conv_then(nn.MaxPool2d(3, 2, 1)),
    "adaptive_avg_pool2d_1x1": conv_then(nn.AdaptiveAvgPool2d(1)),
    "adaptive_avg_pool2d_2x2": conv_then(nn.AdaptiveAvgPool2d(2)),
    "adaptive_avg_pool2d_3x3_nondivisible": conv_then(nn.AdaptiveAvgPool2d(3)),
    "adaptive_avg_pool2d_3x8_nondivisible": conv_then(nn.AdaptiveAvgPool2d((3, 8))),
    "mean_hw": conv_then(Lambda(lambda x: x.mean((2, 3)))),
    "mean_hw_keepdim": conv_then(Lambda(lambda x: x.mean((2, 3), keepdim=True))),
    "squeeze": conv_then(Lambda(lambda x: x.mean((2, 3), keepdim=True).squeeze(-1).squeeze(-1))),
    "flatten_module": conv_then(nn.Flatten(), nn.ReLU()),
    "view_and_reshape": conv_then(Lambda(lambda x: x.view(1, 6, 64).relu().reshape(1, 12, 32))),
    "linear_hidden": lambda: nn.Sequential(
        nn.Flatten(), nn.Linear(256, 16), nn.ReLU(), nn.Linear(16, 8, bias=False)
    ),
    "dropout_eval": conv_then(nn.Dropout(0.5), nn.ReLU()),
    "pad_constant_zero": lambda: nn.Sequential(
        Lambda(lambda x: F.pad(x, (1, 2, 0, 1))), nn.Conv2d(4, 6, 3)
    ),
    "pad_constant_value": lambda: nn.Sequential(
        nn.Conv2d(4, 6, 3), Lambda(lambda x: F.pad(x, (2, 2, 2, 2), value=0.5))
    ),
}

# Inputs that sit exactly on the kinks (0 and 6 for relu6, ...) or tie inside pool windows.
BOUNDARY_CASES = {
    "relu6_at_0_and_6": (nn.ReLU6, with_values_on([0.0, 6.0], shift=3.0)),
    "hardtanh_at_-1_and_2": (lambda: nn.Hardtanh(-1.0, 2.0), with_values_on([-1.0, 2.0])),
    "relu_at_0": (nn.ReLU, with_values_on([0.0])),
    "max_pool2d_k2_ties": (lambda: nn.MaxPool2d(2), integer_input()),
    "max_pool2d_k3_s2_p1_ties": (lambda: nn.MaxPool2d(3, 2, 1), integer_input()),
    "relu_then_max_pool2d_ties": (
        lambda: nn.Sequential(nn.ReLU(), nn.MaxPool2d(2)), integer_input()
    ),
}
CLAMP_BOUNDS = (-1.0, 2.0)
SPECIAL_CASES = {  # compared by their own test, not by test_against_torch
    "clamp_at_-1_and_2": (
        lambda: Lambda(lambda x: torch.clamp(x, *CLAMP_BOUNDS)), with_values_on(CLAMP_BOUNDS)
    ),
}

ALL_CASES = {
    **{k: (v, random_input()) for k, v in {**CONV_CASES, **OP_CASES}.items()},
    **BOUNDARY_CASES,
    **SPECIAL_CASES,
}


@pytest.fixture(scope="module")
def batch():
    """All cases differentiated into one module and compiled once.

    Returns `(vm, {case: (vm function, torch model, x, param names)}, {case: exception})`.
    """
    cases, funcs, errors = {}, {}, {}
    for case, (make_body, x) in ALL_CASES.items():
        try:
            model = classifier(make_body(), x)
            mod, names = import_torch(model, x)
            funcs[f"grad_{len(funcs)}"] = differentiate(mod, f"loss_{len(funcs)}")
            cases[case] = (f"grad_{len(funcs) - 1}", model, x, names)
        except Exception as error:  # reported by that case's test
            errors[case] = error
    return build(funcs), cases, errors


def run_case(batch, case):
    vm, cases, errors = batch
    if case in errors:
        raise errors[case]
    func, model, x, names = cases[case]
    state = dict(model.named_parameters())
    got = run(vm, func, [x] + [state[n].detach().numpy() for n in names])
    return got, torch_loss_and_grads(model, x, names), names


@pytest.mark.parametrize("case", [*CONV_CASES, *OP_CASES, *BOUNDARY_CASES])
def test_against_torch(batch, case):
    (loss, grads), (ref_loss, ref_grads), names = run_case(batch, case)
    assert_matches(loss, grads, ref_loss, ref_grads, names)


def test_boundary_inputs_are_really_on_the_boundary():
    x = BOUNDARY_CASES["relu6_at_0_and_6"][1]
    assert (x == 0).sum() >= 10 and (x == 6).sum() >= 10 and (x > 6).any() and (x < 0).any()


def test_clamp_boundaries(batch):
    """torch.clamp passes the gradient AT the bounds; relax.clip (shared with relu6) does not."""
    (loss, grads), (ref_loss, ref_grads), names = run_case(batch, "clamp_at_-1_and_2")
    x = SPECIAL_CASES["clamp_at_-1_and_2"][1]
    on_bound = np.isin(x, CLAMP_BOUNDS)
    assert on_bound.sum() >= 20
    # everywhere but the input gradient at the bounds: equal to torch
    off = ~on_bound
    assert_matches(
        loss, [grads[0] * off] + grads[1:], ref_loss, [ref_grads[0] * off] + ref_grads[1:], names
    )
    # at the bounds: our convention is 0, torch's clamp passes the output gradient
    assert np.all(grads[0][on_bound] == 0)
    assert np.all(ref_grads[0][on_bound] != 0)
    # ... which is exactly what torch's hardtanh (= relu6's op) does
    hardtanh = classifier(nn.Hardtanh(*CLAMP_BOUNDS), x)
    hardtanh.load_state_dict(batch[1]["clamp_at_-1_and_2"][1].state_dict())
    _, hardtanh_grads = torch_loss_and_grads(hardtanh, x, names)
    np.testing.assert_allclose(grads[0], hardtanh_grads[0], rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- Relax-level cases

# relax.flatten is never emitted by the torch frontend (flatten / view become relax.reshape),
# nor adaptive_avg_pool2d with a 1x1 output (it becomes relax.mean): check them directly.


def _relax_main(body, x_shape, w_shape):
    """`main(x, w) -> logits` with `logits = body(bb, x, w)`."""
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    w = relax.Var("w", relax.TensorType(w_shape, "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x, w))
        bb.emit_func_output(out)
    return bb.get()


RELAX_CASES = {
    # name: (relax body, torch body, x shape, w shape)
    "relax.flatten": (
        lambda bb, x, w: relax.op.reshape(
            bb.emit(relax.op.matmul(bb.emit(relax.op.flatten(x)), w)), (1, NUM_CLASSES)
        ),
        lambda x, w: (x.flatten() @ w)[None],
        (1, 2, 3, 4), (24, NUM_CLASSES),
    ),
    "relax.squeeze": (
        lambda bb, x, w: relax.op.matmul(bb.emit(relax.op.squeeze(x, [2, 3])), w),
        lambda x, w: x.squeeze(3).squeeze(2) @ w,
        (1, 4, 1, 1), (4, NUM_CLASSES),
    ),
    "relax.adaptive_avg_pool2d_1x1": (
        lambda bb, x, w: relax.op.matmul(
            bb.emit(relax.op.reshape(bb.emit(relax.op.nn.adaptive_avg_pool2d(x, 1)), (1, 4))), w
        ),
        lambda x, w: F.adaptive_avg_pool2d(x, 1).reshape(1, 4) @ w,
        (1, 4, 3, 5), (4, NUM_CLASSES),
    ),
    "relax.adaptive_avg_pool2d_same_size": (
        lambda bb, x, w: relax.op.matmul(
            bb.emit(relax.op.reshape(bb.emit(relax.op.nn.adaptive_avg_pool2d(x, (3, 5))), (1, 60))), w
        ),
        lambda x, w: F.adaptive_avg_pool2d(x, (3, 5)).reshape(1, 60) @ w,
        (1, 4, 3, 5), (60, NUM_CLASSES),
    ),
    "relax.squeeze_all": (
        lambda bb, x, w: relax.op.reshape(
            bb.emit(relax.op.matmul(bb.emit(relax.op.squeeze(x)), w)), (1, NUM_CLASSES)
        ),
        lambda x, w: (x.squeeze() @ w)[None],
        (1, 4, 1, 1), (4, NUM_CLASSES),
    ),
}


def test_relax_level_gradients():
    funcs = {}
    for i, (body, _, x_shape, w_shape) in enumerate(RELAX_CASES.values()):
        funcs[f"grad_{i}"] = differentiate(_relax_main(body, x_shape, w_shape), f"loss_{i}")
    vm = build(funcs)
    for i, (name, (_, torch_body, x_shape, w_shape)) in enumerate(RELAX_CASES.items()):
        x, w = random_input(x_shape, seed=1), random_input(w_shape, seed=2)
        loss, grads = run(vm, f"grad_{i}", [x, w])
        xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
        ref = F.cross_entropy(torch_body(xt, wt), torch.tensor([LABEL]))
        ref_grads = [g.numpy() for g in torch.autograd.grad(ref, [xt, wt])]
        assert_matches(loss, grads, float(ref.detach()), ref_grads, [name + ": w"])


def test_unsupported_pad_mode_is_reported():
    """Our UnsupportedOpError's message survives Gradient; its type does not (RuntimeError)."""

    def reflect_pad(bb, x, w):
        padded = bb.emit(relax.op.nn.pad(x, [0, 0, 0, 0, 1, 1, 1, 1], "reflect"))
        return relax.op.matmul(bb.emit(relax.op.reshape(padded, (1, 100))), w)

    mod = _relax_main(reflect_pad, (1, 1, 8, 8), (100, NUM_CLASSES))
    with pytest.raises(Exception, match="pad mode 'reflect' is not supported"):
        differentiate(mod, "loss")


def test_registration_is_idempotent():
    importlib.reload(gradients)
    gradients.register_all()
    for op_name in gradients.GRADIENTS:
        assert tvm.ir.Op.get(op_name).get_attr("FPrimalGradient") is not None


# ----------------------------------------------------------------------------- ONNX path


def _import_onnx(model: nn.Module, x: np.ndarray):
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.tensor(x),), buffer, dynamo=False)
        mod = from_onnx(onnx.load_from_string(buffer.getvalue()), keep_params_in_input=True)
    names = [p.name for p in mod["main"].params[1:]]  # ONNX initializer names = torch names here
    return mod, names


def _ops(func: relax.Function) -> list[str]:
    ops = []
    for binding in func.body.blocks[0].bindings:
        value = binding.value
        if isinstance(value, relax.Call):
            name = value.op.name
            ops.append(f"call_tir:{value.args[0].name_hint}" if name == "relax.call_tir" else name)
    return ops


def test_onnx_relu_model_matches_torch():
    x = random_input((1, 3, 8, 8))
    model = classifier(nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.ReLU(), nn.AvgPool2d(2)), x)
    mod, names = _import_onnx(model, x)
    state = dict(model.named_parameters())
    vm = build({"grad": differentiate(mod, "loss")})
    got = run(vm, "grad", [x] + [state[n].detach().numpy() for n in names])
    assert_matches(*got, *torch_loss_and_grads(model, x, names), names)


def test_onnx_relu6_after_our_frontend_matches_torch(tmp_path):
    """ONNX `Clip` imports as an opaque call_tir that `Gradient` cannot differentiate; after
    the ONNX frontend (NormalizeONNX) it is relax.clip and the gradients equal torch's."""
    from tvm_tinytrain.frontend.onnx_frontend import import_onnx

    x = random_input((1, 3, 8, 8))
    model = classifier(nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.ReLU6()), x)
    raw, _ = _import_onnx(model, x)
    assert "relax.clip" not in _ops(raw["main"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.tensor(x),), str(tmp_path / "m.onnx"), dynamo=False)
    imported = import_onnx(tmp_path / "m.onnx")
    assert "relax.clip" in _ops(imported.mod["main"])
    names = list(imported.params)
    state = dict(model.named_parameters())
    assert set(names) <= set(state)
    vm = build({"grad": differentiate(imported.mod, "loss")})
    got = run(vm, "grad", [x] + [imported.params[n] for n in names])
    assert_matches(*got, *torch_loss_and_grads(model, x, names), names)
