"""tt_math.h against the C library: tt_nearbyintf gives nearbyintf's bits for all 2^32
floats; tt_expf and tt_logf stay within 1 ulp of glibc's (which are within 1 ulp of the
exact result) on the edge cases and on millions of random inputs over their whole range."""

import subprocess

import pytest

from tvm_tinytrain.targets.boards import TARGETS_DIR

RUNTIME = TARGETS_DIR / "runtime"

CHECK = r"""
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* the C library's, taken before tt_math.h renames them */
static float libm_nearbyintf(float x) { return nearbyintf(x); }
static float libm_expf(float x) { return expf(x); }
static float libm_logf(float x) { return logf(x); }
#include "tt_math.h"

static uint32_t bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* distance in units in the last place between two floats of the same sign */
static uint32_t ulps(float a, float b) {
  if (isnan(a) || isnan(b)) return (isnan(a) && isnan(b)) ? 0 : 0xFFFFFFFFu;
  if (a == b) return 0;
  if ((a < 0) != (b < 0)) return 0xFFFFFFFFu;
  uint32_t x = bits(a), y = bits(b);
  return x > y ? x - y : y - x;
}

static uint64_t state = 0x9E3779B97F4A7C15ull;
static uint32_t next(void) { state ^= state << 13; state ^= state >> 7; state ^= state << 17; return (uint32_t)(state >> 32); }

int main(int argc, char **argv) {
  uint64_t bad = 0;
  if (argc > 1 && strcmp(argv[1], "round") == 0) {
    for (uint64_t u = 0; u <= 0xFFFFFFFFull; ++u) {
      float x = from_bits((uint32_t)u), a = libm_nearbyintf(x), b = tt_nearbyintf(x);
      if (bits(a) != bits(b) && !(isnan(a) && isnan(b)) && bad++ < 5)
        printf("nearbyintf %08lx: %08lx vs %08lx\n", (unsigned long)u, (unsigned long)bits(a), (unsigned long)bits(b));
    }
  } else {
    static const float edges[] = {0.0f, -0.0f, 1.0f, -1.0f, 2.0f, 0.5f, 1e-45f, 1.17549435e-38f, 3.4028235e38f,
                                  88.7f, 88.73f, 89.0f, -87.3f, -103.0f, -104.0f, -150.0f, 100.0f, -110.0f,
                                  0.6931472f, 1.4142135f, 0.70710677f, INFINITY, -INFINITY, NAN};
    uint64_t n = 0;
    for (uint64_t i = 0; i < 8000000 + sizeof edges / sizeof edges[0]; ++i, ++n) {
      float x = i < sizeof edges / sizeof edges[0] ? edges[i] : from_bits(next());
      if (ulps(libm_expf(x), tt_expf(x)) > 1 && bad++ < 5)
        printf("expf(%a): %a vs %a\n", x, libm_expf(x), tt_expf(x));
      if (ulps(libm_logf(x), tt_logf(x)) > 1 && bad++ < 5)
        printf("logf(%a): %a vs %a\n", x, libm_logf(x), tt_logf(x));
      float y = ((float)next() / 4294967296.0f) * 120.0f - 110.0f;  /* dense where exp is finite */
      if (ulps(libm_expf(y), tt_expf(y)) > 1 && bad++ < 5)
        printf("expf(%a): %a vs %a\n", y, libm_expf(y), tt_expf(y));
    }
  }
  printf("mismatches %llu\n", (unsigned long long)bad);
  return bad != 0;
}
"""


@pytest.fixture(scope="module")
def checker(tmp_path_factory):
    d = tmp_path_factory.mktemp("math")
    (d / "check.c").write_text(CHECK)
    exe = d / "check"
    # the generated Makefile's float flags: IEEE semantics, no contraction
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
                    f"-I{RUNTIME}", str(d / "check.c"), str(RUNTIME / "tt_math.c"), "-o", str(exe), "-lm"],
                   check=True)
    return exe


@pytest.mark.parametrize("what", ["round", "exp_log"])
def test_tt_math_against_the_c_library(checker, what):
    proc = subprocess.run([str(checker), what], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("mismatches 0"), proc.stdout
