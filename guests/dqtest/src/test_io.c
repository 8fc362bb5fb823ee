/*
 * test_io.c - port I/O and device MMIO round trips from every CPU.
 *
 * PIO: CMOS/RTC register D through the 0x70/0x71 index/data pair (bit 7, "valid
 * RAM and time", reads as 1), and a latched read of PIT channel 0 (0x43/0x40),
 * which must be counting.  MMIO: the IOAPIC version register (IOREGSEL/IOWIN),
 * the HPET main counter (must never go backwards, also across CPUs), and the
 * CPU's own LAPIC version register as a local-MMIO baseline.  CPUs take turns,
 * so index/data register pairs are never used concurrently.
 *
 * pio_cmos and mmio_ioapic time an index write plus a data read: two accesses,
 * and over shards two forwarded round trips.  pio_read and mmio_read time the
 * data read alone (the index is written once before the loop): one access, the
 * figure to set against one round trip of the link.
 */
#include "dqtest.h"

struct io_args {
    size_t n;
    uint32_t bad;
    uint32_t expect;
    uint64_t first;      /* HPET: a value read earlier by the BSP */
    uint64_t distinct;   /* PIT: number of changes seen */
};

static void cmos_run(void *p)
{
    struct io_args *a = p;
    for (size_t i = 0; i < a->n; i++) {
        uint64_t t0 = rdtsc_ordered();
        outb(0x70, 0x0d);
        uint8_t v = inb(0x71);
        samples[i] = rdtsc_ordered() - t0;
        if (!(v & 0x80))
            a->bad++;
    }
}

static void cmos_read_run(void *p)
{
    struct io_args *a = p;
    outb(0x70, 0x0d);
    for (size_t i = 0; i < a->n; i++) {
        uint64_t t0 = rdtsc_ordered();
        uint8_t v = inb(0x71);
        samples[i] = rdtsc_ordered() - t0;
        if (!(v & 0x80))
            a->bad++;
    }
}

static void pit_run(void *p)
{
    struct io_args *a = p;
    uint16_t prev = 0;
    for (size_t i = 0; i < a->n; i++) {
        uint64_t t0 = rdtsc_ordered();
        outb(0x43, 0x00);                 /* latch channel 0 */
        uint16_t v = inb(0x40);
        v |= (uint16_t)(inb(0x40) << 8);
        samples[i] = rdtsc_ordered() - t0;
        if (i && v != prev)
            a->distinct++;
        prev = v;
    }
}

static void ioapic_run(void *p)
{
    struct io_args *a = p;
    uint64_t base = plat.ioapic[0].addr;
    for (size_t i = 0; i < a->n; i++) {
        uint64_t t0 = rdtsc_ordered();
        mmio_write32(base, 1);
        uint32_t v = mmio_read32(base + 0x10);
        samples[i] = rdtsc_ordered() - t0;
        if (v != a->expect)
            a->bad++;
    }
}

static void ioapic_read_run(void *p)
{
    struct io_args *a = p;
    uint64_t base = plat.ioapic[0].addr;
    mmio_write32(base, 1);
    for (size_t i = 0; i < a->n; i++) {
        uint64_t t0 = rdtsc_ordered();
        uint32_t v = mmio_read32(base + 0x10);
        samples[i] = rdtsc_ordered() - t0;
        if (v != a->expect)
            a->bad++;
    }
}

static void hpet_run(void *p)
{
    struct io_args *a = p;
    uint64_t prev = a->first;
    for (size_t i = 0; i < a->n; i++) {
        uint64_t t0 = rdtsc_ordered();
        uint64_t v = mmio_read64(plat.hpet_addr + 0xf0);
        samples[i] = rdtsc_ordered() - t0;
        if (v < prev)
            a->bad++;
        prev = v;
    }
    a->first = prev;
}

static void lapic_run(void *p)
{
    struct io_args *a = p;
    for (size_t i = 0; i < a->n; i++) {
        uint64_t t0 = rdtsc_ordered();
        uint32_t v = lapic_read(0x30);
        samples[i] = rdtsc_ordered() - t0;
        if (v != a->expect)
            a->bad++;
    }
}

