/*
 * trampoline.S - real-mode entry for application processors.
 *
 * smp.c copies tramp_start..tramp_end to TRAMP_BASE (below 1 MiB, 4 KiB
 * aligned) and sends INIT-SIPI-SIPI with vector TRAMP_BASE >> 12, so an AP
 * starts here in real mode at CS:IP = (TRAMP_BASE >> 4):0.  It loads the
 * kernel GDT, enables PAE, loads the kernel's CR3, sets EFER.LME and turns on
 * PE and PG together, which enters long mode directly; a far jump to the
 * 64-bit code selector then reaches tramp64, which loads the stack the BSP
 * left in tramp_stack and jumps to ap_entry64 in the kernel proper.
 */
#define TRAMP_BASE 0x8000
#define T(x) ((x) - tramp_start + TRAMP_BASE)

    .section .rodata
    .globl tramp_start, tramp_end, tramp_stack, tramp_arg
    .code16
tramp_start:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl T(tramp_gdtr)
    movl %cr4, %eax
    orl $0x20, %eax                 /* PAE */
    movl %eax, %cr4
    movl T(tramp_cr3), %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax                /* EFER.LME */
    wrmsr
    movl %cr0, %eax
    andl $0x9fffffff, %eax          /* clear CD, NW (set after INIT) */
    orl $0x80000001, %eax           /* PG | PE */
    movl %eax, %cr0
    ljmpl $0x08, $T(tramp64)

    .code64
tramp64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %ss
    movq T(tramp_stack), %rsp
    movq $ap_entry64, %rax
    jmp *%rax

    .align 8
tramp_gdtr:
    .word 3 * 8 - 1                 /* limit of boot.S's 3-entry GDT */
    .long gdt
    .align 8
tramp_cr3:
    .long pml4
    .long 0
tramp_stack:
    .quad 0
tramp_arg:
    .quad 0
tramp_end:
