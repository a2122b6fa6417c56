/* tt_kernels.c: the micro-kernels that TVM's tensorized kernels call.
 *
 * targets/tensorize.py replaces a loop nest of a TIR kernel by a call of one of these
 * functions (tir tensorize with a TensorIntrin whose implementation is the call), so
 * each one computes exactly what the loop nest it replaces computed, bit for bit.
 * TVM's C code generator declares them itself (every pointer as void *), hence no header.
 *
 * tt_pw_row_s8: one row of an int8 pointwise conv, for one output channel (the forward;
 * tt_pw_rows2_s8 the same for two output channels' rows, tt_pw_row_f32s8 the input gradient,
 * tt_pw_rows2_f32s8 that for two channels' rows, tt_pw_wgrad_f32s8 a tile of the weight
 * gradient; tt_dw_plane_s8, tt_conv_row_s8, tt_conv_plane_s8, the depthwise input gradient
 * tt_dw_transpose_f32s8, the backward's bit masks tt_mask_bits_f32, for float models
 * tt_conv_plane_f32, tt_requant_s8, the int8 outputs of any of the int8 convs' sums, and tt_pw_row_requant_s8
 * and tt_pw_rows2_requant_s8, rows and their requantization in one call, come after them):
 *
 *     acc[x] += sum_i ((float)a[i * a_stride + x] - zx) * (float)w[i * w_stride]
 *
 * for x < width, i < k, the float32 sum taken term by term in increasing i, as the TIR
 * does. Every term is an integer of magnitude at most 255 * 128 < 2^24, so exact in
 * float32, and so is every partial sum while the sum of the terms' magnitudes is at most
 * 2^24: within that bound the float32 loop computes the exact integer sum. The kernel
 * checks the bound on the weights it is given, sum_i |w_i| * max|a - zx| <= 2^24, and
 * that the accumulators start at zero (they do in our kernels: the accumulator is zeroed
 * just before; the kernels whose last argument is `zeroed` are told so, tensorize.py having
 * removed that zeroing), then sums in int32, which is exact, with the zero point folded once:
 * sum_i w_i * a_i - zx * sum_i w_i. Otherwise it runs the float32 loop itself. Either way
 * the result is the TIR's, bit for bit; tests/test_micro_kernels.py checks both paths
 * against the kernel TVM builds without tensorizing and against NumPy.
 *
 * With the Arm DSP extension (Cortex-M4, M7, M33: __ARM_FEATURE_DSP) the int32 sum takes
 * 4 pixels x 4 input channels a step: one 32-bit load per input row and one for 4
 * weights, PKHBT/PKHTB to pair rows i and i + 2, SXTB16 to split bytes into 16-bit
 * halves, and SMLAD, two 16-bit multiply-accumulates an instruction. Elsewhere (RISC-V, the
 * host) a plain C loop blocked by 8 pixels (TT_PW_PIXELS), which the compiler keeps in
 * registers.
 */
#include <stdint.h>
#include <string.h>
#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#endif

#define TT_EXACT_FLOAT_INTEGERS 16777216 /* 2^24: float32 holds every integer up to here */
#define TT_DW_MAX_TAPS 49 /* windows up to 7x7 take the int32 path (their sums stay far below 2^24) */
#define TT_DW_PADDED_BYTES 512 /* the zero-point-padded copy of a plane, or of a band of its rows (on the stack) */

#if defined(__arm__) && defined(__ARM_FP) && (__ARM_FP & 4)
#define TT_ARM_FPU 1 /* single-precision VFP: VMLA, VLDM */
/* loops whose VLDM fills fixed registers stay rolled: unrolled, gcc moves the sums around them */
#define TT_VLDM_LOOP _Pragma("GCC unroll 1")
#else
#define TT_ARM_FPU 0
#define TT_VLDM_LOOP
#endif

/* acc + a * b, the product rounded before the addition, as C computes it (the build never
 * contracts it into a fused multiply-add). With an Arm single-precision FPU it is one VMLA,
 * which is exactly that: chained, not fused (VFMA is the fused one), the addend its first
 * operand as in C's acc + a * b (which decides which NaN comes out when both are NaN). gcc
 * never emits VMLA itself, so a float multiply-accumulate costs two instructions without it.
 * RISC-V's FMADD.S is fused, hence different bits: there the expression stays. */
static inline __attribute__((always_inline)) float mul_add(float acc, float a, float b) {
#if TT_ARM_FPU
  __asm__("vmla.f32 %0, %1, %2" : "+t"(acc) : "t"(a), "t"(b));
  return acc;
#else
  return acc + a * b;
#endif
}

/* The n floats at p (n = 4 or 8): one VLDM on an Arm FPU (gcc loads them one VLDR each),
 * else n loads. */
static inline __attribute__((always_inline)) void load_floats(const float *p, float v[8], const int n) {
#if TT_ARM_FPU
  register float v0 __asm__("s16"), v1 __asm__("s17"), v2 __asm__("s18"), v3 __asm__("s19");
  register float v4 __asm__("s20"), v5 __asm__("s21"), v6 __asm__("s22"), v7 __asm__("s23");
  if (n == 8) {
    __asm__("vldmia %8, {s16-s23}"
            : "=t"(v0), "=t"(v1), "=t"(v2), "=t"(v3), "=t"(v4), "=t"(v5), "=t"(v6), "=t"(v7)
            : "r"(p), "m"(*(const float(*)[8])p));
    v[4] = v4, v[5] = v5, v[6] = v6, v[7] = v7;
  } else if (n == 4) {
    __asm__("vldmia %4, {s16-s19}" : "=t"(v0), "=t"(v1), "=t"(v2), "=t"(v3) : "r"(p), "m"(*(const float(*)[4])p));
  }
  if (n == 8 || n == 4) {
    v[0] = v0, v[1] = v1, v[2] = v2, v[3] = v3;
    return;
  }
#endif
  for (int j = 0; j < n; ++j) {
    v[j] = p[j];
  }
}

/* A float's bits. */
static inline int32_t float_bits(float f) {
  int32_t bits;
  memcpy(&bits, &f, sizeof bits);
  return bits;
}

/* min(p, hi) and max(p, lo) as C's `p < hi ? p : hi` and `p > lo ? p : lo` (a NaN p gives
 * the bound): one FMIN.S / FMAX.S on RISC-V, where gcc calls libm for fminf. */
static inline __attribute__((always_inline)) float float_min(float p, float hi) {
#if defined(__riscv) && defined(__riscv_flen)
  __asm__("fmin.s %0, %0, %1" : "+f"(p) : "f"(hi));
  return p;
#else
  return p < hi ? p : hi;
#endif
}
static inline __attribute__((always_inline)) float float_max(float p, float lo) {
#if defined(__riscv) && defined(__riscv_flen)
  __asm__("fmax.s %0, %0, %1" : "+f"(p) : "f"(lo));
  return p;
#else
  return p > lo ? p : lo;
#endif
}

/* One output from its scaled sum p: offset = the bits of 1.5 * 2^23 minus the zero point.
 * Without QSUB/SSAT, p is clamped first to the integers that give the outputs' range,
 * [-128 - zo, 127 - zo]: rounding keeps integers, so clamping then rounding is rounding then
 * clamping, and no integer clamp is left (2 float instructions instead of 2 clamps each way). */
static inline __attribute__((always_inline)) int8_t requant_scaled(float p, int32_t offset) {
#if defined(__ARM_FEATURE_DSP)
  return (int8_t)__ssat(__qsub(float_bits(p + 12582912.0f), offset), 8);
#else
  const int32_t zo = float_bits(12582912.0f) - offset; /* loop invariant: computed once */
  p = float_max(float_min(p, (float)(127 - zo)), (float)(-128 - zo));
  return (int8_t)(float_bits(p + 12582912.0f) - offset);
#endif
}

/* One output from its float32 sum, bias b and scale s (finite). */
static inline __attribute__((always_inline)) int8_t requant_one(float acc, float b, float s, int32_t offset) {
  return requant_scaled((acc + b) * s, offset);
}

/* One output from its exact integer sum with the bias already added: (float)(sum + bias) is
 * the float32 sum acc + b of the TIR when |sum| <= 2^24 and |bias| <= 2^24 (both exact in
 * float32, so their float32 addition rounds the exact integer sum once, as the conversion
 * does), which saves the addition per output. */
static inline __attribute__((always_inline)) int8_t requant_biased(int32_t sum_and_bias, float s, int32_t offset) {
  return requant_scaled((float)sum_and_bias * s, offset);
}

/* Whether an integer is a float32 exactly: a bias that can be added in int32
 * (requant_biased), or, on RV32F, a fold or bias that t + (float)v takes, for an exact float
 * sum t: the exact integer t + v rounded once, as (float)(int32)(t + v) is, with one FADD.S
 * instead of two conversions and an integer add (pw_sums_f's callers). */
static inline int float_exact(int32_t v) { return v >= -TT_EXACT_FLOAT_INTEGERS && v <= TT_EXACT_FLOAT_INTEGERS; }

/* The bits of the float at p, one integer load. The arrays arrive as void *, so gcc cannot
 * prove their alignment unless told: RV32 (no unaligned loads) then copied a memcpy from
 * them byte by byte, 9 instructions. float_bits(*p) is a float load and a move instead;
 * each reader uses whichever measured fewer instructions on Cortex-M and RV32. */
static inline uint32_t bits_at(const float *p) {
  uint32_t bits;
  memcpy(&bits, __builtin_assume_aligned(p, 4), sizeof bits);
  return bits;
}

/* Whether n accumulators all hold +0.0f (all bits zero): the int32 paths' precondition. */
static int all_positive_zero(const float *acc, int32_t n) {
  uint32_t any = 0;
  for (int32_t i = 0; i < n; ++i) {
    any |= (uint32_t)float_bits(acc[i]);
  }
  return any == 0;
}

/* Whether the n accumulators a kernel adds to start at +0.0f. `zeroed`: the caller removed
 * TVM's zeroing loop before the call (tensorize.py, only where that loop zeroed exactly these
 * accumulators), so they start at zero by definition: the int32 paths write them, and a float
 * fallback zeroes them first (zero_unless_kept). */
static int starts_at_zero(const float *acc, int32_t n, int32_t zeroed) {
  return zeroed || all_positive_zero(acc, n);
}

/* The zeroing a `zeroed` caller left out, done before a float32 loop that adds to acc. */
static void zero_unless_kept(float *acc, int32_t n, int32_t zeroed) {
  for (int32_t i = 0; zeroed && i < n; ++i) {
    acc[i] = 0.0f;
  }
}

/* Whether no accumulator of n holds -0.0f (a float32 sum that starts elsewhere never gets
 * there, which lets the float kernels skip taps that add a zero). */
static int no_negative_zero(const float *acc, int32_t n) {
  for (int32_t i = 0; i < n; ++i) {
    if ((uint32_t)float_bits(acc[i]) == 0x80000000u) {
      return 0;
    }
  }
  return 1;
}

/* The TIR's own arithmetic: the fallback when the int32 sum could differ from it. */
static __attribute__((cold, noinline)) void pw_row_float(float *acc, const int8_t *a, int32_t a_stride, const int8_t *w, int32_t w_stride,
                         int32_t k, int32_t width, float zx) {
  for (int32_t x = 0; x < width; ++x) {
    float s = acc[x];
    for (int32_t i = 0; i < k; ++i) {
      s = s + ((float)a[i * a_stride + x] - zx) * (float)w[i * w_stride];
    }
    acc[x] = s;
  }
}

/* sum_i w_i * a[i * a_stride + x] for one pixel, in int32. */
static int32_t pw_dot(const int8_t *a, int32_t a_stride, const int8_t *w, int32_t w_stride, int32_t k) {
  int32_t s = 0;
  for (int32_t i = 0; i < k; ++i) {
    s += (int32_t)w[i * w_stride] * a[i * a_stride];
  }
  return s;
}

/* Pixels a step of the pointwise rows: 4 with the DSP extension (what its SMLAD loops' registers
 * hold), 8 in plain C, where a multiply-accumulate is a multiply and an add whatever the
 * blocking, so what a wider step saves is loads: each weight loaded once for more pixels
 * (RISC-V's 31 registers hold two channels' 16 sums). Rows of 4 more pixels take a step of 4. */
#if defined(__ARM_FEATURE_DSP)
#define TT_PW_PIXELS 4
#else
#define TT_PW_PIXELS 8
#endif

/* Adds sum_{from <= j < k} w_j * a[(j - from) * a_stride + p] to s[p], for n <= 8 pixels p (a
 * points at channel `from`): the plain C loop, and the DSP loop's tail. */
static inline __attribute__((always_inline)) void pw_dot_from(const int8_t *a, int32_t a_stride, const int8_t *w,
                                                             int32_t from, int32_t k, int32_t *s, const int n) {
  int32_t t[8];
  for (int j = 0; j < n; ++j) {
    t[j] = s[j];
  }
  for (int32_t i = from; i < k; ++i, a += a_stride) {
    int32_t wi = w[i];
    for (int j = 0; j < n; ++j) {
      t[j] += wi * a[j];
    }
  }
  for (int j = 0; j < n; ++j) {
    s[j] = t[j];
  }
}

#if defined(__ARM_FEATURE_DSP)
static inline uint32_t load4(const int8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4); /* one LDR: Cortex-M3 and up load unaligned words */
  return v;
}

/* load4(p + 2 * s) in one LDR with a shifted register offset: gcc keeps 2 * s in a register
 * of its own instead, which pw_dot4's loop cannot spare (it spills it). The rows are only
 * read in the kernels, so the memory operand names the row the address starts from. */
static inline uint32_t load4_down2(const int8_t *p, int32_t s) {
  uint32_t v;
  __asm__("ldr %0, [%1, %2, lsl #1]" : "=r"(v) : "r"(p), "r"(s), "m"(*(const int8_t(*)[4])p));
  return v;
}

/* p + 4 * s in one ADD with a shifted register (the same reason). */
static inline const int8_t *down4(const int8_t *p, int32_t s) {
  __asm__("add %0, %0, %1, lsl #2" : "+r"(p) : "r"(s));
  return p;
}

/* Bytes 1 and 3 of v as two sign-extended halfwords: one SXTB16 with its rotation. */
static inline int32_t sxtb16_ror8(uint32_t v) {
  int32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
  return r;
}

/* Pixels 0, 1 of row r then of row r2 (one PKHBT), and pixels 2, 3 of each (one PKHTB). */
static inline uint32_t pack_low(uint32_t r, uint32_t r2) {
  uint32_t v;
  __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(v) : "r"(r), "r"(r2));
  return v;
}
static inline uint32_t pack_high(uint32_t r, uint32_t r2) {
  uint32_t v;
  __asm__("pkhtb %0, %1, %2, asr #16" : "=r"(v) : "r"(r2), "r"(r));
  return v;
}

/* 4 pixels, weights contiguous (w_stride 1), 4 input channels a step. Rows i and i + 2 go
 * into one word per pixel pair: PKHBT takes their pixels 0 and 1, PKHTB their pixels 2 and
 * 3; SXTB16 and its ror-8 form split each word into the halfword pairs (a_i, a_i+2) of one
 * pixel, which SMLAD multiplies with (w_i, w_i+2), SXTB16 of 4 weights: two
 * multiply-accumulates an instruction, 4 accumulators in registers. */
static inline __attribute__((always_inline)) void pw_dot4(const int8_t *a, int32_t a_stride, const int8_t *w, int32_t k,
                                                          int32_t out[4]) {
  int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  const int8_t *end = w + (k & ~3);
#pragma GCC unroll 1 /* unrolled, the accumulators, weight pairs and rows no longer fit the registers */
  for (; w < end; w += 4) {
    uint32_t wv = load4(w);
    int32_t wp = __sxtb16(wv);
    uint32_t r = load4(a), r2 = load4_down2(a, a_stride); /* rows i and i + 2 */
    uint32_t lo = pack_low(r, r2), hi = pack_high(r, r2);
    s0 = __smlad(__sxtb16(lo), wp, s0), s1 = __smlad(sxtb16_ror8(lo), wp, s1);
    s2 = __smlad(__sxtb16(hi), wp, s2), s3 = __smlad(sxtb16_ror8(hi), wp, s3);
    wp = sxtb16_ror8(wv);
    r = load4(a + a_stride), r2 = load4_down2(a + a_stride, a_stride); /* rows i + 1 and i + 3 */
    lo = pack_low(r, r2), hi = pack_high(r, r2);
    s0 = __smlad(__sxtb16(lo), wp, s0), s1 = __smlad(sxtb16_ror8(lo), wp, s1);
    s2 = __smlad(__sxtb16(hi), wp, s2), s3 = __smlad(sxtb16_ror8(hi), wp, s3);
    a = down4(a, a_stride);
  }
  out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
  pw_dot_from(a, a_stride, end, 0, k & 3, out, 4);
}
#endif

/* The int32 sums of n pixels (TT_PW_PIXELS, or 4), weights contiguous. */
static inline __attribute__((always_inline)) void pw_dot_n(const int8_t *a, int32_t a_stride, const int8_t *w, int32_t k,
                                                           int32_t *out, const int n) {
#if defined(__ARM_FEATURE_DSP)
  (void)n; /* always 4 */
  pw_dot4(a, a_stride, w, k, out);
#else
  for (int j = 0; j < n; ++j) {
    out[j] = 0;
  }
  pw_dot_from(a, a_stride, w, 0, k, out, n);
#endif
}

/* sum_i w_i, and sum_i |w_i| if `with_abs`, in one pass; with the DSP extension and a
 * contiguous row 4 weights a step (both sums: USADA8 sums absolute differences of unsigned
 * bytes, so with the weights biased to w + 128 it sums w + 128 against 0 and |w| against 128). */
static inline __attribute__((always_inline)) void weight_sums(const int8_t *w, int32_t w_stride, int32_t k, int with_abs,
                                                             int32_t *sum, int32_t *sum_abs) {
  int32_t s = 0, sa = 0, i = 0;
#if defined(__ARM_FEATURE_DSP)
  if (w_stride == 1) {
    uint32_t biased = 0, abs = 0;
    if (with_abs) {
      for (; i + 4 <= k; i += 4) {
        uint32_t wv = load4(w + i) ^ 0x80808080u;
        biased = __usada8(wv, 0, biased);
        abs = __usada8(wv, 0x80808080u, abs);
      }
    } else {
      for (; i + 4 <= k; i += 4) { /* the short rows of most convs need no bound: one USADA8 */
        biased = __usada8(load4(w + i) ^ 0x80808080u, 0, biased);
      }
    }
    s = (int32_t)biased - 128 * i, sa = (int32_t)abs;
  }
#endif
  for (; i < k; ++i) {
    int32_t wi = w[i * w_stride];
    s += wi;
    if (with_abs) {
      sa += wi < 0 ? -wi : wi;
    }
  }
  *sum = s, *sum_abs = sa;
}

/* Whether the int32 sum of weights w gives the float32 loop's bits on accumulators that
 * start at zero (see the top of this file); if so, *fold = zx * sum_i w_i. */
static int weights_exact(const int8_t *w, int32_t w_stride, int32_t k, int32_t zx, int32_t *fold) {
  int64_t max_dev = zx < 0 ? 127 - zx : 128 + zx; /* the largest |a - zx| for int8 a */
  int32_t sum_w = 0, sum_abs_w = 0;
  int long_row = k * 128 * max_dev > TT_EXACT_FLOAT_INTEGERS; /* |w| <= 128: short rows are exact */
  if (zx != 0 || long_row) {
    weight_sums(w, w_stride, k, long_row, &sum_w, &sum_abs_w);
  }
  *fold = zx * sum_w;
  return sum_abs_w * max_dev <= TT_EXACT_FLOAT_INTEGERS;
}

/* weights_exact for a row of `width` accumulators, which must also start at zero. */
static int int32_exact(const float *acc, const int8_t *w, int32_t w_stride, int32_t k, int32_t width, int32_t zx,
                       int32_t *fold) {
  return weights_exact(w, w_stride, k, zx, fold) && all_positive_zero(acc, width);
}

/* n pixels of tt_pw_row_s8's int32 path. */
static inline __attribute__((always_inline)) void row_step(float *acc, const int8_t *a, int32_t a_stride, const int8_t *w,
                                                          int32_t k, int32_t fold, const int n) {
  int32_t sums[TT_PW_PIXELS];
  pw_dot_n(a, a_stride, w, k, sums, n);
  for (int j = 0; j < n; ++j) {
    acc[j] = (float)(sums[j] - fold);
  }
}

int32_t tt_pw_row_s8(void *acc_, void *a_, int32_t a_stride, void *w_, int32_t w_stride, int32_t k, int32_t width,
                     int32_t zx) {
  float *acc = (float *)acc_;
  const int8_t *a = (const int8_t *)a_, *w = (const int8_t *)w_;
  int32_t fold;
  if (!int32_exact(acc, w, w_stride, k, width, zx, &fold)) {
    pw_row_float(acc, a, a_stride, w, w_stride, k, width, (float)zx);
    return 0;
  }
  int32_t x = 0;
  if (w_stride == 1) {
    for (; x + TT_PW_PIXELS <= width; x += TT_PW_PIXELS) {
      row_step(acc + x, a + x, a_stride, w, k, fold, TT_PW_PIXELS);
    }
#if TT_PW_PIXELS > 4 /* the rest of a row of 4k pixels */
    for (; x + 4 <= width; x += 4) {
      row_step(acc + x, a + x, a_stride, w, k, fold, 4);
    }
#endif
  }
  for (; x < width; ++x) {
    acc[x] = (float)(pw_dot(a + x, a_stride, w, w_stride, k) - fold);
  }
  return 0;
}

/* tt_pw_rows2_s8: tt_pw_row_s8 for two output channels at once (weights w and w + w_fstride,
 * rows acc and acc + acc_stride), so that each input value is loaded once for both:
 * TT_PW_PIXELS x 2 channels a step. With the DSP extension, as pw_dot4 for one channel:
 * rows i and i + 2 packed (PKHBT/PKHTB), SXTB16 to the halfword pairs (a_i, a_i+2) of each
 * pixel, each pair multiplied by both channels' (w_i, w_i+2) with SMLAD: 32
 * multiply-accumulates from 4 row loads, 2 weight loads and 12 SXTB16. Elsewhere plain C.
 * When either row cannot take the int32 sum, each row goes through tt_pw_row_s8. */
