"""Hostile `tinytrain run --data` files, `--weights` files and error messages (GitHub issue
#10): each refused with one clear message, before anything is built."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch

from conftest import INPUT_SHAPE, make_small_net
from test_errors import SHAPE, assert_clean_error, model_file, tinytrain  # noqa: F401 - fixture
from tvm_tinytrain import cli
from tvm_tinytrain.data import check_against_model, load_npz
from tvm_tinytrain.errors import TinyTrainError
from tvm_tinytrain.frontend.torch_frontend import load_weights

MODEL = {"input_shape": list(INPUT_SHAPE), "num_classes": 4}


def good(n=3):
    x = np.random.default_rng(0).standard_normal((n, *INPUT_SHAPE[1:])).astype(np.float32)
    return dict(x_train=x, y_train=np.arange(n) % 4, x_test=x[:2], y_test=np.array([0, 1]))


def npy_bytes(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _npy(header) -> bytes:
    """A .npy header (which may lie about the shape) followed by 4 bytes of data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + b"\0" * 4


def write_npz(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(f"{name}.npy", data)


def with_(**changes):
    d = good()
    d.update(changes)
    return d


DATA_CASES = [
    ("nan_label", with_(y_train=np.array([0.0, np.nan, 1.0])), "y_train[1] is nan"),
    ("inf_label", with_(y_train=np.array([0.0, np.inf, 1.0])), "y_train[1] is inf"),
    ("fraction_label", with_(y_train=np.array([0.0, 1.5, 1.0])), "labels must be whole numbers"),
    ("negative_label", with_(y_train=np.array([0, -1, 1])), "y_train[1] is -1"),
    ("string_samples", with_(x_test=np.array(["a", "b"])), "x_test has dtype <U1"),
    ("string_labels", with_(y_test=np.array(["a", "b"])), "y_test has dtype <U1"),
    ("complex_samples", with_(x_train=np.zeros((3, 2), np.complex64)), "x_train has dtype complex64"),
    ("scalar_x", with_(x_train=np.float32(1.0)), "x_train must be an array of samples"),
    ("2d_labels", with_(y_train=np.zeros((3, 1), np.int64)), "y_train must be a 1-d array"),
    ("length_mismatch", with_(y_train=np.array([0, 1])), "x_train has 3 samples but y_train has 2 labels"),
    ("nan_sample", with_(x_test=np.full((2, *INPUT_SHAPE[1:]), np.nan, np.float32)), "x_test holds NaN, Inf"),
    ("huge_sample", with_(x_test=np.full((2, *INPUT_SHAPE[1:]), 1e300)), "values beyond float32"),
    ("empty", with_(x_test=np.zeros((0, 2)), y_test=np.zeros(0, np.int64)), "1 to 10000000 samples"),
]


@pytest.mark.parametrize("name, arrays, needle", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_npz_refused(tmp_path, name, arrays, needle):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(TinyTrainError) as err:
        load_npz(tmp_path / "d.npz")
    assert needle in str(err.value), str(err.value)


def test_npz_headers_checked_before_reading(tmp_path):
    members = {k: npy_bytes(v) for k, v in good().items()}
    write_npz(tmp_path / "big.npz", {**members, "x_train": _npy({"descr": "<f4", "fortran_order": False,
                                                                    "shape": (10**6, 10**6)})})
    with pytest.raises(TinyTrainError, match="header claims shape"):
        load_npz(tmp_path / "big.npz")
    write_npz(tmp_path / "obj.npz", {**members, "y_test": _npy({"descr": "|O", "fortran_order": False,
                                                                  "shape": (1,)})})
    with pytest.raises(TinyTrainError, match="y_test has dtype object"):
        load_npz(tmp_path / "obj.npz")
    write_npz(tmp_path / "short.npz", {**members, "x_test": npy_bytes(good()["x_test"])[:-5]})
    with pytest.raises(TinyTrainError, match="header claims"):
        load_npz(tmp_path / "short.npz")
    (tmp_path / "corrupt.npz").write_bytes((tmp_path / "big.npz").read_bytes()[:200])
    with pytest.raises(TinyTrainError, match="corrupt.npz"):
        load_npz(tmp_path / "corrupt.npz")
    np.save(tmp_path / "plain.npy", good()["x_train"])
    with pytest.raises(TinyTrainError, match="is a single .npy array"):
        load_npz(tmp_path / "plain.npy")
    write_npz(tmp_path / "missing.npz", {"x_train": members["x_train"]})
    with pytest.raises(TinyTrainError, match="lacks the array 'y_train'"):
        load_npz(tmp_path / "missing.npz")


def test_good_npz_and_model_checks(tmp_path):
    np.savez(tmp_path / "d.npz", **with_(y_train=np.array([0.0, 1.0, 3.0])))
    d = load_npz(tmp_path / "d.npz")
    assert d["x_train"].dtype == np.float32 and d["y_train"].dtype == np.int64
    check_against_model("d.npz", d, MODEL)
    with pytest.raises(TinyTrainError, match=r"y_train\[2\] is label 3, the model has classes 0..2"):
        check_against_model("d.npz", d, {**MODEL, "num_classes": 3})
    with pytest.raises(TinyTrainError, match="the model takes"):
        check_against_model("d.npz", d, {**MODEL, "input_shape": [1, 3, 8, 8]})


def test_bad_data_refused_by_the_cli_before_the_build(tmp_path):
    """A project folder that only has its report: any build attempt would fail differently."""
    project = tmp_path / "p"
    project.mkdir()
    (project / "memory_report.json").write_text(json.dumps({"board": "host", "model": MODEL}))
    np.savez(tmp_path / "d.npz", **with_(y_train=np.array([0.0, np.nan, 1.0])))
    assert_clean_error(tinytrain("run", project, "--data", tmp_path / "d.npz"), "y_train[1] is nan")
    np.savez(tmp_path / "d.npz", **with_(y_train=np.array([0, 1, 7])))
    assert_clean_error(tinytrain("run", project, "--data", tmp_path / "d.npz"), "label 7", "0..3")
    assert sorted(p.name for p in project.iterdir()) == ["memory_report.json"]


# ------------------------------------------------------------------ --weights

def _weights_cases():
    sd = make_small_net().state_dict()
    first = next(iter(sd))
    bad_shape = dict(sd, **{first: torch.zeros(1)})
    ints = dict(sd, **{first: sd[first].to(torch.int32)})
    cplx = dict(sd, **{first: sd[first].to(torch.complex64)})
    nan = dict(sd, **{first: sd[first].clone().fill_(float("nan"))})
    extra = dict(sd, bogus=torch.zeros(1))
    missing = dict(sd)
    del missing[first]
    return [("list", [torch.zeros(1)], "expected a state_dict"),
            ("tensor", torch.zeros(3), "expected a state_dict"),
            ("missing", missing, f"missing ['{first}']"),
            ("extra", extra, "unexpected ['bogus']"),
            ("shape", bad_shape, "has shape (1,)"),
            ("int", ints, "dtype torch.int32, expected a real float tensor"),
            ("complex", cplx, "dtype torch.complex64"),
            ("nan", nan, "holds NaN or Inf"),
            ("not_tensor", dict(sd, **{first: 3}), "is a int, not a plain dense tensor"),
            ("meta", dict(sd, **{first: torch.empty(sd[first].shape, device="meta")}), "not a plain dense"),
            ("sparse", dict(sd, **{first: sd[first].to_sparse()}), "not a plain dense tensor"),
            ("negative_var", dict(sd, **{"conv0.1.running_var": -torch.ones(6)}), "negative variances")]


@pytest.mark.parametrize("name, state, needle", _weights_cases(), ids=[c[0] for c in _weights_cases()])
def test_bad_weights_refused(tmp_path, name, state, needle):
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(TinyTrainError) as err:
        load_weights(make_small_net(), str(tmp_path / "w.pt"))
    assert needle in str(err.value), str(err.value)
    assert "\n" not in str(err.value) and len(str(err.value)) < 800


def test_bad_weights_through_the_cli(model_file, tmp_path):  # noqa: F811 - fixture
    sd = make_small_net().state_dict()
    torch.save({f"extra{i}": torch.zeros(1) for i in range(10_000)} | sd, tmp_path / "w.pt")
    proc = tinytrain("compile", f"{model_file}/nets.py:small", "--input-shape", SHAPE, "--weights",
                     tmp_path / "w.pt", "-o", tmp_path / "p", "--target", "host")
    assert_clean_error(proc, "do not match the model", "unexpected ['extra0'")
    assert len(proc.stderr) < 1000


def test_main_bounds_any_error_message(monkeypatch, capsys):
    def huge(_args):
        raise TinyTrainError("x\n" * 1_000_000)

    monkeypatch.setattr(cli, "_cmd_targets", huge)
    assert cli.main(["targets"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) <= cli.MAX_ERROR_CHARS + 100
