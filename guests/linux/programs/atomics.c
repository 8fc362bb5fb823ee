/*
 * atomics [ITERS]: one thread pinned to every online CPU hammers shared counters with
 * locked read-modify-writes (LOCK XADD and a LOCK CMPXCHG loop). Across shards this
 * checks that guest atomics stay atomic when the CPUs run in different QEMU processes.
 * Prints DQ KV lines; exits 1 if a count is wrong.
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static long iters = 200000;
static volatile long xadd_counter;
static volatile long cas_counter;
static pthread_barrier_t start;

static void pin(int cpu)
{
    cpu_set_t set;

    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0) {
        perror("sched_setaffinity");
        exit(2);
    }
}

static void *worker(void *arg)
{
    int cpu = (int)(long)arg;

    pin(cpu);
    pthread_barrier_wait(&start);
    for (long i = 0; i < iters; i++) {
        __atomic_fetch_add(&xadd_counter, 1, __ATOMIC_SEQ_CST);
        long old = __atomic_load_n(&cas_counter, __ATOMIC_RELAXED);
        while (!__atomic_compare_exchange_n(&cas_counter, &old, old + 1, 0,
                                            __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
            /* old was reloaded by the failed exchange */
        }
    }
    if (sched_getcpu() != cpu) {
        fprintf(stderr, "thread for cpu %d ran on cpu %d\n", cpu, sched_getcpu());
        exit(3);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    pthread_t th[256];

    if (argc > 1) {
        iters = atol(argv[1]);
    }
    if (ncpu < 1 || ncpu > 256) {
        return 2;
    }
    pthread_barrier_init(&start, NULL, (unsigned)ncpu);
    for (long c = 0; c < ncpu; c++) {
        pthread_create(&th[c], NULL, worker, (void *)c);
    }
    for (long c = 0; c < ncpu; c++) {
        pthread_join(th[c], NULL);
    }
    long want = ncpu * iters;
    printf("DQ KV atomics_threads=%ld\n", ncpu);
    printf("DQ KV atomics_expected=%ld\n", want);
    printf("DQ KV atomics_xadd=%ld\n", xadd_counter);
    printf("DQ KV atomics_cmpxchg=%ld\n", cas_counter);
    return (xadd_counter == want && cas_counter == want) ? 0 : 1;
}