#if defined(__ARM_FEATURE_DSP)
/* One half of a step: rows r, r2 (4 pixels each) with weight pairs wa (channel 0), wb (channel 1). */
#define TT_DOT2X4_HALF(r, r2, wa, wb)                                                                  \
  do {                                                                                               \
    uint32_t lo_ = pack_low(r, r2), hi_ = pack_high(r, r2);                                          \
    int32_t t_ = __sxtb16(lo_);                                                                      \
    s00 = __smlad(t_, wa, s00), s10 = __smlad(t_, wb, s10);                                          \
    t_ = sxtb16_ror8(lo_);                                                                           \
    s01 = __smlad(t_, wa, s01), s11 = __smlad(t_, wb, s11);                                          \
    t_ = __sxtb16(hi_);                                                                              \
    s02 = __smlad(t_, wa, s02), s12 = __smlad(t_, wb, s12);                                          \
    t_ = sxtb16_ror8(hi_);                                                                           \
    s03 = __smlad(t_, wa, s03), s13 = __smlad(t_, wb, s13);                                          \
  } while (0)
#endif

#if defined(__riscv) && defined(__riscv_flen)
/* The sums of n pixels for one channel (t0) or, with `two`, two (t1: the weights w0 + w_fstride),
 * w_i * a_i without the zero point, as float32 with FMADD.S: RV32F has no integer
 * multiply-accumulate but a float one, and on these exact integers (every partial sum is
 * below 2^24 in magnitude whenever the int32 path runs: the check above bounds
 * sum_i |w_i| * max|a - zx|, and max|a - zx| >= 128 >= |a|) it rounds nothing, so the float
 * sums are the int32 sums: one instruction a multiply-accumulate instead of two, each input
 * converted once for both channels. The first fs_k channels come from fs, already float
 * (float_staged). */
static inline __attribute__((always_inline)) void pw_sums_f(const int8_t *a, int32_t a_stride, const int8_t *w0,
                                                            int32_t w_fstride, int32_t k, float *t0, float *t1,
                                                            const int n, const float *fs, int32_t fs_stride,
                                                            int32_t fs_k, const int two) {
  for (int j = 0; j < n; ++j) {
    t0[j] = 0.0f;
    if (two) {
      t1[j] = 0.0f;
    }
  }
  int32_t i = 0;
  for (; fs && i < fs_k; ++i, fs += fs_stride) {
    float u = (float)w0[i], v = two ? (float)w0[i + w_fstride] : 0.0f;
    for (int j = 0; j < n; ++j) {
      t0[j] = __builtin_fmaf(u, fs[j], t0[j]);
      if (two) {
        t1[j] = __builtin_fmaf(v, fs[j], t1[j]);
      }
    }
  }
  for (a += i * a_stride; i < k; ++i, a += a_stride) {
    float u = (float)w0[i], v = two ? (float)w0[i + w_fstride] : 0.0f;
    for (int j = 0; j < n; ++j) {
      float x = (float)a[j];
      t0[j] = __builtin_fmaf(u, x, t0[j]);
      if (two) {
        t1[j] = __builtin_fmaf(v, x, t1[j]);
      }
    }
  }
}

/* RV32F's stage (tt_pw_stage_s8), in the buffer the DSP's staged words would take: 3 words
 * saying what it holds (the input's address, of channel 0 and pixel 0; its pixel count P; kh,
 * how many channels fit), then channels 0 .. kh - 1 as float32, P floats a channel: each
 * input converted once for every channel pair, instead of once per pair (about half the
 * channels fit, the buffer being sized for int16 pairs). Returns the floats of the n pixels
 * from a on (a in channel 0), their channel stride and count, or none if they are not there. */
#define TT_FLOAT_STAGE_HEADER 3
_Static_assert(sizeof(void *) == sizeof(int32_t), "the stage keeps an address in a word");
static inline const float *float_staged(const int32_t *st, const int8_t *a, const int n, int32_t *stride,
                                        int32_t *kh) {
  if (!st) {
    return 0;
  }
  const int8_t *a0 = (const int8_t *)(uintptr_t)(uint32_t)st[0];
  const int32_t p = (int32_t)(a - a0);
  if (p < 0 || p + n > st[1]) {
    return 0;
  }
  *stride = st[1], *kh = st[2];
  return (const float *)(st + TT_FLOAT_STAGE_HEADER) + p;
}
#define TT_FLOAT_SUMS 1
#else
#define TT_FLOAT_SUMS 0
#endif

/* The int32 sums of n pixels (TT_PW_PIXELS, or 4) for two channels, plus init0 and init1: s[j]
 * channel 0's, s[n + j] channel 1's. (A sum that starts at what its caller would subtract
 * saves a subtraction per output.) */
static inline __attribute__((always_inline)) void pw_dot2_n(const int8_t *a, int32_t a_stride, const int8_t *w0,
                                                            int32_t w_fstride, int32_t k, int32_t *s, const int n,
                                                            int32_t init0, int32_t init1) {
#if defined(__ARM_FEATURE_DSP)
  (void)n; /* always 4 */
  int32_t s00 = init0, s01 = init0, s02 = init0, s03 = init0; /* s<channel><pixel> */
  int32_t s10 = init1, s11 = init1, s12 = init1, s13 = init1;
  const int8_t *end = w0 + (k & ~3);
  const int32_t a_stride2 = 2 * a_stride;
#pragma GCC unroll 1
  for (; w0 < end; w0 += 4, a += 2 * a_stride2) {
    uint32_t v0 = load4(w0), v1 = load4(w0 + w_fstride);
    TT_DOT2X4_HALF(load4(a), load4(a + a_stride2), __sxtb16(v0), __sxtb16(v1));
    TT_DOT2X4_HALF(load4(a + a_stride), load4(a + a_stride + a_stride2), sxtb16_ror8(v0), sxtb16_ror8(v1));
  }
  s[0] = s00, s[1] = s01, s[2] = s02, s[3] = s03, s[4] = s10, s[5] = s11, s[6] = s12, s[7] = s13;
  pw_dot_from(a, a_stride, end, 0, k & 3, s, 4);
  pw_dot_from(a, a_stride, end + w_fstride, 0, k & 3, s + 4, 4);
#elif TT_FLOAT_SUMS
  float t0[8], t1[8];
  pw_sums_f(a, a_stride, w0, w_fstride, k, t0, t1, n, 0, 0, 0, 1);
  for (int j = 0; j < n; ++j) { /* the inits added in int32: the float sums stay exact */
    s[j] = (int32_t)t0[j] + init0, s[n + j] = (int32_t)t1[j] + init1;
  }
#else
  int32_t t0[8], t1[8];
  for (int j = 0; j < n; ++j) {
    t0[j] = init0, t1[j] = init1;
  }
  for (int32_t i = 0; i < k; ++i, a += a_stride) {
    int32_t u = w0[i], v = w0[i + w_fstride];
    for (int j = 0; j < n; ++j) {
      t0[j] += u * a[j], t1[j] += v * a[j];
    }
  }
  for (int j = 0; j < n; ++j) {
    s[j] = t0[j], s[n + j] = t1[j];
  }
#endif
}

#if defined(__ARM_FEATURE_DSP)
/* Words of a staged group of 4 pixels: 8 per 4 input channels (see stage_rows). */
#define TT_STAGED_WORDS(k) (2 * ((k) & ~3))

/* The staged form of a row of k input channels (tt_pw_rows2_staged_s8): for each group of 4
 * pixels and each 4 channels i..i+3, the 8 words pw_dot4's loop makes from the rows and
 * throws away, the halfword pairs (a_i, a_i+2) of pixels 0..3, then (a_i+1, a_i+3). Built
 * once per row, it serves every output channel pair of that row. */
static void stage_rows(int32_t *st, const int8_t *a, int32_t a_stride, int32_t k, int32_t width) {
  for (int32_t x = 0; x + 4 <= width; x += 4) {
    const int8_t *p = a + x;
    for (int32_t i = 0; i + 4 <= k; i += 4, p = down4(p, a_stride), st += 8) {
      uint32_t r = load4(p), r2 = load4_down2(p, a_stride);
      uint32_t lo = pack_low(r, r2), hi = pack_high(r, r2);
      st[0] = __sxtb16(lo), st[1] = sxtb16_ror8(lo), st[2] = __sxtb16(hi), st[3] = sxtb16_ror8(hi);
      r = load4(p + a_stride), r2 = load4_down2(p + a_stride, a_stride);
      lo = pack_low(r, r2), hi = pack_high(r, r2);
      st[4] = __sxtb16(lo), st[5] = sxtb16_ror8(lo), st[6] = __sxtb16(hi), st[7] = sxtb16_ror8(hi);
    }
  }
}

/* pw_dot2_n from a staged group (st): 4 pixels x 2 channels a step as there, without the
 * packing: 8 staged words, 2 weight loads and 4 SXTB16 for 32 multiply-accumulates. The last
 * k % 4 channels come from the rows (a). */
static inline __attribute__((always_inline)) void pw_dot2_staged(const int32_t *st, const int8_t *a,
                                                                 int32_t a_stride, const int8_t *w0,
                                                                 int32_t w_fstride, int32_t k, int32_t *s,
                                                                 int32_t init0, int32_t init1) {
  int32_t s00 = init0, s01 = init0, s02 = init0, s03 = init0; /* s<channel><pixel> */
  int32_t s10 = init1, s11 = init1, s12 = init1, s13 = init1;
  const int32_t groups = k >> 2;
  if (groups > 0) {
    /* By hand: the 8 sums, the 3 pointers and 3 scratch registers take all 14 that Thumb-2
     * gives, where gcc spilled a sum, a scratch value, the stride and the loop's end (40
     * instructions a step of 32 multiply-accumulates). A channel's weight word is loaded
     * again for its odd halves rather than kept, the end compared from the stack, two steps
     * a loop (33.5 a step); an odd count enters at the second. */
    const int32_t *end = st + 8 * groups;
    const int8_t *w = w0, *w1 = w0 + w_fstride;
    int32_t c, d, e;
#define TT_DOT2_STAGED_PIXEL(p) /* one staged word: pixel p's pair, both channels */                \
  "ldr %[e], [%[st]], #4\n\t"                                                                       \
  "smlad %[s0" p "], %[e], %[c], %[s0" p "]\n\t"                                                     \
  "smlad %[s1" p "], %[e], %[d], %[s1" p "]\n\t"
#define TT_DOT2_STAGED_HALF(advance, split) /* the even (or odd) halves of both weight words */     \
  "ldr %[c], [%[w]]" advance "\n\t"                                                                 \
  "ldr %[d], [%[w1]]" advance "\n\t"                                                                \
  "sxtb16 %[c], %[c]" split "\n\t"                                                                  \
  "sxtb16 %[d], %[d]" split "\n\t" TT_DOT2_STAGED_PIXEL("0") TT_DOT2_STAGED_PIXEL("1")              \
      TT_DOT2_STAGED_PIXEL("2") TT_DOT2_STAGED_PIXEL("3")
#define TT_DOT2_STAGED_STEP TT_DOT2_STAGED_HALF("", "") TT_DOT2_STAGED_HALF(", #4", ", ror #8")
    __asm__("ldr %[e], %[n]\n\t"
            "tst %[e], #1\n\t"
            "bne 2f\n"
            "1:\n\t" TT_DOT2_STAGED_STEP "2:\n\t" TT_DOT2_STAGED_STEP
            "ldr %[e], %[end]\n\t"
            "cmp %[st], %[e]\n\t"
            "bne 1b\n\t"
            : [s00] "+r"(s00), [s01] "+r"(s01), [s02] "+r"(s02), [s03] "+r"(s03), [s10] "+r"(s10),
              [s11] "+r"(s11), [s12] "+r"(s12), [s13] "+r"(s13), [st] "+r"(st), [w] "+r"(w), [w1] "+r"(w1),
              [c] "=&r"(c), [d] "=&r"(d), [e] "=&r"(e)
            : [n] "m"(groups), [end] "m"(end)
            : "cc", "memory");
#undef TT_DOT2_STAGED_STEP
#undef TT_DOT2_STAGED_HALF
#undef TT_DOT2_STAGED_PIXEL
  }
  s[0] = s00, s[1] = s01, s[2] = s02, s[3] = s03, s[4] = s10, s[5] = s11, s[6] = s12, s[7] = s13;
  const int32_t done = k & ~3;
  pw_dot_from(a + done * a_stride, a_stride, w0 + done, 0, k & 3, s, 4);
  pw_dot_from(a + done * a_stride, a_stride, w0 + w_fstride + done, 0, k & 3, s + 4, 4);
}

/* pw_dot4 from a staged group: 8 staged words, one weight load and 2 SXTB16 for 16
 * multiply-accumulates, where packing the rows took 12 more. */
static inline __attribute__((always_inline)) void pw_dot1_staged(const int32_t *st, const int8_t *a, int32_t a_stride,
                                                                 const int8_t *w0, int32_t k, int32_t *s) {
  int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  const int32_t *end = st + TT_STAGED_WORDS(k);
  const int8_t *w = w0;
#pragma GCC unroll 1
  for (; st < end; st += 8, w += 4) {
    uint32_t v = load4(w);
    int32_t wp = __sxtb16(v);
    s0 = __smlad(st[0], wp, s0), s1 = __smlad(st[1], wp, s1), s2 = __smlad(st[2], wp, s2), s3 = __smlad(st[3], wp, s3);
    wp = sxtb16_ror8(v);
    s0 = __smlad(st[4], wp, s0), s1 = __smlad(st[5], wp, s1), s2 = __smlad(st[6], wp, s2), s3 = __smlad(st[7], wp, s3);
  }
  s[0] = s0, s[1] = s1, s[2] = s2, s[3] = s3;
  const int32_t done = k & ~3;
  pw_dot_from(a + done * a_stride, a_stride, w0 + done, 0, k & 3, s, 4);
}
#endif

/* The int32 sums of n pixels for two channels plus init0 and init1 (pw_dot2_n), from the staged
 * group st if there is one (only with the DSP extension). */
static inline __attribute__((always_inline)) void pw_dot2(const int32_t *st, const int8_t *a, int32_t a_stride,
                                                          const int8_t *w0, int32_t w_fstride, int32_t k, int32_t *s,
                                                          const int n, int32_t init0, int32_t init1) {
#if defined(__ARM_FEATURE_DSP)
  if (st) {
    pw_dot2_staged(st, a, a_stride, w0, w_fstride, k, s, init0, init1);
    return;
  }
#else
  (void)st; /* never staged */
#endif
  pw_dot2_n(a, a_stride, w0, w_fstride, k, s, n, init0, init1);
}

/* The staged group of the pixels from x (a multiple of 4), or none. */
static inline const int32_t *staged_at(const int32_t *st, int32_t x, int32_t k) {
#if defined(__ARM_FEATURE_DSP)
  return st ? st + (x / 4) * TT_STAGED_WORDS(k) : 0;
#else
  (void)x, (void)k;
  return st;
#endif
}

/* n pixels of tt_pw_rows2_s8's int32 path. */
static inline __attribute__((always_inline)) void rows2_step(float *acc0, float *acc1, const int8_t *a, int32_t a_stride,
                                                            const int8_t *w0, int32_t w_fstride, int32_t k,
                                                            int32_t fold0, int32_t fold1, const int32_t *st, const int n) {
#if TT_FLOAT_SUMS
  if (float_exact(fold0) && float_exact(fold1)) {
    float t0[8], t1[8];
    int32_t fs_stride = 0, fs_k = 0;
    const float *fs = float_staged(st, a, n, &fs_stride, &fs_k);
    pw_sums_f(a, a_stride, w0, w_fstride, k, t0, t1, n, fs, fs_stride, fs_k, 1);
    for (int j = 0; j < n; ++j) {
      acc0[j] = t0[j] - (float)fold0, acc1[j] = t1[j] - (float)fold1;
    }
    return;
  }
#endif
  int32_t s[2 * TT_PW_PIXELS];
  pw_dot2(st, a, a_stride, w0, w_fstride, k, s, n, -fold0, -fold1);
  for (int j = 0; j < n; ++j) {
    acc0[j] = (float)s[j], acc1[j] = (float)s[n + j];
  }
}

/* Whether both channels' weights (w0, w0 + w_fstride) take the int32 path (weights_exact),
 * their zero-point folds in fold[]: read from `folds` (the pair's 3 words of tt_pw_folds_s8)
 * if given, else summed here. */
static inline __attribute__((always_inline)) int pair_exact(const int8_t *w0, int32_t w_fstride, int32_t k, int32_t zx,
                                                           const int32_t *folds, int32_t fold[2]) {
  if (folds) {
    fold[0] = folds[0], fold[1] = folds[1];
    return folds[2];
  }
  return weights_exact(w0, 1, k, zx, &fold[0]) && weights_exact(w0 + w_fstride, 1, k, zx, &fold[1]);
}

/* tt_pw_folds_s8: pair_exact's 3 words (the two folds, whether both are exact) for `pairs`
 * output channel pairs of contiguous weights (pair p at w + 2 * p * w_fstride), into `folds`:
 * tensorize.py calls it once per kernel, in a block of its own before the loops, where the
 * staged kernels' weights do not change within the kernel, and passes each call its pair's
 * words, instead of summing the weights again in every call (about one instruction per
 * weight, per row). */
int32_t tt_pw_folds_s8(void *folds_, void *w_, int32_t w_fstride, int32_t k, int32_t zx, int32_t pairs) {
  int32_t *folds = (int32_t *)folds_;
  const int8_t *w = (const int8_t *)w_;
  for (int32_t p = 0; p < pairs; ++p, w += 2 * w_fstride, folds += 3) {
    int32_t fold[2] = {0, 0};
    folds[2] = pair_exact(w, w_fstride, k, zx, 0, fold);
    folds[0] = fold[0], folds[1] = fold[1];
  }
  return 0;
}

/* tt_pw_rows2_s8, and tt_pw_rows2_staged_s8 with its staged row (or none): one copy for both
 * (a test per 4 pixels, where inlining it into each doubled the flash it takes). */
static __attribute__((noinline)) int32_t pw_rows2(void *acc_, void *a_, int32_t a_stride, void *w_, int32_t w_fstride,
                                                  int32_t w_stride, int32_t k, int32_t width, int32_t acc_stride,
                                                  int32_t zx, int32_t zeroed, const int32_t *st,
                                                  const int32_t *folds) {
  float *acc0 = (float *)acc_, *acc1 = acc0 + acc_stride;
  const int8_t *a = (const int8_t *)a_, *w0 = (const int8_t *)w_, *w1 = w0 + w_fstride;
  int32_t fold[2];
  if (w_stride != 1 || !pair_exact(w0, w_fstride, k, zx, folds, fold) || !starts_at_zero(acc0, width, zeroed) ||
      !starts_at_zero(acc1, width, zeroed)) {
    zero_unless_kept(acc0, width, zeroed), zero_unless_kept(acc1, width, zeroed);
    tt_pw_row_s8(acc0, a_, a_stride, w_, w_stride, k, width, zx);
    tt_pw_row_s8(acc1, a_, a_stride, (void *)w1, w_stride, k, width, zx);
    return 0;
  }
  const int32_t fold0 = fold[0], fold1 = fold[1];
  int32_t x = 0;
  for (; x + TT_PW_PIXELS <= width; x += TT_PW_PIXELS) {
    rows2_step(acc0 + x, acc1 + x, a + x, a_stride, w0, w_fstride, k, fold0, fold1, staged_at(st, x, k), TT_PW_PIXELS);
  }
#if TT_PW_PIXELS > 4 /* the rest of a row of 4k pixels */
  for (; x + 4 <= width; x += 4) {
    rows2_step(acc0 + x, acc1 + x, a + x, a_stride, w0, w_fstride, k, fold0, fold1, staged_at(st, x, k), 4);
  }
#endif
  for (; x < width; ++x) {
    acc0[x] = (float)(pw_dot(a + x, a_stride, w0, 1, k) - fold0);
    acc1[x] = (float)(pw_dot(a + x, a_stride, w1, 1, k) - fold1);
  }
  return 0;
}

int32_t tt_pw_rows2_s8(void *acc_, void *a_, int32_t a_stride, void *w_, int32_t w_fstride, int32_t w_stride,
                       int32_t k, int32_t width, int32_t acc_stride, int32_t zx, int32_t zeroed) {
  return pw_rows2(acc_, a_, a_stride, w_, w_fstride, w_stride, k, width, acc_stride, zx, zeroed, 0, 0);
}

/* tt_pw_stage_s8: stages `pixels` pixels of k input channels (rows a_stride apart, the pixels
 * one after the other: a row, or whole planes) for the staged kernels below: stage_rows' words,
 * (pixels / 4) * 8 * (k / 4) of them. tensorize.py calls it once, in a block of its own before
 * the loop whose calls read it (so TVM keeps the buffer alive across that loop). On RV32F the
 * same words hold as many channels as fit as float32 (float_staged); elsewhere it does
 * nothing, and the staged kernels read the rows. */
int32_t tt_pw_stage_s8(void *stage, void *a, int32_t a_stride, int32_t k, int32_t pixels) {
#if defined(__ARM_FEATURE_DSP)
  stage_rows((int32_t *)stage, (const int8_t *)a, a_stride, k, pixels);
#elif TT_FLOAT_SUMS
  int32_t *st = (int32_t *)stage, words = (pixels / 4) * 8 * (k / 4); /* what the buffer holds at least */
  int32_t kh = pixels > 0 && words > TT_FLOAT_STAGE_HEADER ? (words - TT_FLOAT_STAGE_HEADER) / pixels : 0;
  kh = kh < k ? kh : k;
  st[0] = (int32_t)(uintptr_t)a, st[1] = pixels, st[2] = kh;
  float *f = (float *)(st + TT_FLOAT_STAGE_HEADER);
  const int8_t *row = (const int8_t *)a;
  for (int32_t i = 0; i < kh; ++i, row += a_stride, f += pixels) {
    for (int32_t x = 0; x < pixels; ++x) {
      f[x] = (float)row[x];
    }
  }
#else
  (void)stage, (void)a, (void)a_stride, (void)k, (void)pixels;
#endif
  return 0;
}

