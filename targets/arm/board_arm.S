/*
 * Cortex-M fault entry points.  They override the weak handlers in picolibc's vector
 * table.  (picolibc 1.8's crt0-semihost.o defines its MemManage handler as
 * arm_memmange_isr, misspelt, while the vector table calls arm_memmanage_isr, so with
 * that crt0 a MemManage fault ends in the default halt loop and QEMU hangs.  We link
 * crt0-hosted.o instead and define the right names here.)
 *
 * Each entry reads the stacked PC if the exception frame lies inside the stack (after
 * a stack overflow it does not: the frame could not be saved), moves SP to the top of
 * the stack (we never return), and calls board_fault_report(kind, frame, pc) with
 * pc = 0xffffffff when unknown.
 */
    .syntax unified
    .thumb

    .section .text.board_fault_entry, "ax", %progbits

    .global arm_hardfault_isr
    .thumb_func
arm_hardfault_isr:
    movs    r0, #0
    b       board_fault_entry

    .global arm_memmanage_isr
    .thumb_func
arm_memmanage_isr:
    movs    r0, #1
    b       board_fault_entry

    .global arm_busfault_isr
    .thumb_func
arm_busfault_isr:
    movs    r0, #2
    b       board_fault_entry

    .global arm_usagefault_isr
    .thumb_func
arm_usagefault_isr:
    movs    r0, #3
    b       board_fault_entry

    .thumb_func
board_fault_entry:
    mrs     r1, msp                 /* the exception frame: r0-r3, r12, lr, pc, xpsr */
    mvn     r2, #0                  /* pc = 0xffffffff when the frame is unreadable */
    ldr     r3, =__stack_guard_end
    cmp     r1, r3
    blo     1f                      /* frame in the guard: stacking failed */
    ldr     r3, =__stack - 32
    cmp     r1, r3
    bhi     1f
    ldr     r2, [r1, #24]
1:  ldr     r3, =__stack
    mov     sp, r3
    bl      board_fault_report      /* does not return */
2:  b       2b

    .ltorg
