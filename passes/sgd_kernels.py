"""In-place SGD update kernels as TIR, one per parameter.

`p -= lr * g` (or, with momentum, `v = mu * v + g; p -= lr * v`, as torch.optim.SGD with
dampening 0), restricted to the first `k` channels of `axis` for a sub-tensor update. The
gradient `g` and momentum `v` may hold just those channels (NarrowWeightGradient) or the
whole tensor. A quantized parameter (int8 weight, int32 bias) is updated in float and
rounded back to its integer type, saturating: `p = sat(rint(float(p) - lr * step))`.

Each kernel writes into its first argument: Relax calls it with `call_tir_inplace` and
the C driver updates the weights where they live. With momentum, two kernels run: the
momentum update, then the parameter's step from the new momentum. Each is one elementwise
block over the updated elements (`op_pattern` 0), so that FuseKernels can append the
kernel that reads the gradient to the kernel that computes it: `FuseTIR` then merges the
two and the gradient is consumed element by element as it is produced, never stored whole.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script.builder import ir as T

# Saturation bounds of the integer types, as float32 values that TVM's C printer writes
# exactly: it prints float immediates with 7 significant digits (`%e`), so 2**31 - 128 would
# come out as 2.147484e+09f = 2**31, which overflows int32 (undefined; x86 and Arm differ).
SATURATION = {"int8": (-128.0, 127.0), "int32": (-2.147483e9, 2.147483e9)}


def c_exact(value: float) -> float:
    """`value` with the 7 significant digits TVM's C codegen keeps of a float immediate, so
    that the Relax VM (LLVM) and the generated C use the same constant."""
    return float(f"{value:.6e}")


def _updated_extents(grad_shape, axis, k):
    """The loop extents of an update: the gradient's shape, channels [0, k) of `axis`."""
    axis = min(axis, len(grad_shape) - 1)
    extents = list(grad_shape)
    extents[axis] = min(k or grad_shape[axis], grad_shape[axis])
    return extents


def sgd_update_kernel(shape: tuple[int, ...], step_shape: tuple[int, ...], lr: float, axis: int = 1,
                      k: int | None = None, dtype: str = "float32") -> tirx.PrimFunc:
    """PrimFunc(p, step): `p -= lr * step` in place over channels [0, k) of `axis`; `step`
    is the gradient or the momentum buffer; `dtype` is the parameter's storage type."""
    dtype = str(dtype)
    if dtype != "float32" and dtype not in SATURATION:
        raise ValueError(f"no SGD kernel for a parameter stored as {dtype}")
    lr = tirx.const(c_exact(lr), "float32")

    def new_value(old, step):
        if dtype == "float32":
            return old - lr * step
        # rint, saturate, back to the integer type. A NaN (a diverged gradient) leaves the
        # integer as it was instead of an undefined float-to-int conversion.
        lo, hi = SATURATION[dtype]
        new = tirx.Cast("float32", old) - lr * step
        saturated = tirx.max(tirx.min(tirx.round(new), tirx.const(hi, "float32")), tirx.const(lo, "float32"))
        return tirx.if_then_else(tirx.isnan(new), old, tirx.Cast(dtype, saturated))

    return _inplace_kernel("sgd", (shape, dtype), step_shape, _updated_extents(step_shape, axis, k), new_value)


def momentum_kernel(shape: tuple[int, ...], momentum: float, axis: int = 1, k: int | None = None) -> tirx.PrimFunc:
    """PrimFunc(v, g): `v = momentum * v + g` in place over channels [0, k) of `axis`."""
    mu = tirx.const(c_exact(momentum), "float32")
    return _inplace_kernel("momentum", (shape, "float32"), shape, _updated_extents(shape, axis, k),
                           lambda v, g: mu * v + g)


def _inplace_kernel(name, target, source_shape, extents, new_value) -> tirx.PrimFunc:
    """PrimFunc(t, s) with one block: `t[i] = new_value(t[i], s[i])` over `extents`, as
    TVMScript would write it (a root block, int64 shapes as LegalizeOps makes them, so that
    FuseTIR can merge it with the kernel producing `s`)."""

    def buffer(arg, dims, dtype):
        return T.arg(arg, T.buffer([tirx.IntImm("int64", d) for d in dims], dtype, buffer_name=arg,
                                   elem_offset=tirx.IntImm("int64", 0), layout=None))

    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"tirx.noalias": True, "op_pattern": 0})
            t = buffer("t", *target)
            s = buffer("s", source_shape, "float32")
            with T.sblock("root"):
                T.reads()
                T.writes()
                with T.grid(*[tirx.IntImm("int64", e) for e in extents]) as loops, T.sblock(name):
                    single = len(extents) == 1  # one loop: the builder gives a Var, not a list
                    i = T.axis.remap("S" * len(extents), [loops] if single else loops)
                    at = (i,) if single else tuple(i)
                    T.reads(t[at], s[at])
                    T.writes(t[at])
                    T.buffer_store(t, new_value(t[at], s[at]), at)
    func = builder.get()
    return func.without_attr("global_symbol") if "global_symbol" in func.attrs else func
