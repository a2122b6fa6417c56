"""Each training-graph pass on its own, and the whole step against torch autograd + SGD."""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from conftest import OPTIONS, SPARSE, make_small_net, samples, torch_sgd_reference
from tvm_tinytrain.config import SparseUpdateConfig
from tvm_tinytrain.layers import find_layers
from tvm_tinytrain.passes import AppendCrossEntropyLoss, BuildGradient, FuseSGDUpdate
from tvm_tinytrain.pipeline import TrainOptions, build_training_program
from tvm_tinytrain.reference import RelaxVMTrainer


@I.ir_module
class Linear:
    @R.function
    def main(x: R.Tensor((1, 4), "float32"), w: R.Tensor((3, 4), "float32")) -> R.Tensor((1, 3), "float32"):
        with R.dataflow():
            wt = R.permute_dims(w, axes=[1, 0])
            y = R.matmul(x, wt)
            R.output(y)
        return y


@I.ir_module
class LinearWithLoss:
    @R.function
    def main(x: R.Tensor((1, 4), "float32"), w: R.Tensor((3, 4), "float32")) -> R.Tensor((1, 3), "float32"):
        with R.dataflow():
            wt = R.permute_dims(w, axes=[1, 0])
            y = R.matmul(x, wt)
            R.output(y)
        return y

    @R.function
    def main_loss(x: R.Tensor((1, 4), "float32"), label: R.Tensor((1,), "int64"),
                  w: R.Tensor((3, 4), "float32")) -> R.Tensor((), "float32"):
        with R.dataflow():
            wt = R.permute_dims(w, axes=[1, 0])
            y = R.matmul(x, wt)
            lsm = R.nn.log_softmax(y, axis=-1)
            loss = R.nn.nll_loss(lsm, label, reduction="mean")
            R.output(loss)
        return loss


def test_append_loss_structure():
    after = AppendCrossEntropyLoss()(Linear)
    tvm.ir.assert_structural_equal(after, LinearWithLoss)


def test_passes_compose_in_a_sequential():
    seq = tvm.transform.Sequential([AppendCrossEntropyLoss(), BuildGradient(["w"]),
                                    FuseSGDUpdate(["w"], lr=0.1)])
    with tvm.transform.PassContext(opt_level=3):
        mod = seq(Linear)
    assert {"main", "main_loss", "main_loss_adjoint", "train_step"} <= {gv.name_hint for gv in mod.functions}
    relax.analysis.well_formed(mod)  # raises if not


def _adjoint(imported, config):
    main = imported.mod["main"]
    ts = config.resolve(find_layers(main), [p.name for p in main.params[1:]])
    mod = tvm.transform.Sequential([AppendCrossEntropyLoss(), BuildGradient(list(ts.names))])(imported.mod)
    return mod["main_loss_adjoint"]


def _backward_ops(adjoint):
    """Op names of the bindings after the loss (the backward pass)."""
    ops, seen_loss = [], False
    for b in adjoint.body.blocks[0].bindings:
        op = getattr(getattr(b.value, "op", None), "name", "")
        if op == "relax.nn.nll_loss":
            seen_loss = True
        elif seen_loss and op:
            ops.append((op, b.value))
    return ops


def test_frozen_layers_get_no_backward_work(small_imported):
    """Only the head trains: no conv, pooling or activation gradient is computed at all."""
    ops = _backward_ops(_adjoint(small_imported, SparseUpdateConfig()))
    names = {op for op, _ in ops}
    assert not names & {"relax.nn.conv2d", "relax.nn.conv2d_transpose", "relax.grad.max_pool2d_backward",
                        "relax.grad.avg_pool2d_backward"}
    assert len(ops) < 15


def test_no_backprop_before_the_first_trainable_layer(small_imported):
    """conv2 trains (weight): its weight gradient is computed, its input gradient is not,
    and nothing reaches the frozen layers before it."""
    ops = _backward_ops(_adjoint(small_imported, SparseUpdateConfig(manual_weight_idx=[2])))
    convs = [v for op, v in ops if op in ("relax.nn.conv2d", "relax.nn.conv2d_transpose")]
    assert len(convs) == 1  # the weight gradient only
    assert "relax.grad.max_pool2d_backward" not in {op for op, _ in ops}


def test_gradient_pass_refuses_unknown_parameter(small_imported):
    from tvm_tinytrain.errors import ConfigError
    mod = AppendCrossEntropyLoss()(small_imported.mod)
    # TVM's pass infrastructure re-raises Python errors as RuntimeError, message intact.
    with pytest.raises((ConfigError, RuntimeError), match="no such parameter"):
        BuildGradient(["nope"])(mod)


