/*
 * main.c - BSP entry: platform discovery, CPU bring-up, the test groups, and
 * the final verdict.
 */
#include "dqtest.h"

uint32_t mb_magic, mb_info;

#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002
#define MBI_FLAG_CMDLINE (1u << 2)

static char cmdline[512];

static void copy_cmdline(void)
{
    if (mb_magic != MULTIBOOT_BOOTLOADER_MAGIC || !mb_info)
        return;
    const uint32_t *mbi = (const uint32_t *)(uint64_t)mb_info;
    if (!(mbi[0] & MBI_FLAG_CMDLINE) || !mbi[4])
        return;
    const char *s = (const char *)(uint64_t)mbi[4];
    size_t i;
    for (i = 0; i + 1 < sizeof(cmdline) && s[i]; i++)
        cmdline[i] = s[i];
    cmdline[i] = '\0';
}

static void print_cpu_info(void)
{
    uint32_t a, b, c, d;
    char vendor[13];
    cpuid(0, 0, &a, &b, &c, &d);
    memcpy(vendor, &b, 4);
    memcpy(vendor + 4, &d, 4);
    memcpy(vendor + 8, &c, 4);
    vendor[12] = '\0';
    uint32_t max_ext;
    cpuid(0x80000000, 0, &max_ext, &b, &c, &d);
    bool invariant = false;
    if (max_ext >= 0x80000007) {
        cpuid(0x80000007, 0, &a, &b, &c, &d);
        invariant = d & (1u << 8);
    }
    kprintf("# cpu vendor=%s invariant_tsc=%d\n", vendor, invariant);
}

void kmain(void);
void kmain(void)
{
    serial_init();
    copy_cmdline();
    smp_init_bsp();
    idt_init();
    kprintf("\n# dqtest 1 multiboot_magic=0x%x\n", mb_magic);
    kprintf("# cmdline: %s\n", cmdline);
    cmdline_parse(cmdline);
    cmdline_check_groups();
    kprintf("# options iters=%lu litmus_iters=%lu xmc_rounds=%lu atomic_iters=%lu tsc_bound_ns=%lu "
            "timeout_ms=%lu settle_us=%lu idle=%s pause=%d only=%s skip=%s\n",
            opt.iters, opt.litmus_iters, opt.xmc_rounds, opt.atomic_iters, opt.tsc_bound_ns,
            opt.timeout_ms, opt.settle_us, opt.idle_poll ? "poll" : "hlt", opt.pause, opt.only[0] ? opt.only : "all",
            opt.skip[0] ? opt.skip : "none");
    print_cpu_info();

    pic_disable();
    tsc_calibrate();
    acpi_init();
    lapic_init_cpu(0);
    cpus[0].apic_id = lapic_id();
    cpus[0].online = 1;
    ioapic_mask_all();
    sti();
    lapic_timer_calibrate();

    tsc_crosscheck_hpet();
    smp_boot_aps();
    if (opt.delay_ms) {
        kprintf("# delay %lu ms before the groups\n", opt.delay_ms);
        mdelay(opt.delay_ms);
    }
    if (opt.wait_input) {
        /* Hold the VM up (its shards running, the APs idle) until the console sends a
         * byte: a test inspects a running VM at leisure, then lets it finish. */
        kprintf("# waiting for input on the console\n");
        while (serial_getc() < 0)
            mdelay(1);
        kprintf("# input received\n");
    }

    static const struct { const char *group; void (*fn)(void); } suite[] = {
        {"ipi", test_ipi},     {"apic", test_apic_state},   {"pingpong", test_pingpong},
        {"pio", test_pio},     {"mmio", test_mmio},         {"irq", test_irq},
        {"msi", test_msi},     {"intx", test_intx},         {"isairq", test_isairq},
        {"vga", test_vga},     {"pcicfg", test_pcicfg}, {"disk", test_disk},
        {"mem", test_mem},     {"litmus", test_litmus},     {"xmc", test_xmc},
        {"tsc", test_tsc},     {"dma", test_dma},
    };
    for (size_t i = 0; i < ARRAY_SIZE(suite); i++) {
        if (!group_enabled(suite[i].group))
            continue;
        if (suite[i].fn == test_dma && !group_named("dma"))
            continue;           /* needs edu's DMA: asked for by name */
        uint64_t t0 = rdtsc();
        suite[i].fn();
        kprintf("# group %s done in %lu ms\n", suite[i].group, cycles_to_ns(rdtsc() - t0) / 1000000);
    }

    unsigned total = report_total(), failed = report_failures();
    kprintf("1..%u\n", total);
    if (report_todo_failures())
        kprintf("# todo: %u known-defect checks failed (not counted)\n", report_todo_failures());
    if (failed)
        kprintf("dqtest: FAIL %u/%u\n", failed, total);
    else
        kprintf("dqtest: PASS %u/%u\n", total - report_todo_failures(), total);
    power_off(failed == 0);
}
