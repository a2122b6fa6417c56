"""Board support: build one small C program for every board and run it.

The MCU boards need the cross toolchains and QEMU (marked slow); the host board only gcc.
One program covers the run-time behaviours, selected by a mode file in the run directory.
"""

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tvm_tinytrain.errors import (
    BudgetError,
    BuildError,
    RunError,
    TinyTrainError,
    ToolchainMissingError,
)
from tvm_tinytrain.targets.boards import (
    BOARDS,
    build,
    check_toolchain,
    get_board,
    run,
    write_board_files,
)

MAIN_C = r"""
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "board.h"

#if defined(__arm__)
#define BAD_ADDRESS 0x70000000u /* unmapped on QEMU mps2 */
#elif defined(__riscv)
#define BAD_ADDRESS 0xF0000000u /* unmapped on QEMU virt */
#else
#define BAD_ADDRESS 0x10u       /* never mapped on a Linux host */
#endif

volatile uint32_t sink;

#ifdef BOARD_MCU
/* Read one word in every 32-byte granule (the MPU's) of the RAM budget above the stack
 * guard, then write and read back its last word (free: nothing is placed above the heap). */
__attribute__((noinline)) static uint32_t probe_budget(void)
{
    uint32_t sum = 0;
    for (uintptr_t a = BOARD_RAM_START + 32; a < BOARD_RAM_END; a += 32)
        sum += *(volatile uint32_t *)a;
    volatile uint32_t *last = (volatile uint32_t *)(BOARD_RAM_END - 4);
    *last = 0x600DF00Du;
    return sum + *last;
}
#endif

static uint32_t bits(float f) { uint32_t u; memcpy(&u, &f, sizeof u); return u; }

__attribute__((noinline)) static uint32_t deep(void)
{
    volatile uint8_t buf[4096];
    for (int i = 0; i < 4096; i++) buf[i] = (uint8_t)i;
    return buf[100] + buf[4000];
}

__attribute__((noinline)) static uint32_t recurse(uint32_t n)
{
    volatile uint8_t buf[128];
    buf[0] = (uint8_t)n;
    return n == 0 ? 0 : recurse(n + 1) + buf[0];
}

int main(void)
{
    board_init();
    char mode[16] = {0};
    if (board_open_input("mode.txt") != 0) { printf("no mode.txt\n"); return 2; }
    board_read_input(mode, sizeof mode - 1);

    uint8_t data[256];
    size_t n = 0, got;
    if (board_open_input("input.bin") != 0) { printf("no input.bin\n"); return 2; }
    while (n + 7 <= sizeof data && (got = board_read_input(data + n, 7)) > 0)
        n += got;
    printf("read %u bytes\n", (unsigned)n);

    float acc = 0.0f, norm = 0.0f;
    board_mark_begin();
    for (size_t i = 0; i < n; i++) {
        float x = (float)data[i] / 37.0f;
        acc = acc * 0.75f + sqrtf(x + 1.0f) / (1.0f + x * x);
        norm += x * x;
    }
    board_mark_end();
    printf("acc=%08lx norm=%08lx\n", (unsigned long)bits(acc), (unsigned long)bits(norm));
    printf("acc*1000=%ld\n", (long)(acc * 1000.0f));

    if (strncmp(mode, "deep", 4) == 0) sink = deep();
    else if (strncmp(mode, "fault", 5) == 0) sink = *(volatile uint32_t *)(uintptr_t)BAD_ADDRESS;
    else if (strncmp(mode, "overflow", 8) == 0) sink = recurse(1);
    else if (strncmp(mode, "hang", 4) == 0) for (;;) sink++;
#ifdef BOARD_MCU
    else if (strncmp(mode, "inside", 6) == 0) { sink = probe_budget(); printf("inside ok\n"); }
    else if (strncmp(mode, "over", 4) == 0) *(volatile uint32_t *)BOARD_RAM_END = 1u;
    else if (strncmp(mode, "mirror", 6) == 0)  /* mps2: 0x20400000 mirrors 0x20000000 */
        sink = *(volatile uint32_t *)(BOARD_RAM_START + 0x400000u + 0x100u);
#endif
    printf("stack=%lu\n", (unsigned long)board_stack_high_water());
    return 0;
}
"""

