"""A gallery of MCU models, end to end (gallery_models.py): the MLPerf Tiny reference models
(ResNet-8, DS-CNN, MobileNetV1-0.25, the fully connected autoencoder, `--loss mse`) and
MobileNetV3-small as users write them, nested modules, bare nn.Sequential and ONNX from
torch's default exporter, each compiled through the real command line with a sparse scheme
(SCHEMES), within 256 KB, and trained for a few steps on the host build and on Cortex-M4 and
RV32 under QEMU, float32 and int8 (PTQ + QAS): the boards compute the host's bits.

Each (model, form) is compiled once, for Cortex-M4 (its C checked by arm-none-eabi-gcc);
the host and RV32 projects reuse the C the command line generated (the C is the same for
every board: only the board files, the Makefile and the budget check differ). The nested
forms, float32 and int8, run on the host and both boards; to keep the suite's time, the
Sequential and ONNX forms run on one board each (both boards covered): float32, they must
train there like the host build of the nested form, the same network written another way;
int8, like their own host build (calibration ranges, and so scales, differ by float rounding).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

import gallery_models
from gallery_models import CLASSIFIERS, GALLERY, PTQ, SCHEMES, SEQUENTIAL
from tvm_tinytrain import cli
from tvm_tinytrain.session import StreamResult, run_stream
from tvm_tinytrain.targets.boards import get_board
from tvm_tinytrain.targets.harness import DUMP, TRAIN, Record
from tvm_tinytrain.targets.project import write_project

N_STEPS = 3
BUDGET = 256 * 1024
MODELS_FILE = Path(gallery_models.__file__).resolve()

# (model, form) -> the boards it trains on (nested and int8: besides the host)
CASES = {(name, "nested"): ("cortex-m4", "riscv32") for name in GALLERY}
CASES |= {("dscnn", "sequential"): ("riscv32",), ("mbv1", "sequential"): ("cortex-m4",),
          ("autoencoder", "sequential"): ("cortex-m4",),
          ("resnet8", "onnx"): ("riscv32",), ("dscnn", "onnx"): ("cortex-m4",),
          ("mbv1", "onnx"): ("riscv32",), ("mbv3", "onnx"): ("cortex-m4",), ("autoencoder", "onnx"): ("riscv32",)}
CASES |= {(name, "int8"): ("cortex-m4", "riscv32") for name in PTQ}
# PTQ of the other forms: each on one board, against its own host build (its ranges and so its
# scales differ from the nested form's by float rounding: a different int8 model)
CASES |= {(name, "sequential-int8"): (board,) for name, board in zip(SEQUENTIAL, ["cortex-m4", "riscv32"] * 3)}
CASES |= {(name, "onnx-int8"): (board,) for name, board in zip(PTQ, ["riscv32", "cortex-m4"] * 3)}
BOARD_CASES = [(name, form, board) for (name, form), boards in CASES.items() for board in boards
               if form in ("nested", "int8") or form.endswith("-int8")]
OTHER_FORMS = [(name, form, board) for (name, form), boards in CASES.items() for board in boards
               if form in ("sequential", "onnx")]


def _id(case) -> str:
    return "-".join(case)


@dataclass
class Compiled:
    project: Path          # what `tinytrain compile --target cortex-m4` wrote
    program: object        # its TrainingProgram
    emitted: object        # its C sources, reused for the other boards
    report: dict           # memory_report.json


def _records(shape, num_classes: int) -> list[Record]:
    rng = np.random.default_rng(7)
    xs = rng.standard_normal((N_STEPS, *shape[1:])).astype(np.float32)
    return [Record(TRAIN, x, i % num_classes) for i, x in enumerate(xs)] + [Record(DUMP)]


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """Lazily compiled cases and their runs, each made once for the module."""
    root = tmp_path_factory.mktemp("gallery")
    compiled: dict = {}
    runs: dict = {}

    def source(name: str, form: str) -> str:
        if form == "onnx":
            path = root / f"{name}.onnx"
            if not path.exists():
                model, x = GALLERY[name]()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(model, (x,), str(path))  # the default exporter
            return str(path)
        factory = SEQUENTIAL[name] if form == "sequential" else GALLERY[name]
        return f"{MODELS_FILE}:{factory.__name__}"

    def calibration(name: str) -> str:
        path = root / f"{name}_calibration.npz"
        _, x = GALLERY[name]()
        xs = np.random.default_rng(1).standard_normal((16, *x.shape[1:])).astype(np.float32)
        ys = np.zeros(16, np.int64)
        np.savez(path, x_train=xs, y_train=ys, x_test=xs[:2], y_test=ys[:2])
        return str(path)

    def compile_case(name: str, form: str) -> Compiled:
        """form: nested, sequential, onnx; int8 (the nested form, PTQ), sequential-int8, onnx-int8."""
        if (name, form) not in compiled:
            out = root / f"{name}-{form}" / "cortex-m4"
            int8, base = form.endswith("int8"), "nested" if form == "int8" else form.removesuffix("-int8")
            flags = [*SCHEMES[name], *(["--quantize", "int8", "--calibration", calibration(name)] if int8 else [])]
            seen = {}
            real = cli.compile_to_project

            def spy(*args, **kwargs):  # keep what the command line compiled, to reuse its C
                seen["result"] = real(*args, **kwargs)
                return seen["result"]

            with mock.patch.object(cli, "compile_to_project", spy):
                assert cli.main(["compile", source(name, base), *flags, "--target", "cortex-m4",
                                 "-o", str(out)]) == 0
            _, program, emitted, _ = seen["result"]
            report = json.loads((out / "memory_report.json").read_text())
            compiled[name, form] = Compiled(out, program, emitted, report)
        return compiled[name, form]

    def run(name: str, form: str, board: str) -> StreamResult:
        if (name, form, board) not in runs:
            c = compile_case(name, form)
            project = c.project
            if board != "cortex-m4":
                project = c.project.parent / board
                budget = c.report["budget"]  # the command line's (the autoencoder's --flash-kb 2048)
                write_project(c.program, project, get_board(board), emitted=c.emitted,
                              ram_bytes=budget["ram_bytes"], flash_bytes=budget["flash_bytes"])
            records = _records(c.program.input_shape, c.program.num_classes)
            runs[name, form, board] = run_stream(get_board(board), project, records)
        return runs[name, form, board]

    return compile_case, run


# ---------------------------------------------------------------- the models themselves


@pytest.mark.parametrize("name", list(SEQUENTIAL))
def test_sequential_form_is_the_nested_model(name):
    """The bare Sequential holds the nested model's layers: same weights, same logits."""
    nested, x = GALLERY[name]()
    seq, x2 = SEQUENTIAL[name]()
    assert isinstance(seq, torch.nn.Sequential) and x.shape == x2.shape
    assert all(isinstance(m, torch.nn.Module) and not isinstance(m, torch.nn.Sequential) for m in seq)
    xs = torch.from_numpy(np.random.default_rng(0).standard_normal((2, *x.shape[1:])).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(seq(xs), nested(xs))


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_factories_are_seeded_and_take_num_classes(name):
    a, x = GALLERY[name](num_classes=5)
    b, _ = GALLERY[name](num_classes=5)
    assert not a.training
    with torch.no_grad():
        assert a(x).shape == (1, 5) and torch.equal(a(x + 1), b(x + 1))
    bn = next(m for m in a.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.equal(bn.running_var, torch.ones_like(bn.running_var))  # folding is exercised


# ---------------------------------------------------------------- compile: within budget


@pytest.mark.parametrize("case", list(CASES), ids=_id)
def test_compiles_within_256kb(gallery, case, capfd):
    """The real command line, a sparse scheme, the planned RAM (arena, trainable tensors,
    momentum, harness, reserved stack) within 256 KB, the trained tensors the scheme's; and
    nothing on stderr (TVM's printer once warned there while tensorize probed loop nests)."""
    compile_case, _ = gallery
    name, form = case
    c = compile_case(name, form)
    err = capfd.readouterr().err
    assert "Warning" not in err and "Error" not in err, err[-2000:]
    planned = c.report["planned"]
    assert c.report["board"] == "cortex-m4"
    assert planned["ram_total_bytes"] <= BUDGET, planned
    assert planned["frozen_flash_bytes"] + planned["trainable_bytes"] <= c.report["budget"]["flash_bytes"]
    trainable = c.report["model"]["trainable"]
    assert trainable == list(c.program.trainable.names)
    assert len(trainable) >= 4 and any(t.endswith(".weight") for t in trainable[:-2])  # a conv's weight trains
    assert c.program.num_classes == GALLERY[name]()[0](torch.zeros(c.program.input_shape)).shape[1]
    if form.startswith("sequential"):  # torch's bare names, e.g. `78.weight`, made C identifiers
        assert all(t.split(".")[0].isdigit() for t in trainable)
    if form.endswith("int8"):
        assert c.program.params[trainable[0]].dtype != np.float32


# ---------------------------------------------------------------- train: boards vs host


def _assert_same_training(program, board_out, host_out):
    """Losses and every dumped parameter bit for bit the host build's (the program carries
    its own expf/logf and is built without contraction: every target computes the same
    bits); frozen ones untouched."""
    assert len(host_out.losses) == len(board_out.losses) == N_STEPS
    assert np.isfinite(host_out.losses).all()
    assert board_out.losses == host_out.losses
    host, board = host_out.params[0], board_out.params[0]
    assert host.keys() == board.keys() == program.params.keys()
    for name, value in program.params.items():
        assert host[name].dtype == board[name].dtype and np.array_equal(board[name], host[name]), name
        if name not in program.trainable.names:
            assert np.array_equal(host[name], np.asarray(value).ravel()), f"frozen {name} changed"
    assert any(not np.array_equal(host[n], np.asarray(program.params[n]).ravel())
               for n in program.trainable.names), "nothing trained"


@pytest.mark.slow
@pytest.mark.parametrize("case", BOARD_CASES, ids=_id)
def test_trains_on_the_board_like_the_host_build(gallery, case):
    """Three steps on the board under QEMU against the host build of the same C."""
    compile_case, run = gallery
    name, form, board = case
    program = compile_case(name, form).program
    mcu, host = run(name, form, board), run(name, form, "host")
    _assert_same_training(program, mcu.output, host.output)
    assert mcu.ran_on.startswith("qemu-system-") and len(mcu.train_instructions) == N_STEPS
    assert mcu.build.static_ram_bytes + mcu.output.stack_bytes <= BUDGET
    assert mcu.build.flash_bytes <= compile_case(name, form).report["budget"]["flash_bytes"]


@pytest.mark.slow
@pytest.mark.parametrize("case", OTHER_FORMS, ids=_id)
def test_every_form_trains_on_the_board_like_the_nested_model(gallery, case):
    """A bare Sequential (torch's names, `78.weight`) or an ONNX file (torch's default
    exporter, which folds the batch norms itself) on the board under QEMU against the host
    build of the nested form: the same losses and parameters, position by position (rtol
    1e-5, as the host's); its own frozen weights untouched."""
    compile_case, run = gallery
    name, form, board = case
    nested, other = compile_case(name, "nested").program, compile_case(name, form).program
    assert [v.shape for v in other.params.values()] == [v.shape for v in nested.params.values()]
    assert len(other.trainable.names) == len(nested.trainable.names)
    host, mcu = run(name, "nested", "host").output, run(name, form, board).output
    assert len(mcu.losses) == N_STEPS
    np.testing.assert_allclose(mcu.losses, host.losses, rtol=1e-5)
    for n, o in zip(nested.params, other.params):
        assert (n in nested.trainable.names) == (o in other.trainable.names), (n, o)
        np.testing.assert_allclose(mcu.params[0][o], host.params[0][n], rtol=1e-5, atol=1e-6, err_msg=f"{o} / {n}")
        if o not in other.trainable.names:
            assert np.array_equal(mcu.params[0][o], np.asarray(other.params[o]).ravel()), f"frozen {o} changed"
