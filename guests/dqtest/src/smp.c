/*
 * smp.c - per-CPU data, AP bring-up (INIT-SIPI-SIPI) and the command mailbox.
 *
 * CPU index 0 is the BSP, which drives every test.  An AP sits in an idle
 * loop (HLT with interrupts on, or PAUSE polling with idle=poll) until the
 * BSP posts a function in its mailbox and kicks it with VEC_KICK.
 */
#include "dqtest.h"

#define TRAMP_BASE 0x8000
#define AP_STACK_SIZE 16384

struct cpu cpus[MAX_CPUS];
unsigned ncpus = 1;

static uint8_t ap_stacks[MAX_CPUS][AP_STACK_SIZE] __attribute__((aligned(4096)));
extern char tramp_start[], tramp_end[], tramp_stack[], tramp_arg[];

static volatile uint64_t *tramp_field(char *sym)
{
    return phys(TRAMP_BASE + (uint64_t)(sym - tramp_start));
}

static void set_gs(struct cpu *c) { wrmsr(MSR_GS_BASE, (uint64_t)c); }

int cpu_by_apic(uint32_t apic_id)
{
    for (unsigned i = 0; i < ncpus; i++)
        if (cpus[i].apic_id == apic_id)
            return (int)i;
    return -1;
}

void smp_init_bsp(void)
{
    struct cpu *c = &cpus[0];
    c->self = c;
    c->index = 0;
    set_gs(c);
}

static void __attribute__((noreturn)) idle_loop(struct cpu *c)
{
    for (;;) {
        cli();
        uint64_t s = __atomic_load_n(&c->cmd_seq, __ATOMIC_ACQUIRE);
        if (s != c->done_seq) {
            sti();
            void (*fn)(void *) = c->cmd_fn;
            void *arg = c->cmd_arg;
            fn(arg);
            __atomic_store_n(&c->done_seq, s, __ATOMIC_RELEASE);
            if (!opt.idle_poll)
                lapic_send_ipi(cpus[0].apic_id, ICR_FIXED | VEC_KICK);   /* wake the BSP */
            continue;
        }
        if (opt.idle_poll) {
            sti();
            cpu_relax();
        } else {
            sti_hlt();
        }
    }
}

void ap_main(void);
void ap_main(void)
{
    unsigned idx = (unsigned)*tramp_field(tramp_arg);
    struct cpu *c = &cpus[idx];
    set_gs(c);
    idt_load();
    lapic_init_cpu(idx);
    c->apic_id = lapic_id();
    __atomic_store_n(&c->online, 1, __ATOMIC_RELEASE);
    idle_loop(c);
}

static bool wait_online(struct cpu *c, uint64_t us)
{
    uint64_t end = rdtsc() + ns_to_cycles(us * 1000);
    while (!__atomic_load_n(&c->online, __ATOMIC_ACQUIRE))
        if (rdtsc() > end)
            return false;
        else
            cpu_relax();
    return true;
}

void smp_boot_aps(void)
{
    uint32_t bsp = cpus[0].apic_id;
    check(plat.madt_found && plat.ncpus_madt >= 1, "acpi madt found: %u cpus, %u ioapics",
          plat.ncpus_madt, plat.nioapic);
    memcpy(phys(TRAMP_BASE), tramp_start, (size_t)(tramp_end - tramp_start));
    for (unsigned i = 0; i < plat.ncpus_madt; i++) {
        uint32_t apic = plat.apic_ids[i];
        if (apic == bsp)
            continue;
        if (opt.max_cpus && ncpus >= opt.max_cpus) {
            kprintf("# cpus=%lu: not starting apic_id=%u\n", opt.max_cpus, apic);
            continue;
        }
        unsigned idx = ncpus;
        struct cpu *c = &cpus[idx];
        memset(c, 0, sizeof(*c));
        c->self = c;
        c->index = idx;
        c->stack_top = (uint64_t)(ap_stacks[idx] + AP_STACK_SIZE);
        *tramp_field(tramp_stack) = c->stack_top;
        *tramp_field(tramp_arg) = idx;
        mfence();

        uint64_t t0 = rdtsc();
        lapic_send_ipi(apic, ICR_INIT | ICR_ASSERT | ICR_LEVEL);
        mdelay(10);
        lapic_send_ipi(apic, ICR_INIT | ICR_LEVEL);      /* de-assert */
        bool up = false;
        for (int sipi = 0; sipi < 2 && !up; sipi++) {
            lapic_send_ipi(apic, ICR_SIPI | (TRAMP_BASE >> 12));
            up = wait_online(c, sipi == 0 ? 1000 : opt.timeout_ms * 1000);
        }
        uint64_t t1 = rdtsc();
        if (up && c->apic_id != apic)
            up = false;
        check(up, "cpu bring-up apic_id=%u cpu%u (%lu us)", apic, idx, cycles_to_ns(t1 - t0) / 1000);
        if (up)
            ncpus++;
    }
    kprintf("# cpus online=%u", ncpus);
    for (unsigned i = 0; i < ncpus; i++)
        kprintf(" cpu%u=apic%u", i, cpus[i].apic_id);
    kprintf("\n");
}

bool smp_call_async(unsigned cpu, void (*fn)(void *), void *arg)
{
    struct cpu *c = &cpus[cpu];
    if (cpu == 0 || cpu >= ncpus || c->dead || c->cmd_seq != c->done_seq)
        return false;
    c->cmd_fn = fn;
    c->cmd_arg = arg;
    __atomic_store_n(&c->cmd_seq, c->cmd_seq + 1, __ATOMIC_RELEASE);
    if (!opt.idle_poll)
        lapic_send_ipi(c->apic_id, ICR_FIXED | VEC_KICK);
    return true;
}

