/*
 * test_apic.c - IPIs that depend on an APIC id or LDR the guest has just changed.
 *
 * A CPU changes its own APIC state and tells the sender through memory only, with
 * no interrupt in between; the sender then sends an IPI whose destination decodes
 * with the new state.  Hardware and QEMU decode with the state as it is when the
 * ICR is written, so the new state must already be in effect.
 *
 * LDR: every CPU moves to another flat-model bit (a rotation of "bit i = CPU
 * i"), and the sender multicasts to the new bits of all the others: each of them
 * exactly once, the sender never.
 *
 * Aliased xAPIC ids (real hardware and QEMU accept two CPUs with one id; a
 * physical IPI then reaches all of them): every CPU but the sender takes one
 * spare id, the sender sends one fixed physical IPI to it, which every other CPU
 * must take once.  Each handler gives its CPU its own id back before it
 * acknowledges, so a second IPI to the spare id must reach nobody, and one IPI
 * to each CPU's own id must reach exactly that CPU.
 */
#include "dqtest.h"

#define SPARE_APIC_ID 0x5a          /* no CPU has it: dqtest runs at most 64 CPUs */

struct apic_args {
    unsigned src;
    uint32_t shift;                          /* LDR rotation */
    volatile uint32_t ready[MAX_CPUS];       /* CPU i has its new state */
    volatile uint32_t restored[MAX_CPUS];    /* CPU i's handler gave it its id back */
    volatile uint32_t sent;                  /* the sender has finished */
    uint32_t stale;                          /* the sender timed out waiting */
};

static unsigned flat_cpus(void) { return ncpus < 8 ? ncpus : 8; }

static uint32_t rotated_bit(unsigned cpu, uint32_t shift) { return 1u << ((cpu + shift) % flat_cpus()); }

static bool wait_flag(volatile uint32_t *flag, uint64_t end)
{
    while (!READ_ONCE(*flag))
        if (expired(end))
            return false;
        else
            cpu_relax();
    return true;
}

static void ldr_fn(void *p)
{
    struct apic_args *a = p;
    unsigned me = this_cpu()->index;
    uint64_t end = deadline_ms(opt.timeout_ms);
    if (me >= flat_cpus())
        return;
    lapic_set_ldr(rotated_bit(me, a->shift));
    if (me != a->src) {
        __atomic_store_n(&a->ready[me], 1, __ATOMIC_RELEASE);
        return;
    }
    uint32_t mask = 0;
    for (unsigned i = 0; i < flat_cpus(); i++) {
        if (i == me)
            continue;
        if (!wait_flag(&a->ready[i], end))
            a->stale++;
        mask |= rotated_bit(i, a->shift);
    }
    lapic_send_ipi(mask, ICR_FIXED | ICR_LOGICAL | VEC_TEST);
}

static void restore_ldr(void *p)
{
    (void)p;
    lapic_set_ldr(this_cpu()->index < 8 ? 1u << this_cpu()->index : 0);
}

static void clear_vec(uint8_t vec)
{
    for (unsigned i = 0; i < ncpus; i++)
        cpus[i].vec_count[vec] = 0;
    mfence();
}

/* Wait until every CPU has counted expect[i] of vec (or the timeout), settle, flush. */
static void collect(uint8_t vec, const uint32_t *expect, uint32_t *got)
{
    uint64_t end = deadline_ms(opt.timeout_ms);
    for (bool done = false; !done && !expired(end);) {
        done = true;
        for (unsigned i = 0; i < ncpus; i++)
            done &= READ_ONCE(cpus[i].vec_count[vec]) >= expect[i];
        cpu_relax();
    }
    udelay(opt.settle_us);
    smp_flush();
    for (unsigned i = 0; i < ncpus; i++)
        got[i] = cpus[i].vec_count[vec];
}

static bool counts_equal(const uint32_t *got, const uint32_t *expect)
{
    bool ok = true;
    for (unsigned i = 0; i < ncpus; i++)
        ok &= got[i] == expect[i];
    return ok;
}

