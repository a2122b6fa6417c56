/* tt_math.h: the float functions TVM's kernels call, the same bits on every target.
 *
 * Included at the top of tinytrain_kernels.c. Two concerns, one header:
 *
 * 1. Speed: nearbyintf inline. The kernels round with nearbyintf (round half to even:
 *    int8 requantization, QAS updates, activations cast to int8), up to several times per
 *    multiply-accumulate in fused kernels. Where the FPU has a float rounding instruction
 *    (FPv5 on Cortex-M7: VRINTR; the board's Makefile then defines TT_FPU_ROUNDS) gcc emits
 *    it; where it has none (FPv4 on Cortex-M4, RISC-V's F extension, baseline x86-64)
 *    nearbyintf is a libm call of some 40 instructions. tt_nearbyintf (tt_round.h) gives
 *    the same bits for every input in a few instructions:
 *      - for |x| < 2^23, (|x| + 2^23) - 2^23 rounds |x| to an integer in the default
 *        rounding mode (to nearest, ties to even), exactly: the sum's last place is 1;
 *      - |x| >= 2^23, Inf and NaN are returned unchanged (integers already, or no number);
 *      - copysignf restores the sign, so -0.0 and negatives that round to zero give -0.0.
 *    It relies on IEEE semantics for the two additions: the Makefile never passes
 *    -ffast-math or -fassociative-math.
 *
 * 2. Reproducibility: expf and logf (the loss: log-softmax and its gradient) from
 *    tt_math.c, not the C library's. picolibc's and glibc's differ in the last bit for
 *    some 6 % of the inputs a training step gives them, enough for the host and the board
 *    to part after a few dozen steps; tt_expf / tt_logf use IEEE double +, -, *, / only,
 *    so every target computes the same bits (within 1 ulp of glibc; a few calls a step).
 *
 * tests/test_math.py checks tt_nearbyintf against nearbyintf on all 2^32 inputs and
 * tt_expf / tt_logf against glibc.
 */
#ifndef TT_MATH_H
#define TT_MATH_H

#include <math.h>

#include "tt_round.h"
#ifndef TT_FPU_ROUNDS
#define nearbyintf tt_nearbyintf
#endif

float tt_expf(float x);
float tt_logf(float x);
#define expf tt_expf
#define logf tt_logf

/* TVM's C printer spells a float32 infinity `inff` (a one-sided clip such as hardswish's
 * clip(x + 3, 0, inf) has one): C has no such name, so it is defined here. */
#define inff ((float)INFINITY)

#endif /* TT_MATH_H */
