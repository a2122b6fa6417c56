"""Board support: build a C program for a target and run it (natively or on QEMU).

Everything target-specific lives here and in the C/linker files beside this module:

- ``host/board.h``        the one C API every board implements (see that file)
- ``host/board.c``        host implementation (stdio; --persist flash backed by flash_state.bin)
- ``qemu/board.c``        MCU implementation: semihosting input, stack painting, markers,
                          --persist flash backed by flash_state.bin through semihosting
- ``qemu/board.ld.in``    linker-script template; the RAM/flash budget lives there
- ``arm/``, ``riscv/``    fault handlers and the MPU/PMP memory guard per architecture
- ``qemu/insn_count.c``   QEMU TCG plugin counting executed instructions

`write_board_files` copies what a project needs into a folder together with a Makefile,
so the folder builds by hand with plain ``make`` (users get that folder); `build` and
`run` drive it from Python.  Boards:

- ``host``       native gcc -O2, for reference outputs.
- ``cortex-m4``  Cortex-M4F (FPv4-SP, hard float) on QEMU ``mps2-an386``.
- ``cortex-m7``  Cortex-M7 with double-precision FPv5 (``-mfpu=fpv5-d16``, hard float,
                 picolibc multilib ``thumb/v7e-m+dp/hard``) on QEMU ``mps2-an500``;
                 QEMU's Cortex-M7 implements the double-precision FPU.
- ``riscv32``    RV32IMAFC, **hard float** (``-march=rv32imafc -mabi=ilp32f``, picolibc
                 multilib ``rv32imafc/ilp32f``) on QEMU ``virt -bios none``.  QEMU virt
                 has no flash, so "FLASH" and "RAM" are two windows of its DRAM.

All builds use ``-ffp-contract=off`` so float results are bit-identical to the host
build (gcc would otherwise fuse a*b+c into FMA on the MCUs but not on x86-64).

MCU programs link picolibc with ``--crt0=hosted --oslib=semihost``: stdout and input
files go through semihosting, ``main``'s return value becomes QEMU's exit code.  RAM
holds, from its start, the stack (guarded: an overflow faults), .data/.bss, the heap.
The budget is enforced at link time (board.ld) and at run time: start-up code sets up
the MPU (Arm) or PMP (RISC-V) so that any access outside flash (read-only) and the RAM
budget faults, including the unbudgeted RAM of the emulated board and its mirrors.
Faults print one ``*** FAULT: ...`` line and exit with `FAULT_EXIT_CODE`; `run` turns
that, a non-zero exit or a timeout into RunError.
"""

from __future__ import annotations

import hashlib
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tvm_tinytrain.errors import (
    BudgetError,
    BuildError,
    RunError,
    TinyTrainError,
    ToolchainMissingError,
)

__all__ = ["BOARDS", "Board", "BuildResult", "RunResult", "build", "check_sources", "check_toolchain",
           "get_board", "run", "write_board_files"]

TARGETS_DIR = Path(__file__).resolve().parent

#: Exit code the MCU fault/trap handlers use (see arm/board_arm.c, riscv/board_riscv.c).
FAULT_EXIT_CODE = 99
#: Bytes at the bottom of the stack made inaccessible by the MPU/PMP (Armv7-M MPU minimum).
STACK_GUARD_BYTES = 32
#: Granule (bytes) in which the MPU/PMP can bound the RAM budget; a RAM budget is rounded
#: down to a multiple of it in board.ld so the run-time guard covers it exactly.
RAM_GUARD_GRANULE = {"arm": 32, "riscv": 4}
#: Prefix of the one-line fault report printed by the MCU fault handlers.
FAULT_MARKER = "*** FAULT:"
#: Flash sector (erase unit) assumed for the --persist area (board.h BOARD_FLASH_SECTOR_BYTES).
FLASH_SECTOR_BYTES = 4096
#: QEMU's exit code when the instruction-count plugin cut the run (run(stop_after=...)).
CUT_EXIT_CODE = 86

# Which Debian package installs which executable (for ToolchainMissingError).
_DEBIAN_PACKAGE = {
    "gcc": "gcc",
    "make": "make",
    "arm-none-eabi-gcc": "gcc-arm-none-eabi",
    "riscv64-unknown-elf-gcc": "gcc-riscv64-unknown-elf",
    "qemu-system-arm": "qemu-system-arm",
    "qemu-system-riscv32": "qemu-system-misc",
}