/* The staged words a staged kernel reads (none without the DSP extension). */
static inline const int32_t *staged(const void *stage) {
#if defined(__ARM_FEATURE_DSP) || TT_FLOAT_SUMS
  return (const int32_t *)stage;
#else
  (void)stage;
  return 0;
#endif
}

/* The staged words of the input at a, from the planes that start at `plane` which
 * tt_pw_stage_s8 staged (none unless a's pixel offset is a multiple of 4). */
static inline const int32_t *staged_from(const void *stage, const void *a, const void *plane, int32_t k) {
  const int32_t *st = staged(stage);
  const int32_t offset = (int32_t)((const int8_t *)a - (const int8_t *)plane);
  return st && (TT_FLOAT_SUMS || offset % 4 == 0) ? staged_at(st, offset, k) : 0; /* RV32F: any pixel */
}

/* tt_pw_rows2_s8 for one of a row's output channel pairs, reading the input from the row
 * tt_pw_stage_s8 staged, and its weights' folds from `folds` if given (tt_pw_folds_s8). */
int32_t tt_pw_rows2_staged_s8(void *acc_, void *a_, int32_t a_stride, void *w_, int32_t w_fstride, int32_t w_stride,
                              int32_t k, int32_t width, int32_t acc_stride, int32_t zx, int32_t zeroed, void *stage,
                              void *folds) {
  return pw_rows2(acc_, a_, a_stride, w_, w_fstride, w_stride, k, width, acc_stride, zx, zeroed, staged(stage),
                  (const int32_t *)folds);
}

/* tt_pw_rows2_s8 for a row of the planes that start at `plane`, reading the input from the
 * planes tt_pw_stage_s8 staged: a conv whose output channel pairs are outside its rows
 * (weights the kernel computes a pair at a time) stages its whole input once. */
int32_t tt_pw_rows2_planes_staged_s8(void *acc_, void *a_, int32_t a_stride, void *w_, int32_t w_fstride,
                                     int32_t w_stride, int32_t k, int32_t width, int32_t acc_stride, int32_t zx,
                                     int32_t zeroed, void *stage, void *plane) {
  return pw_rows2(acc_, a_, a_stride, w_, w_fstride, w_stride, k, width, acc_stride, zx, zeroed,
                  staged_from(stage, a_, plane, k), 0);
}

/* tt_pw_row_f32s8: one row of the input gradient of a pointwise conv (float32 output
 * gradient a, int8 weights w), for one input channel:
 *
 *     acc[x] += a[i * a_stride + x] * (float)w[i * w_stride]    for i < k, x < width
 *
 * each sum taken in increasing i from acc[x], exactly as the TIR loop: the same float32
 * products and additions in the same order (the build never contracts them into FMAs),
 * so the same bits. What changes is where the sums live: 8 (then 4) pixels in registers,
 * each weight converted once for them. */
int32_t tt_pw_row_f32s8(void *acc_, void *a_, int32_t a_stride, void *w_, int32_t w_stride, int32_t k,
                        int32_t width) {
  float *acc = (float *)acc_;
  const float *a = (const float *)a_;
  const int8_t *w = (const int8_t *)w_;
  int32_t x = 0;
  for (; x + 8 <= width; x += 8) {
    float s[8];
    for (int j = 0; j < 8; ++j) {
      s[j] = acc[x + j];
    }
    const float *ap = a + x;
TT_VLDM_LOOP
    for (int32_t i = 0; i < k; ++i, ap += a_stride) {
      float wi = (float)w[i * w_stride], v[8];
      load_floats(ap, v, 8);
      for (int j = 0; j < 8; ++j) {
        s[j] = mul_add(s[j], v[j], wi);
      }
    }
    for (int j = 0; j < 8; ++j) {
      acc[x + j] = s[j];
    }
  }
  for (; x + 4 <= width; x += 4) {
    float s0 = acc[x], s1 = acc[x + 1], s2 = acc[x + 2], s3 = acc[x + 3];
    const float *ap = a + x;
    for (int32_t i = 0; i < k; ++i, ap += a_stride) {
      float wi = (float)w[i * w_stride];
      s0 = mul_add(s0, ap[0], wi);
      s1 = mul_add(s1, ap[1], wi);
      s2 = mul_add(s2, ap[2], wi);
      s3 = mul_add(s3, ap[3], wi);
    }
    acc[x] = s0, acc[x + 1] = s1, acc[x + 2] = s2, acc[x + 3] = s3;
  }
  for (; x < width; ++x) {
    float s = acc[x];
    for (int32_t i = 0; i < k; ++i) {
      s = s + a[i * a_stride + x] * (float)w[i * w_stride];
    }
    acc[x] = s;
  }
  return 0;
}

/* tt_dw_plane_s8: one channel of an int8 depthwise conv (kh x kw window, stride, zero
 * padding of `pad` on every side), all out_h x out_w outputs:
 *
 *     acc[oy][ox] += sum_{ky, kx} (inside ? (float)a[iy][ix] - zx : 0.0f) * (float)w[ky][kx]
 *
 * with iy = oy * stride + ky - pad, ix = ox * stride + kx - pad, in the TIR's order (ky, then
 * kx). Every tap is an integer of magnitude below 2^15, so for windows of up to 514 taps,
 * with the accumulator starting at +0.0, every float32 partial sum is an exact integer: the
 * int32 sum (zero point folded, padded taps skipped since they add zero) gives the same
 * bits. It is taken for windows up to TT_DW_MAX_TAPS (7x7, whose weights it copies to the
 * stack as int32); otherwise (larger windows, an accumulator not at zero) the float32 loop
 * runs. Windows inside the plane need no bounds tests and take paths of four outputs a step
 * for 3x3 (k3_row), 5x5 and 7x7 (dw_inside_packed, dw_inside4). A small plane
 * (TT_DW_PADDED_BYTES with its padding) is first copied into a frame of zero points, so that
 * all its windows are inside; in a larger one the windows on the border add the taps inside
 * the plane only. */
static __attribute__((cold, noinline)) void dw_plane_float(float *acc, const int8_t *a, int32_t a_row, const int8_t *w, int32_t w_row, int32_t h,
                           int32_t wd, int32_t kh, int32_t kw, int32_t stride, int32_t pad, int32_t out_h,
                           int32_t out_w, float zx) {
  for (int32_t oy = 0; oy < out_h; ++oy) {
    for (int32_t ox = 0; ox < out_w; ++ox) {
      float s = acc[oy * out_w + ox];
      for (int32_t ky = 0; ky < kh; ++ky) {
        for (int32_t kx = 0; kx < kw; ++kx) {
          int32_t iy = oy * stride + ky - pad, ix = ox * stride + kx - pad;
          float v = (iy >= 0 && iy < h && ix >= 0 && ix < wd) ? (float)a[iy * a_row + ix] - zx : 0.0f;
          s = s + v * (float)w[ky * w_row + kx];
        }
      }
      acc[oy * out_w + ox] = s;
    }
  }
}

#if !defined(__ARM_FEATURE_DSP)
/* The window sums of the plain C paths (k3_row, dw_inside4): in float where the core has a
 * float multiply-accumulate (RV32F's FMADD.S) and no integer one. It rounds nothing, as every
 * partial sum of a window's taps (at most TT_CONV_TABLE_ROWS x 3 of them, |w * x| <= 2^14)
 * is an integer below 2^24 (see pw_dot2_n): one instruction a multiply-accumulate instead of
 * two, each input converted once for the taps that read it. */
#if defined(__riscv) && defined(__riscv_flen)
typedef float tap_sum;
#define tap_mac(s, w, x) __builtin_fmaf((w), (x), (s))
#else
typedef int32_t tap_sum;
#define tap_mac(s, w, x) ((s) + (w) * (x))
#endif
#endif

/* A 3-wide window row's weights as the fast path reads them: with the DSP extension (w0, w2)
 * as halfwords for SMLAD and w1 apart, else the three. */
#if defined(__ARM_FEATURE_DSP)
typedef struct {
  int32_t w02, w1;
} k3_taps;
static inline k3_taps k3_taps_of(int32_t w0, int32_t w1, int32_t w2) {
  k3_taps t = {(int32_t)((uint32_t)(uint16_t)w0 | (uint32_t)w2 << 16), w1};
  return t;
}
static inline int32_t k3_w0(k3_taps t) { return (int16_t)(uint16_t)(uint32_t)t.w02; }
static inline int32_t k3_w1(k3_taps t) { return t.w1; }
static inline int32_t k3_w2(k3_taps t) { return (int16_t)(uint16_t)((uint32_t)t.w02 >> 16); }
#else
/* Plain C: the three, as tap_sum (above). */
typedef struct {
  tap_sum w0, w1, w2;
} k3_taps;
static inline k3_taps k3_taps_of(int32_t w0, int32_t w1, int32_t w2) {
  k3_taps t = {(tap_sum)w0, (tap_sum)w1, (tap_sum)w2};
  return t;
}
static inline int32_t k3_w0(k3_taps t) { return (int32_t)t.w0; }
static inline int32_t k3_w1(k3_taps t) { return (int32_t)t.w1; }
static inline int32_t k3_w2(k3_taps t) { return (int32_t)t.w2; }
#endif

static inline k3_taps k3_pack(const int8_t *w) { return k3_taps_of(w[0], w[1], w[2]); }

/* The int32 sum a pass left in an accumulator (the bits of *p), and the other way. */
static inline int32_t partial_at(const float *p) { return float_bits(*p); }
static inline void set_partial(float *p, int32_t v) {
  float f;
  memcpy(&f, &v, sizeof f);
  *p = f;
}

/* Where a depthwise path puts each output's final value v, its window's sum minus `fold`:
 * with `rq` 0 the float32 the TIR's loop leaves in the accumulator, (float)v; with `rq` 1
 * (tt_dw_plane_requant_s8) the int8 that the requantization after that loop makes of it,
 * straight away, the sums never stored. The caller then passes fold - bias as the fold, so
 * that v has the bias added (requant_biased). `rq` is a constant in every copy; q is indexed
 * as the accumulator is (dw_at moves both). */
typedef struct {
  int8_t *q;
  float scale;
  int32_t offset; /* requant_scaled's */
} dw_requant;

static inline __attribute__((always_inline)) void dw_put(float *out, dw_requant r, int32_t i, int32_t v,
                                                       const int rq) {
  if (rq) {
    r.q[i] = requant_biased(v, r.scale, r.offset);
  } else {
    out[i] = (float)v;
  }
}

#define TT_NO_REQUANT ((dw_requant){NULL, 0.0f, 0}) /* with rq 0 */

static inline __attribute__((always_inline)) dw_requant dw_at(dw_requant r, int32_t i, const int rq) {
  if (rq) {
    r.q += i;
  }
  return r;
}

/* Output o of a pass over some input channels: its first pass sets the int32 partial sum,
 * later ones add to it, the last writes the float the loop would (the zero point folded). */
static inline __attribute__((always_inline)) void k3_put(float *o, int32_t s, int first, int last, int32_t fold) {
  s += first ? 0 : partial_at(o);
  if (last) {
    *o = (float)(s - fold);
  } else {
    set_partial(o, s);
  }
}

/* k3_put, or with `rq` the one pass's output requantized (dw_put). */
static inline __attribute__((always_inline)) void k3_out(float *out, dw_requant r, int32_t i, int32_t s, int first,
                                                       int last, int32_t fold, const int rq) {
  if (rq) {
    dw_put(out, r, i, s - fold, 1);
  } else {
    k3_put(out + i, s, first, last, fold);
  }
}

/* k3_out (dw_put) for a window sum of the plain C paths, a tap_sum: on RV32F, requantized
 * from the float sum, whose difference with the fold (here the zero point's fold minus the
 * bias, a float32 exactly: tt_dw_plane_requant_s8 checks) rounds the exact integer once, as
 * converting the int32 difference does, with one FSUB.S for two conversions. */
#if !defined(__ARM_FEATURE_DSP)
static inline __attribute__((always_inline)) void dw_out_sum(float *out, dw_requant r, int32_t i, tap_sum s,
                                                           int first, int last, int32_t fold, const int rq) {
#if TT_FLOAT_SUMS
  if (rq) {
    r.q[i] = requant_scaled((s - (float)fold) * r.scale, r.offset);
    return;
  }
#endif
  k3_out(out, r, i, (int32_t)s, first, last, fold, rq);
}
#endif

/* Outputs [0, count) of one output row whose 3-wide windows lie inside the row, over the
 * `rows` x n window rows of table t (window row ky of input channel j at row + ky * a_row +
 * j * a_chan, ky-major); stride 1 or 2. Four outputs a step, then two: with the DSP extension
 * two word loads give the inputs as halfword pairs (x0, x2), (x1, x3), (x2, x4) or (x4, x6),
 * ... for SMLAD with (w0, w2) and SMLA<x><y> with w1: 12 multiply-accumulates in 8 (stride 1)
 * or 10 instructions; in plain C the 6 or 9 inputs loaded once for the 12 taps (FMADD.S on
 * RV32F, see tap_sum). No input outside the windows is read. */
static inline __attribute__((always_inline)) void k3_row(float *out, const int8_t *row, int32_t a_chan,
                                                       int32_t a_row, const k3_taps *t, int32_t n, int32_t rows,
                                                       const int32_t stride, int32_t count, int first, int last,
                                                       int32_t fold, dw_requant qr, const int rq) {
  int32_t ox = 0;
#if !defined(__ARM_FEATURE_DSP)
  for (; ox + 8 <= count; ox += 8) { /* plain C: eight outputs a step, each input converted once for them */
    tap_sum f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const k3_taps *tk = t;
    for (int32_t ky = 0; ky < rows; ++ky) {
      const int8_t *r = row + ox * stride + ky * a_row;
      for (int32_t j = 0; j < n; ++j, r += a_chan, ++tk) {
        const tap_sum w0 = tk->w0, w1 = tk->w1, w2 = tk->w2;
        tap_sum x[7 * 2 + 3];
        for (int q = 0; q < 7 * stride + 3; ++q) {
          x[q] = (tap_sum)r[q];
        }
        for (int o = 0; o < 8; ++o) {
          f[o] = tap_mac(tap_mac(tap_mac(f[o], w0, x[o * stride]), w1, x[o * stride + 1]), w2, x[o * stride + 2]);
        }
      }
    }
    for (int o = 0; o < 8; ++o) {
      dw_out_sum(out, qr, ox + o, f[o], first, last, fold, rq);
    }
  }
#endif
  for (; ox + 4 <= count; ox += 4) {
#if defined(__ARM_FEATURE_DSP)
    int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#else
    tap_sum f0 = 0, f1 = 0, f2 = 0, f3 = 0;
#endif
    const k3_taps *tk = t;
    for (int32_t ky = 0; ky < rows; ++ky) {
      const int8_t *r = row + ox * stride + ky * a_row;
      for (int32_t j = 0; j < n; ++j, r += a_chan, ++tk) {
#if defined(__ARM_FEATURE_DSP)
        const int32_t w02 = tk->w02, w1 = tk->w1;
        if (stride == 1) {
          uint32_t v0 = load4(r), v1 = load4(r + 2);
          int32_t e0 = __sxtb16(v0), o0 = sxtb16_ror8(v0), e1 = __sxtb16(v1), o1 = sxtb16_ror8(v1);
          s0 = __smlad(e0, w02, s0), s0 = __smlabb(o0, w1, s0);
          s1 = __smlad(o0, w02, s1), s1 = __smlatb(e0, w1, s1);
          s2 = __smlad(e1, w02, s2), s2 = __smlatb(o0, w1, s2);
          s3 = __smlad(o1, w02, s3), s3 = __smlatb(e1, w1, s3);
        } else {
          uint32_t v0 = load4(r), v1 = load4(r + 4);
          int32_t e0 = __sxtb16(v0), o0 = sxtb16_ror8(v0), e1 = __sxtb16(v1), o1 = sxtb16_ror8(v1);
          s0 = __smlad(e0, w02, s0), s0 = __smlabb(o0, w1, s0);
          s1 = __smlatb(e0, w02, s1), s1 = __smlatb(o0, w1, s1), s1 = __smlabt(e1, w02, s1);
          s2 = __smlad(e1, w02, s2), s2 = __smlabb(o1, w1, s2);
          s3 = __smlatb(e1, w02, s3), s3 = __smlatb(o1, w1, s3), s3 = __smlabt(r[8], w02, s3);
        }
#else
        const tap_sum w0 = tk->w0, w1 = tk->w1, w2 = tk->w2;
        tap_sum x[9];
        for (int q = 0; q < 3 * stride + 3; ++q) {
          x[q] = (tap_sum)r[q];
        }
        f0 = tap_mac(tap_mac(tap_mac(f0, w0, x[0]), w1, x[1]), w2, x[2]);
        f1 = tap_mac(tap_mac(tap_mac(f1, w0, x[stride]), w1, x[stride + 1]), w2, x[stride + 2]);
        f2 = tap_mac(tap_mac(tap_mac(f2, w0, x[2 * stride]), w1, x[2 * stride + 1]), w2, x[2 * stride + 2]);
        f3 = tap_mac(tap_mac(tap_mac(f3, w0, x[3 * stride]), w1, x[3 * stride + 1]), w2, x[3 * stride + 2]);
#endif
      }
    }
#if !defined(__ARM_FEATURE_DSP)
    dw_out_sum(out, qr, ox, f0, first, last, fold, rq), dw_out_sum(out, qr, ox + 1, f1, first, last, fold, rq);
    dw_out_sum(out, qr, ox + 2, f2, first, last, fold, rq), dw_out_sum(out, qr, ox + 3, f3, first, last, fold, rq);
#else
    k3_out(out, qr, ox, s0, first, last, fold, rq), k3_out(out, qr, ox + 1, s1, first, last, fold, rq);
    k3_out(out, qr, ox + 2, s2, first, last, fold, rq), k3_out(out, qr, ox + 3, s3, first, last, fold, rq);
#endif
  }
  for (; ox + 2 <= count; ox += 2) {
#if defined(__ARM_FEATURE_DSP)
    int32_t s0 = 0, s1 = 0;
#else
    tap_sum f0 = 0, f1 = 0;
#endif
    const k3_taps *tk = t;
    for (int32_t ky = 0; ky < rows; ++ky) {
      const int8_t *r = row + ox * stride + ky * a_row;
      for (int32_t j = 0; j < n; ++j, r += a_chan, ++tk) {
#if defined(__ARM_FEATURE_DSP)
        const int32_t w02 = tk->w02, w1 = tk->w1;
        uint32_t v = load4(r);
        int32_t e = __sxtb16(v), o = sxtb16_ror8(v); /* (x0, x2), (x1, x3) */
        s0 = __smlad(e, w02, s0), s0 = __smlabb(o, w1, s0);
        if (stride == 1) {
          s1 = __smlad(o, w02, s1), s1 = __smlatb(e, w1, s1);
        } else {
          s1 = __smlatb(e, w02, s1), s1 = __smlatb(o, w1, s1), s1 = __smlabt(r[4], w02, s1);
        }
#else
        const tap_sum w0 = tk->w0, w1 = tk->w1, w2 = tk->w2;
        f0 = tap_mac(tap_mac(tap_mac(f0, w0, (tap_sum)r[0]), w1, (tap_sum)r[1]), w2, (tap_sum)r[2]);
        f1 = tap_mac(tap_mac(tap_mac(f1, w0, (tap_sum)r[stride]), w1, (tap_sum)r[stride + 1]), w2, (tap_sum)r[stride + 2]);
#endif
      }
    }
#if !defined(__ARM_FEATURE_DSP)
    dw_out_sum(out, qr, ox, f0, first, last, fold, rq), dw_out_sum(out, qr, ox + 1, f1, first, last, fold, rq);
#else
    k3_out(out, qr, ox, s0, first, last, fold, rq), k3_out(out, qr, ox + 1, s1, first, last, fold, rq);
#endif
  }
  if (ox < count) { /* the last one alone */
    int32_t s = 0;
    const k3_taps *tk = t;
    for (int32_t ky = 0; ky < rows; ++ky) {
      const int8_t *r = row + ox * stride + ky * a_row;
      for (int32_t j = 0; j < n; ++j, r += a_chan, ++tk) {
        s += k3_w0(*tk) * r[0] + k3_w1(*tk) * r[1] + k3_w2(*tk) * r[2];
      }
    }
    k3_out(out, qr, ox, s, first, last, fold, rq);
  }
}

/* Outputs [0, count) of a row of whole windows, 3 wide at stride 1 or 2, over the `rows` x n
 * window rows of table t (as k3_row), each the window's sum minus `fold`: k3_row with the
 * commonest shapes as compile-time constants, so that their loops over window rows unroll
 * (a depthwise 3x3 window, one channel, and the stem's, three). */
static __attribute__((noinline)) void k3_row_sums(float *out, const int8_t *row, int32_t a_chan, int32_t a_row,
                                                  const k3_taps *t, int32_t n, int32_t rows, int32_t stride,
                                                  int32_t count, int32_t fold) {
  if (n == 1 && rows == 3) {
    if (stride == 1) {
      k3_row(out, row, a_chan, a_row, t, 1, 3, 1, count, 1, 1, fold, TT_NO_REQUANT, 0);
    } else {
      k3_row(out, row, a_chan, a_row, t, 1, 3, 2, count, 1, 1, fold, TT_NO_REQUANT, 0);
    }
  } else if (n == 3 && rows == 3) {
    if (stride == 1) {
      k3_row(out, row, a_chan, a_row, t, 3, 3, 1, count, 1, 1, fold, TT_NO_REQUANT, 0);
    } else {
      k3_row(out, row, a_chan, a_row, t, 3, 3, 2, count, 1, 1, fold, TT_NO_REQUANT, 0);
    }
  } else if (stride == 1) {
    k3_row(out, row, a_chan, a_row, t, n, rows, 1, count, 1, 1, fold, TT_NO_REQUANT, 0);
  } else {
    k3_row(out, row, a_chan, a_row, t, n, rows, 2, count, 1, 1, fold, TT_NO_REQUANT, 0);
  }
}

