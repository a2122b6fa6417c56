"""Fuzzing tinytrain's file loaders (issue #10): seeded input generators and a forking runner.

Every file a user hands tinytrain is untrusted. This module has one generator per input
kind and a runner that feeds each input to the real entry point in a child process, with a
timeout and resource limits, and classifies what happened. `tests/test_fuzz.py` runs a
small seeded subset in CI; `bench/fuzz.py` runs thousands.

Input kinds (`KINDS`), each a deterministic function of (kind, seed, index):

  zoo_bytes       mutations of a small synthetic tiny-training zoo model (and, 1 in 10, of
                  the real mcunet-5fps.pkl): opcode-aware ones of the inner data.pkl (ints,
                  floats, keys, memo references, array bytes; read with pickletools, which
                  runs nothing), byte-level ones (flip, insert, delete, splice, truncate,
                  duplicate) of data.pkl re-zipped, or of the zip itself
  zoo_struct      structural mutations of the zoo dict (keys, types, shapes, scales, nesting);
                  1 in 13 a valid model of 1-255 blocks, kernels up to 11, strides up to 4,
                  feature maps up to x2^40, built through `cli.load_model` or compiled
  pickle_hostile  hand-written pickles of raw opcodes: code-execution attempts, numpy
                  gadgets, 200,000-deep nesting, lying lengths, memo / persistent-id /
                  out-of-band-buffer abuse, legacy torch magic
  onnx            byte and structural mutations of a small valid ONNX CNN
  config          YAML / JSON sparse-update configs: wrong types, alias bombs, bad bytes, ...
  npz             .npz data files: corrupt zips, lying .npy headers, bad labels and shapes
  weights         torch.save state_dicts for the small test net: bad keys, sizes, values,
                  byte mutations, forbidden globals

What "loading" means (the entry points the CLI uses), per `Case.mode`:

  load   zoo_*/pickle_hostile: `frontend.zoo_format.load_zoo_model`; onnx:
         `frontend.onnx_frontend.import_onnx`; config: `SparseUpdateConfig.from_file` then
         `.resolve()` on the small net's layers; npz: `tvm_tinytrain.data.load_npz` then
         `session.train_and_evaluate` up to the point where it would build the C program; weights: `cli.load_model`
         with a factory file and `--weights`
  full   zoo only: `cli.load_model(path, None, None, num_classes)` (builds Relax)
  cli    `tvm_tinytrain.cli.main([...])` in the child, stderr captured: must return 0, or 1
         with exactly one bounded `tinytrain: error:` line

Outcomes (`OUTCOMES`): `loaded` (returned normally), `clean_error` (TinyTrainError with a
one-line message of at most MAX_MESSAGE characters), `crash` (any other exception, or an
unbounded / multi-line message, or a broken CLI contract), `hang` (wall-clock timeout or
the CPU limit), `signal` (the child died of a signal, e.g. SIGSEGV), `code_executed` (the
sentinel file a hostile payload tries to create exists after the run, whatever else happened).

Generated pickles are written with the standard `pickle` module or by hand; nothing is ever
unpickled in the parent process: only the children load inputs.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import textwrap
import time
import traceback
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

KINDS = ("zoo_bytes", "zoo_struct", "pickle_hostile", "onnx", "config", "npz", "weights")
OUTCOMES = ("loaded", "clean_error", "crash", "hang", "signal", "code_executed")
BAD_OUTCOMES = ("crash", "hang", "signal", "code_executed")
# Share of each kind in a run of n inputs (bench/fuzz.py and the CI subset).
KIND_WEIGHTS = {"zoo_bytes": 0.2, "zoo_struct": 0.2, "pickle_hostile": 0.1, "onnx": 0.15,
                "config": 0.15, "npz": 0.1, "weights": 0.1}
MAX_MESSAGE = 2000          # a clean error message is one line of at most this many characters
SENTINEL = "fuzz_sentinel"  # hostile payloads try to create this file (relative to the child's cwd)
INPUT_SHAPE = (1, 2, 8, 8)  # the small torch net of conftest.py (the weights / config / npz model)
NUM_CLASSES = 4
REAL_ZOO = "mcunet-5fps.pkl"


def models_dir() -> Path:
    env = os.environ.get("TINYTRAIN_MODELS_DIR")
    if env:
        return Path(env)
    return TESTS_DIR.parents[1] / "shared" / "models" / "tiny-training"


@dataclass
class Case:
    """One generated input: files to write into a fresh directory, and how to load them."""

    kind: str
    seed: int
    index: int
    desc: str                    # one line: what the generator did
    files: dict[str, bytes]      # name -> content; `main` is the one loaded
    main: str
    mode: str = "load"           # load | full | cli
    num_classes: int | None = None
    expect_error: bool = False   # the generator knows the input is invalid

    @property
    def case_id(self) -> str:
        return f"{self.kind}:{self.seed}:{self.index}"


def _rng(kind: str, seed: int, index: int) -> random.Random:
    return random.Random(f"{kind}:{seed}:{index}")  # str seeds are hashed with SHA-512: stable


def _pick_mode(r: random.Random, full_p: float = 0.0, cli_p: float = 0.03) -> str:
    x = r.random()
    if x < cli_p:
        return "cli"
    if x < cli_p + full_p:
        return "full"
    return "load"


# --------------------------------------------------------------------------------------
# Byte mutations
# --------------------------------------------------------------------------------------

def mutate_bytes(data: bytes, r: random.Random, n_ops: int | None = None) -> tuple[bytes, str]:
    """1-4 random byte-level mutations; returns the data and a short description."""
    b = bytearray(data)
    ops = []
    for _ in range(n_ops or r.choice((1, 1, 1, 2, 3, 4))):
        op = r.choice(("flip", "flip", "byte", "insert", "delete", "splice", "truncate", "dup",
                       "interesting"))
        n = len(b)
        if n == 0:
            b += bytes([r.randrange(256)])
            continue
        pos = r.randrange(n)
        if op == "flip":
            b[pos] ^= 1 << r.randrange(8)
        elif op == "byte":
            b[pos] = r.randrange(256)
        elif op == "insert":
            b[pos:pos] = bytes(r.randrange(256) for _ in range(r.choice((1, 2, 4, 16))))
        elif op == "delete":
            del b[pos:pos + r.choice((1, 2, 4, 16, 256))]
        elif op == "splice":
            src = r.randrange(n)
            ln = r.choice((2, 8, 64, 512))
            b[pos:pos + ln] = b[src:src + ln]
        elif op == "truncate":
            del b[pos:]
        elif op == "dup":
            ln = r.choice((1, 4, 32, 1024))
            b[pos:pos] = b[pos:pos + ln] * r.choice((2, 3, 16))
        elif op == "interesting":  # a 4-byte length / int field set to an extreme value
            val = r.choice((0, 1, 0x7F, 0x80, 0xFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE))
            b[pos:pos + 4] = struct.pack("<I", val)
        ops.append(f"{op}@{pos}")
    return bytes(b), ",".join(ops)


_ZOO_KEYS = ("in_channel", "in_shape", "out_channel", "out_shape", "kernel_size", "stride", "groups",
             "depthwise", "act", "params", "weight", "bias", "x_scale", "x_zero", "y_scale", "y_zero",
             "w_scales", "first_conv", "blocks", "feature_mix", "classifier", "pointwise1", "pointwise2",
             "residual", "se", "extra")


def _op_variants(name: str, arg, raw: bytes, r: random.Random, max_memo: int) -> list[tuple[str, bytes]]:
    """Replacements for one pickle opcode (with its argument) that keep the stream parseable."""
    ints = (0, 1, 2, 3, 5, 127, 128, 255, -1, -128, 256, 2 ** 16, 2 ** 31 - 1, -2 ** 31)
    floats = (float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-320, 1e308, -1.0, 2.0 ** 53)
    out: list[tuple[str, bytes]] = []
    if name in ("BININT1", "BININT2", "BININT", "LONG1"):
        v = r.choice(ints)
        out += [(f"int {arg}->{v}", _int(v)), (f"int {arg}->2**64", _int(2 ** 64)),
                (f"int {arg}->10**30", _int(10 ** 30)), (f"int {arg}->float nan", b"G" + struct.pack(">d", float("nan"))),
                (f"int {arg}->None", b"N"), (f"int {arg}->True", b"\x88"), (f"int {arg}->1.0", b"G" + struct.pack(">d", 1.0)),
                (f"int {arg}->'3'", _u("3"))]
    elif name == "BINFLOAT":
        v = r.choice(floats)
        out += [(f"float {arg}->{v}", b"G" + struct.pack(">d", v)), (f"float {arg}->int 1", b"K\x01"),
                (f"float {arg}->None", b"N"), (f"float {arg}->'0.1'", _u("0.1"))]
    elif name in ("BINGET", "LONG_BINGET") and max_memo > 0:
        i = r.randrange(max_memo + 1)
        out += [(f"memo get {arg}->{i}", b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i))]
    elif name in ("BINUNICODE", "SHORT_BINUNICODE"):
        if len(arg) <= 20:
            k = r.choice(_ZOO_KEYS)
            out += [(f"key {arg!r}->{k!r}", _u(k)), (f"str {arg!r}->''", _u(""))]
        else:  # an array's bytes (protocol 2 stores them as a latin-1 str)
            cut = r.choice((1, 2, 4, len(arg) // 2))
            out += [(f"array bytes -{cut}", _u(arg[:-cut])), ("array bytes doubled", _u(arg * 2)),
                    ("array bytes +1", _u(arg + "\x00"))]
    elif name in ("NEWTRUE", "NEWFALSE"):
        out += [(f"{name}->not", b"\x89" if name == "NEWTRUE" else b"\x88"), (f"{name}->int 1", b"K\x01"),
                (f"{name}->None", b"N")]
    elif name == "NONE":
        out += [("None->1", b"K\x01"), ("None->()", b")"), ("None->{}", b"}"), ("None->'relu6'", _u("relu6")),
                ("None->[]", b"]")]
    elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
        other = r.choice([o for o in (b"\x85", b"\x86", b"\x87") if o != raw[:1]])
        out += [(f"{name}->{other!r}", other)]
    elif name == "EMPTY_DICT":
        out += [("{}->[]", b"]")]
    return out


def mutate_pickle_ops(data: bytes, r: random.Random) -> tuple[bytes, str]:
    """1-3 opcode-aware mutations (read with pickletools.genops, which executes nothing):
    ints, floats, keys, memo references, array bytes, bools, None, tuple arity."""
    import pickletools
    try:
        ops = list(pickletools.genops(data))
    except Exception:  # noqa: BLE001 - not a parseable pickle: fall back to bytes
        return mutate_bytes(data, r)
    spans = []
    max_memo = 0
    for i, (op, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(data)
        spans.append((op.name, arg, pos, end))
        if op.name in ("BINPUT", "LONG_BINPUT"):
            max_memo = max(max_memo, arg)
    edits = []
    for _ in range(r.choice((1, 1, 1, 2, 3))):
        for _try in range(20):
            name, arg, pos, end = r.choice(spans)
            variants = _op_variants(name, arg, data[pos:end], r, max_memo)
            if variants and all(pos != e[0] for e in edits):
                desc, new = r.choice(variants)
                edits.append((pos, end, new, desc))
                break
    out = data
    for pos, end, new, _ in sorted(edits, reverse=True):
        out = out[:pos] + new + out[end:]
    return out, ",".join(f"{d}@{p}" for p, _, _, d in sorted(edits))


def torch_zip(data_pkl: bytes, folder: str = "archive") -> bytes:
    """A torch.save-style zip archive holding `data_pkl` (as the zoo files are)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{folder}/data.pkl", data_pkl)
        zf.writestr(f"{folder}/version", "3\n")
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# A small synthetic zoo model
# --------------------------------------------------------------------------------------

