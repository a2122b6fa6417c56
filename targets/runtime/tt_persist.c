/* tvm-tinytrain runtime: the learned state in flash, two slots (see tt_persist.h). */
#include "tt_persist.h"

#include <stddef.h>
#include <string.h>

#include "board.h"

#define TT_PERSIST_MAGIC 0x54535454u /* "TTST" little endian */
#define HEADER_BYTES 24u
#define CRC_BYTES 20u                /* the header up to the CRC field */

enum { H_MAGIC, H_FORMAT, H_SEQ, H_PAYLOAD, H_FINGERPRINT, H_CRC, HEADER_WORDS };

/* CRC-32 (IEEE 802.3, reflected 0xEDB88320, as zlib.crc32), four bits at a time. */
static const uint32_t crc_nibble[16] = {
    0x00000000u, 0x1db71064u, 0x3b6e20c8u, 0x26d930acu, 0x76dc4190u, 0x6b6b51f4u,
    0x4db26158u, 0x5005713cu, 0xedb88320u, 0xf00f9344u, 0xd6d6a3e8u, 0xcb61b38cu,
    0x9b64c2b0u, 0x86d3d2d4u, 0xa00ae278u, 0xbdbdf21cu,
};

static uint32_t crc_update(uint32_t crc, const uint8_t *p, uint32_t n) {
  for (uint32_t i = 0; i < n; ++i) {
    crc ^= p[i];
    crc = (crc >> 4) ^ crc_nibble[crc & 15u];
    crc = (crc >> 4) ^ crc_nibble[crc & 15u];
  }
  return crc;
}

static int flash_opened;
static int newest_slot = -1;   /* slot holding the newest valid state, -1: none */
static uint32_t newest_seq;
static int scanned;

static const uint8_t *slot_at(int slot) {
  return tt_persist_area + (uint32_t)slot * TT_PERSIST_SLOT_BYTES;
}

static uint32_t word_at(const uint8_t *p, uint32_t index) {
  uint32_t w;
  memcpy(&w, p + 4u * index, sizeof w);
  return w;
}

/* A slot is valid when its header is committed, belongs to this program and its CRC matches. */
static int slot_valid(int slot, uint32_t *seq) {
  const uint8_t *p = slot_at(slot);
  if (word_at(p, H_MAGIC) != TT_PERSIST_MAGIC || word_at(p, H_FORMAT) != TT_PERSIST_FORMAT ||
      word_at(p, H_PAYLOAD) != TT_PERSIST_PAYLOAD_BYTES ||
      word_at(p, H_FINGERPRINT) != TT_PERSIST_FINGERPRINT) {
    return 0;
  }
  uint32_t crc = crc_update(0xffffffffu, p, CRC_BYTES);
  crc = crc_update(crc, p + HEADER_BYTES, TT_PERSIST_PAYLOAD_BYTES) ^ 0xffffffffu;
  if (crc != word_at(p, H_CRC)) {
    return 0;
  }
  *seq = word_at(p, H_SEQ);
  return 1;
}

static int scan(void) {
  if (!flash_opened) {
    if (board_flash_open((uintptr_t)tt_persist_area, TT_PERSIST_AREA_BYTES) != 0) {
      return TT_ERR_FLASH;
    }
    flash_opened = 1;
  }
  newest_slot = -1;
  newest_seq = 0;
  for (int slot = 0; slot < 2; ++slot) {
    uint32_t seq;
    if (slot_valid(slot, &seq) && (newest_slot < 0 || (int32_t)(seq - newest_seq) > 0)) {
      newest_slot = slot;
      newest_seq = seq;
    }
  }
  scanned = 1;
  return 0;
}

int tt_restore(void) {
  int status = scan();
  if (status != 0) {
    return status;
  }
  if (newest_slot < 0) {
    return 0;
  }
  const uint8_t *p = slot_at(newest_slot) + HEADER_BYTES;
  for (uint32_t r = 0; r < TT_PERSIST_REGIONS; ++r) {
    memcpy(tt_state_regions[r].data, p, tt_state_regions[r].bytes);
    p += tt_state_regions[r].bytes;
  }
  return 1;
}

int tt_save(void) {
  if (!scanned) {
    int status = scan();
    if (status != 0) {
      return status;
    }
  }
  int slot = newest_slot == 0 ? 1 : 0; /* never the slot holding the newest valid state */
  uint32_t seq = newest_slot < 0 ? 1u : newest_seq + 1u;
  uintptr_t base = (uintptr_t)slot_at(slot);
  if (board_flash_erase(base, TT_PERSIST_SLOT_BYTES) != 0) {
    return TT_ERR_FLASH;
  }
  uint32_t header[HEADER_WORDS] = {TT_PERSIST_MAGIC, TT_PERSIST_FORMAT, seq, TT_PERSIST_PAYLOAD_BYTES,
                                   TT_PERSIST_FINGERPRINT, 0u};
  uint32_t crc = crc_update(0xffffffffu, (const uint8_t *)header, CRC_BYTES);
  /* The payload, a word at a time, straight from the state in RAM. */
  uintptr_t at = base + HEADER_BYTES;
  uint8_t word[4];
  uint32_t fill = 0;
  for (uint32_t r = 0; r < TT_PERSIST_REGIONS; ++r) {
    const uint8_t *src = (const uint8_t *)tt_state_regions[r].data;
    for (uint32_t i = 0; i < tt_state_regions[r].bytes; ++i) {
      word[fill++] = src[i];
      if (fill == 4u) {
        crc = crc_update(crc, word, 4u);
        if (board_flash_program(at, word, 4u) != 0) {
          return TT_ERR_FLASH;
        }
        at += 4u;
        fill = 0;
      }
    }
  }
  if (fill != 0) {
    crc = crc_update(crc, word, fill);
    while (fill < 4u) {
      word[fill++] = 0xffu;
    }
    if (board_flash_program(at, word, 4u) != 0) {
      return TT_ERR_FLASH;
    }
  }
  header[H_CRC] = crc ^ 0xffffffffu;
  /* The header: everything but the magic, then the magic, which commits the save. */
  if (board_flash_program(base + 4u, &header[H_FORMAT], HEADER_BYTES - 4u) != 0 ||
      board_flash_program(base, &header[H_MAGIC], 4u) != 0) {
    return TT_ERR_FLASH;
  }
  newest_slot = slot;
  newest_seq = seq;
  return 0;
}

uint32_t tt_state_seq(void) { return newest_slot < 0 ? 0u : newest_seq; }

uint32_t tt_state_crc(void) {
  uint32_t crc = 0xffffffffu;
  for (uint32_t r = 0; r < TT_PERSIST_REGIONS; ++r) {
    crc = crc_update(crc, (const uint8_t *)tt_state_regions[r].data, tt_state_regions[r].bytes);
  }
  return crc ^ 0xffffffffu;
}
