/*
 * tsc.c - TSC frequency calibration against the PIT (and the HPET as a
 * cross-check), and TSC-based delays.
 *
 * PIT method: channel 2 in mode 0 with its gate controlled through port 0x61;
 * OUT2 (port 0x61 bit 5) rises when the count reaches zero.  We time several
 * 20 ms windows with the TSC and take the median.
 */
#include "dqtest.h"

#define PIT_HZ 1193182u
#define HPET_GCAP 0x000
#define HPET_GCONF 0x010
#define HPET_COUNTER 0x0f0

uint64_t tsc_khz;

static uint64_t pit_window_cycles(unsigned ms)
{
    uint32_t count = PIT_HZ * ms / 1000;         /* ms <= 54 */
    outb(0x61, (uint8_t)((inb(0x61) & ~0x02) | 0x01)); /* gate on, speaker off */
    outb(0x43, 0xb0);                            /* ch2, lo/hi, mode 0, binary */
    outb(0x42, (uint8_t)count);
    outb(0x42, (uint8_t)(count >> 8));           /* counting starts now */
    uint64_t t0 = rdtsc_ordered();
    uint64_t limit = t0 + 50000000000ull;        /* give up after a very long time */
    while (!(inb(0x61) & 0x20))
        if (rdtsc() > limit)
            return 0;
    return rdtsc_ordered() - t0;
}

void tsc_calibrate(void)
{
    enum { RUNS = 5, MS = 20 };
    uint64_t v[RUNS];
    for (int i = 0; i < RUNS; i++)
        v[i] = pit_window_cycles(MS);
    sort_u64(v, RUNS);
    tsc_khz = v[RUNS / 2] / MS;
    if (tsc_khz == 0) {
        tsc_khz = 1000000;   /* PIT unusable: assume 1 GHz so timeouts still work */
        kprintf("# warning: PIT calibration failed, assuming tsc_khz=1000000\n");
    }
    kprintf("# calib pit tsc_khz=%lu runs=%d window_ms=%d spread_cycles=%lu\n",
            tsc_khz, RUNS, MS, v[RUNS - 1] - v[0]);
}

/* Enable the HPET main counter and compare the TSC rate against it. */
void tsc_crosscheck_hpet(void)
{
    if (!plat.hpet_addr) {
        skip("tsc_hpet", "no HPET ACPI table");
        return;
    }
    uint64_t base = plat.hpet_addr;
    uint64_t period_fs = mmio_read64(base + HPET_GCAP) >> 32;
    if (period_fs == 0 || period_fs > 100000000ull) {
        check(false, "hpet period register sane (period_fs=%lu)", period_fs);
        return;
    }
    mmio_write64(base + HPET_GCONF, mmio_read64(base + HPET_GCONF) | 1);
    uint64_t ticks = 20000000000000ull / period_fs;  /* 20 ms */
    uint64_t h0 = mmio_read64(base + HPET_COUNTER);
    uint64_t t0 = rdtsc_ordered();
    uint64_t h1, limit = t0 + tsc_khz * 1000;        /* 1 s */
    do {
        h1 = mmio_read64(base + HPET_COUNTER);
    } while (h1 - h0 < ticks && rdtsc() < limit);
    uint64_t t1 = rdtsc_ordered();
    uint64_t ns = (h1 - h0) * period_fs / 1000000;
    uint64_t khz = ns ? (t1 - t0) * 1000000 / ns : 0;
    uint64_t diff = khz > tsc_khz ? khz - tsc_khz : tsc_khz - khz;
    kprintf("# calib hpet tsc_khz=%lu hpet_period_fs=%lu\n", khz, period_fs);
    /* Generous: under TCG both clocks follow the host, but scheduling noise is real. */
    check(khz && diff * 10 <= tsc_khz, "tsc calibration pit vs hpet agree within 10%% (pit=%lu hpet=%lu kHz)",
          tsc_khz, khz);
}

uint64_t ns_to_cycles(uint64_t ns) { return ns * tsc_khz / 1000000; }

void udelay(uint64_t us)
{
    uint64_t end = rdtsc() + us * tsc_khz / 1000;
    while (rdtsc() < end)
        cpu_relax();
}

void mdelay(uint64_t ms) { udelay(ms * 1000); }

uint64_t deadline_ms(uint64_t ms) { return rdtsc() + ms * tsc_khz; }
