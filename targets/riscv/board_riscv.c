/*
 * RISC-V (RV32, machine mode on QEMU virt) start-up and trap reports.
 *
 * picolibc's crt0-hosted sets SP, GP and mstatus.FS (FPU on) before main.  A
 * constructor here (run by crt0 before main, so even a main() that forgets
 * board_init() is covered) installs the trap handler and programs the PMP so that the
 * program can touch nothing but its flash window and its RAM budget.  The program
 * stays in machine mode; every entry is LOCKED, and locked entries bind machine mode
 * too (an M-mode access that matches no entry would succeed, hence entry 4).  The
 * lowest-numbered matching entry wins:
 *
 *   entry 0  OFF    bottom of entry 1 (__flash_start)
 *   entry 1  TOR    [__flash_start, __flash_end)       R-X   code, read-only data
 *   entry 2  TOR    [__flash_end, __stack_guard_end)   ---   the gap below RAM and the
 *                                                            stack guard: an overflow faults
 *   entry 3  TOR    [__stack_guard_end, __ram_end)     RW-   the rest of the RAM budget
 *   entry 4  NAPOT  the whole address space            ---   everything else
 *
 * TOR bounds have 4-byte granularity and board.ld keeps the budget a multiple of 8, so
 * the RAM budget is covered exactly.  Locked entries cannot be changed until reset;
 * they are written allow-first so the hart never locks itself out mid-way.  All of
 * this is done once at start-up and costs nothing afterwards.  (Semihosting is an
 * ebreak; QEMU reads its arguments with debug accesses, which bypass the PMP.)
 *
 * A trap prints one line,
 *   *** FAULT: <cause> at pc=0x........ (<reason>; mcause=.. mtval=0x........)
 * over semihosting and exits with BOARD_FAULT_EXIT_CODE.  An access outside the RAM
 * budget reports "address 0x... outside the RAM budget [start, end)".
 */
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#define BOARD_FAULT_EXIT_CODE 99

/* QEMU virt's DRAM (default -m 128M): an access in it above the budget is reported as
 * "outside the RAM budget". */
#define DRAM_END 0x88000000u

#define PMP_R 0x01u
#define PMP_W 0x02u
#define PMP_X 0x04u
#define PMP_TOR 0x08u
#define PMP_NAPOT 0x18u
#define PMP_L 0x80u

#define CSR_WRITE(csr, val) \
    __asm__ volatile(".option push\n\t.option arch, +zicsr\n\tcsrw " #csr ", %0\n\t.option pop" \
                     : : "r"(val) : "memory")

/* From board.ld. */
extern uint32_t __stack_guard_end[];
extern uint32_t __flash_start[], __flash_end[], __ram_start[], __ram_end[];
void board_trap_entry(void);

__attribute__((constructor)) static void board_arch_init(void)
{
    CSR_WRITE(mtvec, (uintptr_t)board_trap_entry);
    CSR_WRITE(pmpaddr0, (uintptr_t)__flash_start >> 2);
    CSR_WRITE(pmpaddr1, (uintptr_t)__flash_end >> 2);
    CSR_WRITE(pmpaddr2, (uintptr_t)__stack_guard_end >> 2);
    CSR_WRITE(pmpaddr3, (uintptr_t)__ram_end >> 2);
    CSR_WRITE(pmpaddr4, 0xffffffffu);  /* NAPOT, all ones: the whole address space */
    CSR_WRITE(pmpcfg0, ((PMP_L | PMP_TOR | PMP_R | PMP_W) << 24) | ((PMP_L | PMP_TOR) << 16) |
                           ((PMP_L | PMP_TOR | PMP_R | PMP_X) << 8));
    CSR_WRITE(pmpcfg1, PMP_L | PMP_NAPOT);
}

static const char *cause_name(uint32_t mcause)
{
    static const char *const names[] = {
        "Instruction address misaligned", "Instruction access fault", "Illegal instruction",
        "Breakpoint", "Load address misaligned", "Load access fault",
        "Store address misaligned", "Store access fault", "Environment call from U-mode",
        "Environment call from S-mode", "Reserved", "Environment call from M-mode",
    };
    if (mcause & 0x80000000u)
        return "Unexpected interrupt";
    return mcause < sizeof names / sizeof names[0] ? names[mcause] : "Unknown trap";
}

/* Called from board_riscv.S on the top of the stack; never returns. */
void board_trap_report(uint32_t mcause, uint32_t mepc, uint32_t mtval, uint32_t sp)
{
    static volatile int reporting;
    static char reason[128];
    if (reporting)              /* a trap while reporting a trap: just stop */
        _exit(BOARD_FAULT_EXIT_CODE);
    reporting = 1;
    uintptr_t lo = (uintptr_t)__flash_end, hi = (uintptr_t)__stack_guard_end;
    uintptr_t ram_start = (uintptr_t)__ram_start, ram_end = (uintptr_t)__ram_end;
    int access = mcause == 1 || mcause == 5 || mcause == 7;
    int overflow = access && ((mtval >= lo && mtval < hi) || (sp >= lo && sp < hi));
    const char *why = overflow ? "stack overflow"
                      : access && mcause != 1 && mtval >= ram_end && mtval < DRAM_END ? reason
                      : mcause == 7 && mtval >= (uintptr_t)__flash_start && mtval < lo
                          ? "write to read-only flash"
                      : mcause == 1 ? "instruction fetch from a non-executable or invalid address"
                      : access ? "invalid address"
                      : mcause == 2 ? "undefined instruction" : "unexpected trap";
    if (why == reason)
        snprintf(reason, sizeof reason, "address 0x%08lx outside the RAM budget [0x%08lx, 0x%08lx)",
                 (unsigned long)mtval, (unsigned long)ram_start, (unsigned long)ram_end);
    printf("*** FAULT: %s at pc=0x%08lx (%s; mcause=%lu mtval=0x%08lx)\n", cause_name(mcause),
           (unsigned long)mepc, why, (unsigned long)mcause, (unsigned long)mtval);
    _exit(BOARD_FAULT_EXIT_CODE);
}