/* k3_row_sums for a depthwise 3x3 window (one channel) with its outputs requantized
 * (dw_put): `fold` is the zero point's fold minus the bias. */
static __attribute__((noinline)) void k3_row_requant(dw_requant qr, const int8_t *row, int32_t a_row,
                                                     const k3_taps *t, int32_t stride, int32_t count, int32_t fold) {
  if (stride == 1) {
    k3_row(NULL, row, 0, a_row, t, 1, 3, 1, count, 1, 1, fold, qr, 1);
  } else {
    k3_row(NULL, row, 0, a_row, t, 1, 3, 2, count, 1, 1, fold, qr, 1);
  }
}

/* sum of a full kh x kw window, weights times inputs (the zero point folded by the caller);
 * inlined with constant sizes for the usual windows so that the compiler unrolls it. The
 * weights come from a local int32 copy: no store through `out` can alias them, so they
 * stay in registers. */
static inline __attribute__((always_inline)) int32_t dw_window(const int8_t *row, int32_t a_row, const int32_t *w,
                                                             int32_t kh, int32_t kw) {
  int32_t s = 0;
  for (int32_t ky = 0; ky < kh; ++ky, row += a_row, w += kw) {
    for (int32_t kx = 0; kx < kw; ++kx) {
      s += w[kx] * row[kx];
    }
  }
  return s;
}

/* Outputs [ox0, ox1) of one row whose windows lie inside the plane. */
static inline __attribute__((always_inline)) void dw_inside(float *out, const int8_t *row, int32_t a_row,
                                                          const int32_t *w, int32_t kh, int32_t kw, int32_t stride,
                                                          int32_t ox0, int32_t ox1, int32_t fold, dw_requant qr,
                                                          const int rq) {
  for (int32_t ox = ox0; ox < ox1; ++ox) {
    dw_put(out, qr, ox, dw_window(row + ox * stride, a_row, w, kh, kw) - fold, rq);
  }
}

#if defined(__ARM_FEATURE_DSP)
#define TT_DW_PACKED_ROW 4 /* words per window row of 5x5 and 7x7 weights packed for SMLAD */

/* The weights of a 5x5 or 7x7 window as halfword pairs, per window row: (w0, w2), (w1, w3),
 * then w4 (5 wide), or (w4, w6) and w5 (7 wide). */
static void pack_window(int32_t *wp, const int32_t *w, int32_t kh, int32_t kw) {
  for (int32_t ky = 0; ky < kh; ++ky, w += kw, wp += TT_DW_PACKED_ROW) {
    wp[0] = (int32_t)((uint32_t)(uint16_t)w[0] | (uint32_t)w[2] << 16);
    wp[1] = (int32_t)((uint32_t)(uint16_t)w[1] | (uint32_t)w[3] << 16);
    wp[2] = kw == 5 ? w[4] : (int32_t)((uint32_t)(uint16_t)w[4] | (uint32_t)w[6] << 16);
    wp[3] = kw == 5 ? 0 : w[5];
  }
}

/* s plus one window row of one output, inputs p[0 .. kw): the word p[0..3] split by SXTB16
 * into (x0, x2) and (x1, x3) for SMLAD; for 7 wide the word p[3..6] into (x3, x5) and
 * (x4, x6). No input outside the window is read. */
static inline __attribute__((always_inline)) int32_t dw_row_taps(const int8_t *p, const int32_t *wp, const int kw,
                                                               int32_t s) {
  uint32_t v = load4(p);
  s = __smlad(__sxtb16(v), wp[0], s);
  s = __smlad(sxtb16_ror8(v), wp[1], s);
  if (kw == 5) {
    return __smlabb(p[4], wp[2], s);
  }
  v = load4(p + 3);
  s = __smlad(sxtb16_ror8(v), wp[2], s); /* x4 w4 + x6 w6 */
  return __smlatb(__sxtb16(v), wp[3], s); /* x5 w5 */
}

/* The halfword pair (x_j, x_j+2) of inputs p[0 .. span): SXTB16 of the word at p + j, or,
 * where that word would read past the span, the ror-8 form of the word at p + j - 1. */
static inline __attribute__((always_inline)) int32_t dw_pair(const int8_t *p, const int j, const int span) {
  return j % 2 == 0 && j + 3 < span ? __sxtb16(load4(p + j)) : sxtb16_ror8(load4(p + j - 1));
}

/* s[0..3] plus one window row of four outputs stride apart, inputs p[0 .. span): each output's
 * window row as dw_row_taps takes it, from the pairs (x_j, x_j+2) of the words at even j,
 * each loaded and split once for the four (a tap alone: the bottom of the pair starting at it,
 * or the top of the one two before). */
static inline __attribute__((always_inline)) void dw_row_taps4(const int8_t *p, const int32_t *wp, const int kw,
                                                              const int stride, int32_t s[4]) {
  const int span = 3 * stride + kw;
  const int32_t w0 = wp[0], w1 = wp[1], w2 = wp[2];
  for (int o = 0; o < 4; ++o) {
    const int b = o * stride;
    s[o] = __smlad(dw_pair(p, b, span), w0, s[o]);
    s[o] = __smlad(dw_pair(p, b + 1, span), w1, s[o]);
    if (kw == 5) {
      s[o] = b + 4 + 2 < span ? __smlabb(dw_pair(p, b + 4, span), w2, s[o]) : __smlatb(dw_pair(p, b + 2, span), w2, s[o]);
    } else {
      s[o] = __smlad(dw_pair(p, b + 4, span), w2, s[o]);
      s[o] = b + 5 + 2 < span ? __smlabb(dw_pair(p, b + 5, span), wp[3], s[o])
                              : __smlatb(dw_pair(p, b + 3, span), wp[3], s[o]);
    }
  }
}

/* Outputs [ox0, ox1) of a row whose kh x kw (5x5, 7x7) windows lie inside the plane, four
 * outputs a step (then two, then one): each window row's packed weights loaded once for them,
 * and at stride 1 each input word split once for the four. */
static inline __attribute__((always_inline)) void dw_inside_packed(float *out, const int8_t *row, int32_t a_row,
                                                                 const int32_t *wp, const int kh, const int kw,
                                                                 const int32_t stride, int32_t ox0, int32_t ox1,
                                                                 int32_t fold, dw_requant qr, const int rq) {
  int32_t ox = ox0;
  for (; (stride == 1 || stride == 2) && ox + 4 <= ox1; ox += 4) {
    const int8_t *p = row + ox * stride;
    int32_t s[4] = {0, 0, 0, 0};
    for (int ky = 0; ky < kh; ++ky, p += a_row) {
      dw_row_taps4(p, wp + ky * TT_DW_PACKED_ROW, kw, stride, s);
    }
    dw_put(out, qr, ox, s[0] - fold, rq), dw_put(out, qr, ox + 1, s[1] - fold, rq);
    dw_put(out, qr, ox + 2, s[2] - fold, rq), dw_put(out, qr, ox + 3, s[3] - fold, rq);
  }
  for (; ox + 2 <= ox1; ox += 2) {
    const int8_t *p = row + ox * stride;
    int32_t s0 = 0, s1 = 0;
    for (int ky = 0; ky < kh; ++ky, p += a_row) {
      s0 = dw_row_taps(p, wp + ky * TT_DW_PACKED_ROW, kw, s0);
      s1 = dw_row_taps(p + stride, wp + ky * TT_DW_PACKED_ROW, kw, s1);
    }
    dw_put(out, qr, ox, s0 - fold, rq), dw_put(out, qr, ox + 1, s1 - fold, rq);
  }
  if (ox < ox1) {
    const int8_t *p = row + ox * stride;
    int32_t s = 0;
    for (int ky = 0; ky < kh; ++ky, p += a_row) {
      s = dw_row_taps(p, wp + ky * TT_DW_PACKED_ROW, kw, s);
    }
    dw_put(out, qr, ox, s - fold, rq);
  }
}

#else
/* Outputs [ox0, ox1) of a row whose k x k windows (5x5, 7x7) lie inside the plane, four
 * outputs a step in plain C: a window row's inputs converted once to tap_sum for the four,
 * the weights wk already tap_sum. */
static inline __attribute__((always_inline)) void dw_inside4(float *out, const int8_t *row, int32_t a_row,
                                                           const tap_sum *wk, const int k, const int32_t stride,
                                                           int32_t ox0, int32_t ox1, int32_t fold, dw_requant qr,
                                                           const int rq) {
  int32_t ox = ox0;
  for (; k == 5 && stride == 1 && ox + 8 <= ox1; ox += 8) { /* 8 a step: 7 wide or at stride 2, gcc spills */
    const int8_t *p = row + ox * stride;
    tap_sum f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int ky = 0; ky < k; ++ky, p += a_row) {
      tap_sum x[7 * 2 + 7];
      for (int q = 0; q < 7 * stride + k; ++q) {
        x[q] = (tap_sum)p[q];
      }
      for (int kx = 0; kx < k; ++kx) {
        const tap_sum w = wk[ky * k + kx];
        for (int o = 0; o < 8; ++o) {
          f[o] = tap_mac(f[o], w, x[kx + o * stride]);
        }
      }
    }
    for (int o = 0; o < 8; ++o) {
      dw_out_sum(out, qr, ox + o, f[o], 1, 1, fold, rq);
    }
  }
  for (; (stride == 1 || stride == 2) && ox + 4 <= ox1; ox += 4) {
    const int8_t *p = row + ox * stride;
    tap_sum s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int ky = 0; ky < k; ++ky, p += a_row) {
      tap_sum x[3 * 2 + 7];
      for (int q = 0; q < 3 * stride + k; ++q) {
        x[q] = (tap_sum)p[q];
      }
      for (int kx = 0; kx < k; ++kx) {
        const tap_sum w = wk[ky * k + kx];
        s0 = tap_mac(s0, w, x[kx]), s1 = tap_mac(s1, w, x[kx + stride]);
        s2 = tap_mac(s2, w, x[kx + 2 * stride]), s3 = tap_mac(s3, w, x[kx + 3 * stride]);
      }
    }
    dw_out_sum(out, qr, ox, s0, 1, 1, fold, rq), dw_out_sum(out, qr, ox + 1, s1, 1, 1, fold, rq);
    dw_out_sum(out, qr, ox + 2, s2, 1, 1, fold, rq), dw_out_sum(out, qr, ox + 3, s3, 1, 1, fold, rq);
  }
  for (; ox < ox1; ++ox) {
    const int8_t *p = row + ox * stride;
    tap_sum s = 0;
    for (int ky = 0; ky < k; ++ky, p += a_row) {
      for (int kx = 0; kx < k; ++kx) {
        s = tap_mac(s, wk[ky * k + kx], (tap_sum)p[kx]);
      }
    }
    dw_out_sum(out, qr, ox, s, 1, 1, fold, rq);
  }
}
#endif

/* The rows of a k x k window (5x5, 7x7): dw_inside_packed with the DSP extension, else
 * dw_inside4, the commonest strides as constants; `wt` their weights as those take them. */
#if defined(__ARM_FEATURE_DSP)
typedef int32_t wide_weight;
#define dw_inside_wide(out, row, a_row, wt, k, stride, ox0, ox1, fold, qr, rq) \
  dw_inside_packed(out, row, a_row, wt, k, k, stride, ox0, ox1, fold, qr, rq)
#else
typedef tap_sum wide_weight;
#define dw_inside_wide dw_inside4
#endif

static inline __attribute__((always_inline)) void dw_wide_rows(float *out, const int8_t *row, int32_t a_row,
                                                             const wide_weight *wt, const int k, int32_t stride,
                                                             int32_t ox0, int32_t ox1, int32_t fold, dw_requant qr,
                                                             const int rq) {
  if (stride == 1) {
    dw_inside_wide(out, row, a_row, wt, k, 1, ox0, ox1, fold, qr, rq);
  } else if (stride == 2) {
    dw_inside_wide(out, row, a_row, wt, k, 2, ox0, ox1, fold, qr, rq);
  } else if (!rq) { /* tt_dw_plane_requant_s8 takes strides 1 and 2 only: less code */
    dw_inside_wide(out, row, a_row, wt, k, stride, ox0, ox1, fold, qr, rq);
  }
}

/* One output on the border: the taps inside the plane only (the padding adds zero). */
static int32_t dw_border(const int8_t *a, int32_t a_row, const int32_t *w, int32_t h, int32_t wd, int32_t kh,
                         int32_t kw, int32_t iy0, int32_t ix0, int32_t zx) {
  int32_t s = 0;
  int32_t ky0 = iy0 < 0 ? -iy0 : 0, ky1 = iy0 + kh > h ? h - iy0 : kh;
  int32_t kx0 = ix0 < 0 ? -ix0 : 0, kx1 = ix0 + kw > wd ? wd - ix0 : kw;
  for (int32_t ky = ky0; ky < ky1; ++ky) {
    const int8_t *row = a + (iy0 + ky) * a_row + ix0;
    for (int32_t kx = kx0; kx < kx1; ++kx) {
      s += w[ky * kw + kx] * (row[kx] - zx);
    }
  }
  return s;
}

static inline __attribute__((always_inline)) void dw_rows_inside_as(float *acc, const int8_t *a, int32_t a_row,
                                                                  int32_t off, const int32_t *w, const int32_t *wp,
                                                                  int32_t kh, int32_t kw, int32_t stride, int32_t oy0,
                                                                  int32_t oy1, int32_t ox0, int32_t ox1, int32_t out_w,
                                                                  int32_t fold, dw_requant qr, const int rq) {
  const int wide = kh == kw && (kh == 5 || kh == 7);
#if defined(__ARM_FEATURE_DSP)
  const wide_weight *wt = wp; /* NULL from tt_conv_row_s8 */
#else
  (void)wp; /* NULL without the DSP extension */
  wide_weight wk[TT_DW_MAX_TAPS];
  for (int32_t i = 0; wide && i < kh * kw; ++i) {
    wk[i] = (wide_weight)w[i];
  }
  const wide_weight *wt = wk;
#endif
  const int k3 = kh == 3 && kw == 3 && (stride == 1 || stride == 2);
  k3_taps t3[3];
  for (int32_t ky = 0; k3 && ky < 3; ++ky) {
    t3[ky] = k3_taps_of(w[3 * ky], w[3 * ky + 1], w[3 * ky + 2]);
  }
  for (int32_t oy = oy0; oy < oy1; ++oy) {
    float *out = rq ? NULL : acc + oy * out_w;
    const dw_requant q = dw_at(qr, oy * out_w, rq);
    const int8_t *row = a + oy * stride * a_row + off;
    if (k3 && rq) {
      k3_row_requant(dw_at(q, ox0, rq), row + ox0 * stride, a_row, t3, stride, ox1 - ox0, fold);
      continue;
    }
    if (k3) {
      k3_row_sums(out + ox0, row + ox0 * stride, 0, a_row, t3, 1, 3, stride, ox1 - ox0, fold);
      continue;
    }
    if (wt && wide) {
      if (kh == 5) {
        dw_wide_rows(out, row, a_row, wt, 5, stride, ox0, ox1, fold, q, rq);
      } else {
        dw_wide_rows(out, row, a_row, wt, 7, stride, ox0, ox1, fold, q, rq);
      }
    } else if (!rq && kh == 5 && kw == 5) { /* unpacked: tt_conv_row_s8's, never requantized */
      dw_inside(out, row, a_row, w, 5, 5, stride, ox0, ox1, fold, q, rq);
    } else if (!rq && kh == 7 && kw == 7) {
      dw_inside(out, row, a_row, w, 7, 7, stride, ox0, ox1, fold, q, rq);
    } else {
      dw_inside(out, row, a_row, w, kh, kw, stride, ox0, ox1, fold, q, rq);
    }
  }
}

/* The outputs of rows [oy0, oy1) whose windows lie inside the plane across, [ox0, ox1): `a`
 * is the plane (or its padded copy), `off` the offset of the top left tap of output (0, 0);
 * `wp` the weights packed by pack_window for a 5x5 or 7x7 window with the DSP extension,
 * else NULL; written to acc. Two functions, this and dw_rows_requant, so that a program
 * without a requantizing depthwise plane does not link the other's copy of the loops. */
static __attribute__((noclone)) void dw_rows_inside(float *acc, const int8_t *a, int32_t a_row, int32_t off,
                                                    const int32_t *w, const int32_t *wp, int32_t kh, int32_t kw,
                                                    int32_t stride, int32_t oy0, int32_t oy1, int32_t ox0,
                                                    int32_t ox1, int32_t out_w, int32_t fold) {
  dw_rows_inside_as(acc, a, a_row, off, w, wp, kh, kw, stride, oy0, oy1, ox0, ox1, out_w, fold, TT_NO_REQUANT, 0);
}

/* dw_rows_inside requantizing its outputs (dw_put) into qr. */
static __attribute__((noclone)) void dw_rows_requant(const int8_t *a, int32_t a_row, int32_t off, const int32_t *w,
                                                     const int32_t *wp, int32_t kh, int32_t kw, int32_t stride,
                                                     int32_t oy0, int32_t oy1, int32_t ox0, int32_t ox1,
                                                     int32_t out_w, int32_t fold, dw_requant qr) {
  dw_rows_inside_as(NULL, a, a_row, off, w, wp, kh, kw, stride, oy0, oy1, ox0, ox1, out_w, fold, qr, 1);
}

/* n bytes from src to dst, and n bytes of value v at dst: a word at a time where the core
 * stores unaligned words (the library's memcpy goes byte by byte when dst and src are not
 * aligned alike, as a padded row's start never is, and a call costs more than a short row). */
static inline __attribute__((always_inline)) void copy_row(int8_t *dst, const int8_t *src, int32_t n) {
  int32_t x = 0;
#if defined(__ARM_FEATURE_DSP)
  for (; x + 4 <= n; x += 4) {
    uint32_t v = load4(src + x);
    memcpy(dst + x, &v, 4);
  }
#endif
  for (; x < n; ++x) {
    dst[x] = src[x];
  }
}

static inline __attribute__((always_inline)) void fill_bytes(int8_t *dst, int32_t v, int32_t n) {
  int32_t x = 0;
#if defined(__ARM_FEATURE_DSP)
  uint32_t word = (uint8_t)v * 0x01010101u;
  for (; x + 4 <= n; x += 4) {
    memcpy(dst + x, &word, 4);
  }
#endif
  for (; x < n; ++x) {
    dst[x] = (int8_t)v;
  }
}

/* The exact path of tt_dw_plane_s8 (int32 sums; at most TT_DW_MAX_TAPS taps), into acc, or,
 * with `rq`, requantized into qr with `bias` (tt_dw_plane_requant_s8): one copy for both, the
 * loops in dw_rows_inside or dw_rows_requant. */
static __attribute__((noinline, noclone)) void dw_plane(float *acc, const int8_t *a, int32_t a_row, const int8_t *w8,
                                                        int32_t w_row, int32_t h, int32_t wd, int32_t kh, int32_t kw,
                                                        int32_t stride, int32_t pad, int32_t out_h, int32_t out_w,
                                                        int32_t zx, int32_t bias, dw_requant qr, int rq) {
  int32_t w[TT_DW_MAX_TAPS], fold = 0;
  for (int32_t ky = 0; ky < kh; ++ky) {
    for (int32_t kx = 0; kx < kw; ++kx) {
      w[ky * kw + kx] = w8[ky * w_row + kx];
      fold += w[ky * kw + kx];
    }
  }
  fold = fold * zx - bias; /* requantized, the sums come with the bias added */
  const int32_t *wp = NULL;
#if defined(__ARM_FEATURE_DSP)
  int32_t packed[7 * TT_DW_PACKED_ROW];
  if ((kh == 5 && kw == 5) || (kh == 7 && kw == 7)) {
    pack_window(packed, w, kh, kw);
    wp = packed;
  }
#endif
  /* The plane copied a band of rows at a time into a frame of zero points: a padded tap adds
   * w * zx, which the fold takes back as for any other tap, so every window is inside (the
   * whole plane in one band for the late, low-resolution stages, where most windows overlap
   * the border). A band holds the input rows of `band_out` output rows; the next band copies
   * again the kh - stride rows they share. */
  int32_t padded_row = wd + 2 * pad, band_rows = TT_DW_PADDED_BYTES / padded_row;
  int32_t band_out = band_rows < kh ? 0 : (band_rows - kh) / stride + 1;
  if (band_out > 0) {
    int8_t padded[TT_DW_PADDED_BYTES];
    for (int32_t oy0 = 0; oy0 < out_h; oy0 += band_out) {
      int32_t n = out_h - oy0 < band_out ? out_h - oy0 : band_out, rows = (n - 1) * stride + kh;
      fill_bytes(padded, zx, rows * padded_row);
      for (int32_t r = 0, iy = oy0 * stride - pad; r < rows; ++r, ++iy) {
        if (iy >= 0 && iy < h) {
          copy_row(padded + r * padded_row + pad, a + iy * a_row, wd);
        }
      }
      if (rq) {
        dw_rows_requant(padded, padded_row, 0, w, wp, kh, kw, stride, 0, n, 0, out_w, out_w, fold,
                        dw_at(qr, oy0 * out_w, 1));
      } else {
        dw_rows_inside(acc + oy0 * out_w, padded, padded_row, 0, w, wp, kh, kw, stride, 0, n, 0, out_w, out_w, fold);
      }
    }
    return;
  }
  /* a plane too wide for a band of kh padded rows: the outputs whose windows lie inside it,
   * [ox_lo, ox_hi) across, have no bounds tests; those on the border add the taps inside the
   * plane only */
  int32_t ox_lo = (pad + stride - 1) / stride;
  int32_t ox_hi = wd + pad < kw ? 0 : (wd + pad - kw) / stride + 1;
  if (ox_hi > out_w) {
    ox_hi = out_w;
  }
  for (int32_t oy = 0; oy < out_h; ++oy) {
    int32_t iy0 = oy * stride - pad, lo = 0, hi = 0;
    if (iy0 >= 0 && iy0 + kh <= h && ox_lo < ox_hi) {
      lo = ox_lo, hi = ox_hi;
      if (rq) {
        dw_rows_requant(a, a_row, -pad * a_row - pad, w, wp, kh, kw, stride, oy, oy + 1, lo, hi, out_w, fold, qr);
      } else {
        dw_rows_inside(acc, a, a_row, -pad * a_row - pad, w, wp, kh, kw, stride, oy, oy + 1, lo, hi, out_w, fold);
      }
    }
    for (int32_t ox = 0; ox < out_w; ++ox) {
      if (ox == lo && hi > lo) {
        ox = hi - 1;
        continue;
      }
      dw_put(acc, qr, oy * out_w + ox, dw_border(a, a_row, w, h, wd, kh, kw, iy0, ox * stride - pad, zx) + bias, rq);
    }
  }
}

