"""Load and validate an int8 model of mit-han-lab/tiny-training's model zoo, safely.

The zoo files (`mcunet-5fps.pkl`, `mbv2-w0.35.pkl`, `proxyless-w0.3.pkl`) are `torch.save`
zip archives (`archive/data.pkl` + `archive/version`) whose pickle holds a plain dict of
Python ints, floats, tuples and NumPy arrays; there are no torch tensors (no persistent-id
records). We never unpickle them with `pickle.load` / `torch.load(weights_only=False)`:
those execute whatever callable a file names. `_RestrictedUnpickler` resolves only the
globals a pickled NumPy array needs (found with `pickletools.genops`, which reads opcodes
without executing them); any other global, and any persistent id, raises `TinyTrainError`
before anything from the file runs. A plain pickle of the same dict is read the same way;
the legacy (pre-1.6) `torch.save` stream is refused.

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
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TinyTrainError

try:  # NumPy >= 2 moved numpy.core to numpy._core; pickles name either module.
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

MAX_PICKLE_BYTES = 256 << 20  # a zoo model is ~1 MB; refuse to inflate anything absurd
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first object of a pre-1.6 torch.save stream


# --------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------

def _reconstruct(subtype, shape, typecode):
    """numpy's `_reconstruct`, for plain ndarrays only (what `ndarray.__reduce__` emits)."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"array subtype {subtype!r} is not allowed")
    return _np_reconstruct(subtype, shape, typecode)


def _dtype(*args):
    """`numpy.dtype(...)`, refusing object dtypes (they would hold arbitrary Python objects)."""
    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError(f"object dtype {dt!r} is not allowed")
    return dt


def _latin1_encode(text, encoding="latin1", *rest):
    """`_codecs.encode(str, 'latin1')`: how pickle protocol 2 stores a `bytes` object."""
    if encoding != "latin1" or rest or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed")
    return codecs.encode(text, "latin1")


# (module, name) -> the object it resolves to. Everything else is refused.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,   # the zoo files (NumPy 1.x)
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # same, written by NumPy >= 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise TinyTrainError(
                f"forbidden global {module}.{name} in the pickle: a tiny-training model file "
                "holds only NumPy arrays, ints, floats and tuples, so it is refused and "
                "nothing from it is executed"
            ) from None

    def persistent_load(self, pid):
        raise TinyTrainError(
            "the pickle references a torch storage (persistent id): tiny-training model "
            "files hold NumPy arrays, not torch tensors"
        )


def _restricted_loads(data: bytes, source: str) -> Any:
    stream = io.BytesIO(data)
    try:
        obj = _RestrictedUnpickler(stream).load()
    except TinyTrainError as err:
        raise TinyTrainError(f"{source}: {err}") from None
    except Exception as err:  # malformed stream, refused dtype, array size mismatch, ...
        raise TinyTrainError(f"{source}: not a valid pickle: {type(err).__name__}: {err}") from None
    if isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC:
        raise TinyTrainError(
            f"{source}: legacy (pre-1.6) torch.save format is not supported; "
            "re-save it with a recent torch.save (zip format)"
        )
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
                        f"<dir>/data.pkl, found {[i.filename for i in names]}"
                    )
                if names[0].file_size > MAX_PICKLE_BYTES:
                    raise TinyTrainError(f"{path.name}: data.pkl is {names[0].file_size} bytes, "
                                         f"more than {MAX_PICKLE_BYTES}")
                return zf.read(names[0])
        except (zipfile.BadZipFile, OSError) as err:
            raise TinyTrainError(f"{path.name}: unreadable zip archive: {err}") from None
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


