/*
 * A shard's side of the router round trip, in C, for bench/router_latency.py:
 * what really talks to a router is a C program (QEMU), so the router round trip
 * is measured between two C ends, and the figure is the routers' and their
 * link's, not a Python client's.
 *
 *   shard_pingpong echo SOCK SHARD [spin]
 *       registers as SHARD on the router's UNIX socket SOCK, prints "ready",
 *       answers every request by rewriting its header (PIO_REQ -> PIO_REPLY)
 *       and drops every other frame
 *   shard_pingpong client SOCK SHARD DST [spin]
 *       registers, prints "ready"; then for each count N read from stdin
 *       sends N PIO_REQs to shard DST one at a time, each waiting for its
 *       reply, and prints their latencies (microseconds) on one line
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

/*
 * Answer what came in together with one write, as the Python echo. Only
 * requests are answered; anything else (the router's LINK_STATE UP, sent to
 * this shard with dst = its own id) is dropped, as a real shard does: sent
 * back, it would come straight back from the router (a frame from a shard
 * to its own id is delivered to that shard), and bounce between the two for
 * ever, keeping the router and the echo busy under every round trip.
 */
static void echo(int fd)
{
    static uint8_t out[BUFSZ];

    for (;;) {
        size_t n = 0;

        while (!whole_frame()) {
            fill(fd);
        }
        while (whole_frame()) {
            size_t from = start;
            DQHeader *h = next_frame(fd);

            if (h->flags & DQ_FLAG_WANT_REPLY) {
                uint16_t s = h->src;

                h->type = DQ_MSG_PIO_REPLY;
                h->flags = DQ_FLAG_REPLY;
                h->src = h->dst;
                h->dst = s;
                memcpy(out + n, buf + from, start - from);
                n += start - from;
            }
        }
        if (n) {
            send_all(fd, out, n);
        }
    }
}

/* one round trip of request ``rid``: its latency in microseconds */
static double round_trip(int fd, void *f, size_t len, uint64_t rid)
{
    struct timespec t0, t1;
    DQHeader *h;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    send_all(fd, f, len);
    do {
        h = next_frame(fd);
    } while (!((h->flags & DQ_FLAG_REPLY) && h->request_id == rid));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (h->flags & DQ_FLAG_ERROR) {
        fprintf(stderr, "shard_pingpong: request %llu answered by an error\n",
                (unsigned long long)rid);
        exit(1);
    }
    return (t1.tv_sec - t0.tv_sec) * 1e6 + (t1.tv_nsec - t0.tv_nsec) / 1e3;
}

/* per line of stdin, a count: that many round trips, their latencies */
static void client(int fd, uint16_t shard, uint16_t dst)
{
    struct {
        DQHeader h;
        DQMsgPioReq r;
    } f;
    uint64_t rid = 10;
    int n;

    memset(&f.r, 0, sizeof(f.r));
    f.r.port = 0x3F8;
    f.r.size = 1;
    printf("ready\n");
    fflush(stdout);
    while (scanf("%d", &n) == 1) {
        for (int i = 0; i < n; i++) {
            header(&f.h, DQ_MSG_PIO_REQ, DQ_FLAG_WANT_REPLY, shard, dst,
                   sizeof(f.r), ++rid);
            printf("%s%.2f", i ? " " : "", round_trip(fd, &f, sizeof(f), rid));
        }
        printf("\n");
        fflush(stdout);
    }
}

int main(int argc, char **argv)
{
    int fd;

    if (argc < 4 || (strcmp(argv[1], "echo") && argc < 5)) {
        fprintf(stderr, "usage: %s echo SOCK SHARD [spin] | "
                "client SOCK SHARD DST [spin]\n", argv[0]);
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
    client(fd, (uint16_t)atoi(argv[3]), (uint16_t)atoi(argv[4]));
    return 0;
}
