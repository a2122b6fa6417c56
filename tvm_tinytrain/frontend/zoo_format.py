"""Load and validate an int8 model of mit-han-lab/tiny-training's model zoo, safely.

The zoo files (`mcunet-5fps.pkl`, `mbv2-w0.35.pkl`, `proxyless-w0.3.pkl`) are `torch.save`
zip archives (`archive/data.pkl` + `archive/version`) whose pickle holds a plain dict of
Python ints, floats, tuples and NumPy arrays; there are no torch tensors (no persistent-id
records). We never unpickle them with `pickle.load` / `torch.load(weights_only=False)`:
those execute whatever callable a file names. `_RestrictedUnpickler` resolves only the
globals a pickled NumPy array needs, to stand-ins that build plain numeric arrays from
checked state only (see "Restricted unpickling" below); any other global, and any
persistent id, raises `TinyTrainError` before anything from the file runs. Before
unpickling, `_prescan` reads the opcodes (`pickletools.genops`, which executes nothing) and
bounds the pickle's size, opcodes, memo, integers and nesting depth. A plain pickle of the
same dict is read the same way; the legacy (pre-1.6) `torch.save` stream is refused.

Limits (the real files need far less; the numbers are in parentheses at each constant):
pickle <= 64 MiB, <= 1,000,000 opcodes, memo indices < 100,000, nesting depth <= 64, ints of
<= 64 bits; arrays of <= 8 dims and <= 2^24 elements, dtypes bool, int8..int64,
uint8..uint64, float16..float64 (little-endian); in the model: channels <= 4096, feature
maps <= 1024 x 1024, odd kernels <= 11, strides <= 4, <= 256 blocks, <= 16 MiB of weights,
biases and scales, quantization scales in [1e-20, 1e20].

The dict, checked by `validate_zoo_dict` (DESIGN.md section 6, as read from the real files)::

    first_conv:  conv
    blocks:      [ {pointwise1: conv|None, depthwise: conv|None, pointwise2: conv|None,
                    residual: residual|None, se: None}, ... ]
    feature_mix: conv|None                                    (None in all three zoo files)
    classifier:  conv without in_shape/out_shape/depthwise/act (1x1, on the pooled features)

    conv:     in_channel, in_shape, out_channel, out_shape (ints; shapes are square H=W),
              kernel_size (k, k) with k odd (padding (k-1)//2), stride, groups,
              depthwise (bool: groups == in_channel == out_channel), act (None: activations
              are folded into the int8 output range, e.g. ReLU6 = y_zero -128, y_scale 6/255),
              params: weight int8 (out, in/groups, k, k), bias int32 (out,),
                      w_scales float32 (out,), x_scale, y_scale (float > 0),
                      x_zero, y_zero (int in [-128, 127])
    residual: in_channel, in_shape (those of the block input), params: x_scale, x_zero
              (the block input's), y_scale, y_zero (the sum's); the other operand is the
              block's last conv, with that conv's y_scale / y_zero.

Unknown keys, a squeeze-and-excitation block (`se` not None), a residual convolution and an
`act` other than None are refused: tiny-training cannot train SE blocks and ignores `act`,
so accepting them would silently change what the model computes.
"""

from __future__ import annotations

import codecs
import io
import math
import pickle
import pickletools
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TinyTrainError, brief

# Limits of what a model file may be, checked before anything is built from it. The two real
# zoo files need: 1.0 MB / 0.6 MB of pickle, 5,948 / 7,202 opcodes, about 1,500 memo
# entries, nesting depth 10 as `_prescan` counts it (5 levels of containers; 7 open MARKs),
# arrays of 4 dims and at most 160,000 elements.
MAX_PICKLE_BYTES = 64 << 20  # 60x the largest zoo pickle
MAX_OPCODES = 1_000_000      # 140x
MAX_MEMO = 100_000           # memo indices; the unpickler allocates its memo up to the index
MAX_DEPTH = 64               # nesting of containers; deeper structures crash C recursions
MAX_INT_BITS = 64            # a model file's ints are small; refuse 5,000-digit ones early
MAX_ARRAY_NDIM = 8
MAX_ARRAY_ELEMENTS = 1 << 24  # 16 M elements per array, 100x the largest zoo array
MAX_BUILT_BYTES = 256 << 20   # all arrays and bytes built: memo references to one big string
                              # must not make 100,000 copies of it (the real files: ~1.3 MB)
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first object of a pre-1.6 torch.save stream


