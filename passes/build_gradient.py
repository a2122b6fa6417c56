"""BuildGradient: the backward graph of the loss for exactly the trainable parameters."""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_tinytrain.errors import ConfigError

from . import gradients  # noqa: F401  (registers the gradients TVM lacks)


@tvm.transform.module_pass(opt_level=0, name="BuildGradient")
class BuildGradient:
    """Relax `Gradient` on `main_loss`, with the trainable set given by parameter name.

    Adds `main_loss_adjoint(x, label, *params) -> (loss, (grad_p0, grad_p1, ...))` with one
    gradient per trainable parameter, in the order given. Relax's `Gradient` already prunes
    at layer level: frozen weights get no gradient and nothing is back-propagated before
    the earliest trainable tensor (tests check both).

    Before::

        def main_loss(x, label, w1, w2) -> loss: ...

    After (added, for `trainable=["w2"]`)::

        def main_loss_adjoint(x, label, w1, w2) -> R.Tuple(loss, R.Tuple(grad_w2)): ...
    """

    def __init__(self, trainable: list[str], func_name: str = "main_loss"):
        self.trainable = list(trainable)
        self.func_name = func_name

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        func = mod[self.func_name]
        by_name = {p.name: p for p in func.params[2:]}
        missing = [n for n in self.trainable if n not in by_name]
        if missing:
            raise ConfigError(f"cannot train {missing}: no such parameter in {self.func_name}")
        require = [by_name[n] for n in self.trainable]
        return relax.transform.Gradient(self.func_name, require_grads=require)(mod)
