/*
 * insn_count: a tiny QEMU TCG plugin that counts executed guest instructions.
 *
 * Debian's QEMU 7.2 ships neither plugins nor qemu-plugin.h, so the few API
 * declarations used here are written out below; they match plugin API
 * version 1, as in QEMU 7.2.  Build: gcc -shared -fPIC -O2 -o insn_count.so insn_count.c
 *
 * Arguments (-plugin insn_count.so,begin=0x...,end=0x...,out=FILE):
 *   begin, end  guest addresses of board_mark_begin / board_mark_end (Thumb bit cleared)
 *   out         file that receives one "region N" line per begin..end pair, in order,
 *               each after a "begin N" line (instructions executed before the region),
 *               then "total N" when QEMU exits.
 *   stop        optional N: end QEMU (exit code 86, after a "cut N" line instead of
 *               "total") right when N instructions have executed, before the next one
 *               runs: a power cut at an exact instruction.  Costs a callback per executed
 *               instruction, so only given when wanted.
 *   split       optional guest address (the driver's tt_workspace_set, called before
 *               every kernel): each time it runs inside a region, a "split N" line gives
 *               the instructions since the region began, so a region splits per kernel.
 *
 * Counting is one inline add per executed instruction, exact also when a translation
 * block is cut short by a fault or an I/O re-translation (a per-block add would count
 * instructions that never ran).  A region is the number of instructions executed from
 * the first instruction of board_mark_begin up to, not including, the first
 * instruction of board_mark_end: the region's own code plus 2-3 instructions of
 * marker call overhead.  Run QEMU with -icount shift=0 for repeatable counts.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- the subset of QEMU 7.2's include/qemu/qemu-plugin.h that we use ---- */
#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* opaque here: we never look inside */
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn, qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn, enum qemu_plugin_op op,
                                                void *ptr, uint64_t imm);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;
/* ------------------------------------------------------------------------- */

static uint64_t count;          /* instructions executed so far (single vCPU) */
static uint64_t begin_addr = UINT64_MAX, end_addr = UINT64_MAX, split_addr = UINT64_MAX;
static uint64_t region_start;
static int in_region;
static FILE *out;
static uint64_t stop_at = UINT64_MAX; /* stop=N: cut the run after N instructions */

#define CUT_EXIT_CODE 86

/* stop=N only: on every instruction, before it runs.  Once N instructions have run, QEMU
 * ends at once, like a power cut: no guest code runs any more, nothing is flushed on the
 * guest's behalf (what the guest wrote to host files through semihosting was written by
 * then: semihosting writes are synchronous). */
static void on_insn_stop(unsigned int vcpu, void *udata)
{
    (void)vcpu; (void)udata;
    if (count < stop_at)
        return;
    fprintf(out, "cut %" PRIu64 "\n", count);
    fclose(out);
    _exit(CUT_EXIT_CODE);
}

/* Both marker callbacks sit on the first instruction of their function and see
 * `count` at the same point relative to it, so end - begin is exact. */
static void on_begin(unsigned int vcpu, void *udata)
{
    (void)vcpu; (void)udata;
    region_start = count;
    in_region = 1;
    fprintf(out, "begin %" PRIu64 "\n", count); /* instructions before the region */
}

static void on_end(unsigned int vcpu, void *udata)
{
    (void)vcpu; (void)udata;
    if (!in_region)
        return;
    in_region = 0;
    fprintf(out, "region %" PRIu64 "\n", count - region_start);
    fflush(out); /* keep what we have if QEMU is killed */
}

static void on_split(unsigned int vcpu, void *udata)
{
    (void)vcpu; (void)udata;
    if (in_region)
        fprintf(out, "split %" PRIu64 "\n", count - region_start);
}

static void on_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t pc = qemu_plugin_insn_vaddr(insn);
        if (stop_at != UINT64_MAX)
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_insn_stop, QEMU_PLUGIN_CB_NO_REGS, NULL);
        if (pc == begin_addr)
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_begin, QEMU_PLUGIN_CB_NO_REGS, NULL);
        if (pc == end_addr)
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_end, QEMU_PLUGIN_CB_NO_REGS, NULL);
        if (pc == split_addr)
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_split, QEMU_PLUGIN_CB_NO_REGS, NULL);
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &count, 1);
    }
}

static void on_qemu_exit(qemu_plugin_id_t id, void *udata)
{
    (void)id; (void)udata;
    fprintf(out, "total %" PRIu64 "\n", count);
    fclose(out);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    (void)info;
    const char *path = NULL;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "begin=", 6) == 0)
            begin_addr = strtoull(argv[i] + 6, NULL, 0);
        else if (strncmp(argv[i], "end=", 4) == 0)
            end_addr = strtoull(argv[i] + 4, NULL, 0);
        else if (strncmp(argv[i], "split=", 6) == 0)
            split_addr = strtoull(argv[i] + 6, NULL, 0);
        else if (strncmp(argv[i], "stop=", 5) == 0)
            stop_at = strtoull(argv[i] + 5, NULL, 0);
        else if (strncmp(argv[i], "out=", 4) == 0)
            path = argv[i] + 4;
        else {
            fprintf(stderr, "insn_count: unknown argument '%s'\n", argv[i]);
            return -1;
        }
    }
    if (!path) {
        fprintf(stderr, "insn_count: missing out=FILE\n");
        return -1;
    }
    out = fopen(path, "w");
    if (!out) {
        perror(path);
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_trans);
    qemu_plugin_register_atexit_cb(id, on_qemu_exit, NULL);
    return 0;
}