def _conv(rng: np.random.Generator, cin, cout, size, k=1, stride=1, depthwise=False,
          classifier=False, x_zero=-128, y_zero=-128):
    groups = cin if depthwise else 1
    d = {}
    if not classifier:
        d.update(in_channel=cin, in_shape=size, out_channel=cout, out_shape=(size - 1) // stride + 1)
    else:
        d.update(in_channel=cin, out_channel=cout)
    d.update(kernel_size=(k, k), stride=stride, groups=groups)
    if not classifier:
        d.update(depthwise=depthwise, act=None)
    d["params"] = {
        "weight": rng.integers(-127, 128, (cout, cin // groups, k, k)).astype(np.int8),
        "bias": rng.integers(-500, 500, (cout,)).astype(np.int32),
        "x_scale": 0.02 + float(rng.random()) * 0.05,
        "x_zero": x_zero,
        "y_scale": 0.02 + float(rng.random()) * 0.05,
        "y_zero": y_zero,
        "w_scales": (0.001 + rng.random(cout) * 0.01).astype(np.float32),
    }
    return d


def synthetic_zoo(seed: int = 0, size: int = 8, cin: int = 3, c: int = 4, classes: int = 3,
                  two_blocks: bool = True, n_residual: int = 1, first_k: int = 3, first_stride: int = 2,
                  dw_k: int = 3) -> dict:
    """A tiny valid zoo dict: first_conv (stride 2) + 1-2 inverted-residual blocks + classifier
    (`n_residual` residual blocks instead of one; kernel sizes and the first stride adjustable)."""
    rng = np.random.default_rng(seed)
    first = _conv(rng, cin, c, size, k=first_k, stride=first_stride)
    s = first["out_shape"]
    blocks = []
    for _ in range(n_residual):
        blocks.append({
            "pointwise1": _conv(rng, c, 2 * c, s),
            "depthwise": _conv(rng, 2 * c, 2 * c, s, k=dw_k, depthwise=True),
            "pointwise2": _conv(rng, 2 * c, c, s, y_zero=0),
            "residual": {"in_channel": c, "in_shape": s,
                         "params": {"x_scale": first["params"]["y_scale"], "x_zero": -128,
                                    "y_scale": 0.05, "y_zero": -3}},
            "se": None,
        })
    out_c = c
    if two_blocks:
        dw = _conv(rng, c, c, s, k=3, stride=2, depthwise=True)
        out_c = c + 2
        blocks.append({"pointwise1": None, "depthwise": dw,
                       "pointwise2": _conv(rng, c, out_c, dw["out_shape"], y_zero=0),
                       "residual": None, "se": None})
    return {"first_conv": first, "blocks": blocks, "feature_mix": None,
            "classifier": _conv(rng, out_c, classes, None, classifier=True, x_zero=-1, y_zero=-20)}


def zoo_pickle(d, protocol: int = 2) -> bytes:
    return pickle.dumps(d, protocol=protocol)


_CACHE: dict[str, object] = {}


def _synthetic_pkl() -> bytes:
    if "syn" not in _CACHE:
        _CACHE["syn"] = zoo_pickle(synthetic_zoo())
    return _CACHE["syn"]


def _real_data_pkl() -> bytes | None:
    """The real mcunet-5fps data.pkl bytes (read from the shared dir, never copied)."""
    if "real" not in _CACHE:
        path = models_dir() / REAL_ZOO
        data = None
        if path.is_file():
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith("/data.pkl")]
                data = zf.read(names[0])
        _CACHE["real"] = data
    return _CACHE["real"]


# --------------------------------------------------------------------------------------
# zoo_bytes
# --------------------------------------------------------------------------------------

def gen_zoo_bytes(seed: int, index: int) -> Case:
    r = _rng("zoo_bytes", seed, index)
    real = _real_data_pkl()
    use_real = real is not None and r.random() < 0.1
    inner = real if use_real else _synthetic_pkl()
    src = REAL_ZOO if use_real else "synthetic"
    how = r.random()
    if how < 0.45:  # opcode-aware: values, keys, memo references (reaches the validator)
        data, ops = mutate_pickle_ops(inner, r)
        blob = torch_zip(data) if r.random() < 0.8 else data
        desc = f"{src} data.pkl opcodes mutated ({ops}), {'re-zipped' if len(blob) != len(data) else 'plain pickle'}"
    elif how < 0.75:  # bytes of the pickle, re-zipped (so the mutation reaches the unpickler)
        data, ops = mutate_bytes(inner, r)
        blob = torch_zip(data) if r.random() < 0.8 else data  # or a plain pickle file
        desc = f"{src} data.pkl mutated ({ops}), {'re-zipped' if len(blob) != len(data) else 'plain pickle'}"
    else:
        data, ops = mutate_bytes(torch_zip(inner), r)
        blob = data
        desc = f"{src} zip archive mutated ({ops})"
    if index == 0:  # an unmutated control: must load
        blob, desc = torch_zip(inner), f"{src} unmutated (control)"
    mode = _pick_mode(r, full_p=0.0 if use_real else 0.06, cli_p=0.0 if use_real else 0.02)
    return Case("zoo_bytes", seed, index, desc, {"model.pkl": blob}, "model.pkl", mode,
                num_classes=_num_classes(r) if mode != "load" else None)


def _num_classes(r: random.Random):
    """--num-classes for full / cli loads of a zoo model: mostly none, sometimes odd."""
    return r.choice((None,) * 8 + (2, 10, 4096, 4097, 1, 0, -3, 2 ** 31))


# --------------------------------------------------------------------------------------
# zoo_struct
# --------------------------------------------------------------------------------------

class _Deep:
    """Placeholder for a value too deep to pickle with `pickle` (spliced in as raw opcodes)."""


_DEEP_MARK = "__FUZZ_DEEP_NESTING__"


def _paths(obj, prefix=()):
    """Every (container, key, path) below obj (dicts and lists)."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((obj, k, prefix + (k,)))
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append((obj, i, prefix + (i,)))
            out += _paths(v, prefix + (i,))
    return out


def _weird_values(r: random.Random):
    """(description, value) candidates: wrong types, extremes, arrays."""
    nested = [0]
    for _ in range(300):
        nested = [nested]
    return [
        ("None", None), ("True", True), ("False", False), ("'23'", "23"), ("'no thanks'", "no thanks"),
        ("[2.7]", [2.7]), ("0", 0), ("-1", -1), ("2**31", 2 ** 31), ("2**63", 2 ** 63), ("-2**63", -2 ** 63),
        ("10**5000", 10 ** 5000), ("nan", float("nan")), ("inf", float("inf")), ("-inf", -float("inf")),
        ("1e-320", 1e-320), ("1e308", 1e308), ("-0.0", -0.0), ("2.5", 2.5), ("(3, 3)", (3, 3)),
        ("(3, 5)", (3, 5)), ("(2, 2)", (2, 2)), ("(3,)", (3,)), ("(3, 3, 3)", (3, 3, 3)),
        ("np.array([3, 3])", np.array([3, 3])), ("np.array(3)", np.array(3)),
        ("np.int64(3)", np.int64(3)), ("np.float32(nan)", np.float32("nan")), ("np.bool_(True)", np.bool_(True)),
        ("np.uint8(255)", np.uint8(255)), ("np.float64(0.5)", np.float64(0.5)),
        ("{}", {}), ("[]", []), ("()", ()), ("b'x'", b"x"), ("complex", 1 + 2j),
        ("300-deep list", nested), ("200000-deep list", _Deep()),
        ("int8 array (2,)", np.zeros(2, np.int8)), ("float64 array", np.ones(4)),
        ("empty int8 array", np.zeros((0, 3, 3, 3), np.int8)),
        ("fortran int8", np.asfortranarray(np.zeros((4, 3, 3, 3), np.int8))),
        ("big-endian int32", np.zeros(4, ">i4")), ("bool array", np.ones(4, bool)),
        ("structured array", np.zeros(4, [("a", "i1"), ("b", "f4")])),
        ("complex64 array", np.zeros(4, np.complex64)), ("float16 array", np.zeros(4, np.float16)),
        ("unicode array", np.array(["ab", "c"])), ("0-d float32", np.array(1.0, np.float32)),
        ("datetime array", np.zeros(2, "datetime64[s]")),
    ]


def _array_mutations(arr: np.ndarray, r: random.Random):
    out = [
        ("wrong dtype int16", arr.astype(np.int16)), ("wrong dtype float32", arr.astype(np.float32)),
        ("wrong dtype int64", arr.astype(np.int64)),
        ("extra dim", arr[None]), ("flattened", arr.reshape(-1)), ("first dim +1", np.concatenate([arr, arr[:1]])),
        ("first dim 0", arr[:0]), ("transposed", arr.T), ("non-contiguous view", arr[::-1]),
        ("byteswapped", arr.astype(arr.dtype.newbyteorder(">"))), ("as list", arr.tolist()),
    ]
    if arr.dtype.kind == "f":
        bad = arr.copy()
        bad.flat[r.randrange(bad.size)] = r.choice((np.nan, np.inf, -np.inf, 0.0, -1.0, 1e38))
        out.append(("a NaN/Inf/0/negative/huge entry", bad))
    return out


def _set_spatial(d: dict, factor: int) -> None:
    """Scale every in_shape/out_shape consistently (stays valid for the checker)."""
    first = d["first_conv"]
    size = first["in_shape"] * factor

    def conv(c, size):
        c["in_shape"] = size
        c["out_shape"] = (size - 1) // c["stride"] + 1
        return c["out_shape"]

    size = conv(first, size)
    for b in d["blocks"]:
        if b["residual"] is not None:
            b["residual"]["in_shape"] = size
        for key in ("pointwise1", "depthwise", "pointwise2"):
            if b[key] is not None:
                size = conv(b[key], size)


def _deep_list_ops(depth: int) -> bytes:
    return b"]" * depth + b"a" * (depth - 1)


def _pickle_with_deep(obj, depth: int = 200_000) -> bytes:
    """Pickle obj with protocol 2, replacing each _Deep placeholder by a depth-deep list."""
    def swap(o):
        if isinstance(o, _Deep):
            return _DEEP_MARK
        if isinstance(o, dict):
            return {k: swap(v) for k, v in o.items()}
        if isinstance(o, list):
            return [swap(v) for v in o]
        return o
    data = pickle.dumps(swap(obj), protocol=2)
    mark = _DEEP_MARK.encode()
    return data.replace(b"X" + struct.pack("<I", len(mark)) + mark, _deep_list_ops(depth))


def gen_zoo_struct(seed: int, index: int) -> Case:
    r = _rng("zoo_struct", seed, index)
    d = synthetic_zoo(seed=r.randrange(1000), two_blocks=r.random() < 0.7)
    descs = []
    expect_error = True
    n_mut = r.choice((1, 1, 1, 2, 3))
    blocks = 1
    if index % 13 == 0:
        n_mut = 0
        expect_error = False
        shape = dict(n_residual=r.choice((1, 1, 2, 8, 40, 255)), first_k=r.choice((1, 3, 3, 5, 11)),
                     first_stride=r.choice((1, 2, 2, 4)), dw_k=r.choice((3, 3, 5, 7, 11)))
        d = synthetic_zoo(seed=r.randrange(1000), two_blocks=r.random() < 0.7, **shape)
        blocks = shape["n_residual"]
        factor = r.choice((1, 1, 2, 16, 128, 2 ** 31 // 8, 2 ** 31, 2 ** 40))
        if factor != 1:
            _set_spatial(d, factor)
        descs.append(f"valid {shape}, spatial sizes x{factor}")
    for _ in range(n_mut):
        paths = _paths(d)
        parent, key, path = r.choice(paths)
        where = ".".join(map(str, path))
        op = r.random()
        value = parent[key]
        if op < 0.12 and isinstance(parent, dict):
            del parent[key]
            descs.append(f"drop {where}")
        elif op < 0.2 and isinstance(parent, dict):
            parent[r.choice(("extra", "se", "act", 0, None, "weight"))] = r.choice((1, None, "x", [1]))
            descs.append(f"add key beside {where}")
        elif op < 0.45 and isinstance(value, np.ndarray):
            name, new = r.choice(_array_mutations(value, r))
            parent[key] = new
            descs.append(f"{where}: {name}")
        elif op < 0.55 and isinstance(value, list) and value:
            choice = r.random()
            if choice < 0.3:
                parent[key] = value * r.choice((2, 50))
                descs.append(f"{where}: repeated")
            elif choice < 0.6:
                parent[key] = tuple(value)
                descs.append(f"{where}: tuple")
            else:
                parent[key] = list(reversed(value))
                descs.append(f"{where}: reversed")
        else:
            name, new = r.choice(_weird_values(r))
            parent[key] = new
            descs.append(f"{where} = {name}")
    try:
        data = _pickle_with_deep(d) if any(isinstance(v, _Deep) for *_, v in _leaves(d)) else zoo_pickle(d)
    except (RecursionError, pickle.PicklingError, TypeError) as err:  # e.g. an unpicklable value
        data = zoo_pickle(synthetic_zoo())
        descs.append(f"(unpicklable, control instead: {type(err).__name__})")
        expect_error = False
    blob = torch_zip(data) if r.random() < 0.85 else data
    mode = _pick_mode(r, full_p=0.05, cli_p=0.02)
    if index % 13 == 0:  # a valid model (maybe with huge feature maps): build it too
        # (compiling takes ~1 s per block: 255 blocks take 81 s, over the timeout, legitimately)
        mode = "cli" if r.random() < 0.2 and blocks <= 40 else "full"
    return Case("zoo_struct", seed, index, "; ".join(descs), {"model.pkl": blob}, "model.pkl", mode,
                num_classes=_num_classes(r) if mode != "load" else None, expect_error=expect_error)


def _leaves(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, prefix + (i,))
    else:
        yield prefix, obj


# --------------------------------------------------------------------------------------
# pickle_hostile: raw opcodes
# --------------------------------------------------------------------------------------

def _u(s: str) -> bytes:  # BINUNICODE
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _sbu(s: str) -> bytes:  # SHORT_BINUNICODE (protocol 4)
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


def _g(module: str, name: str) -> bytes:  # GLOBAL
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _sg(module: str, name: str) -> bytes:  # STACK_GLOBAL
    return _sbu(module) + _sbu(name) + b"\x93"


def _int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if -2 ** 31 <= v < 2 ** 31:
        return b"J" + struct.pack("<i", v)
    raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    if len(raw) < 256:
        return b"\x8a" + bytes([len(raw)]) + raw
    return b"\x8b" + struct.pack("<i", len(raw)) + raw


def _bytes(b: bytes) -> bytes:  # BINBYTES (protocol 3)
    return b"B" + struct.pack("<I", len(b)) + b


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


P2, P3, P4, P5 = b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"
TOUCH = f"touch {SENTINEL}"
PY_TOUCH = f"open({SENTINEL!r}, 'w').close()"


def _call(glob: bytes, *args: bytes) -> bytes:
    return glob + _tuple(*args) + b"R"


def _in_zoo_dict(payload: bytes) -> bytes:
    """A dict {'first_conv': <payload>, ...}: the payload where a real file holds a conv."""
    return (b"}(" + _u("first_conv") + payload + _u("blocks") + b"]" + _u("feature_mix") + b"N"
            + _u("classifier") + b"Ns")


def _hostile_cases() -> list[tuple[str, bytes, bool]]:
    """(description, pickle bytes, runs code under a plain `pickle.loads`) for every
    hand-written case (each code payload checked to create SENTINEL when loaded naively)."""
    cases: list[tuple[str, bytes, bool]] = []

    def add(desc, data, code=False):
        cases.append((desc, data, code))

    # ---- code execution attempts (each creates SENTINEL if it runs)
    add("os.system via GLOBAL+REDUCE", P2 + _call(_g("os", "system"), _u(TOUCH)) + b".", True)
    add("posix.system", P2 + _call(_g("posix", "system"), _u(TOUCH)) + b".", True)
    add("builtins.eval", P2 + _call(_g("builtins", "eval"), _u(PY_TOUCH)) + b".", True)
    add("__builtin__.eval (protocol-2 name mapping)", P2 + _call(_g("__builtin__", "eval"), _u(PY_TOUCH)) + b".", True)
    add("builtins.exec", P2 + _call(_g("builtins", "exec"), _u(PY_TOUCH)) + b".", True)
    add("subprocess.call list", P2 + _call(_g("subprocess", "call"), b"]" + b"(" + _u("touch") + _u(SENTINEL) + b"e") + b".", True)
    add("subprocess.Popen", P2 + _call(_g("subprocess", "Popen"), b"(" + _u("touch") + _u(SENTINEL) + b"l") + b".", True)
    add("subprocess.check_output list", P2 + _call(_g("subprocess", "check_output"), b"(" + _u("touch") + _u(SENTINEL) + b"l") + b".", True)
    add("os.system via STACK_GLOBAL (proto 4)", P4 + _sg("os", "system") + _u(TOUCH) + b"\x85R.", True)
    add("os.system via INST", P2 + b"(" + _u(TOUCH) + b"ios\nsystem\n.", True)
    add("os.system via OBJ", P2 + b"(" + _g("os", "system") + _u(TOUCH) + b"o.", True)
    add("os.popen", P2 + _call(_g("os", "popen"), _u(TOUCH)) + b".", True)
    add("builtins.getattr(__import__('os'), 'system')",
        P2 + _call(_call(_g("builtins", "getattr"), _call(_g("builtins", "__import__"), _u("os")), _u("system")),
                   _u(TOUCH)) + b".", True)
    add("numpy.testing runstring (exec gadget)",
        P2 + _call(_g("numpy.testing._private.utils", "runstring"), _u(PY_TOUCH), b"}") + b".", True)
    add("os.system nested in a zoo dict", P2 + _in_zoo_dict(_call(_g("os", "system"), _u(TOUCH))) + b".", True)
    add("os.system after a valid array", P2 + b"(" + _call(_g("numpy", "dtype"), _u("i1")) + _call(_g("os", "system"), _u(TOUCH)) + b"t.", True)
    add("copyreg._reconstructor(object) (allowed by some loaders)",
        P2 + _call(_g("copyreg", "_reconstructor"), _g("builtins", "object"), _g("builtins", "object"), b"N") + b".")
    add("torch._utils._rebuild_tensor with an os.system call as its storage",
        P2 + _call(_g("torch._utils", "_rebuild_tensor"), _call(_g("os", "system"), _u(TOUCH)), _int(0), _tuple(_int(1)),
                   _tuple(_int(1))) + b".", True)
    add("pickle.loads of an os.system pickle",
        P2 + _call(_g("pickle", "loads"), _bytes(P2 + _call(_g("os", "system"), _u(TOUCH)) + b".")) + b".", True)
    add("dotted name numpy:dtype.__class__ (proto 4)", P4 + _sg("numpy", "dtype.__class__") + b".", False)
    add("dotted name numpy:ndarray.__reduce__.__globals__", P4 + _sg("numpy", "ndarray.__reduce__") + b".", False)
    add("_codecs.encode with rot13 (allowed global, weird args)",
        P2 + _call(_g("_codecs", "encode"), _u("abc"), _u("rot13")) + b".")
    add("_codecs.encode bytes arg", P2 + _call(_g("_codecs", "encode"), b"C\x02ab", _u("latin1")) + b".")
    add("_codecs.encode huge string", P2 + _call(_g("_codecs", "encode"), _u("x" * 1_000_000), _u("latin1")) + b".")
    add("_codecs.encode non-latin1", P2 + _call(_g("_codecs", "encode"), _u("\u20ac"), _u("latin1")) + b".")
    add("BUILD on an allowed function (__defaults__)",
        P2 + _g("_codecs", "encode") + b"(N}" + _u("__defaults__") + _tuple(_u("rot13")) + b"st" + b"b.")
    add("BUILD dict on an allowed function", P2 + _g("numpy", "dtype") + b"}(" + _u("x") + b"K\x01u" + b"b.")
    # ---- numpy gadgets
    nd = _g("numpy", "ndarray")
    add("numpy.ndarray((10**12,), 'i1')", P2 + _call(nd, _tuple(_int(10 ** 12)), _u("i1")) + b".")
    add("numpy.ndarray((2**62,), 'f8')", P2 + _call(nd, _tuple(_int(2 ** 62)), _u("f8")) + b".")
    add("numpy.ndarray((-1,), 'i1')", P2 + _call(nd, _tuple(_int(-1)), _u("i1")) + b".")
    add("numpy.ndarray buffer + negative offset",
        P2 + _call(nd, _tuple(_int(4)), _u("i1"), _bytes(b"abcd"), _int(-100)) + b".")
    add("numpy.ndarray buffer + offset past end",
        P2 + _call(nd, _tuple(_int(4)), _u("i1"), _bytes(b"abcd"), _int(2 ** 40)) + b".")
    add("numpy.ndarray buffer + negative strides",
        P2 + _call(nd, _tuple(_int(4)), _u("i1"), _bytes(b"abcd"), _int(0), _tuple(_int(-1000))) + b".")
    add("numpy.ndarray huge strides over small buffer",
        P2 + _call(nd, _tuple(_int(3)), _u("i8"), _bytes(b"abcdefgh"), _int(0), _tuple(_int(2 ** 40))) + b".")
    add("numpy.ndarray object dtype", P2 + _call(nd, _tuple(_int(2)), _u("O")) + b".")
    add("numpy.ndarray dtype via dtype('O')", P2 + _call(nd, _tuple(_int(2)), _call(_g("numpy", "dtype"), _u("O"))) + b".")
    add("numpy.dtype('O')", P2 + _call(_g("numpy", "dtype"), _u("O")) + b".")
    add("numpy.dtype structured with object field",
        P2 + _call(_g("numpy", "dtype"), b"]" + b"(" + _tuple(_u("a"), _u("O")) + b"e") + b".")
    add("numpy.dtype((void, 10**12))", P2 + _call(_g("numpy", "dtype"), _tuple(_u("V"), _int(10 ** 12))) + b".")
    add("numpy.dtype subarray 2**31 x 2**31",
        P2 + _call(_g("numpy", "dtype"), _tuple(_u("i1"), _tuple(_int(2 ** 31), _int(2 ** 31)))) + b".")
    add("numpy.dtype('i1', True, True, 1)", P2 + _call(_g("numpy", "dtype"), _u("i1"), b"\x88\x88K\x01") + b".")
    for desc, state in [
        ("hasobject flags", _tuple(_int(3), _u("|"), b"N", b"N", b"N", _int(8), _int(1), _int(0x3F))),
        ("elsize -1", _tuple(_int(3), _u("|"), b"N", b"N", b"N", _int(-1), _int(1), _int(0))),
        ("elsize 2**40", _tuple(_int(3), _u("|"), b"N", b"N", b"N", _int(2 ** 40), _int(1), _int(0))),
        ("bogus names/fields", _tuple(_int(3), _u("|"), b"N", b"(" + _u("a") + b"t", b"}", _int(8), _int(1), _int(0))),
        ("subarray self", _tuple(_int(3), _u("|"), _tuple(_call(_g("numpy", "dtype"), _u("i1")), _tuple(_int(-5))),
                                 b"N", b"N", _int(8), _int(1), _int(0))),
        ("version 99", _tuple(_int(99), _u("<"))),
        ("short state", _tuple(_int(3))),
    ]:
        add(f"dtype __setstate__ abuse: {desc}",
            P2 + _call(_g("numpy", "dtype"), _u("V8")) + state + b"b.")
    rec = _g("numpy.core.multiarray", "_reconstruct")
    arr = _call(rec, nd, _tuple(_int(0)), _bytes(b"b"))
    for desc, st in [
        ("raw data shorter than shape", _tuple(_int(1), _tuple(_int(1000)), _call(_g("numpy", "dtype"), _u("i4")), b"\x89", _bytes(b"abc"))),
        ("shape 2**62", _tuple(_int(1), _tuple(_int(2 ** 62)), _call(_g("numpy", "dtype"), _u("i1")), b"\x89", _bytes(b""))),
        ("negative shape", _tuple(_int(1), _tuple(_int(-4)), _call(_g("numpy", "dtype"), _u("i1")), b"\x89", _bytes(b"abcd"))),
        ("object dtype + list", _tuple(_int(1), _tuple(_int(1)), _call(_g("numpy", "dtype"), _u("O")), b"\x89", b"]")),
        ("V8 dtype flagged hasobject + bytes",
         _tuple(_int(1), _tuple(_int(1)),
                _call(_g("numpy", "dtype"), _u("V8")) + _tuple(_int(3), _u("|"), b"N", b"N", b"N", _int(8), _int(1), _int(0x3F)) + b"b",
                b"\x89", _bytes(b"\x41" * 8))),
        ("state is a dict", b"}"),
        ("state is None", b"N"),
        ("fortran flag + mismatched data", _tuple(_int(1), _tuple(_int(2), _int(3)), _call(_g("numpy", "dtype"), _u("i1")), b"\x88", _bytes(b"ab"))),
        ("rawdata as list of ints", _tuple(_int(1), _tuple(_int(2)), _call(_g("numpy", "dtype"), _u("i1")), b"\x89", b"](K\x01K\x02e")),
    ]:
        add(f"ndarray __setstate__: {desc}", P2 + arr + st + b"b.")
    add("_reconstruct of a non-ndarray subtype", P2 + _call(rec, _g("numpy", "dtype"), _tuple(_int(0)), _bytes(b"b")) + b".")
    add("_reconstruct with huge shape", P2 + _call(rec, nd, _tuple(_int(2 ** 62)), _bytes(b"b")) + b".")
    add("NEWOBJ ndarray huge", P2 + nd + _tuple(_tuple(_int(2 ** 45)), _u("i1")) + b"\x81.")
    add("INST numpy.ndarray no args", P2 + b"(inumpy\nndarray\n.")
    # ---- deep nesting (200,000 levels)
    depth = 200_000
    add("200000-deep MARK stack", P2 + b"(" * depth + b"N" + b"t" * 1 + b".")
    add("200000-deep nested lists (EMPTY_LIST/APPEND)", P2 + _deep_list_ops(depth) + b".")
    add("200000-deep TUPLE1 chain", P2 + b"N" + b"\x85" * depth + b".")
    add("200000-deep nested dicts", P2 + _deep_dict_ops(depth) + b".")
    add("200000-deep list as the zoo dict's first_conv", P2 + _in_zoo_dict(_deep_list_ops(depth)) + b".")
    add("200000-deep TUPLE1 as kernel_size", P2 + _zoo_with_raw("kernel_size", b"K\x03" + b"\x85" * depth) + b".")
    add("200000-deep list as x_scale", P2 + _zoo_with_raw("x_scale", _deep_list_ops(depth)) + b".")
    add("10**5000 as in_channel", P2 + _zoo_with_raw("in_channel", _int(10 ** 5000)) + b".")
    add("self-referencing list as kernel_size", P2 + _zoo_with_raw("kernel_size", b"]q\x07h\x07a") + b".")
    # ---- lying lengths, memo, persistent ids, buffers, framing
    add("BINBYTES claims 4 GiB", P3 + b"B\xff\xff\xff\xff" + b"abc" + b".")
    add("BINBYTES8 claims 2**62", P4 + b"\x8e" + struct.pack("<Q", 2 ** 62) + b"abc" + b".")
    add("BINUNICODE8 claims 2**40", P4 + b"\x8d" + struct.pack("<Q", 2 ** 40) + b"abc" + b".")
    add("BYTEARRAY8 claims 2**40", P5 + b"\x96" + struct.pack("<Q", 2 ** 40) + b"abc" + b".")
    add("FRAME claims 2**60", P4 + b"\x95" + struct.pack("<Q", 2 ** 60) + b"N.")
    add("LONG4 claims 2**31 bytes", P2 + b"\x8b" + struct.pack("<i", 2 ** 31 - 1) + b"\x01.")
    add("LONG4 negative length", P2 + b"\x8b" + struct.pack("<i", -5) + b"\x01.")
    add("BINSTRING negative length", P2 + b"T" + struct.pack("<i", -1) + b".")
    add("LONG_BINGET of a missing memo index", P2 + b"j" + struct.pack("<I", 0xFFFFFFFF) + b".")
    add("BINGET of a missing memo index", P2 + b"h\x05.")
    add("LONG_BINPUT at 2**32-1 then get", P2 + b"Nr\xff\xff\xff\xffj\xff\xff\xff\xff.")
    add("MEMOIZE on empty stack", P4 + b"\x94.")
    add("persistent id (PERSID)", P2 + b"Pstorage0\n.")
    add("persistent id (BINPERSID) in a zoo dict", P2 + _in_zoo_dict(_u("x") + b"Q") + b".")
    add("NEXT_BUFFER without buffers", P5 + b"\x97.")
    add("READONLY_BUFFER on bytes as weight", P5 + _zoo_with_raw("weight", _bytes(b"\x00" * 16) + b"\x98") + b".")
    add("READONLY_BUFFER on empty stack", P5 + b"\x98.")
    add("EXT1 unregistered code", P2 + b"\x82\x01.")
    add("EXT4 huge code", P2 + b"\x84\xff\xff\xff\x7f.")
    add("unhashable dict key", P2 + b"}]K\x01s.")
    add("SETITEMS with odd MARK", P2 + b"}(K\x01u.")
    add("APPENDS on a non-list", P2 + b"K\x01(K\x02e.")
    add("POP_MARK without MARK", P2 + b"1.")
    add("STOP only", b".")
    add("empty file", b"")
    add("unknown opcode 0xff", P2 + b"\xff.")
    add("protocol 99", b"\x80\x63N.")
    add("no STOP", P2 + b"N")
    add("legacy torch magic number", P2 + b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b".")
    add("legacy torch magic then os.system (a second pickle: a legacy torch.load would run it)",
        P2 + b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"." + P2
        + _call(_g("os", "system"), _u(TOUCH)) + b".")
    add("FLOAT nan as a scale", P2 + _zoo_with_raw("x_scale", b"Fnan\n") + b".")
    add("INT line with 5000 digits", P2 + b"I" + b"9" * 5000 + b"\n.")
    add("LONG line with 100000 digits", P2 + b"L" + b"9" * 100000 + b"L\n.")
    add("STRING with bad escape", b"S'\\x'\n.")
    add("UNICODE invalid utf-8", P2 + b"X\x02\x00\x00\x00\xff\xfe.")
    add("GLOBAL with newline-free module", P2 + b"cnumpy.")
    add("GLOBAL non-ascii", P2 + b"c\xff\xfe\n\xfd\n.")
    return cases


def _deep_dict_ops(depth: int) -> bytes:
    # {k: {k: {...}}}: push depth dicts and keys, then SETITEM inner-to-outer
    return (b"}" + _u("k")) * (depth - 1) + b"}" + b"s" * (depth - 1)


def _zoo_with_raw(key: str, raw: bytes) -> bytes:
    """The synthetic zoo dict pickled with the first `key` value replaced by raw opcodes."""
    d = synthetic_zoo()
    target = None
    for path, _ in _leaves(d):
        if path[-1] == key:
            target = path
            break
    assert target is not None, key
    obj = d
    for p in target[:-1]:
        obj = obj[p]
    obj[target[-1]] = _DEEP_MARK
    data = pickle.dumps(d, protocol=2)
    mark = _DEEP_MARK.encode()
    return data[2:-1].replace(b"X" + struct.pack("<I", len(mark)) + mark, raw)


def hostile_pickles() -> list[tuple[str, bytes, bool]]:
    if "hostile" not in _CACHE:
        _CACHE["hostile"] = _hostile_cases()
    return _CACHE["hostile"]


def gen_pickle_hostile(seed: int, index: int) -> Case:
    cases = hostile_pickles()
    r = _rng("pickle_hostile", seed, index)
    desc, data, _code = cases[index % len(cases)]
    lap = index // len(cases)
    wrap = "zip" if lap % 2 == 1 else "plain"
    if lap >= 2:  # later laps: byte-mutate the hostile pickle too
        data, ops = mutate_bytes(data, r)
        desc += f" + mutated ({ops})"
    blob = torch_zip(data) if wrap == "zip" else data
    mode = "cli" if r.random() < 0.03 else "load"
    return Case("pickle_hostile", seed, index, f"{desc} [{wrap}]", {"model.pkl": blob}, "model.pkl", mode,
                expect_error=True)


# --------------------------------------------------------------------------------------
# onnx
# --------------------------------------------------------------------------------------

def onnx_model(*, in_shape=(1, 2, 8, 8), c1=4, classes=3):
    """A small valid ONNX CNN: Conv-Relu-Conv-Add-Relu-GlobalAveragePool-Flatten-Gemm."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    cin = in_shape[1]
    inits = [
        numpy_helper.from_array((rng.standard_normal((c1, cin, 3, 3)) * 0.3).astype(np.float32), "w1"),
        numpy_helper.from_array(np.zeros(c1, np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((c1, c1, 3, 3)) * 0.3).astype(np.float32), "w2"),
        numpy_helper.from_array((rng.standard_normal(c1) * 0.1).astype(np.float32), "b2"),
        numpy_helper.from_array((rng.standard_normal((classes, c1)) * 0.3).astype(np.float32), "w3"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "b3"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Add", ["c2", "r1"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "fuzznet",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _onnx_mutations():
    """(description, function(model, r) mutating the ModelProto in place)."""
    from onnx import TensorProto, helper, numpy_helper

    def init(m, name):
        return next(t for t in m.graph.initializer if t.name == name)

    def node(m, name):
        return next(n for n in m.graph.node if n.name == name)

    def set_attr(n, name, value):
        for a in list(n.attribute):
            if a.name == name:
                n.attribute.remove(a)
        n.attribute.append(helper.make_attribute(name, value))

    def set_init(m, name, arr):
        t = init(m, name)
        new = numpy_helper.from_array(arr, name)
        t.CopyFrom(new)

    def input_dims(dims):
        def f(m, r):
            shape = m.graph.input[0].type.tensor_type.shape
            del shape.dim[:]
            for d in dims:
                dim = shape.dim.add()
                if isinstance(d, str):
                    dim.dim_param = d
                else:
                    dim.dim_value = d
        return f

    def replace_flatten_reshape(shape):
        def f(m, r):
            n = node(m, "flatten")
            n.op_type = "Reshape"
            del n.attribute[:]
            m.graph.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), "rshape"))
            n.input.append("rshape")
        return f

    def const_of_shape(shape, dtype=TensorProto.FLOAT):
        def f(m, r):
            m.graph.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), "cshape"))
            m.graph.node.insert(0, helper.make_node("ConstantOfShape", ["cshape"], ["big"], name="cos",
                                                    value=helper.make_tensor("v", dtype, [1], [1])))
            m.graph.node.append(helper.make_node("Add", ["a", "big"], ["a_big"], name="addbig"))
            node(m, "relu2").input[0] = "a_big"
            _toposort(m)
        return f

    def raw_len(delta):
        def f(m, r):
            t = init(m, "w1")
            arr = numpy_helper.to_array(t)
            t.ClearField("float_data")
            raw = arr.tobytes()
            t.raw_data = raw[:len(raw) + delta] if delta < 0 else raw + b"\0" * delta
        return f

    def weight_value(v):
        def f(m, r):
            arr = numpy_helper.to_array(init(m, "w2")).copy()
            arr.flat[r.randrange(arr.size)] = v
            set_init(m, "w2", arr)
        return f

    def unknown_op(op, domain=""):
        def f(m, r):
            n = node(m, "relu1")
            n.op_type = op
            if domain:
                n.domain = domain
                m.opset_import.append(helper.make_opsetid(domain, 1))
        return f

    def attr(nname, aname, value):
        return lambda m, r: set_attr(node(m, nname), aname, value)

    def external(location, length=None):
        def f(m, r):
            t = init(m, "w1")
            t.ClearField("raw_data")
            t.ClearField("float_data")
            t.data_location = TensorProto.EXTERNAL
            del t.external_data[:]
            e = t.external_data.add()
            e.key, e.value = "location", location
            if length is not None:
                e2 = t.external_data.add()
                e2.key, e2.value = "length", str(length)
        return f

    def pad_node(pads):
        def f(m, r):
            m.graph.initializer.append(numpy_helper.from_array(np.array(pads, np.int64), "pads"))
            m.graph.node.insert(0, helper.make_node("Pad", ["x", "pads"], ["xp"], name="pad"))
            node(m, "conv1").input[0] = "xp"
        return f

    def drop(what):
        def f(m, r):
            if what == "output":
                del m.graph.output[:]
            elif what == "input":
                del m.graph.input[:]
            elif what == "opset":
                del m.opset_import[:]
            elif what == "init_w3":
                m.graph.initializer.remove(init(m, "w3"))
            elif what == "nodes":
                del m.graph.node[:]
        return f

    def opset(v):
        def f(m, r):
            m.opset_import[0].version = v
        return f

    def elem_type(t):
        def f(m, r):
            m.graph.input[0].type.tensor_type.elem_type = t
        return f

    def relu_chain(n):
        def f(m, r):
            nodes = list(m.graph.node)
            del m.graph.node[:]
            prev = "r2"
            for nd in nodes:
                m.graph.node.append(nd)
                if nd.name == "relu2":
                    for i in range(n):
                        m.graph.node.append(helper.make_node("Relu", [prev], [f"rr{i}"], name=f"rr{i}"))
                        prev = f"rr{i}"
            node(m, "gap").input[0] = prev
        return f

    def cycle(m, r):
        node(m, "conv1").input[0] = "r2"

    def dup_output(m, r):
        node(m, "relu1").output[0] = "c2"

    def batchnorm(var, eps):
        def f(m, r):
            c = 4
            for name, arr in (("g", np.ones(c, np.float32)), ("be", np.zeros(c, np.float32)),
                              ("mu", np.zeros(c, np.float32)), ("var", np.full(c, var, np.float32))):
                m.graph.initializer.append(numpy_helper.from_array(arr, name))
            m.graph.node.insert(1, helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["bn"],
                                                    name="bn", epsilon=eps))
            node(m, "relu1").input[0] = "bn"
        return f

    def clip(lo, hi):
        def f(m, r):
            n = node(m, "relu1")
            n.op_type = "Clip"
            m.graph.initializer.append(numpy_helper.from_array(np.array(lo, np.float32), "lo"))
            m.graph.initializer.append(numpy_helper.from_array(np.array(hi, np.float32), "hi"))
            n.input.extend(["lo", "hi"])
        return f

    def clip_empty_min(m, r):
        n = node(m, "relu1")
        n.op_type = "Clip"
        m.graph.initializer.append(numpy_helper.from_array(np.array(6, np.float32), "hi"))
        n.input.extend(["", "hi"])

    def relu_chain_identity(m, r):
        m.graph.node.append(helper.make_node("Identity", ["r2"], ["id1"], name="id1"))
        m.graph.node.append(helper.make_node("Identity", ["id1"], ["id2"], name="id2"))
        node(m, "gap").input[0] = "id2"
        _toposort(m)

    def string_init(m, r):
        t = init(m, "b3")
        t.data_type = TensorProto.STRING
        t.ClearField("raw_data")
        t.ClearField("float_data")
        t.string_data.extend([b"a", b"b", b"c"])

    def complex_init(m, r):
        set_init(m, "w3", np.ones((3, 4), np.complex64))

    def float64_init(m, r):
        set_init(m, "w3", np.ones((3, 4), np.float64))

    def dims_lie(m, r):
        t = init(m, "w1")
        t.dims[0] = 2 ** 31

    def neg_dims(m, r):
        t = init(m, "w3")
        t.dims[0] = -3

    def if_subgraph(m, r):
        then = helper.make_graph([helper.make_node("Identity", ["r1"], ["t"])], "then", [],
                                 [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
        m.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
        m.graph.node.insert(2, helper.make_node("If", ["cond"], ["r1b"], name="if", then_branch=then, else_branch=then))
        node(m, "conv2").input[0] = "r1b"

    def reshape_gather_oob(m, r):
        replace_flatten_reshape([1, -1])(m, r)
        m.graph.initializer.remove(init(m, "rshape"))
        m.graph.initializer.append(numpy_helper.from_array(np.array([7], np.int64), "gi"))
        idx = [i for i, n in enumerate(m.graph.node) if n.name == "flatten"][0]
        m.graph.node.insert(idx, helper.make_node("Shape", ["p"], ["shp"], name="shape"))
        m.graph.node.insert(idx + 1, helper.make_node("Gather", ["shp", "gi"], ["rshape"], name="gather", axis=0))

    return [
        ("input 3-D", input_dims([1, 2, 8])), ("input batch 2", input_dims([2, 2, 8, 8])),
        ("input zero dim", input_dims([1, 2, 0, 8])), ("input symbolic batch", input_dims(["N", 2, 8, 8])),
        ("input 2**31 high", input_dims([1, 2, 2 ** 31, 8])), ("input 5-D", input_dims([1, 2, 8, 8, 1])),
        ("input channel mismatch", input_dims([1, 3, 8, 8])), ("input 1x1", input_dims([1, 2, 1, 1])),
        ("input 0-D", input_dims([])),
        ("w1 channel mismatch", lambda m, r: set_init(m, "w1", np.ones((4, 3, 3, 3), np.float32))),
        ("w3 shape mismatch", lambda m, r: set_init(m, "w3", np.ones((3, 5), np.float32))),
        ("b1 wrong length", lambda m, r: set_init(m, "b1", np.ones(7, np.float32))),
        ("w1 zero out-channels", lambda m, r: set_init(m, "w1", np.ones((0, 2, 3, 3), np.float32))),
        ("w2 scalar", lambda m, r: set_init(m, "w2", np.array(1.0, np.float32))),
        ("Reshape with two -1", replace_flatten_reshape([-1, -1])),
        ("Reshape to [1, 0]", replace_flatten_reshape([1, 0])),
        ("Reshape to 2**40", replace_flatten_reshape([1, 2 ** 40])),
        ("Reshape to [-5, 4]", replace_flatten_reshape([-5, 4])),
        ("Reshape via Gather index out of range", reshape_gather_oob),
        ("Flatten axis 5", attr("flatten", "axis", 5)), ("Flatten axis -7", attr("flatten", "axis", -7)),
        ("Conv pads 2**31", attr("conv1", "pads", [2 ** 31 - 1] * 4)),
        ("Conv pads negative", attr("conv1", "pads", [-4, -4, -4, -4])),
        ("Conv pads wrong count", attr("conv1", "pads", [1, 1])),
        ("Conv strides 0", attr("conv1", "strides", [0, 0])),
        ("Conv strides 2**31", attr("conv1", "strides", [2 ** 31 - 1, 1])),
        ("Conv dilations 0", attr("conv1", "dilations", [0, 0])),
        ("Conv dilations 1000", attr("conv1", "dilations", [1000, 1000])),
        ("Conv group 3", attr("conv1", "group", 3)), ("Conv group 0", attr("conv1", "group", 0)),
        ("Conv kernel_shape mismatch", attr("conv1", "kernel_shape", [5, 5])),
        ("Conv auto_pad SAME_UPPER", attr("conv1", "auto_pad", "SAME_UPPER")),
        ("Conv auto_pad garbage", attr("conv1", "auto_pad", "SIDEWAYS")),
        ("Gemm transB 0", attr("fc", "transB", 0)), ("Gemm alpha nan", attr("fc", "alpha", float("nan"))),
        ("Gemm transA 1", attr("fc", "transA", 1)),
        ("raw_data 1 byte short", raw_len(-1)), ("raw_data 4 bytes short", raw_len(-4)),
        ("raw_data 3 bytes long", raw_len(3)), ("raw_data empty", raw_len(-10 ** 6)),
        ("dims claim 2**31", dims_lie), ("dims negative", neg_dims),
        ("ConstantOfShape 16 GiB", const_of_shape([2 ** 32, 1])),
        ("ConstantOfShape 2**62", const_of_shape([2 ** 31, 2 ** 31])),
        ("ConstantOfShape negative", const_of_shape([-1, 4])),
        ("NaN weight", weight_value(np.nan)), ("Inf weight", weight_value(np.inf)),
        ("1e38 weight", weight_value(1e38)),
        ("complex64 initializer", complex_init), ("float64 initializer", float64_init),
        ("string initializer", string_init),
        ("unknown op", unknown_op("FrobnicateNd")), ("custom domain op", unknown_op("Relu", "com.evil")),
        ("Tanh (unsupported)", unknown_op("Tanh")), ("Loop op without body", unknown_op("Loop")),
        ("If sub-graph", if_subgraph),
        ("external data /etc/hostname", external("/etc/hostname")),
        ("external data ../../../../etc/passwd", external("../../../../etc/passwd")),
        ("external data /dev/zero length 2**40", external("/dev/zero", 2 ** 40)),
        ("external data missing file", external("nonexistent.bin")),
        ("no outputs", drop("output")), ("no inputs", drop("input")), ("no opset", drop("opset")),
        ("missing initializer", drop("init_w3")), ("no nodes", drop("nodes")),
        ("opset 1", opset(1)), ("opset 7", opset(7)), ("opset 99", opset(99)),
        ("input int8", elem_type(TensorProto.INT8)), ("input string", elem_type(TensorProto.STRING)),
        ("input undefined type", elem_type(0)),
        ("2000 Relu chain", relu_chain(2000)),
        ("node cycle", cycle), ("duplicate output name", dup_output),
        ("BatchNorm negative variance", batchnorm(-1.0, 1e-5)), ("BatchNorm eps nan", batchnorm(1.0, float("nan"))),
        ("Clip min > max", clip(6.0, 0.0)), ("Clip nan bounds", clip(np.nan, np.nan)),
        ("Pad 2**31", pad_node([0, 0, 2 ** 31 - 1, 0, 0, 0, 0, 0])),
        ("Pad negative", pad_node([0, 0, -20, 0, 0, 0, 0, 0])),
        ("Pad wrong length", pad_node([1, 1])),
        ("MaxPool kernel 2**31", lambda m, r: _insert_pool(m, "MaxPool", [2 ** 31 - 1, 2 ** 31 - 1])),
        ("AveragePool kernel 0", lambda m, r: _insert_pool(m, "AveragePool", [0, 0])),
        ("MaxPool kernel 9 on 8x8", lambda m, r: _insert_pool(m, "MaxPool", [9, 9])),
        # valid-looking variants: they should load, or be refused by name
        ("Conv stride 2", attr("conv1", "strides", [2, 2])), ("Conv dilations 2", attr("conv2", "dilations", [2, 2])),
        ("Conv asymmetric pads", attr("conv1", "pads", [0, 1, 2, 1])), ("Conv no bias", _drop_input("conv2", 2)),
        ("Conv group 2", lambda m, r: (set_attr(node(m, "conv2"), "group", 2),
                                        set_init(m, "w2", np.ones((4, 2, 3, 3), np.float32)))),
        ("Conv depthwise", lambda m, r: (set_attr(node(m, "conv2"), "group", 4),
                                          set_init(m, "w2", np.ones((4, 1, 3, 3), np.float32)))),
        ("Conv no kernel_shape attr", lambda m, r: _del_attr(node(m, "conv1"), "kernel_shape")),
        ("Conv auto_pad VALID", lambda m, r: (_del_attr(node(m, "conv1"), "pads"), set_attr(node(m, "conv1"), "auto_pad", "VALID"))),
        ("Gemm alpha 2 beta 0.5", lambda m, r: (set_attr(node(m, "fc"), "alpha", 2.0), set_attr(node(m, "fc"), "beta", 0.5))),
        ("Gemm without bias", _drop_input("fc", 2)),
        ("Gemm as MatMul+Add", _gemm_to_matmul),
        ("Flatten axis 0", attr("flatten", "axis", 0)), ("Flatten axis -1", attr("flatten", "axis", -1)),
        ("Flatten axis 2", attr("flatten", "axis", 2)),
        ("Reshape [1, -1]", replace_flatten_reshape([1, -1])), ("Reshape [0, -1]", replace_flatten_reshape([0, -1])),
        ("Reshape [1, 4]", replace_flatten_reshape([1, 4])), ("Reshape [4, 1]", replace_flatten_reshape([4, 1])),
        ("GAP as ReduceMean keepdims 0", _gap_reducemean(0)), ("GAP as ReduceMean axes [1]", _gap_reducemean(1, [1])),
        ("AveragePool 2 ceil_mode", lambda m, r: _insert_pool(m, "AveragePool", [2, 2], ceil_mode=1)),
        ("AveragePool count_include_pad", lambda m, r: _insert_pool(m, "AveragePool", [3, 3], pads=[1, 1, 1, 1], count_include_pad=1)),
        ("MaxPool dilations 2", lambda m, r: _insert_pool(m, "MaxPool", [2, 2], dilations=[2, 2])),
        ("MaxPool with indices output", lambda m, r: _insert_pool(m, "MaxPool", [2, 2], outputs=2)),
        ("Clip min only", lambda m, r: (setattr(node(m, "relu1"), "op_type", "Clip"),
                                        m.graph.initializer.append(numpy_helper.from_array(np.array(0, np.float32), "lo")),
                                        node(m, "relu1").input.append("lo"))),
        ("Clip max only (empty min)", clip_empty_min),
        ("Pad reflect", lambda m, r: (pad_node([0, 0, 1, 1, 0, 0, 1, 1])(m, r), set_attr(node(m, "pad"), "mode", "reflect"))),
        ("Pad edge with value", lambda m, r: (pad_node([0, 0, 1, 1, 0, 0, 1, 1])(m, r), set_attr(node(m, "pad"), "mode", "edge"))),
        ("Dropout ratio input", _dropout),
        ("BatchNorm training_mode 1", lambda m, r: (batchnorm(1.0, 1e-5)(m, r), set_attr(node(m, "bn"), "training_mode", 1))),
        ("BatchNorm ok", batchnorm(1.0, 1e-5)),
        ("Add broadcast [C,1,1] constant", _add_const((4, 1, 1))), ("Add broadcast scalar", _add_const(())),
        ("Add broadcast wrong shape", _add_const((3, 1, 1))),
        ("Mul op", unknown_op("Mul")), ("Sub op", unknown_op("Sub")),
        ("two graph outputs", _two_outputs), ("unused initializer", _unused_init),
        ("initializer also a graph input", _init_as_input),
        ("value_info lies", _value_info_lie),
        ("Identity chain", relu_chain_identity),
        ("ir_version 3", lambda m, r: setattr(m, "ir_version", 3)),
        ("ir_version 99", lambda m, r: setattr(m, "ir_version", 99)),
        ("opset 11", opset(11)), ("opset 18", opset(18)), ("opset 21", opset(21)),
        ("Constant node weight", _const_weight),
        ("float16 model", _float16_model),
    ]


def _insert_pool(m, op, kernel, outputs=1, **attrs):
    from onnx import helper
    idx = [i for i, n in enumerate(m.graph.node) if n.name == "relu2"][0]
    outs = ["pooled"] + (["pool_idx"] if outputs == 2 else [])
    m.graph.node.insert(idx + 1, helper.make_node(op, ["r2"], outs, name="pool", kernel_shape=kernel, **attrs))
    next(n for n in m.graph.node if n.name == "gap").input[0] = "pooled"


def _node(m, name):
    return next(n for n in m.graph.node if n.name == name)


def _del_attr(n, name):
    for a in list(n.attribute):
        if a.name == name:
            n.attribute.remove(a)


def _drop_input(nname, i):
    def f(m, r):
        n = _node(m, nname)
        del n.input[i]
    return f


def _toposort(m):
    """Order nodes so every input is produced before use (mutations append nodes)."""
    produced = {i.name for i in m.graph.input} | {t.name for t in m.graph.initializer} | {""}
    nodes, out = list(m.graph.node), []
    while nodes:
        for n in nodes:
            if all(i in produced for i in n.input):
                out.append(n)
                produced.update(n.output)
                nodes.remove(n)
                break
        else:
            out += nodes
            break
    del m.graph.node[:]
    m.graph.node.extend(out)


def _gemm_to_matmul(m, r):
    from onnx import helper, numpy_helper
    n = _node(m, "fc")
    w3 = next(t for t in m.graph.initializer if t.name == "w3")
    arr = numpy_helper.to_array(w3).T.copy()
    w3.CopyFrom(numpy_helper.from_array(arr, "w3"))
    n.op_type = "MatMul"
    del n.attribute[:]
    del n.input[2]
    n.output[0] = "mm"
    m.graph.node.append(helper.make_node("Add", ["mm", "b3"], ["y"], name="fc_add"))


def _gap_reducemean(keepdims, axes=(2, 3)):
    def f(m, r):
        n = _node(m, "gap")
        n.op_type = "ReduceMean"
        n.attribute.extend([__import__("onnx").helper.make_attribute("axes", list(axes)),
                            __import__("onnx").helper.make_attribute("keepdims", keepdims)])
    return f


def _dropout(m, r):
    from onnx import helper, numpy_helper
    m.graph.initializer.append(numpy_helper.from_array(np.array(0.5, np.float32), "ratio"))
    _node(m, "flatten").input[0] = "pd"
    m.graph.node.append(helper.make_node("Dropout", ["p", "ratio"], ["pd"], name="drop"))
    _toposort(m)


def _add_const(shape):
    def f(m, r):
        from onnx import helper, numpy_helper
        m.graph.initializer.append(numpy_helper.from_array(np.ones(shape, np.float32), "k"))
        _node(m, "relu2").input[0] = "ak"
        m.graph.node.append(helper.make_node("Add", ["a", "k"], ["ak"], name="addk"))
        _toposort(m)
    return f


def _two_outputs(m, r):
    from onnx import TensorProto, helper
    m.graph.output.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 4, 1, 1]))


