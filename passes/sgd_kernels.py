"""In-place SGD update kernels as TIR, one per parameter.

`p -= lr * g` (or, with momentum, `v = mu * v + g; p -= lr * v`, as torch.optim.SGD with
dampening 0), restricted to the first `k` channels of `axis` for a sub-tensor update. The
gradient `g` and momentum `v` may hold just those channels (NarrowWeightGradient) or the
whole tensor. A quantized parameter (int8 weight, int32 bias) is updated in float and
rounded back to its integer type, saturating: `p = sat(rint(float(p) - lr * step))`, or
with stochastic rounding `p = sat(floor(float(p) - lr * step + u))`, `u` in [0, 1) from a
hash of the element's index and the parameter, advanced with the step count (`rounding_noise`):
unbiased, so updates smaller than one integer step still move the weight on average, and
deterministic, so the Relax VM and the generated C round alike. An int16 *master* holds
an int8 weight in `MASTER_SCALE` finer steps: its float view is `p / 256` (FuseSGDUpdate),
its update `p = sat(rint(float(p) - 256 * lr * step))`.

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
# An int16 master copy of an int8 weight counts in 1/256 of the weight's integer step.
MASTER_SCALE = {"int16": 256}
ROUNDINGS = ("nearest", "stochastic")
# The step counter every stochastically rounded update reads (train_step's last parameter).
STEP_COUNTER = "rounding_step"
UPDATE_ATTR = "tinytrain.sgd_update"  # an update kernel's salt and master_of, for passes that rebuild it
_MASK32 = 0xFFFFFFFF
WEYL = 0x9E3779B9  # 2**32 / golden ratio: consecutive steps' noise as far apart as can be


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
                      k: int | None = None, dtype: str = "float32", rounding: str = "nearest",
                      salt: int = 0, master_of: str = "") -> tirx.PrimFunc:
    """PrimFunc(p, step[, counter]): `p -= lr * step` in place over channels [0, k) of
    `axis`; `step` is the gradient or the momentum buffer; `dtype` is the parameter's
    storage type. `rounding="stochastic"` (integer storage) adds a third argument, the
    uint32 step counter, and `salt` (one per parameter) decorrelates the parameters' noise.
    `master_of="int8"`: `p` is a master copy of an int8 weight (int16 or float32), kept
    within the int8 range: its rounded value is then the weight with no clip in the forward
    pass, whose mask would keep the gradient from fusing into its update."""
    dtype = str(dtype)
    if dtype != "float32" and dtype not in SATURATION and not (dtype in MASTER_SCALE and master_of):
        raise ValueError(f"no SGD kernel for a parameter stored as {dtype}" + (" (only masters are)" if dtype
                         in MASTER_SCALE else ""))
    if rounding not in ROUNDINGS or (rounding == "stochastic" and dtype == "float32"):
        raise ValueError(f"no {rounding} rounding for a parameter stored as {dtype}")
    scale = MASTER_SCALE.get(dtype, 1)
    lr = tirx.const(c_exact(lr * scale), "float32")
    extents = _updated_extents(step_shape, axis, k)
    bounds = SATURATION.get(master_of or dtype)
    if bounds is not None:
        bounds = tuple(tirx.const(b * scale, "float32") for b in bounds)

    def new_value(old, step, at, counter=None):
        if bounds is None:  # a float parameter
            return old - lr * step
        # round (an integer type), saturate, store. A NaN (a diverged gradient) leaves the
        # parameter as it was instead of an undefined float-to-int conversion.
        new = tirx.Cast("float32", old) - lr * step if dtype != "float32" else old - lr * step
        if dtype == "float32":
            rounded = new
        elif counter is None:
            rounded = tirx.round(new)
        else:
            rounded = tirx.floor(new + rounding_noise(_flat_index(at, step_shape), counter[0], salt))
        saturated = tirx.max(tirx.min(rounded, bounds[1]), bounds[0])
        return tirx.if_then_else(tirx.isnan(new), old, tirx.Cast(dtype, saturated) if dtype != "float32" else saturated)

    counter = ((1,), "uint32") if rounding == "stochastic" else None
    kernel = _inplace_kernel("sgd", (shape, dtype), step_shape, extents, new_value, counter)
    return kernel.with_attr(UPDATE_ATTR, {"salt": salt, "master_of": master_of})


def rounding_noise(index, step, salt: int):
    """A float32 in [0, 1) with 24 random bits for element `index` at step `step`: the
    element's random phase (the murmur3 finalizer of its index and the parameter's salt)
    advanced by the golden ratio each step (a Weyl sequence, `WEYL`). Over the steps, each
    element's noise is spread evenly over [0, 1), so its rounding is unbiased; between
    elements the phases are independent. The phase reads no buffer, so TVM's C codegen
    names its shared subexpressions (`cse_v*`) instead of repeating them, and only one
    multiply involves the step. Computed in uint64 and masked to 32 bits, because TVM's
    LLVM codegen assumes unsigned arithmetic does not wrap (a wrapping uint32 multiply
    comes out wrong on the Relax VM while the C is right)."""
    def u64(v):
        return tirx.const(v, "uint64")

    def wrap(v):
        return tirx.bitwise_and(v, u64(_MASK32))

    h = wrap(tirx.Cast("uint64", index) * u64(0x9E3779B1) + u64((salt * 0xC2B2AE3D + 0x27D4EB2F) & _MASK32))
    h = tirx.bitwise_xor(h, tirx.shift_right(h, u64(16)))
    h = wrap(h * u64(0x85EBCA6B))
    h = tirx.bitwise_xor(h, tirx.shift_right(h, u64(13)))
    h = wrap(h * u64(0xC2B2AE35))
    h = tirx.bitwise_xor(h, tirx.shift_right(h, u64(16)))
    h = wrap(h + tirx.Cast("uint64", step) * u64(WEYL))
    bits = tirx.Cast("int32", tirx.shift_right(h, u64(8)))  # 24 bits: exact in float32
    return tirx.Cast("float32", bits) * tirx.const(2.0 ** -24, "float32")


def _flat_index(at, shape):
    """The row-major index of element `at` of a tensor of `shape`."""
    index = tirx.Cast("int64", at[0])
    for i, d in zip(at[1:], shape[1:]):
        index = index * tirx.IntImm("int64", d) + i
    return index


def momentum_kernel(shape: tuple[int, ...], momentum: float, axis: int = 1, k: int | None = None) -> tirx.PrimFunc:
    """PrimFunc(v, g): `v = momentum * v + g` in place over channels [0, k) of `axis`."""
    mu = tirx.const(c_exact(momentum), "float32")
    return _inplace_kernel("momentum", (shape, "float32"), shape, _updated_extents(shape, axis, k),
                           lambda v, g, _: mu * v + g)


def _inplace_kernel(name, target, source_shape, extents, new_value, extra=None) -> tirx.PrimFunc:
    """PrimFunc(t, s[, e]) with one block: `t[i] = new_value(t[i], s[i], i[, e])` over
    `extents`, as TVMScript would write it (a root block, int64 shapes as LegalizeOps makes
    them, so that FuseTIR can merge it with the kernel producing `s`). `extra` (shape,
    dtype) is a third buffer the block reads whole (the step counter)."""

    def buffer(arg, dims, dtype):
        return T.arg(arg, T.buffer([tirx.IntImm("int64", d) for d in dims], dtype, buffer_name=arg,
                                   elem_offset=tirx.IntImm("int64", 0), layout=None))

    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"tirx.noalias": True, "op_pattern": 0})
            t = buffer("t", *target)
            s = buffer("s", source_shape, "float32")
            e = buffer("e", *extra) if extra else None
            with T.sblock("root"):
                T.reads()
                T.writes()
                with T.grid(*[tirx.IntImm("int64", e) for e in extents]) as loops, T.sblock(name):
                    single = len(extents) == 1  # one loop: the builder gives a Var, not a list
                    i = T.axis.remap("S" * len(extents), [loops] if single else loops)
                    at = (i,) if single else tuple(i)
                    T.reads(t[at], s[at], *([e[0]] if e is not None else []))
                    T.writes(t[at])
                    value = new_value(t[at], s[at], at, e) if e is not None else new_value(t[at], s[at], at)
                    T.buffer_store(t, value, at)
    func = builder.get()
    return func.without_attr("global_symbol") if "global_symbol" in func.attrs else func
