/* tvm-tinytrain harness: feeds a stream of samples to the generated training program.
 *
 * It reads records from the host file "input.bin" (semihosting on an MCU, stdio on the
 * host), one at a time, like samples arriving from a sensor:
 *
 *   header : char magic[4] = "TTIN", uint32 version = 1, uint32 n_records, uint32 input_elems
 *   record : uint32 op, int32 label, float x[input_elems]   (little endian)
 *
 * The sample goes straight into the program's input (tt_input(), inside its arena), read in
 * small chunks and converted with tt_input_from_float (int8 quantization for int8 models),
 * so the harness keeps no copy of it.
 *            op 'T' = one training step on (x, label), 'P' = predict x,
 *            op 'D' = dump all parameters (x and label unused)
 *            op 'S' = save the learned state to flash now (programs compiled with --persist;
 *                     x and label unused)
 *
 * and prints one line per result, floats as the hex of their IEEE-754 bits so that the
 * host reads them back exactly:
 *
 *   loss <i> <bits>            pred <i> <argmax> <bits> ...
 *   param <name> <f32|i8|i32> <offset> <bits> ...   (integers as 32-bit two's complement)
 *   stack <bytes>              workspace <bytes>                 done <records>
 *
 * A program compiled with --persist first restores the newest valid state from flash (after
 * tt_init, before reading input.bin) and prints one line, then one line per 'S' record:
 *
 *   restored <seq> <steps> <crc>   or   restored none
 *   saved <seq> <steps> <crc>      (crc: tt_state_crc(), the state in RAM, hex)
 *
 * Each train step, prediction, save and that restore is bracketed by board_mark_begin/end
 * so the runner can count its instructions.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "board.h"
#include "tinytrain_model.h"
#include "tt_runtime.h"

#define DUMP_PER_LINE 8u
#define CHUNK 32u

static float logits[TT_NUM_CLASSES];

static uint32_t bits_of(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static int read_exact(void *buf, size_t n) {
  return board_read_input(buf, n) == n ? 0 : -1;
}

/* The bits of element i of a parameter, as an unsigned word (int8, int16 sign-extended). */
static uint32_t param_bits(const tt_param_t *param, uint32_t i) {
  const void *data = param->data;
  if (param->frozen != NULL) { /* a weight whose trained channels are apart from the rest */
    uint32_t n = param->trained_block + param->frozen_block, block = i / n, r = i % n;
    if (r < param->trained_block) {
      i = block * param->trained_block + r;
    } else {
      data = param->frozen;
      i = block * param->frozen_block + r - param->trained_block;
    }
  }
  switch (param->dtype) {
    case TT_INT8:
      return (uint32_t)(int32_t)((const int8_t *)data)[i];
    case TT_INT32:
      return (uint32_t)((const int32_t *)data)[i];
    case TT_INT16:
      return (uint32_t)(int32_t)((const int16_t *)data)[i];
    default:
      return bits_of(((const float *)data)[i]);
  }
}

/* Read one sample's floats into tt_input(), converted as the model wants them. */
static int read_sample(void) {
  float chunk[CHUNK];
  tt_input_t *x = tt_input();
  for (uint32_t i = 0; i < TT_INPUT_ELEMS; i += CHUNK) {
    uint32_t n = TT_INPUT_ELEMS - i < CHUNK ? TT_INPUT_ELEMS - i : CHUNK;
    if (read_exact(chunk, n * sizeof(float)) != 0) {
      return -1;
    }
    for (uint32_t j = 0; j < n; ++j) {
      x[i + j] = tt_input_from_float(chunk[j]);
    }
  }
  return 0;
}

static void dump_params(void) {
  static const char *const dtype_names[] = {"f32", "i8", "i32", "i16"};
  for (uint32_t p = 0; p < TT_NUM_PARAMS; ++p) {
    const tt_param_t *param = &tt_params[p];
    for (uint32_t i = 0; i < param->size; i += DUMP_PER_LINE) {
      printf("param %s %s %lu", param->name, dtype_names[param->dtype], (unsigned long)i);
      for (uint32_t j = i; j < param->size && j < i + DUMP_PER_LINE; ++j) {
        printf(" %08lx", (unsigned long)param_bits(param, j));
      }
      printf("\n");
    }
  }
}

