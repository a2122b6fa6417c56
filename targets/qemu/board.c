/*
 * board.c for microcontrollers run under QEMU (Cortex-M and RISC-V alike).
 *
 * Input files come from the host through semihosting, using picolibc's sys_semihost_*
 * calls directly: fopen() may malloc and the heap is 0 bytes by default.  Start-up
 * details that differ per architecture (fault handlers, MPU/PMP stack guard) live in
 * board_arm.c / board_riscv.c.
 *
 * Flash for persistent state (board_flash_*): QEMU's mps2 and virt memory has no file
 * behind it, so the area is backed by the host file flash_state.bin, through semihosting.
 * The file is the flash: an erase or a programmed word is first written to the file at its
 * offset in the area (SYS_SEEK + SYS_WRITE, synchronous host writes), then read back into
 * the area (SYS_SEEK + SYS_READ).  QEMU writes guest memory for semihosting with debug
 * accesses, which the MPU/PMP do not check: the host plays the flash controller, and the
 * program itself still cannot store to flash (read-only for it, as on a real MCU).
 */
#include <semihost.h>
#include <stdint.h>
#include <string.h>

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

/* ---- flash, file-backed through semihosting ---- */

#define FLASH_FILE "flash_state.bin"
#define ERASE_CHUNK 64u

static const uint32_t erased[ERASE_CHUNK / 4] = {
    0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu,
    0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu,
};
static int flash_fd = -1;
static uintptr_t flash_area;
static uint32_t flash_bytes;

/* Store n bytes at offset off of the area: to the file first, then into the area. */
static int flash_store(uint32_t off, const void *src, uint32_t n)
{
    if (sys_semihost_seek(flash_fd, off) != 0 || sys_semihost_write(flash_fd, src, n) != 0 ||
        sys_semihost_seek(flash_fd, off) != 0 || sys_semihost_read(flash_fd, (void *)(flash_area + off), n) != 0)
        return -1;
    return 0;
}

int board_flash_open(uintptr_t area, uint32_t n)
{
    if (flash_fd >= 0)
        return 0;
    int fd = sys_semihost_open(FLASH_FILE, SH_OPEN_R_PLUS_B);
    if (fd < 0)
        fd = sys_semihost_open(FLASH_FILE, SH_OPEN_W_PLUS_B);  /* first run: create it */
    if (fd < 0)
        return -1;
    flash_fd = fd;
    flash_area = area;
    flash_bytes = n;
    intptr_t len = (intptr_t)sys_semihost_flen(fd);
    uint32_t have = len < 0 ? 0u : (uint32_t)len > n ? n : (uint32_t)len & ~3u;
    if (have > 0 && (sys_semihost_seek(fd, 0) != 0 || sys_semihost_read(fd, (void *)area, have) != 0))
        return -1;
    /* Flash never written is erased. */
    for (uint32_t off = have; off < n; off += ERASE_CHUNK) {
        uint32_t k = n - off < ERASE_CHUNK ? n - off : ERASE_CHUNK;
        if (flash_store(off, erased, k) != 0)
            return -1;
    }
    return 0;
}

static int flash_range_ok(uintptr_t addr, uint32_t n, uint32_t align)
{
    return flash_fd >= 0 && addr >= flash_area && addr - flash_area <= flash_bytes &&
           n <= flash_bytes - (addr - flash_area) && (addr - flash_area) % align == 0 && n % align == 0;
}

int board_flash_erase(uintptr_t addr, uint32_t n)
{
    if (!flash_range_ok(addr, n, BOARD_FLASH_SECTOR_BYTES))
        return -1;
    for (uint32_t off = 0; off < n; off += ERASE_CHUNK)
        if (flash_store((uint32_t)(addr - flash_area) + off, erased, ERASE_CHUNK) != 0)
            return -1;
    return 0;
}

int board_flash_program(uintptr_t addr, const void *src, uint32_t n)
{
    if (!flash_range_ok(addr, n, 4))
        return -1;
    for (uint32_t i = 0; i < n; i += 4) {
        uint32_t old, word;
        memcpy(&old, (const void *)(addr + i), 4);
        memcpy(&word, (const uint8_t *)src + i, 4);
        word &= old; /* flash bits only go from 1 to 0 */
        if (flash_store((uint32_t)(addr + i - flash_area), &word, 4) != 0)
            return -1;
    }
    return 0;
}
