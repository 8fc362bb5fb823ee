/*
 * test_ipi.c - inter-processor interrupt conformance and round-trip latency.
 *
 * Every case clears the per-CPU VEC_TEST (or NMI) counters, has the source CPU
 * write its ICR, waits until the expected CPUs counted the interrupt, waits
 * settle_us more, and then requires exact counts on every CPU: each delivery
 * happens exactly once and nowhere else.
 */
#include "dqtest.h"

struct send_args { uint32_t dest, icr; };

static void do_send(void *p)
{
    struct send_args *a = p;
    lapic_send_ipi(a->dest, a->icr);
}

static uint32_t count_of(unsigned i, bool nmi)
{
    return nmi ? cpus[i].nmi_count : cpus[i].vec_count[VEC_TEST];
}

static void clear_counts(void)
{
    for (unsigned i = 0; i < ncpus; i++) {
        cpus[i].vec_count[VEC_TEST] = 0;
        cpus[i].nmi_count = 0;
    }
    mfence();
}

/* Waits for expect[] (or, for lowest priority, for any one CPU in lowpri_mask). */
static void collect(const uint32_t *expect, bool nmi, uint32_t lowpri_mask, uint32_t *got)
{
    uint64_t end = deadline_ms(opt.timeout_ms);
    for (;;) {
        bool done = true;
        uint32_t any = 0;
        for (unsigned i = 0; i < ncpus; i++) {
            if (count_of(i, nmi) < expect[i])
                done = false;
            if (lowpri_mask & (1u << i))
                any += count_of(i, nmi);
        }
        if (lowpri_mask && !any)
            done = false;
        if (done || expired(end))
            break;
        cpu_relax();
    }
    udelay(opt.settle_us);
    smp_flush();
    for (unsigned i = 0; i < ncpus; i++)
        got[i] = count_of(i, nmi);
}

static void ipi_case(unsigned src, uint32_t dest, uint32_t icr, const uint32_t *expect, bool nmi,
                     const char *desc)
{
    uint32_t got[MAX_CPUS];
    struct send_args a = {dest, icr};
    clear_counts();
    bool sent = smp_call(src, do_send, &a);
    collect(expect, nmi, 0, got);
    bool ok = sent;
    for (unsigned i = 0; i < ncpus; i++)
        ok &= got[i] == expect[i];
    check(ok, "%s", desc);
    if (!ok)
        report_counts(sent ? desc : "(source cpu did not run the send)", got, expect);
}

static uint32_t logical_others(unsigned src)
{
    uint32_t m = 0;
    for (unsigned i = 0; i < ncpus && i < 8; i++)
        if (i != src)
            m |= 1u << i;
    return m;
}

