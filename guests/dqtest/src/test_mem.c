/*
 * test_mem.c - shared memory between CPUs.
 *
 * mem: message passing (data then flag; the reader must never see the flag
 * without the data, x86-TSO keeps stores and loads in order) with round-trip
 * latency, and atomic counters hammered by all CPUs at once with LOCK XADD
 * and a LOCK CMPXCHG retry loop (no increment may be lost).
 *
 * litmus: store buffering (SB).  CPU A: x = 1; [mfence]; r1 = y.
 * CPU B: y = 1; [mfence]; r2 = x.  Without MFENCE, r1 = r2 = 0 is allowed by
 * x86-TSO (each store may still sit in its store buffer); with MFENCE it is
 * forbidden.  Both sides start at the same TSC deadline so that their
 * critical sections overlap; the lead time adapts if the partner arrives late.
 */
#include "dqtest.h"

#define CL __attribute__((aligned(64)))

static uint64_t wait_timeout(void) { return ns_to_cycles(opt.timeout_ms * 1000000); }

/* ---- message passing ---- */

struct mp_ctl {
    volatile uint64_t data[8] CL;
    volatile uint64_t flag CL;
    volatile uint64_t ack CL;
    uint64_t n, done;
    uint32_t stale, timeouts;
};

static void mp_producer(void *p)
{
    struct mp_ctl *c = p;
    uint64_t to = wait_timeout();
    for (uint64_t i = 1; i <= c->n; i++) {
        smp_beat();
        uint64_t t0 = rdtsc_ordered();
        for (unsigned j = 0; j < 8; j++)
            c->data[j] = i * 8 + j;
        c->flag = i;
        while (c->ack != i) {
            if (rdtsc() - t0 > to) {
                c->timeouts++;
                return;
            }
            handoff_relax(t0);
        }
        samples[i - 1] = rdtsc_ordered() - t0;
        c->done = i;
    }
}

static void mp_consumer(void *p)
{
    struct mp_ctl *c = p;
    uint64_t to = wait_timeout();
    for (uint64_t i = 1; i <= c->n; i++) {
        smp_beat();
        uint64_t t0 = rdtsc();
        while (c->flag != i) {
            if (rdtsc() - t0 > to)
                return;
            handoff_relax(t0);
        }
        for (unsigned j = 0; j < 8; j++)
            if (c->data[j] != i * 8 + j)
                c->stale++;
        c->ack = i;
    }
}

/* ---- atomics ---- */

struct atom_ctl {
    volatile uint64_t xadd_ctr CL;
    volatile uint64_t cas_ctr CL;
    volatile uint32_t arrive CL;
    uint32_t participants;
    uint64_t iters;
    volatile uint64_t retries CL;
    volatile uint32_t barrier_timeouts;
};

static inline uint64_t lock_xadd(volatile uint64_t *p, uint64_t v)
{
    __asm__ volatile("lock xaddq %0, %1" : "+r"(v), "+m"(*p) : : "memory");
    return v;
}

static inline bool lock_cmpxchg(volatile uint64_t *p, uint64_t old, uint64_t new)
{
    uint64_t prev;
    __asm__ volatile("lock cmpxchgq %2, %1" : "=a"(prev), "+m"(*p) : "r"(new), "0"(old) : "memory");
    return prev == old;
}

static void atom_worker(void *p)
{
    struct atom_ctl *c = p;
    uint64_t to = wait_timeout(), t0 = rdtsc();
    __atomic_fetch_add(&c->arrive, 1, __ATOMIC_SEQ_CST);
    while (c->arrive < c->participants) {
        if (rdtsc() - t0 > to) {
            __atomic_fetch_add(&c->barrier_timeouts, 1, __ATOMIC_SEQ_CST);
            break;
        }
        handoff_relax(t0);
    }
    uint64_t retries = 0;
    for (uint64_t i = 0; i < c->iters; i++) {
        smp_beat();
        lock_xadd(&c->xadd_ctr, 1);
        uint64_t old;
        do {
            old = c->cas_ctr;
        } while (!lock_cmpxchg(&c->cas_ctr, old, old + 1) && ++retries);
    }
    lock_xadd(&c->retries, retries);
}

void test_mem(void)
{
    static struct mp_ctl mp;
    char label[32];
    if (ncpus < 2)
        skip("mem_mp", "only one cpu online");
    for (unsigned a = 0; a < ncpus; a++)
        for (unsigned b = 0; b < ncpus; b++) {
            if (a == b)
                continue;
            memset((void *)&mp, 0, sizeof(mp));
            mp.n = opt.iters;
            mfence();
            bool ran = run_pair(a, mp_producer, b, mp_consumer, &mp);
            check(ran && mp.done == mp.n && !mp.stale && !mp.timeouts,
                  "mem message passing cpu%u->cpu%u (%lu/%lu messages, %u stale words)", a, b, mp.done, mp.n,
                  mp.stale);
            snprintf(label, sizeof(label), "cpu%u-cpu%u", a, b);
            report_lat("mem_rtt", label, samples, mp.done);
        }

    static struct atom_ctl at;
    memset((void *)&at, 0, sizeof(at));
    unsigned live = 0;
    for (unsigned i = 0; i < ncpus; i++)
        live += !cpus[i].dead;
    at.participants = live;
    at.iters = opt.atomic_iters;
    mfence();
    bool ran = run_all(atom_worker, &at);
    uint64_t want = (uint64_t)live * at.iters;
    check(ran && at.xadd_ctr == want, "mem atomic lock xadd counter %lu == %u cpus x %lu", at.xadd_ctr, live,
          at.iters);
    check(ran && at.cas_ctr == want, "mem atomic lock cmpxchg counter %lu == %u cpus x %lu (%lu retries)",
          at.cas_ctr, live, at.iters, at.retries);
}