#ifdef TT_PERSIST
/* Load the newest valid state from flash, if any, and say which. */
static int restore_state(void) {
  board_mark_begin();
  int status = tt_restore();
  board_mark_end();
  if (status < 0) {
    printf("error restoring the state from flash failed with status %d\n", status);
    return -1;
  }
  if (status == 0) {
    printf("restored none\n");
  } else {
    printf("restored %lu %lu %08lx\n", (unsigned long)tt_state_seq(), (unsigned long)tt_step_count(),
           (unsigned long)tt_state_crc());
  }
  return 0;
}
#endif

int main(void) {
  board_init();
  if (board_open_input("input.bin") != 0) {
    printf("error cannot open input.bin\n");
    return 2;
  }
  struct {
    char magic[4];
    uint32_t version, n_records, input_elems;
  } header;
  if (read_exact(&header, sizeof header) != 0 || memcmp(header.magic, "TTIN", 4) != 0 ||
      header.version != 1u || header.input_elems != TT_INPUT_ELEMS) {
    printf("error input.bin is not a version-1 stream of %lu-element samples\n",
           (unsigned long)TT_INPUT_ELEMS);
    return 2;
  }
  tt_init();
#ifdef TT_PERSIST
  if (restore_state() != 0) {
    return 3;
  }
#endif
  for (uint32_t r = 0; r < header.n_records; ++r) {
    struct {
      uint32_t op;
      int32_t label;
    } rec;
    if (read_exact(&rec, sizeof rec) != 0 || read_sample() != 0) {
      printf("error input.bin ends inside record %lu\n", (unsigned long)r);
      return 2;
    }
    if (rec.op == 'T') {
      float loss = 0.0f;
      board_mark_begin();
      int status = tt_train_step(rec.label, &loss);
      board_mark_end();
      if (status == TT_ERR_NONFINITE) {
        dump_params(); /* the weights kept (as before this step), as a 'D' record prints them */
        printf("error the loss became NaN or Inf at record %lu (training diverged: lower the learning "
               "rate); the weights were left as they were before this step\n", (unsigned long)r);
        return 3;
      }
      if (status != 0) {
        printf("error train_step failed with status %d at record %lu\n", status, (unsigned long)r);
        return 3;
      }
      printf("loss %lu %08lx\n", (unsigned long)r, (unsigned long)bits_of(loss));
    } else if (rec.op == 'P') {
      board_mark_begin();
      int status = tt_predict(logits);
      board_mark_end();
      if (status != 0) {
        printf("error predict failed with status %d at record %lu\n", status, (unsigned long)r);
        return 3;
      }
      uint32_t best = 0;
      for (uint32_t c = 1; c < TT_NUM_CLASSES; ++c) {
        if (logits[c] > logits[best]) {
          best = c;
        }
      }
      printf("pred %lu %lu", (unsigned long)r, (unsigned long)best);
      for (uint32_t c = 0; c < TT_NUM_CLASSES; ++c) {
        printf(" %08lx", (unsigned long)bits_of(logits[c]));
      }
      printf("\n");
    } else if (rec.op == 'D') {
      dump_params();
    } else if (rec.op == 'S') {
#ifdef TT_PERSIST
      board_mark_begin();
      int status = tt_save();
      board_mark_end();
      if (status != 0) {
        printf("error saving the state to flash failed with status %d at record %lu\n", status,
               (unsigned long)r);
        return 3;
      }
      printf("saved %lu %lu %08lx\n", (unsigned long)tt_state_seq(), (unsigned long)tt_step_count(),
             (unsigned long)tt_state_crc());
#else
      printf("error record %lu saves the state: compile the program with --persist\n", (unsigned long)r);
      return 2;
#endif
    } else {
      printf("error unknown op %lu in record %lu\n", (unsigned long)rec.op, (unsigned long)r);
      return 2;
    }
  }
  printf("workspace %lu\n", (unsigned long)tt_workspace_peak());
  printf("stack %lu\n", (unsigned long)board_stack_high_water());
  printf("done %lu\n", (unsigned long)header.n_records);
  return 0;
}
