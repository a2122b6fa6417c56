/*
 * board.c for microcontrollers run under QEMU (Cortex-M and RISC-V alike).
 *
 * Input files come from the host through semihosting, using picolibc's sys_semihost_*
 * calls directly: fopen() may malloc and the heap is 0 bytes by default.  Start-up
 * details that differ per architecture (fault handlers, MPU/PMP stack guard) live in
 * board_arm.c / board_riscv.c.
 */
#include <semihost.h>
#include <stdint.h>

#include "board.h"

/* From board.ld: the usable stack is [__stack_guard_end, __stack). */
extern uint32_t __stack_guard_end[], __stack[];

#define STACK_PAINT 0xC5AC5AC5u

static int input_fd = -1;
static int stack_painted;

void board_init(void)
{
    /* Paint from the bottom of the stack up to a little below our own frame. */
    volatile uint32_t here;
    uint32_t *top = (uint32_t *)((uintptr_t)&here & ~(uintptr_t)3) - 32;
    for (uint32_t *p = __stack_guard_end; p < top; p++)
        *p = STACK_PAINT;
    stack_painted = 1;
}

uint32_t board_stack_high_water(void)
{
    if (!stack_painted)
        return 0;
    uint32_t *p = __stack_guard_end;
    while (p < __stack && *p == STACK_PAINT)
        p++;
    return (uint32_t)((uintptr_t)__stack - (uintptr_t)p);
}

int board_open_input(const char *path)
{
    if (input_fd >= 0)
        sys_semihost_close(input_fd);
    input_fd = sys_semihost_open(path, SH_OPEN_R_B);
    return input_fd >= 0 ? 0 : -1;
}

size_t board_read_input(void *buf, size_t n)
{
    if (input_fd < 0 || n == 0)
        return 0;
    /* SYS_READ returns the number of bytes NOT read. */
    uintptr_t left = sys_semihost_read(input_fd, buf, n);
    return left > n ? 0 : n - left;
}

/* The QEMU instruction-counting plugin watches the first instruction of these two
 * functions.  noipa keeps them out of line and distinct (no identical-code folding). */
__attribute__((noinline, noipa)) void board_mark_begin(void) { __asm__ volatile("" ::: "memory"); }
__attribute__((noinline, noipa)) void board_mark_end(void) { __asm__ volatile("" ::: "memory"); }