/* ---- store buffering litmus ---- */

struct sb_ctl {
    volatile uint32_t x CL;
    volatile uint32_t y CL;
    volatile uint64_t round CL;
    volatile uint64_t t_go;
    volatile uint64_t b_done CL;
    volatile uint32_t r2;
    volatile uint64_t late;
    uint64_t iters, gap, min_gap, max_gap;
    bool fence;
    uint64_t counts[4];
    uint32_t timeouts;
};

static inline uint32_t sb_side(volatile uint32_t *mine, volatile uint32_t *other, bool fence)
{
    uint32_t r;
    if (fence)
        __asm__ volatile("movl $1, %1\n\tmfence\n\tmovl %2, %0" : "=r"(r), "=m"(*mine) : "m"(*other) : "memory");
    else
        __asm__ volatile("movl $1, %1\n\tmovl %2, %0" : "=r"(r), "=m"(*mine) : "m"(*other) : "memory");
    return r;
}

static void sb_a(void *p)
{
    struct sb_ctl *c = p;
    uint64_t to = wait_timeout();
    unsigned on_time = 0;
    for (uint64_t i = 1; i <= c->iters; i++) {
        smp_beat();
        c->x = 0;
        c->y = 0;
        uint64_t late_before = c->late;
        mfence();
        uint64_t go = rdtsc() + c->gap;
        c->t_go = go;
        c->round = i;
        while (rdtsc() < go)
            ;
        uint32_t r1 = sb_side(&c->x, &c->y, c->fence);
        uint64_t t0 = rdtsc();
        while (c->b_done != i) {
            if (rdtsc() - t0 > to) {
                c->timeouts++;
                return;
            }
            handoff_relax(t0);
        }
        uint32_t r2 = c->r2;
        c->counts[(r1 & 1) * 2 + (r2 & 1)]++;
        /* Adapt the lead time: double when B was late, shrink after 16 on-time rounds. */
        if (c->late != late_before) {
            if (c->gap < c->max_gap)
                c->gap *= 2;
            on_time = 0;
        } else if (++on_time >= 16 && c->gap > c->min_gap) {
            c->gap -= c->gap / 4;
            on_time = 0;
        }
    }
}

static void sb_b(void *p)
{
    struct sb_ctl *c = p;
    uint64_t to = wait_timeout();
    for (uint64_t i = 1; i <= c->iters; i++) {
        smp_beat();
        uint64_t t0 = rdtsc();
        while (c->round != i) {
            if (rdtsc() - t0 > to)
                return;
            handoff_relax(t0);
        }
        uint64_t go = c->t_go;
        if (rdtsc() >= go)
            c->late++;
        while (rdtsc() < go)
            ;
        c->r2 = sb_side(&c->y, &c->x, c->fence);
        c->b_done = i;
    }
}

void test_litmus(void)
{
    static struct sb_ctl sb;
    if (ncpus < 2) {
        skip("litmus", "only one cpu online");
        return;
    }
    for (int fence = 1; fence >= 0; fence--)
        for (unsigned a = 0; a < ncpus; a++)
            for (unsigned b = a + 1; b < ncpus; b++) {
                memset((void *)&sb, 0, sizeof(sb));
                sb.iters = opt.litmus_iters;
                sb.fence = fence;
                sb.min_gap = ns_to_cycles(1000) ? ns_to_cycles(1000) : 1000;
                sb.max_gap = ns_to_cycles(200000);
                sb.gap = sb.min_gap * 2;
                mfence();
                bool ran = run_pair(a, sb_a, b, sb_b, &sb);
                uint64_t total = sb.counts[0] + sb.counts[1] + sb.counts[2] + sb.counts[3];
                kprintf("# litmus sb%s cpu%u-cpu%u iters=%lu r00=%lu r01=%lu r10=%lu r11=%lu late=%lu "
                        "final_gap_cycles=%lu\n",
                        fence ? "+mfence" : "", a, b, total, sb.counts[0], sb.counts[1], sb.counts[2],
                        sb.counts[3], sb.late, sb.gap);
                if (fence)
                    check(ran && !sb.timeouts && total == sb.iters && sb.counts[0] == 0,
                          "litmus sb+mfence cpu%u-cpu%u: forbidden r1=r2=0 seen %lu times in %lu", a, b,
                          sb.counts[0], total);
                else
                    check(ran && !sb.timeouts && total == sb.iters,
                          "litmus sb (no fence, r1=r2=0 allowed) cpu%u-cpu%u: completed %lu, r1=r2=0 seen %lu", a,
                          b, total, sb.counts[0]);
            }
}
