/* tvm-tinytrain runtime: keep the learned state in flash across resets (--persist).
 *
 * The public API (tt_save, tt_restore, tt_step_count, tt_state_seq, tt_state_crc) is in
 * tinytrain_model.h; this header is the contract between tt_persist.c and the generated
 * driver (tinytrain_model.c), which defines the tables below.
 *
 * The state is every tensor tt_train_step changes: the step count, the trainable weights
 * and biases as the program holds them in RAM (float master copies included) and the
 * momentum buffers. It lives in tt_persist_area (2 x TT_PERSIST_SLOT_BYTES of flash, placed
 * by board.ld at the end of the flash budget), two slots of:
 *
 *   offset 0   uint32 magic "TTST"   programmed LAST: the commit record of a save
 *          4   uint32 format version (TT_PERSIST_FORMAT)
 *          8   uint32 sequence number (1, 2, ...: the newest valid slot wins)
 *         12   uint32 payload bytes  (TT_PERSIST_PAYLOAD_BYTES)
 *         16   uint32 model fingerprint (TT_PERSIST_FINGERPRINT: another program's state is refused)
 *         20   uint32 CRC-32 (IEEE) of bytes 0..19 then of the payload
 *         24   payload: the state regions below, in order, byte for byte, then 0xFF up to a
 *              word boundary
 *
 * A save never touches the slot holding the newest valid state: it erases the other slot,
 * programs the payload, then the header words, the magic last.  Cut anywhere, the flash
 * holds the old state (still valid) or the new one (complete).  Flash access goes through
 * board_flash_open / board_flash_erase / board_flash_program (board.h).
 */
#ifndef TT_PERSIST_H
#define TT_PERSIST_H

#include <stdint.h>

#include "tinytrain_model.h"

typedef struct {
  void *data;     /* in RAM */
  uint32_t bytes;
} tt_state_region_t;

/* Generated (tinytrain_model.c): the state, in payload order, and the flash area. */
extern const tt_state_region_t tt_state_regions[TT_PERSIST_REGIONS];
extern uint8_t tt_persist_area[TT_PERSIST_AREA_BYTES];

#endif /* TT_PERSIST_H */
