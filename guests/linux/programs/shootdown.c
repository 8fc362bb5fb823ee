/*
 * shootdown [ROUNDS]: threads pinned to every online CPU touch a shared mapping; the main
 * thread then unmaps it and maps fresh zero pages at the same address. The kernel must
 * shoot down every CPU's TLB entries (IPIs) first: a thread that still sees its old
 * marker through a stale TLB entry is a failed shootdown.
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGES 16
#define PAGE 4096

static long ncpu;
static volatile unsigned char *area;
static pthread_barrier_t bar;
static long rounds = 200;
static volatile long stale;

static void *worker(void *arg)
{
    int cpu = (int)(long)arg;
    cpu_set_t set;

    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof(set), &set);
    for (long r = 0; r < rounds; r++) {
        pthread_barrier_wait(&bar);           /* mapping is fresh */
        for (int p = 0; p < PAGES; p++) {
            if (area[p * PAGE + cpu] != 0) {
                __atomic_fetch_add(&stale, 1, __ATOMIC_SEQ_CST);
            }
            area[p * PAGE + cpu] = (unsigned char)(cpu + 1);
        }
        pthread_barrier_wait(&bar);           /* main may unmap now */
        pthread_barrier_wait(&bar);           /* main has remapped */
    }
    return NULL;
}

int main(int argc, char **argv)
{
    pthread_t th[256];

    if (argc > 1) {
        rounds = atol(argv[1]);
    }
    ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu < 1 || ncpu > 255) {
        return 2;
    }
    area = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    pthread_barrier_init(&bar, NULL, (unsigned)ncpu + 1);
    for (long c = 0; c < ncpu; c++) {
        pthread_create(&th[c], NULL, worker, (void *)c);
    }
    for (long r = 0; r < rounds; r++) {
        pthread_barrier_wait(&bar);
        pthread_barrier_wait(&bar);
        if (munmap((void *)area, PAGES * PAGE) != 0 ||
            mmap((void *)area, PAGES * PAGE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED) {
            perror("remap");
            return 2;
        }
        pthread_barrier_wait(&bar);
    }
    for (long c = 0; c < ncpu; c++) {
        pthread_join(th[c], NULL);
    }
    printf("DQ KV shootdown_rounds=%ld\n", rounds);
    printf("DQ KV shootdown_threads=%ld\n", ncpu);
    printf("DQ KV shootdown_stale=%ld\n", stale);
    return stale == 0 ? 0 : 1;
}
