/*
 * migrate [LAPS]: one process moves itself to every online CPU in turn, LAPS times,
 * checking that it really runs where it asked to and that its data survives each move.
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long laps = argc > 1 ? atol(argv[1]) : 50;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    static uint64_t buf[4096];
    uint64_t sum = 0, want = 0;
    long moves = 0, wrong = 0;

    for (long l = 0; l < laps; l++) {
        for (int c = 0; c < ncpu; c++) {
            cpu_set_t set;

            CPU_ZERO(&set);
            CPU_SET(c, &set);
            if (sched_setaffinity(0, sizeof(set), &set) != 0) {
                perror("sched_setaffinity");
                return 2;
            }
            if (sched_getcpu() != c) {
                wrong++;
            }
            moves++;
            for (int i = 0; i < 4096; i++) {
                buf[i] += (uint64_t)(i ^ c) + 1;
            }
        }
    }
    for (int i = 0; i < 4096; i++) {
        sum += buf[i];
        for (int c = 0; c < ncpu; c++) {
            want += ((uint64_t)(i ^ c) + 1) * (uint64_t)laps;
        }
    }
    printf("DQ KV migrate_moves=%ld\n", moves);
    printf("DQ KV migrate_wrong_cpu=%ld\n", wrong);
    printf("DQ KV migrate_checksum_ok=%d\n", sum == want);
    return (wrong == 0 && sum == want) ? 0 : 1;
}
