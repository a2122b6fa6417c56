/* tvm-tinytrain runtime: see tt_runtime.h. */
#include "tt_runtime.h"

#include <stddef.h>

#include "tvm/runtime/c_backend_api.h"

#define TT_WORKSPACE_ALIGN 16u

static uint8_t *ws_base;
static uint32_t ws_size;
static uint32_t ws_used;
static uint32_t ws_peak;
static int ws_overflow;

void tt_workspace_set(uint8_t *base, uint32_t size) {
  ws_base = base;
  ws_size = size;
  ws_used = 0;
}

uint32_t tt_workspace_peak(void) { return ws_peak; }

int tt_workspace_overflowed(void) { return ws_overflow; }

/* TVM's backend API (tvm/runtime/c_backend_api.h), served from the arena. */
void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes,
                               int dtype_code_hint, int dtype_bits_hint) {
  (void)device_type;
  (void)device_id;
  (void)dtype_code_hint;
  (void)dtype_bits_hint;
  uint32_t start = (ws_used + TT_WORKSPACE_ALIGN - 1u) & ~(TT_WORKSPACE_ALIGN - 1u);
  if (nbytes > (uint64_t)(ws_size - (start < ws_size ? start : ws_size)) || start > ws_size) {
    ws_overflow = 1;
    return NULL;
  }
  ws_used = start + (uint32_t)nbytes;
  if (ws_used > ws_peak) {
    ws_peak = ws_used;
  }
  return ws_base + start;
}

int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr) {
  (void)device_type;
  (void)device_id;
  /* Kernels free in reverse order of allocation: rewind to the freed block. */
  if (ptr != NULL && (uint8_t *)ptr >= ws_base && (uint8_t *)ptr < ws_base + ws_size) {
    ws_used = (uint32_t)((uint8_t *)ptr - ws_base);
  }
  return 0;
}