int32_t tt_dw_plane_s8(void *acc_, void *a_, int32_t a_row, void *w_, int32_t w_row, int32_t h, int32_t wd,
                       int32_t kh, int32_t kw, int32_t stride, int32_t pad, int32_t out_h, int32_t out_w, int32_t zx,
                       int32_t zeroed) {
  float *acc = (float *)acc_;
  const int8_t *a = (const int8_t *)a_, *w8 = (const int8_t *)w_;
  if (kh * kw > TT_DW_MAX_TAPS || !starts_at_zero(acc, out_h * out_w, zeroed)) {
    zero_unless_kept(acc, out_h * out_w, zeroed);
    dw_plane_float(acc, a, a_row, w8, w_row, h, wd, kh, kw, stride, pad, out_h, out_w, (float)zx);
    return 0;
  }
  dw_plane(acc, a, a_row, w8, w_row, h, wd, kh, kw, stride, pad, out_h, out_w, zx, 0, TT_NO_REQUANT, 0);
  return 0;
}

/* tt_conv_plane_s8: one output channel of an int8 conv with a window over c input channels
 * (a ResNet's 3x3 convs, a keyword-spotting net's first conv), its whole out_h x out_w plane,
 * padding included; `a` points at element (0, 0) of input channel 0's plane:
 *
 *     acc[oy][ox] += sum_{i, ky, kx} (inside ? (float)a[i][iy][ix] - zx : 0.0f) * (float)w[i][ky][kx]
 *
 * with iy = oy * stride + ky - pad_y, ix = ox * stride + kx - pad_x, in the TIR's order
 * (i, ky, kx). The int32 sum gives the TIR's bits when the accumulators start at +0.0 and
 * sum |w| * max|a - zx| <= 2^24 over the window (then every partial sum of the float loop
 * is an exact integer, see the top of this file; a window cut by the padding sums fewer
 * terms): the kernel checks both on the weights it is given, and otherwise runs the float32
 * loop. tt_conv_row_wide_s8 is the same code for a large plane's row whose window has more
 * than TT_DW_MAX_TAPS taps (one output row whose input rows all lie inside: h = kh, pad_y = 0). */
#define TT_CONV_TABLE_ROWS 64 /* window rows (channel, ky) of packed 3-wide weights a pass holds on the stack */
#define TT_CONV_MAX_KH 7      /* the tallest window of the fast path (its per-row zero-point folds) */

/* The TIR's own arithmetic: the fallback when the int32 sum could differ from it. */
static __attribute__((cold, noinline)) void conv_plane_float(float *acc, const int8_t *a, int32_t a_chan,
                                                             int32_t a_row, const int8_t *w, int32_t w_chan,
                                                             int32_t w_row, int32_t c, int32_t h, int32_t wd,
                                                             int32_t kh, int32_t kw, int32_t stride, int32_t pad_y,
                                                             int32_t pad_x, int32_t out_h, int32_t out_w, float zx) {
  for (int32_t oy = 0; oy < out_h; ++oy) {
    for (int32_t ox = 0; ox < out_w; ++ox) {
      float s = acc[oy * out_w + ox];
      for (int32_t i = 0; i < c; ++i) {
        for (int32_t ky = 0; ky < kh; ++ky) {
          for (int32_t kx = 0; kx < kw; ++kx) {
            int32_t iy = oy * stride + ky - pad_y, ix = ox * stride + kx - pad_x;
            float v = iy >= 0 && iy < h && ix >= 0 && ix < wd ? (float)a[i * a_chan + iy * a_row + ix] - zx : 0.0f;
            s = s + v * (float)w[i * w_chan + ky * w_row + kx];
          }
        }
      }
      acc[oy * out_w + ox] = s;
    }
  }
}

/* Whether the int32 sums of windows of these c x kh x kw weights give the float loop's bits
 * (on accumulators that start at +0.0). */
static int window_exact(const int8_t *w, int32_t w_chan, int32_t w_row, int32_t c, int32_t kh, int32_t kw,
                        int32_t zx) {
  int64_t max_dev = zx < 0 ? 127 - zx : 128 + zx, sum_abs = 0;
  int32_t s, sa;
  if (w_row == kw && w_chan == kh * kw) { /* contiguous (OIHW): one pass, 4 weights a step with USADA8 */
    weight_sums(w, 1, c * kh * kw, 1, &s, &sa);
    return sa * max_dev <= TT_EXACT_FLOAT_INTEGERS;
  }
  for (int32_t i = 0; i < c; ++i) {
    for (int32_t ky = 0; ky < kh; ++ky) {
      weight_sums(w + i * w_chan + ky * w_row, 1, kw, 1, &s, &sa);
      sum_abs += sa;
    }
  }
  return sum_abs * max_dev <= TT_EXACT_FLOAT_INTEGERS;
}

/* One output whose window the plane's edge cuts: the taps inside, each minus the zero point
 * (the padding adds zero); (iy0, ix0) is its window's top left tap. */
static int32_t conv_border(const int8_t *a, int32_t a_chan, int32_t a_row, const int8_t *w, int32_t w_chan,
                           int32_t w_row, int32_t c, int32_t h, int32_t wd, int32_t kh, int32_t kw, int32_t iy0,
                           int32_t ix0, int32_t zx) {
  int32_t ky0 = iy0 < 0 ? -iy0 : 0, ky1 = iy0 + kh > h ? h - iy0 : kh;
  int32_t kx0 = ix0 < 0 ? -ix0 : 0, kx1 = ix0 + kw > wd ? wd - ix0 : kw, s = 0;
  for (int32_t i = 0; i < c; ++i) {
    for (int32_t ky = ky0; ky < ky1; ++ky) {
      const int8_t *r = a + i * a_chan + (iy0 + ky) * a_row + ix0, *wr = w + i * w_chan + ky * w_row;
      for (int32_t kx = kx0; kx < kx1; ++kx) {
        s += wr[kx] * (r[kx] - zx);
      }
    }
  }
  return s;
}

/* The window sum of one output whose 3-wide window the plane's left or right edge cuts: its
 * taps kx0 <= kx < kx1 only (`row` at tap kx0 of window row 0 of channel 0); constant tap
 * ranges where inlined with them. */
static inline __attribute__((always_inline)) int32_t k3_cut(const int8_t *row, int32_t a_chan, int32_t a_row,
                                                          const k3_taps *t, int32_t n, int32_t rows, const int32_t kx0,
                                                          const int32_t kx1) {
  int32_t s = 0;
  for (int32_t ky = 0; ky < rows; ++ky) {
    const int8_t *r = row + ky * a_row;
    for (int32_t j = 0; j < n; ++j, r += a_chan, ++t) {
      s += kx0 <= 0 && 0 < kx1 ? k3_w0(*t) * r[-kx0] : 0;
      s += kx0 <= 1 && 1 < kx1 ? k3_w1(*t) * r[1 - kx0] : 0;
      s += kx0 <= 2 && 2 < kx1 ? k3_w2(*t) * r[2 - kx0] : 0;
    }
  }
  return s;
}

static __attribute__((noinline)) int32_t k3_edge(const int8_t *row, int32_t a_chan, int32_t a_row, const k3_taps *t,
                                                 int32_t n, int32_t rows, int32_t kx0, int32_t kx1) {
  if (kx0 == 1 && kx1 == 3) { /* the left edge at padding 1 */
    return k3_cut(row, a_chan, a_row, t, n, rows, 1, 3);
  }
  if (kx0 == 0 && kx1 == 2) { /* the right edge at padding 1 */
    return k3_cut(row, a_chan, a_row, t, n, rows, 0, 2);
  }
  return k3_cut(row, a_chan, a_row, t, n, rows, kx0, kx1);
}

/* The two outputs at an edge of a row at padding 1, from one word of inputs x0..x3 per window
 * row (`row` at its first): on the left (x0 at column 0) the cut output 0 (taps 1, 2 on
 * x0, x1) and output 1 (x0..x2 at stride 1, x1..x3 at stride 2); on the right at stride 1
 * (x3 at the last column) output wd - 2 (x1..x3) and the cut wd - 1 (taps 0, 1 on x2, x3).
 * No input outside the plane is read. */
static inline __attribute__((always_inline)) void k3_edge_pair(const int8_t *row, int32_t a_chan, int32_t a_row,
                                                             const k3_taps *t, int32_t n, int32_t rows,
                                                             const int right, const int32_t stride, int32_t *p0,
                                                             int32_t *p1) {
  int32_t s0 = 0, s1 = 0;
  for (int32_t ky = 0; ky < rows; ++ky) {
    const int8_t *r = row + ky * a_row;
    for (int32_t j = 0; j < n; ++j, r += a_chan, ++t) {
#if defined(__ARM_FEATURE_DSP)
      const int32_t w02 = t->w02, w1 = t->w1;
      uint32_t v = load4(r);
      int32_t e = __sxtb16(v), o = sxtb16_ror8(v); /* (x0, x2), (x1, x3) */
      if (right) {
        s0 = __smlad(o, w02, s0), s0 = __smlatb(e, w1, s0);
        s1 = __smlatb(e, w02, s1), s1 = __smlatb(o, w1, s1);
      } else {
        s0 = __smlabb(e, w1, s0), s0 = __smlabt(o, w02, s0);
        if (stride == 1) {
          s1 = __smlad(e, w02, s1), s1 = __smlabb(o, w1, s1);
        } else {
          s1 = __smlad(o, w02, s1), s1 = __smlatb(e, w1, s1);
        }
      }
#else
      const int32_t w0 = k3_w0(*t), w1 = k3_w1(*t), w2 = k3_w2(*t), x0 = r[0], x1 = r[1], x2 = r[2], x3 = r[3];
      if (right) {
        s0 += w0 * x1 + w1 * x2 + w2 * x3, s1 += w0 * x2 + w1 * x3;
      } else {
        s0 += w1 * x0 + w2 * x1;
        s1 += stride == 1 ? w0 * x0 + w1 * x1 + w2 * x2 : w0 * x1 + w1 * x2 + w2 * x3;
      }
#endif
    }
  }
  *p0 = s0, *p1 = s1;
}

/* tt_conv_plane_s8's int32 path (see there). A window 3 wide at stride 1 or 2 (and at most
 * TT_CONV_MAX_KH tall) takes the fast path: the weights packed once a pass into a table on
 * the stack, TT_CONV_TABLE_ROWS window rows of it (the input channels in passes if they are
 * more, the partial sums kept in the accumulators), an output row's windows cut by the top or
 * bottom padding summing fewer window rows and those cut left or right fewer taps, each with
 * the zero-point fold of the taps it sums. Any other window sums each tap minus the zero point. */
static void conv_plane_int32(float *acc, const int8_t *a, int32_t a_chan, int32_t a_row, const int8_t *w,
                             int32_t w_chan, int32_t w_row, int32_t c, int32_t h, int32_t wd, int32_t kh, int32_t kw,
                             int32_t stride, int32_t pad_y, int32_t pad_x, int32_t out_h, int32_t out_w, int32_t zx) {
  if (!(kw == 3 && (stride == 1 || stride == 2) && kh <= TT_CONV_MAX_KH)) {
    for (int32_t oy = 0; oy < out_h; ++oy) {
      for (int32_t ox = 0; ox < out_w; ++ox) {
        acc[oy * out_w + ox] = (float)conv_border(a, a_chan, a_row, w, w_chan, w_row, c, h, wd, kh, kw,
                                                  oy * stride - pad_y, ox * stride - pad_x, zx);
      }
    }
    return;
  }
  /* the outputs whose windows lie inside across: [lo, hi) */
  int32_t lo = (pad_x + stride - 1) / stride, hi = wd + pad_x < kw ? 0 : (wd + pad_x - kw) / stride + 1;
  hi = hi > out_w ? out_w : hi;
  lo = lo > hi ? hi : lo;
  /* sum_i w[i][ky][kx], complete by the last pass: a window's fold is zx times its taps' */
  int32_t tap_sum[TT_CONV_MAX_KH][3] = {{0}};
  /* at padding 1 the edge outputs two at a time with their neighbours (k3_edge_pair) */
  const int left_pair = pad_x == 1 && lo == 1 && hi >= 2 && wd >= 4;
  const int right_pair = pad_x == 1 && stride == 1 && out_w == wd && hi == wd - 1 && wd >= 4 && hi - 2 >= lo + left_pair;
  k3_taps table[TT_CONV_TABLE_ROWS];
  const int32_t chunk = TT_CONV_TABLE_ROWS / kh; /* input channels a pass */
  for (int32_t c0 = 0; c0 < c; c0 += chunk) {
    const int32_t n = c - c0 < chunk ? c - c0 : chunk, first = c0 == 0, last = c0 + n == c;
    for (int32_t ky = 0; ky < kh; ++ky) {
      for (int32_t j = 0; j < n; ++j) {
        const int8_t *wr = w + (c0 + j) * w_chan + ky * w_row;
        table[ky * n + j] = k3_pack(wr);
        tap_sum[ky][0] += wr[0], tap_sum[ky][1] += wr[1], tap_sum[ky][2] += wr[2];
      }
    }
    for (int32_t oy = 0; oy < out_h; ++oy) {
      int32_t iy0 = oy * stride - pad_y, ky0 = iy0 < 0 ? -iy0 : 0, ky1 = iy0 + kh > h ? h - iy0 : kh;
      ky1 = ky1 < ky0 ? ky0 : ky1;
      int32_t fold[3] = {0, 0, 0}; /* the fold of each tap column over the window rows inside */
      for (int32_t ky = ky0; ky < ky1; ++ky) {
        fold[0] += tap_sum[ky][0], fold[1] += tap_sum[ky][1], fold[2] += tap_sum[ky][2];
      }
      const int8_t *row = a + c0 * a_chan + (iy0 + ky0) * a_row;
      const k3_taps *t = table + ky0 * n;
      float *out = acc + oy * out_w;
      const int32_t f = zx * (fold[0] + fold[1] + fold[2]);
      int32_t from = lo, to = hi; /* the outputs k3_row computes */
      if (left_pair) {
        int32_t s0, s1;
        if (stride == 1) {
          k3_edge_pair(row, a_chan, a_row, t, n, ky1 - ky0, 0, 1, &s0, &s1);
        } else {
          k3_edge_pair(row, a_chan, a_row, t, n, ky1 - ky0, 0, 2, &s0, &s1);
        }
        k3_put(out, s0, first, last, zx * (fold[1] + fold[2])), k3_put(out + 1, s1, first, last, f);
        from = 2;
      }
      if (right_pair) {
        int32_t s0, s1;
        k3_edge_pair(row + wd - 4, a_chan, a_row, t, n, ky1 - ky0, 1, 1, &s0, &s1);
        k3_put(out + wd - 2, s0, first, last, f), k3_put(out + wd - 1, s1, first, last, zx * (fold[0] + fold[1]));
        to = wd - 2;
      }
      for (int32_t ox = 0; ox < out_w; ++ox) {
        if (ox == lo && hi > lo) {
          const int8_t *r = row + from * stride - pad_x;
          if (stride == 1) {
            k3_row(out + from, r, a_chan, a_row, t, n, ky1 - ky0, 1, to - from, first, last, f, TT_NO_REQUANT, 0);
          } else {
            k3_row(out + from, r, a_chan, a_row, t, n, ky1 - ky0, 2, to - from, first, last, f, TT_NO_REQUANT, 0);
          }
          ox = hi - 1;
          continue;
        }
        if ((left_pair && ox == 0) || (right_pair && ox == wd - 1)) {
          continue;
        }
        int32_t ix0 = ox * stride - pad_x, kx0 = ix0 < 0 ? -ix0 : 0, kx1 = ix0 + 3 > wd ? wd - ix0 : 3, s = 0, f = 0;
        if (kx1 > kx0) {
          s = k3_edge(row + ix0 + kx0, a_chan, a_row, t, n, ky1 - ky0, kx0, kx1);
          for (int32_t kx = kx0; kx < kx1; ++kx) {
            f += fold[kx];
          }
        }
        k3_put(out + ox, s, first, last, zx * f);
      }
    }
  }
}

/* tt_conv_plane_s8 with its padding apart above (pad_y) and across (pad_x). */
static void conv_plane_s8(float *acc, const int8_t *a, int32_t a_chan, int32_t a_row, const int8_t *w, int32_t w_chan,
                          int32_t w_row, int32_t c, int32_t h, int32_t wd, int32_t kh, int32_t kw, int32_t stride,
                          int32_t pad_y, int32_t pad_x, int32_t out_h, int32_t out_w, int32_t zx, int32_t zeroed) {
  if (!starts_at_zero(acc, out_h * out_w, zeroed) || !window_exact(w, w_chan, w_row, c, kh, kw, zx)) {
    zero_unless_kept(acc, out_h * out_w, zeroed);
    conv_plane_float(acc, a, a_chan, a_row, w, w_chan, w_row, c, h, wd, kh, kw, stride, pad_y, pad_x, out_h, out_w,
                     (float)zx);
    return;
  }
  conv_plane_int32(acc, a, a_chan, a_row, w, w_chan, w_row, c, h, wd, kh, kw, stride, pad_y, pad_x, out_h, out_w, zx);
}

int32_t tt_conv_plane_s8(void *acc, void *a, int32_t a_chan, int32_t a_row, void *w, int32_t w_chan, int32_t w_row,
                         int32_t c, int32_t h, int32_t wd, int32_t kh, int32_t kw, int32_t stride, int32_t pad,
                         int32_t out_h, int32_t out_w, int32_t zx, int32_t zeroed) {
  conv_plane_s8((float *)acc, (const int8_t *)a, a_chan, a_row, (const int8_t *)w, w_chan, w_row, c, h, wd, kh, kw,
                stride, pad, pad, out_h, out_w, zx, zeroed);
  return 0;
}

/* tt_conv_row_s8's arguments, for windows of more than TT_DW_MAX_TAPS taps (see there). */
int32_t tt_conv_row_wide_s8(void *acc, void *a, int32_t a_chan, int32_t a_row, void *w, int32_t w_chan, int32_t w_row,
                            int32_t c, int32_t wd, int32_t kh, int32_t kw, int32_t stride, int32_t pad, int32_t out_w,
                            int32_t zx, int32_t zeroed) {
  conv_plane_s8((float *)acc, (const int8_t *)a, a_chan, a_row, (const int8_t *)w, w_chan, w_row, c, kh, wd, kh, kw,
                stride, 0, pad, 1, out_w, zx, zeroed);
  return 0;
}

/* tt_conv_row_s8: one output row of an int8 conv with a window (c input channels, c = 1
 * for a depthwise conv; kh x kw window, stride, `pad` zeros left and right) whose kh input
 * rows all lie inside the plane, for a plane too large for a plane accumulator (the stem, a
 * depthwise conv at full resolution; lowering splits off the rows that read the top or
 * bottom padding and keeps the TIR loop for them). `a` points at the first input row of
 * channel 0, column 0:
 *
 *     acc[ox] += sum_{i, ky, kx} (0 <= ix < wd ? (float)a[i][ky][ix] - zx : 0.0f) * (float)w[i][ky][kx]
 *
 * with ix = ox * stride + kx - pad, in the TIR's order (i, ky, kx). The same argument as for
 * tt_dw_plane_s8 makes the int32 sum exact for up to TT_DW_MAX_TAPS taps from an accumulator
 * at +0.0; otherwise the float32 loop runs. tt_conv_row_wide_s8 is the same row for windows
 * of more taps (tensorize.py calls it for them), through tt_conv_plane_s8's code: a plane of
 * one row with no padding above, h = kh. Two names, so that only the programs with such
 * windows link that code. */
/* The full window sums of outputs [ox0, ox1) over c channels (taps of channel i at
 * row + i * a_chan, weights w + i * kh * kw), the zero point folded by the caller. */
static inline __attribute__((always_inline)) void conv_row_inside(float *out, const int8_t *row, int32_t a_chan,
                                                                int32_t a_row, const int32_t *w, int32_t c,
                                                                int32_t kh, int32_t kw, int32_t stride, int32_t ox0,
                                                                int32_t ox1, int32_t fold) {
  for (int32_t ox = ox0; ox < ox1; ++ox) {
    int32_t s = 0;
    for (int32_t i = 0; i < c; ++i) {
      s += dw_window(row + i * a_chan + ox * stride, a_row, w + i * kh * kw, kh, kw);
    }
    out[ox] = (float)(s - fold);
  }
}

