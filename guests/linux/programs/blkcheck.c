/*
 * blkcheck DEV MIB SEED: writes MIB MiB of a seeded pattern to DEV with O_DIRECT, reads
 * it back with O_DIRECT and compares. Every request goes to the device, so with the disk
 * on another shard both the MMIO (virtqueue kicks) and the completion interrupts cross
 * shards.
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK (64 * 1024)

static void fill(uint64_t *buf, uint64_t off, uint64_t seed)
{
    for (size_t i = 0; i < CHUNK / 8; i++) {
        uint64_t x = (off + i * 8) ^ (seed * 0x9e3779b97f4a7c15ULL);
        x ^= x >> 31;
        buf[i] = x * 0xbf58476d1ce4e5b9ULL;
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: blkcheck DEV MIB SEED\n");
        return 2;
    }
    long mib = atol(argv[2]);
    uint64_t seed = strtoull(argv[3], NULL, 0);
    int fd = open(argv[1], O_RDWR | O_DIRECT);
    uint64_t *want, *got;
    long bad = 0;

    if (fd < 0 || posix_memalign((void **)&want, 4096, CHUNK) ||
        posix_memalign((void **)&got, 4096, CHUNK)) {
        perror("blkcheck");
        return 2;
    }
    uint64_t total = (uint64_t)mib << 20;
    for (uint64_t off = 0; off < total; off += CHUNK) {
        fill(want, off, seed);
        if (pwrite(fd, want, CHUNK, (off_t)off) != CHUNK) {
            perror("pwrite");
            return 2;
        }
    }
    if (fsync(fd) != 0) {
        perror("fsync");
        return 2;
    }
    for (uint64_t off = 0; off < total; off += CHUNK) {
        fill(want, off, seed);
        if (pread(fd, got, CHUNK, (off_t)off) != CHUNK) {
            perror("pread");
            return 2;
        }
        if (memcmp(want, got, CHUNK) != 0) {
            bad++;
        }
    }
    printf("DQ KV blk_mib=%ld\n", mib);
    printf("DQ KV blk_bad_chunks=%ld\n", bad);
    return bad == 0 ? 0 : 1;
}