def test_sgd_update_is_in_place_in_the_ir(small_program):
    script = small_program.mod["train_step"].script()
    # with momentum, two per parameter: the momentum buffer, then the parameter
    assert script.count("R.call_tir_inplace") == 2 * len(small_program.trainable.names)
    assert script.count("inplace_indices=[0]") == 2 * len(small_program.trainable.names)


@pytest.mark.parametrize("options, config", [
    (OPTIONS, SPARSE),
    (TrainOptions(lr=0.1, momentum=0.0), SparseUpdateConfig(params=["dw.weight", "conv0.0.bias"])),
])
def test_train_step_matches_torch_autograd_and_sgd(small_imported, options, config):
    """Relax VM vs torch: five steps, losses and every parameter (fp32, rtol 1e-5)."""
    net = make_small_net()
    program = build_training_program(small_imported, config, options)
    xs, ys = samples(5)
    vm = RelaxVMTrainer(program)
    losses = [vm.step(x, y) for x, y in zip(xs, ys)]
    ref_losses, ref_params = torch_sgd_reference(net, program, xs, ys)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for name, value in small_imported.params.items():
        if name in program.trainable:
            np.testing.assert_allclose(vm.param(name), ref_params[name], rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            assert np.array_equal(vm.param(name), value), f"frozen {name} changed"


def test_sub_tensor_update_leaves_other_channels_bit_identical(small_imported, small_program):
    vm = RelaxVMTrainer(small_program)
    for x, y in zip(*samples(3)):
        vm.step(x, y)
    before, after = small_imported.params["conv2.weight"], vm.param("conv2.weight")
    k = 3  # ratio 0.5 of 6 input channels
    assert np.array_equal(after[:, k:], before[:, k:])
    assert not np.array_equal(after[:, :k], before[:, :k])


def test_narrowed_weight_gradient_is_computed_for_trained_channels_only(small_imported):
    """conv2.weight (8x6x3x3) with ratio 0.5: the weight-gradient conv reads 3 input channels
    and produces 8x3 filters; no full-size (8, 6, ...) gradient exists anywhere."""
    config = SparseUpdateConfig(manual_weight_idx=[2], weight_update_ratio=[0.5])
    program = build_training_program(small_imported, config, TrainOptions(lr=0.1, momentum=0.9))
    step = program.mod["train_step"]
    convs = [b for b in step.body.blocks[0].bindings
             if getattr(getattr(b.value, "op", None), "name", "") == "relax.nn.conv2d"
             and b.value.attrs.data_layout == "CNHW"]
    assert len(convs) == 1
    assert [int(d) for d in convs[0].var.ty.shape][:2] == [8, 3]
    assert [int(d) for d in convs[0].value.args[0].ty.shape] == [1, 3, 4, 4]
    types = {b.var.name: [int(d) for d in b.var.ty.shape] for b in step.body.blocks[0].bindings
             if isinstance(b.var.ty, relax.TensorType)}
    assert types["conv2_weight_adjoint"] == [8, 3, 3, 3]
    assert [8, 6, 4, 4] not in types.values()
    assert program.momentum_shapes["momentum.conv2.weight"] == (8, 3, 3, 3)


def test_narrowed_depthwise_gradient_matches_torch(small_imported):
    """Depthwise dw.weight (6x1x3x3), ratio 0.5: the first 3 channels train, computed with
    groups=3; losses and weights equal torch's (gradient of the other channels zeroed)."""
    config = SparseUpdateConfig(manual_weight_idx=[1], weight_update_ratio=[0.5])
    program = build_training_program(small_imported, config, TrainOptions(lr=0.1, momentum=0.9))
    step = program.mod["train_step"]
    convs = [b.value for b in step.body.blocks[0].bindings
             if getattr(getattr(b.value, "op", None), "name", "") == "relax.nn.conv2d"
             and b.value.attrs.data_layout == "CNHW"]
    assert len(convs) == 1 and int(convs[0].attrs.groups) == 3
    xs, ys = samples(4)
    vm = RelaxVMTrainer(program)
    losses = [vm.step(x, y) for x, y in zip(xs, ys)]
    ref_losses, ref_params = torch_sgd_reference(make_small_net(), program, xs, ys)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    np.testing.assert_allclose(vm.param("dw.weight"), ref_params["dw.weight"], rtol=1e-5, atol=1e-6)
    assert np.array_equal(vm.param("dw.weight")[3:], small_imported.params["dw.weight"][3:])
