/*
 * test_irq.c - device interrupts.
 *
 * PIT: ISA IRQ 0 is mapped to its GSI through the MADT interrupt source
 * overrides (normally GSI 2), the PIT runs at ~1 kHz, and the IOAPIC entry
 * is steered to each CPU in turn (physical destination, fixed delivery).  The
 * target must receive interrupts and every other CPU none.
 *
 * HPET: timer 0 in periodic mode at ~1 kHz, routed (not in legacy mode) to an
 * IOAPIC pin it advertises in Tn_INT_ROUTE_CAP (a pin >= 16 when there is one,
 * as on q35; pin 2, shared with the PIT, on pc, in which case the PIT is
 * stopped first), steered to each CPU in turn the same way.
 *
 * MSI: bus 0 is scanned; QEMU's "edu" device (1234:11e8, add it with
 * -device edu) is used as the MSI source because software can make it raise
 * an interrupt (write to BAR0 + 0x60).  Without it the MSI cases are skipped.
 */
#include "dqtest.h"

#define PIT_HZ 1193182u
#define IRQ_WINDOW_MS 50
#define IRQ_MIN 3           /* ~50 expected at 1 kHz; TCG under host load may drop ticks */

static void pit_periodic(unsigned hz)
{
    uint32_t div = PIT_HZ / hz;
    outb(0x43, 0x34);       /* channel 0, lo/hi, mode 2 (rate generator) */
    outb(0x40, (uint8_t)div);
    outb(0x40, (uint8_t)(div >> 8));
}

static void pit_free_running(void)
{
    outb(0x43, 0x34);       /* mode 2, full count: ~18 Hz, its pin stays masked */
    outb(0x40, 0);
    outb(0x40, 0);
}

/* Route gsi to each CPU in turn for a window; the target must get at least
 * IRQ_MIN interrupts and every other CPU none. */
static void steer_each_cpu(const char *what, uint32_t gsi, uint16_t flags)
{
    uint32_t got[MAX_CPUS], expect[MAX_CPUS];
    char diag[48];
    for (unsigned t = 0; t < ncpus; t++) {
        for (unsigned i = 0; i < ncpus; i++)
            cpus[i].vec_count[VEC_PIT] = 0;
        mfence();
        ioapic_route(gsi, VEC_PIT, (uint8_t)cpus[t].apic_id, flags, false);
        mdelay(IRQ_WINDOW_MS);
        ioapic_route(gsi, VEC_PIT, (uint8_t)cpus[t].apic_id, flags, true);
        udelay(opt.settle_us);
        smp_flush();
        bool ok = true;
        for (unsigned i = 0; i < ncpus; i++) {
            got[i] = cpus[i].vec_count[VEC_PIT];
            expect[i] = i == t ? IRQ_MIN : 0;
            ok &= i == t ? got[i] >= IRQ_MIN : got[i] == 0;
        }
        check(ok, "irq %s via ioapic gsi %u -> cpu%u (%u interrupts in %u ms, none elsewhere)", what, gsi, t,
              got[t], IRQ_WINDOW_MS);
        snprintf(diag, sizeof(diag), "irq %s (expected = minimum on target)", what);
        if (!ok)
            report_counts(diag, got, expect);
    }
}

#define HPET_CFG 0x010
#define HPET_COUNTER 0x0f0
#define HPET_TN_CFG(n) (0x100 + 0x20 * (n))
#define HPET_TN_CMP(n) (0x108 + 0x20 * (n))
#define TN_INT_ENB (1u << 2)
#define TN_PERIODIC (1u << 3)
#define TN_PER_CAP (1u << 4)
#define TN_SETVAL (1u << 6)
#define TN_32BIT (1u << 8)