# --------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------
#
# NumPy pickles an array as `_reconstruct(numpy.ndarray, (0,), b'b')` followed by BUILD with
# the state `(1, shape, dtype, is_fortran, rawdata)`, and a dtype as `numpy.dtype('i4',
# False, True)` followed by BUILD with `(3, '<', None, None, None, -1, -1, 0)`. None of the
# real NumPy callables is exposed: `numpy.ndarray` is an inert marker (calling it directly
# would allow `ndarray(shape, dtype, buffer, offset=-N)`, which reads the process's memory),
# `_reconstruct` returns an `_ArrayState` placeholder whose BUILD checks dtype, shape, size
# and buffer before building the array by copying the pickled bytes, `numpy.dtype` returns a
# `_DtypeSpec` of a plain numeric dtype whose BUILD only accepts its canonical state, and a
# post-pass swaps the placeholders for their arrays. Every object the pickle can reach refuses
# a foreign BUILD (`__setstate__`), so no state of ours can be changed by a file.

class _Refusing:
    """Base of the objects a pickle can name: BUILD on them is an error."""

    __slots__ = ()

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"BUILD on {type(self).__name__} is not allowed")


class _NdarrayMarker(_Refusing):
    """What `numpy.ndarray` resolves to: only `_reconstruct` accepts it; calling it fails."""

    __slots__ = ()

    def __call__(self, *args):
        raise pickle.UnpicklingError("numpy.ndarray(...) called directly is not allowed: "
                                     "arrays are read only in the form NumPy pickles them")


_NDARRAY = _NdarrayMarker()