BIG_RAM_C = r"""
#include <stdio.h>
#include "board.h"
float big[70000]; /* 280 000 bytes: more than a 256 KB RAM */
int main(void)
{
    board_init();
    for (int i = 0; i < 70000; i++) big[i] = (float)i;
    printf("%ld\n", (long)big[69999]);
    return 0;
}
"""

INPUT = bytes((i * 37 + 11) % 256 for i in range(200))
MCU_BOARDS = [name for name, b in BOARDS.items() if b.is_emulated]
#: 1 198 376 bytes: not a multiple of 32, and its 32-byte floor (0x124920) is the budget
#: whose exact MPU cover needs the most regions (6 for RAM, with flash and stack guard 8).
ODD_BUDGET = 0x124920 + 8


def _param(name):
    return pytest.param(name, marks=pytest.mark.slow) if BOARDS[name].is_emulated else name


ALL = [_param(name) for name in BOARDS]
MCUS = [_param(name) for name in MCU_BOARDS]


def _board(name):
    board = get_board(name)
    try:
        check_toolchain(board)
    except ToolchainMissingError as e:
        # End-to-end tests never skip quietly: a missing toolchain is a broken set-up.
        pytest.fail(str(e))
    return board


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build MAIN_C once per board: name -> (board, project dir, BuildResult)."""
    cache = {}

    def get(name):
        if name not in cache:
            board = _board(name)
            project = tmp_path_factory.mktemp(f"proj-{name}")
            (project / "main.c").write_text(MAIN_C)
            write_board_files(board, project)
            cache[name] = (board, project, build(board, project))
        return cache[name]

    return get


def _run(built, name, mode, tmp_path, **kwargs):
    """Run the program in a fresh directory holding mode.txt and input.bin."""
    board, _, result = built(name)
    cwd = tmp_path / f"run-{mode}"
    cwd.mkdir(exist_ok=True)
    (cwd / "mode.txt").write_text(mode)
    (cwd / "input.bin").write_bytes(INPUT)
    return run(board, result, cwd=cwd, **kwargs)


# ----------------------------------------------------------------- no toolchain needed

def test_board_names_and_lookup():
    assert list(BOARDS) == ["host", "cortex-m4", "cortex-m7", "cortex-m33", "riscv32"]
    assert not get_board("host").is_emulated
    assert all(get_board(n).is_emulated for n in MCU_BOARDS)
    with pytest.raises(TinyTrainError) as err:
        get_board("cortex-m0")
    assert "cortex-m4" in str(err.value) and "riscv32" in str(err.value)


def test_write_board_files_renders_budget(tmp_path):
    board = get_board("cortex-m7")
    write_board_files(board, tmp_path, ram_bytes=320 * 1024, flash_bytes=512 * 1024,
                      stack_bytes=4096, heap_bytes=0)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"board.h", "board.c", "board_arm.c", "board_arm.S", "board.ld", "Makefile"} <= names
    ld = (tmp_path / "board.ld").read_text()
    assert "LENGTH = 327680" in ld and "LENGTH = 524288" in ld and "STACK_BYTES = 4096;" in ld
    assert "@" not in ld
    makefile = (tmp_path / "Makefile").read_text()
    assert "-mfpu=fpv5-d16" in makefile and "mps2-an500" in makefile and "INCLUDES ?= -Iinclude" in makefile


def test_ram_budget_rounds_down_to_the_guard_granule(tmp_path):
    """The Arm MPU bounds RAM in 32-byte steps: board.ld rounds the budget down to one."""
    write_board_files(get_board("cortex-m4"), tmp_path / "arm", ram_bytes=ODD_BUDGET)
    ld = (tmp_path / "arm" / "board.ld").read_text()
    assert f"LENGTH = {ODD_BUDGET - 8}" in ld and "RAM_GRANULE = 32;" in ld
    write_board_files(get_board("riscv32"), tmp_path / "rv", ram_bytes=ODD_BUDGET)
    assert f"LENGTH = {ODD_BUDGET}" in (tmp_path / "rv" / "board.ld").read_text()
    makefile = (tmp_path / "rv" / "Makefile").read_text()
    assert "-DBOARD_MCU=1" in makefile


def test_write_board_files_rejects_bad_sizes(tmp_path):
    with pytest.raises(TinyTrainError):
        write_board_files(get_board("riscv32"), tmp_path, stack_bytes=100)
    with pytest.raises(TinyTrainError):
        write_board_files(get_board("cortex-m4"), tmp_path, ram_bytes=64 << 20)


def test_missing_toolchain_names_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    with pytest.raises(ToolchainMissingError) as err:
        check_toolchain(get_board("cortex-m4"))
    assert "arm-none-eabi-gcc" in str(err.value) and "apt-get install gcc-arm-none-eabi" in str(err.value)
    with pytest.raises(ToolchainMissingError) as err:
        check_toolchain(get_board("riscv32"))
    assert "qemu-system-misc" in str(err.value)


# ----------------------------------------------------------------- build and run

@pytest.mark.parametrize("name", ALL)
def test_output_matches_host_and_counts_are_repeatable(built, name, tmp_path):
    _, _, result = built(name)
    assert result.elf.exists() and result.flash_bytes > 1000
    assert 0 < result.static_ram_bytes < 4096
    streamed = []
    first = _run(built, name, "normal", tmp_path, on_line=streamed.append)
    host = _run(built, "host", "normal", tmp_path)
    assert first.exit_code == 0 and first.lines[0] == "read 200 bytes"
    assert streamed == first.lines
    assert first.lines[:-1] == host.lines[:-1]  # all but the stack line: bit-identical floats
    if not get_board(name).is_emulated:
        assert first.region_instructions == [] and first.total_instructions is None
        return
    assert result.stack_reserved_bytes == 8192
    [region] = first.region_instructions
    assert 5 * len(INPUT) < region < 100 * len(INPUT)
    assert region < first.total_instructions < 1_000_000
    second = _run(built, name, "normal", tmp_path)
    assert second.region_instructions == first.region_instructions
    assert second.total_instructions == first.total_instructions
    assert name in first.ran_on or get_board(name).qemu_machine in first.ran_on


@pytest.mark.parametrize("name", MCUS)
def test_stack_high_water_grows_with_a_big_local_array(built, name, tmp_path):
    normal = int(_run(built, name, "normal", tmp_path).lines[-1].split("=")[1])
    deep = int(_run(built, name, "deep", tmp_path).lines[-1].split("=")[1])
    assert 0 < normal < 2048
    assert deep > 4096 and deep > normal + 2048


@pytest.mark.parametrize("name", ALL)
def test_fault_raises_run_error(built, name, tmp_path):
    with pytest.raises(RunError) as err:
        _run(built, name, "fault", tmp_path, timeout_s=30)
    message = str(err.value)
    assert "fault" in message.lower() and "acc*1000=" in message  # the last output lines
    if get_board(name).is_emulated:
        assert "pc=0x" in message and "invalid address" in message


@pytest.mark.parametrize("name", MCUS)
def test_stack_overflow_is_caught(built, name, tmp_path):
    with pytest.raises(RunError) as err:
        _run(built, name, "overflow", tmp_path, timeout_s=30)
    assert "stack overflow" in str(err.value)


@pytest.mark.parametrize("name", MCUS)
def test_access_past_the_ram_budget_faults(built, name, tmp_path):
    board, _, _ = built(name)
    inside = _run(built, name, "inside", tmp_path)  # the whole budget stays accessible
    assert "inside ok" in inside.lines
    with pytest.raises(RunError) as err:
        _run(built, name, "over", tmp_path, timeout_s=30)
    message, end = str(err.value), board.ram_origin + 256 * 1024
    assert "fault" in message.lower() and "pc=0x" in message
    assert f"address 0x{end:08x} outside the RAM budget [0x{board.ram_origin:08x}, 0x{end:08x})" in message


@pytest.mark.parametrize("name", [n for n in MCUS if BOARDS[n.values[0]].qemu_machine in ("mps2-an386", "mps2-an500")])
def test_mps2_ram_mirror_faults(built, name, tmp_path):
    with pytest.raises(RunError) as err:
        _run(built, name, "mirror", tmp_path, timeout_s=30)
    message = str(err.value)
    assert "MemManage" in message and "address 0x20400100 outside the RAM budget" in message
    assert "mirror of 0x20000100" in message


@pytest.mark.parametrize("name", MCUS)
def test_odd_ram_budget_is_guarded_exactly(name, tmp_path):
    board = _board(name)
    project = tmp_path / "proj"
    project.mkdir()
    (project / "main.c").write_text(MAIN_C)
    write_board_files(board, project, ram_bytes=ODD_BUDGET)
    result = build(board, project)
    (project / "input.bin").write_bytes(INPUT)
    usable = ODD_BUDGET - ODD_BUDGET % (32 if board.arch == "arm" else 4)
    (project / "mode.txt").write_text("inside")
    assert "inside ok" in run(board, result, cwd=project, timeout_s=30).lines
    (project / "mode.txt").write_text("over")
    with pytest.raises(RunError) as err:
        run(board, result, cwd=project, timeout_s=30)
    assert f"address 0x{board.ram_origin + usable:08x} outside the RAM budget" in str(err.value)


@pytest.mark.parametrize("name", ALL)
def test_endless_loop_times_out(built, name, tmp_path):
    with pytest.raises(RunError) as err:
        _run(built, name, "hang", tmp_path, timeout_s=1.5)
    assert "timed out" in str(err.value)


@pytest.mark.parametrize("name", MCUS)
def test_static_data_over_the_ram_budget_fails_to_link(name, tmp_path):
    board = _board(name)
    (tmp_path / "main.c").write_text(BIG_RAM_C)
    write_board_files(board, tmp_path)
    with pytest.raises(BudgetError) as err:
        build(board, tmp_path)
    assert "RAM needs" in str(err.value) and "262144-byte budget" in str(err.value)


@pytest.mark.slow
def test_stack_counts_against_the_ram_budget(tmp_path):
    board = _board("cortex-m4")
    (tmp_path / "main.c").write_text(MAIN_C)
    write_board_files(board, tmp_path, ram_bytes=16 * 1024, stack_bytes=16 * 1024)
    with pytest.raises(BudgetError):
        build(board, tmp_path)


def test_compiler_error_raises_build_error(tmp_path):
    board = _board("host")
    (tmp_path / "main.c").write_text("int main(void) { return undeclared_name; }\n")
    write_board_files(board, tmp_path)
    with pytest.raises(BuildError) as err:
        build(board, tmp_path)
    assert "undeclared_name" in str(err.value)


@pytest.mark.parametrize("name", ALL)
def test_generated_folder_builds_and_runs_with_plain_make(built, name, tmp_path):
    board, project, _ = built(name)
    folder = tmp_path / "by-hand"
    shutil.copytree(project, folder, ignore=shutil.ignore_patterns("build"))
    (folder / "mode.txt").write_text("normal")
    (folder / "input.bin").write_bytes(INPUT)
    env = {k: v for k, v in os.environ.items() if k not in ("CFLAGS", "LDFLAGS", "MAKEFLAGS")}
    subprocess.run(["make"], cwd=folder, env=env, check=True, capture_output=True)
    assert (folder / board.firmware_name).read_bytes()[:4] == b"\x7fELF"
    out = subprocess.run(["make", "-s", "run"], cwd=folder, env=env, check=True,
                         capture_output=True, text=True, timeout=60)
    assert "read 200 bytes" in out.stdout


def test_board_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_board("host").name = "other"  # type: ignore[misc]
