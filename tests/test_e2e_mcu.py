"""End to end on emulated MCUs: the real cross-compiled program under QEMU, no mocks."""

import json
import subprocess
import sys

import numpy as np
import pytest
from elftools.elf.elffile import ELFFile

from conftest import make_small_net, torch_sgd_reference
from test_codegen import N_STEPS, stream_records
from tvm_tinytrain.reference import RelaxVMTrainer
from tvm_tinytrain.targets.boards import get_board
from tvm_tinytrain.targets.project import write_project
from tvm_tinytrain.session import run_stream

MCUS = ["cortex-m4", "cortex-m7", "cortex-m33", "riscv32"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vm_reference(small_program):
    xs, ys, _ = stream_records()
    vm = RelaxVMTrainer(small_program)
    losses = [vm.step(x, y) for x, y in zip(xs, ys)]
    return losses, {n: vm.param(n).ravel() for n in small_program.params}, vm.predict(xs[0])


@pytest.fixture(scope="module")
def host_result(small_program, tmp_path_factory):
    board = get_board("host")
    project = tmp_path_factory.mktemp("host") / "proj"
    write_project(small_program, project, board)
    return run_stream(board, project, stream_records()[2])


@pytest.fixture(scope="module", params=MCUS)
def mcu_run(request, small_program, tmp_path_factory):
    board = get_board(request.param)
    project = tmp_path_factory.mktemp(request.param) / "proj"
    write_project(small_program, project, board)
    return board, project, run_stream(board, project, stream_records()[2])


def test_mcu_matches_host_build_and_relax_vm(small_program, mcu_run, host_result, vm_reference):
    """fp32 on the MCU vs the same C on the host and vs the VM: rtol 1e-5 (libm's expf/logf
    may differ in the last bit between picolibc and glibc; everything else is bit-exact
    because all builds use -ffp-contract=off)."""
    board, _, result = mcu_run
    out, host = result.output, host_result.output
    vm_losses, vm_params, vm_logits = vm_reference
    assert len(out.losses) == N_STEPS
    np.testing.assert_allclose(out.losses, host.losses, rtol=1e-5)
    np.testing.assert_allclose(out.losses, vm_losses, rtol=1e-5)
    for name, value in small_program.params.items():
        np.testing.assert_allclose(out.params[0][name], host.params[0][name], rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(out.params[0][name], vm_params[name], rtol=1e-5, atol=1e-6, err_msg=name)
        if name not in small_program.trainable:
            assert np.array_equal(out.params[0][name], value.ravel()), f"frozen {name} changed on {board.name}"
    np.testing.assert_allclose(out.logits[0], vm_logits, rtol=1e-5, atol=1e-6)


def test_mcu_matches_torch(small_program, mcu_run):
    """Independent reference on the device itself: torch autograd + SGD, rtol 1e-5."""
    _, _, result = mcu_run
    xs, ys, _ = stream_records()
    ref_losses, ref_params = torch_sgd_reference(make_small_net(), small_program, xs, ys)
    np.testing.assert_allclose(result.output.losses, ref_losses, rtol=1e-5)
    for name in small_program.trainable.names:
        np.testing.assert_allclose(result.output.params[0][name], ref_params[name].ravel(),
                                   rtol=1e-5, atol=1e-6, err_msg=name)


def test_mcu_reports_instructions_memory_and_stack(mcu_run):
    board, project, result = mcu_run
    assert result.ran_on.startswith("qemu-system-")
    assert len(result.train_instructions) == N_STEPS
    assert all(n > 10_000 for n in result.train_instructions)
    assert result.output.stack_bytes > 0
    assert 0 < result.build.static_ram_bytes < 256 * 1024
    report = json.loads((project / "memory_report.json").read_text())
    assert report["planned"]["arena_bytes"] <= result.build.static_ram_bytes


def test_frozen_weights_in_flash_trainable_in_ram(small_program, mcu_run):
    board, project, result = mcu_run
    with open(result.build.elf, "rb") as f:
        symbols = {s.name: s["st_value"] for s in ELFFile(f).get_section_by_name(".symtab").iter_symbols()}
    ram = range(board.ram_origin, board.ram_origin + 256 * 1024)
    flash = range(board.flash_origin, board.flash_origin + 1024 * 1024)
    assert symbols["conv0_0_weight"] in flash
    assert symbols["head_weight"] in ram
    assert symbols["tt_arena"] in ram
    assert not {"malloc", "calloc", "realloc"} & symbols.keys()


def test_instruction_counts_are_deterministic(small_program, tmp_path):
    board = get_board("cortex-m4")
    write_project(small_program, tmp_path / "p", board)
    records = stream_records()[2]
    a = run_stream(board, tmp_path / "p", records)
    b = run_stream(board, tmp_path / "p", records, built=a.build)
    assert a.train_instructions == b.train_instructions


@pytest.mark.parametrize("target, precision", [("host", "int8"), *[(t, "int8") for t in MCUS],
                                               ("cortex-m4", "float32")])
def test_demo_meets_its_bar(target, precision, tmp_path):
    """The README's main job, through the real command line (int8 + QAS by default)."""
    cmd = [sys.executable, "-m", "tvm_tinytrain.cli", "demo", "--target", target, "--json",
           "--out", str(tmp_path / "demo")] + (["--float"] if precision == "float32" else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("target", "ran_on", "steps", "loss_first", "loss_last", "accuracy_before", "accuracy_after",
                "peak_sram_bytes", "flash_bytes", "instructions_per_step"):
        assert key in result
    assert result["target"] == target
    assert result["precision"].startswith(precision)
    assert result["accuracy_after"] >= 0.85
    assert result["accuracy_after"] >= result["accuracy_before"] + 0.4
    assert result["loss_last_window_mean"] < result["loss_first_window_mean"]
    if target == "host":
        assert result["ran_on"] == "host" and result["instructions_per_step"] is None
    else:
        assert result["peak_sram_bytes"] <= 262144
        assert result["flash_bytes"] <= 1024 * 1024
        assert result["instructions_per_step"] > 0
