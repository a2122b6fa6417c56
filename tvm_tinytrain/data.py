"""Read and check the `.npz` data of `tinytrain run --data`, before anything is built.

The file is untrusted: each array's `.npy` header (shape, dtype) is read from its zip member
and checked against the member's size before any data is read, so a header claiming 10^12
elements, a zip bomb or a truncated member costs nothing. Then the values: samples must be
finite real numbers (float32 on the board: NaN, Inf or values beyond float32 are refused),
labels non-negative integers (integer dtype, or floats holding whole numbers), x and y of
equal length, every sample of the same shape. `check_against_model` compares them with the
compiled model. Every problem is one `TinyTrainError` naming the array.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from .errors import TinyTrainError, brief

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
MAX_ARRAY_BYTES = 1 << 30       # per array, as stored (1 GiB)
MAX_SAMPLES = 10_000_000
_SAMPLE_KINDS = "biuf"          # bool, int, uint, float
_LABEL_KINDS = "iuf"


def _clip(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _read_member(zf: zipfile.ZipFile, path: str, name: str) -> np.ndarray:
    """One array, its header checked against the member's size before reading the data."""
    try:
        info = zf.getinfo(f"{name}.npy")
    except KeyError:
        raise TinyTrainError(f"{path} lacks the array '{name}': expected {', '.join(ARRAYS)}") from None
    if info.file_size > MAX_ARRAY_BYTES + 65536:
        raise TinyTrainError(f"{path}: {name} is {info.file_size} bytes, more than {MAX_ARRAY_BYTES}")
    fmt = np.lib.format
    with zf.open(info) as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
        if dtype.kind not in _SAMPLE_KINDS or dtype.hasobject or dtype.subdtype is not None:
            raise TinyTrainError(f"{path}: {name} has dtype {_clip(dtype, 60)}: expected numbers "
                                 "(float or integer)")
        if len(shape) > 8 or any(type(d) is not int or d < 0 for d in shape):
            raise TinyTrainError(f"{path}: {name} has an invalid shape {brief(shape)}")
        nbytes = math.prod(shape) * dtype.itemsize
        header = f.tell()
        if nbytes > MAX_ARRAY_BYTES or header + nbytes != info.file_size:
            raise TinyTrainError(f"{path}: {name}'s header claims shape {brief(shape)} of {dtype} "
                                 f"({nbytes} bytes) but the member holds {info.file_size - header} "
                                 "bytes of data")
        raw = f.read(nbytes)
    if len(raw) != nbytes:
        raise TinyTrainError(f"{path}: {name} is truncated")
    flat = np.frombuffer(raw, dtype=dtype, count=math.prod(shape))
    return flat.reshape(shape, order="F" if fortran else "C").copy()


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """x_train, y_train, x_test, y_test of a .npz file: samples float32, labels int64."""
    path = str(path)
    if not Path(path).is_file():
        raise TinyTrainError(f"no such data file: {path}")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            npy = f.read(6) == b"\x93NUMPY"
        raise TinyTrainError(f"{path} is {'a single .npy array' if npy else 'not a .npz archive'}: "
                             f"save the data with np.savez(path, {'=..., '.join(ARRAYS)}=...)")
    try:
        with zipfile.ZipFile(path) as zf:
            arrays = {name: _read_member(zf, path, name) for name in ARRAYS}
    except TinyTrainError:
        raise
    except Exception as err:  # noqa: BLE001 - a corrupt zip or .npy fails in many ways
        raise TinyTrainError(f"cannot read {path} as a .npz of arrays: {type(err).__name__}: "
                             f"{_clip(err)}") from None
    return {**_samples_and_labels(path, arrays["x_train"], arrays["y_train"], "train"),
            **_samples_and_labels(path, arrays["x_test"], arrays["y_test"], "test")}


def _samples_and_labels(path: str, x: np.ndarray, y: np.ndarray, part: str) -> dict[str, np.ndarray]:
    xn, yn = f"x_{part}", f"y_{part}"
    if x.ndim < 2:
        raise TinyTrainError(f"{path}: {xn} must be an array of samples (N, C, H, W), got shape {x.shape}")
    if y.ndim != 1:
        raise TinyTrainError(f"{path}: {yn} must be a 1-d array of labels, got shape {y.shape}")
    if len(x) != len(y):
        raise TinyTrainError(f"{path}: {xn} has {len(x)} samples but {yn} has {len(y)} labels")
    if not 1 <= len(x) <= MAX_SAMPLES:
        raise TinyTrainError(f"{path}: {xn} must hold 1 to {MAX_SAMPLES} samples, got {len(x)}")
    with np.errstate(over="ignore", invalid="ignore"):
        x32 = x.astype(np.float32)
    bad = ~np.isfinite(x32)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise TinyTrainError(f"{path}: {xn} holds NaN, Inf or values beyond float32 (first at "
                             f"{where}: {x[where]})")
    if y.dtype.kind not in _LABEL_KINDS:
        raise TinyTrainError(f"{path}: {yn} has dtype {y.dtype}: expected integer labels")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.argmax(bad))
            raise TinyTrainError(f"{path}: {yn}[{i}] is {y[i]}: labels must be whole numbers")
    if (y < 0).any() or (y > np.iinfo(np.int32).max).any():
        i = int(np.argmax((y < 0) | (y > np.iinfo(np.int32).max)))
        raise TinyTrainError(f"{path}: {yn}[{i}] is {y[i]}: labels must be class indices 0, 1, ...")
    return {xn: x32, yn: y.astype(np.int64)}


def check_against_model(path: str, data: dict[str, np.ndarray], model: dict) -> None:
    """The samples fit the compiled model's input and the labels its classes (checked before
    the build; `model` is memory_report.json's "model" entry)."""
    shape, classes = tuple(model["input_shape"]), int(model["num_classes"])
    for part in ("train", "test"):
        x, y = data[f"x_{part}"], data[f"y_{part}"]
        if math.prod(x.shape[1:]) != math.prod(shape):
            raise TinyTrainError(f"{path}: x_{part} holds samples of shape {x.shape[1:]}, "
                                 f"the model takes {shape}")
        if model.get("loss") == "mse":
            continue  # labels unused: an autoencoder reconstructs its input
        if (y >= classes).any():
            i = int(np.argmax(y >= classes))
            raise TinyTrainError(f"{path}: y_{part}[{i}] is label {y[i]}, the model has classes "
                                 f"0..{classes - 1}")
