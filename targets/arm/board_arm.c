/*
 * Cortex-M (ARMv7-M: M4, M7; ARMv8-M Mainline: M33) start-up and fault reports.
 *
 * picolibc's crt0-hosted enables the FPU (CPACR) before main.  A constructor here
 * (run by crt0 before main, so even a main() that forgets board_init() is covered)
 * enables the MemManage/BusFault/UsageFault handlers and programs the MPU so that the
 * program can touch nothing but its flash and its RAM budget:
 *
 *   - MPU_CTRL.PRIVDEFENA = 0: the default memory map is NOT a background region, so
 *     any access that hits no enabled region faults (MemManage), privileged or not.
 *     The System Control Space (SCB, MPU, SysTick: 0xE0000000-0xE00FFFFF) is always
 *     accessible whatever the MPU says, and the HardFault handler runs with the MPU
 *     off (HFNMIENA = 0).  Semihosting is a BKPT plus memory in RAM/flash.  So the
 *     "rest of the world" (the unbudgeted SRAM above __ram_end, its mps2 mirror at
 *     0x20400000, the PSRAM at 0x21000000, the flash mirror, peripherals, ...) faults.
 *   - region 0: flash [__flash_start, __flash_end), read-only, executable.  One region
 *     of 2^k bytes with subregions: rounded UP to 1/8 of that size (not RAM; the flash
 *     budget itself is enforced by the linker).
 *   - regions 1..: the RAM budget [__ram_start, __ram_end), read-write, never
 *     executable, covered EXACTLY by the fewest aligned power-of-two regions with
 *     subregion-disable bits (a greedy interval cover, see ram_cover()).  board.ld
 *     makes the budget a multiple of 32 bytes (the MPU granule); every such budget up
 *     to 4 MB needs at most 6 regions, so 8 MPU regions always suffice.
 *   - the highest region: the stack guard [__stack_limit, __stack_guard_end) at the
 *     start of RAM, no access (higher region numbers win where regions overlap).
 *     Below RAM nothing is mapped, so any stack overflow, however large the frame,
 *     faults.
 *
 * ARMv8-M (Cortex-M33) has another MPU: regions are [base, limit] in 32-byte steps, with
 * no subregions, and may not overlap.  There, region 0 is the flash as above (its end
 * rounded up to 32 bytes), region 1 the RAM budget above the stack guard
 * [__stack_guard_end, __ram_end), and the guard, below it, is simply in no region.
 *
 * All of this is done once at start-up and costs nothing afterwards.
 *
 * A fault prints one line,
 *   *** FAULT: <type> at pc=0x........ (<reason>; cfsr=... hfsr=... addr=...)
 * over semihosting and exits with BOARD_FAULT_EXIT_CODE.  After a stack overflow the
 * exception frame could not be saved, so the pc is "unknown".  An access outside the
 * RAM budget reports "address 0x... outside the RAM budget [start, end)".
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
#define MPU_TYPE REG(0xE000ED90)
#define MPU_CTRL REG(0xE000ED94)
#define MPU_RNR REG(0xE000ED98)
#define MPU_RBAR REG(0xE000ED9C)
#define MPU_RASR REG(0xE000EDA0)

/* MPU_RASR fields (ARMv7-M). */
#define RASR_XN (1u << 28)
#define RASR_AP_NONE (0u << 24)
#define RASR_AP_RW (3u << 24)                 /* read-write, privileged and unprivileged */
#define RASR_AP_RO (6u << 24)                 /* read-only, privileged and unprivileged */
#define RASR_FLASH (2u << 16)                 /* TEX=000 C=1 B=0: normal, write-through */
#define RASR_SRAM ((1u << 19) | (3u << 16))   /* TEX=001 C=1 B=1: normal, write-back */
#define RASR_SRD(bits) ((uint32_t)(bits) << 8) /* subregion-disable bits */
#define RASR_SIZE(log2) ((uint32_t)((log2) - 1u) << 1) /* region size 2^log2 bytes */
#define RASR_ENABLE 1u

#define BOARD_FAULT_EXIT_CODE 99

/* The ARMv7-M "SRAM" region of the memory map: on mps2 the SSRAM (0x20000000), its
 * mirror (0x20400000), the PSRAM (0x21000000) and the bit-band alias all live here.
 * An access in it outside the budget is reported as "outside the RAM budget". */
#define SRAM_AREA_START 0x20000000u
#define SRAM_AREA_END 0x40000000u
/* QEMU mps2-an386/an500: 4 MB of SSRAM at 0x20000000, mirrored at 0x20400000. */
#define MPS2_SSRAM_BYTES 0x00400000u
/* How far below RAM an access still counts as a stack overflow (one huge frame). */
#define BELOW_RAM_OVERFLOW_BYTES (16u << 20)

/* From board.ld. */
extern uint32_t __stack_limit[], __stack_guard_end[];
extern uint32_t __flash_start[], __flash_end[], __ram_start[], __ram_end[];

