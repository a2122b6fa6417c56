"""The generated C program on the host against the Relax VM and torch."""

import re
import subprocess

import numpy as np
import pytest

from conftest import make_small_net, samples, torch_sgd_reference
from tvm_tinytrain.reference import RelaxVMTrainer
from tvm_tinytrain.targets.boards import build, get_board
from tvm_tinytrain.targets.c_emitter import emit
from tvm_tinytrain.targets.harness import DUMP, PREDICT, TRAIN, Record
from tvm_tinytrain.targets.lower import lower
from tvm_tinytrain.targets.project import write_project
from tvm_tinytrain.session import run_stream

N_STEPS = 6


def stream_records():
    xs, ys = samples(N_STEPS)
    records = [Record(TRAIN, x, int(y)) for x, y in zip(xs, ys)]
    return xs, ys, records + [Record(DUMP), Record(PREDICT, xs[0])]


@pytest.fixture(scope="module")
def host_run(small_program, tmp_path_factory):
    board = get_board("host")
    project = tmp_path_factory.mktemp("host") / "proj"
    write_project(small_program, project, board)
    xs, ys, records = stream_records()
    return project, run_stream(board, project, records)


def test_host_c_matches_relax_vm(small_program, host_run):
    """Same kernels, same order: the host build reproduces the VM to float rounding (rtol 1e-6)."""
    _, result = host_run
    xs, ys, _ = stream_records()
    vm = RelaxVMTrainer(small_program)
    vm_losses = [vm.step(x, y) for x, y in zip(xs, ys)]
    np.testing.assert_allclose(result.output.losses, vm_losses, rtol=1e-6)
    for name in small_program.params:
        np.testing.assert_allclose(result.output.params[0][name], vm.param(name).ravel(),
                                   rtol=1e-6, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(result.output.logits[0], vm.predict(xs[0]), rtol=1e-6, atol=1e-7)


def test_host_c_matches_torch(small_program, host_run):
    """Independent reference: torch autograd + torch.optim.SGD (momentum, sub-tensor), rtol 1e-5."""
    _, result = host_run
    xs, ys, _ = stream_records()
    ref_losses, ref_params = torch_sgd_reference(make_small_net(), small_program, xs, ys)
    np.testing.assert_allclose(result.output.losses, ref_losses, rtol=1e-5)
    for name in small_program.params:
        np.testing.assert_allclose(result.output.params[0][name], ref_params[name].ravel(),
                                   rtol=1e-5, atol=1e-6, err_msg=name)


def test_frozen_parameters_bit_identical(small_program, host_run):
    _, result = host_run
    for name, value in small_program.params.items():
        if name not in small_program.trainable:
            assert np.array_equal(result.output.params[0][name], value.ravel()), name


def test_workspace_within_plan(small_program, host_run):
    """What the kernels ask TVMBackendAllocWorkspace for (measured) never exceeds the plan."""
    project, result = host_run
    planned = max(c.workspace_bytes for s in lower(small_program).schedules.values() for c in s.calls)
    assert 0 <= result.output.workspace_bytes <= planned


def test_generated_c_is_deterministic(small_program):
    a = emit(small_program, lower(small_program)).files
    b = emit(small_program, lower(small_program)).files
    assert a == b


def test_generated_c_documents_its_memory_and_allocates_nothing(host_run):
    project, _ = host_run
    model_c = (project / "tinytrain_model.c").read_text()
    assert "Memory layout: tt_arena" in model_c
    assert "static uint8_t tt_arena[TT_ARENA_BYTES]" in model_c
    sources = "".join(p.read_text() for p in project.glob("*.c"))
    assert not re.search(r"\b(malloc|calloc|realloc|free)\s*\(", sources)
    params_c = (project / "tinytrain_params.c").read_text()
    assert re.search(r"^const float conv0_0_weight\[", params_c, re.M)  # frozen: flash
    assert re.search(r"^float head_weight\[", params_c, re.M)           # trainable: RAM


def test_builds_warning_free_with_wall_wextra(host_run):
    project, _ = host_run
    subprocess.run(["make", "-C", str(project), "clean"], check=True, capture_output=True)
    out = subprocess.run(["make", "-C", str(project)], check=True, capture_output=True, text=True)
    assert "-Wall" in out.stdout and "-Wextra" in out.stdout
    assert "warning" not in out.stderr.lower(), out.stderr


def test_onnx_model_trains_like_torch_in_c(small_net, tmp_path):
    """The ONNX path end to end: export, import, compile, run the C program on the host."""
    import warnings

    import torch

    from conftest import INPUT_SHAPE, OPTIONS, SPARSE
    from tvm_tinytrain.frontend.onnx_frontend import import_onnx
    from tvm_tinytrain.pipeline import build_training_program

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(small_net, (torch.zeros(INPUT_SHAPE),), str(tmp_path / "m.onnx"),
                          dynamo=False, do_constant_folding=False)
    program = build_training_program(import_onnx(tmp_path / "m.onnx"), SPARSE, OPTIONS)
    board = get_board("host")
    write_project(program, tmp_path / "p", board)
    xs, ys, records = stream_records()
    result = run_stream(board, tmp_path / "p", records)
    ref_losses, ref_params = torch_sgd_reference(make_small_net(), program, xs, ys)
    np.testing.assert_allclose(result.output.losses, ref_losses, rtol=1e-5)
    for name in program.trainable.names:
        np.testing.assert_allclose(result.output.params[0][name], ref_params[name].ravel(),
                                   rtol=1e-5, atol=1e-6, err_msg=name)


def test_divergence_stops_before_writing_garbage(small_imported, tmp_path):
    """A learning rate that blows the loss up: the device reports it and stops the step
    before any weight changes (the dump of the previous step stays finite)."""
    from conftest import SPARSE
    from tvm_tinytrain.errors import RunError
    from tvm_tinytrain.pipeline import TrainOptions, build_training_program

    program = build_training_program(small_imported, SPARSE, TrainOptions(lr=1e38))
    board = get_board("host")
    write_project(program, tmp_path / "p", board)
    xs, ys = samples(20)
    records = [Record(TRAIN, x, int(y)) for x, y in zip(xs, ys)]
    with pytest.raises(RunError, match="NaN or Inf at record"):
        run_stream(board, tmp_path / "p", records)