int32_t tt_conv_row_s8(void *acc_, void *a_, int32_t a_chan, int32_t a_row, void *w_, int32_t w_chan, int32_t w_row,
                       int32_t c, int32_t wd, int32_t kh, int32_t kw, int32_t stride, int32_t pad, int32_t out_w,
                       int32_t zx, int32_t zeroed) {
  float *acc = (float *)acc_;
  const int8_t *a = (const int8_t *)a_, *w8 = (const int8_t *)w_;
  if (c * kh * kw > TT_DW_MAX_TAPS || !starts_at_zero(acc, out_w, zeroed)) {
    zero_unless_kept(acc, out_w, zeroed);
    conv_plane_float(acc, a, a_chan, a_row, w8, w_chan, w_row, c, kh, wd, kh, kw, stride, 0, pad, 1, out_w,
                     (float)zx);
    return 0;
  }
  /* the outputs whose windows lie inside the row, [lo, hi), have no bounds tests */
  int32_t lo = (pad + stride - 1) / stride, hi = wd + pad < kw ? 0 : (wd + pad - kw) / stride + 1;
  hi = hi > out_w ? out_w : hi;
  lo = lo > hi ? hi : lo;
  const int8_t *row = a - pad;
  if (kw == 3 && (stride == 1 || stride == 2)) {
    /* one pass over the weights: their table and the sum of each tap column (the fold of a
     * window the row's edge cuts is zx times its columns'); the border through k3_edge */
    k3_taps t[TT_DW_MAX_TAPS / 3];
    int32_t col[3] = {0, 0, 0};
    for (int32_t ky = 0; ky < kh; ++ky) {
      for (int32_t i = 0; i < c; ++i) {
        const int8_t *wr = w8 + i * w_chan + ky * w_row;
        t[ky * c + i] = k3_pack(wr);
        col[0] += wr[0], col[1] += wr[1], col[2] += wr[2];
      }
    }
    k3_row_sums(acc + lo, row + lo * stride, a_chan, a_row, t, c, kh, stride, hi - lo, zx * (col[0] + col[1] + col[2]));
    for (int32_t ox = 0; ox < out_w; ++ox) {
      if (ox == lo && hi > lo) {
        ox = hi - 1;
        continue;
      }
      int32_t ix0 = ox * stride - pad, kx0 = ix0 < 0 ? -ix0 : 0, kx1 = ix0 + 3 > wd ? wd - ix0 : 3, s = 0, f = 0;
      if (kx1 > kx0) {
        s = k3_edge(a + ix0 + kx0, a_chan, a_row, t, c, kh, kx0, kx1);
        for (int32_t kx = kx0; kx < kx1; ++kx) {
          f += col[kx];
        }
      }
      acc[ox] = (float)(s - zx * f);
    }
    return 0;
  }
  int32_t w[TT_DW_MAX_TAPS], fold = 0;
  for (int32_t i = 0; i < c; ++i) {
    for (int32_t ky = 0; ky < kh; ++ky) {
      for (int32_t kx = 0; kx < kw; ++kx) {
        w[(i * kh + ky) * kw + kx] = w8[i * w_chan + ky * w_row + kx];
        fold += w8[i * w_chan + ky * w_row + kx];
      }
    }
  }
  fold *= zx;
  if (c == 1) {
    dw_rows_inside(acc, row, a_row, 0, w, NULL, kh, kw, stride, 0, 1, lo, hi, out_w, fold);
  } else {
    conv_row_inside(acc, row, a_chan, a_row, w, c, kh, kw, stride, lo, hi, fold);
  }
  for (int32_t ox = 0; ox < out_w; ++ox) { /* the border: the taps inside the row only */
    if (ox == lo) {
      ox = hi;
      if (ox == out_w) {
        break;
      }
    }
    int32_t s = 0;
    for (int32_t i = 0; i < c; ++i) {
      s += dw_border(a + i * a_chan, a_row, w + i * kh * kw, kh, wd, kh, kw, 0, ox * stride - pad, zx);
    }
    acc[ox] = (float)s;
  }
  return 0;
}

/* tt_dw_transpose_f32s8: one channel of the input gradient of a depthwise conv, the float32
 * output gradient `a` (h x wd) through the transposed conv with int8 weights (kh x kw,
 * stride), all out_h x out_w outputs, as TOPI's conv2d_transpose sums them:
 *
 *     acc[y][x] += sum_{ky, kx} (on_grid ? a[iy][ix] : 0.0f) * (float)w[kh - 1 - ky][kw - 1 - kx]
 *
 * where t = y + ky - pad is on the grid when 0 <= t <= (h - 1) * stride and stride divides
 * it (iy = t / stride), likewise across; in ky, kx order. A tap off the grid adds
 * 0.0f * w, a zero (w is an int8, finite), which changes no sum but -0.0, and a sum that
 * does not start at -0.0 never becomes -0.0 (x + -x is +0.0): so only the taps on the grid
 * are added, a quarter of them at stride 2. The kernel checks that no accumulator holds -0.0
 * and otherwise adds every tap, as the loop it replaces does. At stride 1 the grid is the
 * plane, and the taps skipped are those off it. */
/* The taps k = k0, k0 + stride, ... < n of a window whose tap k reads t = base + k that lie on
 * the grid 0, stride, ..., last: their count, the first in *k0 and its t / stride in *i0. */
static inline __attribute__((always_inline)) int32_t taps_on_grid(int32_t base, const int32_t stride, int32_t n,
                                                                  int32_t last, int32_t *k0, int32_t *i0) {
  int32_t k = base < 0 ? -base : stride == 1 ? 0 : (stride - base % stride) % stride;
  *k0 = k, *i0 = (base + k) / stride;
  if (k >= n || base + k > last) {
    return 0;
  }
  int32_t by_window = (n - 1 - k) / stride + 1, by_grid = (last - base - k) / stride + 1;
  return by_window < by_grid ? by_window : by_grid;
}

/* The TIR's loop, every tap added: the fallback when an accumulator holds -0.0. */
static __attribute__((cold, noinline)) void dw_transpose_float(float *acc, const float *a, int32_t a_row, const int8_t *w8,
                                                     int32_t w_row, int32_t kh, int32_t kw, int32_t stride,
                                                     int32_t pad, int32_t last_y, int32_t last_x, int32_t out_h,
                                                     int32_t out_w) {
  for (int32_t y = 0; y < out_h; ++y) {
    for (int32_t x = 0; x < out_w; ++x) {
      float s = acc[y * out_w + x];
      for (int32_t ky = 0; ky < kh; ++ky) {
        for (int32_t kx = 0; kx < kw; ++kx) {
          int32_t ty = y + ky - pad, tx = x + kx - pad;
          int on = ty >= 0 && ty <= last_y && tx >= 0 && tx <= last_x && ty % stride == 0 && tx % stride == 0;
          s = s + (on ? a[ty / stride * a_row + tx / stride] : 0.0f) * (float)w8[(kh - 1 - ky) * w_row + kw - 1 - kx];
        }
      }
      acc[y * out_w + x] = s;
    }
  }
}

/* The sums over the taps on the grid, each output's in ky, kx order (`w` flipped, float32). */
static inline __attribute__((always_inline)) void dw_transpose_taps(float *acc, const float *a, int32_t a_row,
                                                                  const float *w, const int32_t stride, int32_t kh,
                                                                  int32_t kw, int32_t pad, int32_t last_y,
                                                                  int32_t last_x, int32_t out_h, int32_t out_w) {
  for (int32_t y = 0; y < out_h; ++y) {
    int32_t ky0, iy0, ny = taps_on_grid(y - pad, stride, kh, last_y, &ky0, &iy0);
    for (int32_t x = 0; x < out_w; ++x) {
      int32_t kx0, ix0, nx = taps_on_grid(x - pad, stride, kw, last_x, &kx0, &ix0);
      float s = acc[y * out_w + x];
      const float *row = a + iy0 * a_row + ix0, *wrow = w + ky0 * kw + kx0;
#pragma GCC unroll 1 /* a few taps a row: unrolling spends flash, not instructions */
      for (int32_t j = 0; j < ny; ++j, row += a_row, wrow += stride * kw) {
#pragma GCC unroll 1
        for (int32_t i = 0; i < nx; ++i) {
          s = mul_add(s, row[i], wrow[i * stride]);
        }
      }
      acc[y * out_w + x] = s;
    }
  }
}

int32_t tt_dw_transpose_f32s8(void *acc_, void *a_, int32_t a_row, void *w_, int32_t w_row, int32_t h, int32_t wd,
                              int32_t kh, int32_t kw, int32_t stride, int32_t pad, int32_t out_h, int32_t out_w) {
  float *acc = (float *)acc_;
  const float *a = (const float *)a_;
  const int8_t *w8 = (const int8_t *)w_;
  int32_t last_y = (h - 1) * stride, last_x = (wd - 1) * stride;
  if (kh * kw > TT_DW_MAX_TAPS || !no_negative_zero(acc, out_h * out_w)) {
    dw_transpose_float(acc, a, a_row, w8, w_row, kh, kw, stride, pad, last_y, last_x, out_h, out_w);
    return 0;
  }
  float w[TT_DW_MAX_TAPS]; /* flipped, as float32: the products are the loop's */
  for (int32_t ky = 0; ky < kh; ++ky) {
    for (int32_t kx = 0; kx < kw; ++kx) {
      w[ky * kw + kx] = (float)w8[(kh - 1 - ky) * w_row + kw - 1 - kx];
    }
  }
  if (stride == 2) {
    dw_transpose_taps(acc, a, a_row, w, 2, kh, kw, pad, last_y, last_x, out_h, out_w);
  } else {
    dw_transpose_taps(acc, a, a_row, w, stride, kh, kw, pad, last_y, last_x, out_h, out_w);
  }
  return 0;
}

/* tt_pw_rows2_f32s8: the same for two input channels at once (weights w and w + w_fstride,
 * rows acc and acc + acc_stride): each gradient value is loaded once for both, and each
 * row's sums are still taken in increasing i, the same operations as tt_pw_row_f32s8's. */
static inline __attribute__((always_inline)) void rows2_block(float *acc0, float *acc1, const float *ap,
                                                            int32_t a_stride, const int8_t *w0, const int8_t *w1,
                                                            int32_t w_stride, int32_t k, const int n) {
  float s[8], t[8]; /* n <= 8 pixels of both rows, in registers */
  for (int j = 0; j < n; ++j) {
    s[j] = acc0[j], t[j] = acc1[j];
  }
#if TT_ARM_FPU
TT_VLDM_LOOP
#else
#pragma GCC unroll 4
#endif
  for (int32_t i = 0; i < k; ++i, ap += a_stride) {
    float wa = (float)w0[i * w_stride], wb = (float)w1[i * w_stride], v[8];
    load_floats(ap, v, n);
    for (int j = 0; j < n; ++j) {
      s[j] = mul_add(s[j], v[j], wa);
      t[j] = mul_add(t[j], v[j], wb);
    }
  }
  for (int j = 0; j < n; ++j) {
    acc0[j] = s[j], acc1[j] = t[j];
  }
}

int32_t tt_pw_rows2_f32s8(void *acc_, void *a_, int32_t a_stride, void *w_, int32_t w_fstride, int32_t w_stride,
                          int32_t k, int32_t width, int32_t acc_stride) {
  float *acc0 = (float *)acc_, *acc1 = acc0 + acc_stride;
  const float *a = (const float *)a_;
  const int8_t *w0 = (const int8_t *)w_, *w1 = w0 + w_fstride;
  int32_t x = 0;
  for (; x + 8 <= width; x += 8) {
    rows2_block(acc0 + x, acc1 + x, a + x, a_stride, w0, w1, w_stride, k, 8);
  }
  for (; x + 4 <= width; x += 4) {
    rows2_block(acc0 + x, acc1 + x, a + x, a_stride, w0, w1, w_stride, k, 4);
  }
  if (x < width) {
    tt_pw_row_f32s8(acc0 + x, (void *)(a + x), a_stride, w_, w_stride, k, width - x);
    tt_pw_row_f32s8(acc1 + x, (void *)(a + x), a_stride, (void *)w1, w_stride, k, width - x);
  }
  return 0;
}

/* tt_pw_wgrad_f32s8: an f x c tile of a pointwise conv's weight gradient (int8 inputs a,
 * float32 output gradient b, both planes of `pixels` values), for the SGD update that reads it:
 *
 *     acc[i * acc_f + j * acc_c] += sum_{p < pixels} ((float)a[j * a_chan + p] - zx) * b[i * b_chan + p]
 *
 * each sum taken in increasing p from acc, each product rounded before its addition, as TVM's
 * loop does: the same float32 operations in the same order, so the same bits (a - zx, an
 * integer below 2^8, is exact either way). Its loop keeps one sum in memory and converts an
 * input for every product; here 4 x 4 sums stay in registers, each input converted and each
 * gradient value loaded once for 4 products. */
static inline __attribute__((always_inline)) void wgrad_tile(float *acc, int32_t acc_f, int32_t acc_c, const int8_t *a,
                                                            int32_t a_chan, const float *b, int32_t b_chan,
                                                            int32_t pixels, int32_t zx, const int f, const int c) {
  float s[4][4]; /* f x c <= 4 x 4 sums, in registers once the loops over them are unrolled */
#pragma GCC unroll 4
  for (int i = 0; i < f; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < c; ++j) {
      s[i][j] = acc[i * acc_f + j * acc_c];
    }
  }
  for (int32_t p = 0; p < pixels; ++p) {
    float x[4], g[4];
#pragma GCC unroll 4
    for (int j = 0; j < c; ++j) {
      x[j] = (float)(a[j * a_chan + p] - zx);
    }
#pragma GCC unroll 4
    for (int i = 0; i < f; ++i) {
      g[i] = b[i * b_chan + p];
#pragma GCC unroll 4
      for (int j = 0; j < c; ++j) {
        s[i][j] = mul_add(s[i][j], x[j], g[i]);
      }
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < f; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < c; ++j) {
      acc[i * acc_f + j * acc_c] = s[i][j];
    }
  }
}

int32_t tt_pw_wgrad_f32s8(void *acc_, int32_t acc_f, int32_t acc_c, void *a_, int32_t a_chan, void *b_, int32_t b_chan,
                          int32_t f, int32_t c, int32_t pixels, int32_t zx) {
  float *acc = (float *)acc_;
  const int8_t *a = (const int8_t *)a_;
  const float *b = (const float *)b_;
  for (int32_t i = 0; i < f; i += 4) {
    for (int32_t j = 0; j < c; j += 4) {
      float *t = acc + i * acc_f + j * acc_c;
      if (i + 4 <= f && j + 4 <= c) {
        wgrad_tile(t, acc_f, acc_c, a + j * a_chan, a_chan, b + i * b_chan, b_chan, pixels, zx, 4, 4);
      } else { /* a tile's edge: one sum at a time */
        for (int32_t ii = i; ii < f && ii < i + 4; ++ii) {
          for (int32_t jj = j; jj < c && jj < j + 4; ++jj) {
            wgrad_tile(acc + ii * acc_f + jj * acc_c, acc_f, acc_c, a + jj * a_chan, a_chan, b + ii * b_chan, b_chan,
                       pixels, zx, 1, 1);
          }
        }
      }
    }
  }
  return 0;
}

/* tt_mask_bits_f32: the 1-bit masks the backward pass keeps (passes/pack_backward_masks.py),
 * n bytes of 8 elements of x each:
 *
 *     out[i] = sum_k cond(x[8 i + k]) * weights[k]   (uint8, wrapping)
 *
 * where cond is one bound or two (lo < x, x <= hi, ...) as C compares floats: -0.0 equals
 * +0.0, and a NaN is in no interval. Each element's bits are mapped to an integer that orders
 * as the floats do (sign and magnitude to two's complement: both zeros map to 0, NaNs beyond
 * the infinities), so that the condition is one unsigned range test, key - base < span;
 * tensorize.py computes base and span from the bounds. TVM's loop tested each bound with a
 * float compare and a flags transfer, and stored the byte after every element. */
int32_t tt_mask_bits_f32(void *out_, void *x_, int32_t n, int32_t base, int32_t span, void *weights_) {
  uint8_t *out = (uint8_t *)out_;
  const int32_t *x = (const int32_t *)x_; /* the floats' bits */
  uint8_t w[8];
  memcpy(w, weights_, sizeof w);
  for (int32_t i = 0; i < n; ++i, x += 8) {
    uint32_t byte = 0;
    for (int k = 0; k < 8; ++k) {
      uint32_t sign = (uint32_t)(x[k] >> 31); /* 0 or all ones */
      uint32_t key = (((uint32_t)x[k] & 0x7fffffffu) ^ sign) - sign; /* two's complement, unsigned arithmetic */
      byte += key - (uint32_t)base < (uint32_t)span ? w[k] : 0u;
    }
    out[i] = (uint8_t)byte;
  }
  return 0;
}

/* tt_conv_plane_f32: one output channel of a float32 conv (c input channels, kh x kw
 * window, stride, zero padding of `pad` on every side; c = 1 for a depthwise conv), all
 * out_h x out_w outputs:
 *
 *     acc[oy][ox] += sum_{i, ky, kx} (inside ? a[i][iy][ix] : 0.0f) * w[i][ky][kx]
 *
 * where w[i][ky][kx] is w[i * w_chan + ky * w_row + kx * w_col]: w_col is 1 for a conv, -1
 * (with w_row < 0, w at the window's last tap) for the input gradient of a stride-1 conv,
 * TOPI's conv2d_transpose, whose window is the conv's flipped (and channels swapped).
 *
 * with iy = oy * stride + ky - pad, ix = ox * stride + kx - pad (a[i][iy][ix] through a ReLU,
 * x > 0 ? x : 0 as TVM prints it, when `relu`: a ReLU fused in front of the conv), each output's terms added
 * one by one in the TIR's order (i, then ky, then kx), so the same float32 operations. A
 * padded tap adds 0.0f * w, a zero, which changes no sum that is not -0.0; a sum that starts
 * at anything but -0.0 never becomes -0.0 (x + (-x) is +0.0), so the taps outside the plane
 * are skipped. The kernel checks the two conditions that argument needs, no accumulator at
 * -0.0 and every weight finite (0.0f * inf is NaN), and otherwise runs the TIR's loop itself.
 * Inside, 4 outputs of a row keep their sums in registers (8 for a 3-wide window at stride
 * 1, which then loads each input once for the 3 taps that read it). */
/* An input value, through the ReLU fused in front of the conv if any. */
static inline __attribute__((always_inline)) float conv_in(const float *p, int relu) {
  float x = *p;
  return relu ? (x > 0.0f ? x : 0.0f) : x;
}

static __attribute__((cold, noinline)) void conv_plane_f32_loop(float *acc, const float *a, int32_t a_chan, int32_t a_row, const float *w,
                                int32_t w_chan, int32_t w_row, int32_t w_col, int32_t c, int32_t h, int32_t wd, int32_t kh,
                                int32_t kw, int32_t stride, int32_t pad, int32_t out_h, int32_t out_w, int relu) {
  for (int32_t oy = 0; oy < out_h; ++oy) {
    for (int32_t ox = 0; ox < out_w; ++ox) {
      float s = acc[oy * out_w + ox];
      for (int32_t i = 0; i < c; ++i) {
        for (int32_t ky = 0; ky < kh; ++ky) {
          for (int32_t kx = 0; kx < kw; ++kx) {
            int32_t iy = oy * stride + ky - pad, ix = ox * stride + kx - pad;
            float v = (iy >= 0 && iy < h && ix >= 0 && ix < wd) ? conv_in(&a[i * a_chan + iy * a_row + ix], relu) : 0.0f;
            s = s + v * w[i * w_chan + ky * w_row + kx * w_col];
          }
        }
      }
      acc[oy * out_w + ox] = s;
    }
  }
}

#if defined(__arm__) && defined(TT_FPU_ROUNDS) /* FPv5 */
#define RELU_IN_REGISTERS 1 /* VMAXNM works on a value already loaded (the sign-bit form needs it in a core register) */
#else
#define RELU_IN_REGISTERS 0
#endif

/* A ReLU'd input as the 3-wide rows read it, one instruction where x > 0 ? x : 0 takes three
 * or four (a compare, a flag transfer, a conditional move): VMAXNM on FPv5, FMAX.S on RISC-V,
 * elsewhere the sign bit clearing the word (x & ~(x >> 31)). Each gives that expression's
 * bits for every input but a NaN the TIR turns into 0: VMAXNM returns NaN for a signalling
 * NaN, the sign-bit form for a positive NaN. Such a NaN makes the sums that read it NaN, and
 * tt_conv_plane_f32 then recomputes the plane with the TIR's loop. */
static inline __attribute__((always_inline)) float relu_fast(const float *p) {
  float x = *p, r;
#if RELU_IN_REGISTERS
  __asm__("vmaxnm.f32 %0, %1, %2" : "=t"(r) : "t"(x), "t"(0.0f));
#elif defined(__riscv) && defined(__riscv_flen)
  __asm__("fmax.s %0, %1, %2" : "=f"(r) : "f"(x), "f"(0.0f));
#else
  int32_t b;
  memcpy(&b, &x, sizeof b);
  b &= ~(b >> 31);
  memcpy(&r, &b, sizeof r);
#endif
  return r;
}

/* relu_fast on a value already loaded, where RELU_IN_REGISTERS (the TIR's expression elsewhere). */
static inline __attribute__((always_inline)) float relu_register(float x) {
#if RELU_IN_REGISTERS
  float r;
  __asm__("vmaxnm.f32 %0, %1, %2" : "=t"(r) : "t"(x), "t"(0.0f));
  return r;
#else
  return x > 0.0f ? x : 0.0f;
#endif
}

/* One window row's taps added to the n sums s (r: the row at column x0 + 1, wk: its weights). */
static inline __attribute__((always_inline)) void conv_row_k3_taps(float *s, const float *r, const float *wk,
                                                                 int32_t w_col, int left, int right, const int n,
                                                                 const int stride, const int relu) {
  enum { MAX_IN = 7 * 2 + 3 };
  const int m = (n - 1) * stride + 3;
  float w0 = wk[0], w1 = wk[w_col], w2 = wk[2 * w_col], v[MAX_IN];
  v[0] = left ? 0.0f : relu ? relu_fast(r - 1) : r[-1];
  if (n == 8 && (!relu || RELU_IN_REGISTERS)) { /* 8 outputs: the first 8 inputs between the edges in one VLDM */
    load_floats(r, v + 1, 8);
#pragma GCC unroll 8
    for (int j = 9; j < m - 1; ++j) { /* at stride 2, 7 more */
      v[j] = r[j - 1];
    }
    if (relu) {
#pragma GCC unroll 16
      for (int j = 1; j < m - 1; ++j) {
        v[j] = relu_register(v[j]);
      }
    }
  } else {
#pragma GCC unroll 16
    for (int j = 1; j < m - 1; ++j) {
      v[j] = relu ? relu_fast(r + j - 1) : r[j - 1];
    }
  }
  v[m - 1] = right ? 0.0f : relu ? relu_fast(r + m - 2) : r[m - 2];
#pragma GCC unroll 8
  for (int o = 0; o < n; ++o) {
    s[o] = mul_add(s[o], v[o * stride], w0);
    s[o] = mul_add(s[o], v[o * stride + 1], w1);
    s[o] = mul_add(s[o], v[o * stride + 2], w2);
  }
}

