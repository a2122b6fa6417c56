"""NarrowWeightGradient: compute a sub-tensor update's weight gradient for its channels only."""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_tinytrain.relax_utils import substitute_vars

_PASS_THROUGH = {"relax.strided_slice", "relax.permute_dims", "relax.reshape"}


@tvm.transform.module_pass(opt_level=0, name="NarrowWeightGradient")
class NarrowWeightGradient:
    """Slice the inputs of a conv's weight-gradient conv, not its output.

    Relax's conv2d gradient computes the full weight gradient as a convolution of the
    layer's input with the output gradient (layout CNHW), then slices it to the filter size.
    When only the first `k` channels of a weight train (`ratio = k / C`), this pass slices
    the *inputs* of that convolution instead, so the gradient is computed, stored and
    applied for those `k` channels only: k/C of the work and of the memory.

    - dense conv (groups 1): the first k input channels of the layer input;
    - depthwise conv (channel axis 0): the first k channels of both the (regrouped) layer
      input and the output gradient, with groups = k.

    Other layers (grouped convs, linears) keep the full gradient; FuseSGDUpdate then
    updates only their first channels. The adjoint's gradient outputs change shape to the
    narrowed one.

    Before (conv2.weight: 8x6x3x3, ratio 0.5)::

        lv9 = R.nn.conv2d(lv9_x, lv13_adjoint, data_layout="CNHW", kernel_layout="IOHW", ...)
        conv2_weight_adjoint = R.strided_slice(lv9, axes=[0, 1, 2, 3], begin=[0, 0, 0, 0],
                                               end=[8, 6, 3, 3])          # (8, 6, 3, 3)

    After::

        x_k = R.strided_slice(lv9_x, axes=[1], begin=[0], end=[3])       # (1, 3, 4, 4)
        lv9 = R.nn.conv2d(x_k, lv13_adjoint, data_layout="CNHW", ...)     # (8, 3, 4, 4)
        conv2_weight_adjoint = R.strided_slice(lv9, ..., end=[8, 6, 3, 3])  # (8, 3, 3, 3)
    """

    def __init__(self, trainable: list[str], ratios: dict[str, float], channel_axis: dict[str, int],
                 func_name: str = "main_loss_adjoint"):
        self.trainable = list(trainable)
        self.ratios, self.channel_axis = ratios, channel_axis
        self.func_name = func_name

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        func = mod[self.func_name]
        bindings = [b for block in func.body.blocks for b in block.bindings]
        producer = {b.var: b.value for b in bindings}
        targets = self._weight_grad_convs(func, bindings, producer)
        if not targets:
            return mod
        bb = relax.BlockBuilder()
        remap: dict = {}
        with bb.function(self.func_name, list(func.params)):
            with bb.dataflow():
                for b in bindings:
                    value = substitute_vars(b.value, remap) if remap else b.value
                    if b.var in targets:
                        value = self._narrowed(bb, value, *targets[b.var])
                    if value.same_as(b.value):
                        bb.emit_normalized(b)
                        continue
                    emit = bb.emit if isinstance(b.var, relax.DataflowVar) else bb.emit_output
                    remap[b.var] = emit(value, name_hint=b.var.name)
                out = substitute_vars(func.body.body, remap)
                out = bb.emit_output(out) if not isinstance(out, relax.Var) else out
            bb.emit_func_output(out)
        new = bb.get()[self.func_name]
        if func.attrs is not None:
            new = new.with_attrs(func.attrs)
        mod = mod.clone() if hasattr(mod, "clone") else tvm.IRModule(dict(mod.functions))
        mod[self.func_name] = new
        return mod

    def _weight_grad_convs(self, func, bindings, producer) -> dict:
        """conv binding var -> (k, axis) for every narrowed weight, found by walking back
        from that weight's gradient output through slices, permutes and reshapes."""
        ret = func.body.body
        grads = producer.get(ret, ret)
        grads = grads.fields[1] if isinstance(grads, relax.Tuple) else None
        if grads is not None and not isinstance(grads, relax.Tuple):
            grads = producer.get(grads)
        if not isinstance(grads, relax.Tuple):
            return {}
        by_name = {p.name: p for p in func.params}
        targets = {}
        for name, grad in zip(self.trainable, grads.fields):
            ratio = self.ratios.get(name, 1.0)
            if ratio >= 1.0 or len(by_name[name].ty.shape) != 4:
                continue
            var = grad
            while isinstance(var, relax.Var) and var in producer:
                value = producer[var]
                if isinstance(value, relax.Var):
                    var = value
                elif isinstance(value, relax.Call) and value.op.name in _PASS_THROUGH:
                    var = value.args[0]
                else:
                    break
            conv = producer.get(var)
            if not (isinstance(conv, relax.Call) and conv.op.name == "relax.nn.conv2d"
                    and conv.attrs.data_layout == "CNHW"):
                continue
            weight_shape = [int(d) for d in by_name[name].ty.shape]
            axis = self.channel_axis.get(name, 1)
            groups = int(conv.attrs.groups)
            if groups != 1 and not (axis == 0 and groups == weight_shape[0]):
                continue  # a grouped, non-depthwise conv: keep the full gradient
            k = max(1, int(round(weight_shape[axis] * ratio)))
            targets[var] = (k, axis)
        return targets

    @staticmethod
    def _narrowed(bb, conv: relax.Call, k: int, axis: int) -> relax.Call:
        data, dy = conv.args
        a = conv.attrs
        if axis == 1:  # dense: layer input (1, C_in, H, W) seen as CNHW -> keep k input channels
            data = bb.emit(relax.op.strided_slice(data, axes=[1], begin=[0], end=[k]))
            groups = 1
        else:  # depthwise: regrouped input (C, 1, H, W) and output gradient (1, C, h, w)
            data = bb.emit(relax.op.strided_slice(data, axes=[0], begin=[0], end=[k]))
            dy = bb.emit(relax.op.strided_slice(dy, axes=[1], begin=[0], end=[k]))
            groups = k
        return relax.op.nn.conv2d(data, dy, strides=a.strides, padding=a.padding, dilation=a.dilation,
                                  groups=groups, data_layout=a.data_layout, kernel_layout=a.kernel_layout,
                                  out_layout=a.out_layout, out_dtype=a.out_dtype)