void test_ipi(void)
{
    char d[96];
    uint32_t expect[MAX_CPUS];
    if (ncpus < 2)
        kprintf("# ipi: only one cpu online; only self-directed cases run\n");

    for (unsigned s = 0; s < ncpus; s++)
        for (unsigned t = 0; t < ncpus; t++) {
            if (t == s)
                continue;
            memset(expect, 0, sizeof(expect));
            expect[t] = 1;
            snprintf(d, sizeof(d), "ipi fixed physical cpu%u->cpu%u", s, t);
            ipi_case(s, cpus[t].apic_id, ICR_FIXED | VEC_TEST, expect, false, d);
        }

    for (unsigned s = 0; s < ncpus; s++)
        for (unsigned t = 0; t < ncpus && t < 8; t++) {
            if (t == s)
                continue;
            memset(expect, 0, sizeof(expect));
            expect[t] = 1;
            snprintf(d, sizeof(d), "ipi fixed logical cpu%u->cpu%u (mask 0x%02x)", s, t, 1u << t);
            ipi_case(s, 1u << t, ICR_FIXED | ICR_LOGICAL | VEC_TEST, expect, false, d);
        }

    for (unsigned s = 0; s < ncpus && ncpus > 2; s++) {
        uint32_t m = logical_others(s);
        memset(expect, 0, sizeof(expect));
        for (unsigned i = 0; i < ncpus && i < 8; i++)
            expect[i] = (m >> i) & 1;
        snprintf(d, sizeof(d), "ipi fixed logical multicast cpu%u->others (mask 0x%02x)", s, m);
        ipi_case(s, m, ICR_FIXED | ICR_LOGICAL | VEC_TEST, expect, false, d);
    }

    for (unsigned s = 0; s < ncpus; s++) {
        memset(expect, 0, sizeof(expect));
        for (unsigned i = 0; i < ncpus; i++)
            expect[i] = 1;
        snprintf(d, sizeof(d), "ipi fixed physical broadcast 0xff cpu%u->all", s);
        ipi_case(s, 0xff, ICR_FIXED | VEC_TEST, expect, false, d);
    }

    for (unsigned s = 0; s < ncpus; s++) {
        memset(expect, 0, sizeof(expect));
        expect[s] = 1;
        snprintf(d, sizeof(d), "ipi shorthand self cpu%u", s);
        ipi_case(s, 0, ICR_FIXED | ICR_SELF | VEC_TEST, expect, false, d);

        for (unsigned i = 0; i < ncpus; i++)
            expect[i] = 1;
        snprintf(d, sizeof(d), "ipi shorthand all-including-self cpu%u", s);
        ipi_case(s, 0, ICR_FIXED | ICR_ALL | VEC_TEST, expect, false, d);

        expect[s] = 0;
        snprintf(d, sizeof(d), "ipi shorthand all-excluding-self cpu%u", s);
        ipi_case(s, 0, ICR_FIXED | ICR_OTHERS | VEC_TEST, expect, false, d);
    }

    for (unsigned s = 0; s < ncpus; s++)
        for (unsigned t = 0; t < ncpus; t++) {
            if (t == s)
                continue;
            memset(expect, 0, sizeof(expect));
            expect[t] = 1;
            snprintf(d, sizeof(d), "ipi nmi physical cpu%u->cpu%u", s, t);
            ipi_case(s, cpus[t].apic_id, ICR_NMI, expect, true, d);
        }

    /* Lowest priority to all other CPUs: exactly one of them takes it, once. */
    for (unsigned s = 0; s < ncpus && ncpus > 1; s++) {
        uint32_t m = logical_others(s), got[MAX_CPUS];
        struct send_args a = {m, ICR_LOWPRI | ICR_LOGICAL | VEC_TEST};
        memset(expect, 0, sizeof(expect));
        clear_counts();
        bool sent = smp_call(s, do_send, &a);
        collect(expect, false, m, got);
        uint32_t in_mask = 0, outside = 0;
        for (unsigned i = 0; i < ncpus; i++) {
            if (m & (1u << i))
                in_mask += got[i];
            else
                outside += got[i];
        }
        bool ok = sent && in_mask == 1 && outside == 0;
        snprintf(d, sizeof(d), "ipi lowest-priority logical cpu%u->others (mask 0x%02x) exactly once", s, m);
        check(ok, "%s", d);
        if (!ok)
            report_counts(d, got, NULL);
    }
}

/* ---- ping-pong ---- */

static void on_ping(struct frame *f)
{
    (void)f;
    lapic_send_ipi(this_cpu()->pong_apic, ICR_FIXED | VEC_PONG);
}

static void on_pong(struct frame *f)
{
    (void)f;
    this_cpu()->pong_count++;
}

struct pp_args { unsigned target; size_t n, done; };

static void pp_run(void *p)
{
    struct pp_args *a = p;
    struct cpu *me = this_cpu(), *t = &cpus[a->target];
    uint64_t timeout = ns_to_cycles(opt.timeout_ms * 1000000);
    t->pong_apic = me->apic_id;
    mfence();
    a->done = 0;
    for (size_t i = 0; i < a->n; i++) {
        smp_beat();
        uint64_t before = READ_ONCE(me->pong_count);
        uint64_t t0 = rdtsc_ordered();
        lapic_send_ipi(t->apic_id, ICR_FIXED | VEC_PING);
        while (READ_ONCE(me->pong_count) == before && rdtsc() - t0 < timeout)
            cpu_relax();
        uint64_t t1 = rdtsc_ordered();
        if (READ_ONCE(me->pong_count) == before)
            break;
        samples[i] = t1 - t0;
        a->done++;
    }
}

void test_pingpong(void)
{
    irq_set_handler(VEC_PING, on_ping);
    irq_set_handler(VEC_PONG, on_pong);
    if (ncpus < 2) {
        skip("pingpong", "only one cpu online");
        return;
    }
    char label[32];
    for (unsigned a = 0; a < ncpus; a++)
        for (unsigned b = 0; b < ncpus; b++) {
            if (a == b)
                continue;
            struct pp_args args = {b, opt.iters, 0};
            bool ran = smp_call(a, pp_run, &args);
            check(ran && args.done == args.n, "ipi ping-pong cpu%u<->cpu%u %zu/%zu round trips", a, b,
                  args.done, args.n);
            snprintf(label, sizeof(label), "cpu%u-cpu%u", a, b);
            report_lat("ipi_rtt", label, samples, args.done);
        }
}
