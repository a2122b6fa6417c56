/*
 * RISC-V machine-mode trap entry (mtvec, direct mode).  Any trap is fatal here: read
 * mcause/mepc/mtval, move SP to the top of the stack (we never return, and after a
 * stack overflow the current SP sits in the guard) and call
 * board_trap_report(mcause, mepc, mtval, old_sp).
 */
    .option arch, +zicsr

    .section .text.board_trap_entry, "ax", @progbits
    .balign 4
    .global board_trap_entry
board_trap_entry:
    csrr    a0, mcause
    csrr    a1, mepc
    csrr    a2, mtval
    mv      a3, sp
    la      sp, __stack
    call    board_trap_report       /* does not return */
1:  j       1b