def _unused_init(m, r):
    from onnx import numpy_helper
    m.graph.initializer.append(numpy_helper.from_array(np.ones((1000, 1000), np.float32), "unused"))


def _init_as_input(m, r):
    from onnx import TensorProto, helper
    m.graph.input.append(helper.make_tensor_value_info("w3", TensorProto.FLOAT, [3, 4]))


def _value_info_lie(m, r):
    from onnx import TensorProto, helper
    m.graph.value_info.append(helper.make_tensor_value_info("r1", TensorProto.FLOAT, [1, 99, 2, 2]))


def _const_weight(m, r):
    from onnx import helper
    w = next(t for t in m.graph.initializer if t.name == "w2")
    m.graph.initializer.remove(w)
    m.graph.node.insert(0, helper.make_node("Constant", [], ["w2"], name="w2c", value=w))


def _float16_model(m, r):
    from onnx import TensorProto, numpy_helper
    for t in list(m.graph.initializer):
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    m.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT16


def _onnx_base_bytes() -> bytes:
    if "onnx" not in _CACHE:
        _CACHE["onnx"] = onnx_model().SerializeToString()
    return _CACHE["onnx"]


def gen_onnx(seed: int, index: int) -> Case:
    import onnx

    r = _rng("onnx", seed, index)
    muts = _onnx_mutations()
    if index == 0:
        blob, desc, expect = _onnx_base_bytes(), "unmutated (control)", False
    elif index % 3 == 0:
        blob, ops = mutate_bytes(_onnx_base_bytes(), r)
        desc, expect = f"bytes mutated ({ops})", False
    else:  # index 3k+1: the k-th structural mutation; 3k+2: a random one or two
        m = onnx.ModelProto()
        m.ParseFromString(_onnx_base_bytes())
        picks = [muts[(index // 3) % len(muts)] if index % 3 == 1 else r.choice(muts)]
        if index % 3 == 2 and r.random() < 0.3:
            picks.append(r.choice(muts))
        names = []
        for name, f in picks:
            try:
                f(m, r)
                names.append(name)
            except (StopIteration, ValueError, IndexError, TypeError, AttributeError, KeyError) as err:
                names.append(f"{name} (not applicable: {type(err).__name__})")
        blob = m.SerializeToString()
        desc, expect = "; ".join(names), False
    mode = _pick_mode(r, cli_p=0.03)
    return Case("onnx", seed, index, desc, {"model.onnx": blob}, "model.onnx", mode, expect_error=expect)


# --------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------

# The small torch net's layers and parameters (conftest.SmallNet after BN folding), for
# `SparseUpdateConfig.resolve` without importing a model in every child.
SMALL_PARAMS = ["conv0.0.weight", "conv0.0.bias", "dw.weight", "dw.bias", "conv2.weight", "conv2.bias",
                "head.weight", "head.bias"]


def small_layers():
    from tvm_tinytrain.layers import Layer
    return [Layer("conv2d", "conv0.0.weight", "conv0.0.bias"), Layer("conv2d", "dw.weight", "dw.bias", 6, 0),
            Layer("conv2d", "conv2.weight", "conv2.bias"), Layer("linear", "head.weight", "head.bias")]


CONFIG_KEYS = ("params", "n_bias_update", "manual_weight_idx", "weight_update_ratio", "train_classifier")


def _valid_config(r: random.Random) -> dict:
    d = {}
    if r.random() < 0.5:
        d["params"] = r.sample(SMALL_PARAMS, r.randrange(0, 3))
    if r.random() < 0.7:
        d["n_bias_update"] = r.randrange(0, 4)
    if r.random() < 0.6:
        idx = r.sample(range(3), r.randrange(1, 3))
        d["manual_weight_idx"] = idx
        if r.random() < 0.7:
            d["weight_update_ratio"] = [r.choice((0.25, 0.5, 1.0, 1)) for _ in idx]
    if r.random() < 0.2:
        d["train_classifier"] = r.random() < 0.5
    return d


_CONFIG_WEIRD = [
    ('"23"', '"23"'), ('"no thanks"', '"no thanks"'), ("true", "true"), ("[2.7]", "[2.7]"), ("null", "null"),
    ("-1", "-1"), ("2.5", "2.5"), ("1e309", "1e309"), (".nan", ".nan"), ("-.inf", "-.inf"), ("{}", "{}"),
    ("[]", "[]"), ("[[1]]", "[[1]]"), ('["a", 1]', '["a", 1]'), ("2**63", str(2 ** 63)),
    ("5000-digit int", "9" * 5000), ("-5000-digit int", "-" + "9" * 5000), ("0x10", "0x10"), ("0o17", "0o17"),
    ("1_000", "1_000"), ("yes", "yes"), ("~", "~"), ("!!binary", "!!binary aGVsbG8="),
    ("!!python/object/apply:os.system", f"!!python/object/apply:os.system [{TOUCH!r}]"),
    ("!!python/name:os.system", "!!python/name:os.system ''"),
    ("!!set", "!!set {a, b}"), ("!!timestamp", "2001-12-14t21:59:43.10-05:00"), ("date", "2002-12-14"),
    ("!!float 1", "!!float 1"), ("!!int string", '!!int "abc"'), ("[1e-320]", "[1e-320]"),
    ("[0, 0]", "[0, 0]"), ("[1, 2, 3, 4, 5]", "[1, 2, 3, 4, 5]"), ("[-1]", "[-1]"), ("[99]", "[99]"),
    ("[2**40]", f"[{2 ** 40}]"), ("[true]", "[true]"), ("[.nan]", "[.nan]"), ("[0]", "[0]"), ("[1.5]", "[1.5]"),
    ("a long string", '"' + "x" * 100_000 + '"'), ("list of 10^5 ints", "[" + ", ".join(["0"] * 100_000) + "]"),
]


def _config_specials() -> list[tuple[str, bytes]]:
    laugh = ["a0: &a0 [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]"]
    for i in range(1, 10):
        laugh.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    bomb = "\n".join(laugh)
    return [
        ("billion laughs as params", (bomb + "\nparams: *a9\n").encode()),
        ("billion laughs as n_bias_update", (bomb + "\nn_bias_update: *a9\n").encode()),
        ("billion laughs as manual_weight_idx", (bomb + "\nmanual_weight_idx: *a9\n").encode()),
        ("billion laughs as weight_update_ratio", (bomb + "\nmanual_weight_idx: [1]\nweight_update_ratio: *a9\n").encode()),
        ("billion laughs unused key", (bomb + "\n").encode()),
        ("self-referencing alias", b"n_bias_update: &a [*a]\n"),
        ("recursive params", b"params: &a [*a, 1]\n"),
        ("duplicate keys", b"n_bias_update: 1\nn_bias_update: 2\n"),
        ("duplicate keys JSON", b'{"n_bias_update": 1, "n_bias_update": "x"}'),
        ("merge key", b"base: &b {n_bias_update: 1}\n<<: *b\n"),
        ("merge key only", b"<<: {n_bias_update: 1, manual_weight_idx: [1]}\n"),
        ("non-UTF-8 bytes", b"n_bias_update: \xff\xfe\x80\n"),
        ("UTF-16 BOM", "n_bias_update: 1\n".encode("utf-16")),
        ("latin-1 key", b"n_bias_\xe9update: 1\n"),
        ("NUL byte", b"n_bias_update: 1\x00\n"),
        ("deep nesting [ x 100000", b"params: " + b"[" * 100_000 + b"]" * 100_000 + b"\n"),
        ("deep nesting { x 100000", b"params: " + b"{a: " * 100_000 + b"1" + b"}" * 100_000 + b"\n"),
        ("deep block nesting 5000", "".join("  " * i + "a:\n" for i in range(5000)).encode()),
        ("5000-digit int", b"n_bias_update: " + b"9" * 5000 + b"\n"),
        ("5000-digit float", b"weight_update_ratio: [0." + b"9" * 5000 + b"]\nmanual_weight_idx: [1]\n"),
        ("5000-digit index", b"manual_weight_idx: [" + b"9" * 5000 + b"]\n"),
        ("empty file", b""), ("only a comment", b"# nothing\n"), ("a list", b"- 1\n- 2\n"),
        ("a scalar", b"42\n"), ("a string", b"hello\n"), ("multi documents", b"n_bias_update: 1\n---\nn_bias_update: 2\n"),
        ("non-string keys", b"1: 2\n[1]: 3\n"), ("null key", b"~: 1\n"), ("bool key", b"true: 1\n"),
        ("tab indentation", b"params:\n\t- a\n"), ("unclosed quote", b'params: ["a\n'),
        ("python tag", f"!!python/object/apply:os.system [{TOUCH!r}]\n".encode()),
        ("python tag in a value", f"n_bias_update: !!python/object/apply:os.system [{TOUCH!r}]\n".encode()),
        ("python/object/new subprocess", f"!!python/object/new:subprocess.Popen [[touch, {SENTINEL}]]\n".encode()),
        ("directive", b"%YAML 1.1\n%TAG ! tag:evil,2000:\n---\nn_bias_update: 1\n"),
        ("huge anchor count", ("\n".join(f"k{i}: &a{i} {i}" for i in range(20000)) + "\n").encode()),
        ("long line", b"params: [" + b'"a", ' * 200_000 + b'"b"]\n'),
        ("JSON with NaN", b'{"weight_update_ratio": [NaN], "manual_weight_idx": [1]}'),
        ("JSON with Infinity", b'{"n_bias_update": Infinity}'),
    ]


def gen_config(seed: int, index: int) -> Case:
    r = _rng("config", seed, index)
    specials = _CACHE.get("config_specials")
    if specials is None:
        specials = _CACHE["config_specials"] = _config_specials()
    expect = False
    ext = r.choice((".yaml", ".json", ".yml"))
    if index == 0:
        data, desc = b"n_bias_update: 1\nmanual_weight_idx: [2]\nweight_update_ratio: [0.5]\n", "valid (control)"
    elif index % 4 == 1:
        desc, data = specials[(index // 4) % len(specials)]
    else:
        d = _valid_config(r)
        how = r.random()
        if how < 0.25:  # valid
            text = json.dumps(d) if ext == ".json" else "\n".join(f"{k}: {json.dumps(v)}" for k, v in d.items())
            desc = f"valid {d}"
            data = text.encode()
        elif how < 0.75:  # one or two keys with weird values
            lines = {k: json.dumps(v) for k, v in d.items()}
            descs = []
            for _ in range(r.choice((1, 1, 2))):
                key = r.choice(CONFIG_KEYS + ("unknown_key",))
                name, text = r.choice(_CONFIG_WEIRD)
                lines[key] = text
                descs.append(f"{key} = {name}")
                expect = True
            data = "\n".join(f"{k}: {v}" for k, v in lines.items()).encode()
            desc = "; ".join(descs)
        else:  # byte mutations of a valid config
            text = (json.dumps(d) if ext == ".json" else "\n".join(f"{k}: {json.dumps(v)}" for k, v in d.items()))
            data, ops = mutate_bytes(text.encode(), r)
            desc = f"bytes mutated ({ops}) of {d}"
    mode = _pick_mode(r, cli_p=0.03)
    return Case("config", seed, index, desc, {"config" + ext: data}, "config" + ext, mode, expect_error=expect)


# --------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------

def _npz_bytes(arrays: dict, compressed: bool = False) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def _npy_header_lie(shape, dtype="<f4", payload=b"\0" * 64, fortran=False) -> bytes:
    header = repr({"descr": dtype, "fortran_order": fortran, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


def _zip_members(members: dict[str, bytes], compress: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def valid_data(r: random.Random, n: int = 6) -> dict:
    g = np.random.default_rng(r.randrange(1 << 30))
    x = g.standard_normal((n, *INPUT_SHAPE[1:])).astype(np.float32)
    y = g.integers(0, NUM_CLASSES, n)
    return {"x_train": x, "y_train": y, "x_test": x[:2].copy(), "y_test": y[:2].copy()}


def _npz_mutations():
    def setk(key, fn):
        def f(d, r):
            d[key] = fn(d[key])
        return f

    def label(v):
        def f(d, r):
            y = d["y_train"].astype(np.float64 if isinstance(v, float) else np.int64)
            y[0] = v
            d["y_train"] = y
        return f

    return [
        ("missing x_test", lambda d, r: d.pop("x_test")),
        ("missing y_train", lambda d, r: d.pop("y_train")),
        ("extra key", lambda d, r: d.__setitem__("extra", np.zeros(3))),
        ("NaN label", label(float("nan"))), ("Inf label", label(float("inf"))), ("-Inf label", label(-float("inf"))),
        ("label 1e30", label(1e30)), ("label 2.5", label(2.5)), ("label -1", label(-1)), ("label 9", label(9)),
        ("label 2**62", label(2 ** 62)),
        ("uint64 labels max", setk("y_train", lambda y: np.full(y.shape, 2 ** 64 - 1, np.uint64))),
        ("float labels", setk("y_train", lambda y: y.astype(np.float32))),
        ("bool labels", setk("y_train", lambda y: y.astype(bool))),
        ("complex labels", setk("y_train", lambda y: y.astype(np.complex64))),
        ("string labels", setk("y_train", lambda y: y.astype(str))),
        ("bytes labels", setk("y_train", lambda y: y.astype("S3"))),
        ("0-d x_train", setk("x_train", lambda x: np.array(1.0, np.float32))),
        ("0-d y_train", setk("y_train", lambda y: np.array(1))),
        ("0-d x_test", setk("x_test", lambda x: np.array(1.0, np.float32))),
        ("x_train string", setk("x_train", lambda x: x.astype(str))),
        ("x_train complex", setk("x_train", lambda x: x.astype(np.complex64))),
        ("x_train float64", setk("x_train", lambda x: x.astype(np.float64))),
        ("x_train float16", setk("x_train", lambda x: x.astype(np.float16))),
        ("x_train int8", setk("x_train", lambda x: x.astype(np.int8))),
        ("x_train bool", setk("x_train", lambda x: x.astype(bool))),
        ("x_train NaN", setk("x_train", lambda x: np.full_like(x, np.nan))),
        ("x_train Inf", setk("x_train", lambda x: np.full_like(x, np.inf))),
        ("x_train big-endian", setk("x_train", lambda x: x.astype(">f4"))),
        ("x_train fortran", setk("x_train", lambda x: np.asfortranarray(x))),
        ("x_train structured", setk("x_train", lambda x: np.zeros(x.shape[0], [("a", "f4"), ("b", "i1")]))),
        ("x_train datetime", setk("x_train", lambda x: np.zeros(x.shape, "datetime64[s]"))),
        ("x_train wrong sample shape", setk("x_train", lambda x: x[:, :1])),
        ("x_train flat", setk("x_train", lambda x: x.reshape(x.shape[0], -1))),
        ("x_train 1-D", setk("x_train", lambda x: x.reshape(-1))),
        ("x_train 6-D", setk("x_train", lambda x: x[:, None, None])),
        ("x_train empty", setk("x_train", lambda x: x[:0])),
        ("all empty", lambda d, r: d.update({k: v[:0] for k, v in d.items()})),
        ("x_test empty", lambda d, r: d.update(x_test=d["x_test"][:0], y_test=d["y_test"][:0])),
        ("length mismatch x/y", setk("y_train", lambda y: y[:-1])),
        ("y_train 2-D one-hot", setk("y_train", lambda y: np.eye(NUM_CLASSES)[y])),
        ("y_train (n,1)", setk("y_train", lambda y: y[:, None])),
        ("x_train int64 huge", setk("x_train", lambda x: np.full(x.shape, 2 ** 62, np.int64))),
        ("x_train zero-size dims", setk("x_train", lambda x: np.zeros((3, 0, 8, 8), np.float32))),
        ("x_train 1e6 samples of 1 px", setk("x_train", lambda x: np.zeros((10 ** 6, 1), np.float32))),
    ]


def _npz_specials():
    valid = valid_data(random.Random(0))
    members = {f"{k}.npy": _npy(v) for k, v in valid.items()}
    return [
        ("plain .npy named .npz", _npy(valid["x_train"])),
        ("empty file", b""), ("not a zip", b"PK\x03\x04garbage" * 10), ("text", b"x_train = 1\n"),
        ("npy header claims 10**12 elements (x_train)", _zip_members({**members, "x_train.npy": _npy_header_lie((10 ** 12,))})),
        ("npy header claims (10**6, 10**6) (y_train)", _zip_members({**members, "y_train.npy": _npy_header_lie((10 ** 6, 10 ** 6), "<i8")})),
        ("npy header claims 2**62 elements", _zip_members({**members, "x_test.npy": _npy_header_lie((2 ** 62,))})),
        ("npy header negative shape", _zip_members({**members, "x_train.npy": _npy_header_lie((-5, 2, 8, 8))})),
        ("npy header object dtype", _zip_members({**members, "y_test.npy": _npy_header_lie((2,), "|O")})),
        ("npy header garbage dict", _zip_members({**members, "x_train.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': __import__('os')}\n"})),
        ("npy header python expr", _zip_members({**members, "x_train.npy": _npy_header_lie((2,), "<f4").replace(b"(2,)", b"(2**99,)")})),
        ("npy header huge header length (v2)", _zip_members({**members, "x_train.npy": b"\x93NUMPY\x02\x00" + struct.pack("<I", 2 ** 31) + b"{"})),
        ("npy header 100 KB", _zip_members({**members, "x_train.npy": b"\x93NUMPY\x02\x00" + struct.pack("<I", 100_000) + b"{" + b" " * 99_998 + b"\n"})),
        ("npy unknown version", _zip_members({**members, "x_train.npy": b"\x93NUMPY\x09\x00" + members["x_train.npy"][8:]})),
        ("npy truncated data", _zip_members({**members, "x_train.npy": members["x_train.npy"][:-100]})),
        ("object array pickled", _zip_members({**members, "y_train.npy": _npy(np.array([1, "a", None], dtype=object))})),
        ("object array pickled with os.system", _zip_members({**members, "y_train.npy": _npy_header_lie((1,), "|O", P2 + _call(_g("os", "system"), _u(TOUCH)) + b".")})),
        ("duplicate members", _zip_dup(members)),
        ("member path traversal", _zip_members({**members, "../../x_train.npy": members["x_train.npy"]})),
        ("deflate zip bomb: 128 MB of zeros", _zip_members({**members, "x_train.npy": _npy_header_lie((2 ** 18, 2, 8, 8))[:-64] + b"\0" * (128 << 20)}, compress=True)),
        ("zip claims 4 GiB uncompressed", _zip_claims_size(members)),
        ("compressed valid", _npz_bytes(valid, compressed=True)),
    ]


def _zip_dup(members):
    import warnings
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name"
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
            zf.writestr("x_train.npy", _npy(np.zeros(3, np.float32)))
    return buf.getvalue()


def _zip_claims_size(members):
    data = bytearray(_zip_members(members))
    # patch the central directory's uncompressed size of the first entry to 0xFFFFFFFE
    first = data.find(b"PK\x01\x02")
    data[first + 24:first + 28] = struct.pack("<I", 0xFFFFFFFE)
    return bytes(data)


def gen_npz(seed: int, index: int) -> Case:
    r = _rng("npz", seed, index)
    muts = _npz_mutations()
    expect = True
    if index == 0:
        data, desc, expect = _npz_bytes(valid_data(r)), "valid (control)", False
    elif index % 5 == 1:
        specials = _CACHE.get("npz_specials")
        if specials is None:
            specials = _CACHE["npz_specials"] = _npz_specials()
        desc, data = specials[(index // 5) % len(specials)]
    elif index % 5 == 3:
        base = _npz_bytes(valid_data(r), compressed=r.random() < 0.3)
        data, ops = mutate_bytes(base, r)
        desc, expect = f"bytes mutated ({ops})", False
    elif index % 10 == 4:
        data, desc, expect = _npz_bytes(valid_data(r, n=r.choice((1, 3, 20)))), "valid", False
    else:
        d = valid_data(r)
        picks = [muts[(index // 2) % len(muts)]] + ([r.choice(muts)] if r.random() < 0.2 else [])
        for _, f in picks:
            try:
                f(d, r)
            except KeyError:  # the first mutation removed the array the second changes
                pass
        desc = "; ".join(n for n, _ in picks)
        data = _npz_bytes(d)
        expect = not all(n in ("x_train float64", "x_train fortran", "x_train big-endian", "extra key",
                               "x_train float16", "x_train int8", "x_train bool", "bool labels")
                         for n, _ in picks)
    mode = _pick_mode(r, cli_p=0.05)
    return Case("npz", seed, index, desc, {"data.npz": data}, "data.npz", mode, expect_error=expect)


# --------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------

FACTORY = textwrap.dedent("""
    import sys
    sys.path.insert(0, %r)
    from conftest import make_small_net

    def small():
        return make_small_net()
""")


def _state_dict():
    if "state" not in _CACHE:
        from conftest import make_small_net
        _CACHE["state"] = {k: v.clone() for k, v in make_small_net().state_dict().items()}
    return {k: v.clone() for k, v in _CACHE["state"].items()}


def _torch_bytes(obj) -> bytes:
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _weights_mutations():
    import torch

    def setv(fn, key=None):
        def f(sd, r):
            k = key or r.choice(sorted(sd))
            sd[k] = fn(sd[k])
            return sd
        return f

    return [
        ("a list", lambda sd, r: list(sd.values())), ("a tensor", lambda sd, r: sd["head.weight"]),
        ("None", lambda sd, r: None), ("an int", lambda sd, r: 3), ("a string", lambda sd, r: "weights"),
        ("empty dict", lambda sd, r: {}), ("nested dict", lambda sd, r: {"state_dict": sd}),
        ("missing key", lambda sd, r: (sd.pop(r.choice(sorted(sd))), sd)[1]),
        ("extra key", lambda sd, r: {**sd, "extra.weight": torch.zeros(3)}),
        ("int key", lambda sd, r: {**sd, 3: torch.zeros(3)}),
        ("non-tensor value", setv(lambda t: 1.5)), ("list value", setv(lambda t: t.tolist())),
        ("numpy value", setv(lambda t: t.numpy())), ("None value", setv(lambda t: None)),
        ("wrong size", setv(lambda t: torch.zeros(t.numel() + 1))),
        ("wrong shape same numel", setv(lambda t: t.reshape(-1))),
        ("0-d", setv(lambda t: torch.tensor(1.0))), ("empty", setv(lambda t: t[:0])),
        ("NaN", setv(lambda t: torch.full_like(t, float("nan")) if t.is_floating_point() else t)),
        ("Inf", setv(lambda t: torch.full_like(t, float("inf")) if t.is_floating_point() else t)),
        ("complex", setv(lambda t: t.to(torch.complex64))), ("float64", setv(lambda t: t.double())),
        ("int8", setv(lambda t: t.to(torch.int8))), ("bool", setv(lambda t: t.bool())),
        ("float16", setv(lambda t: t.half())), ("bfloat16", setv(lambda t: t.bfloat16())),
        ("non-contiguous", setv(lambda t: t.t() if t.dim() == 2 else t, "head.weight")),
        ("huge tensor shape", setv(lambda t: torch.zeros(10_000_000))),
        ("sparse tensor", setv(lambda t: t.to_sparse() if t.dim() >= 1 else t, "head.weight")),
        ("quantized tensor", setv(lambda t: torch.quantize_per_tensor(t.float(), 0.1, 0, torch.qint8)
                                  if t.is_floating_point() else t, "head.weight")),
        ("meta tensor", setv(lambda t: torch.empty(t.shape, device="meta"), "head.weight")),
        ("nn.Parameter", setv(lambda t: torch.nn.Parameter(t) if t.is_floating_point() else t, "head.weight")),
        ("shared storage", lambda sd, r: {**sd, "head.bias": sd["conv2.bias"][:4]}),
        ("num_batches_tracked float", setv(lambda t: t.float(), "conv0.1.num_batches_tracked")),
        ("running_var negative", setv(lambda t: -t.abs() - 1, "conv0.1.running_var")),
        ("OrderedDict with metadata", lambda sd, r: _with_metadata(sd)),
    ]


def _with_metadata(sd):
    import collections
    od = collections.OrderedDict(sd)
    od._metadata = {"": {"version": 99}, "conv0.0": {"version": "x"}}
    return od


def _weights_specials():
    sd_bytes = _torch_bytes(_state_dict())

    def replace_pkl(new):
        zin = zipfile.ZipFile(io.BytesIO(sd_bytes))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                data = zin.read(info)
                if info.filename.endswith("/data.pkl"):
                    data = new
                zout.writestr(info.filename, data)
        return buf.getvalue()

    return [
        ("os.system in data.pkl (zip)", replace_pkl(P2 + _call(_g("os", "system"), _u(TOUCH)) + b".")),
        ("builtins.eval in data.pkl (zip)", replace_pkl(P2 + _call(_g("builtins", "eval"), _u(PY_TOUCH)) + b".")),
        ("os.system inside a dict value (zip)", replace_pkl(P2 + b"}" + _u("head.weight") + _call(_g("os", "system"), _u(TOUCH)) + b"s.")),
        ("torch._utils._rebuild_tensor with os.system storage",
         replace_pkl(P2 + _call(_g("torch._utils", "_rebuild_tensor_v2"), _call(_g("os", "system"), _u(TOUCH)),
                                _int(0), _tuple(_int(1)), _tuple(_int(1)), b"\x89", _g("collections", "OrderedDict") + b")R") + b".")),
        ("collections.OrderedDict with os.system args",
         replace_pkl(P2 + _call(_g("collections", "OrderedDict"), _call(_g("os", "system"), _u(TOUCH))) + b".")),
        ("plain (legacy) pickle with os.system", P2 + _call(_g("os", "system"), _u(TOUCH)) + b"."),
        ("legacy torch magic + os.system", P2 + b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"."
         + P2 + _call(_g("os", "system"), _u(TOUCH)) + b"."),
        ("numpy runstring gadget", replace_pkl(P2 + _call(_g("numpy.testing._private.utils", "runstring"), _u(PY_TOUCH), b"}") + b".")),
        ("200000-deep list", replace_pkl(P2 + _deep_list_ops(200_000) + b".")),
        ("200000-deep TUPLE1", replace_pkl(P2 + b"N" + b"\x85" * 200_000 + b".")),
        ("persistent id of a missing storage", replace_pkl(P2 + b"(" + _u("storage") + _g("torch", "FloatStorage")
                                                           + _u("999") + _u("cpu") + _int(10 ** 9) + b"tQ.")),
        ("empty file", b""), ("not a zip", b"garbage" * 10),
        ("numpy array pickled", replace_pkl(pickle.dumps({"head.weight": np.zeros((4, 8), np.float32)}, protocol=2))),
        ("torch.save of a module (not a state_dict)", None),
    ]


def gen_weights(seed: int, index: int) -> Case:
    import torch

    r = _rng("weights", seed, index)
    expect = True
    if index == 0:
        data, desc, expect = _torch_bytes(_state_dict()), "valid (control)", False
    elif index % 4 == 1:
        specials = _CACHE.get("w_specials")
        if specials is None:
            specials = _CACHE["w_specials"] = _weights_specials()
        desc, data = specials[(index // 4) % len(specials)]
        if data is None:
            from conftest import make_small_net
            data = _torch_bytes(make_small_net())
    elif index % 4 == 3:
        base = _torch_bytes(_state_dict())
        data, ops = mutate_bytes(base, r)
        desc, expect = f"bytes mutated ({ops})", False
    elif index % 8 == 2:
        sd = _state_dict()
        data, desc, expect = _torch_bytes(sd), "valid", False
        if r.random() < 0.5:
            torch.manual_seed(r.randrange(1000))
            data = _torch_bytes({k: (torch.rand_like(v) + 0.5 if "running_var" in k else torch.randn_like(v))
                                 if v.is_floating_point() else v for k, v in sd.items()})
            desc = "valid, random values"
    else:
        muts = _weights_mutations()
        name, f = muts[(index // 2) % len(muts)] if r.random() < 0.7 else r.choice(muts)
        try:
            obj = f(_state_dict(), r)
            data = _torch_bytes(obj)
            desc = name
        except Exception as err:  # noqa: BLE001 - a mutation torch cannot save
            data, desc = _torch_bytes(_state_dict()), f"{name} (unsaveable: {type(err).__name__}), valid instead"
            expect = False
        expect = expect and name not in ("non-contiguous", "nn.Parameter", "float64", "float16", "bfloat16",
                                         "NaN", "Inf", "running_var negative", "OrderedDict with metadata",
                                         "num_batches_tracked float", "int8", "bool", "shared storage")
    mode = _pick_mode(r, cli_p=0.03)
    return Case("weights", seed, index, desc, {"weights.pt": data}, "weights.pt", mode, expect_error=expect)


GENERATORS = {
    "zoo_bytes": gen_zoo_bytes, "zoo_struct": gen_zoo_struct, "pickle_hostile": gen_pickle_hostile,
    "onnx": gen_onnx, "config": gen_config, "npz": gen_npz, "weights": gen_weights,
}


def generate(kind: str, seed: int, index: int) -> Case:
    return GENERATORS[kind](seed, index)


def plan(n: int, seed: int, kinds=KINDS, weights=None) -> list[tuple[str, int, int]]:
    """(kind, seed, index) for n inputs, split between kinds by KIND_WEIGHTS, interleaved."""
    weights = weights or KIND_WEIGHTS
    total = sum(weights[k] for k in kinds)
    counts = {k: int(n * weights[k] / total) for k in kinds}
    for k in sorted(kinds, key=lambda k: -weights[k])[: n - sum(counts.values())]:
        counts[k] += 1
    out = []
    for k in kinds:
        out += [(k, seed, i) for i in range(counts[k])]
    # interleave deterministically so a partial run covers every kind
    out.sort(key=lambda t: (t[2] / max(counts[t[0]], 1), KINDS.index(t[0])))
    return out


# --------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------

class _StopBeforeBuild(Exception):
    """Raised in the child where `tinytrain run` would start the program (after the data was
    checked and written to input.bin; the C build is skipped): the data got through."""


_REPO = str(Path(__file__).resolve().parents[1]) + "/"


def _frame(tb_list, project_only=False):
    for fr in reversed(tb_list):
        if not project_only or ("tvm_tinytrain" in fr.filename or fr.filename.startswith(_REPO)
                                and "/tests/" not in fr.filename):
            return f"{Path(fr.filename).name}:{fr.lineno} in {fr.name}"
    return None


class Runner:
    """Runs cases, each in a forked child with a timeout and resource limits.

    Heavy modules are imported once here, so a child starts in milliseconds."""

    def __init__(self, workdir: str | Path | None = None, *, timeout: float = 20.0,
                 mem_bytes: int = 4 << 30, cpu_seconds: float | None = None, keep: bool = False):
        import torch  # noqa: F401 - imported before fork, on purpose
        import onnx  # noqa: F401
        import yaml  # noqa: F401
        import tvm_tinytrain.cli  # noqa: F401
        import tvm_tinytrain.frontend.onnx_frontend  # noqa: F401
        import tvm_tinytrain.frontend.torch_frontend  # noqa: F401
        import tvm_tinytrain.frontend.zoo_format  # noqa: F401
        import tvm_tinytrain.frontend.zoo_frontend  # noqa: F401
        import tvm_tinytrain.session  # noqa: F401
        import tvm_tinytrain.targets.boards  # noqa: F401
        import conftest  # noqa: F401 - the factory file imports it

        self.timeout = timeout
        self.cpu_seconds = cpu_seconds or int(timeout) + 5
        vsz = _vm_size()
        self.mem_bytes = max(mem_bytes, vsz + (1 << 30))  # never below what is mapped already
        self.keep = keep
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="tinytrain-fuzz-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        # shared by the workers of one run: written atomically, never rewritten under a reader
        self.factory = self.workdir / "fuzz_factory.py"
        _write_once(self.factory, (FACTORY % str(TESTS_DIR)).encode())
        self.project = self.workdir / "fake_project"
        self.project.mkdir(exist_ok=True)
        _write_once(self.project / "memory_report.json", json.dumps(
            {"board": "host", "model": {"input_shape": list(INPUT_SHAPE), "num_classes": NUM_CLASSES},
             "planned": {"arena_bytes": 0}, "budget": {}}).encode())
        self.npz_loader_name = "tvm_tinytrain.data.load_npz"
        self._n = 0

    def close(self):
        if self._own_dir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def settings(self) -> dict:
        return {"timeout_s": self.timeout, "rlimit_as_bytes": self.mem_bytes, "rlimit_cpu_s": self.cpu_seconds,
                "max_message_chars": MAX_MESSAGE, "npz_loader": self.npz_loader_name}

    # ---- in the child
    def _argv(self, case: Case, path: Path, out: Path, project: Path) -> list[str]:
        if case.kind in ("zoo_bytes", "zoo_struct", "pickle_hostile"):
            argv = ["compile", str(path), "--target", "host", "-o", str(out)]
            if case.num_classes is not None:
                argv += ["--num-classes", str(case.num_classes)]
            return argv
        if case.kind == "onnx":
            return ["compile", str(path), "--target", "host", "-o", str(out)]
        small = ["compile", f"{self.factory}:small", "--input-shape", ",".join(map(str, INPUT_SHAPE)),
                 "--target", "host", "-o", str(out)]
        if case.kind == "config":
            return small + ["--config", str(path)]
        if case.kind == "weights":
            return small + ["--weights", str(path)]
        if case.kind == "npz":
            return ["run", str(project), "--data", str(path), "--json", "--timeout", "5"]
        raise ValueError(case.kind)

    def _execute(self, case: Case, path: Path) -> dict:
        """Load the input the way tinytrain does; returns the outcome record."""
        from tvm_tinytrain import cli, session
        from tvm_tinytrain.errors import TinyTrainError

        def stop(*a, **k):
            raise _StopBeforeBuild()
        # `tinytrain run` checks the data, skips the C build, writes input.bin, then stops
        # where it would start the program: the data got through.
        session.build = lambda *a, **k: None
        session.run = stop
        project = path.parent / "project"
        shutil.copytree(self.project, project)
        if case.mode == "cli":
            try:
                rc = cli.main(self._argv(case, path, path.parent / "out", project))
            except _StopBeforeBuild:
                rc = 0  # `tinytrain run` accepted the data and would now build the program
            sys.stderr.flush()
            return {"rc": rc}
        kind = case.kind
        if kind in ("zoo_bytes", "zoo_struct", "pickle_hostile"):
            if case.mode == "full":
                cli.load_model(str(path), None, None, num_classes=case.num_classes)
            else:
                from tvm_tinytrain.frontend.zoo_format import load_zoo_model
                load_zoo_model(path)
        elif kind == "onnx":
            from tvm_tinytrain.frontend.onnx_frontend import import_onnx
            import_onnx(path)
        elif kind == "config":
            from tvm_tinytrain.config import SparseUpdateConfig
            cfg = SparseUpdateConfig.from_file(path)
            cfg.resolve(small_layers(), SMALL_PARAMS)
        elif kind == "npz":
            from tvm_tinytrain.data import load_npz
            d = load_npz(str(path))
            arrays = [d["x_train"], d["y_train"], d["x_test"], d["y_test"]]
            from tvm_tinytrain.targets.boards import get_board
            try:
                session.train_and_evaluate(get_board("host"), project, *arrays[:4], epochs=1)
            except _StopBeforeBuild:
                pass
        elif kind == "weights":
            cli.load_model(f"{self.factory}:small", ",".join(map(str, INPUT_SHAPE)), str(path))
        return {}

    def _child(self, case: Case, case_dir: Path, result_path: Path):
        try:
            os.setpgrp()
            os.chdir(case_dir)
            resource.setrlimit(resource.RLIMIT_AS, (self.mem_bytes, self.mem_bytes))
            resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_seconds, self.cpu_seconds + 2))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 30, 1 << 30))
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            out = os.open(case_dir / "stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            err = os.open(case_dir / "stderr.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, 1)
            os.dup2(err, 2)
            sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), line_buffering=True)
            sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), line_buffering=True)
            import faulthandler
            faulthandler.enable(file=sys.stderr)  # a fatal signal's traceback goes to stderr.txt
            try:
                import torch
                torch.set_num_threads(1)
            except Exception:  # noqa: BLE001
                pass
            res = self._classify(case, case_dir)
        except BaseException as exc:  # noqa: BLE001 - the runner itself failed in the child
            res = {"outcome": "crash", "exc_type": type(exc).__name__, "message": f"runner: {exc}"[:300]}
        try:
            result_path.write_text(json.dumps(res))
        except BaseException:  # noqa: BLE001
            pass
        os._exit(0)

    def _classify(self, case: Case, case_dir: Path) -> dict:
        from tvm_tinytrain.errors import TinyTrainError
        path = case_dir / case.main
        try:
            info = self._execute(case, path)
        except TinyTrainError as exc:
            msg = _safe_str(exc)
            res = {"outcome": "clean_error", "exc_type": type(exc).__name__, "message": msg[:300],
                   "message_chars": len(msg)}
            if len(msg) > MAX_MESSAGE or "\n" in msg:
                res.update(outcome="crash", reason="unbounded message" if len(msg) > MAX_MESSAGE
                           else "multi-line message")
                tb = traceback.extract_tb(exc.__traceback__)
                res.update(frame=_frame(tb), project_frame=_frame(tb, True))
            return res
        except BaseException as exc:  # noqa: BLE001 - everything else is a bug
            tb = traceback.extract_tb(exc.__traceback__)
            return {"outcome": "crash", "exc_type": type(exc).__name__, "message": _safe_str(exc)[:300],
                    "frame": _frame(tb), "project_frame": _frame(tb, True),
                    "traceback": "".join(traceback.format_list(tb[-6:]))[-3000:]}
        if case.mode != "cli":
            return {"outcome": "loaded"}
        rc = info["rc"]
        stderr = (case_dir / "stderr.txt").read_text(errors="replace")
        lines = [l for l in stderr.splitlines() if l.startswith("tinytrain: error:")]
        if rc == 0:
            return {"outcome": "loaded", "rc": 0}
        if rc == 1 and len(lines) == 1 and len(lines[0]) <= MAX_MESSAGE + 20 and "Traceback" not in stderr:
            return {"outcome": "clean_error", "exc_type": "cli", "message": lines[0][:300],
                    "message_chars": len(lines[0])}
        reason = ("unbounded message" if lines and len(lines[0]) > MAX_MESSAGE + 20
                  else f"cli contract: rc {rc}, {len(lines)} error lines")
        return {"outcome": "crash", "exc_type": "cli", "reason": reason, "message": stderr[-300:],
                "message_chars": len(stderr)}

    # ---- in the parent
    def run(self, case: Case) -> dict:
        self._n += 1
        case_dir = self.workdir / f"case-{os.getpid()}-{self._n}"
        shutil.rmtree(case_dir, ignore_errors=True)
        case_dir.mkdir(parents=True)
        for name, data in case.files.items():
            (case_dir / name).write_bytes(data)
        result_path = case_dir / "result.json"
        t0 = time.monotonic()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # child
            self._child(case, case_dir, result_path)
            os._exit(0)  # not reached
        status, timed_out = _wait(pid, self.timeout)
        seconds = time.monotonic() - t0
        res = None
        if timed_out:
            res = {"outcome": "hang", "reason": f"no result after {self.timeout} s (killed)"}
        elif os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            if sig == signal.SIGXCPU:
                res = {"outcome": "hang", "reason": f"CPU limit {self.cpu_seconds} s (SIGXCPU)"}
            else:
                res = {"outcome": "signal", "signal": name}
        else:
            try:
                res = json.loads(result_path.read_text())
            except (OSError, ValueError):
                res = {"outcome": "crash", "exc_type": "NoResult",
                       "message": f"child exited with status {os.WEXITSTATUS(status)} and no result"}
        if _sentinel_exists(case_dir):
            res = {**res, "outcome": "code_executed", "outcome_before_check": res.get("outcome")}
        if res.get("outcome") in ("crash", "signal", "hang") and "stderr_tail" not in res:
            try:
                res["stderr_tail"] = (case_dir / "stderr.txt").read_text(errors="replace")[-500:]
            except OSError:
                pass
        if not self.keep:
            shutil.rmtree(case_dir, ignore_errors=True)
        res.update(kind=case.kind, seed=case.seed, index=case.index, case=case.case_id, desc=case.desc[:300],
                   mode=case.mode, seconds=round(seconds, 3), expect_error=case.expect_error)
        return res


def _write_once(path: Path, data: bytes) -> None:
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _safe_str(exc) -> str:
    try:
        return str(exc)
    except BaseException as e:  # noqa: BLE001 - e.g. a 5,000-digit int in the message
        return f"<str() failed: {type(e).__name__}>"


def _sentinel_exists(case_dir: Path) -> bool:
    return (case_dir / SENTINEL).exists() or (case_dir / "out" / SENTINEL).exists()


def _vm_size() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _wait(pid: int, timeout: float) -> tuple[int, bool]:
    """waitpid with a timeout; on timeout kill the child's process group. (status, timed_out)"""
    deadline = time.monotonic() + timeout
    fd = None
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status, False
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if fd is not None:
                select.select([fd], [], [], min(left, 1.0))
            else:
                time.sleep(min(left, 0.01))
    finally:
        if fd is not None:
            os.close(fd)
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            kill()
        except (ProcessLookupError, PermissionError):
            pass
    _, status = os.waitpid(pid, 0)
    return status, True


# --------------------------------------------------------------------------------------
# Running many and summarizing
# --------------------------------------------------------------------------------------

_WORKER: Runner | None = None


def _pool_init(kwargs):
    global _WORKER
    _WORKER = Runner(**kwargs)


def _pool_run(item):
    kind, seed, index = item
    return _run_one(_WORKER, kind, seed, index)


def _run_one(runner: Runner, kind: str, seed: int, index: int) -> dict:
    try:
        case = generate(kind, seed, index)
    except Exception as exc:  # noqa: BLE001 - a generator bug must not stop the run
        return {"outcome": "generator_error", "kind": kind, "seed": seed, "index": index,
                "case": f"{kind}:{seed}:{index}", "exc_type": type(exc).__name__, "message": str(exc)[:300]}
    return runner.run(case)


def run_many(items, *, workers: int = 1, progress=None, runner_kwargs=None, on_result=None) -> list[dict]:
    """Run (kind, seed, index) items; `progress(n)` is called per finished input."""
    runner_kwargs = runner_kwargs or {}
    results = []
    if workers <= 1:
        runner = Runner(**runner_kwargs)
        try:
            for item in items:
                res = _run_one(runner, *item)
                results.append(res)
                if on_result:
                    on_result(res)
                if progress:
                    progress(1)
        finally:
            runner.close()
        return results
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers, initializer=_pool_init, initargs=(runner_kwargs,), maxtasksperchild=500) as pool:
        for res in pool.imap_unordered(_pool_run, items, chunksize=1):
            results.append(res)
            if on_result:
                on_result(res)
            if progress:
                progress(1)
    return results


def summarize(results: list[dict], examples_per_outcome: int = 5) -> dict:
    outcomes = {o: 0 for o in OUTCOMES}
    per_kind = {}
    examples = {o: [] for o in BAD_OUTCOMES}
    findings = {}
    suspicious = []
    for res in results:
        o = res["outcome"]
        outcomes[o] = outcomes.get(o, 0) + 1
        k = per_kind.setdefault(res["kind"], {x: 0 for x in OUTCOMES})
        k[o] = k.get(o, 0) + 1
        if o in BAD_OUTCOMES or o == "generator_error":
            ex = {key: res.get(key) for key in ("case", "kind", "mode", "desc", "exc_type", "message", "reason",
                                                 "signal", "frame", "project_frame", "seconds")
                  if res.get(key) is not None}
            if len(examples.setdefault(o, [])) < examples_per_outcome:
                examples[o].append(ex)
            sig = finding_signature(res)
            f = findings.setdefault(sig, {"signature": sig, "count": 0, "example": ex})
            f["count"] += 1
        elif o == "loaded" and res.get("expect_error") and len(suspicious) < 20:
            suspicious.append({"case": res["case"], "desc": res.get("desc")})
    return {"total_inputs": len(results), "outcomes": outcomes, "per_kind": per_kind,
            "examples": {o: v for o, v in examples.items() if v},
            "distinct_findings": sorted(findings.values(), key=lambda f: -f["count"]),
            "loaded_though_invalid": suspicious}


def finding_signature(res: dict) -> str:
    o = res["outcome"]
    if o == "hang":
        return f"{res['kind']} | hang | {res.get('desc', '')[:60]}"
    if o == "signal":
        return f"{res['kind']} | signal {res.get('signal')} | {res.get('desc', '')[:60]}"
    if o == "code_executed":
        return f"{res['kind']} | code_executed | {res.get('desc', '')[:60]}"
    return (f"{res['kind']} | {res.get('mode')} | {res.get('exc_type')} | {res.get('reason', '')} | "
            f"{res.get('project_frame') or res.get('frame')}")