@dataclass(frozen=True)
class Board:
    """One build-and-run target.  Instances live in `BOARDS`; use `get_board`."""

    name: str  # "host" | "cortex-m4" | "cortex-m7" | "cortex-m33" | "riscv32"
    description: str  # e.g. "Cortex-M4F on QEMU mps2-an386"
    arch: str  # "host" | "arm" | "riscv": picks the board sources
    cc: str  # C compiler executable
    arch_flags: tuple[str, ...] = ()  # -mcpu/-march/float ABI, used to compile and link
    picolibc_package: str | None = None  # Debian package with picolibc for `cc`
    qemu: str | None = None  # emulator executable, None on the host
    qemu_machine: str = ""  # QEMU -M value, e.g. "mps2-an386"
    qemu_extra_args: tuple[str, ...] = ()  # e.g. ("-bios", "none")
    cpu_label: str = ""  # for RunResult.ran_on, e.g. "Cortex-M7"
    flash_origin: int = 0
    ram_origin: int = 0
    max_flash_bytes: int = 0  # what the emulated board can hold
    max_ram_bytes: int = 0
    thumb: bool = False  # Arm Thumb: symbol addresses carry bit 0
    fpu_rounds: bool = False  # the FPU rounds floats to integers in one instruction (tt_math.h)
    kernel_flags: tuple[str, ...] = ()  # more flags for the kernels, chosen by measurement (bench/speed.py)

    @property
    def is_emulated(self) -> bool:
        """True when the program runs under QEMU (instruction counts available)."""
        return self.qemu is not None

    @property
    def executables(self) -> tuple[str, ...]:
        """Executables `check_toolchain` requires (gcc builds the QEMU plugin)."""
        exes = [self.cc, "make"]
        if self.qemu:
            exes += [self.qemu, "gcc"]
        return tuple(dict.fromkeys(exes))

    @property
    def debian_packages(self) -> tuple[str, ...]:
        """Debian packages that install everything this board needs."""
        pkgs = [_DEBIAN_PACKAGE[e] for e in self.executables]
        if self.picolibc_package:
            pkgs.insert(1, self.picolibc_package)
        return tuple(dict.fromkeys(pkgs))

    @property
    def firmware_name(self) -> str:
        return "build/firmware.elf" if self.is_emulated else "build/firmware"


_MPS2 = dict(flash_origin=0x0000_0000, ram_origin=0x2000_0000,
             max_flash_bytes=4 << 20, max_ram_bytes=4 << 20, thumb=True)

