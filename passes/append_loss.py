"""AppendCrossEntropyLoss: add `main_loss(x, label, *params) -> loss` beside `main`."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.utils import copy_with_new_vars


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
        func = copy_with_new_vars(mod[self.func_name])
        x, params = func.params[0], list(func.params[1:])
        label = relax.Var("label", relax.TensorType((1,), "int64"))
        bb = relax.BlockBuilder(mod)
        with bb.function(self.loss_func_name, [x, label, *params]):
            with bb.dataflow():
                for block in func.body.blocks:
                    for binding in block.bindings:
                        bb.emit_normalized(binding)
                lsm = bb.emit(relax.op.nn.log_softmax(func.body.body, axis=-1))
                loss = bb.emit_output(relax.op.nn.nll_loss(lsm, label, reduction="mean"))
            bb.emit_func_output(loss)
        # The logits stop being an output of the block: make them a dataflow var again.
        return relax.transform.CanonicalizeBindings()(bb.get())
