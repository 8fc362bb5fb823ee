/*
 * A shard's side of the router round trip, in C, for bench/router_latency.py:
 * what really talks to a router is a C program (QEMU), so the router round trip
 * is measured between two C ends, and the figure is the routers' and their
 * link's, not a Python client's.
 *
 *   shard_pingpong echo SOCK SHARD [spin] [direct[=DEV]]
 *       registers as SHARD on the router's UNIX socket SOCK, prints "ready",
 *       answers every request by rewriting its header (PIO_REQ -> PIO_REPLY)
 *       and drops every other frame
 *   shard_pingpong client SOCK SHARD DST [spin] [direct[=DEV]]
 *       registers, prints "ready"; then for each count N read from stdin
 *       sends N PIO_REQs to shard DST one at a time, each waiting for its
 *       reply, and prints their latencies (microseconds) on one line
 *
 * "spin" busy-polls reads (non-blocking recv in a loop) instead of sleeping.
 * "direct" registers for direct shard links (routers with data_path
 * "direct", docs/protocol.md) and, once the router hands over the link to the
 * peer, sends and reads the frames on it: on the socket (DQ_FD_DIRECT), or
 * on the RDMA queue pair set up over it (DQ_FD_DIRECT_RDMA) on device DEV
 * (default: the first with port 1 active), always busy-polled (so give the
 * two ends a CPU each), with the series' own hw/dqemu/rdma.c (built in with
 * -DDQ_BENCH_RDMA).
 * The frame layout is the QEMU series' own header (hw/dqemu/proto.h, taken out
 * of qemu-patches/0002 by the bench when it compiles this file).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "hw/dqemu/proto.h"
#ifdef DQ_BENCH_RDMA
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "hw/dqemu/rdma.h"
#endif

#define BUFSZ (1 << 20)

static int spin;
/* "direct": the link to the peer (its socket), and its queue pair if RDMA */
static int direct = -1;
static const char *rdma_dev = "";
#ifdef DQ_BENCH_RDMA
static DQemuRdma *rdma;
#endif
/* descriptors that came with the router's frames, for its SHARD_FDs */
static int fds[16];
static int nfds;
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

#ifdef DQ_BENCH_RDMA
    if (rdma && fd == direct) {
        const char *why;

        if (!dqemu_rdma_write(rdma, p, n, &why)) {
            fprintf(stderr, "shard_pingpong: RDMA link: %s\n", why);
            exit(1);
        }
        return;
    }
#endif

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
#ifdef DQ_BENCH_RDMA
    /*
     * Busy-poll, and after 1 ms without a frame sleep on the completion
     * channel, as a shard's receive thread does: an idle echo must not
     * spin beside the verbs round trips measured between the blocks.
     */
    for (struct timespec last = { 0 }; rdma;) {
        struct pollfd pfd = { .fd = dqemu_rdma_channel_fd(rdma), .events = POLLIN };
        struct timespec now;
        const char *why;
        size_t n;

        clock_gettime(CLOCK_MONOTONIC, &now);
        if (!last.tv_sec) {
            last = now;
        } else if ((now.tv_sec - last.tv_sec) * 1000000000L +
                   (now.tv_nsec - last.tv_nsec) > 1000000L) {
            poll(&pfd, 1, 100);
            /* take the event and rearm; the fill below sees what came */
            dqemu_rdma_event(rdma);
            last = now;
        }
        if (!dqemu_rdma_fill(rdma, &why)) {
            fprintf(stderr, "shard_pingpong: RDMA link: %s\n", why);
            exit(1);
        }
        n = dqemu_rdma_peek(rdma, buf + end, BUFSZ - end);
        if (n) {
            n = n < BUFSZ - end ? n : BUFSZ - end;
            dqemu_rdma_take(rdma, NULL, n);
            end += n;
            return;
        }
    }