BOARDS: dict[str, Board] = {
    b.name: b
    for b in [
        Board(name="host", description="native host build (gcc)", arch="host", cc="gcc",
              cpu_label="host"),
        Board(name="cortex-m4", description="Cortex-M4F on QEMU mps2-an386", arch="arm",
              cc="arm-none-eabi-gcc",
              arch_flags=("-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"),
              picolibc_package="picolibc-arm-none-eabi", qemu="qemu-system-arm",
              qemu_machine="mps2-an386", cpu_label="Cortex-M4", **_MPS2),
        Board(name="cortex-m7", description="Cortex-M7 (FPv5 double precision) on QEMU mps2-an500",
              arch="arm", cc="arm-none-eabi-gcc",
              arch_flags=("-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-d16", "-mfloat-abi=hard"),
              picolibc_package="picolibc-arm-none-eabi", qemu="qemu-system-arm",
              qemu_machine="mps2-an500", cpu_label="Cortex-M7", fpu_rounds=True, **_MPS2),  # VRINTR
        Board(name="cortex-m33", description="Cortex-M33 (ARMv8-M, DSP, FPv5 single precision) on QEMU mps2-an505",
              arch="arm", cc="arm-none-eabi-gcc",
              arch_flags=("-mcpu=cortex-m33", "-mthumb", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard"),
              picolibc_package="picolibc-arm-none-eabi", qemu="qemu-system-arm",
              qemu_machine="mps2-an505", cpu_label="Cortex-M33", fpu_rounds=True,  # VRINTR
              # the secure aliases it boots in: SSRAM1 for code, SSRAM2+3 for data
              flash_origin=0x1000_0000, ram_origin=0x3800_0000,
              max_flash_bytes=4 << 20, max_ram_bytes=4 << 20, thumb=True),
        Board(name="riscv32", description="RV32IMAFC (hard float) on QEMU virt", arch="riscv",
              cc="riscv64-unknown-elf-gcc",
              arch_flags=("-march=rv32imafc", "-mabi=ilp32f", "-mcmodel=medany"),
              picolibc_package="picolibc-riscv64-unknown-elf", qemu="qemu-system-riscv32",
              qemu_machine="virt", qemu_extra_args=("-bios", "none"), cpu_label="RV32IMAFC",
              flash_origin=0x8000_0000, ram_origin=0x8400_0000,
              max_flash_bytes=32 << 20, max_ram_bytes=16 << 20,
              # no scheduling before register allocation: it hoisted every load of the
              # micro-kernels' register-blocked loops and so spilled their sums (MCUNet's
              # 49 KB step 167.4 -> 156.1 M; on Cortex-M7 it cost resnet8-float 3.7 %)
              kernel_flags=("-fno-schedule-insns",)),
    ]
}


def get_board(name: str) -> Board:
    """The board called `name`; unknown names raise TinyTrainError listing the valid ones."""
    try:
        return BOARDS[name]
    except KeyError:
        raise TinyTrainError(
            f"unknown board {name!r}; valid boards: {', '.join(BOARDS)}") from None


# --------------------------------------------------------------------------- files

_QEMU_COMMON = ("-display", "none", "-monitor", "none", "-serial", "none", "-nodefaults",
                "-chardev", "stdio,id=sh0",
                "-semihosting-config", "enable=on,target=native,chardev=sh0",
                "-icount", "shift=0")


def _qemu_argv(board: Board, elf: str) -> list[str]:
    """QEMU command line: semihosting console on stdio, deterministic -icount."""
    return [board.qemu, "-M", board.qemu_machine, *board.qemu_extra_args, *_QEMU_COMMON,
            "-kernel", elf]


def _board_sources(board: Board) -> dict[str, Path]:
    """Project-folder file name -> source file shipped with tvm-tinytrain."""
    files = {"board.h": TARGETS_DIR / "host" / "board.h"}
    if board.arch == "host":
        files["board.c"] = TARGETS_DIR / "host" / "board.c"
    else:
        files["board.c"] = TARGETS_DIR / "qemu" / "board.c"
        files[f"board_{board.arch}.c"] = TARGETS_DIR / board.arch / f"board_{board.arch}.c"
        files[f"board_{board.arch}.S"] = TARGETS_DIR / board.arch / f"board_{board.arch}.S"
    return files


_MAKEFILE = """\
# Makefile for {name} ({description}), generated by tvm-tinytrain.
#   make          builds {target} from every *.c and *.S in this folder
#   make run      runs it{run_note}
#   make check    only checks that every *.c compiles, with the same flags (no objects:
#                 seconds; tinytrain compile runs it before it writes the folder)
#   make clean
# Needs (Debian/Ubuntu): apt-get install {packages}
# Extra headers: make INCLUDES="-Iinclude -I/some/dir"

# ccache, when installed, caches objects across projects: each carries the same kernels
# file, seconds of -O3 per build. `make CCACHE=` builds without it.
CCACHE   ?= $(shell command -v ccache 2>/dev/null)
CC        = $(CCACHE) {cc}
ARCH      = {arch_flags}
OPT      ?= -O2
INCLUDES ?= -Iinclude
SRCS     ?= $(wildcard *.c)
ASRCS    ?= $(wildcard *.S)
TARGET    = {target}

# The kernels (TVM's loops, nearly all the instructions of a step) get their own flags,
# chosen by measurement (bench/speed.py): unrolled -O3, and no errno or FP-trap semantics
# (the kernels read neither), which gives the same bits as -O2; never -ffast-math, whose
# finite-math assumption would delete the driver's divergence check and tt_math.h's rounding.
# -fno-tree-loop-distribute-patterns keeps the zeroing of an accumulator row a few unrolled
# stores where gcc would call memset (newlib's takes about twice the instructions).
# Flags after those are this board's own (Board.kernel_flags in targets/boards.py).
KERNEL_OPT ?= -O3 -funroll-loops -fno-math-errno -fno-trapping-math -fno-tree-loop-distribute-patterns{kernel_flags}

# -ffp-contract=off: no fused multiply-add, so float results match the host build bit for bit.
CFLAGS_ALL  = $(ARCH){specs}{defines} $(OPT) -Wall -Wextra -ffp-contract=off \\
              -ffunction-sections -fdata-sections -fstack-usage -I. $(INCLUDES) $(CFLAGS)
LDFLAGS_ALL = $(ARCH){ldflags} -Wl,--gc-sections -Wl,-Map=build/firmware.map $(LDFLAGS)
LDLIBS      = -lm
RUN         = {run}

OBJS = $(SRCS:%=build/%.o) $(ASRCS:%=build/%.o)

all: $(TARGET)

$(TARGET): $(OBJS){ld_dep}
\t$(CC) $(LDFLAGS_ALL) -o $@ $(OBJS) $(LDLIBS)

# Objects depend on this Makefile too: a board change (new flags) rebuilds everything.
$(OBJS): Makefile

build/tinytrain_kernels.c.o build/tt_kernels.c.o: OPT = $(KERNEL_OPT)

build/%.c.o: %.c | build
\t$(CC) $(CFLAGS_ALL) -MMD -MP -c -o $@ $<

build/%.S.o: %.S | build
\t$(CC) $(CFLAGS_ALL) -MMD -MP -c -o $@ $<

build:
\tmkdir -p build

run: $(TARGET)
\t$(RUN)

# -fstack-usage would leave an empty .su file per source here
check:
\t$(CC) $(filter-out -fstack-usage,$(CFLAGS_ALL)) -fsyntax-only $(SRCS)

clean:
\trm -rf build

.PHONY: all run check clean
-include $(OBJS:.o=.d)
"""


def _render_makefile(board: Board) -> str:
    if board.is_emulated:
        specs = " --specs=picolibc.specs -DBOARD_MCU=1"
        ldflags = (" --specs=picolibc.specs --oslib=semihost --crt0=hosted -T board.ld"
                   " -Wl,--print-memory-usage")
        run = " ".join(_qemu_argv(board, "$(TARGET)"))
        run_note = f" in {board.qemu} (exit code = main's return value)"
        ld_dep = " board.ld"
    else:
        specs, ldflags, ld_dep = "", "", ""
        run, run_note = "./$(TARGET)", ""
    defines = " -DTT_FPU_ROUNDS=1" if board.fpu_rounds else ""
    return _MAKEFILE.format(
        defines=defines, name=board.name, description=board.description, target=board.firmware_name,
        packages=" ".join(board.debian_packages), cc=board.cc,
        arch_flags=" ".join(board.arch_flags), specs=specs, ldflags=ldflags, run=run,
        run_note=run_note, ld_dep=ld_dep, kernel_flags="".join(" " + f for f in board.kernel_flags))


def persist_area_origin(board: Board, flash_bytes: int, persist_bytes: int) -> int:
    """Address of the --persist flash area: the end of the flash budget, rounded down to a
    flash sector, minus the area."""
    end = board.flash_origin + flash_bytes
    return end - end % FLASH_SECTOR_BYTES - persist_bytes


def _render_linker_script(board: Board, ram_bytes: int, flash_bytes: int,
                          stack_bytes: int, heap_bytes: int, persist_bytes: int = 0) -> str:
    text = (TARGETS_DIR / "qemu" / "board.ld.in").read_text()
    granule = RAM_GUARD_GRANULE[board.arch]
    guarded = ram_bytes - ram_bytes % granule
    rounding = (f"here {ram_bytes} requested, {guarded} usable" if guarded != ram_bytes
                else f"here {ram_bytes} bytes, no rounding")
    code_bytes, persist = flash_bytes, {"PERSIST_MEMORY": "", "PERSIST_PHDR": "",
                                        "PERSIST_SECTION": "",
                                        "PERSIST_NOTE": "This program does not persist."}
    if persist_bytes:
        origin = persist_area_origin(board, flash_bytes, persist_bytes)
        code_bytes = origin - board.flash_origin
        persist = {
            "PERSIST_MEMORY": f"    PERSIST (r) : ORIGIN = 0x{origin:08x}, LENGTH = {persist_bytes}\n",
            "PERSIST_PHDR": "    persist PT_LOAD FLAGS(4);  /* R: the --persist area (no file contents) */\n",
            "PERSIST_SECTION": (
                "    /* --persist: the learned state's two flash slots (tt_persist.h).  NOLOAD: the\n"
                "     * board fills it at run time (board_flash_open), from flash_state.bin on QEMU. */\n"
                "    .tt_persist (NOLOAD) : {\n"
                "        __tt_persist_start = .;\n"
                "        KEEP(*(.tt_persist))\n"
                "        __tt_persist_end = .;\n"
                "    } >PERSIST :persist\n"
                "    ASSERT(__tt_persist_end - __tt_persist_start == LENGTH(PERSIST),\n"
                "           \"board.ld: .tt_persist does not fill the PERSIST region (rebuild the project)\")\n\n"),
            "PERSIST_NOTE": (f"Here: PERSIST is {persist_bytes} bytes\n * at 0x{origin:08x}, "
                             f"code and data get the {code_bytes} bytes before it."),
        }
    values = {
        "BOARD": board.name, "DESCRIPTION": board.description,
        "FLASH_ORIGIN": f"0x{board.flash_origin:08x}", "FLASH_BYTES": str(flash_bytes),
        "FLASH_CODE_BYTES": str(code_bytes), **persist,
        "RAM_ORIGIN": f"0x{board.ram_origin:08x}", "RAM_BYTES": str(guarded),
        "RAM_GRANULE": str(granule), "RAM_ROUNDING": rounding,
        "HEAP_BYTES": str(heap_bytes), "STACK_BYTES": str(stack_bytes),
        "GUARD_BYTES": str(STACK_GUARD_BYTES),
    }
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    assert not re.search(r"@[A-Z_]+@", text), "unrendered placeholder in board.ld.in"
    return text


def write_board_files(board: Board, project_dir: Path, *, ram_bytes: int = 256 * 1024,
                      flash_bytes: int = 1024 * 1024, stack_bytes: int = 8 * 1024,
                      heap_bytes: int = 0, persist_bytes: int = 0) -> None:
    """Copy board.h, board sources, a linker script (MCUs) and a Makefile into project_dir.

    The folder then builds standalone with ``make`` (and runs with ``make run``).  On
    MCUs the linker script's RAM region is `ram_bytes` long and must hold .data, .bss,
    the `heap_bytes` heap and the `stack_bytes` stack (its lowest 32 bytes are a guard),
    so an over-budget program fails to link.  At run time the MPU/PMP makes every access
    outside flash and the RAM budget fault.  On Arm the MPU bounds RAM in 32-byte steps, so
    a `ram_bytes` that is not a multiple of 32 is rounded down to one in board.ld.
    `persist_bytes` (a multiple of FLASH_SECTOR_BYTES; programs compiled with --persist)
    reserves the flash area of the learned state at the end of the flash budget.  The
    sizes are ignored on the host.
    """
    project_dir = Path(project_dir)
    if board.is_emulated:
        sizes = [("ram_bytes", ram_bytes, 8), ("flash_bytes", flash_bytes, 8),
                 ("stack_bytes", stack_bytes, 16), ("heap_bytes", heap_bytes, 8),
                 ("persist_bytes", persist_bytes, FLASH_SECTOR_BYTES)]
        for what, value, multiple in sizes:
            if not isinstance(value, int) or value < 0 or value % multiple:
                raise TinyTrainError(
                    f"{what} must be a non-negative multiple of {multiple}, got {value!r}")
        if persist_bytes and persist_area_origin(board, flash_bytes, persist_bytes) < board.flash_origin:
            raise TinyTrainError(f"the {persist_bytes}-byte persistence area does not fit the "
                                 f"{flash_bytes}-byte flash budget")
        if stack_bytes < 1024:
            raise TinyTrainError(f"stack_bytes must be at least 1024, got {stack_bytes}")
        if ram_bytes > board.max_ram_bytes or flash_bytes > board.max_flash_bytes:
            raise TinyTrainError(
                f"{board.name} ({board.description}) holds at most {board.max_ram_bytes} bytes "
                f"of RAM and {board.max_flash_bytes} of flash; asked for {ram_bytes} and "
                f"{flash_bytes}")
    project_dir.mkdir(parents=True, exist_ok=True)
    # A folder reused for another board must not keep the previous board's sources.
    for stale in ["board.ld", *(f"board_{a}.{e}" for a in ("arm", "riscv") for e in ("c", "S"))]:
        (project_dir / stale).unlink(missing_ok=True)
    for dest, src in _board_sources(board).items():
        shutil.copyfile(src, project_dir / dest)
    if board.is_emulated:
        (project_dir / "board.ld").write_text(
            _render_linker_script(board, ram_bytes, flash_bytes, stack_bytes, heap_bytes,
                                  persist_bytes))
    (project_dir / "Makefile").write_text(_render_makefile(board))


# --------------------------------------------------------------------------- toolchain

def _missing(board: Board, what: str, package: str) -> ToolchainMissingError:
    return ToolchainMissingError(
        f"{what} not found (needed for board {board.name}); install it with: "
        f"apt-get install {package}   (everything for {board.name}: "
        f"apt-get install {' '.join(board.debian_packages)})")


def _require(board: Board, executables: tuple[str, ...]) -> None:
    for exe in executables:
        if shutil.which(exe) is None:
            raise _missing(board, exe, _DEBIAN_PACKAGE.get(exe, exe))


def check_toolchain(board: Board) -> None:
    """Raise ToolchainMissingError naming what is missing and the apt-get line that fixes it."""
    _require(board, board.executables)
    _require_picolibc(board)


def _require_picolibc(board: Board) -> None:
    if board.picolibc_package:
        out = subprocess.run([board.cc, "-print-file-name=picolibc.specs"],
                             capture_output=True, text=True).stdout.strip()
        if not os.path.isabs(out):
            raise _missing(board, f"picolibc for {board.cc}", board.picolibc_package)


# --------------------------------------------------------------------------- build

@dataclass
class BuildResult:
    """A linked program and its static memory footprint."""

    elf: Path
    flash_bytes: int  # text + rodata + data load image (PT_LOAD file sizes) + the --persist area
    static_ram_bytes: int  # .data + .bss (+ TLS); not the reserved heap/stack
    stack_reserved_bytes: int  # the .stack section (0 on the host)
    map_file: Path | None
    persist_flash_bytes: int = 0  # the --persist area (.tt_persist: two state slots), MCUs


# Variables our Makefile reads: keep a caller's environment (e.g. conda's CFLAGS) out.
_MAKE_ENV_SCRUB = ("CCACHE", "CFLAGS", "CPPFLAGS", "LDFLAGS", "LDLIBS", "INCLUDES", "OPT", "SRCS",
                   "ASRCS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")

_OVERFLOW_RE = re.compile(r"region [`']?(\w+)'? overflowed by (\d+) bytes")


def _trim_compiler_output(text: str, max_lines: int = 40) -> str:
    """The lines that matter: errors first (with a little context), capped in length."""
    lines = [ln for ln in text.splitlines()
             if ln.strip() and not re.match(r"make(\[\d+\])?: (\*\*\*|Entering|Leaving)", ln)]
    err = [i for i, ln in enumerate(lines) if "error" in ln.lower() or "undefined reference" in ln]
    if err:
        keep = sorted({j for i in err for j in range(max(0, i - 2), min(len(lines), i + 3))})
        lines = [lines[j] for j in keep]
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... ({len(lines) - max_lines} more lines)"]
    return "\n".join(lines)


def _elf_sizes(board: Board, elf: Path) -> tuple[int, int, int]:
    """(flash, static RAM, reserved stack) bytes, read from segments and section headers.

    Flash is the loadable image (text, rodata, constructor lists, .data's initial values).
    Static RAM is every allocated section in RAM except the reserved .heap and .stack
    (on the host: every writable allocated section)."""
    from elftools.elf.constants import SH_FLAGS
    from elftools.elf.elffile import ELFFile

    with open(elf, "rb") as f:
        ef = ELFFile(f)
        flash = sum(seg["p_filesz"] for seg in ef.iter_segments() if seg["p_type"] == "PT_LOAD")
        ram = stack = 0
        for sec in ef.iter_sections():
            flags, addr = sec["sh_flags"], sec["sh_addr"]
            if not flags & SH_FLAGS.SHF_ALLOC:
                continue
            if board.is_emulated:
                in_ram = board.ram_origin <= addr < board.ram_origin + board.max_ram_bytes
            else:
                in_ram = bool(flags & SH_FLAGS.SHF_WRITE)
            if not in_ram or sec.name in (".heap", ".tbss_space"):
                continue
            if sec.name == ".stack":
                stack = sec["sh_size"]
            else:
                ram += sec["sh_size"]
    return flash, ram, stack


def _section_size(elf: Path, name: str) -> int:
    """Size of an ELF section, 0 if absent."""
    from elftools.elf.elffile import ELFFile

    with open(elf, "rb") as f:
        sec = ELFFile(f).get_section_by_name(name)
        return int(sec["sh_size"]) if sec is not None else 0


def _budget_message(project_dir: Path, region: str, excess: int) -> str:
    """'RAM: needs 1234 bytes more than its 262144-byte budget (...)', sizes from board.ld."""
    budget = "its"
    try:
        text = (project_dir / "board.ld").read_text()
        m = re.search(rf"^\s*{region}\s.*LENGTH\s*=\s*(\d+)", text, re.M)
        budget = f"its {int(m.group(1))}-byte" if m else budget
    except OSError:
        pass
    what = ("the stack, .data, .bss and the heap must fit in it" if region == "RAM"
            else "code, read-only data and .data's initial values must fit in it")
    return f"{region} needs {excess} bytes more than {budget} budget ({what}; see board.ld)"


def build(board: Board, project_dir: Path, *, jobs: int = 2) -> BuildResult:
    """Run ``make`` in project_dir (prepared by `write_board_files`) and size the result.

    Raises BudgetError when RAM or flash overflows the linker script's budget, and
    BuildError with the compiler's (trimmed) message on any other failure.
    """
    check_toolchain(board)
    project_dir = Path(project_dir)
    env = {k: v for k, v in os.environ.items() if k not in _MAKE_ENV_SCRUB}
    proc = subprocess.run(["make", "-C", str(project_dir), f"-j{max(1, jobs)}"],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        output = proc.stderr + "\n" + proc.stdout
        overflows = dict(_OVERFLOW_RE.findall(output))
        if overflows:
            raise BudgetError(f"{board.name}: the program does not fit its memory budget: "
                              + "; ".join(_budget_message(project_dir, region, int(n))
                                          for region, n in overflows.items()))
        message = _trim_compiler_output(proc.stderr) or _trim_compiler_output(proc.stdout)
        raise BuildError(f"{board.name}: build failed in {project_dir}:\n{message}")
    elf = project_dir / board.firmware_name
    flash, ram, stack = _elf_sizes(board, elf)
    persist = _section_size(elf, ".tt_persist") if board.is_emulated else 0
    map_file = project_dir / "build" / "firmware.map"
    return BuildResult(elf=elf, flash_bytes=flash + persist, persist_flash_bytes=persist,
                       static_ram_bytes=ram,
                       stack_reserved_bytes=stack, map_file=map_file if map_file.exists() else None)


MAX_CHECK_ERRORS = 4  # compiler errors quoted by check_sources: the first ones say what is wrong


def check_sources(board: Board, project_dir: Path) -> None:
    """``make check`` in project_dir: every C file compiles for the board with the
    Makefile's flags, syntax and types only (``-fsyntax-only``: no objects, no link, a few
    seconds even for the largest kernels file). Raises BuildError with the compiler's
    first errors. Needs the compiler, its C library and make, not the emulator."""
    _require(board, (board.cc, "make"))
    _require_picolibc(board)
    env = {k: v for k, v in os.environ.items() if k not in _MAKE_ENV_SCRUB}
    proc = subprocess.run(["make", "-s", "-C", str(project_dir), "check"], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        errors = [ln.strip() for ln in proc.stderr.splitlines() if "error:" in ln]
        shown = "\n".join(errors[:MAX_CHECK_ERRORS]) or _trim_compiler_output(proc.stderr + proc.stdout)
        more = f"\n... ({len(errors) - MAX_CHECK_ERRORS} more errors)" if len(errors) > MAX_CHECK_ERRORS else ""
        raise BuildError(f"{board.name} ({board.cc} -fsyntax-only):\n{shown}{more}")


# --------------------------------------------------------------------------- run

@dataclass
class RunResult:
    """What a program printed and, on QEMU, how many instructions it executed."""

    exit_code: int
    lines: list[str]  # program stdout lines
    region_instructions: list[int] = field(default_factory=list)  # per begin..end; [] on host
    # with run(split_at=...): per region, the instruction offsets (from the region's start)
    # at which the split function ran, e.g. the start of every kernel call
    region_splits: list[list[int]] = field(default_factory=list)
    total_instructions: int | None = None  # None on host
    ran_on: str = "host"  # e.g. "qemu-system-arm mps2-an500 (Cortex-M7)"
    # per region: the instructions executed before it began (absolute position in the run)
    region_starts: list[int] = field(default_factory=list)
    # run(stop_after=N) and the run was cut after N instructions: N (else None); then
    # total_instructions is N too and exit_code is CUT_EXIT_CODE
    cut_at: int | None = None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "tvm-tinytrain"
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    path = Path(tempfile.gettempdir()) / f"tvm-tinytrain-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def plugin_path() -> Path:
    """The instruction-counting QEMU plugin, built with host gcc on first use (cached by hash)."""
    src = TARGETS_DIR / "qemu" / "insn_count.c"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    lib = _cache_dir() / f"insn_count-{digest}.so"
    if lib.exists():
        return lib
    if shutil.which("gcc") is None:
        raise ToolchainMissingError("gcc not found (needed to build the QEMU instruction-count "
                                    "plugin); install it with: apt-get install gcc")
    tmp = lib.with_name(f"{lib.name}.{os.getpid()}.tmp")
    proc = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-o", str(tmp), str(src)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"building the QEMU plugin failed:\n{_trim_compiler_output(proc.stderr)}")
    os.replace(tmp, lib)  # atomic: concurrent builders are harmless
    return lib


def symbol_size(elf: Path, name: str) -> int:
    """Size in bytes of a data symbol (e.g. the arena) in a linked program, 0 if absent."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    with open(elf, "rb") as f:
        for sec in ELFFile(f).iter_sections():
            if isinstance(sec, SymbolTableSection):
                for sym in sec.get_symbol_by_name(name) or []:
                    return int(sym["st_size"])
    return 0


def _marker_addresses(board: Board, elf: Path,
                      names: tuple[str, ...] = ("board_mark_begin", "board_mark_end")) -> dict[str, int]:
    """Addresses of functions (by default board_mark_begin/end) from the ELF symbol table
    (Thumb bit cleared)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    found = {}
    with open(elf, "rb") as f:
        for sec in ELFFile(f).iter_sections():
            if isinstance(sec, SymbolTableSection):
                for name in names:
                    for sym in sec.get_symbol_by_name(name) or []:
                        if sym["st_info"]["type"] == "STT_FUNC":
                            found[name] = sym["st_value"] & ~1 if board.thumb else sym["st_value"]
    return found


def _plugin_arg(path: Path) -> str:
    return str(path).replace(",", ",,")  # QEMU option syntax escapes commas by doubling


def _stream(argv: list[str], cwd: Path, timeout_s: float,
            on_line: Callable[[str], None] | None) -> tuple[int | None, list[str], str]:
    """Run argv, streaming stdout lines to on_line; kill it after timeout_s.

    Returns (exit code, or None on timeout; stdout lines; stderr text)."""
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    pending = {out_fd: b"", err_fd: b""}
    lines: list[str] = []

    def emit(raw: bytes) -> None:
        lines.append(raw.decode(errors="replace").rstrip("\r"))
        if on_line:
            on_line(lines[-1])

    deadline = time.monotonic() + timeout_s
    timed_out = False
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(out_fd, selectors.EVENT_READ)
            sel.register(err_fd, selectors.EVENT_READ)
            while sel.get_map() and not timed_out:
                remaining = deadline - time.monotonic()
                timed_out = remaining <= 0
                for key, _ in sel.select(timeout=max(0.0, min(remaining, 1.0))):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fd)
                    pending[key.fd] += chunk
                    if key.fd == out_fd:
                        *complete, pending[out_fd] = pending[out_fd].split(b"\n")
                        for raw in complete:
                            emit(raw)
        if not timed_out:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if proc.poll() is None:  # timeout, or on_line raised: never leave QEMU running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    if pending[out_fd]:
        emit(pending[out_fd])
    return (None if timed_out else proc.returncode), lines, pending[err_fd].decode(errors="replace")


def _tail(lines: list[str], n: int = 8) -> str:
    if not lines:
        return "(no output)"
    return "\n".join(["last output lines:"] + [f"  | {ln}" for ln in lines[-n:]])


def run(board: Board, build: BuildResult, *, cwd: Path, timeout_s: float = 600,
        on_line: Callable[[str], None] | None = None, split_at: str | None = None,
        stop_after: int | None = None) -> RunResult:
    """Run a built program in cwd (host directly, MCUs in QEMU) and collect its output.

    On QEMU the instruction-count plugin reports the instructions executed in every
    board_mark_begin()..board_mark_end() region and in total (-icount shift=0 makes
    them repeatable); with `split_at` (a function name, e.g. "tt_workspace_set"), also the
    instruction offsets inside each region at which that function was called.  Each stdout
    line goes to on_line as it arrives.  A non-zero exit,
    a fault or a timeout raises RunError (QEMU is killed on timeout).

    `stop_after` (QEMU only): end the run, like a power cut, right when that many
    instructions have executed (exact; a callback per instruction slows QEMU down, so
    only when given).  A cut run is no error: it returns with `cut_at` set.  Files the
    program wrote through semihosting (e.g. flash_state.bin) stay as far as it got.
    """
    elf = Path(build.elf).resolve()
    if stop_after is not None and not board.is_emulated:
        raise TinyTrainError("stop_after (a cut after N instructions) needs an emulated board")
    if not board.is_emulated:
        code, lines, err = _stream([str(elf)], Path(cwd), timeout_s, on_line)
        regions, total, splits, ran_on = [], None, [], "host"
        starts, cut_at = [], None
    else:
        _require(board, (board.qemu, "gcc"))  # gcc builds the counting plugin
        tmpdir = tempfile.mkdtemp(prefix="tinytrain-run-")
        counts_file = Path(tmpdir) / "counts.txt"
        marks = _marker_addresses(board, elf)
        plugin = [_plugin_arg(plugin_path())]
        if len(marks) == 2:
            plugin += [f"begin=0x{marks['board_mark_begin']:x}",
                       f"end=0x{marks['board_mark_end']:x}"]
        if split_at:
            split = _marker_addresses(board, elf, (split_at,))
            if not split:
                raise RunError(f"{elf.name} has no function {split_at} to split the count at")
            plugin.append(f"split=0x{split[split_at]:x}")
        if stop_after is not None:
            plugin.append(f"stop={int(stop_after)}")
        plugin.append(f"out={_plugin_arg(counts_file)}")
        argv = _qemu_argv(board, str(elf)) + ["-plugin", ",".join(plugin)]
        ran_on = f"{board.qemu} {board.qemu_machine} ({board.cpu_label})"
        try:
            code, lines, err = _stream(argv, Path(cwd), timeout_s, on_line)
            regions, total, splits, pending = [], None, [], []
            starts, begun, cut_at = [], None, None
            if counts_file.exists():
                for ln in counts_file.read_text().splitlines():
                    key, _, value = ln.partition(" ")
                    if key == "begin":
                        begun = int(value)
                    elif key == "cut":
                        cut_at = total = int(value)
                    elif key == "split":
                        pending.append(int(value))
                    elif key == "region":
                        regions.append(int(value))
                        starts.append(begun)
                        splits.append(pending)
                        pending = []
                    elif key == "total":
                        total = int(value)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    where = f"{board.name} ({ran_on})"
    if cut_at is not None and code == CUT_EXIT_CODE:
        return RunResult(exit_code=code, lines=lines, region_instructions=regions,
                         total_instructions=total, ran_on=ran_on, region_starts=starts,
                         region_splits=splits if split_at else [], cut_at=cut_at)
    if code is None:
        raise RunError(f"{where}: program timed out after {timeout_s:g} s and was killed "
                       f"(an endless loop, or far more work than expected); {_tail(lines)}")
    fault = next((ln[ln.index(FAULT_MARKER):] for ln in lines if FAULT_MARKER in ln), None)
    if fault:
        raise RunError(f"{where}: program crashed with a fault: "
                       f"{fault[len(FAULT_MARKER):].strip()}; {_tail(lines)}")
    if code < 0:
        raise RunError(f"{where}: program crashed with a fault: killed by signal "
                       f"{signal.Signals(-code).name}; {_tail(lines)}")
    if code != 0:
        stderr = "\n".join(ln for ln in err.strip().splitlines() if "has no peer" not in ln)
        extra = f"; stderr: {stderr[-1500:]}" if stderr else ""
        raise RunError(f"{where}: program exited with code {code}{extra}; {_tail(lines)}")
    if board.is_emulated and total is None:
        raise RunError(f"{where}: the instruction-count plugin wrote no total "
                       f"(stderr: {err.strip()[-1500:] or 'empty'})")
    return RunResult(exit_code=code, lines=lines, region_instructions=regions,
                     total_instructions=total, ran_on=ran_on, region_starts=starts,
                     region_splits=splits if split_at else [])
