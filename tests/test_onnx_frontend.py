"""ONNX frontend: torch CNNs exported to ONNX, imported, run on the Relax VM, compared to torch.

Also checks the normal form the passes rely on, the refusals, and `NormalizeONNX` alone.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax, topi
from tvm.relax.dpl import is_expr, is_op, wildcard
from tvm.relax.frontend.onnx import from_onnx
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from conftest import ThreeUnsupported
from tvm_tinytrain.errors import TinyTrainError, UnsupportedOpError
from tvm_tinytrain.frontend.onnx_frontend import import_onnx
from tvm_tinytrain.passes.normalize_onnx import NormalizeONNX

torch.manual_seed(0)
PRESERVE = torch.onnx.TrainingMode.PRESERVE  # keeps BatchNormalization in the ONNX file


# ------------------------------------------------------------------ models


class ConvBnRelu6(nn.Module):
    """conv + BN + relu6, depthwise conv, residual add, global pool, flatten, linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.dw_bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu6(self.bn(self.conv(x)))
        x = x + F.relu(self.dw_bn(self.dw(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class Pools(nn.Module):
    """max / average pooling, hardtanh, dropout, a view through Shape/Gather/Concat."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4 * 2 * 3, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        x = F.avg_pool2d(x, (2, 3), padding=(0, 1))
        x = F.hardtanh(x)
        return self.fc(self.drop(x.view(x.size(0), -1)))


class PadMean(nn.Module):
    """explicit pad, clamp, mean over H, W, a linear on a 3-D tensor (MatMul + Add)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = torch.clamp(self.conv(F.pad(x, (1, 2, 0, 1))), -0.5, 0.5)
        x = x.mean((2, 3)).reshape(1, 1, 6)
        return self.fc(x).reshape(1, 4)


class Clamps(nn.Module):
    """one-sided clamps (Clip with only min, only max), global pool."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.clamp(torch.clamp(self.conv(x), min=-0.2), max=0.3)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _export(model: nn.Module, shape, path, opset: int = 13, **kwargs):
    """TorchScript exporter (`dynamo=False`), which takes an opset and a training mode;
    `test_dynamo_exporter` covers torch's default one."""
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(*shape),), str(path), dynamo=False,
                          opset_version=opset, **kwargs)
    return path


def _randomize_bn(model: nn.Module):
    """Non-trivial statistics, so a wrong fold shows in the numbers."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 2)
                m.bias.uniform_(-1, 1)
    return model


def _tensor(array):
    return tvm.runtime.tensor(np.ascontiguousarray(array), tvm.cpu())


def _run(imported, x: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(tvm.compile(imported.mod, target="llvm"), tvm.cpu())
    return vm["main"](_tensor(x), *[_tensor(v) for v in imported.params.values()]).numpy()


def _ops(imported) -> list[str]:
    block = imported.mod["main"].body.blocks[0]
    return [b.value.op.name for b in block.bindings if isinstance(b.value, relax.Call)]


# ------------------------------------------------------------------ numbers vs torch


CASES = {
    "conv_bn_relu6_depthwise_residual": (ConvBnRelu6, (1, 3, 8, 8)),
    "pools_dropout_view": (Pools, (1, 1, 8, 16)),
    "pad_clamp_mean_matmul": (PadMean, (1, 3, 6, 6)),
    "one_sided_clamps": (Clamps, (1, 3, 6, 6)),
}


@pytest.mark.parametrize("training_mode", ["eval", "preserve"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch(case, training_mode, tmp_path):
    cls, shape = CASES[case]
    model = _randomize_bn(cls()).eval()
    # PRESERVE keeps BatchNormalization in the ONNX file; EVAL lets torch fold it.
    mode = getattr(torch.onnx.TrainingMode, training_mode.upper())
    path = _export(model, shape, tmp_path / "m.onnx", training=mode)
    imported = import_onnx(path)
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(imported, x), expected, rtol=1e-5, atol=1e-5)
    assert imported.input_shape == shape
    assert imported.num_classes == expected.shape[1]


@pytest.mark.parametrize("opset", [9, 18])
def test_other_opsets(opset, tmp_path):
    """Opset < 13 is converted up; 18 moves ReduceMean axes and Pad axes to inputs."""
    model = _randomize_bn(ConvBnRelu6()).eval()
    path = _export(model, (1, 3, 8, 8), tmp_path / "m.onnx", opset=opset,
                   training=PRESERVE)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype("float32")
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(import_onnx(path), x), expected, rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("case", list(CASES))
def test_dynamo_exporter(case, tmp_path):
    """torch.onnx.export's default (dynamo, onnxscript): its opset, its folding of batch
    norm, and its weights in model.onnx.data beside the file; the parameters keep the
    module paths."""
    cls, shape = CASES[case]
    model = _randomize_bn(cls()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(*shape),), str(tmp_path / "m.onnx"), verbose=False)
    assert (tmp_path / "m.onnx.data").exists() or not any(
        t.external_data for t in onnx.load(str(tmp_path / "m.onnx"), load_external_data=False).graph.initializer)
    imported = import_onnx(tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(imported, x), expected, rtol=1e-5, atol=1e-5)
    trainable = {n for n, p in model.named_parameters() if p.dim() > 1}
    assert trainable <= set(imported.params), (trainable, list(imported.params))


def test_two_batch_norms_after_a_conv_fold_into_it(tmp_path):
    """All ops are checked before any batch norm is folded: the second one still counts as
    following the conv that the first is folded into."""
    model = _randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4),
                                        nn.Flatten(), nn.Linear(4 * 6 * 6, 2)))
    path = _export(model, (1, 3, 8, 8), tmp_path / "m.onnx", training=PRESERVE)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype("float32")
    expected = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(_run(import_onnx(path), x), expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ normal form


def test_normal_form(tmp_path):
    model = _randomize_bn(ConvBnRelu6())
    path = _export(model, (1, 3, 8, 8), tmp_path / "m.onnx", training=PRESERVE)
    imported = import_onnx(path)
    main = imported.mod["main"]
    ops = _ops(imported)

    assert len(main.body.blocks) == 1 and isinstance(main.body.blocks[0], relax.DataflowBlock)
    assert "relax.call_tir" not in ops
    assert not any("batch_norm" in op for op in ops)
    assert "relax.clip" in ops
    assert len(imported.mod.functions) == 1  # no PrimFunc left behind
    assert main.params[0].name == "x"
    # BN folded: weights keep the conv's name, the bias takes the BN beta's name.
    names = ["conv.weight", "bn.bias", "dw.weight", "dw_bn.bias", "fc.weight", "fc.bias"]
    assert [p.name for p in main.params[1:]] == names
    assert list(imported.params) == names
    assert imported.params["fc.weight"].shape == (5, 8)  # (out, in), as torch
    for p in main.params[1:]:
        assert tuple(int(d) for d in p.ty.shape) == imported.params[p.name].shape


def test_matmul_add_is_a_linear(tmp_path):
    """MatMul(x, B) + b (torch's export of a 3-D linear) becomes add(matmul(x, W.T), b)."""
    model = PadMean()
    imported = import_onnx(_export(model, (1, 3, 6, 6), tmp_path / "m.onnx"))
    main = imported.mod["main"]
    names = list(imported.params)
    assert names[:2] == ["conv.weight", "conv.bias"] and names[3] == "fc.bias"
    np.testing.assert_array_equal(imported.params[names[2]], model.fc.weight.detach().numpy())
    w, b = main.params[3], main.params[4]
    linear = is_op("relax.add")(
        is_op("relax.matmul")(wildcard(), is_op("relax.permute_dims")(is_expr(w))), is_expr(b))
    var2val = relax.analysis.get_var2val(main)
    matches = [bd for bd in main.body.blocks[0].bindings if linear.match(bd.value, var2val=var2val)]
    assert len(matches) == 1
    perm = var2val[matches[0].value.args[0]].args[1]
    assert [int(a) for a in var2val[perm].attrs.axes] == [1, 0]


def test_normal_form_is_the_torch_form(tmp_path):
    """conv bias, relu6, global pool, flatten and linear spelled exactly as in imported.py."""

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu6(self.conv(x)), 1), 1))

    imported = import_onnx(_export(Small(), (1, 2, 4, 4), tmp_path / "m.onnx"))

    @I.ir_module
    class Expected:
        @R.function
        def main(
            x: R.Tensor((1, 2, 4, 4), "float32"),
            w: R.Tensor((4, 2, 3, 3), "float32"),
            b: R.Tensor((4,), "float32"),
            fc_w: R.Tensor((3, 4), "float32"),
            fc_b: R.Tensor((3,), "float32"),
        ) -> R.Tensor((1, 3), "float32"):
            R.func_attr({"num_input": 1})
            with R.dataflow():
                conv = R.nn.conv2d(x, w, padding=[1, 1, 1, 1])
                conv_b = R.add(conv, R.reshape(b, R.shape([1, 4, 1, 1])))
                act = R.clip(conv_b, T.float64(0.0), T.float64(6.0))
                pooled = R.mean(act, axis=[-1, -2], keepdims=True)
                flat = R.reshape(pooled, R.shape([1, 4]))
                gv = R.add(R.matmul(flat, R.permute_dims(fc_w, axes=[1, 0])), fc_b)
                R.output(gv)
            return gv

    expected = relax.transform.Normalize()(Expected)
    expected = expected["main"].with_attr("global_symbol", "main")
    tvm.ir.assert_structural_equal(imported.mod["main"], expected)


