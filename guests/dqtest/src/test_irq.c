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
 * Fixed physical to each CPU (with latency), logical multicast to all, and
 * lowest priority to all (exactly one CPU per trigger).
 *
 * INTx: with MSI off the same device asserts its INTx line, level-triggered.
 * Its IOAPIC pin is found by unmasking the candidate pins (GSI 16 and up, and
 * the ISA IRQs the MADT marks level-triggered) each on its own vector; then
 * the pin is steered to each CPU, whose handler deasserts the device before
 * the EOI.  Each assertion must be delivered exactly once and the entry's
 * remote IRR must be clear afterwards (the EOI reached the IOAPIC).
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
        uint64_t t0 = rdtsc();
        mdelay(IRQ_WINDOW_MS);
        /* A loaded host may run the timer's or the target's thread late: extend the
         * window (up to timeout_ms) until the minimum has arrived. */
        uint64_t end = deadline_ms(opt.timeout_ms);
        while (READ_ONCE(cpus[t].vec_count[VEC_PIT]) < IRQ_MIN && !expired(end))
            cpu_relax();
        ioapic_route(gsi, VEC_PIT, (uint8_t)cpus[t].apic_id, flags, true);
        uint64_t window_ms = cycles_to_ns(rdtsc() - t0) / 1000000;
        udelay(opt.settle_us);
        smp_flush();
        bool ok = true;
        for (unsigned i = 0; i < ncpus; i++) {
            got[i] = cpus[i].vec_count[VEC_PIT];
            expect[i] = i == t ? IRQ_MIN : 0;
            ok &= i == t ? got[i] >= IRQ_MIN : got[i] == 0;
        }
        check(ok, "irq %s via ioapic gsi %u -> cpu%u (%u interrupts in %lu ms, none elsewhere)", what, gsi, t,
              got[t], window_ms);
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

static struct {
    struct pci_fn fn;
    unsigned cap;
    uint64_t bar;
} edu;

#define EDU_RAISE 0x60
#define EDU_ACK 0x64
#define VEC_INTX 0x52
#define VEC_PIN_BASE 0x60     /* 0x60 + pin: INTx discovery, pins 0..31 */

static void msi_program(uint32_t addr, uint16_t data, bool enable)
{
    const struct pci_fn *p = &edu.fn;
    unsigned cap = edu.cap;
    uint16_t ctl = pci_read16(p->bus, p->dev, p->fn, cap + 2);
    bool is64 = ctl & (1u << 7);
    pci_write16(p->bus, p->dev, p->fn, cap + 2, (uint16_t)(ctl & ~1u));
    pci_write32(p->bus, p->dev, p->fn, cap + 4, addr);
    if (is64) {
        pci_write32(p->bus, p->dev, p->fn, cap + 8, 0);
        pci_write16(p->bus, p->dev, p->fn, cap + 12, data);
    } else {
        pci_write16(p->bus, p->dev, p->fn, cap + 8, data);
    }
    ctl &= (uint16_t)~(7u << 4);        /* one message */
    if (enable)
        ctl |= 1;
    else
        ctl &= (uint16_t)~1u;
    pci_write16(p->bus, p->dev, p->fn, cap + 2, ctl);
}

static uint32_t vec_sum(uint8_t vec, uint32_t mask)
{
    uint32_t n = 0;
    for (unsigned i = 0; i < ncpus; i++)
        if (mask & (1u << i))
            n += READ_ONCE(cpus[i].vec_count[vec]);
    return n;
}

/*
 * Trigger the edu MSI `rounds` times with the given address/data.  per[i] is
 * how many interrupts CPU i must take per trigger; with lowpri_mask set,
 * exactly one CPU of the mask takes each one instead.  Latency: from the
 * trigger (BSP's MMIO write) until every expected handler has counted.
 */
