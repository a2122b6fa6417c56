/*
 * RISC-V (RV32, machine mode on QEMU virt) start-up and trap reports.
 *
 * picolibc's crt0-hosted sets SP, GP and mstatus.FS (FPU on) before main.  A
 * constructor here (run by crt0 before main, so even a main() that forgets
 * board_init() is covered) installs the trap handler and, with a locked PMP entry
 * (locked entries also bind machine mode), makes inaccessible both the stack guard
 * and the unused DRAM between the end of the flash window and the start of RAM.
 * The stack sits at the start of RAM, so any stack overflow lands there and faults.
 *
 * A trap prints one line,
 *   *** FAULT: <cause> at pc=0x........ (<reason>; mcause=.. mtval=0x........)
 * over semihosting and exits with BOARD_FAULT_EXIT_CODE.
 */
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#define BOARD_FAULT_EXIT_CODE 99

#define CSR_WRITE(csr, val) \
    __asm__ volatile(".option push\n\t.option arch, +zicsr\n\tcsrw " #csr ", %0\n\t.option pop" \
                     : : "r"(val) : "memory")

extern uint32_t __flash_end[], __stack_guard_end[];
void board_trap_entry(void);

__attribute__((constructor)) static void board_arch_init(void)
{
    CSR_WRITE(mtvec, (uintptr_t)board_trap_entry);
    /* Entry 0 (off) holds the bottom, entry 1 is TOR: no access to [__flash_end, __stack_guard_end). */
    CSR_WRITE(pmpaddr0, (uintptr_t)__flash_end >> 2);
    CSR_WRITE(pmpaddr1, (uintptr_t)__stack_guard_end >> 2);
    CSR_WRITE(pmpcfg0, 0x8800u); /* entry 1: L | A=TOR, no R/W/X; entry 0: OFF */
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
    if (reporting)              /* a trap while reporting a trap: just stop */
        _exit(BOARD_FAULT_EXIT_CODE);
    reporting = 1;
    uintptr_t lo = (uintptr_t)__flash_end, hi = (uintptr_t)__stack_guard_end;
    int access = mcause == 1 || mcause == 5 || mcause == 7;
    int overflow = access && ((mtval >= lo && mtval < hi) || (sp >= lo && sp < hi));
    const char *why = overflow ? "stack overflow"
                      : access ? "invalid address"
                      : mcause == 2 ? "undefined instruction" : "unexpected trap";
    printf("*** FAULT: %s at pc=0x%08lx (%s; mcause=%lu mtval=0x%08lx)\n", cause_name(mcause),
           (unsigned long)mepc, why, (unsigned long)mcause, (unsigned long)mtval);
    _exit(BOARD_FAULT_EXIT_CODE);
}