/* Wait for a posted command.  Commands bound each wait by opt.timeout_ms and
 * bump the CPU's beat once per round, so a CPU whose beat stands still far
 * longer than that is declared dead and skipped from then on.  A CPU that
 * still makes progress is only slow: on an overloaded host a command of a
 * thousand two-CPU hand-offs can take minutes, each hand-off waiting for the
 * host to schedule both vCPU threads (ci6 marked such a CPU dead after 40 s).
 * The BSP halts meanwhile (the AP kicks it when done; a LAPIC timer bounds
 * each HLT), so it does not compete for host CPU time with the CPUs under test. */
bool smp_wait(unsigned cpu)
{
    struct cpu *c = &cpus[cpu];
    if (cpu == 0)
        return true;
    uint64_t ms = opt.timeout_ms * 20 > 30000 ? opt.timeout_ms * 20 : 30000;
    uint64_t end = deadline_ms(ms);
    uint64_t beat = __atomic_load_n(&c->beat, __ATOMIC_RELAXED);
    while (__atomic_load_n(&c->done_seq, __ATOMIC_ACQUIRE) != c->cmd_seq) {
        uint64_t now_beat = __atomic_load_n(&c->beat, __ATOMIC_RELAXED);
        if (now_beat != beat) {
            beat = now_beat;
            end = deadline_ms(ms);
        }
        if (rdtsc() > end) {
            c->dead = 1;
            kprintf("# cpu%u made no progress on its command for %lu ms: marked dead\n", cpu, ms);
            return false;
        }
        if (opt.idle_poll) {
            cpu_relax();
            continue;
        }
        cli();
        if (__atomic_load_n(&c->done_seq, __ATOMIC_ACQUIRE) != c->cmd_seq) {
            lapic_timer_oneshot_us(10000);
            sti_hlt();
        }
        sti();
    }
    return true;
}

/* A CPU that waits for its partner in a hand-off calls this in its spin loop,
 * with t0 the TSC when it began to wait.  After HANDOFF_SPIN_US of spinning it
 * halts for HANDOFF_NAP_US at a time, on its LAPIC timer, and so gives its host
 * CPU back.  On an overcommitted host the partner's vCPU thread may be waiting
 * for that very CPU: two vCPU threads that spin in turn, and are seldom run at
 * the same time, make every hand-off cost a host time slice.  ci8 and ci12
 * timed out on 1 shard that way, and the litmus group alone took 154 s under
 * load.  A real OS yields in such a wait too (PAUSE exits, futexes).  Quiet
 * hand-offs take a few microseconds and never reach the nap. */
#define HANDOFF_SPIN_US 200
#define HANDOFF_NAP_US 50
void handoff_relax(uint64_t t0)
{
    if (opt.idle_poll || rdtsc() - t0 < ns_to_cycles(HANDOFF_SPIN_US * 1000))
        return;
    uint64_t f = irq_save();
    lapic_timer_oneshot_us(HANDOFF_NAP_US);
    sti_hlt();
    irq_restore(f);
}

bool smp_call(unsigned cpu, void (*fn)(void *), void *arg)
{
    if (cpu == 0) {
        fn(arg);
        return true;
    }
    return smp_call_async(cpu, fn, arg) && smp_wait(cpu);
}

/* Run fa on CPU a and fb on CPU b concurrently (the BSP runs its part inline). */
bool run_pair(unsigned a, void (*fa)(void *), unsigned b, void (*fb)(void *), void *arg)
{
    bool ok = true;
    bool started_a = false, started_b = false;
    if (a != 0) {
        started_a = smp_call_async(a, fa, arg);
        ok = started_a;
    }
    if (ok && b != 0) {
        started_b = smp_call_async(b, fb, arg);
        ok = started_b;
    }
    if (!ok) {
        /* The partner that did start will time out on its own. */
        if (started_a)
            smp_wait(a);
        return false;
    }
    if (a == 0)
        fa(arg);
    else if (b == 0)
        fb(arg);
    if (started_a)
        ok &= smp_wait(a);
    if (started_b)
        ok &= smp_wait(b);
    return ok;
}

/* Run fn on every online CPU at once (the BSP too); false if any CPU failed to run it. */
bool run_all(void (*fn)(void *), void *arg)
{
    bool ok = true;
    bool started[MAX_CPUS] = {false};
    for (unsigned i = 1; i < ncpus; i++) {
        started[i] = smp_call_async(i, fn, arg);
        ok &= started[i];
    }
    fn(arg);
    for (unsigned i = 1; i < ncpus; i++)
        if (started[i])
            ok &= smp_wait(i);
    return ok;
}

static void nop_cmd(void *arg) { (void)arg; }

/*
 * Make every AP service what is pending in its local APIC.  An AP handles the
 * mailbox kick (VEC_KICK, the lowest-priority vector dqtest uses) only after
 * every higher-priority interrupt already in its IRR, so once it has run a
 * no-op command, each interrupt delivered to it before the kick has been
 * counted.  This keeps "exactly once" checks exact even when the host
 * deschedules a vCPU for longer than settle_us.
 */
void smp_flush(void)
{
    for (unsigned i = 1; i < ncpus; i++)
        if (!cpus[i].dead)
            smp_call(i, nop_cmd, NULL);
}