static void msi_case(const char *desc, const char *lat_label, uint32_t addr, uint16_t data, const uint32_t *per,
                     uint32_t lowpri_mask, size_t rounds)
{
    uint32_t got[MAX_CPUS], expect[MAX_CPUS];
    uint64_t timeout = ns_to_cycles(opt.timeout_ms * 1000000);
    for (unsigned i = 0; i < ncpus; i++)
        cpus[i].vec_count[VEC_MSI] = 0;
    mfence();
    msi_program(addr, data, true);
    size_t done = 0;
    for (size_t r = 0; r < rounds; r++) {
        uint32_t before = vec_sum(VEC_MSI, lowpri_mask);
        uint64_t t0 = rdtsc_ordered();
        mmio_write32(edu.bar + EDU_RAISE, 1);
        bool arrived;
        do {
            if (lowpri_mask) {
                arrived = vec_sum(VEC_MSI, lowpri_mask) > before;
            } else {
                arrived = true;
                for (unsigned i = 0; i < ncpus; i++)
                    arrived &= READ_ONCE(cpus[i].vec_count[VEC_MSI]) >= (r + 1) * per[i];
            }
        } while (!arrived && rdtsc() - t0 < timeout);
        uint64_t t1 = rdtsc_ordered();
        mmio_write32(edu.bar + EDU_ACK, 1);
        if (!arrived)
            break;
        samples[done++] = t1 - t0;
    }
    udelay(opt.settle_us);
    smp_flush();
    msi_program(addr, data, false);
    bool ok = done == rounds;
    uint32_t in_mask = 0;
    for (unsigned i = 0; i < ncpus; i++) {
        got[i] = cpus[i].vec_count[VEC_MSI];
        if (lowpri_mask && (lowpri_mask & (1u << i))) {
            in_mask += got[i];
            expect[i] = 0;
        } else {
            expect[i] = lowpri_mask ? 0 : (uint32_t)rounds * per[i];
            ok &= got[i] == expect[i];
        }
    }
    if (lowpri_mask)
        ok &= in_mask == rounds;
    check(ok, "%s (%zu/%zu triggers)", desc, done, rounds);
    if (!ok)
        report_counts(desc, got, lowpri_mask ? NULL : expect);
    if (lat_label)
        report_lat("msi_edu", lat_label, samples, done);
}

static uint32_t logical_all(void)
{
    uint32_t m = 0;
    for (unsigned i = 0; i < ncpus && i < 8; i++)
        m |= 1u << i;
    return m;
}

/* Find and enable the edu device once; false (after a skip line) if it is not usable. */
static bool edu_setup(const char *group)
{
    static int state;   /* 0: not tried, 1: usable, -1: not usable */
    static const char *why;
    if (state == 0) {
        state = -1;
        if (!find_edu(&edu.fn, &edu.cap)) {
            why = "no PCI device with MSI capability that dqtest can trigger (add -device edu)";
        } else {
            const struct pci_fn *p = &edu.fn;
            edu.bar = pci_read32(p->bus, p->dev, p->fn, 0x10) & ~0xfull;
            if (!edu.bar) {
                why = "edu BAR0 not assigned by the firmware";
            } else {
                uint32_t cmd = pci_read32(p->bus, p->dev, p->fn, 0x04);
                pci_write32(p->bus, p->dev, p->fn, 0x04, (cmd & 0xffff) | 0x6);   /* memory + bus master */
                uint32_t ident = mmio_read32(edu.bar);
                check((ident & 0xff) == 0xed, "pci edu device at 00:%02x.%u bar0=0x%lx id=0x%08x", p->dev, p->fn,
                      edu.bar, ident);
                state = (ident & 0xff) == 0xed ? 1 : -1;
                why = "edu identification register is wrong";
            }
        }
    }
    if (state < 0)
        skip(group, "%s", why);
    return state > 0;
}

/* ---- INTx: level-triggered through the IOAPIC ---- */

static volatile int intx_pin = -1;
static volatile uint32_t intx_acked;
static uint16_t pin_flags[32];

/* Discovery: a candidate pin fired.  Remember it, mask it, deassert the device. */
static void on_pin_probe(struct frame *f)
{
    int pin = (int)f->vector - VEC_PIN_BASE;
    ioapic_route((uint32_t)pin, (uint8_t)f->vector, (uint8_t)cpus[0].apic_id, pin_flags[pin], true);
    if (intx_pin < 0)
        intx_pin = pin;
    mmio_write32(edu.bar + EDU_ACK, 1);
}

/* The level interrupt: deassert the device before the EOI (sent by the dispatcher). */
static void on_intx(struct frame *f)
{
    (void)f;
    mmio_write32(edu.bar + EDU_ACK, 1);
    __atomic_fetch_add(&intx_acked, 1, __ATOMIC_RELEASE);
}

static uint32_t redir_lo(uint32_t gsi)
{
    unsigned idx, pin;
    if (!ioapic_for_gsi(gsi, &idx, &pin))
        return 0;
    return ioapic_read(idx, 0x10 + 2 * pin);
}

