/*
 * A shard's side of the router round trip, in C, for bench/router_latency.py:
 * what really talks to a router is a C program (QEMU), so the router round trip
 * is measured between two C ends, and the figure is the routers' and their
 * link's, not a Python client's.
 *
 *   shard_pingpong echo SOCK SHARD [spin]
 *       registers as SHARD on the router's UNIX socket SOCK, prints "ready",
 *       answers every request by rewriting its header (PIO_REQ -> PIO_REPLY)
 *   shard_pingpong client SOCK SHARD DST ITERS [spin]
 *       registers, sends ITERS PIO_REQs to shard DST one at a time (after
 *       ITERS/10 of warm-up), each waiting for its reply; prints
 *       "p50_us=X p99_us=Y"
 *
 * "spin" busy-polls reads (non-blocking recv in a loop) instead of sleeping.
 * The frame layout is the QEMU series' own header (hw/dqemu/proto.h, taken out
 * of qemu-patches/0002 by the bench when it compiles this file).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "hw/dqemu/proto.h"

#define BUFSZ (1 << 20)

static int spin;
static uint8_t buf[BUFSZ];
static size_t start, end;

static void die(const char *what)
{
    fprintf(stderr, "shard_pingpong: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void send_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;

    while (n) {
        ssize_t k = write(fd, b, n);
        if (k <= 0) {
            die("write");
        }
        b += k;
        n -= (size_t)k;
    }
}

/* more bytes into buf; exits when the router closes */
static void fill(int fd)
{
    ssize_t k;

    if (start == end) {
        start = end = 0;
    } else if (end > BUFSZ / 2) {
        memmove(buf, buf + start, end - start);
        end -= start;
        start = 0;
    }
    for (;;) {
        k = recv(fd, buf + end, BUFSZ - end, spin ? MSG_DONTWAIT : 0);
        if (k > 0) {
            end += (size_t)k;
            return;
        }
        if (k == 0) {
            exit(0);
        }
        if (errno != EAGAIN && errno != EINTR) {
            die("read");
        }
    }
}

/* the length of the whole frame at buf[start], 0 if not all of it is there */
static size_t whole_frame(void)
{
    DQHeader *h = (DQHeader *)(buf + start);

    if (end - start < sizeof(DQHeader)) {
        return 0;
    }
    if (h->magic != DQ_MAGIC) {
        fprintf(stderr, "shard_pingpong: bad frame magic\n");
        exit(1);
    }
    return end - start >= sizeof(DQHeader) + h->length ?
           sizeof(DQHeader) + h->length : 0;
}

/* the next whole frame (its header), reading as needed */
static DQHeader *next_frame(int fd)
{
    size_t n;
    DQHeader *h;

    while (!(n = whole_frame())) {
        fill(fd);
    }
    h = (DQHeader *)(buf + start);
    start += n;
    return h;
}

static void header(DQHeader *h, uint8_t type, uint16_t flags, uint16_t src,
                   uint16_t dst, uint32_t len, uint64_t rid)
{
    memset(h, 0, sizeof(*h));
    h->magic = DQ_MAGIC;
    h->version = DQ_VERSION;
    h->type = type;
    h->flags = flags;
    h->src = src;
    h->dst = dst;
    h->length = len;
    h->request_id = rid;
}

static int do_register(const char *path, uint16_t shard)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct {
        DQHeader h;
        DQMsgRegister r;
    } f;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);

    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
        die(path);
    }
    header(&f.h, DQ_MSG_REGISTER, DQ_FLAG_WANT_REPLY, shard, DQ_DST_ROUTER,
           sizeof(f.r), 1);
    memset(&f.r, 0, sizeof(f.r));
    f.r.shard_id = shard;
    f.r.pid = (uint32_t)getpid();
    send_all(fd, &f, sizeof(f));
    for (;;) {
        DQHeader *h = next_frame(fd);

        if ((h->flags & DQ_FLAG_REPLY) && h->request_id == 1) {
            if (h->flags & DQ_FLAG_ERROR) {
                fprintf(stderr, "shard_pingpong: register refused\n");
                exit(1);
            }
            return fd;
        }
    }
}

static void echo(int fd)
{
    for (;;) {
        size_t from;

        while (!whole_frame()) {
            fill(fd);
        }
        /* answer what came in together with one write, as the Python echo */
        from = start;
        while (whole_frame()) {
            DQHeader *h = next_frame(fd);

            if (h->flags & DQ_FLAG_WANT_REPLY) {
                uint16_t s = h->src;

                h->type = DQ_MSG_PIO_REPLY;
                h->flags = DQ_FLAG_REPLY;
                h->src = h->dst;
                h->dst = s;
            }
        }
        send_all(fd, buf + from, start - from);
    }
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static void client(int fd, uint16_t shard, uint16_t dst, int iters)
{
    struct {
        DQHeader h;
        DQMsgPioReq r;
    } f;
    double *lat = calloc((size_t)iters, sizeof(double));
    uint64_t rid = 10;

    memset(&f.r, 0, sizeof(f.r));
    f.r.port = 0x3F8;
    f.r.size = 1;
    for (int i = -iters / 10; i < iters; i++) {
        struct timespec t0, t1;
        DQHeader *h;

        header(&f.h, DQ_MSG_PIO_REQ, DQ_FLAG_WANT_REPLY, shard, dst,
               sizeof(f.r), ++rid);
        clock_gettime(CLOCK_MONOTONIC, &t0);
        send_all(fd, &f, sizeof(f));
        do {
            h = next_frame(fd);
        } while (!((h->flags & DQ_FLAG_REPLY) && h->request_id == rid));
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (h->flags & DQ_FLAG_ERROR) {
            fprintf(stderr, "shard_pingpong: request %d answered by an "
                    "error\n", i);
            exit(1);
        }
        if (i >= 0) {
            lat[i] = (t1.tv_sec - t0.tv_sec) * 1e6 +
                     (t1.tv_nsec - t0.tv_nsec) / 1e3;
        }
    }
    qsort(lat, (size_t)iters, sizeof(double), cmp);
    printf("p50_us=%.2f p99_us=%.2f\n", lat[iters / 2], lat[iters * 99 / 100]);
}

int main(int argc, char **argv)
{
    int fd;

    if (argc < 4 || (strcmp(argv[1], "echo") && argc < 6)) {
        fprintf(stderr, "usage: %s echo SOCK SHARD [spin] | "
                "client SOCK SHARD DST ITERS [spin]\n", argv[0]);
        return 2;
    }
    spin = strcmp(argv[argc - 1], "spin") == 0;
    fd = do_register(argv[2], (uint16_t)atoi(argv[3]));
    if (strcmp(argv[1], "echo") == 0) {
        printf("ready\n");
        fflush(stdout);
        echo(fd);
        return 0;
    }
    client(fd, (uint16_t)atoi(argv[3]), (uint16_t)atoi(argv[4]),
           atoi(argv[5]));
    return 0;
}
