"""Hostile tiny-training model files (GitHub issue #10): each is written by hand with raw
pickle opcodes (nothing here is ever unpickled with the standard `pickle` module) and must be
refused with one clear message, or load exactly the bytes it holds and nothing else."""

from __future__ import annotations

import copy
import pickle
import struct
import sys

import numpy as np
import pytest

from conftest import MODEL_FILES
from test_errors import assert_clean_error, tinytrain
from tvm_tinytrain.errors import TinyTrainError
from tvm_tinytrain.frontend import zoo_format
from tvm_tinytrain.frontend.zoo_format import load_zoo_model, read_zoo_pickle, validate_zoo_dict

P2 = pickle.PROTO + b"\x02"


def uni(text: str) -> bytes:
    data = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def glob(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def i32(n: int) -> bytes:
    """An int: BININT, or LONG1 beyond 32 bits."""
    if -2**31 <= n < 2**31:
        return pickle.BININT + struct.pack("<i", n)
    return pickle.LONG1 + b"\x08" + n.to_bytes(8, "little", signed=True)


def raw_bytes(data: bytes) -> bytes:
    return pickle.BINBYTES + struct.pack("<I", len(data)) + data


def tup(*items: bytes) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


DTYPE_STATE = {"i1": "|", "u1": "|", "b1": "|", "i4": "<", "f4": "<"}


def dtype_ops(name: str, state: bytes | None = None) -> bytes:
    """numpy.dtype(name, False, True) + BUILD, as NumPy pickles a dtype."""
    if state is None:
        state = tup(i32(3), uni(DTYPE_STATE.get(name, "<")), pickle.NONE, pickle.NONE, pickle.NONE,
                    i32(-1), i32(-1), i32(0))
    return (glob("numpy", "dtype") + tup(uni(name), pickle.NEWFALSE, pickle.NEWTRUE) + pickle.REDUCE
            + state + pickle.BUILD)


def array_ops(shape, dtype: str, raw: bytes, *, dtype_part: bytes | None = None,
              reconstruct_shape: bytes = tup(i32(0))) -> bytes:
    """An array in NumPy's own form: _reconstruct(ndarray, (0,), b'b') + BUILD(state)."""
    return (glob("numpy.core.multiarray", "_reconstruct")
            + tup(glob("numpy", "ndarray"), reconstruct_shape, raw_bytes(b"b")) + pickle.REDUCE
            + tup(i32(1), tup(*map(i32, shape)), dtype_part or dtype_ops(dtype), pickle.NEWFALSE,
                  raw_bytes(raw))
            + pickle.BUILD)


def load(tmp_path, payload: bytes, name="m.pkl"):
    path = tmp_path / name
    path.write_bytes(P2 + payload + pickle.STOP)
    return read_zoo_pickle(path)


def refused(tmp_path, payload: bytes, match: str):
    with pytest.raises(TinyTrainError, match=match) as err:
        load(tmp_path, payload)
    assert "\n" not in str(err.value) and len(str(err.value)) < 600
    return err


def test_handmade_array_holds_exactly_its_bytes(tmp_path):
    arr = load(tmp_path, array_ops((2, 2), "i1", b"\x01\x02\xff\x04"))
    assert type(arr) is np.ndarray and arr.dtype == np.int8 and arr.flags.owndata
    np.testing.assert_array_equal(arr, [[1, 2], [-1, 4]])
    # A dict holding the same array twice (memo) gets the one array twice.
    memo = pickle.BINPUT + b"\x07"
    twice = load(tmp_path, array_ops((1,), "f4", b"\x00\x00\x80\x3f") + memo
                 + pickle.POP + tup(pickle.BINGET + b"\x07", pickle.BINGET + b"\x07"))
    assert twice[0] is twice[1] and twice[0].tolist() == [1.0]


def test_ndarray_with_negative_offset_cannot_read_memory(tmp_path):
    """numpy.ndarray((64,), 'u1', b'abcd', offset=-64) read 60 bytes of the heap."""
    direct = glob("numpy", "ndarray") + tup(tup(i32(64)), uni("u1"), raw_bytes(b"abcd"), i32(-64)) + pickle.REDUCE
    refused(tmp_path, direct, "numpy.ndarray.*called directly is not allowed")
    # No other way to an array larger than the bytes the file holds.
    refused(tmp_path, array_ops((64,), "u1", b"abcd"), "needs 64 bytes of data, got 4 bytes")
    refused(tmp_path, array_ops((1 << 40, 1 << 40), "u1", b""), "sizes in")
    refused(tmp_path, array_ops((4,), "u1", b"abcd", reconstruct_shape=tup(i32(64))),
            "not the form NumPy writes")
    twice = array_ops((1,), "u1", b"a")[:-1] + pickle.BUILD + tup(
        i32(1), tup(i32(64)), dtype_ops("u1"), pickle.NEWFALSE, raw_bytes(b"a")) + pickle.BUILD
    refused(tmp_path, twice, "given twice")
    bare = (glob("numpy.core.multiarray", "_reconstruct")
            + tup(glob("numpy", "ndarray"), tup(i32(0)), raw_bytes(b"b")) + pickle.REDUCE)
    refused(tmp_path, bare, "without its data")


def test_real_files_arrays_own_their_memory(zoo_dir):
    cfg = read_zoo_pickle(zoo_dir / MODEL_FILES[0])
    w = cfg["first_conv"]["params"]["weight"]
    assert w.flags.owndata and w.flags.c_contiguous and w.dtype == np.int8


def test_object_and_exotic_dtypes_refused(tmp_path):
    for name in ("O8", "O", "V8", "U4", ">i4", "c8", "M8[s]"):
        refused(tmp_path, array_ops((1,), name, b"\x00" * 8), "is not allowed")
    # An object array pickles its data as a list, never as bytes.
    lst = (glob("numpy.core.multiarray", "_reconstruct")
           + tup(glob("numpy", "ndarray"), tup(i32(0)), raw_bytes(b"b")) + pickle.REDUCE
           + tup(i32(1), tup(i32(1)), dtype_ops("i1"), pickle.NEWFALSE,
                 pickle.EMPTY_LIST + i32(7) + pickle.APPEND) + pickle.BUILD)
    refused(tmp_path, lst, "needs 1 bytes of data, got list")


def test_dtype_setstate_attack_refused(tmp_path):
    """np.dtype.__setstate__ with chosen itemsize / byte order is never called."""
    evil_size = tup(i32(3), uni("|"), pickle.NONE, pickle.NONE, pickle.NONE, i32(4096), i32(1), i32(0))
    refused(tmp_path, array_ops((1,), "i1", b"\x00", dtype_part=dtype_ops("i1", evil_size)),
            "dtype int8 with state")
    big_endian = tup(i32(3), uni(">"), pickle.NONE, pickle.NONE, pickle.NONE, i32(-1), i32(-1), i32(0))
    refused(tmp_path, dtype_ops("i4", big_endian), "is not allowed")
    # BUILD on an allowed global (would set __defaults__ on our function) is refused.
    refused(tmp_path, glob("numpy", "dtype") + tup(pickle.NONE, pickle.EMPTY_DICT) + pickle.BUILD,
            "BUILD on _Function")
    refused(tmp_path, glob("numpy", "ndarray") + pickle.EMPTY_DICT + pickle.BUILD, "BUILD on")
    # A dtype or function left in the loaded object is refused too.
    refused(tmp_path, dtype_ops("i1"), "unexpected _DtypeSpec")


def test_size_limits_checked_before_unpickling(tmp_path):
    refused(tmp_path, pickle.NONE + pickle.LONG_BINPUT + struct.pack("<I", 0xFFFFFFF0), "memo index")
    refused(tmp_path, pickle.LONG1 + bytes([200]) + b"\x01" * 200, "integer of")
    refused(tmp_path, pickle.NONE + pickle.POP * 2, "too short stack|not a valid")
    with pytest.raises(TinyTrainError, match="legacy"):
        load(tmp_path, pickle.LONG1 + bytes([10]) + (0x1950A86A20F9469CFC6C).to_bytes(10, "little"))


def test_memo_references_cannot_multiply_memory(tmp_path):
    """One 1 MiB string in the memo, encoded 300 times: 300 MiB from a 1 MiB file."""
    big = pickle.BINUNICODE + struct.pack("<I", 1 << 20) + b"a" * (1 << 20) + pickle.BINPUT + b"\x01"
    enc = glob("_codecs", "encode") + pickle.BINPUT + b"\x02"
    one = pickle.BINGET + b"\x02" + pickle.BINGET + b"\x01" + uni("latin1") + pickle.TUPLE2 + pickle.REDUCE
    payload = big + pickle.POP + enc + pickle.POP + pickle.EMPTY_LIST + pickle.MARK + one * 300 + pickle.APPENDS
    refused(tmp_path, payload, "builds more than")


@pytest.mark.parametrize("kind", ["mark", "tuple1", "list"])
def test_deep_nesting_is_refused_in_a_subprocess(tmp_path, kind):
    """A 200,000-deep structure used to crash the loader (C stack overflow): run the CLI in
    a subprocess so that a regression fails this test instead of killing pytest."""
    n = 200_000
    body = {"mark": pickle.MARK * n + pickle.NONE + pickle.TUPLE * n,
            "tuple1": pickle.NONE + pickle.TUPLE1 * n,
            "list": pickle.EMPTY_LIST * n + pickle.APPEND * (n - 1)}[kind]
    (tmp_path / "deep.pkl").write_bytes(P2 + body + pickle.STOP)
    proc = tinytrain("compile", tmp_path / "deep.pkl", "--target", "host", "-o", tmp_path / "out")
    assert_clean_error(proc, "deep.pkl", "nesting deeper than")


def test_deep_nesting_via_memo_is_refused(tmp_path):
    """Lists filled after they were memoized (the prescan's depths go stale) are still
    measured by the post-pass."""
    n = 300
    ops = b"".join(pickle.EMPTY_LIST + pickle.LONG_BINPUT + struct.pack("<I", i) + pickle.POP
                   for i in range(n))
    ops += b"".join(pickle.LONG_BINGET + struct.pack("<I", i) + pickle.LONG_BINGET
                    + struct.pack("<I", i + 1) + pickle.APPEND + pickle.POP for i in range(n - 1))
    refused(tmp_path, ops + pickle.LONG_BINGET + struct.pack("<I", 0), "nesting deeper than")
    selfref = pickle.EMPTY_LIST + pickle.BINPUT + b"\x00" + pickle.BINGET + b"\x00" + pickle.APPEND
    refused(tmp_path, selfref, "holds itself")


def test_hostile_pkl_through_the_cli(tmp_path):
    direct = glob("numpy", "ndarray") + tup(tup(i32(64)), uni("u1"), raw_bytes(b"abcd"), i32(-64)) + pickle.REDUCE
    (tmp_path / "evil.pkl").write_bytes(P2 + direct + pickle.STOP)
    proc = tinytrain("compile", tmp_path / "evil.pkl", "--target", "host", "-o", tmp_path / "out")
    assert_clean_error(proc, "evil.pkl", "called directly is not allowed")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ the zoo dict

@pytest.fixture(scope="module")
def cfg(zoo_dir):
    return read_zoo_pickle(zoo_dir / "mcunet-5fps.pkl")


def _bad(cfg, mutate, needle):
    c = copy.deepcopy(cfg)
    mutate(c)
    with pytest.raises(TinyTrainError) as err:
        validate_zoo_dict(c, "m.pkl")
    text = str(err.value)
    assert needle in text, text
    assert "\n" not in text and len(text) < 400, text


def test_zoo_dict_is_type_strict_and_bounded(cfg):
    conv = lambda c: c["blocks"][1]["depthwise"]  # noqa: E731

    def ks_arrays(c):
        conv(c)["kernel_size"] = (np.array([3, 3]), np.array([3, 3]))

    def ks_array(c):
        conv(c)["kernel_size"] = np.array([3, 3])

    def huge_spatial(c):
        c["first_conv"]["in_shape"] = 128 << 31
        c["first_conv"]["out_shape"] = 64 << 31

    def bool_stride(c):
        conv(c)["stride"] = True

    def float_channels(c):
        conv(c)["in_channel"] = 48.0

    def deep_act(c):
        v = 0
        for _ in range(100_000):
            v = [v]
        conv(c)["act"] = v

    def long_act(c):
        conv(c)["act"] = "x" * 10_000_000

    def bigint(c):
        c["first_conv"]["params"]["x_zero"] = 10 ** 5000

    def huge_key(c):
        conv(c)["k" * 100_000] = 1

    def tiny_scale(c):
        c["first_conv"]["params"]["x_scale"] = 1e-300

    def many_blocks(c):
        c["blocks"] = c["blocks"] * 100

    cases = [(ks_arrays, "kernel_size: expected an int, got ndarray"),
             (ks_array, "kernel_size: expected an int, got ndarray"),
             (huge_spatial, "first_conv.in_shape: expected an int in [1, 1024], got 274877906944"),
             (bool_stride, "stride: expected an int, got bool True"),
             (float_channels, "in_channel: expected an int, got float 48.0"),
             (deep_act, "act: expected None"),
             (long_act, "act: expected None"),
             (bigint, "x_zero: expected an int in [-128, 127]"),
             (huge_key, "unexpected key"),
             (tiny_scale, "x_scale: expected a finite float > 0"),
             (many_blocks, "blocks: expected a list of 1 to 256 blocks")]
    old = sys.getrecursionlimit()
    for mutate, needle in cases:
        _bad(cfg, mutate, needle)
    assert sys.getrecursionlimit() == old


def test_zoo_limits_cover_the_real_models(zoo_dir):
    for name in MODEL_FILES:
        model = load_zoo_model(zoo_dir / name)
        assert max(c.out_channel for c in model.convs()) <= zoo_format.MAX_CHANNELS


def test_num_classes_is_bounded(zoo_dir, tmp_path):
    """--num-classes 2**31 used to try allocating a 96 GiB classifier."""
    proc = tinytrain("compile", zoo_dir / MODEL_FILES[0], "--num-classes", 2**31, "--target", "host",
                     "-o", tmp_path / "out")
    assert_clean_error(proc, "--num-classes must be in [2, 4096], got 2147483648")