# Plain little-endian numeric dtypes, by the name NumPy pickles them under.
_DTYPES = {name: np.dtype(name) for name in
           ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")}


class _DtypeSpec:
    """A whitelisted dtype named by the pickle; BUILD may only restate NumPy's own state."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype

    def __setstate__(self, state):
        canonical = self.dtype.__reduce__()[2]  # (3, '<' or '|', None, None, None, -1, -1, 0)
        native = tuple("=" if x == "<" else x for x in canonical)
        if not (type(state) is tuple and all(type(a) is type(b) for a, b in zip(state, canonical))
                and (state == canonical or (sys.byteorder == "little" and state == native))):
            raise pickle.UnpicklingError(
                f"dtype {self.dtype} with state {brief(state)} is not allowed (only plain "
                "little-endian numeric dtypes)")


class _Budget:
    """Bytes one load may still build (arrays and `_codecs.encode` results)."""

    __slots__ = ("left",)

    def __init__(self):
        self.left = MAX_BUILT_BYTES

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise pickle.UnpicklingError(f"the pickle builds more than {MAX_BUILT_BYTES} bytes "
                                         "of arrays and strings")


class _ArrayState:
    """What `_reconstruct` returns: the array is built by BUILD, from checked state only."""

    __slots__ = ("array", "budget")

    def __init__(self, budget: _Budget):
        self.array, self.budget = None, budget

    def __setstate__(self, state):
        if self.array is not None:
            raise pickle.UnpicklingError("an array's state is given twice")
        self.array = _array_from_state(state, self.budget)


def _array_from_state(state, budget: _Budget) -> np.ndarray:
    """The array of `ndarray.__reduce__`'s state, checked before any allocation and built
    by copying the pickled bytes (never a view on memory the pickle does not hold)."""
    if type(state) is not tuple or len(state) != 5:
        raise pickle.UnpicklingError(f"array state must be a 5-tuple, got {brief(state)}")
    version, shape, dtype, fortran, raw = state
    if type(version) is not int or version != 1:
        raise pickle.UnpicklingError(f"array state version {brief(version)} is not supported")
    if type(dtype) is not _DtypeSpec:
        raise pickle.UnpicklingError(f"array dtype {brief(dtype)} is not allowed (only plain "
                                     f"numeric dtypes: {', '.join(_DTYPES)})")
    if (type(shape) is not tuple or len(shape) > MAX_ARRAY_NDIM
            or any(type(d) is not int or not 0 <= d <= MAX_ARRAY_ELEMENTS for d in shape)):
        raise pickle.UnpicklingError(f"array shape {brief(shape)} is not a tuple of at most "
                                     f"{MAX_ARRAY_NDIM} sizes in [0, {MAX_ARRAY_ELEMENTS}]")
    count = math.prod(shape)
    if count > MAX_ARRAY_ELEMENTS:
        raise pickle.UnpicklingError(f"array of shape {shape} has more than "
                                     f"{MAX_ARRAY_ELEMENTS} elements")
    if type(fortran) is not bool:
        raise pickle.UnpicklingError(f"array order flag {brief(fortran)} is not a bool")
    if type(raw) is not bytes or len(raw) != count * dtype.dtype.itemsize:
        got = f"{len(raw)} bytes" if type(raw) is bytes else type(raw).__name__
        raise pickle.UnpicklingError(f"array {dtype.dtype} {shape} needs "
                                     f"{count * dtype.dtype.itemsize} bytes of data, got {got}")
    budget.take(len(raw))
    flat = np.frombuffer(raw, dtype=dtype.dtype, count=count)
    return flat.reshape(shape, order="F" if fortran else "C").copy(order="C")


class _Function(_Refusing):
    """An allowed global, bound to one load's budget: callable, but BUILD cannot set
    attributes (defaults, ...) on it."""

    __slots__ = ("fn", "budget")

    def __init__(self, fn, budget: _Budget):
        self.fn, self.budget = fn, budget

    def __call__(self, *args):
        return self.fn(self.budget, *args)


def _reconstruct(budget, subtype, shape, typecode):
    """numpy's `_reconstruct` as `ndarray.__reduce__` emits it: an `_ArrayState`."""
    if subtype is not _NDARRAY or type(shape) is not tuple or shape != (0,) or typecode != b"b":
        raise pickle.UnpicklingError(
            f"_reconstruct{brief((subtype, shape, typecode))} is not the form NumPy writes")
    return _ArrayState(budget)


def _dtype(_budget, name, align=False, copy=True):
    """`numpy.dtype(name, False, True)` for a plain numeric dtype: a `_DtypeSpec`."""
    if type(name) is not str or name not in _DTYPES or align is not False or type(copy) is not bool:
        raise pickle.UnpicklingError(f"dtype {brief(name)} is not allowed (only plain numeric "
                                     f"dtypes: {', '.join(_DTYPES)})")
    return _DtypeSpec(_DTYPES[name])


def _latin1_encode(budget, text, encoding="latin1", *rest):
    """`_codecs.encode(str, 'latin1')`: how pickle protocol 2 stores a `bytes` object."""
    if encoding != "latin1" or rest or type(text) is not str:
        raise pickle.UnpicklingError(f"_codecs.encode with {brief(encoding)} is not allowed")
    budget.take(len(text))
    return codecs.encode(text, "latin1")


# (module, name) -> what it resolves to (functions are bound to the load's budget).
# Everything else is refused.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,   # NumPy 1.x files
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # NumPy >= 2
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file):
        super().__init__(file)
        self.budget = _Budget()

    def find_class(self, module, name):
        try:
            found = ALLOWED_GLOBALS[(module, name)]
            return found if found is _NDARRAY else _Function(found, self.budget)
        except (KeyError, TypeError):
            raise TinyTrainError(
                f"forbidden global {_clip(module, 60)}.{_clip(name, 60)} in the pickle: a "
                "tiny-training model file holds only NumPy arrays, ints, floats and tuples, "
                "so it is refused and nothing from it is executed"
            ) from None

    def persistent_load(self, pid):
        raise TinyTrainError(
            "the pickle references a torch storage (persistent id): tiny-training model "
            "files hold NumPy arrays, not torch tensors"
        )


_IN_PLACE_OPS = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}


