/* tt_round.h: tt_nearbyintf, round half to even in a few instructions (see tt_math.h).
 *
 * Its own header because two kinds of code need it: TVM's kernels, through tt_math.h, and
 * the model header's tt_input_from_float, which quantizes a sample's every value on the
 * board (49,152 calls for MCUNet's 3x128x128 input; about 40 instructions each through
 * libm where the FPU cannot round). The model header is the user's, so it cannot take
 * tt_math.h, which renames expf and logf. Where the FPU rounds (TT_FPU_ROUNDS, FPv5),
 * nearbyintf is one instruction and tt_nearbyintf is that; so it is where the includer
 * builds with -ffast-math (__FAST_MATH__), under which the additions below could be folded.
 */
#ifndef TT_ROUND_H
#define TT_ROUND_H

#include <math.h>

#if defined(TT_FPU_ROUNDS) || defined(__FAST_MATH__)
#define tt_nearbyintf nearbyintf
#else
static inline float tt_nearbyintf(float x) {
  const float two23 = 8388608.0f;
  float a = fabsf(x);
  if (!(a < two23)) {
    return x;
  }
  return copysignf((a + two23) - two23, x);
}
#endif

#endif /* TT_ROUND_H */