#endif
    for (;;) {
        union {
            struct cmsghdr h;
            char b[CMSG_SPACE(4 * sizeof(int))];
        } ctl;
        struct iovec iov = { .iov_base = buf + end, .iov_len = BUFSZ - end };
        struct msghdr mh = {
            .msg_iov = &iov, .msg_iovlen = 1,
            .msg_control = ctl.b, .msg_controllen = sizeof(ctl.b),
        };
        struct cmsghdr *c;

        /* a router's SHARD_FD carries a descriptor: keep them, in order */
        k = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | (spin ? MSG_DONTWAIT : 0));
        for (c = CMSG_FIRSTHDR(&mh); k > 0 && c; c = CMSG_NXTHDR(&mh, c)) {
            int *in = (int *)CMSG_DATA(c);
            size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);

            for (size_t i = 0; c->cmsg_type == SCM_RIGHTS && i < n; i++) {
                if (nfds == (int)(sizeof(fds) / sizeof(fds[0]))) {
                    fprintf(stderr, "shard_pingpong: too many descriptors\n");
                    exit(1);
                }
                fds[nfds++] = in[i];
            }
        }
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
    f.r.features = direct == -2 ? DQ_FEAT_DIRECT : 0;
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
 * "direct": wait for the router's SHARD_FD of the link to @peer (-1: any),
 * set the link up (in "direct") and tell the peer (DIRECT_UP, through the
 * router). The stats page (DQ_FD_STATS) is not used here.
 */
static void take_direct(int rfd, uint16_t self, int peer)
{
    struct {
        DQHeader h;
        DQMsgDirectUp u;
    } up;

    for (;;) {
        DQHeader *h = next_frame(rfd);
        DQMsgShardFd *m = (DQMsgShardFd *)(h + 1);
        int fd;

        if (h->type != DQ_MSG_SHARD_FD || h->flags & DQ_FLAG_ERROR) {
            continue;
        }
        /* each SHARD_FD carries one descriptor, in order */
        fd = nfds ? fds[0] : -1;
        if (nfds) {
            memmove(fds, fds + 1, --nfds * sizeof(int));
        }
        if (fd < 0) {
            fprintf(stderr, "shard_pingpong: SHARD_FD without a descriptor\n");
            exit(1);
        }
        if (m->kind == DQ_FD_STATS ||
            (peer >= 0 && m->peer_shard != (uint16_t)peer)) {
            close(fd);
            continue;
        }
        direct = fd;
        peer = m->peer_shard;
        if (m->kind == DQ_FD_DIRECT_RDMA) {
#ifdef DQ_BENCH_RDMA
            Error *err = NULL;

            /* TCG inside TCG: the peer's set-up may take long */
            rdma = dqemu_rdma_connect(fd, rdma_dev, 1, 0, 120000, &err);
            if (!rdma) {
                fprintf(stderr, "shard_pingpong: %s\n", err->msg);
                exit(1);
            }
#else
            fprintf(stderr, "shard_pingpong: an RDMA link, but built "
                    "without -DDQ_BENCH_RDMA\n");
            exit(1);
#endif
        }
        header(&up.h, DQ_MSG_DIRECT_UP, 0, self, (uint16_t)peer,
               sizeof(up.u), 0);
        memset(&up.u, 0, sizeof(up.u));
        up.u.shard_id = self;
        send_all(rfd, &up, sizeof(up));
        return;
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
        fprintf(stderr, "usage: %s echo SOCK SHARD [spin] [direct[=DEV]] | "
                "client SOCK SHARD DST [spin] [direct[=DEV]]\n", argv[0]);
        return 2;
    }
    for (int i = strcmp(argv[1], "echo") ? 5 : 4; i < argc; i++) {
        if (!strcmp(argv[i], "spin")) {
            spin = 1;
        } else if (!strncmp(argv[i], "direct", 6) &&
                   (!argv[i][6] || argv[i][6] == '=')) {
            direct = -2; /* wanted, not there yet */
            rdma_dev = argv[i][6] ? argv[i] + 7 : "";
        } else {
            fprintf(stderr, "shard_pingpong: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    fd = do_register(argv[2], (uint16_t)atoi(argv[3]));
    if (direct == -2) {
        int peer = strcmp(argv[1], "echo") ? atoi(argv[4]) : -1;

        take_direct(fd, (uint16_t)atoi(argv[3]), peer);
        /* from here on, frames come and go on the link */
        start = end = 0;
        fd = direct;
    }
    if (strcmp(argv[1], "echo") == 0) {
        printf("ready\n");
        fflush(stdout);
        echo(fd);
        return 0;
    }
    client(fd, (uint16_t)atoi(argv[3]), (uint16_t)atoi(argv[4]));
    return 0;
}
