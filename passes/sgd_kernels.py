"""In-place SGD update kernels as TIR, one per parameter shape.

`p -= lr * g` (or, with momentum, `v = mu * v + g; p -= lr * v`, as torch.optim.SGD with
dampening 0), restricted to the first `k` channels of `axis` for a sub-tensor update. The
gradient `g` and momentum `v` may hold just those channels (NarrowWeightGradient) or the
whole tensor. The kernels write into their first (and, with momentum, third) argument, so
Relax calls them with `call_tir_inplace` and the C driver updates the weights where they
live. They are loop nests, not schedulable blocks: `op_pattern` 8 (opaque) keeps FuseOps
from fusing them.
"""

from __future__ import annotations

from tvm.script import tirx as T


def sgd_update_kernel(shape: tuple[int, ...], grad_shape: tuple[int, ...], lr: float, momentum: float,
                      axis: int = 1, k: int | None = None):
    """PrimFunc(p, g[, v]) updating `p` (and `v`, shaped like `g`) in place over channels
    [0, k) of `axis`."""
    extents = list(grad_shape)
    if k is not None and len(shape) > 1:
        extents[axis] = min(k, extents[axis])
    builder = {1: _rank1, 2: _rank2, 4: _rank4}.get(len(shape))
    if builder is None:
        raise ValueError(f"no SGD kernel for a parameter of rank {len(shape)} (shape {shape})")
    return builder(tuple(shape), tuple(grad_shape), extents, float(lr), float(momentum))


def _rank1(shape, gshape, e, lr, mu):
    (e0,) = e
    if mu:
        @T.prim_func(private=True)
        def sgd_momentum(p: T.Buffer(shape, "float32"), g: T.Buffer(gshape, "float32"),
                         v: T.Buffer(gshape, "float32")):
            T.func_attr({"tir.noalias": True, "op_pattern": 8})
            for i0 in range(e0):
                v[i0] = T.float32(mu) * v[i0] + g[i0]
                p[i0] = p[i0] - T.float32(lr) * v[i0]
        return sgd_momentum

    @T.prim_func(private=True)
    def sgd(p: T.Buffer(shape, "float32"), g: T.Buffer(gshape, "float32")):
        T.func_attr({"tir.noalias": True, "op_pattern": 8})
        for i0 in range(e0):
            p[i0] = p[i0] - T.float32(lr) * g[i0]
    return sgd


def _rank2(shape, gshape, e, lr, mu):
    e0, e1 = e
    if mu:
        @T.prim_func(private=True)
        def sgd_momentum(p: T.Buffer(shape, "float32"), g: T.Buffer(gshape, "float32"),
                         v: T.Buffer(gshape, "float32")):
            T.func_attr({"tir.noalias": True, "op_pattern": 8})
            for i0, i1 in T.grid(e0, e1):
                v[i0, i1] = T.float32(mu) * v[i0, i1] + g[i0, i1]
                p[i0, i1] = p[i0, i1] - T.float32(lr) * v[i0, i1]
        return sgd_momentum

    @T.prim_func(private=True)
    def sgd(p: T.Buffer(shape, "float32"), g: T.Buffer(gshape, "float32")):
        T.func_attr({"tir.noalias": True, "op_pattern": 8})
        for i0, i1 in T.grid(e0, e1):
            p[i0, i1] = p[i0, i1] - T.float32(lr) * g[i0, i1]
    return sgd


def _rank4(shape, gshape, e, lr, mu):
    e0, e1, e2, e3 = e
    if mu:
        @T.prim_func(private=True)
        def sgd_momentum(p: T.Buffer(shape, "float32"), g: T.Buffer(gshape, "float32"),
                         v: T.Buffer(gshape, "float32")):
            T.func_attr({"tir.noalias": True, "op_pattern": 8})
            for i0, i1, i2, i3 in T.grid(e0, e1, e2, e3):
                v[i0, i1, i2, i3] = T.float32(mu) * v[i0, i1, i2, i3] + g[i0, i1, i2, i3]
                p[i0, i1, i2, i3] = p[i0, i1, i2, i3] - T.float32(lr) * v[i0, i1, i2, i3]
        return sgd_momentum

    @T.prim_func(private=True)
    def sgd(p: T.Buffer(shape, "float32"), g: T.Buffer(gshape, "float32")):
        T.func_attr({"tir.noalias": True, "op_pattern": 8})
        for i0, i1, i2, i3 in T.grid(e0, e1, e2, e3):
            p[i0, i1, i2, i3] = p[i0, i1, i2, i3] - T.float32(lr) * g[i0, i1, i2, i3]
    return sgd