static void test_hpet_irq(void)
{
    if (!plat.hpet_addr) {
        skip("irq_hpet", "no HPET ACPI table");
        return;
    }
    uint64_t base = plat.hpet_addr;
    uint64_t cfg0 = mmio_read64(base + HPET_TN_CFG(0));
    uint32_t cap = (uint32_t)(cfg0 >> 32);
    if (!(cfg0 & TN_PER_CAP) || !cap) {
        skip("irq_hpet", "HPET timer 0 cannot be periodic or has no IOAPIC route (cap 0x%x)", cap);
        return;
    }
    int pin = -1;
    for (int p = 23; p >= 16 && pin < 0; p--)
        if ((cap >> p) & 1)
            pin = p;
    for (int p = 0; p < 32 && pin < 0; p++)
        if ((cap >> p) & 1)
            pin = p;
    unsigned idx, ipin;
    if (!ioapic_for_gsi((uint32_t)pin, &idx, &ipin)) {
        skip("irq_hpet", "HPET route pin %d has no IOAPIC input", pin);
        return;
    }
    uint16_t pit_flags;
    bool shares_pit = irq_to_gsi(0, &pit_flags) == (uint32_t)pin;
    if (shares_pit) {                        /* stop the PIT: one last edge, then silence */
        outb(0x43, 0x30);                    /* mode 0 (interrupt on terminal count) */
        outb(0x40, 1);
        outb(0x40, 0);
        udelay(100);
    }
    kprintf("# irq hpet: timer 0 route cap 0x%08x -> gsi %d%s\n", cap, pin, shares_pit ? " (shared with the PIT)" : "");

    uint64_t period_fs = mmio_read64(base) >> 32;
    uint32_t delta = (uint32_t)(1000000000000ull / period_fs);   /* 1 ms */
    uint64_t gcfg = mmio_read64(base + HPET_CFG);
    mmio_write64(base + HPET_CFG, gcfg & ~3ull);                    /* halt, no legacy routing */
    uint32_t now = mmio_read32(base + HPET_COUNTER);
    uint32_t tcfg = (uint32_t)cfg0 & ~((0x1fu << 9) | (1u << 14) | (1u << 1)); /* edge, no FSB */
    tcfg |= TN_INT_ENB | TN_PERIODIC | TN_SETVAL | TN_32BIT | ((uint32_t)pin << 9);
    mmio_write32(base + HPET_TN_CFG(0), tcfg);
    mmio_write32(base + HPET_TN_CMP(0), now + delta);
    udelay(1);
    mmio_write32(base + HPET_TN_CMP(0), delta);
    mmio_write64(base + HPET_CFG, (gcfg & ~2ull) | 1);              /* run */

    steer_each_cpu("hpet", (uint32_t)pin, 0);

    mmio_write32(base + HPET_TN_CFG(0), (uint32_t)cfg0 & ~(TN_INT_ENB | TN_PERIODIC));
    if (shares_pit)
        pit_free_running();
}

void test_irq(void)
{
    uint16_t flags;
    uint32_t gsi = irq_to_gsi(0, &flags);
    unsigned idx, pin;
    if (!plat.nioapic || !ioapic_for_gsi(gsi, &idx, &pin)) {
        skip("irq_pit", "no IOAPIC pin for ISA IRQ 0");
        return;
    }
    kprintf("# irq pit: isa irq 0 -> gsi %u (ioapic %u pin %u, flags 0x%x)\n", gsi, idx, pin, flags);
    pit_periodic(1000);
    steer_each_cpu("pit", gsi, flags);
    pit_free_running();
    test_hpet_irq();
}

/* ---- MSI ---- */

struct pci_fn { unsigned bus, dev, fn; };

static bool find_edu(struct pci_fn *out, unsigned *msi_cap)
{
    bool found = false;
    for (unsigned dev = 0; dev < 32; dev++) {
        for (unsigned fn = 0; fn < 8; fn++) {
            uint32_t id = pci_read32(0, dev, fn, 0);
            if ((id & 0xffff) == 0xffff) {
                if (fn == 0)
                    break;
                continue;
            }
            uint32_t cls = pci_read32(0, dev, fn, 8) >> 8;
            unsigned cap = pci_find_cap(0, dev, fn, 0x05);
            kprintf("# pci 00:%02x.%u %04x:%04x class %06x%s\n", dev, fn, id & 0xffff, id >> 16, cls,
                    cap ? " msi" : "");
            if (id == 0x11e81234 && cap && !found) {
                *out = (struct pci_fn){0, dev, fn};
                *msi_cap = cap;
                found = true;
            }
            if (fn == 0 && !(pci_read32(0, dev, 0, 0x0c) & 0x00800000))
                break;                  /* not multi-function */
        }
    }
    return found;
}