def _prescan(data: bytes) -> None:
    """Bound the pickle's size before running it: opcodes, memo indices, integer sizes, and
    nesting depth (a simulation of the unpickler's stack, holding each item's depth, with
    MARKs kept apart as the unpickler does). It reads opcodes only (`pickletools.genops`);
    `_materialize` checks the real depth again (memo references can hide nesting here)."""
    if len(data) > MAX_PICKLE_BYTES:
        raise pickle.UnpicklingError(f"{len(data)} bytes is more than {MAX_PICKLE_BYTES}")
    stack: list[int] = []   # depth of each stack item
    marks: list[int] = []   # stack positions of the open MARKs
    memo: dict[int, int] = {}
    for n, (op, arg, _pos) in enumerate(pickletools.genops(data)):
        if n >= MAX_OPCODES:
            raise pickle.UnpicklingError(f"more than {MAX_OPCODES} opcodes")
        if type(arg) is int and arg.bit_length() > MAX_INT_BITS:
            if arg == _TORCH_LEGACY_MAGIC:
                raise TinyTrainError("legacy (pre-1.6) torch.save format is not supported; "
                                     "re-save it with a recent torch.save (zip format)")
            raise pickle.UnpicklingError(f"an integer of {arg.bit_length()} bits")
        name, before = op.name, op.stack_before
        fence = marks[-1] if marks else 0  # items below the last MARK are out of reach
        if name == "MARK":
            marks.append(len(stack))
            if len(marks) > MAX_DEPTH:
                raise pickle.UnpicklingError(f"nesting deeper than {MAX_DEPTH} (MARKs)")
            continue
        if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "DUP"):
            if len(stack) <= fence:
                raise pickle.UnpicklingError(f"{name} on an empty stack")
            if name == "DUP":
                stack.append(stack[-1])
                continue
            index = len(memo) if name == "MEMOIZE" else arg
            if not 0 <= index < MAX_MEMO:
                raise pickle.UnpicklingError(f"memo index {index} (limit {MAX_MEMO})")
            memo[index] = stack[-1]
            continue
        if name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise pickle.UnpicklingError(f"memo index {arg} read before it is written")
            stack.append(memo[arg])
            continue
        popped: list[int] = []
        if pickletools.markobject in before:  # e.g. TUPLE [mark, slice]; APPENDS [list, mark, slice]
            if not marks:
                raise pickle.UnpicklingError(f"{name} without a MARK")
            at = marks.pop()
            popped, stack[at:] = stack[at:], []
            fence = marks[-1] if marks else 0
            below = before.index(pickletools.markobject)
        else:
            below = len(before)
        if len(stack) - below < fence:
            raise pickle.UnpicklingError(f"{name} on a too short stack")
        if below:
            popped, stack[-below:] = stack[-below:] + popped, []
        if name in _IN_PLACE_OPS and popped:  # the container keeps its identity
            depth = max([popped[0]] + [1 + d for d in popped[1:]])
        else:
            depth = 1 + max(popped) if popped else 0
        if depth > MAX_DEPTH:
            raise pickle.UnpicklingError(f"nesting deeper than {MAX_DEPTH}")
        stack.extend([depth] * len(op.stack_after))


_LEAVES = (type(None), bool, int, float, str, bytes)


def _materialize(root: Any) -> Any:
    """The loaded object with each `_ArrayState` replaced by its array. Refuses anything
    else of ours left in it (a dtype, a function, the ndarray marker), sets, non-scalar
    dict keys, self-references and nesting deeper than `MAX_DEPTH` (this walk recurses)."""
    done: dict[int, tuple[Any, int]] = {}  # id -> (replacement, height); root keeps ids alive
    active: set[int] = set()

    def walk(obj, depth):
        if type(obj) in _LEAVES:
            return obj, 0
        if type(obj) is _ArrayState:
            if obj.array is None:
                raise pickle.UnpicklingError("an array without its data (no BUILD)")
            return obj.array, 0
        key = id(obj)
        if key in done:
            new, height = done[key]
        else:
            if key in active:
                raise pickle.UnpicklingError("a container that holds itself")
            if depth > MAX_DEPTH:
                raise pickle.UnpicklingError(f"nesting deeper than {MAX_DEPTH}")
            active.add(key)
            if type(obj) in (list, tuple):
                items = [walk(x, depth + 1) for x in obj]
                new = type(obj)(x for x, _ in items)
            elif type(obj) is dict:
                for k in obj:
                    if type(k) not in _LEAVES:
                        raise pickle.UnpicklingError(f"a dict key of type {type(k).__name__}")
                items = [walk(v, depth + 1) for v in obj.values()]
                new = dict(zip(obj, (x for x, _ in items)))
            else:
                raise pickle.UnpicklingError(f"unexpected {type(obj).__name__} object")
            height = 1 + max((h for _, h in items), default=0)
            active.discard(key)
            done[key] = (new, height)
        if depth + height > MAX_DEPTH:
            raise pickle.UnpicklingError(f"nesting deeper than {MAX_DEPTH}")
        return new, height

    return walk(root, 0)[0]


def _clip(text: str, limit: int) -> str:
    """`text` (from the file) on one line of at most `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _text(err: Exception, limit: int = 300) -> str:
    """An exception's message on one bounded line."""
    try:
        return _clip(str(err), limit)
    except Exception:  # noqa: BLE001 - never hide the real error
        return ""


