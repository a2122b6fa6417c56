"""Add `main_loss(x, label, *params) -> loss` beside `main`: the classifier's softmax
cross-entropy (AppendCrossEntropyLoss), or an autoencoder's mean squared reconstruction
error (AppendReconstructionLoss, `--loss mse`). Both keep the label parameter, so every
training step has the same signature (a reconstruction ignores it)."""

from __future__ import annotations

import math

import tvm
from tvm import relax
from tvm.relax.utils import copy_with_new_vars

from tvm_tinytrain.errors import ConfigError

from .int8_activations import input_quantization_chain

LOSSES = ("cross-entropy", "mse")


@tvm.transform.module_pass(opt_level=0, name="AppendCrossEntropyLoss")
class AppendCrossEntropyLoss:
    """Append a softmax cross-entropy loss to a classifier, as a new function.

    `main` stays as it is (it becomes `predict` on the device). The new function takes the
    class label as an int64 tensor of shape (1,) right after the input.

    Before::

        @R.function
        def main(x: R.Tensor((1, 1, 8, 8)), w: R.Tensor((5, 64))) -> R.Tensor((1, 5)):
            with R.dataflow():
                ...
                logits = ...
                R.output(logits)
            return logits

    After (added)::

        @R.function
        def main_loss(x: R.Tensor((1, 1, 8, 8)), label: R.Tensor((1,), "int64"),
                      w: R.Tensor((5, 64))) -> R.Tensor((), "float32"):
            with R.dataflow():
                ...
                logits = ...
                lsm = R.nn.log_softmax(logits, axis=-1)
                loss = R.nn.nll_loss(lsm, label, reduction="mean")
                R.output(loss)
            return loss
    """

    def __init__(self, func_name: str = "main", loss_func_name: str = "main_loss"):
        self.func_name = func_name
        self.loss_func_name = loss_func_name

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return _append_loss(mod, self.func_name, self.loss_func_name, self.loss)

    @staticmethod
    def loss(bb: relax.BlockBuilder, out: relax.Expr, x: relax.Var, label: relax.Var,
             func: relax.Function) -> relax.Expr:
        lsm = bb.emit(relax.op.nn.log_softmax(out, axis=-1))
        return relax.op.nn.nll_loss(lsm, label, reduction="mean")


@tvm.transform.module_pass(opt_level=0, name="AppendReconstructionLoss")
class AppendReconstructionLoss:
    """Append the mean squared error between the output and the input (an autoencoder's
    reconstruction loss: `mean((out - reshape(x, out.shape)) ** 2)`), as a new function with
    the signature of AppendCrossEntropyLoss's, its label unused. The output must have as
    many elements as the input. An int8 model compares with its quantized input,
    `(q - zero) * scale`: the device holds the sample only as int8 (`tt_input_from_float`)."""

    def __init__(self, func_name: str = "main", loss_func_name: str = "main_loss"):
        self.func_name = func_name
        self.loss_func_name = loss_func_name

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        check_reconstruction(mod[self.func_name])
        return _append_loss(mod, self.func_name, self.loss_func_name, self.loss)

    @staticmethod
    def loss(bb: relax.BlockBuilder, out: relax.Expr, x: relax.Var, label: relax.Var,
             func: relax.Function) -> relax.Expr:
        target = x
        quantized = input_quantization_chain(func, [b for blk in func.body.blocks for b in blk.bindings])
        if quantized is not None:  # an int8 model: the sample as it sees it, int8 on the device
            _, q, scale, zero = quantized
            target = bb.emit(relax.op.multiply(relax.op.subtract(q, relax.const(zero, "float32")),
                                               relax.const(scale, "float32")))
        diff = bb.emit(relax.op.subtract(out, relax.op.reshape(target, out.ty.shape)))
        return relax.op.mean(relax.op.multiply(diff, diff))


def check_reconstruction(func: relax.Function) -> None:
    """Refuse a model whose output is not the input's size for the mse loss (call it before
    the pass: an error raised inside a TVM pass reaches the caller as a RuntimeError)."""
    shapes = [tuple(int(d) for d in t.shape) for t in (func.params[0].ty, func.ret_ty)]
    if math.prod(shapes[0]) != math.prod(shapes[1]):
        raise ConfigError(f"the mse (reconstruction) loss compares the output with the input: the model's "
                          f"output {shapes[1]} must have as many elements as its input {shapes[0]}")


def _append_loss(mod: tvm.IRModule, func_name: str, loss_func_name: str, loss) -> tvm.IRModule:
    func = copy_with_new_vars(mod[func_name])
    x, params = func.params[0], list(func.params[1:])
    label = relax.Var("label", relax.TensorType((1,), "int64"))
    bb = relax.BlockBuilder(mod)
    with bb.function(loss_func_name, [x, label, *params]):
        with bb.dataflow():
            for block in func.body.blocks:
                for binding in block.bindings:
                    bb.emit_normalized(binding)
            out = bb.emit_output(loss(bb, func.body.body, x, label, func))
        bb.emit_func_output(out)
    # The logits stop being an output of the block: make them a dataflow var again.
    return relax.transform.CanonicalizeBindings()(bb.get())
