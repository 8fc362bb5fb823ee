/*
 * apic.c - local APIC (xAPIC, MMIO), IOAPIC and legacy PIC handling.
 *
 * Logical destinations use the flat model: DFR = 0xffffffff and CPU index i
 * (i < 8) gets LDR bit i, so logical mask (1 << i) addresses exactly CPU i.
 */
#include "dqtest.h"

#define LAPIC_ID 0x020
#define LAPIC_VER 0x030
#define LAPIC_TPR 0x080
#define LAPIC_EOI 0x0b0
#define LAPIC_LDR 0x0d0
#define LAPIC_DFR 0x0e0
#define LAPIC_SVR 0x0f0
#define LAPIC_ESR 0x280
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_LVT_ERROR 0x370
#define LAPIC_TIMER_ICR 0x380
#define LAPIC_TIMER_CCR 0x390
#define LAPIC_TIMER_DCR 0x3e0
#define LVT_MASKED (1u << 16)
#define ICR_BUSY (1u << 12)

static uint64_t lapic_base = LAPIC_BASE_DEFAULT;

uint32_t lapic_read(uint32_t reg) { return mmio_read32(lapic_base + reg); }
static void lapic_write(uint32_t reg, uint32_t v) { mmio_write32(lapic_base + reg, v); }

uint32_t lapic_id(void) { return lapic_read(LAPIC_ID) >> 24; }
void lapic_set_id(uint32_t apic_id) { lapic_write(LAPIC_ID, apic_id << 24); }
void lapic_set_ldr(uint32_t bits) { lapic_write(LAPIC_LDR, bits << 24); }
void lapic_eoi(void) { lapic_write(LAPIC_EOI, 0); }

void lapic_init_cpu(unsigned index)
{
    if (index == 0 && plat.lapic_addr)
        lapic_base = plat.lapic_addr;
    uint64_t base = rdmsr(MSR_APIC_BASE);
    wrmsr(MSR_APIC_BASE, base | (1u << 11));     /* global enable, xAPIC mode */
    lapic_write(LAPIC_DFR, 0xffffffff);          /* flat model */
    lapic_write(LAPIC_LDR, index < 8 ? (1u << index) << 24 : 0);
    lapic_write(LAPIC_TPR, 0);
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED);
    lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);     /* the 8259 is not used */
    lapic_write(LAPIC_LVT_LINT1, 4u << 8);        /* NMI, unmasked */
    lapic_write(LAPIC_LVT_ERROR, LVT_MASKED);
    lapic_write(LAPIC_ESR, 0);
    lapic_write(LAPIC_ESR, 0);
    lapic_write(LAPIC_SVR, 0x100 | VEC_SPURIOUS); /* software enable */
    lapic_eoi();
}

static uint64_t timer_ticks_per_ms;

/* Measure the LAPIC timer (divide by 16) against the calibrated TSC. */
void lapic_timer_calibrate(void)
{
    lapic_write(LAPIC_TIMER_DCR, 0x3);
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VEC_TIMER);
    lapic_write(LAPIC_TIMER_ICR, 0xffffffff);
    udelay(1000);
    uint32_t left = lapic_read(LAPIC_TIMER_CCR);
    lapic_write(LAPIC_TIMER_ICR, 0);
    timer_ticks_per_ms = 0xffffffffu - left;
    if (!timer_ticks_per_ms)
        timer_ticks_per_ms = 1000;
    kprintf("# lapic timer ticks_per_ms=%lu (divide 16)\n", timer_ticks_per_ms);
}

/* One interrupt on VEC_TIMER after about us microseconds. */
void lapic_timer_oneshot_us(uint64_t us)
{
    uint64_t ticks = timer_ticks_per_ms * us / 1000;
    if (ticks == 0)
        ticks = 1;
    if (ticks > 0xffffffffu)
        ticks = 0xffffffffu;
    lapic_write(LAPIC_TIMER_DCR, 0x3);
    lapic_write(LAPIC_LVT_TIMER, VEC_TIMER);
    lapic_write(LAPIC_TIMER_ICR, (uint32_t)ticks);
}

/* Send an IPI: dest_field goes to ICR[63:56] (physical APIC id or logical mask). */
void lapic_send_ipi(uint32_t dest_field, uint32_t icr_lo)
{
    uint64_t f = irq_save();
    for (unsigned i = 0; i < 1000000 && (lapic_read(LAPIC_ICR_LO) & ICR_BUSY); i++)
        cpu_relax();
    lapic_write(LAPIC_ICR_HI, dest_field << 24);
    lapic_write(LAPIC_ICR_LO, icr_lo);
    irq_restore(f);
}

/* Mask both 8259s: all device interrupts go through the IOAPIC. */
void pic_disable(void)
{
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}

static uint64_t ioapic_addr(unsigned idx) { return plat.ioapic[idx].addr; }

uint32_t ioapic_read(unsigned idx, uint32_t reg)
{
    mmio_write32(ioapic_addr(idx), reg);
    return mmio_read32(ioapic_addr(idx) + 0x10);
}

void ioapic_write(unsigned idx, uint32_t reg, uint32_t v)
{
    mmio_write32(ioapic_addr(idx), reg);
    mmio_write32(ioapic_addr(idx) + 0x10, v);
}

static unsigned ioapic_pins(unsigned idx) { return ((ioapic_read(idx, 1) >> 16) & 0xff) + 1; }

void ioapic_mask_all(void)
{
    for (unsigned i = 0; i < plat.nioapic; i++)
        for (unsigned pin = 0; pin < ioapic_pins(i); pin++) {
            ioapic_write(i, 0x10 + 2 * pin, 1u << 16);
            ioapic_write(i, 0x11 + 2 * pin, 0);
        }
}

bool ioapic_for_gsi(uint32_t gsi, unsigned *idx, unsigned *pin)
{
    for (unsigned i = 0; i < plat.nioapic; i++) {
        uint32_t b = plat.ioapic[i].gsi_base;
        if (gsi >= b && gsi < b + ioapic_pins(i)) {
            *idx = i;
            *pin = gsi - b;
            return true;
        }
    }
    return false;
}

/*
 * Route a GSI to vector on one CPU (physical destination, fixed delivery).
 * mps_flags: MADT INTI flags; polarity bits 1:0 (3 = active low), trigger
 * bits 3:2 (3 = level); 0 means bus default (ISA: active high, edge).
 */
void ioapic_route(uint32_t gsi, uint8_t vector, uint8_t dest_apic, uint16_t mps_flags, bool masked)
{
    unsigned idx, pin;
    if (!ioapic_for_gsi(gsi, &idx, &pin))
        return;
    uint32_t lo = vector;
    if ((mps_flags & 3) == 3)
        lo |= 1u << 13;   /* active low */
    if (((mps_flags >> 2) & 3) == 3)
        lo |= 1u << 15;   /* level */
    if (masked)
        lo |= 1u << 16;
    ioapic_write(idx, 0x10 + 2 * pin, 1u << 16);      /* mask while changing */
    ioapic_write(idx, 0x11 + 2 * pin, (uint32_t)dest_apic << 24);
    ioapic_write(idx, 0x10 + 2 * pin, lo);
}
