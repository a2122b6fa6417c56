"""In-place SGD update kernels as TIR, one per parameter.

`p -= lr * g` (or, with momentum, `v = mu * v + g; p -= lr * v`, as torch.optim.SGD with
dampening 0), restricted to the first `k` channels of `axis` for a sub-tensor update. The
gradient `g` and momentum `v` may hold just those channels (NarrowWeightGradient) or the
whole tensor. A quantized parameter (int8 weight, int32 bias) is updated in float and
rounded back to its integer type, saturating: `p = sat(rint(float(p) - lr * step))`.

Every parameter is viewed as (outer, channels, inner) around `axis`, so one loop nest
serves every rank. The kernels write into their first (and, with momentum, third)
argument: Relax calls them with `call_tir_inplace` and the C driver updates the weights
where they live. They are loop nests, not schedulable blocks: `op_pattern` 8 (opaque)
keeps FuseOps from fusing them.
"""

from __future__ import annotations

import math

from tvm import tirx
from tvm.script import tirx as T

# Saturation bounds of the integer types, as float32 values that TVM's C printer writes
# exactly: it prints float immediates with 7 significant digits (`%e`), so 2**31 - 128 would
# come out as 2.147484e+09f = 2**31, which overflows int32 (undefined; x86 and Arm differ).
SATURATION = {"int8": (-128.0, 127.0), "int32": (-2.147483e9, 2.147483e9)}


def c_exact(value: float) -> float:
    """`value` with the 7 significant digits TVM's C codegen keeps of a float immediate, so
    that the Relax VM (LLVM) and the generated C use the same constant."""
    return float(f"{value:.6e}")


def sgd_update_kernel(shape: tuple[int, ...], grad_shape: tuple[int, ...], lr: float, momentum: float,
                      axis: int = 1, k: int | None = None, dtype: str = "float32"):
    """PrimFunc(p, g[, v]) updating `p` (and `v`, shaped like `g`) in place over channels
    [0, k) of `axis`; `dtype` is the parameter's storage type."""
    dtype = str(dtype)
    if dtype != "float32" and dtype not in SATURATION:
        raise ValueError(f"no SGD kernel for a parameter stored as {dtype}")
    axis = min(axis, len(shape) - 1)
    outer, inner = math.prod(shape[:axis]), math.prod(shape[axis + 1:])
    channels, grad_channels = shape[axis], grad_shape[axis]
    k = min(k or grad_channels, grad_channels)
    lr, mu = c_exact(lr), c_exact(momentum)
    quantized = dtype != "float32"
    lo, hi = SATURATION.get(dtype, (0.0, 0.0))

    def _round_back(old, step):
        """rint, saturate, back to the integer type. A NaN (a diverged gradient) leaves the
        integer as it was instead of an undefined float-to-int conversion."""
        new = tirx.Cast("float32", old) - tirx.const(lr, "float32") * step
        saturated = tirx.max(tirx.min(tirx.round(new), tirx.const(hi, "float32")), tirx.const(lo, "float32"))
        return tirx.if_then_else(tirx.isnan(new), old, tirx.Cast(dtype, saturated))

    @T.prim_func(private=True)
    def sgd(p_handle: T.handle, g_handle: T.handle):
        T.func_attr({"tir.noalias": True, "op_pattern": 8})
        p = T.match_buffer(p_handle, shape, dtype)
        g = T.match_buffer(g_handle, grad_shape, "float32")
        pv = T.decl_buffer((outer, channels, inner), dtype, data=p.data)
        gv = T.decl_buffer((outer, grad_channels, inner), "float32", data=g.data)
        for o, c, i in T.grid(outer, k, inner):
            if quantized:
                pv[o, c, i] = _round_back(pv[o, c, i], gv[o, c, i])
            else:
                pv[o, c, i] = pv[o, c, i] - T.float32(lr) * gv[o, c, i]

    @T.prim_func(private=True)
    def sgd_momentum(p_handle: T.handle, g_handle: T.handle, v_handle: T.handle):
        T.func_attr({"tir.noalias": True, "op_pattern": 8})
        p = T.match_buffer(p_handle, shape, dtype)
        g = T.match_buffer(g_handle, grad_shape, "float32")
        v = T.match_buffer(v_handle, grad_shape, "float32")
        pv = T.decl_buffer((outer, channels, inner), dtype, data=p.data)
        gv = T.decl_buffer((outer, grad_channels, inner), "float32", data=g.data)
        vv = T.decl_buffer((outer, grad_channels, inner), "float32", data=v.data)
        for o, c, i in T.grid(outer, k, inner):
            vv[o, c, i] = T.float32(mu) * vv[o, c, i] + gv[o, c, i]
            if quantized:
                pv[o, c, i] = _round_back(pv[o, c, i], vv[o, c, i])
            else:
                pv[o, c, i] = pv[o, c, i] - T.float32(lr) * vv[o, c, i]

    return sgd_momentum if mu else sgd
