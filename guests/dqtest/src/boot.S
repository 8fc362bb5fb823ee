/*
 * boot.S - multiboot (v1) entry: 32-bit protected mode -> 64-bit long mode.
 *
 * The multiboot loader enters _start in 32-bit protected mode with paging off,
 * EAX = 0x2BADB002 and EBX = physical address of the multiboot info structure.
 * We build page tables identity-mapping the low 4 GiB with 2 MiB pages (this
 * covers RAM, the trampoline page, and the IOAPIC/HPET/LAPIC MMIO at
 * 0xfec00000-0xfeefffff, which is mapped uncached), load our GDT, enable PAE +
 * EFER.LME + paging and far-jump into 64-bit code, which calls kmain().
 */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003      /* bit 0: align modules; bit 1: give memory info */

    .section .multiboot, "a"
    .align 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .section .text.boot, "ax"
    .code32
    .globl _start
_start:
    cli
    cld
    movl %eax, %esi             /* multiboot magic */
    movl %ebx, %ebp             /* multiboot info pointer */

    /* Zero .bss (page tables and stacks live there). */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb

    movl %esi, mb_magic
    movl %ebp, mb_info
    movl $boot_stack_top, %esp

    /* PML4[0] -> PDPT; PDPT[0..3] -> the four page directories. */
    movl $pdpt, %eax
    orl $0x3, %eax
    movl %eax, pml4
    movl $pd, %eax
    orl $0x3, %eax
    xorl %ecx, %ecx
1:  movl %eax, pdpt(,%ecx,8)
    addl $4096, %eax
    incl %ecx
    cmpl $4, %ecx
    jb 1b

    /* 2048 PDEs of 2 MiB: present | writable | PS; PWT|PCD from 0xfe000000 up. */
    xorl %ecx, %ecx
2:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    cmpl $2032, %ecx
    jb 3f
    orl $0x18, %eax
3:  movl %eax, pd(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb 2b

    movl $pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax             /* CR4.PAE */
    movl %eax, %cr4
    movl $0xC0000080, %ecx      /* EFER */
    rdmsr
    orl $0x100, %eax            /* EFER.LME */
    wrmsr
    lgdt gdt_ptr
    movl %cr0, %eax
    andl $0x9fffffff, %eax      /* caches on: clear CD and NW */
    orl $0x80000001, %eax       /* PG | PE */
    movl %eax, %cr0
    ljmp $0x08, $long_mode_entry

    .code64
long_mode_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movq $boot_stack_top, %rsp
    xorl %ebp, %ebp
    call kmain
4:  cli
    hlt
    jmp 4b

/* 64-bit entry of application processors, reached from the real-mode
 * trampoline with RSP already set to the CPU's own stack. */
    .globl ap_entry64
ap_entry64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    lgdt gdt_ptr
    xorl %ebp, %ebp
    call ap_main
5:  cli
    hlt
    jmp 5b

    .section .rodata
    .align 16
    .globl gdt, gdt_end, gdt_ptr
gdt:
    .quad 0                     /* null */
    .quad 0x00AF9A000000FFFF    /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00CF92000000FFFF    /* 0x10: data, DPL 0 */
gdt_end:
    .align 8
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt

    .section .bss.pagealigned, "aw", @nobits
    .align 4096
    .globl pml4
pml4:   .skip 4096
pdpt:   .skip 4096
pd:     .skip 4 * 4096
boot_stack:
    .skip 16384
boot_stack_top:
