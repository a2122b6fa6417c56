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

/* Flash for persistent state (used only by programs compiled with --persist, through
 * tt_persist.c).  The program owns a flash area (board.ld places it at the end of the flash
 * budget, aligned to BOARD_FLASH_SECTOR_BYTES) and reads it as plain memory; it changes
 * it only through these functions, which a real board implements with its flash
 * controller (unlock, erase sectors, program words, wait, lock):
 *
 *   board_flash_open(area, n)          once, before the area is read: [area, area + n) is the
 *                                      whole area.  The emulated boards load the backing file
 *                                      "flash_state.bin" into it (erased, 0xFF, where the
 *                                      file has nothing); a real board may do nothing.
 *   board_flash_erase(addr, n)         set [addr, addr + n) to 0xFF; addr and n are multiples
 *                                      of BOARD_FLASH_SECTOR_BYTES (from the area's start).
 *   board_flash_program(addr, src, n)  program n bytes at addr, one 32-bit word after the
 *                                      other in increasing addresses (addr and n multiples
 *                                      of 4); like real flash a bit only goes from 1 to 0
 *                                      (the word becomes old & new), so program erased words.
 *
 * Each returns 0 on success, -1 on failure (out of the area, misaligned, I/O error).  The
 * emulated boards are file-backed, synchronously: every erase or programmed word is written
 * to flash_state.bin at its offset in the area before the call goes on, so a run cut at any
 * instruction (a power cut) leaves the file exactly as far as the program got. */
#define BOARD_FLASH_SECTOR_BYTES 4096u
int board_flash_open(uintptr_t area, uint32_t n);
int board_flash_erase(uintptr_t addr, uint32_t n);
int board_flash_program(uintptr_t addr, const void *src, uint32_t n);

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
