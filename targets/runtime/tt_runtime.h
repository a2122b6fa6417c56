/* tvm-tinytrain runtime: serves TVM kernels' workspace requests from the static arena.
 *
 * TVM's C kernels ask for scratch memory (padded inputs, reduction buffers) through
 * TVMBackendAllocWorkspace / TVMBackendFreeWorkspace. The generated driver gives each
 * kernel call its planned slice of the arena (tt_workspace_set) before the call; the
 * kernel's requests are carved from that slice, last-in first-out. No malloc anywhere.
 */
#ifndef TT_RUNTIME_H
#define TT_RUNTIME_H

#include <stdint.h>

/* Give the next kernel call the workspace [base, base + size). */
void tt_workspace_set(uint8_t *base, uint32_t size);

/* Largest workspace any kernel call used so far, in bytes. */
uint32_t tt_workspace_peak(void);

/* Non-zero once a kernel asked for more workspace than planned (the call then failed). */
int tt_workspace_overflowed(void);

#endif /* TT_RUNTIME_H */