def _restricted_loads(data: bytes, source: str) -> Any:
    try:
        _prescan(data)
        obj = _materialize(_RestrictedUnpickler(io.BytesIO(data)).load())
    except TinyTrainError as err:
        raise TinyTrainError(f"{source}: {err}") from None
    except Exception as err:  # malformed stream, refused dtype, array size mismatch, ...
        raise TinyTrainError(f"{source}: not a valid pickle: {type(err).__name__}: "
                             f"{_text(err)}") from None
    return obj


def _read_pickle_bytes(path: Path) -> bytes:
    """The pickle stream of a torch.save zip archive (its `<dir>/data.pkl`), or the file."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = [i for i in zf.infolist()
                         if i.filename.count("/") == 1 and i.filename.endswith("/data.pkl")]
                if len(names) != 1:
                    raise TinyTrainError(
                        f"{path.name}: a torch.save zip archive must hold exactly one "
                        f"<dir>/data.pkl, found {brief([i.filename for i in names], 200)}"
                    )
                if names[0].file_size > MAX_PICKLE_BYTES:
                    raise TinyTrainError(f"{path.name}: data.pkl is {names[0].file_size} bytes, "
                                         f"more than {MAX_PICKLE_BYTES}")
                return zf.read(names[0])
        except TinyTrainError:
            raise
        except Exception as err:  # noqa: BLE001 - zipfile raises many types on bad archives
            raise TinyTrainError(f"{path.name}: unreadable zip archive: {type(err).__name__}: "
                                 f"{_text(err)}") from None
    if path.stat().st_size > MAX_PICKLE_BYTES:
        raise TinyTrainError(f"{path.name}: {path.stat().st_size} bytes is too large")
    return path.read_bytes()


# --------------------------------------------------------------------------------------
# The typed model
# --------------------------------------------------------------------------------------

@dataclass
class ZooConv:
    """One int8 convolution (also the classifier, a 1x1 conv on the pooled features).

    `name` is its path in the file ("first_conv", "blocks[3].depthwise", "classifier").
    Real values: x = (x_q - x_zero) * x_scale, W[o] = weight[o] * w_scales[o],
    b[o] = bias[o] * x_scale * w_scales[o], y = (y_q - y_zero) * y_scale.
    `in_shape` / `out_shape` (square feature maps) are None for the classifier.
    """

    name: str
    in_channel: int
    out_channel: int
    in_shape: int | None
    out_shape: int | None
    kernel_size: int  # square, odd; padding is (kernel_size - 1) // 2
    stride: int
    groups: int
    depthwise: bool
    weight: np.ndarray  # int8 (out_channel, in_channel // groups, k, k), OIHW
    bias: np.ndarray  # int32 (out_channel,)
    w_scales: np.ndarray  # float32 (out_channel,)
    x_scale: float
    x_zero: int
    y_scale: float
    y_zero: int

    @property
    def padding(self) -> int:
        return (self.kernel_size - 1) // 2

    def effective_scale(self) -> np.ndarray:
        """x_scale * w_scales / y_scale per output channel: computed in float64, stored
        float32 (as tiny-training's `get_effective_scale` + `to_pt` do)."""
        es = np.float64(self.x_scale) * self.w_scales.astype(np.float64) / np.float64(self.y_scale)
        return es.astype(np.float32)


@dataclass
class ZooResidual:
    """The int8 add closing a block: block input (x_scale, x_zero) + the block's last conv
    output (its y_scale, y_zero) -> (y_scale, y_zero)."""

    name: str
    in_channel: int
    in_shape: int
    x_scale: float
    x_zero: int
    y_scale: float
    y_zero: int


@dataclass
class ZooBlock:
    """An inverted-residual block: [pointwise1] -> [depthwise] -> [pointwise2] [+ input]."""

    index: int
    pointwise1: ZooConv | None
    depthwise: ZooConv | None
    pointwise2: ZooConv | None
    residual: ZooResidual | None

    @property
    def convs(self) -> list[ZooConv]:
        return [c for c in (self.pointwise1, self.depthwise, self.pointwise2) if c is not None]


@dataclass
class ZooModel:
    """A validated tiny-training int8 model: NCHW int8 input of `input_shape`, int8 logits."""

    source: str
    first_conv: ZooConv
    blocks: list[ZooBlock]
    feature_mix: ZooConv | None
    classifier: ZooConv
    input_shape: tuple[int, int, int] = field(init=False)  # (C, H, W)

    def __post_init__(self):
        fc = self.first_conv
        self.input_shape = (fc.in_channel, fc.in_shape, fc.in_shape)

    @property
    def num_classes(self) -> int:
        return self.classifier.out_channel

    def convs(self) -> list[ZooConv]:
        """Every conv in execution order, the classifier last."""
        out = [self.first_conv]
        for block in self.blocks:
            out += block.convs
        if self.feature_mix is not None:
            out.append(self.feature_mix)
        return out + [self.classifier]


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------

_CONV_KEYS = {"in_channel", "in_shape", "out_channel", "out_shape", "kernel_size", "stride",
              "groups", "depthwise", "act", "params"}
_CLASSIFIER_KEYS = {"in_channel", "out_channel", "kernel_size", "stride", "groups", "params"}
_PARAM_KEYS = {"weight", "bias", "x_scale", "x_zero", "y_scale", "y_zero", "w_scales"}
_QPARAM_KEYS = {"x_scale", "x_zero", "y_scale", "y_zero"}
_BLOCK_KEYS = ("pointwise1", "depthwise", "pointwise2", "residual", "se")
_TOP_KEYS = ("first_conv", "blocks", "feature_mix", "classifier")


# Bounds of what a microcontroller model can be: far above the real zoo models (in
# parentheses), far below where sizes overflow in TVM's int64 shape arithmetic.
MAX_CHANNELS = 4096            # (1000: the classifier's outputs)
MAX_SPATIAL = 1024             # feature map height = width (128)
MAX_KERNEL = 11                # (7)
MAX_STRIDE = 4                 # (2)
MAX_BLOCKS = 256               # (17)
MAX_WEIGHT_BYTES = 16 << 20    # weights + biases + scales of all convs (0.68 MB)
SCALE_RANGE = (1e-20, 1e20)    # quantization scales (3.9e-9 .. 0.17)


def _key_name(key) -> str:
    return key if type(key) is str and key.isidentifier() and len(key) <= 40 else brief(key, 40)


class _Checker:
    """Type-strict checks: a bool, a NumPy array or a float where an int is expected is an
    error (never a truth test), and every message shows file values through `brief`."""

    def __init__(self, source: str):
        self.source = source
        self.weight_bytes = 0

    def fail(self, path: str, msg: str):
        raise TinyTrainError(f"{self.source}: {path or 'top level'}: {msg}")

    def dict(self, obj, path, required, optional=()):
        if type(obj) is not dict:
            self.fail(path, f"expected a dict, got {type(obj).__name__}")
        for key in obj:
            if type(key) is not str or (key not in required and key not in optional):
                self.fail(f"{path}.{_key_name(key)}" if path else brief(key, 40), "unexpected key")
        for key in required:
            if key not in obj:
                self.fail(f"{path}.{key}" if path else key, "missing")
        return obj

    def int(self, value, path, lo, hi):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            self.fail(path, f"expected an int, got {type(value).__name__} {brief(value)}")
        value = int(value)
        if not lo <= value <= hi:
            self.fail(path, f"expected an int in [{lo}, {hi}], got {brief(value)}")
        return value

    def scale(self, value, path):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            self.fail(path, f"expected a float, got {type(value).__name__} {brief(value)}")
        value = float(value)
        lo, hi = SCALE_RANGE
        if not (math.isfinite(value) and lo <= value <= hi):
            self.fail(path, f"expected a finite float > 0 in [{lo:g}, {hi:g}], got {value}")
        return value

    def array(self, value, path, dtype, shape):
        dtype = np.dtype(dtype)
        if type(value) is not np.ndarray or value.dtype != dtype or value.shape != shape:
            got = (f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray)
                   else type(value).__name__)
            self.fail(path, f"expected {dtype} of shape {shape}, got {_clip(got, 120)}")
        self.weight_bytes += value.nbytes
        if self.weight_bytes > MAX_WEIGHT_BYTES:
            self.fail(path, f"the model's weights exceed {MAX_WEIGHT_BYTES} bytes")
        return np.ascontiguousarray(value)

    def kernel_size(self, ks, path) -> int:
        """`k` or `(k, k)` with k odd in [1, MAX_KERNEL]."""
        if type(ks) in (tuple, list) and len(ks) == 2:
            k, k2 = (self.int(v, path, 1, MAX_KERNEL) for v in ks)
        else:
            k = k2 = self.int(ks, path, 1, MAX_KERNEL)
        if k != k2 or k % 2 == 0:
            self.fail(path, f"expected (k, k) with k odd, got {brief(ks)}")
        return k

    def conv(self, d, path, classifier=False) -> ZooConv:
        if classifier:
            self.dict(d, path, _CLASSIFIER_KEYS, optional=_CONV_KEYS - _CLASSIFIER_KEYS)
        else:
            self.dict(d, path, _CONV_KEYS)
        cin = self.int(d["in_channel"], f"{path}.in_channel", 1, MAX_CHANNELS)
        cout = self.int(d["out_channel"], f"{path}.out_channel", 1, MAX_CHANNELS)
        k = self.kernel_size(d["kernel_size"], f"{path}.kernel_size")
        stride = self.int(d["stride"], f"{path}.stride", 1, MAX_STRIDE)
        groups = self.int(d["groups"], f"{path}.groups", 1, MAX_CHANNELS)
        depthwise = d.get("depthwise", False)
        if type(depthwise) is not bool:
            self.fail(f"{path}.depthwise", f"expected a bool, got {brief(depthwise)}")
        if depthwise and not groups == cin == cout:
            self.fail(f"{path}.groups", f"a depthwise conv needs groups == in_channel == "
                      f"out_channel, got {groups}, {cin}, {cout}")
        if not depthwise and groups != 1:
            self.fail(f"{path}.groups", f"expected 1 for a non-depthwise conv, got {groups}")
        if d.get("act") is not None:
            self.fail(f"{path}.act", f"expected None (activations are folded into the int8 "
                      f"output range; tiny-training ignores this field), got {brief(d['act'])}")
        in_shape = out_shape = None
        if not classifier or "in_shape" in d or "out_shape" in d:
            in_shape = self.int(d.get("in_shape"), f"{path}.in_shape", 1, MAX_SPATIAL)
            out_shape = self.int(d.get("out_shape"), f"{path}.out_shape", 1, MAX_SPATIAL)
            expect = (in_shape - 1) // stride + 1  # odd k, padding (k - 1) // 2
            if out_shape != expect:
                self.fail(f"{path}.out_shape", f"expected {expect} (in_shape {in_shape}, "
                          f"stride {stride}), got {out_shape}")
        elif (k, stride) != (1, 1):
            self.fail(f"{path}.kernel_size", f"the classifier must be a 1x1 conv with stride 1, "
                      f"got kernel {k} stride {stride}")
        p = self.dict(d["params"], f"{path}.params", _PARAM_KEYS)
        pp = f"{path}.params"
        conv = ZooConv(
            name=path, in_channel=cin, out_channel=cout, in_shape=in_shape, out_shape=out_shape,
            kernel_size=k, stride=stride, groups=groups, depthwise=depthwise,
            weight=self.array(p["weight"], f"{pp}.weight", np.int8, (cout, cin // groups, k, k)),
            bias=self.array(p["bias"], f"{pp}.bias", np.int32, (cout,)),
            w_scales=self.scales(self.array(p["w_scales"], f"{pp}.w_scales", np.float32,
                                            (cout,)), f"{pp}.w_scales"),
            x_scale=self.scale(p["x_scale"], f"{pp}.x_scale"),
            x_zero=self.int(p["x_zero"], f"{pp}.x_zero", -128, 127),
            y_scale=self.scale(p["y_scale"], f"{pp}.y_scale"),
            y_zero=self.int(p["y_zero"], f"{pp}.y_zero", -128, 127),
        )
        es = conv.effective_scale()
        if not (np.all(np.isfinite(es)) and np.all(es > 0)):
            self.fail(pp, "x_scale * w_scales / y_scale is not a finite float32 > 0")
        return conv

    def scales(self, arr, path):
        lo, hi = SCALE_RANGE
        if not (np.all(np.isfinite(arr)) and np.all(arr >= lo) and np.all(arr <= hi)):
            self.fail(path, f"expected finite values > 0 in [{lo:g}, {hi:g}]")
        return arr

    def residual(self, d, path) -> ZooResidual:
        if type(d) is dict and "kernel_size" in d:
            self.fail(path, "residual convolutions (a conv on the shortcut) are not supported")
        self.dict(d, path, {"in_channel", "in_shape", "params"})
        p = self.dict(d["params"], f"{path}.params", _QPARAM_KEYS)
        pp = f"{path}.params"
        return ZooResidual(
            name=path,
            in_channel=self.int(d["in_channel"], f"{path}.in_channel", 1, MAX_CHANNELS),
            in_shape=self.int(d["in_shape"], f"{path}.in_shape", 1, MAX_SPATIAL),
            x_scale=self.scale(p["x_scale"], f"{pp}.x_scale"),
            x_zero=self.int(p["x_zero"], f"{pp}.x_zero", -128, 127),
            y_scale=self.scale(p["y_scale"], f"{pp}.y_scale"),
            y_zero=self.int(p["y_zero"], f"{pp}.y_zero", -128, 127),
        )

    def follows(self, conv, path, channels, size):
        """`conv` (at `path`) reads a (channels, size, size) feature map."""
        if conv.in_channel != channels:
            self.fail(f"{path}.in_channel", f"expected {channels} (the previous layer's "
                      f"output channels), got {conv.in_channel}")
        if conv.in_shape is not None and conv.in_shape != size:
            self.fail(f"{path}.in_shape", f"expected {size} (the previous layer's output "
                      f"size), got {conv.in_shape}")


def validate_zoo_dict(cfg: Any, source: str = "<dict>") -> ZooModel:
    """Check a loaded zoo dict against the format and build the typed `ZooModel`.

    Raises `TinyTrainError` naming the offending entry, e.g.
    `blocks[3].depthwise.params.w_scales: expected float32 of shape (96,), got float64 (48,)`.
    """
    ck = _Checker(source)
    ck.dict(cfg, "", _TOP_KEYS)
    first = ck.conv(cfg["first_conv"], "first_conv")
    channels, size = first.out_channel, first.out_shape
    raw_blocks = cfg["blocks"]
    if type(raw_blocks) not in (list, tuple) or not 1 <= len(raw_blocks) <= MAX_BLOCKS:
        ck.fail("blocks", f"expected a list of 1 to {MAX_BLOCKS} blocks, got "
                f"{type(raw_blocks).__name__} {brief(raw_blocks, 40)}")
    blocks = []
    for i, raw in enumerate(raw_blocks):
        path = f"blocks[{i}]"
        ck.dict(raw, path, _BLOCK_KEYS)
        if raw["se"] is not None:
            ck.fail(f"{path}.se", "squeeze-and-excitation blocks are not supported "
                    "(tiny-training cannot train them either)")
        in_channels, in_size = channels, size
        convs = {}
        for key in ("pointwise1", "depthwise", "pointwise2"):
            if raw[key] is None:
                convs[key] = None
                continue
            conv = ck.conv(raw[key], f"{path}.{key}")
            ck.follows(conv, f"{path}.{key}", channels, size)
            convs[key] = conv
            channels, size = conv.out_channel, conv.out_shape
        if not any(convs.values()):
            ck.fail(path, "a block needs at least one conv")
        residual = None
        if raw["residual"] is not None:
            residual = ck.residual(raw["residual"], f"{path}.residual")
            if convs["pointwise2"] is None:  # tiny-training reads the add's scale from it
                ck.fail(f"{path}.residual", "a residual add needs a pointwise2 conv")
            if (residual.in_channel, residual.in_shape) != (in_channels, in_size):
                ck.fail(f"{path}.residual", f"expected in_channel {in_channels} and in_shape "
                        f"{in_size} (the block input), got {residual.in_channel}, "
                        f"{residual.in_shape}")
            if (channels, size) != (in_channels, in_size):
                ck.fail(f"{path}.residual", f"the block maps ({in_channels}, {in_size}) to "
                        f"({channels}, {size}): a residual add needs equal shapes")
        blocks.append(ZooBlock(index=i, residual=residual, **convs))
    feature_mix = None
    if cfg["feature_mix"] is not None:
        feature_mix = ck.conv(cfg["feature_mix"], "feature_mix")
        ck.follows(feature_mix, "feature_mix", channels, size)
        channels, size = feature_mix.out_channel, feature_mix.out_shape
    classifier = ck.conv(cfg["classifier"], "classifier", classifier=True)
    ck.follows(classifier, "classifier", channels, 1)
    return ZooModel(source=source, first_conv=first, blocks=blocks, feature_mix=feature_mix,
                    classifier=classifier)


def read_zoo_pickle(path: str | Path) -> Any:
    """Unpickle a zoo `.pkl` (torch.save zip or plain pickle) with the restricted unpickler:
    the raw, unvalidated object. Nothing from the file is executed."""
    path = Path(path)
    if not path.is_file():
        raise TinyTrainError(f"{path}: no such model file")
    return _restricted_loads(_read_pickle_bytes(path), path.name)


def load_zoo_model(path: str | Path) -> ZooModel:
    """Load a tiny-training zoo `.pkl` safely and validate it (`TinyTrainError` if not valid)."""
    return validate_zoo_dict(read_zoo_pickle(path), source=Path(path).name)