static void test_ldr_change(void)
{
    uint32_t got[MAX_CPUS], expect[MAX_CPUS];
    char d[128];
    static struct apic_args a;
    for (uint32_t shift = 1; shift < flat_cpus() && shift <= 2; shift++)
        for (unsigned s = 0; s < flat_cpus(); s++) {
            memset((void *)&a, 0, sizeof(a));
            a.src = s;
            a.shift = shift;
            clear_vec(VEC_TEST);
            bool ran = run_all(ldr_fn, &a);
            memset(expect, 0, sizeof(expect));
            for (unsigned i = 0; i < flat_cpus(); i++)
                expect[i] = i != s;
            collect(VEC_TEST, expect, got);
            run_all(restore_ldr, NULL);
            bool ok = ran && !a.stale && counts_equal(got, expect);
            snprintf(d, sizeof(d), "apic ldr change then logical multicast cpu%u->others (ldr rotated by %u)", s,
                     shift);
            check(ok, "%s", d);
            if (!ok)
                report_counts(ran ? d : "(a cpu did not run its part)", got, expect);
        }
}

static struct apic_args alias;

static void on_alias(struct frame *f)
{
    (void)f;
    struct cpu *c = this_cpu();
    lapic_set_id(c->apic_id);
    __atomic_store_n(&alias.restored[c->index], 1, __ATOMIC_RELEASE);
}

static void alias_fn(void *p)
{
    struct apic_args *a = p;
    unsigned me = this_cpu()->index;
    uint64_t end = deadline_ms(opt.timeout_ms);
    if (me != a->src) {
        lapic_set_id(SPARE_APIC_ID);
        __atomic_store_n(&a->ready[me], 1, __ATOMIC_RELEASE);
        /* interrupts are on: the handler restores the id; wait for the sender */
        if (!wait_flag(&a->restored[me], end) || !wait_flag(&a->sent, end))
            lapic_set_id(this_cpu()->apic_id);
        return;
    }
    for (unsigned i = 0; i < ncpus; i++)
        if (i != me && !wait_flag(&a->ready[i], end))
            a->stale++;
    lapic_send_ipi(SPARE_APIC_ID, ICR_FIXED | VEC_ALIAS);
    for (unsigned i = 0; i < ncpus; i++)
        if (i != me && !wait_flag(&a->restored[i], end))
            a->stale++;
    /* every CPU has its own id again: this one must reach nobody */
    lapic_send_ipi(SPARE_APIC_ID, ICR_FIXED | VEC_ALIAS);
    for (unsigned i = 0; i < ncpus; i++)
        if (i != me)
            lapic_send_ipi(cpus[i].apic_id, ICR_FIXED | VEC_TEST);
    __atomic_store_n(&a->sent, 1, __ATOMIC_RELEASE);
}

static void test_aliased_id(void)
{
    uint32_t got[MAX_CPUS], got_own[MAX_CPUS], expect[MAX_CPUS];
    char d[128];
    irq_set_handler(VEC_ALIAS, on_alias);
    for (unsigned s = 0; s < ncpus; s++) {
        memset((void *)&alias, 0, sizeof(alias));
        alias.src = s;
        clear_vec(VEC_ALIAS);
        clear_vec(VEC_TEST);
        bool ran = run_all(alias_fn, &alias);
        memset(expect, 0, sizeof(expect));
        for (unsigned i = 0; i < ncpus; i++)
            expect[i] = i != s;
        collect(VEC_ALIAS, expect, got);
        /* the IPIs to each own id were sent last: wait for them too (one forwarded to
         * another shard may still be on its way when the sender returns) */
        collect(VEC_TEST, expect, got_own);
        bool ids_back = true;
        for (unsigned i = 0; i < ncpus; i++)
            ids_back &= alias.restored[i] || i == s;
        bool ok = ran && !alias.stale && ids_back && counts_equal(got, expect);
        snprintf(d, sizeof(d), "apic aliased xapic id 0x%x: cpu%u->all others once, then nobody", SPARE_APIC_ID, s);
        check(ok, "%s", d);
        if (!ok)
            report_counts(ran ? d : "(a cpu did not run its part)", got, expect);
        ok = ran && counts_equal(got_own, expect);
        snprintf(d, sizeof(d), "apic restored xapic ids: cpu%u->each other cpu's own id once", s);
        check(ok, "%s", d);
        if (!ok)
            report_counts(d, got_own, expect);
    }
}

void test_apic_state(void)
{
    if (ncpus < 2) {
        skip("apic", "only one cpu online");
        return;
    }
    test_ldr_change();
    test_aliased_id();
}
