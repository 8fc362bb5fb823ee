/*
 * tsc.c - TSC frequency calibration against the PIT (and the HPET as a
 * cross-check), and TSC-based delays.
 *
 * PIT method: channel 2 (gate through port 0x61) counts down from 0xffff in
 * mode 0; we latch and read its count, then read the TSC, at the start and
 * again once 10 ms worth of PIT ticks have passed.  Both ends are measured the
 * same way, so the result does not depend on noticing an edge in time (a vCPU
 * descheduled at the end of a window would otherwise stretch it); the median
 * of several windows is used.
 */
#include "dqtest.h"

#define PIT_HZ 1193182u
#define HPET_GCAP 0x000
#define HPET_GCONF 0x010
#define HPET_COUNTER 0x0f0

uint64_t tsc_khz;

static uint16_t pit2_count(void)
{
    outb(0x43, 0x80);                            /* latch channel 2 */
    uint16_t v = inb(0x42);
    return (uint16_t)(v | (inb(0x42) << 8));
}

/* TSC kHz over one window of ms milliseconds (ms <= 50), 0 if the PIT does not count. */
static uint64_t pit_window_khz(unsigned ms)
{
    uint16_t want = (uint16_t)(PIT_HZ * ms / 1000);
    outb(0x61, (uint8_t)((inb(0x61) & ~0x02) | 0x01)); /* gate on, speaker off */
    outb(0x43, 0xb0);                            /* ch2, lo/hi, mode 0, binary */
    outb(0x42, 0xff);
    outb(0x42, 0xff);
    uint16_t c0 = pit2_count();
    uint64_t t0 = rdtsc_ordered();
    uint64_t limit = t0 + 50000000000ull;        /* give up after a very long time */
    uint16_t c;
    uint64_t t1;
    do {
        c = pit2_count();
        t1 = rdtsc_ordered();
        if (t1 > limit)
            return 0;
    } while ((uint16_t)(c0 - c) < want);
    return (t1 - t0) * PIT_HZ / (uint16_t)(c0 - c) / 1000;
}

void tsc_calibrate(void)
{
    enum { RUNS = 5, MS = 10 };
    uint64_t v[RUNS];
    for (int i = 0; i < RUNS; i++)
        v[i] = pit_window_khz(MS);
    sort_u64(v, RUNS);
    tsc_khz = v[RUNS / 2];
    if (tsc_khz == 0) {
        tsc_khz = 1000000;   /* PIT unusable: assume 1 GHz so timeouts still work */
        kprintf("# warning: PIT calibration failed, assuming tsc_khz=1000000\n");
    }
    kprintf("# calib pit tsc_khz=%lu runs=%d window_ms=%d min_khz=%lu max_khz=%lu\n", tsc_khz, RUNS, MS,
            v[0], v[RUNS - 1]);
}

/* TSC kHz over one window of HPET ticks, both ends read the same way. */
static uint64_t hpet_window_khz(uint64_t base, uint64_t period_fs, unsigned ms)
{
    uint64_t ticks = (uint64_t)ms * 1000000000000ull / period_fs;
    uint64_t h0 = mmio_read64(base + HPET_COUNTER);
    uint64_t t0 = rdtsc_ordered();
    uint64_t h1, t1, limit = t0 + tsc_khz * 1000;   /* 1 s */
    do {
        h1 = mmio_read64(base + HPET_COUNTER);
        t1 = rdtsc_ordered();
    } while (h1 - h0 < ticks && t1 < limit);
    uint64_t ns = (h1 - h0) * period_fs / 1000000;
    return ns ? (t1 - t0) * 1000000 / ns : 0;
}

/* Enable the HPET main counter and compare the TSC rate against it. */
void tsc_crosscheck_hpet(void)
{
    enum { RUNS = 5, MS = 10 };
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
    uint64_t v[RUNS];
    for (int i = 0; i < RUNS; i++)
        v[i] = hpet_window_khz(base, period_fs, MS);
    sort_u64(v, RUNS);
    uint64_t khz = v[RUNS / 2];
    uint64_t diff = khz > tsc_khz ? khz - tsc_khz : tsc_khz - khz;
    kprintf("# calib hpet tsc_khz=%lu hpet_period_fs=%lu runs=%d window_ms=%d min_khz=%lu max_khz=%lu\n", khz,
            period_fs, RUNS, MS, v[0], v[RUNS - 1]);
    /* Both measurements bracket counter reads with TSC reads and take the median of
     * several windows, so host scheduling noise stays well below 5%; a larger gap
     * means one of the clocks runs at the wrong rate. */
    check(khz && diff * 20 <= tsc_khz, "tsc calibration pit vs hpet agree within 5%% (pit=%lu hpet=%lu kHz)",
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
