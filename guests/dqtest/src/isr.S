/*
 * isr.S - 256 interrupt entry stubs and the common save/restore path.
 *
 * Stub i lives at isr_stubs + 16 * i.  Vectors without a CPU-pushed error
 * code push a dummy 0, then every stub pushes its vector number, so the C
 * handler always sees the same struct frame layout (see dqtest.h).
 */
    .altmacro
    .macro isr_stub n
    .align 16
    .if ((\n == 8) || ((\n >= 10) && (\n <= 14)) || (\n == 17) || (\n == 21) || (\n == 29) || (\n == 30))
    .else
    pushq $0
    .endif
    pushq $\n
    jmp isr_common
    .endm

    .text
    .align 16
    .globl isr_stubs
isr_stubs:
    .set i, 0
    .rept 256
    isr_stub %i
    .set i, i + 1
    .endr

isr_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    cld
    movq %rsp, %rdi
    call isr_dispatch
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp
    iretq