void test_intx(void)
{
    if (!edu_setup("intx"))
        return;
    const struct pci_fn *p = &edu.fn;
    uint32_t line = pci_read32(p->bus, p->dev, p->fn, 0x3c);
    if (!((line >> 8) & 0xff)) {
        skip("intx", "edu has no interrupt pin");
        return;
    }
    /* Candidates: PCI GSIs (16 and up) and ISA IRQs the MADT declares level-triggered. */
    uint32_t cand = 0;
    unsigned idx0, pin0;
    for (uint32_t g = 16; g < 32; g++)
        if (ioapic_for_gsi(g, &idx0, &pin0)) {
            cand |= 1u << g;
            pin_flags[g] = 0xd;                 /* level, active high (as QEMU's ACPI says) */
        }
    for (unsigned i = 0; i < plat.niso; i++)
        if (((plat.iso[i].flags >> 2) & 3) == 3 && plat.iso[i].gsi < 32) {
            cand |= 1u << plat.iso[i].gsi;
            pin_flags[plat.iso[i].gsi] = plat.iso[i].flags;
        }
    for (uint32_t g = 0; g < 32; g++)
        if (cand & (1u << g)) {
            irq_set_handler((uint8_t)(VEC_PIN_BASE + g), on_pin_probe);
            ioapic_route(g, (uint8_t)(VEC_PIN_BASE + g), (uint8_t)cpus[0].apic_id, pin_flags[g], false);
        }
    intx_pin = -1;
    mmio_write32(edu.bar + EDU_RAISE, 1);       /* MSI is off: edu asserts INTx */
    uint64_t end = deadline_ms(opt.timeout_ms);
    while (intx_pin < 0 && !expired(end))
        cpu_relax();
    udelay(opt.settle_us);
    for (uint32_t g = 0; g < 32; g++)
        if (cand & (1u << g))
            ioapic_route(g, (uint8_t)(VEC_PIN_BASE + g), (uint8_t)cpus[0].apic_id, pin_flags[g], true);
    mmio_write32(edu.bar + EDU_ACK, 1);
    if (intx_pin < 0) {
        skip("intx", "edu INTx (line register 0x%02x) not seen on any candidate IOAPIC pin (0x%08x)", line & 0xff,
             cand);
        return;
    }
    uint32_t gsi = (uint32_t)intx_pin;
    uint16_t flags = pin_flags[gsi];
    kprintf("# intx: edu INT%c -> gsi %u (flags 0x%x, line register %u)\n", 'A' - 1 + (int)((line >> 8) & 0xff), gsi,
            flags, line & 0xff);
    irq_set_handler(VEC_INTX, on_intx);

    char label[32];
    uint32_t got[MAX_CPUS], expect[MAX_CPUS];
    uint64_t timeout = ns_to_cycles(opt.timeout_ms * 1000000);
    for (unsigned t = 0; t < ncpus; t++) {
        for (unsigned i = 0; i < ncpus; i++)
            cpus[i].vec_count[VEC_INTX] = 0;
        intx_acked = 0;
        mfence();
        ioapic_route(gsi, VEC_INTX, (uint8_t)cpus[t].apic_id, flags, false);
        size_t done = 0, rounds = opt.iters;
        for (size_t r = 0; r < rounds; r++) {
            uint32_t before = intx_acked;
            uint64_t t0 = rdtsc_ordered();
            mmio_write32(edu.bar + EDU_RAISE, 1);
            while (intx_acked == before && rdtsc() - t0 < timeout)
                cpu_relax();
            uint64_t t1 = rdtsc_ordered();
            if (intx_acked == before)
                break;
            samples[done++] = t1 - t0;
        }
        udelay(opt.settle_us);
        smp_flush();
        uint32_t rirr = (redir_lo(gsi) >> 14) & 1;  /* remote IRR: the EOI reached the IOAPIC */
        ioapic_route(gsi, VEC_INTX, (uint8_t)cpus[t].apic_id, flags, true);
        bool ok = done == rounds && !rirr;
        for (unsigned i = 0; i < ncpus; i++) {
            got[i] = cpus[i].vec_count[VEC_INTX];
            expect[i] = i == t ? (uint32_t)rounds : 0;
            ok &= got[i] == expect[i];
        }
        check(ok, "intx edu level via ioapic gsi %u -> cpu%u once per assertion, remote irr clear (%zu/%zu%s)", gsi,
              t, done, rounds, rirr ? ", remote irr stuck" : "");
        if (!ok)
            report_counts("intx", got, expect);
        snprintf(label, sizeof(label), "cpu0->cpu%u", t);
        report_lat("intx_edu", label, samples, done);
    }
}


void test_msi(void)
{
    if (!edu_setup("msi"))
        return;

    char desc[96], label[32];
    uint32_t per[MAX_CPUS];
    for (unsigned t = 0; t < ncpus; t++) {
        memset(per, 0, sizeof(per));
        per[t] = 1;
        snprintf(desc, sizeof(desc), "msi edu fixed physical -> cpu%u exactly once each", t);
        snprintf(label, sizeof(label), "cpu0->cpu%u", t);
        msi_case(desc, label, 0xfee00000u | (cpus[t].apic_id << 12), VEC_MSI, per, 0, opt.iters);
    }
    /* Logical destinations: address bit 3 (redirection hint) and bit 2 (logical). */
    uint32_t all = logical_all();
    size_t rounds = opt.iters < 50 ? opt.iters : 50;
    memset(per, 0, sizeof(per));
    for (unsigned i = 0; i < ncpus && i < 8; i++)
        per[i] = 1;
    snprintf(desc, sizeof(desc), "msi edu fixed logical multicast mask 0x%02x -> each cpu once", all);
    msi_case(desc, NULL, 0xfee0000cu | (all << 12), VEC_MSI, per, 0, rounds);
    snprintf(desc, sizeof(desc), "msi edu lowest-priority logical mask 0x%02x -> exactly one cpu", all);
    msi_case(desc, NULL, 0xfee0000cu | (all << 12), (uint16_t)(VEC_MSI | (1u << 8)), per, all, rounds);
}

