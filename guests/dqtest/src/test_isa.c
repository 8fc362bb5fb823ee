/*
 * test_isa.c - the interrupt line of an ISA device, through the IOAPIC.
 *
 * QEMU's pc-testdev (-device pc-testdev) drives ISA IRQ n to the level
 * written to port 0x2000 + n, and has a 32-bit scratch register at port 0xe0,
 * by which dqtest finds it.  ISA IRQ 5 (no other device uses it) is mapped to
 * its GSI through the MADT overrides and steered to each CPU in turn:
 *
 * - edge: each raise-and-lower of the line is one interrupt;
 * - level: the handler leaves the line high once, so the EOI must make the
 *   IOAPIC deliver it again; the second time the handler lowers the line
 *   before its EOI: two interrupts per assertion, remote IRR clear after;
 * - masked level: a line raised while the pin is masked is delivered once
 *   when the pin is unmasked;
 * - level lowered by another CPU: the handler asks another CPU to lower the
 *   line, waits until it has (in memory), and then EOIs.  The lowering must
 *   be in effect at the IOAPIC before that EOI, although the two reach it
 *   from different places (the device's and the handler's); else the IOAPIC
 *   sees the line still high at the EOI and delivers it again.
 *
 * Every count is exact and no other CPU may take any.
 */
#include "dqtest.h"

#define TESTDEV_SCRATCH 0xe0
#define TESTDEV_IRQ_PORT 0x2000
#define ISA_TEST_IRQ 5
#define FLAGS_EDGE_HIGH 0x5     /* MADT INTI flags: active high, edge */
#define FLAGS_LEVEL_HIGH 0xd    /* active high, level */

static volatile uint32_t hold_high;   /* level: deliveries to leave the line high for */
static volatile uint32_t lowered;     /* level: the handler lowered the line */

static volatile uint32_t armed;       /* handoff: a raise not yet taken */
static volatile uint32_t lower_req;   /* handoff: the handler asks the helper to lower */
static volatile uint32_t lower_ack;   /* handoff: the helper has lowered the line */

static void set_line(int level) { outb(TESTDEV_IRQ_PORT + ISA_TEST_IRQ, (uint8_t)level); }

static void on_isa_level(struct frame *f)
{
    (void)f;
    if (hold_high) {
        hold_high--;
        return;
    }
    set_line(0);
    __atomic_fetch_add(&lowered, 1, __ATOMIC_RELEASE);
}

static bool testdev_present(void)
{
    outl(TESTDEV_SCRATCH, 0x5aa5c33cu);
    if (inl(TESTDEV_SCRATCH) != 0x5aa5c33cu)
        return false;
    outl(TESTDEV_SCRATCH, 0x0ff0f00fu);
    return inl(TESTDEV_SCRATCH) == 0x0ff0f00fu;
}

static bool wait_count(volatile uint32_t *v, uint32_t at_least)
{
    uint64_t end = deadline_ms(opt.timeout_ms);
    while (READ_ONCE(*v) < at_least)
        if (expired(end))
            return false;
        else
            cpu_relax();
    return true;
}

static uint32_t remote_irr(uint32_t gsi)
{
    unsigned idx, pin;
    if (!ioapic_for_gsi(gsi, &idx, &pin))
        return 0;
    return (ioapic_read(idx, 0x10 + 2 * pin) >> 14) & 1;
}

/* handoff: the handler leaves the lowering to the helper CPU and waits for it */
static void on_isa_handoff(struct frame *f)
{
    (void)f;
    if (!__atomic_exchange_n(&armed, 0, __ATOMIC_ACQ_REL))
        return; /* delivered again: the EOI overtook the lowering */
    __atomic_store_n(&lower_req, 1, __ATOMIC_RELEASE);
    uint64_t end = deadline_ms(opt.timeout_ms);
    while (!__atomic_load_n(&lower_ack, __ATOMIC_ACQUIRE) && !expired(end))
        cpu_relax();
    __atomic_store_n(&lower_ack, 0, __ATOMIC_RELEASE);
}

struct handoff {
    size_t rounds;
    size_t done;
};

/* On the helper CPU: raise, lower when the handler asks, until it has seen that. */
static void handoff_rounds(void *arg)
{
    struct handoff *h = arg;
    for (size_t r = 0; r < h->rounds; r++) {
        smp_beat();
        __atomic_store_n(&armed, 1, __ATOMIC_RELEASE);
        mfence();
        set_line(1);
        if (!wait_count(&lower_req, 1))
            return;
        lower_req = 0;
        set_line(0);
        __atomic_store_n(&lower_ack, 1, __ATOMIC_RELEASE);
        uint64_t end = deadline_ms(opt.timeout_ms);
        while (__atomic_load_n(&lower_ack, __ATOMIC_ACQUIRE) && !expired(end))
            cpu_relax();
        h->done++;
    }
}

/* an IOAPIC route written by another CPU (over shards: a forwarded MMIO write) */
struct route {
    uint32_t gsi;
    uint8_t dest;
};

static void route_unmasked(void *arg)
{
    struct route *r = arg;
    ioapic_route(r->gsi, VEC_ISA, r->dest, FLAGS_LEVEL_HIGH, false);
}

static uint32_t got[MAX_CPUS], expect[MAX_CPUS];

/* Counts on every CPU after a settle; true if target got exactly n and the others none. */
static bool exact_on(unsigned t, uint32_t n)
{
    udelay(opt.settle_us);
    smp_flush();
    bool ok = true;
    for (unsigned i = 0; i < ncpus; i++) {
        got[i] = cpus[i].vec_count[VEC_ISA];
        expect[i] = i == t ? n : 0;
        ok &= got[i] == expect[i];
    }
    return ok;
}

