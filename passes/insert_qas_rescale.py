"""InsertQASRescale: Quantization-Aware Scaling of the gradients of int8 / int32 parameters."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax


@tvm.transform.module_pass(opt_level=0, name="InsertQASRescale")
class InsertQASRescale:
    """Multiply each quantized parameter's gradient by its scale to the power -2.

    With `W = s_W * W_q` (per output channel) and `b = s_W s_x * b_q`, the gradient with
    respect to the integers is `G_Wq = s_W G_W`, so its ratio to the weight is off by
    `s_W^2` compared with float training. QAS (Lin et al., 2022, section 2.1) restores it:
    `G~_Wq = G_Wq * s_W^-2`, `G~_bq = G_bq * s_W^-2 * s_x^-2`. `scales` gives, per
    parameter, the real value of one integer unit (s_W, or s_W * s_x for a bias).

    Before::

        def main_loss_adjoint(...) -> R.Tuple(loss, R.Tuple(grad_w, grad_b)):
            ...
            return (loss, (w_adjoint, b_adjoint))

    After::

            w_qas = R.multiply(w_adjoint, R.const(s_W ** -2, shape (O, 1, 1, 1)))
            b_qas = R.multiply(b_adjoint, R.const((s_W * s_x) ** -2, shape (O,)))
            return (loss, (w_qas, b_qas))

    A narrowed depthwise gradient (first k channels) takes the first k scales.
    """

    def __init__(self, trainable: list[str], scales: dict[str, np.ndarray],
                 func_name: str = "main_loss_adjoint"):
        self.trainable = list(trainable)
        self.scales = scales
        self.func_name = func_name

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        func = mod[self.func_name]
        out = func.body.body
        bb = relax.BlockBuilder()
        with bb.function(self.func_name, list(func.params)):
            with bb.dataflow():
                for block in func.body.blocks:
                    for b in block.bindings:
                        bb.emit_normalized(b)
                loss = bb.emit(relax.TupleGetItem(out, 0))
                grads = bb.emit(relax.TupleGetItem(out, 1))
                new_grads = []
                for i, name in enumerate(self.trainable):
                    grad = bb.emit(relax.TupleGetItem(grads, i), name_hint=f"{name.replace('.', '_')}_grad")
                    if name not in self.scales:
                        new_grads.append(grad)
                        continue
                    shape = [int(d) for d in grad.ty.shape]
                    factor = np.float32(1.0) / np.square(self.scales[name][:shape[0]].astype(np.float32))
                    factor = factor.reshape([shape[0]] + [1] * (len(shape) - 1))
                    new_grads.append(bb.emit(relax.op.multiply(grad, relax.const(factor, "float32")),
                                             name_hint=f"{name.replace('.', '_')}_grad_qas"))
                result = bb.emit_output(relax.Tuple([loss, relax.Tuple(new_grads)]))
            bb.emit_func_output(result)
        mod = tvm.IRModule(dict(mod.functions))
        mod[self.func_name] = bb.get()[self.func_name]
        return mod