/* The sums of n outputs (`a` at column x0 + 1 of the first window row inside): ky_n window
 * rows, a row a loop step (unrolled, gcc loads ahead of the sums and spills them); or, with
 * `rows3`, the window's 3 rows one after the other, its padding columns compile-time
 * constants, behind barriers that keep gcc from loading a row ahead of the one before. */
static inline __attribute__((always_inline)) void conv_rows_k3(float *out, const float *a, int32_t a_chan,
                                                             int32_t a_row, const float *w, int32_t w_chan,
                                                             int32_t w_row, int32_t w_col, int32_t c, int32_t ky_n,
                                                             int left, int right, const int n, const int stride,
                                                             const int relu, const int rows3) {
  float s[8];
  for (int o = 0; o < n; ++o) {
    s[o] = out[o];
  }
  for (int32_t i = 0; i < c; ++i, a += a_chan, w += w_chan) {
    if (rows3) {
      conv_row_k3_taps(s, a, w, w_col, left, right, n, stride, relu);
      __asm__ volatile("" ::: "memory");
      conv_row_k3_taps(s, a + a_row, w + w_row, w_col, left, right, n, stride, relu);
      __asm__ volatile("" ::: "memory");
      conv_row_k3_taps(s, a + 2 * a_row, w + 2 * w_row, w_col, left, right, n, stride, relu);
    } else {
#pragma GCC unroll 1
      for (int32_t ky = 0; ky < ky_n; ++ky) {
        conv_row_k3_taps(s, a + ky * a_row, w + ky * w_row, w_col, left, right, n, stride, relu);
      }
    }
  }
  for (int o = 0; o < n; ++o) {
    out[o] = s[o];
  }
}

/* conv_rows_k3 for known padding columns: the 3 rows one after the other where that pays. */
static inline __attribute__((always_inline)) void conv_row_k3_(float *out, const float *a, int32_t a_chan,
                                                             int32_t a_row, const float *w, int32_t w_chan,
                                                             int32_t w_row, int32_t w_col, int32_t c, int32_t ky_n,
                                                             const int left, const int right, const int n,
                                                             const int stride, const int relu) {
#if defined(__arm__)
  const int rows3 = n == 8;
#else
  const int rows3 = n == 8 && stride == 2; /* RV32: the loop measures faster at stride 1 */
#endif
  if (rows3 && ky_n == 3) {
    conv_rows_k3(out, a, a_chan, a_row, w, w_chan, w_row, w_col, c, 3, left, right, n, stride, relu, 1);
  } else {
    conv_rows_k3(out, a, a_chan, a_row, w, w_chan, w_row, w_col, c, ky_n, left, right, n, stride, relu, 0);
  }
}

/* n outputs of a row (n = 4 or 8) of a 3-wide window with 1 column of padding, stride 1
 * or 2: input columns x0 .. x0 + (n - 1) * stride + 2 of each window row (`a` at column 0
 * of the first row inside, ky_n rows), of which the first is padding when `left` and the
 * last when `right`: a zero there, which adds 0.0f * w, an exact no-op under the kernel's
 * conditions (below). Sums and inputs stay in registers: each input is loaded once for
 * the 3 (stride 1) or 1-2 (stride 2) taps that read it. A fused ReLU goes through relu_fast.
 * The block's padding columns are compile-time cases: at stride 2 (an even width) only the
 * left one occurs; the others take the tests in the loop. */
static inline __attribute__((always_inline)) void conv_row_k3(float *out, const float *a, int32_t a_chan,
                                                            int32_t a_row, const float *w, int32_t w_chan,
                                                            int32_t w_row, int32_t w_col, int32_t c, int32_t ky_n, int32_t x0,
                                                            int left, int right, const int n, const int stride,
                                                            const int relu) {
  a += x0 + 1; /* column x0 + 1: inside the row */
  if (n == 8 && !left && !right) {
    conv_row_k3_(out, a, a_chan, a_row, w, w_chan, w_row, w_col, c, ky_n, 0, 0, n, stride, relu);
  } else if (n == 8 && !right) {
    conv_row_k3_(out, a, a_chan, a_row, w, w_chan, w_row, w_col, c, ky_n, 1, 0, n, stride, relu);
  } else if (n == 8 && stride == 1 && !left) {
    conv_row_k3_(out, a, a_chan, a_row, w, w_chan, w_row, w_col, c, ky_n, 0, 1, n, stride, relu);
  } else if (n == 8 && stride == 1) {
    conv_row_k3_(out, a, a_chan, a_row, w, w_chan, w_row, w_col, c, ky_n, 1, 1, n, stride, relu);
  } else {
    conv_rows_k3(out, a, a_chan, a_row, w, w_chan, w_row, w_col, c, ky_n, left, right, n, stride, relu, 0);
  }
}

/* A row of a 3-wide window, padding 1, stride 1 or 2, in blocks of 8 then 4 outputs; returns
 * the first output not done (fewer than 4 left). */
static inline __attribute__((always_inline)) int32_t conv_row_k3_blocks_(float *out, const float *a, int32_t a_chan,
                                                                       int32_t a_row, const float *w, int32_t w_chan,
                                                                       int32_t w_row, int32_t w_col, int32_t c, int32_t ky_n,
                                                                       int32_t wd, const int stride, int32_t out_w,
                                                                       const int relu) {
  int32_t ox = 0;
  for (; ox + 8 <= out_w; ox += 8) {
    int32_t x0 = ox * stride - 1, left = x0 < 0, right = x0 + 7 * stride + 2 >= wd;
    conv_row_k3(out + ox, a, a_chan, a_row, w, w_chan, w_row, w_col, c, ky_n, x0, left, right, 8, stride, relu);
  }
  for (; ox + 4 <= out_w; ox += 4) {
    int32_t x0 = ox * stride - 1, left = x0 < 0, right = x0 + 3 * stride + 2 >= wd;
    conv_row_k3(out + ox, a, a_chan, a_row, w, w_chan, w_row, w_col, c, ky_n, x0, left, right, 4, stride, relu);
  }
  return ox;
}

static int32_t conv_row_k3_blocks(float *out, const float *a, int32_t a_chan, int32_t a_row, const float *w,
                                  int32_t w_chan, int32_t w_row, int32_t w_col, int32_t c, int32_t ky_n, int32_t wd,
                                  int32_t stride, int32_t out_w, int relu) {
  if (w_col == -1) { /* conv2d_transpose: stride 1, never a ReLU in front (tt_conv_plane_f32) */
    return conv_row_k3_blocks_(out, a, a_chan, a_row, w, w_chan, w_row, -1, c, ky_n, wd, 1, out_w, 0);
  }
  if (relu) {
    return stride == 1 ? conv_row_k3_blocks_(out, a, a_chan, a_row, w, w_chan, w_row, 1, c, ky_n, wd, 1, out_w, 1)
                       : conv_row_k3_blocks_(out, a, a_chan, a_row, w, w_chan, w_row, 1, c, ky_n, wd, 2, out_w, 1);
  }
  return stride == 1 ? conv_row_k3_blocks_(out, a, a_chan, a_row, w, w_chan, w_row, 1, c, ky_n, wd, 1, out_w, 0)
                     : conv_row_k3_blocks_(out, a, a_chan, a_row, w, w_chan, w_row, 1, c, ky_n, wd, 2, out_w, 0);
}

