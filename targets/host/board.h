/*
 * board.h: the few services a tvm-tinytrain program needs from its board.
 *
 * The same API on every target (host, Cortex-M on QEMU mps2, RISC-V on QEMU virt),
 * so one main.c builds everywhere.  Output goes through plain printf (integers,
 * strings, %08lx hex; do not rely on float formatting).  Nothing here allocates.
 */
#ifndef TINYTRAIN_BOARD_H
#define TINYTRAIN_BOARD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Call first in main().  Paints the unused stack so board_stack_high_water() works. */
void board_init(void);

/* Open a host file for reading, path relative to the directory the program runs in
 * (semihosting on MCUs, stdio on the host).  One input file is open at a time; opening
 * another closes the previous one.  Returns 0 on success, -1 on failure. */
int board_open_input(const char *path);

/* Read up to n bytes from the open input into buf; returns the bytes read (0 at end). */
size_t board_read_input(void *buf, size_t n);

/* Instruction-count region markers.  On QEMU the runner counts the instructions
 * executed from each board_mark_begin() to the following board_mark_end() (the
 * region's code plus 2-3 instructions of call overhead); on the host they do
 * nothing.  Regions must not nest. */
void board_mark_begin(void);
void board_mark_end(void);

/* Bytes of stack ever used since board_init() (stack painting; includes the
 * frames of main and of the C start-up code); 0 on the host. */
uint32_t board_stack_high_water(void);

#ifdef BOARD_MCU
/* MCU builds only (the generated Makefile defines BOARD_MCU): the RAM budget from
 * board.ld, [BOARD_RAM_START, BOARD_RAM_END).  The stack, .data, .bss and the heap
 * live there; at run time any access outside it and outside flash (read-only) faults
 * with a one-line "*** FAULT: ..." report. */
extern uint32_t __ram_start[], __ram_end[];
#define BOARD_RAM_START ((uintptr_t)__ram_start)
#define BOARD_RAM_END ((uintptr_t)__ram_end)
#endif

#ifdef __cplusplus
}
#endif

#endif /* TINYTRAIN_BOARD_H */