def test_gemm_trans_b_0_alpha_beta(tmp_path):
    """A Gemm with transB=0 stores W as (in, out): the param is transposed to (out, in)."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((2 * 2 * 2, 3)).astype("float32")
    c = rng.standard_normal((1, 3)).astype("float32")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["in"], ["flat"], name="flatten"),
         helper.make_node("Gemm", ["flat", "W", "C"], ["out"], name="gemm", alpha=0.5, beta=2.0)],
        "g",
        [helper.make_tensor_value_info("in", TensorProto.FLOAT, [1, 2, 2, 2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(c, "C")])
    path = tmp_path / "gemm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    imported = import_onnx(path)
    assert imported.params["W"].shape == (3, 8) and imported.params["C"].shape == (3,)
    x = rng.standard_normal((1, 2, 2, 2)).astype("float32")
    expected = 0.5 * x.reshape(1, 8) @ w + 2.0 * c
    np.testing.assert_allclose(_run(imported, x), expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize("act, op", [(torch.tanh, "Tanh"), (nn.LeakyReLU(0.1), "LeakyRelu"),
                                     (lambda x: torch.softmax(x, 1), "Softmax")])
def test_unsupported_op_is_refused(act, op, tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(act(self.conv(x)).mean((2, 3)))

    path = _export(Net(), (1, 3, 6, 6), tmp_path / "m.onnx")
    node = next(n.name for n in onnx.load(path).graph.node if n.op_type == op)
    with pytest.raises(UnsupportedOpError) as err:
        import_onnx(path)
    message = str(err.value)
    assert op in message and node in message and "Supported ops: Conv" in message



def test_every_unsupported_node_is_listed_in_graph_order(tmp_path):
    """GELU (opset 14 writes it with Erf), LeakyReLU and tanh: all three nodes in one error."""
    path = _export(ThreeUnsupported(), (1, 2, 8, 8), tmp_path / "m.onnx", opset=14)
    with pytest.raises(UnsupportedOpError) as err:
        import_onnx(path)
    assert str(err.value).startswith(
        "m.onnx: 3 ops cannot be trained (in graph order): "
        "Erf node /stem/stem.1/Erf: op Erf is not supported for training; "
        "LeakyRelu node /block/block.1/LeakyRelu: op LeakyRelu is not supported for training; "
        "Tanh node /block/gate/Tanh: op Tanh is not supported for training; Supported ops: Conv"), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("dynamo", [False, True])
def test_mobilenet_v3_ops_train_as_torch_does(dynamo, tmp_path):
    """HardSwish, SiLU (Sigmoid, Mul), a squeeze-excitation, Sub / Div / Mul by scalars,
    Concat along channels and HardSigmoid, from both exporters: the forward is torch's and
    the compiled step (Relax VM) trains like torch autograd + SGD with momentum."""
    from conftest import make_mobilenet_v3_net, torch_sgd_reference
    from tvm_tinytrain.config import SparseUpdateConfig
    from tvm_tinytrain.pipeline import TrainOptions, build_training_program
    from tvm_tinytrain.reference import RelaxVMTrainer

    net = make_mobilenet_v3_net()
    if dynamo:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.zeros(1, 2, 8, 8),), str(tmp_path / "m.onnx"), verbose=False)
        path = tmp_path / "m.onnx"
    else:
        path = _export(net, (1, 2, 8, 8), tmp_path / "m.onnx", opset=14)
    imported = import_onnx(path)
    x = np.random.default_rng(0).standard_normal((1, 2, 8, 8)).astype("float32")
    with torch.no_grad():
        np.testing.assert_allclose(_run(imported, x), net(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)
    config = SparseUpdateConfig(n_bias_update=5, manual_weight_idx=(1, 2, 3, 4), weight_update_ratio=(1, 1, 1, 0.5))
    program = build_training_program(imported, config, TrainOptions(lr=0.05, momentum=0.9))
    rng = np.random.default_rng(1)
    xs, ys = rng.standard_normal((5, 2, 8, 8)).astype(np.float32), rng.integers(0, 3, 5)
    trainer = RelaxVMTrainer(program)
    losses = [trainer.step(x, int(y)) for x, y in zip(xs, ys)]
    ref_losses, ref_params = torch_sgd_reference(net, program, xs, ys)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    for name in program.trainable.names:
        np.testing.assert_allclose(trainer.param(name), ref_params[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_dilation_is_refused(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, dilation=2), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    with pytest.raises(UnsupportedOpError, match=r"Conv node /0/Conv: dilation \[2, 2\]"):
        import_onnx(_export(model, (1, 3, 8, 8), tmp_path / "m.onnx"))


def test_batch_norm_not_after_conv_is_refused(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 2))
    path = _export(model, (1, 3, 6, 6), tmp_path / "m.onnx", training=PRESERVE)
    with pytest.raises(UnsupportedOpError, match="BatchNormalization .* not directly follow"):
        import_onnx(path)


def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(TinyTrainError, match="is not a valid ONNX model"):
        import_onnx(path)
    with pytest.raises(TinyTrainError, match="no such file"):
        import_onnx(tmp_path / "missing.onnx")


def test_dynamic_batch_and_two_outputs_are_refused(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    path = _export(model, (1, 3, 4, 4), tmp_path / "m.onnx", input_names=["in"],
                   dynamic_axes={"in": {0: "batch"}})
    with pytest.raises(TinyTrainError, match="static shape and batch 1"):
        import_onnx(path)

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x).mean((2, 3))
            return y, y + 1

    with pytest.raises(TinyTrainError, match="expected one input and one output"):
        import_onnx(_export(TwoHeads(), (1, 3, 4, 4), tmp_path / "two.onnx"))


# ------------------------------------------------------------------ gradient


def test_gradient_matches_torch(tmp_path):
    """The imported graph (clip and pad included) is differentiable by relax Gradient."""
    gradients = pytest.importorskip("tvm_tinytrain.passes.gradients")  # noqa: F841
    from tvm_tinytrain.passes import AppendCrossEntropyLoss

    model = PadMean().eval()
    imported = import_onnx(_export(model, (1, 3, 6, 6), tmp_path / "m.onnx"))
    mod = AppendCrossEntropyLoss()(imported.mod)
    params = mod["main_loss"].params[2:]
    mod = relax.transform.Gradient("main_loss", require_grads=list(params))(mod)
    mod = relax.transform.LegalizeOps()(mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())

    x = np.random.default_rng(2).standard_normal((1, 3, 6, 6)).astype("float32") * 2
    label = np.array([1], "int64")
    loss, grads = vm["main_loss_adjoint"](_tensor(x), _tensor(label),
                                          *[_tensor(v) for v in imported.params.values()])
    torch_loss = F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(label))
    torch_loss.backward()
    torch_grads = [model.conv.weight.grad, model.conv.bias.grad, model.fc.weight.grad,
                   model.fc.bias.grad]  # the params' order; fc.weight is stored (out, in)
    assert loss.numpy() == pytest.approx(torch_loss.item(), rel=1e-5)
    assert len(grads) == len(torch_grads)
    for grad, expected in zip(grads, torch_grads):
        np.testing.assert_allclose(grad.numpy(), expected.numpy(), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ NormalizeONNX alone


def _clip_pad_onnx() -> onnx.ModelProto:
    """x -> Pad(1 on H and W) -> Clip(0, 6), as an exporter writes it (opset 13)."""
    graph = helper.make_graph(
        [helper.make_node("Pad", ["x", "pads"], ["p"]),
         helper.make_node("Clip", ["p", "lo", "hi"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 6, 6])],
        [numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], "int64"), "pads"),
         numpy_helper.from_array(np.array(0.0, "float32"), "lo"),
         numpy_helper.from_array(np.array(6.0, "float32"), "hi")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_normalize_onnx_pass_before_after():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = from_onnx(_clip_pad_onnx())  # bounds and widths folded in as constants
    bindings = before["main"].body.blocks[0].bindings
    ops = [b.value.op.name for b in bindings if isinstance(b.value, relax.Call)]
    assert ops.count("relax.call_tir") == 3  # pad, maximum, minimum

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 3, 4, 4), "float32")) -> R.Tensor((1, 3, 6, 6), "float32"):
            R.func_attr({"num_input": 1})
            with R.dataflow():
                p = R.nn.pad(x, [0, 0, 0, 0, 1, 1, 1, 1], pad_mode="constant", pad_value=0.0)
                gv = R.clip(p, T.float64(0.0), T.float64(6.0))
                R.output(gv)
            return gv

    after = tvm.transform.Sequential([NormalizeONNX()])(before)
    tvm.ir.assert_structural_equal(after, Expected)
    x = np.random.default_rng(3).standard_normal((1, 3, 4, 4)).astype("float32") * 5
    expected = np.clip(np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)]), 0, 6)
    vm = relax.VirtualMachine(tvm.compile(after, target="llvm"), tvm.cpu())
    np.testing.assert_allclose(vm["main"](_tensor(x)).numpy(), expected)


def test_normalize_onnx_leaves_other_call_tir_alone():
    """Same shape as a clip (call_tir of call_tir with a scalar bound), but add, not max."""
    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit_te(topi.add, x, relax.const(1.0, "float32"))
            y = bb.emit_output(bb.emit_te(topi.minimum, a, relax.const(2.0, "float32")))
        bb.emit_func_output(y)
    before = bb.get()
    tvm.ir.assert_structural_equal(NormalizeONNX()(before), before)