/* 4 outputs of a row whose columns are inside, any window width and stride. */
static void conv_row4(float *out, const float *a, int32_t a_chan, int32_t a_row, const float *w, int32_t w_chan,
                      int32_t w_row, int32_t w_col, int32_t c, int32_t ky_n, int32_t kw, int32_t stride, int relu) {
  float s0 = out[0], s1 = out[1], s2 = out[2], s3 = out[3];
  for (int32_t i = 0; i < c; ++i, a += a_chan, w += w_chan) {
    for (int32_t ky = 0; ky < ky_n; ++ky) {
      const float *r = a + ky * a_row, *wk = w + ky * w_row;
      for (int32_t kx = 0; kx < kw; ++kx) {
        float wx = wk[kx * w_col];
        s0 = mul_add(s0, conv_in(r + kx, relu), wx);
        s1 = mul_add(s1, conv_in(r + stride + kx, relu), wx);
        s2 = mul_add(s2, conv_in(r + 2 * stride + kx, relu), wx);
        s3 = mul_add(s3, conv_in(r + 3 * stride + kx, relu), wx);
      }
    }
  }
  out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

/* One output, its taps in a ky_n x kx_n box (a and w at the box's top left). */
static float conv_one(float s, const float *a, int32_t a_chan, int32_t a_row, const float *w, int32_t w_chan,
                      int32_t w_row, int32_t w_col, int32_t c, int32_t ky_n, int32_t kx_n, int relu) {
  for (int32_t i = 0; i < c; ++i, a += a_chan, w += w_chan) {
    for (int32_t ky = 0; ky < ky_n; ++ky) {
      for (int32_t kx = 0; kx < kx_n; ++kx) {
        s = mul_add(s, conv_in(&a[ky * a_row + kx], relu), w[ky * w_row + kx * w_col]);
      }
    }
  }
  return s;
}

/* Whether no value of n is NaN. */
static int no_nan(const float *v, int32_t n) {
  for (int32_t i = 0; i < n; ++i) {
    if (v[i] != v[i]) {
      return 0;
    }
  }
  return 1;
}

/* Whether every weight is finite and no accumulator holds -0.0: the conditions under which
 * skipping the padded taps gives the TIR's bits. */
static int conv_plane_f32_skips_padding(const float *acc, int32_t n, const float *w, int32_t w_chan, int32_t w_row, int32_t w_col,
                                        int32_t c, int32_t kh, int32_t kw) {
  if (!no_negative_zero(acc, n)) {
    return 0;
  }
  uint32_t inf_or_nan = 0; /* bit 31 set by a weight whose exponent is all ones */
  if (w_col == 1 && w_row == kw && w_chan == kh * kw) { /* a conv's own weights: one run */
    for (int32_t i = 0; i < c * kh * kw; ++i) {
      inf_or_nan |= (bits_at(&w[i]) & 0x7f800000u) + 0x00800000u;
    }
    return !(inf_or_nan >> 31);
  }
  for (int32_t i = 0; i < c; ++i) {
    for (int32_t ky = 0; ky < kh; ++ky) {
      for (int32_t kx = 0; kx < kw; ++kx) {
        inf_or_nan |= (bits_at(&w[i * w_chan + ky * w_row + kx * w_col]) & 0x7f800000u) + 0x00800000u;
      }
    }
  }
  return !(inf_or_nan >> 31);
}

int32_t tt_conv_plane_f32(void *acc_, void *a_, int32_t a_chan, int32_t a_row, void *w_, int32_t w_chan,
                          int32_t w_row, int32_t w_col, int32_t c, int32_t h, int32_t wd, int32_t kh, int32_t kw, int32_t stride,
                          int32_t pad, int32_t out_h, int32_t out_w, int32_t relu) {
  float *acc = (float *)acc_;
  const float *a = (const float *)a_, *w = (const float *)w_;
  /* relu_fast's NaN can be undone, by recomputing from zero, where the plane starts at zero */
  int fast_relu = relu && all_positive_zero(acc, out_h * out_w);
  if (!conv_plane_f32_skips_padding(acc, out_h * out_w, w, w_chan, w_row, w_col, c, kh, kw)) {
    conv_plane_f32_loop(acc, a, a_chan, a_row, w, w_chan, w_row, w_col, c, h, wd, kh, kw, stride, pad, out_h, out_w, relu);
    return 0;
  }
  /* the outputs whose windows lie inside the plane across: [ox_lo, ox_hi) */
  int32_t ox_lo = (pad + stride - 1) / stride;
  int32_t ox_hi = wd + pad < kw ? 0 : (wd + pad - kw) / stride + 1;
  ox_hi = ox_hi > out_w ? out_w : ox_hi;
  ox_hi = ox_hi < ox_lo ? ox_lo : ox_hi;
  for (int32_t oy = 0; oy < out_h; ++oy) {
    int32_t iy0 = oy * stride - pad;
    int32_t ky0 = iy0 < 0 ? -iy0 : 0, ky1 = iy0 + kh > h ? h - iy0 : kh;
    if (ky1 <= ky0) {
      continue; /* no window row inside the plane: only zeros to add */
    }
    float *out = acc + oy * out_w;
    const float *row = a + (iy0 + ky0) * a_row, *wr = w + ky0 * w_row; /* the first window row inside */
    int32_t ky_n = ky1 - ky0;
    if (kw == 3 && pad == 1 && stride <= 2 && (out_w - 1) * stride + 1 <= wd && (!relu || fast_relu) &&
        (w_col == 1 || (stride == 1 && !relu))) {
      /* the commonest conv: every column in blocks, its padding a zero in a register */
      int32_t done = conv_row_k3_blocks(out, row, a_chan, a_row, wr, w_chan, w_row, w_col, c, ky_n, wd, stride, out_w, relu);
      for (int32_t x = done; x < out_w; ++x) {
        int32_t ix0 = x * stride - pad;
        int32_t kx0 = ix0 < 0 ? -ix0 : 0, kx1 = ix0 + kw > wd ? wd - ix0 : kw;
        out[x] = conv_one(out[x], row + ix0 + kx0, a_chan, a_row, wr + kx0 * w_col, w_chan, w_row, w_col, c, ky_n, kx1 - kx0, relu);
      }
      continue;
    }
    int32_t ox = ox_lo;
    for (; ox + 4 <= ox_hi; ox += 4) {
      conv_row4(out + ox, row + ox * stride - pad, a_chan, a_row, wr, w_chan, w_row, w_col, c, ky_n, kw, stride, relu);
    }
    for (int32_t x = 0; x < out_w; ++x) {
      if (x == ox_lo && ox > ox_lo) {
        x = ox - 1; /* the inside outputs done above */
        continue;
      }
      int32_t ix0 = x * stride - pad;
      int32_t kx0 = ix0 < 0 ? -ix0 : 0, kx1 = ix0 + kw > wd ? wd - ix0 : kw;
      if (kx1 > kx0) {
        out[x] = conv_one(out[x], row + ix0 + kx0, a_chan, a_row, wr + kx0 * w_col, w_chan, w_row, w_col, c, ky_n, kx1 - kx0, relu);
      }
    }
  }
  if (fast_relu && !no_nan(acc, out_h * out_w)) { /* perhaps a NaN input relu_fast kept */
    memset(acc, 0, (size_t)(out_h * out_w) * sizeof *acc);
    conv_plane_f32_loop(acc, a, a_chan, a_row, w, w_chan, w_row, w_col, c, h, wd, kh, kw, stride, pad, out_h, out_w, relu);
  }
  return 0;
}

/* tt_requant_s8: the requantization that ends an int8 conv, for n outputs:
 *
 *     out[x] = (int8)nearbyintf(max(min(nearbyintf((acc[x] + (float)*bias) * *scale) + zo, 127.49f), -128.49f))
 *
 * (TVM prints min and max as `a < b ? a : b` and `a > b ? a : b`.) acc holds an int8 conv's
 * float32 sums, which are finite (tensorize.py matches only accumulators that int8 convs
 * write); with a finite scale p = (acc[x] + bias) * scale is a finite float or an infinity.
 * For |p| < 2^22, p + 1.5 * 2^23 rounds p to an integer, half to even as nearbyintf does,
 * and that integer is the float's bits minus those of 1.5 * 2^23; adding the zero point (an
 * integer, |zo| <= 2^15) and clamping to [-128, 127] is what the float clamps and the
 * second rounding do to an integer. For |p| >= 2^22 (infinities included) both clamp to the
 * bound on p's side: here the bits difference keeps p's sign and at least 2^22 of magnitude
 * (QSUB saturates it on Arm; elsewhere p is clamped to the outputs' range first). A scale that is not
 * finite takes the float32 loop itself. Either way the TIR's bits. */
static __attribute__((cold, noinline)) void requant_float(int8_t *out, const float *acc, int32_t n, float b, float s,
                                                          float zo) {
  for (int32_t x = 0; x < n; ++x) {
    float t = __builtin_nearbyintf((acc[x] + b) * s) + zo;
    t = t < 127.49f ? t : 127.49f;
    t = t > -128.49f ? t : -128.49f;
    out[x] = (int8_t)__builtin_nearbyintf(t);
  }
}

int32_t tt_requant_s8(void *out_, void *acc_, int32_t n, void *bias_, void *scale_, int32_t zo) {
  int8_t *out = (int8_t *)out_;
  const float *acc = (const float *)acc_;
  float b = (float)*(const int32_t *)bias_, s = *(const float *)scale_;
  const int32_t offset = float_bits(12582912.0f) - zo; /* 1.5 * 2^23 */
  if (!__builtin_isfinite(s)) {
    requant_float(out, acc, n, b, s, (float)zo);
    return 0;
  }
  for (int32_t x = 0; x < n; ++x) {
    out[x] = requant_one(acc[x], b, s, offset);
  }
  return 0;
}

/* tt_dw_plane_requant_s8: tt_dw_plane_s8 on a zeroed plane and the requantization of that
 * plane into out (tt_requant_s8 with *bias, *scale and zo), for what TVM runs one after the
 * other where nothing else reads the plane (tensorize.py): each output requantized from its
 * int32 sum with the bias added in int32 (requant_biased), the float sums never stored
 * (about 4 instructions an output fewer). Where the int32 path does not apply, and at strides
 * beyond 2 (no conv here has them; their copies of the loops would cost flash), the two
 * calls themselves, with acc as their plane. */
int32_t tt_dw_plane_requant_s8(void *acc_, void *a_, int32_t a_row, void *w_, int32_t w_row, int32_t h, int32_t wd,
                               int32_t kh, int32_t kw, int32_t stride, int32_t pad, int32_t out_h, int32_t out_w,
                               int32_t zx, void *out_, void *bias_, void *scale_, int32_t zo) {
  const int32_t bias = *(const int32_t *)bias_;
  const float s = *(const float *)scale_;
  /* the zero point's fold is at most 49 * 128 * 128 < 2^20 in magnitude: with such a bias,
   * their difference is a float32 exactly (dw_out_sum) */
  const int32_t bias_max = TT_FLOAT_SUMS ? TT_EXACT_FLOAT_INTEGERS - (1 << 20) : TT_EXACT_FLOAT_INTEGERS;
  if (kh * kw > TT_DW_MAX_TAPS || stride > 2 || !__builtin_isfinite(s) || bias < -bias_max || bias > bias_max) {
    tt_dw_plane_s8(acc_, a_, a_row, w_, w_row, h, wd, kh, kw, stride, pad, out_h, out_w, zx, 1);
    return tt_requant_s8(out_, acc_, out_h * out_w, bias_, scale_, zo);
  }
  const dw_requant qr = {(int8_t *)out_, s, float_bits(12582912.0f) - zo}; /* requant_scaled's offset */
  dw_plane(NULL, (const int8_t *)a_, a_row, (const int8_t *)w_, w_row, h, wd, kh, kw, stride, pad, out_h, out_w, zx,
           bias, qr, 1);
  return 0;
}

/* One output of the exact paths below: the int32 sum minus the zero-point fold, written to the
 * accumulator if `keep` (a constant in each copy), and its requantization with the bias added
 * in int32 (unbiased = fold - bias, computed once). */
static inline __attribute__((always_inline)) int8_t requant_sum(int32_t sum, int32_t fold, int32_t unbiased, float s,
                                                               int32_t offset, float *acc, const int keep) {
  if (keep) {
    *acc = (float)(sum - fold);
  }
  return requant_biased(sum - unbiased, s, offset);
}

/* n pixels of the exact path of tt_pw_row_requant_s8. */
static inline __attribute__((always_inline)) void row_requant_step(float *acc, const int8_t *a, int32_t a_stride,
                                                                  const int8_t *w, int32_t k, int32_t fold,
                                                                  int32_t unbiased, int8_t *out, float s,
                                                                  int32_t offset, const int32_t *st, const int keep,
                                                                  const int n) {
  int32_t sums[TT_PW_PIXELS];
#if defined(__ARM_FEATURE_DSP)
  if (st) {
    pw_dot1_staged(st, a, a_stride, w, k, sums);
  } else {
    pw_dot_n(a, a_stride, w, k, sums, n);
  }
#else
#if TT_FLOAT_SUMS
  if (float_exact(unbiased) && (!keep || float_exact(fold))) { /* as rows2_requant_step */
    float t[8];
    int32_t fs_stride = 0, fs_k = 0;
    const float *fs = float_staged(st, a, n, &fs_stride, &fs_k);
    pw_sums_f(a, a_stride, w, 0, k, t, 0, n, fs, fs_stride, fs_k, 0);
    for (int j = 0; j < n; ++j) {
      if (keep) {
        acc[j] = t[j] - (float)fold;
      }
      out[j] = requant_scaled((t[j] - (float)unbiased) * s, offset);
    }
    return;
  }
#endif
  (void)st; /* staged on RV32F only, and read above */
  pw_dot_n(a, a_stride, w, k, sums, n);
#endif
  for (int j = 0; j < n; ++j) {
    out[j] = requant_sum(sums[j], fold, unbiased, s, offset, acc + j, keep);
  }
}

/* The exact path of tt_pw_row_requant_s8. */
static inline __attribute__((always_inline)) void pw_row_requant(float *acc, const int8_t *a, int32_t a_stride,
                                                               const int8_t *w, int32_t k, int32_t width,
                                                               int32_t fold, int8_t *out, int32_t bias, float s,
                                                               int32_t offset, const int32_t *st, const int keep) {
  const int32_t unbiased = fold - bias;
  int32_t x = 0;
  for (; x + TT_PW_PIXELS <= width; x += TT_PW_PIXELS) {
    row_requant_step(acc + x, a + x, a_stride, w, k, fold, unbiased, out + x, s, offset, staged_at(st, x, k), keep,
                     TT_PW_PIXELS);
  }
#if TT_PW_PIXELS > 4 /* the rest of a row of 4k pixels */
  for (; x + 4 <= width; x += 4) {
    row_requant_step(acc + x, a + x, a_stride, w, k, fold, unbiased, out + x, s, offset, staged_at(st, x, k), keep, 4);
  }
#endif
  for (; x < width; ++x) {
    out[x] = requant_sum(pw_dot(a + x, a_stride, w, 1, k), fold, unbiased, s, offset, acc + x, keep);
  }
}

#if defined(__ARM_FEATURE_DSP)
/* pw_row_requant's exact path for 8 or 16 input channels (MCUNet's expansions at 64x64 and
 * 32x32, too wide to stage), the sums not kept: the weights split into halfword pairs once
 * a call and kept in registers, 4 pixels a step in one pass over the k rows (pw_dot4's
 * steps unrolled). The sums start at -unbiased, which requant_biased needs subtracted:
 * the same exact integers, one subtraction per output fewer. */
static inline __attribute__((always_inline)) void pw_row_requant_k(const int8_t *a, int32_t a_stride, const int8_t *w,
                                                                 const int k, int32_t width, int32_t unbiased,
                                                                 int8_t *out, float s, int32_t offset) {
  int32_t wp[8]; /* (w_i, w_i+2) for i = 0, 1, 4, 5, 8, ... */
  for (int i = 0; i < k / 4; ++i) {
    const uint32_t v = load4(w + 4 * i);
    wp[2 * i] = __sxtb16(v), wp[2 * i + 1] = sxtb16_ror8(v);
  }
  int32_t x = 0;
  for (; x + 4 <= width; x += 4) {
    const int8_t *p = a + x;
    int32_t s0 = -unbiased, s1 = -unbiased, s2 = -unbiased, s3 = -unbiased;
    for (int i = 0; i < k / 4; ++i, p = down4(p, a_stride)) {
      for (int h = 0; h < 2; ++h) { /* rows 4i + h and 4i + h + 2 */
        const int32_t c = wp[2 * i + h];
        uint32_t r = load4(p + h * a_stride), r2 = load4_down2(p + h * a_stride, a_stride);
        uint32_t lo = pack_low(r, r2), hi = pack_high(r, r2);
        s0 = __smlad(__sxtb16(lo), c, s0), s1 = __smlad(sxtb16_ror8(lo), c, s1);
        s2 = __smlad(__sxtb16(hi), c, s2), s3 = __smlad(sxtb16_ror8(hi), c, s3);
      }
    }
    out[x] = requant_biased(s0, s, offset), out[x + 1] = requant_biased(s1, s, offset);
    out[x + 2] = requant_biased(s2, s, offset), out[x + 3] = requant_biased(s3, s, offset);
  }
  for (; x < width; ++x) {
    out[x] = requant_biased(pw_dot(a + x, a_stride, w, 1, k) - unbiased, s, offset);
  }
}

#else
/* The same in plain C: the weights in registers for the row, 8 pixels a step, the sums
 * from -unbiased (on RV32, float sums with FMADD.S measured slower here: every input is
 * used once). */
static inline __attribute__((always_inline)) void pw_row_requant_k(const int8_t *a, int32_t a_stride, const int8_t *w,
                                                                 const int k, int32_t width, int32_t unbiased,
                                                                 int8_t *out, float s, int32_t offset) {
  int32_t wf[16];
  for (int i = 0; i < k; ++i) {
    wf[i] = w[i];
  }
  int32_t x = 0;
  for (; x + 8 <= width; x += 8) {
    const int8_t *p = a + x;
    int32_t f[8];
    for (int j = 0; j < 8; ++j) {
      f[j] = -unbiased;
    }
    for (int i = 0; i < k; ++i, p += a_stride) {
      for (int j = 0; j < 8; ++j) {
        f[j] += wf[i] * p[j];
      }
    }
    for (int j = 0; j < 8; ++j) {
      out[x + j] = requant_biased(f[j], s, offset);
    }
  }
  for (; x < width; ++x) {
    out[x] = requant_biased(pw_dot(a + x, a_stride, w, 1, k) - unbiased, s, offset);
  }
}
#endif

static __attribute__((noinline)) void pw_row_requant_k8_k16(const int8_t *a, int32_t a_stride, const int8_t *w,
                                                            int32_t k, int32_t width, int32_t unbiased, int8_t *out,
                                                            float s, int32_t offset) {
  if (k == 8) {
    pw_row_requant_k(a, a_stride, w, 8, width, unbiased, out, s, offset);
  } else {
    pw_row_requant_k(a, a_stride, w, 16, width, unbiased, out, s, offset);
  }
}

/* tt_pw_row_requant_s8: a pointwise conv's row and its requantization in one call, for the
 * three loops TVM runs one after the other: zeroing the accumulator row, tt_pw_row_s8 on it,
 * tt_requant_s8 of it into out. Each group of 4 sums is requantized as soon as it is made;
 * the sums are also written to acc (what zeroing then adding gives) if `keep_acc`, which
 * tensorize.py clears when nothing else reads that row. The accumulator holds acc_width
 * floats: a call for a whole plane (tensorize.py's `_whole_plane_loop`, the sums not kept)
 * passes a row's, and the float fallback goes through the plane that many pixels at a time. */
static inline __attribute__((always_inline)) int32_t pw_row_requant_call(void *acc_, void *a_, int32_t a_stride, void *w_,
                                                             int32_t w_stride, int32_t k, int32_t width, int32_t zx,
                                                             void *out_, void *bias_, void *scale_, int32_t zo,
                                                             int32_t keep_acc, int32_t acc_width,
                                                             const int32_t *st, const int unstaged) {
  float *acc = (float *)acc_;
  const int8_t *a = (const int8_t *)a_, *w = (const int8_t *)w_;
  int8_t *out = (int8_t *)out_;
  int32_t bias = *(const int32_t *)bias_;
  float s = *(const float *)scale_;
  const int32_t offset = float_bits(12582912.0f) - zo;
  int32_t fold;
  if (w_stride != 1 || !__builtin_isfinite(s) || !float_exact(bias) || !weights_exact(w, 1, k, zx, &fold)) {
    for (int32_t x0 = 0; x0 < width; x0 += acc_width) { /* the float loop, acc_width pixels at a time */
      int32_t n = width - x0 < acc_width ? width - x0 : acc_width;
      for (int32_t x = 0; x < n; ++x) {
        acc[x] = 0.0f;
      }
      tt_pw_row_s8(acc_, (void *)(a + x0), a_stride, w_, w_stride, k, n, zx);
      tt_requant_s8(out + x0, acc_, n, bias_, scale_, zo);
    }
    return 0;
  }
  if (unstaged && (k == 8 || k == 16) && !keep_acc) { /* weights in registers for the row */
    pw_row_requant_k8_k16(a, a_stride, w, k, width, fold - bias, out, s, offset);
    return 0;
  }
  if (keep_acc) {
    pw_row_requant(acc, a, a_stride, w, k, width, fold, out, bias, s, offset, st, 1);
  } else {
    pw_row_requant(acc, a, a_stride, w, k, width, fold, out, bias, s, offset, st, 0);
  }
  return 0;
}

int32_t tt_pw_row_requant_s8(void *acc_, void *a_, int32_t a_stride, void *w_, int32_t w_stride, int32_t k,
                             int32_t width, int32_t zx, void *out_, void *bias_, void *scale_, int32_t zo,
                             int32_t keep_acc, int32_t acc_width) {
  return pw_row_requant_call(acc_, a_, a_stride, w_, w_stride, k, width, zx, out_, bias_, scale_, zo, keep_acc,
                             acc_width, 0, 1);
}

/* tt_pw_row_requant_s8 for a row (or several) of the planes that start at `plane` (their rows
 * one after the other, this row's pixel offset a multiple of 4), reading the input from the
 * planes tt_pw_stage_s8 staged: a pointwise conv fused with the depthwise conv after it
 * computes one output channel's plane at a time, each from the same input. */
int32_t tt_pw_row_requant_staged_s8(void *acc_, void *a_, int32_t a_stride, void *w_, int32_t w_stride, int32_t k,
                                    int32_t width, int32_t zx, void *out_, void *bias_, void *scale_, int32_t zo,
                                    int32_t keep_acc, int32_t acc_width, void *stage, void *plane) {
  return pw_row_requant_call(acc_, a_, a_stride, w_, w_stride, k, width, zx, out_, bias_, scale_, zo, keep_acc,
                             acc_width, staged_from(stage, a_, plane, k), 0);
}

/* n pixels of the exact path of tt_pw_rows2_requant_s8. */
static inline __attribute__((always_inline)) void rows2_requant_step(float *acc0, float *acc1, const int8_t *a,
                                                                    int32_t a_stride, const int8_t *w0,
                                                                    int32_t w_fstride, int32_t k, const int32_t fold[2],
                                                                    int32_t unbiased0, int32_t unbiased1, int8_t *out0,
                                                                    int8_t *out1, float s0, float s1, int32_t offset,
                                                                    const int32_t *st, const int keep, const int n) {
#if TT_FLOAT_SUMS
  if (float_exact(unbiased0) && float_exact(unbiased1) &&
      (!keep || (float_exact(fold[0]) && float_exact(fold[1])))) { /* each sum rounded once */
    float t0[8], t1[8];
    int32_t fs_stride = 0, fs_k = 0;
    const float *fs = float_staged(st, a, n, &fs_stride, &fs_k);
    pw_sums_f(a, a_stride, w0, w_fstride, k, t0, t1, n, fs, fs_stride, fs_k, 1);
    for (int j = 0; j < n; ++j) {
      if (keep) {
        acc0[j] = t0[j] - (float)fold[0], acc1[j] = t1[j] - (float)fold[1];
      }
      out0[j] = requant_scaled((t0[j] - (float)unbiased0) * s0, offset);
      out1[j] = requant_scaled((t1[j] - (float)unbiased1) * s1, offset);
    }
    return;
  }
#endif
  int32_t sums[2 * TT_PW_PIXELS];
  if (keep) {
    pw_dot2(st, a, a_stride, w0, w_fstride, k, sums, n, 0, 0);
    for (int j = 0; j < n; ++j) {
      out0[j] = requant_sum(sums[j], fold[0], unbiased0, s0, offset, acc0 + j, 1);
      out1[j] = requant_sum(sums[n + j], fold[1], unbiased1, s1, offset, acc1 + j, 1);
    }
  } else { /* the sums start at -unbiased, which requant_biased needs subtracted */
    pw_dot2(st, a, a_stride, w0, w_fstride, k, sums, n, -unbiased0, -unbiased1);
    for (int j = 0; j < n; ++j) {
      out0[j] = requant_biased(sums[j], s0, offset), out1[j] = requant_biased(sums[n + j], s1, offset);
    }
  }
}

/* The exact path of tt_pw_rows2_requant_s8. */
static inline __attribute__((always_inline)) void pw_rows2_requant(float *acc0, float *acc1, const int8_t *a,
                                                                 int32_t a_stride, const int8_t *w0, int32_t w_fstride,
                                                                 int32_t k, int32_t width, const int32_t fold[2],
                                                                 int8_t *out0, int8_t *out1, const int32_t bias[2],
                                                                 const float s[2], int32_t offset, const int32_t *st,
                                                                 const int keep) {
  const int32_t unbiased0 = fold[0] - bias[0], unbiased1 = fold[1] - bias[1];
  const float s0 = s[0], s1 = s[1];
  int32_t x = 0;
  for (; x + TT_PW_PIXELS <= width; x += TT_PW_PIXELS) {
    rows2_requant_step(acc0 + x, acc1 + x, a + x, a_stride, w0, w_fstride, k, fold, unbiased0, unbiased1,
                       out0 + x, out1 + x, s0, s1, offset, staged_at(st, x, k), keep, TT_PW_PIXELS);
  }
#if TT_PW_PIXELS > 4 /* the rest of a row of 4k pixels */
  for (; x + 4 <= width; x += 4) {
    rows2_requant_step(acc0 + x, acc1 + x, a + x, a_stride, w0, w_fstride, k, fold, unbiased0, unbiased1,
                       out0 + x, out1 + x, s0, s1, offset, staged_at(st, x, k), keep, 4);
  }
#endif
  for (; x < width; ++x) {
    out0[x] = requant_sum(pw_dot(a + x, a_stride, w0, 1, k), fold[0], unbiased0, s0, offset, acc0 + x, keep);
    out1[x] = requant_sum(pw_dot(a + x, a_stride, w0 + w_fstride, 1, k), fold[1], unbiased1, s1, offset, acc1 + x,
                          keep);
  }
}

#if defined(__ARM_FEATURE_DSP)
/* pw_rows2_requant's exact path for 8 or 16 input channels read from the rows (MCUNet's
 * expansions at 64x64 and 32x32, fused with the depthwise conv after them, whose input is
 * too large to stage), the sums not kept: pw_row_requant_k for two output channels, each
 * pair of input rows loaded, packed and split once for both (TT_DOT2X4_HALF), the weights
 * split into halfword pairs once a call. The sums start at -unbiased. */
static inline __attribute__((always_inline)) void pw_rows2_requant_k(const int8_t *a, int32_t a_stride,
                                                                  const int8_t *w0, int32_t w_fstride, const int k,
                                                                  int32_t width, int32_t unbiased0, int32_t unbiased1,
                                                                  int8_t *out0, int8_t *out1, float f0, float f1,
                                                                  int32_t offset) {
  int32_t wp[2][8]; /* per channel: (w_i, w_i+2) for i = 0, 1, 4, 5, 8, ... */
  for (int32_t i = 0; i < k / 4; ++i) {
    const uint32_t v0 = load4(w0 + 4 * i), v1 = load4(w0 + w_fstride + 4 * i);
    wp[0][2 * i] = __sxtb16(v0), wp[0][2 * i + 1] = sxtb16_ror8(v0);
    wp[1][2 * i] = __sxtb16(v1), wp[1][2 * i + 1] = sxtb16_ror8(v1);
  }
  const int32_t a_stride2 = 2 * a_stride;
  int32_t x = 0;
  for (; x + 4 <= width; x += 4) {
    const int8_t *p = a + x;
    int32_t s00 = -unbiased0, s01 = -unbiased0, s02 = -unbiased0, s03 = -unbiased0; /* s<channel><pixel> */
    int32_t s10 = -unbiased1, s11 = -unbiased1, s12 = -unbiased1, s13 = -unbiased1;
    for (int i = 0; i < k / 4; ++i, p = down4(p, a_stride)) {
      TT_DOT2X4_HALF(load4(p), load4(p + a_stride2), wp[0][2 * i], wp[1][2 * i]);
      TT_DOT2X4_HALF(load4(p + a_stride), load4(p + a_stride + a_stride2), wp[0][2 * i + 1], wp[1][2 * i + 1]);
    }
    out0[x] = requant_biased(s00, f0, offset), out0[x + 1] = requant_biased(s01, f0, offset);
    out0[x + 2] = requant_biased(s02, f0, offset), out0[x + 3] = requant_biased(s03, f0, offset);
    out1[x] = requant_biased(s10, f1, offset), out1[x + 1] = requant_biased(s11, f1, offset);
    out1[x + 2] = requant_biased(s12, f1, offset), out1[x + 3] = requant_biased(s13, f1, offset);
  }
  for (; x < width; ++x) {
    out0[x] = requant_biased(pw_dot(a + x, a_stride, w0, 1, k) - unbiased0, f0, offset);
    out1[x] = requant_biased(pw_dot(a + x, a_stride, w0 + w_fstride, 1, k) - unbiased1, f1, offset);
  }
}

/* gcc's first scheduling pass hoists the row loads above the multiply-accumulates, which
 * leaves the 8 sums no registers: without it, 175 instructions per 64 MACs instead of 187. */
static __attribute__((noinline, optimize("no-schedule-insns"))) void
pw_rows2_requant_k8_k16(const int8_t *a, int32_t a_stride, const int8_t *w0, int32_t w_fstride, int32_t k,
                        int32_t width, int32_t unbiased0, int32_t unbiased1, int8_t *out0, int8_t *out1, float f0,
                        float f1, int32_t offset) {
  if (k == 8) {
    pw_rows2_requant_k(a, a_stride, w0, w_fstride, 8, width, unbiased0, unbiased1, out0, out1, f0, f1, offset);
  } else {
    pw_rows2_requant_k(a, a_stride, w0, w_fstride, 16, width, unbiased0, unbiased1, out0, out1, f0, f1, offset);
  }
}
#endif

/* tt_pw_rows2_requant_s8: tt_pw_rows2_s8 on zeroed rows and the requantization of both rows
 * in one call, for what TVM runs one after the other: the two channels' rows, then a loop of
 * two tt_requant_s8 calls, channel c's row into out_c with bias[c] and scale[c] (the two
 * channels' values side by side). The sums are also written to the rows if `keep_acc`,
 * which tensorize.py clears when nothing else reads them; cleared, width may exceed acc_stride
 * (a call for whole planes, tensorize.py's `_whole_plane_loop`), and the float fallback goes
 * through them acc_stride pixels at a time. One copy for it and its staged forms. */
static __attribute__((noinline)) int32_t pw_rows2_requant_call(void *acc_, void *a_, int32_t a_stride, void *w_,
                                                               int32_t w_fstride, int32_t w_stride, int32_t k,
                                                               int32_t width, int32_t acc_stride, int32_t zx,
                                                               void *out0_, void *out1_, void *bias_, void *scale_,
                                                               int32_t zo, int32_t keep_acc, const int32_t *st,
                                                               const int32_t *folds) {
  float *acc0 = (float *)acc_, *acc1 = acc0 + acc_stride;
  const int8_t *a = (const int8_t *)a_, *w0 = (const int8_t *)w_;
  int8_t *out0 = (int8_t *)out0_, *out1 = (int8_t *)out1_;
  const int32_t *bias = (const int32_t *)bias_;
  const float *s = (const float *)scale_;
  const int32_t offset = float_bits(12582912.0f) - zo;
  int32_t fold[2];
  if (w_stride != 1 || !__builtin_isfinite(s[0]) || !__builtin_isfinite(s[1]) || !float_exact(bias[0]) ||
      !float_exact(bias[1]) || !pair_exact(w0, w_fstride, k, zx, folds, fold)) {
    for (int32_t x0 = 0; x0 < width; x0 += acc_stride) { /* the float loop, a row of acc_stride pixels at a time */
      int32_t n = width - x0 < acc_stride ? width - x0 : acc_stride;
      pw_rows2(acc_, (void *)(a + x0), a_stride, w_, w_fstride, w_stride, k, n, acc_stride, zx, 1, 0, folds);
      tt_requant_s8(out0 + x0, acc0, n, (void *)bias, (void *)s, zo);
      tt_requant_s8(out1 + x0, acc1, n, (void *)(bias + 1), (void *)(s + 1), zo);
    }
    return 0;
  }
#if defined(__ARM_FEATURE_DSP)
  if (!st && (k == 8 || k == 16) && !keep_acc) { /* the weights split once for the whole call */
    pw_rows2_requant_k8_k16(a, a_stride, w0, w_fstride, k, width, fold[0] - bias[0], fold[1] - bias[1], out0, out1,
                            s[0], s[1], offset);
    return 0;
  }
#endif
  if (keep_acc) {
    pw_rows2_requant(acc0, acc1, a, a_stride, w0, w_fstride, k, width, fold, out0, out1, bias, s, offset, st, 1);
  } else {
    pw_rows2_requant(acc0, acc1, a, a_stride, w0, w_fstride, k, width, fold, out0, out1, bias, s, offset, st, 0);
  }
  return 0;
}

int32_t tt_pw_rows2_requant_s8(void *acc_, void *a_, int32_t a_stride, void *w_, int32_t w_fstride, int32_t w_stride,
                               int32_t k, int32_t width, int32_t acc_stride, int32_t zx, void *out0_, void *out1_,
                               void *bias_, void *scale_, int32_t zo, int32_t keep_acc) {
  return pw_rows2_requant_call(acc_, a_, a_stride, w_, w_fstride, w_stride, k, width, acc_stride, zx, out0_, out1_,
                               bias_, scale_, zo, keep_acc, 0, 0);
}

/* tt_pw_rows2_requant_s8 reading its input from the row tt_pw_stage_s8 staged, and its
 * weights' folds from `folds` if given (tt_pw_folds_s8). */
int32_t tt_pw_rows2_requant_staged_s8(void *acc_, void *a_, int32_t a_stride, void *w_, int32_t w_fstride,
                                      int32_t w_stride, int32_t k, int32_t width, int32_t acc_stride, int32_t zx,
                                      void *out0_, void *out1_, void *bias_, void *scale_, int32_t zo, int32_t keep_acc,
                                      void *stage, void *folds) {
  return pw_rows2_requant_call(acc_, a_, a_stride, w_, w_fstride, w_stride, k, width, acc_stride, zx, out0_, out1_,
                               bias_, scale_, zo, keep_acc, staged(stage), (const int32_t *)folds);
}

/* tt_pw_rows2_requant_s8 for a row of the planes that start at `plane`, reading the input from
 * the planes tt_pw_stage_s8 staged (as tt_pw_rows2_planes_staged_s8). */
int32_t tt_pw_rows2_requant_planes_staged_s8(void *acc_, void *a_, int32_t a_stride, void *w_, int32_t w_fstride,
                                             int32_t w_stride, int32_t k, int32_t width, int32_t acc_stride,
                                             int32_t zx, void *out0_, void *out1_, void *bias_, void *scale_,
                                             int32_t zo, int32_t keep_acc, void *stage, void *plane) {
  return pw_rows2_requant_call(acc_, a_, a_stride, w_, w_fstride, w_stride, k, width, acc_stride, zx, out0_, out1_,
                               bias_, scale_, zo, keep_acc, staged_from(stage, a_, plane, k), 0);
}