/* Report a guard that cannot be set up (never happens with a board.ld we generated). */
static void guard_setup_failed(const char *what)
{
    printf("*** FAULT: MPU set-up failed at pc=unknown (%s; RAM budget [0x%08lx, 0x%08lx))\n",
           what, (unsigned long)(uintptr_t)__ram_start, (unsigned long)(uintptr_t)__ram_end);
    _exit(BOARD_FAULT_EXIT_CODE);
}

#if !defined(__ARM_ARCH_8M_MAIN__)
static void mpu_region(uint32_t n, uint32_t base, uint32_t rasr)
{
    MPU_RNR = n;
    MPU_RBAR = base;
    MPU_RASR = rasr;
}

/* One greedy step of covering [start, end) from `at`: the MPU region (2^log2 bytes at
 * base, subregions srd disabled) that contains `at`, lies inside [start, end) and
 * reaches furthest.  Regions may overlap what earlier steps covered (same rights).
 * Greedy max-reach is an optimal interval cover.  Returns the new `at` (== at: no
 * region fits, i.e. the range is not a multiple of 32 bytes). */
static uint64_t ram_cover(uint64_t at, uint64_t start, uint64_t end,
                          uint32_t *base, uint32_t *log2, uint32_t *srd)
{
    uint64_t best = at;
    for (uint32_t k = 5; k <= 31; k++) {
        uint64_t size = 1ull << k, b = at & ~(size - 1), reach;
        uint32_t disabled = 0;
        if (k >= 8) {   /* eight subregions of size/8 */
            uint64_t unit = size >> 3, first = (at - b) / unit, last;
            if (b + first * unit < start || b + (first + 1) * unit > end)
                continue;
            last = (end - b) / unit;
            if (last > 8)
                last = 8;
            reach = b + last * unit;
            disabled = (uint32_t)(0xffu & ~(((1u << last) - 1u) & ~((1u << first) - 1u)));
        } else {
            if (b < start || b + size > end)
                continue;
            reach = b + size;
        }
        if (reach > best) {
            best = reach;
            *base = (uint32_t)b;
            *log2 = k;
            *srd = disabled;
        }
    }
    return best;
}

#endif

#if defined(__ARM_ARCH_8M_MAIN__)
#define MPU_RLAR REG(0xE000EDA0)
#define MPU_MAIR0 REG(0xE000EDC0)
#define RBAR_XN 1u
#define RBAR_AP_RW (1u << 1)                  /* read-write, privileged and unprivileged */
#define RBAR_AP_RO (3u << 1)                  /* read-only, privileged and unprivileged */
#define RLAR_ENABLE 1u                        /* attribute index 0: MAIR0 byte 0 */

/* [start, end) as region n: end rounded up to the 32-byte granule. */
static void mpu8_region(uint32_t n, uint32_t start, uint32_t end, uint32_t rbar_flags)
{
    MPU_RNR = n;
    MPU_RBAR = (start & ~31u) | rbar_flags;
    MPU_RLAR = ((end - 1u) & ~31u) | RLAR_ENABLE;
}

