/* tt_math.c: expf and logf with the same bits on every target (see tt_math.h).
 *
 * Both reduce the argument exactly, then sum a series in IEEE double precision with
 * +, -, *, / only (no fused multiply-add: the Makefile builds with -ffp-contract=off), and
 * round once to float. Double arithmetic is in hardware on Cortex-M7 and the host, in
 * software (libgcc) on Cortex-M4 and RV32F: a few thousand instructions per call, and a
 * training step makes a few calls per class. No division: the series' coefficients are
 * constants (the same doubles on every target, folded by the compiler).
 */
#include <stdint.h>
#include <string.h>

#include "tt_math.h"

/* 1/n and 1/(2n + 1): constants, so no division runs (soft double on Cortex-M4 and RV32F). */
static const double inv[15] = {0.0, 1.0 / 1, 1.0 / 2, 1.0 / 3, 1.0 / 4, 1.0 / 5, 1.0 / 6, 1.0 / 7,
                               1.0 / 8, 1.0 / 9, 1.0 / 10, 1.0 / 11, 1.0 / 12, 1.0 / 13, 1.0 / 14};
static const double inv_odd[13] = {1.0 / 1, 1.0 / 3, 1.0 / 5, 1.0 / 7, 1.0 / 9, 1.0 / 11, 1.0 / 13,
                                   1.0 / 15, 1.0 / 17, 1.0 / 19, 1.0 / 21, 1.0 / 23, 1.0 / 25};

/* 2^k for -1022 <= k <= 1023. */
static double pow2(int k) {
  uint64_t u = (uint64_t)(k + 1023) << 52;
  double d;
  memcpy(&d, &u, sizeof d);
  return d;
}

float tt_expf(float xf) {
  if (xf != xf) {
    return xf;
  }
  if (xf > 100.0f) { /* beyond float's range (e^88.8): Inf */
    return (float)INFINITY;
  }
  if (xf < -110.0f) { /* below float's smallest subnormal (e^-103.3): 0 */
    return 0.0f;
  }
  double x = xf, kd = x * 1.4426950408889634;
  int k = (int)(kd < 0.0 ? kd - 0.5 : kd + 0.5);
  /* r = x - k ln 2 with ln 2 split in two, |r| <= 0.35 */
  double r = (x - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10;
  double p = 1.0;
  for (int n = 14; n >= 1; --n) { /* Taylor series of e^r: truncation error < 1e-18 */
    p = 1.0 + p * r * inv[n];
  }
  return (float)(p * pow2(k));
}

float tt_logf(float xf) {
  if (xf != xf || xf < 0.0f) {
    return (float)NAN;
  }
  if (xf == 0.0f) {
    return -(float)INFINITY;
  }
  if (xf == (float)INFINITY) {
    return xf;
  }
  double x = xf;
  int e = 0;
  if (xf < 1.17549435e-38f) { /* subnormal: scale into the normal range first */
    x *= 8388608.0;
    e = -23;
  }
  uint64_t u;
  memcpy(&u, &x, sizeof u);
  e += (int)((u >> 52) & 0x7ff) - 1023;
  u = (u & 0x000fffffffffffffull) | 0x3ff0000000000000ull; /* mantissa m in [1, 2) */
  double m;
  memcpy(&m, &u, sizeof m);
  if (m > 1.4142135623730951) {
    m *= 0.5;
    ++e;
  }
  /* log m = 2 atanh s, s = (m - 1) / (m + 1), |s| < 0.172 */
  double s = (m - 1.0) / (m + 1.0), z = s * s, p = 0.0;
  for (int n = 12; n >= 1; --n) {
    p = inv_odd[n] + z * p;
  }
  return (float)(e * 6.93147180559945286227e-01 + 2.0 * s * (1.0 + z * p));
}