/* ---- DMA and a CPU on one page ---- */

/*
 * dma (only when only= names it): edu's DMA engine, run by the edu's shard
 * outside any vCPU, copies a pattern RAM -> device -> RAM into the first half
 * of a page while the last CPU (on another shard when there are several)
 * keeps storing a counter into the second half of the same page.  With
 * memory_mode "dsm" the device's copy and the CPU's stores fault on that
 * page at once (dQEMU's docs/dsm.md §6.4): the copied bytes and every
 * counter value must both come through.
 */
#define EDU_DMA_SRC 0x80
#define EDU_DMA_DST 0x88
#define EDU_DMA_CNT 0x90
#define EDU_DMA_CMD 0x98
#define EDU_DMA_RUN 0x1
#define EDU_DMA_TO_RAM 0x2
#define EDU_BUF 0x40000
#define DMA_LEN 2048
#define DMA_ROUNDS 6

static uint8_t dma_src[4096] __attribute__((aligned(4096)));
static volatile uint8_t dma_dst[4096] __attribute__((aligned(4096)));

struct dma_ctl {
    volatile uint32_t stop;
    volatile uint64_t stores;
    volatile uint32_t lost;
};

static void dma_marker(void *p)
{
    struct dma_ctl *c = p;
    volatile uint64_t *m = (volatile uint64_t *)(dma_dst + DMA_LEN + 1024);
    uint64_t i = 0;
    while (!c->stop) {
        smp_beat();
        *m = ++i;
        if (*m != i)
            c->lost++;
        cpu_relax();
    }
    c->stores = i;
}

static bool edu_dma(uint64_t src, uint64_t dst, bool to_ram)
{
    uint64_t end = deadline_ms(opt.timeout_ms + 1000);   /* edu waits 100 ms per copy */
    mmio_write64(edu.bar + EDU_DMA_SRC, src);
    mmio_write64(edu.bar + EDU_DMA_DST, dst);
    mmio_write64(edu.bar + EDU_DMA_CNT, DMA_LEN);
    mmio_write64(edu.bar + EDU_DMA_CMD, EDU_DMA_RUN | (to_ram ? EDU_DMA_TO_RAM : 0));
    while (mmio_read64(edu.bar + EDU_DMA_CMD) & EDU_DMA_RUN) {
        if (expired(end))
            return false;
        mdelay(1);
    }
    return true;
}

void test_dma(void)
{
    static struct dma_ctl ctl;
    unsigned cpu = ncpus - 1;
    uint32_t bad = 0, timeouts = 0;

    if (!edu_setup("dma"))
        return;
    if (ncpus < 2) {
        skip("dma", "only one cpu online");
        return;
    }
    ctl.stop = 0;
    if (!smp_call_async(cpu, dma_marker, &ctl)) {
        check(false, "dma: cpu%u takes the marker loop", cpu);
        return;
    }
    for (unsigned r = 1; r <= DMA_ROUNDS; r++) {
        for (unsigned j = 0; j < DMA_LEN; j++)
            dma_src[j] = (uint8_t)(r * 31 + j * 7);
        if (!edu_dma((uint64_t)(uintptr_t)dma_src, EDU_BUF, false) ||
            !edu_dma(EDU_BUF, (uint64_t)(uintptr_t)dma_dst, true)) {
            timeouts++;
            continue;
        }
        for (unsigned j = 0; j < DMA_LEN; j++)
            if (dma_dst[j] != (uint8_t)(r * 31 + j * 7))
                bad++;
    }
    ctl.stop = 1;
    bool joined = smp_wait(cpu);
    check(joined && !timeouts && !bad,
          "dma edu copies %u x %u bytes into a page that cpu%u writes at once: %u bad bytes, %u timeouts",
          DMA_ROUNDS, DMA_LEN, cpu, bad, timeouts);
    check(joined && ctl.stores > 0 && !ctl.lost,
          "dma cpu%u's %lu stores beside the device's all read back (%u lost)", cpu,
          (unsigned long)ctl.stores, ctl.lost);
}