__attribute__((constructor)) static void board_arch_init(void)
{
    if (((MPU_TYPE >> 8) & 0xffu) < 2)
        guard_setup_failed("the MPU has fewer than 2 regions");
    MPU_CTRL = 0;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
    MPU_MAIR0 = 0xffu;              /* attribute 0: normal memory, write-back cacheable */
    mpu8_region(0, (uint32_t)(uintptr_t)__flash_start, (uint32_t)(uintptr_t)__flash_end, RBAR_AP_RO);
    mpu8_region(1, (uint32_t)(uintptr_t)__stack_guard_end, (uint32_t)(uintptr_t)__ram_end,
                RBAR_AP_RW | RBAR_XN);
    MPU_CTRL = 1u;                   /* ENABLE; PRIVDEFENA = 0: no background map; HFNMIENA = 0 */
    SCB_SHCSR |= (1u << 16) | (1u << 17) | (1u << 18); /* MemManage, BusFault, UsageFault */
    __asm__ volatile("dsb\n\tisb" ::: "memory");
}
#else
__attribute__((constructor)) static void board_arch_init(void)
{
    uint32_t regions = (MPU_TYPE >> 8) & 0xffu;
    if (regions < 3)
        guard_setup_failed("the MPU has fewer than 3 regions");
    MPU_CTRL = 0;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
    for (uint32_t n = 0; n < regions; n++)
        mpu_region(n, 0, 0);

    /* Region 0: flash, read-only and executable, rounded up to 1/8 of a 2^k region. */
    uint32_t fs = (uint32_t)(uintptr_t)__flash_start, fe = (uint32_t)(uintptr_t)__flash_end;
    for (uint32_t k = 5; k <= 31; k++) {
        uint64_t size = 1ull << k, b = fs & ~(size - 1);
        if (b + size < fe)
            continue;
        uint32_t srd = 0;
        if (k >= 8) {
            uint64_t unit = size >> 3, first = (fs - b) / unit, last = (fe - b + unit - 1) / unit;
            srd = 0xffu & ~(((1u << last) - 1u) & ~((1u << first) - 1u));
        }
        mpu_region(0, (uint32_t)b,
                   RASR_AP_RO | RASR_FLASH | RASR_SRD(srd) | RASR_SIZE(k) | RASR_ENABLE);
        break;
    }

    /* Regions 1..regions-2: the RAM budget, exactly. */
    uint64_t start = (uintptr_t)__ram_start, end = (uintptr_t)__ram_end, at = start;
    uint32_t n = 1;
    while (at < end) {
        uint32_t base = 0, log2 = 0, srd = 0;
        uint64_t next = ram_cover(at, start, end, &base, &log2, &srd);
        if (next == at)
            guard_setup_failed("the RAM budget is not a multiple of 32 bytes");
        if (n >= regions - 1)
            guard_setup_failed("not enough MPU regions to cover the RAM budget");
        mpu_region(n++, base, RASR_XN | RASR_AP_RW | RASR_SRAM | RASR_SRD(srd) |
                                  RASR_SIZE(log2) | RASR_ENABLE);
        at = next;
    }

    /* The highest region wins: the stack guard (32 bytes, 32-aligned by board.ld). */
    uint32_t guard = (uint32_t)(uintptr_t)__stack_limit;
    mpu_region(regions - 1, guard, RASR_XN | RASR_AP_NONE | RASR_SRAM | RASR_SIZE(5) | RASR_ENABLE);

    MPU_CTRL = 1u;                   /* ENABLE; PRIVDEFENA = 0: no background map; HFNMIENA = 0 */
    SCB_SHCSR |= (1u << 16) | (1u << 17) | (1u << 18); /* MemManage, BusFault, UsageFault */
    __asm__ volatile("dsb\n\tisb" ::: "memory");
}
#endif

static const char *fault_reason(uint32_t cfsr, uint32_t hfsr, uint32_t *addr, char *buf,
                                size_t len)
{
    uint32_t mmfar = SCB_MMFAR, bfar = SCB_BFAR;
    int mm_valid = cfsr & (1u << 7), bf_valid = cfsr & (1u << 15);
    uintptr_t ram_start = (uintptr_t)__ram_start, ram_end = (uintptr_t)__ram_end;
    *addr = mm_valid ? mmfar : bf_valid ? bfar : 0;
    int below = mm_valid && mmfar < (uintptr_t)__stack_guard_end &&
                mmfar >= (uintptr_t)__stack_limit - BELOW_RAM_OVERFLOW_BYTES;
    if ((cfsr & (1u << 4)) || (cfsr & (1u << 12)) || below)
        return "stack overflow";
    if ((mm_valid || bf_valid) && *addr >= SRAM_AREA_START && *addr < SRAM_AREA_END &&
        (*addr < ram_start || *addr >= ram_end)) {
        int n = snprintf(buf, len, "address 0x%08lx outside the RAM budget [0x%08lx, 0x%08lx)",
                         (unsigned long)*addr, (unsigned long)ram_start, (unsigned long)ram_end);
        uint32_t mirror = SRAM_AREA_START + MPS2_SSRAM_BYTES;
        if (n > 0 && (size_t)n < len && *addr >= mirror && *addr < mirror + MPS2_SSRAM_BYTES)
            snprintf(buf + n, len - (size_t)n, ", the mps2 mirror of 0x%08lx",
                     (unsigned long)(*addr - MPS2_SSRAM_BYTES));
        return buf;
    }
    if (cfsr & (1u << 0))
        return "instruction fetch from a no-execute or invalid address";
    if ((cfsr & (1u << 1)) && mm_valid && mmfar >= (uintptr_t)__flash_start &&
        mmfar < (uintptr_t)__flash_end)
        return "write to read-only flash";
    if (cfsr & (1u << 1))
        return "data access to an invalid address (outside flash and the RAM budget)";
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
    static char reason[128];
    (void)frame;
    if (reporting)              /* a fault while reporting a fault: just stop */
        _exit(BOARD_FAULT_EXIT_CODE);
    reporting = 1;
    uint32_t cfsr = SCB_CFSR, hfsr = SCB_HFSR, addr;
    const char *why = fault_reason(cfsr, hfsr, &addr, reason, sizeof reason);
    char pc_text[16] = "unknown";
    if (pc != 0xffffffffu)
        snprintf(pc_text, sizeof pc_text, "0x%08lx", (unsigned long)pc);
    printf("*** FAULT: %s at pc=%s (%s; cfsr=0x%08lx hfsr=0x%08lx addr=0x%08lx)\n",
           names[kind & 3], pc_text, why, (unsigned long)cfsr, (unsigned long)hfsr,
           (unsigned long)addr);
    _exit(BOARD_FAULT_EXIT_CODE);
}