class _Checker:
    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, msg: str):
        raise TinyTrainError(f"{self.source}: {path or 'top level'}: {msg}")

    def dict(self, obj, path, required, optional=()):
        if not isinstance(obj, dict):
            self.fail(path, f"expected a dict, got {type(obj).__name__}")
        for key in obj:
            if key not in required and key not in optional:
                self.fail(f"{path}.{key}" if path else repr(key), "unexpected key")
        for key in required:
            if key not in obj:
                self.fail(f"{path}.{key}" if path else key, "missing")
        return obj

    def int(self, value, path, lo=None, hi=None):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            self.fail(path, f"expected an int, got {type(value).__name__} {value!r}")
        value = int(value)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.fail(path, f"expected an int in [{lo}, {'inf' if hi is None else hi}], got {value}")
        return value

    def scale(self, value, path):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            self.fail(path, f"expected a float, got {type(value).__name__} {value!r}")
        value = float(value)
        if not (math.isfinite(value) and value > 0):
            self.fail(path, f"expected a finite float > 0, got {value}")
        return value

    def array(self, value, path, dtype, shape):
        dtype = np.dtype(dtype)
        if type(value) is not np.ndarray or value.dtype != dtype or value.shape != shape:
            got = (f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray)
                   else type(value).__name__)
            self.fail(path, f"expected {dtype} of shape {shape}, got {got}")
        return np.ascontiguousarray(value)

    def conv(self, d, path, classifier=False) -> ZooConv:
        if classifier:
            self.dict(d, path, _CLASSIFIER_KEYS, optional=_CONV_KEYS - _CLASSIFIER_KEYS)
        else:
            self.dict(d, path, _CONV_KEYS)
        cin = self.int(d["in_channel"], f"{path}.in_channel", 1)
        cout = self.int(d["out_channel"], f"{path}.out_channel", 1)
        ks = d["kernel_size"]
        if isinstance(ks, (int, np.integer)) and not isinstance(ks, bool):
            ks = (ks, ks)
        if (not isinstance(ks, (tuple, list)) or len(ks) != 2 or ks[0] != ks[1]
                or self.int(ks[0], f"{path}.kernel_size", 1) % 2 == 0):
            self.fail(f"{path}.kernel_size", f"expected (k, k) with k odd, got {ks!r}")
        k = int(ks[0])
        stride = self.int(d["stride"], f"{path}.stride", 1)
        groups = self.int(d["groups"], f"{path}.groups", 1)
        depthwise = d.get("depthwise", False)
        if not isinstance(depthwise, bool):
            self.fail(f"{path}.depthwise", f"expected a bool, got {depthwise!r}")
        if depthwise and not groups == cin == cout:
            self.fail(f"{path}.groups", f"a depthwise conv needs groups == in_channel == "
                      f"out_channel, got {groups}, {cin}, {cout}")
        if not depthwise and groups != 1:
            self.fail(f"{path}.groups", f"expected 1 for a non-depthwise conv, got {groups}")
        if d.get("act") is not None:
            self.fail(f"{path}.act", f"expected None (activations are folded into the int8 "
                      f"output range; tiny-training ignores this field), got {d['act']!r}")
        in_shape = out_shape = None
        if not classifier or "in_shape" in d or "out_shape" in d:
            in_shape = self.int(d.get("in_shape"), f"{path}.in_shape", 1)
            out_shape = self.int(d.get("out_shape"), f"{path}.out_shape", 1)
            expect = (in_shape - 1) // stride + 1  # odd k, padding (k - 1) // 2
            if out_shape != expect:
                self.fail(f"{path}.out_shape", f"expected {expect} (in_shape {in_shape}, "
                          f"stride {stride}), got {out_shape}")
        elif (k, stride) != (1, 1):
            self.fail(f"{path}.kernel_size", f"the classifier must be a 1x1 conv with stride 1, "
                      f"got kernel {k} stride {stride}")
        p = self.dict(d["params"], f"{path}.params", _PARAM_KEYS)
        pp = f"{path}.params"
        return ZooConv(
            name=path, in_channel=cin, out_channel=cout, in_shape=in_shape, out_shape=out_shape,
            kernel_size=k, stride=stride, groups=groups, depthwise=depthwise,
            weight=self.array(p["weight"], f"{pp}.weight", np.int8, (cout, cin // groups, k, k)),
            bias=self.array(p["bias"], f"{pp}.bias", np.int32, (cout,)),
            w_scales=self.positive(self.array(p["w_scales"], f"{pp}.w_scales", np.float32,
                                              (cout,)), f"{pp}.w_scales"),
            x_scale=self.scale(p["x_scale"], f"{pp}.x_scale"),
            x_zero=self.int(p["x_zero"], f"{pp}.x_zero", -128, 127),
            y_scale=self.scale(p["y_scale"], f"{pp}.y_scale"),
            y_zero=self.int(p["y_zero"], f"{pp}.y_zero", -128, 127),
        )

    def positive(self, arr, path):
        if not (np.all(np.isfinite(arr)) and np.all(arr > 0)):
            self.fail(path, "expected finite values > 0")
        return arr

    def residual(self, d, path) -> ZooResidual:
        if isinstance(d, dict) and "kernel_size" in d:
            self.fail(path, "residual convolutions (a conv on the shortcut) are not supported")
        self.dict(d, path, {"in_channel", "in_shape", "params"})
        p = self.dict(d["params"], f"{path}.params", _QPARAM_KEYS)
        pp = f"{path}.params"
        return ZooResidual(
            name=path,
            in_channel=self.int(d["in_channel"], f"{path}.in_channel", 1),
            in_shape=self.int(d["in_shape"], f"{path}.in_shape", 1),
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
    if not isinstance(raw_blocks, (list, tuple)) or not raw_blocks:
        ck.fail("blocks", f"expected a non-empty list, got {type(raw_blocks).__name__}")
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
