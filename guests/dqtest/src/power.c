/*
 * power.c - leaving the VM.
 *
 * Exit convention with -device isa-debug-exit,iobase=0xf4,iosize=4: QEMU
 * exits with status (v << 1) | 1 for a value v written to the port.
 *   PASS: v = 0x10 -> exit status 33
 *   FAIL: v = 0x11 -> exit status 35
 * Any other status (0 from an ACPI poweroff, 1 from a QEMU error, a signal)
 * means the run did not end normally; the final serial line is authoritative.
 * Without isa-debug-exit we try an ACPI S5 poweroff, then halt for good.
 */
#include "dqtest.h"

static volatile uint32_t panicking;

void power_off(bool pass)
{
    outl(DEBUG_EXIT_PORT, pass ? DEBUG_EXIT_PASS : DEBUG_EXIT_FAIL);
    /* Still here: no isa-debug-exit device.  ACPI soft-off (SLP_TYP=S5, SLP_EN). */
    if (plat.pm_found) {
        outw((uint16_t)plat.pm1a_cnt, (uint16_t)((plat.slp_typ_s5 << 10) | (1u << 13)));
        mdelay(100);
    }
    kprintf("# power off failed; halting\n");
    for (;;) {
        cli();
        hlt();
    }
}

void panic(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (__atomic_exchange_n(&panicking, 1, __ATOMIC_ACQ_REL)) {
        for (;;) {        /* another CPU is already reporting */
            cli();
            hlt();
        }
    }
    kprintf("not ok %u - panic: %s\n", report_total() + 1, buf);
    kprintf("dqtest: FAIL %u/%u\n", report_failures() + 1, report_total() + 1);
    power_off(false);
}