static void verdict(bool ok, const char *desc)
{
    check(ok, "%s", desc);
    if (!ok)
        report_counts(desc, got, expect);
}

static void reset_counts(void)
{
    for (unsigned i = 0; i < ncpus; i++)
        cpus[i].vec_count[VEC_ISA] = 0;
    lowered = 0;
    hold_high = 0;
    armed = lower_req = lower_ack = 0;
    mfence();
}

void test_isairq(void)
{
    if (!testdev_present()) {
        skip("isairq", "no pc-testdev at port 0x%x (add -device pc-testdev)", TESTDEV_SCRATCH);
        return;
    }
    uint16_t flags;
    uint32_t gsi = irq_to_gsi(ISA_TEST_IRQ, &flags);
    unsigned idx, pin;
    if (!ioapic_for_gsi(gsi, &idx, &pin)) {
        skip("isairq", "no IOAPIC pin for ISA IRQ %u", ISA_TEST_IRQ);
        return;
    }
    kprintf("# isairq: pc-testdev isa irq %u -> gsi %u (ioapic %u pin %u)\n", ISA_TEST_IRQ, gsi, idx, pin);
    irq_set_handler(VEC_ISA, on_isa_level);
    set_line(0);
    size_t rounds = opt.iters < 50 ? opt.iters : 50;
    char d[128];

    for (unsigned t = 0; t < ncpus; t++) {
        uint8_t dest = (uint8_t)cpus[t].apic_id;

        /* edge: one interrupt per raise */
        reset_counts();
        irq_set_handler(VEC_ISA, NULL);
        ioapic_route(gsi, VEC_ISA, dest, FLAGS_EDGE_HIGH, false);
        size_t done = 0;
        for (size_t r = 0; r < rounds; r++) {
            set_line(1);
            bool seen = wait_count(&cpus[t].vec_count[VEC_ISA], (uint32_t)r + 1);
            set_line(0);
            if (!seen)
                break;
            done++;
        }
        bool ok = exact_on(t, (uint32_t)rounds) && done == rounds;
        snprintf(d, sizeof(d), "isairq edge gsi %u -> cpu%u once per raise (%zu/%zu)", gsi, t, done, rounds);
        verdict(ok, d);
        ioapic_route(gsi, VEC_ISA, dest, FLAGS_EDGE_HIGH, true);

        /* level: delivered again after an EOI while the line is still high */
        reset_counts();
        irq_set_handler(VEC_ISA, on_isa_level);
        ioapic_route(gsi, VEC_ISA, dest, FLAGS_LEVEL_HIGH, false);
        done = 0;
        for (size_t r = 0; r < rounds; r++) {
            hold_high = 1;
            mfence();
            set_line(1);
            if (!wait_count(&lowered, (uint32_t)r + 1))
                break;
            done++;
        }
        set_line(0);
        ok = exact_on(t, 2 * (uint32_t)rounds) && done == rounds;
        uint32_t rirr = remote_irr(gsi);
        snprintf(d, sizeof(d), "isairq level gsi %u -> cpu%u again while high, once after lowering (%zu/%zu%s)",
                 gsi, t, done, rounds, rirr ? ", remote irr stuck" : "");
        verdict(ok && !rirr, d);

        /* masked level: delivered when unmasked */
        reset_counts();
        ioapic_route(gsi, VEC_ISA, dest, FLAGS_LEVEL_HIGH, true);
        set_line(1);
        udelay(opt.settle_us);
        uint32_t early = 0;
        for (unsigned i = 0; i < ncpus; i++)
            early += READ_ONCE(cpus[i].vec_count[VEC_ISA]);
        /*
         * Unmasked by the next CPU: over 4 shards, cpu2 unmasks for cpu1 and cpu3 for
         * cpu2, so the IOAPIC's shard delivers to a third shard while it serves the write.
         */
        unsigned u = (t + 1) % ncpus;
        struct route ro = {.gsi = gsi, .dest = dest};
        if (u == t || cpus[u].dead || !smp_call(u, route_unmasked, &ro)) {
            u = (unsigned)(this_cpu() - cpus);
            route_unmasked(&ro);
        }
        bool seen = wait_count(&lowered, 1);
        set_line(0);
        ok = exact_on(t, 1) && seen && !early;
        rirr = remote_irr(gsi);
        snprintf(d, sizeof(d), "isairq level gsi %u raised while masked -> cpu%u once on unmask by cpu%u%s", gsi, t,
                 u, rirr ? " (remote irr stuck)" : "");
        verdict(ok && !rirr, d);
        ioapic_route(gsi, VEC_ISA, dest, FLAGS_LEVEL_HIGH, true);

        /* level, lowered by each other CPU in turn before the handler's EOI */
        reset_counts();
        irq_set_handler(VEC_ISA, on_isa_handoff);
        ioapic_route(gsi, VEC_ISA, dest, FLAGS_LEVEL_HIGH, false);
        size_t want = 0;
        done = 0;
        for (unsigned h = 0; h < ncpus; h++) {
            struct handoff ho = {.rounds = rounds / 2 ? rounds / 2 : 1};
            if (h == t || cpus[h].dead)
                continue;
            want += ho.rounds;
            smp_call(h, handoff_rounds, &ho);
            done += ho.done;
        }
        set_line(0);
        ok = exact_on(t, (uint32_t)done) && done == want;
        rirr = remote_irr(gsi);
        snprintf(d, sizeof(d), "isairq level gsi %u -> cpu%u lowered by another cpu before the eoi: once (%zu/%zu%s)",
                 gsi, t, done, want, rirr ? ", remote irr stuck" : "");
        verdict(ok && !rirr, d);
        ioapic_route(gsi, VEC_ISA, dest, FLAGS_LEVEL_HIGH, true);
    }
    set_line(0);
}