static void msi_program(const struct pci_fn *p, unsigned cap, uint8_t dest_apic, uint8_t vector, bool enable)
{
    uint16_t ctl = pci_read16(p->bus, p->dev, p->fn, cap + 2);
    bool is64 = ctl & (1u << 7);
    pci_write16(p->bus, p->dev, p->fn, cap + 2, (uint16_t)(ctl & ~1u));
    pci_write32(p->bus, p->dev, p->fn, cap + 4, 0xfee00000u | ((uint32_t)dest_apic << 12));
    if (is64) {
        pci_write32(p->bus, p->dev, p->fn, cap + 8, 0);
        pci_write16(p->bus, p->dev, p->fn, cap + 12, vector);
    } else {
        pci_write16(p->bus, p->dev, p->fn, cap + 8, vector);
    }
    ctl &= (uint16_t)~(7u << 4);        /* one message */
    if (enable)
        ctl |= 1;
    else
        ctl &= (uint16_t)~1u;
    pci_write16(p->bus, p->dev, p->fn, cap + 2, ctl);
}

void test_msi(void)
{
    struct pci_fn edu;
    unsigned cap = 0;
    if (!find_edu(&edu, &cap)) {
        skip("msi", "no PCI device with MSI capability that dqtest can trigger (add -device edu)");
        return;
    }
    uint64_t bar = pci_read32(edu.bus, edu.dev, edu.fn, 0x10) & ~0xfull;
    if (!bar) {
        skip("msi", "edu BAR0 not assigned by the firmware");
        return;
    }
    uint32_t cmd = pci_read32(edu.bus, edu.dev, edu.fn, 0x04);
    pci_write32(edu.bus, edu.dev, edu.fn, 0x04, (cmd & 0xffff) | 0x6);   /* memory + bus master */
    uint32_t ident = mmio_read32(bar);
    check((ident & 0xff) == 0xed, "msi edu device at 00:%02x.%u bar0=0x%lx id=0x%08x", edu.dev, edu.fn, bar, ident);

    size_t rounds = opt.iters;
    char label[32];
    uint32_t got[MAX_CPUS], expect[MAX_CPUS];
    uint64_t timeout = ns_to_cycles(opt.timeout_ms * 1000000);
    for (unsigned t = 0; t < ncpus; t++) {
        for (unsigned i = 0; i < ncpus; i++)
            cpus[i].vec_count[VEC_MSI] = 0;
        mfence();
        msi_program(&edu, cap, (uint8_t)cpus[t].apic_id, VEC_MSI, true);
        size_t done = 0;
        for (size_t r = 0; r < rounds; r++) {
            uint32_t before = READ_ONCE(cpus[t].vec_count[VEC_MSI]);
            uint64_t t0 = rdtsc_ordered();
            mmio_write32(bar + 0x60, 1);                /* raise interrupt */
            while (READ_ONCE(cpus[t].vec_count[VEC_MSI]) == before && rdtsc() - t0 < timeout)
                cpu_relax();
            uint64_t t1 = rdtsc_ordered();
            mmio_write32(bar + 0x64, 1);                /* acknowledge */
            if (READ_ONCE(cpus[t].vec_count[VEC_MSI]) == before)
                break;
            samples[done++] = t1 - t0;
        }
        udelay(opt.settle_us);
        smp_flush();
        msi_program(&edu, cap, (uint8_t)cpus[t].apic_id, VEC_MSI, false);
        bool ok = done == rounds;
        for (unsigned i = 0; i < ncpus; i++) {
            got[i] = cpus[i].vec_count[VEC_MSI];
            expect[i] = i == t ? (uint32_t)rounds : 0;
            ok &= got[i] == expect[i];
        }
        check(ok, "msi edu -> cpu%u exactly once each (%zu/%zu)", t, done, rounds);
        if (!ok)
            report_counts("msi", got, expect);
        snprintf(label, sizeof(label), "cpu0->cpu%u", t);
        report_lat("msi_edu", label, samples, done);
    }
}
