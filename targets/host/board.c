/* board.c for the host build: plain stdio, no instruction counting, no stack painting.
 * The persistent flash area (board_flash_*) is backed by the file flash_state.bin. */
#include <stdio.h>
#include <string.h>

#include "board.h"

static FILE *input;

void board_init(void)
{
    /* Line-buffered output so a parent process sees progress lines as they are printed. */
    setvbuf(stdout, NULL, _IOLBF, 0);
}

int board_open_input(const char *path)
{
    if (input)
        fclose(input);
    input = fopen(path, "rb");
    return input ? 0 : -1;
}

size_t board_read_input(void *buf, size_t n)
{
    return input ? fread(buf, 1, n, input) : 0;
}

/* Kept out of line so host and MCU builds run the same call sequence. */
__attribute__((noinline, noipa)) void board_mark_begin(void) { __asm__ volatile("" ::: "memory"); }
__attribute__((noinline, noipa)) void board_mark_end(void) { __asm__ volatile("" ::: "memory"); }

uint32_t board_stack_high_water(void) { return 0; }

/* ---- flash: the area is RAM here, mirrored word by word into flash_state.bin ---- */

#define FLASH_FILE "flash_state.bin"

static FILE *flash_file;
static uint8_t *flash_area;
static uint32_t flash_bytes;

/* Write [off, off + n) of the area to the file, synchronously. */
static int flash_sync(uint32_t off, uint32_t n)
{
    if (fseek(flash_file, (long)off, SEEK_SET) != 0 || fwrite(flash_area + off, 1, n, flash_file) != n)
        return -1;
    return fflush(flash_file) == 0 ? 0 : -1;
}

int board_flash_open(uintptr_t area, uint32_t n)
{
    if (flash_file)
        return 0;
    flash_file = fopen(FLASH_FILE, "r+b");
    if (!flash_file)
        flash_file = fopen(FLASH_FILE, "w+b");
    if (!flash_file)
        return -1;
    flash_area = (uint8_t *)area;
    flash_bytes = n;
    size_t have = fread(flash_area, 1, n, flash_file) & ~(size_t)3;
    if (have < n) { /* flash never written: erased */
        memset(flash_area + have, 0xff, n - have);
        return flash_sync((uint32_t)have, n - (uint32_t)have);
    }
    return 0;
}

static int flash_range_ok(uintptr_t addr, uint32_t n, uint32_t align)
{
    uintptr_t start = (uintptr_t)flash_area;
    return flash_file && addr >= start && addr - start <= flash_bytes && n <= flash_bytes - (addr - start) &&
           (addr - start) % align == 0 && n % align == 0;
}

int board_flash_erase(uintptr_t addr, uint32_t n)
{
    if (!flash_range_ok(addr, n, BOARD_FLASH_SECTOR_BYTES))
        return -1;
    memset((uint8_t *)addr, 0xff, n);
    return flash_sync((uint32_t)(addr - (uintptr_t)flash_area), n);
}

int board_flash_program(uintptr_t addr, const void *src, uint32_t n)
{
    if (!flash_range_ok(addr, n, 4))
        return -1;
    for (uint32_t i = 0; i < n; i += 4) {
        uint32_t old, word;
        memcpy(&old, (uint8_t *)addr + i, 4);
        memcpy(&word, (const uint8_t *)src + i, 4);
        word &= old; /* flash bits only go from 1 to 0 */
        memcpy((uint8_t *)addr + i, &word, 4);
        if (flash_sync((uint32_t)(addr + i - (uintptr_t)flash_area), 4) != 0)
            return -1;
    }
    return 0;
}
