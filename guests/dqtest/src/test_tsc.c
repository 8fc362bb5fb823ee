/*
 * test_tsc.c - cross-CPU TSC consistency.
 *
 * CPU A reads its TSC and publishes it; CPU B waits for it, then reads its own
 * TSC (LFENCE-ordered after the load).  Causality means B's value should not be
 * smaller than A's; a negative difference is a backward step, which must stay
 * within tsc_bound_ns.  Every ordered pair is measured; the forward difference
 * doubles as the one-way shared-memory hand-off latency.
 */
#include "dqtest.h"

#define CL __attribute__((aligned(64)))

struct tsc_ctl {
    volatile uint64_t seq CL;
    volatile uint64_t val;
    volatile uint64_t ack CL;
    uint64_t n, done;
    int64_t min_delta;
};

static void tsc_pub(void *p)
{
    struct tsc_ctl *c = p;
    uint64_t to = ns_to_cycles(opt.timeout_ms * 1000000);
    for (uint64_t i = 1; i <= c->n; i++) {
        smp_beat();
        c->val = rdtsc_ordered();
        c->seq = i;
        uint64_t t0 = rdtsc();
        while (c->ack != i)
            if (rdtsc() - t0 > to)
                return;
    }
}

static void tsc_obs(void *p)
{
    struct tsc_ctl *c = p;
    uint64_t to = ns_to_cycles(opt.timeout_ms * 1000000);
    c->min_delta = INT64_MAX;
    for (uint64_t i = 1; i <= c->n; i++) {
        smp_beat();
        uint64_t t0 = rdtsc();
        while (c->seq != i)
            if (rdtsc() - t0 > to)
                return;
        uint64_t theirs = c->val;
        int64_t d = (int64_t)(rdtsc_ordered() - theirs);
        if (d < c->min_delta)
            c->min_delta = d;
        samples[i - 1] = d > 0 ? (uint64_t)d : 0;
        c->done = i;
        c->ack = i;
    }
}

void test_tsc(void)
{
    static struct tsc_ctl t;
    char label[32];
    if (ncpus < 2) {
        skip("tsc", "only one cpu online");
        return;
    }
    uint64_t worst = 0;
    for (unsigned a = 0; a < ncpus; a++)
        for (unsigned b = 0; b < ncpus; b++) {
            if (a == b)
                continue;
            memset((void *)&t, 0, sizeof(t));
            t.n = opt.iters;
            mfence();
            bool ran = run_pair(a, tsc_pub, b, tsc_obs, &t);
            uint64_t back = t.min_delta < 0 ? (uint64_t)-t.min_delta : 0;
            uint64_t back_ns = cycles_to_ns(back);
            if (back_ns > worst)
                worst = back_ns;
            check(ran && t.done == t.n && back_ns <= opt.tsc_bound_ns,
                  "tsc cpu%u->cpu%u never backwards beyond %lu ns (max backward %lu cycles = %lu ns, %lu/%lu)", a,
                  b, opt.tsc_bound_ns, back, back_ns, t.done, t.n);
            snprintf(label, sizeof(label), "cpu%u->cpu%u", a, b);
            report_lat("tsc_handoff", label, samples, t.done);
        }
    kprintf("# tsc max_backward_ns=%lu bound_ns=%lu\n", worst, opt.tsc_bound_ns);
}