void test_pio(void)
{
    char label[16];
    /* PIT channel 0: mode 2, full 65536 count, free running (its IRQ stays masked). */
    outb(0x43, 0x34);
    outb(0x40, 0);
    outb(0x40, 0);
    for (unsigned c = 0; c < ncpus; c++) {
        snprintf(label, sizeof(label), "cpu%u", c);
        struct io_args a = {.n = opt.iters};
        bool ran = smp_call(c, cmos_run, &a);
        check(ran && !a.bad, "pio cmos 0x70/0x71 reg D from cpu%u (%u bad of %zu)", c, a.bad, a.n);
        report_lat("pio_cmos", label, samples, ran ? a.n : 0);

        struct io_args r = {.n = opt.iters};
        ran = smp_call(c, cmos_read_run, &r);
        check(ran && !r.bad, "pio cmos 0x71 reg D read alone from cpu%u (%u bad of %zu)", c, r.bad, r.n);
        report_lat("pio_read", label, samples, ran ? r.n : 0);

        struct io_args b = {.n = opt.iters};
        ran = smp_call(c, pit_run, &b);
        check(ran && (b.n < 2 || b.distinct > 0), "pio pit channel 0 latch/read from cpu%u counts (%lu changes)",
              c, b.distinct);
        report_lat("pio_pit", label, samples, ran ? b.n : 0);
    }
}

void test_mmio(void)
{
    char label[16];
    if (plat.nioapic) {
        uint32_t ver = ioapic_read(0, 1);
        check((ver & 0xff) >= 0x11 && ((ver >> 16) & 0xff) >= 15,
              "mmio ioapic version register 0x%08x (version 0x%x, %u pins)", ver, ver & 0xff,
              ((ver >> 16) & 0xff) + 1);
        for (unsigned c = 0; c < ncpus; c++) {
            snprintf(label, sizeof(label), "cpu%u", c);
            struct io_args a = {.n = opt.iters, .expect = ver};
            bool ran = smp_call(c, ioapic_run, &a);
            check(ran && !a.bad, "mmio ioapic version read from cpu%u (%u mismatches of %zu)", c, a.bad, a.n);
            report_lat("mmio_ioapic", label, samples, ran ? a.n : 0);

            struct io_args r = {.n = opt.iters, .expect = ver};
            ran = smp_call(c, ioapic_read_run, &r);
            check(ran && !r.bad, "mmio ioapic version read alone from cpu%u (%u mismatches of %zu)", c, r.bad,
                  r.n);
            report_lat("mmio_read", label, samples, ran ? r.n : 0);
        }
    } else {
        skip("mmio_ioapic", "no IOAPIC in the MADT");
    }

    if (plat.hpet_addr) {
        uint64_t h0 = mmio_read64(plat.hpet_addr + 0xf0);
        udelay(100);
        uint64_t h1 = mmio_read64(plat.hpet_addr + 0xf0);
        check(h1 > h0, "mmio hpet main counter runs (%lu -> %lu)", h0, h1);
        uint64_t last = h1;
        for (unsigned c = 0; c < ncpus; c++) {
            snprintf(label, sizeof(label), "cpu%u", c);
            struct io_args a = {.n = opt.iters, .first = last};
            bool ran = smp_call(c, hpet_run, &a);
            check(ran && !a.bad, "mmio hpet counter from cpu%u monotonic, also after cpu%u (%u backward of %zu)",
                  c, c ? c - 1 : 0, a.bad, a.n);
            report_lat("mmio_hpet", label, samples, ran ? a.n : 0);
            last = a.first;
        }
    } else {
        skip("mmio_hpet", "no HPET ACPI table");
    }

    for (unsigned c = 0; c < ncpus; c++) {
        snprintf(label, sizeof(label), "cpu%u", c);
        struct io_args a = {.n = opt.iters, .expect = lapic_read(0x30)};
        bool ran = smp_call(c, lapic_run, &a);
        check(ran && !a.bad, "mmio local apic version read on cpu%u (%u mismatches)", c, a.bad);
        report_lat("mmio_lapic", label, samples, ran ? a.n : 0);
    }
}
