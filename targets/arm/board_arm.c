/*
 * Cortex-M (ARMv7-M) start-up and fault reports.
 *
 * picolibc's crt0-hosted enables the FPU (CPACR) before main.  A constructor here
 * (run by crt0 before main, so even a main() that forgets board_init() is covered)
 * enables the MemManage/BusFault/UsageFault handlers and uses the MPU to make
 * inaccessible the stack guard at the start of RAM (region 0) and the 16 MB below
 * RAM (region 1; on QEMU mps2 that is a "reserved" window where writes vanish
 * silently).  The stack sits at the start of RAM, so any overflow faults.
 *
 * A fault prints one line,
 *   *** FAULT: <type> at pc=0x........ (<reason>; cfsr=... hfsr=... addr=...)
 * over semihosting and exits with BOARD_FAULT_EXIT_CODE.  After a stack overflow the
 * exception frame could not be saved, so the pc is "unknown".
 */
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#define REG(addr) (*(volatile uint32_t *)(addr))
#define SCB_SHCSR REG(0xE000ED24)
#define SCB_CFSR REG(0xE000ED28)
#define SCB_HFSR REG(0xE000ED2C)
#define SCB_MMFAR REG(0xE000ED34)
#define SCB_BFAR REG(0xE000ED38)
#define MPU_CTRL REG(0xE000ED94)
#define MPU_RNR REG(0xE000ED98)
#define MPU_RBAR REG(0xE000ED9C)
#define MPU_RASR REG(0xE000EDA0)

#define BOARD_FAULT_EXIT_CODE 99

extern uint32_t __stack_limit[], __stack_guard_end[];

/* Configure one MPU region as no-access; size a power of two >= 32, base aligned to it. */
static void mpu_no_access(uint32_t region, uint32_t base, uint32_t size)
{
    uint32_t size_field = 31u - (uint32_t)__builtin_clz(size) - 1u; /* size = 2^(field+1) */
    MPU_RNR = region;
    MPU_RBAR = base;
    MPU_RASR = (1u << 28)     /* XN */
               | (0u << 24)   /* AP = no access */
               | (size_field << 1)
               | 1u;          /* enable */
}

__attribute__((constructor)) static void board_arch_init(void)
{
    uint32_t guard = (uint32_t)(uintptr_t)__stack_limit;
    mpu_no_access(0, guard, (uint32_t)((uintptr_t)__stack_guard_end - guard));
    mpu_no_access(1, (guard - (16u << 20)) & ~((16u << 20) - 1u), 16u << 20);
    MPU_CTRL = (1u << 2) | 1u;       /* PRIVDEFENA (default map elsewhere) | ENABLE */
    SCB_SHCSR |= (1u << 16) | (1u << 17) | (1u << 18); /* MemManage, BusFault, UsageFault */
    __asm__ volatile("dsb\n\tisb" ::: "memory");
}

static const char *fault_reason(uint32_t cfsr, uint32_t hfsr, uint32_t *addr)
{
    uint32_t mmfar = SCB_MMFAR, bfar = SCB_BFAR;
    int mm_valid = cfsr & (1u << 7), bf_valid = cfsr & (1u << 15);
    *addr = mm_valid ? mmfar : bf_valid ? bfar : 0;
    int below = mm_valid && mmfar < (uintptr_t)__stack_guard_end &&
                mmfar >= (((uintptr_t)__stack_limit - (16u << 20)) & ~((16u << 20) - 1u));
    if ((cfsr & (1u << 4)) || (cfsr & (1u << 12)) || below)
        return "stack overflow";
    if (cfsr & (1u << 0))
        return "instruction fetch from a no-execute or invalid address";
    if (cfsr & (1u << 1))
        return "data access violation";
    if (cfsr & (1u << 8))
        return "instruction fetch from an invalid address";
    if (cfsr & (1u << 9))
        return "data access to an invalid address";
    if (cfsr & (1u << 10))
        return "imprecise data bus error";
    if (cfsr & (1u << 16))
        return "undefined instruction";
    if (cfsr & (1u << 17))
        return "invalid state (branch to an address without the Thumb bit?)";
    if (cfsr & (1u << 18))
        return "invalid exception return";
    if (cfsr & (1u << 19))
        return "coprocessor (FPU) disabled";
    if (cfsr & (1u << 24))
        return "unaligned access";
    if (cfsr & (1u << 25))
        return "divide by zero";
    if (hfsr & (1u << 1))
        return "vector table read error";
    return "unknown";
}

/* Called from board_arm.S on the top of the stack; never returns. */
void board_fault_report(uint32_t kind, uint32_t *frame, uint32_t pc)
{
    static const char *const names[] = {"HardFault", "MemManage", "BusFault", "UsageFault"};
    static volatile int reporting;
    (void)frame;
    if (reporting)              /* a fault while reporting a fault: just stop */
        _exit(BOARD_FAULT_EXIT_CODE);
    reporting = 1;
    uint32_t cfsr = SCB_CFSR, hfsr = SCB_HFSR, addr;
    const char *why = fault_reason(cfsr, hfsr, &addr);
    char pc_text[16] = "unknown";
    if (pc != 0xffffffffu)
        snprintf(pc_text, sizeof pc_text, "0x%08lx", (unsigned long)pc);
    printf("*** FAULT: %s at pc=%s (%s; cfsr=0x%08lx hfsr=0x%08lx addr=0x%08lx)\n",
           names[kind & 3], pc_text, why, (unsigned long)cfsr, (unsigned long)hfsr,
           (unsigned long)addr);
    _exit(BOARD_FAULT_EXIT_CODE);
}
