/* idt.c - the IDT and the C side of interrupt dispatch. */
#include "dqtest.h"

struct idt_entry {
    uint16_t off_lo, sel;
    uint8_t ist, type;
    uint16_t off_mid;
    uint32_t off_hi, zero;
} __attribute__((packed));

static struct idt_entry idt[256] __attribute__((aligned(16)));
static irq_handler_t handlers[256];
extern char isr_stubs[];

static const char *const exc_names[32] = {
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP",
    "#SS", "#GP", "#PF", "res", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
};

void idt_init(void)
{
    for (unsigned i = 0; i < 256; i++) {
        uint64_t a = (uint64_t)(isr_stubs + 16 * i);
        idt[i] = (struct idt_entry){
            .off_lo = (uint16_t)a,
            .sel = 0x08,
            .ist = 0,
            .type = 0x8e,   /* present, DPL 0, 64-bit interrupt gate */
            .off_mid = (uint16_t)(a >> 16),
            .off_hi = (uint32_t)(a >> 32),
        };
    }
    idt_load();
}

void idt_load(void)
{
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) idtr = {
        sizeof(idt) - 1, (uint64_t)idt};
    __asm__ volatile("lidt %0" : : "m"(idtr));
}

void irq_set_handler(uint8_t vector, irq_handler_t h) { handlers[vector] = h; }

void isr_dispatch(struct frame *f);
void isr_dispatch(struct frame *f)
{
    struct cpu *c = this_cpu();
    uint64_t v = f->vector;
    if (v == 2) {               /* NMI: count only, no EOI, never print */
        c->nmi_count++;
        return;
    }
    if (v < 32) {
        uint64_t cr2;
        __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
        panic("exception %s (vector %lu) on cpu%u apic_id=%u rip=0x%lx err=0x%lx cr2=0x%lx rsp=0x%lx",
              exc_names[v] ? exc_names[v] : "?", v, c->index, c->apic_id, f->rip, f->error, cr2, f->rsp);
    }
    c->vec_count[v]++;
    if (v == VEC_SPURIOUS)
        return;                 /* spurious interrupts take no EOI */
    c->last_irq_tsc = rdtsc();
    if (handlers[v])
        handlers[v](f);
    lapic_eoi();
}
