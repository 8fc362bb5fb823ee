/*
 * Raw TCP ping-pong for bench/router_latency.py: the floor the router is compared with.
 *
 *   pingpong server IP PORT SIZE [spin]
 *   pingpong client IP PORT SIZE ITERS [spin]   -> prints "p50_us=X p99_us=Y"
 *
 * "spin" makes that side busy-poll its reads (non-blocking recv in a loop)
 * instead of sleeping in read(): it shows what waking a sleeping (halted) CPU
 * costs.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static int spin;

static void xfer(int fd, char *buf, size_t n, int rd)
{
    size_t done = 0;
    while (done < n) {
        ssize_t k;
        if (rd && spin) {
            k = recv(fd, buf + done, n - done, MSG_DONTWAIT);
            if (k < 0 && errno == EAGAIN) {
                continue;
            }
        } else {
            k = rd ? read(fd, buf + done, n - done)
                   : write(fd, buf + done, n - done);
        }
        if (k <= 0) {
            if (rd && k == 0) {
                exit(0);
            }
            die(rd ? "read" : "write");
        }
        done += (size_t)k;
    }
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s server|client IP PORT SIZE [ITERS] [spin]\n",
                argv[0]);
        return 2;
    }
    int server = strcmp(argv[1], "server") == 0;
    spin = strcmp(argv[argc - 1], "spin") == 0;
    size_t size = (size_t)atoi(argv[4]);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[3])) };
    inet_pton(AF_INET, argv[2], &sa.sin_addr);
    char *buf = calloc(1, size);
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (server) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 1)) {
            die("bind/listen");
        }
        printf("ready\n");
        fflush(stdout);
        int c = accept(fd, NULL, NULL);
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        for (;;) {
            xfer(c, buf, size, 1);
            xfer(c, buf, size, 0);
        }
    }
    int iters = argc > 5 && strcmp(argv[5], "spin") ? atoi(argv[5]) : 10000;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
        die("connect");
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    double *lat = calloc((size_t)iters, sizeof(double));
    for (int i = -iters / 10; i < iters; i++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        xfer(fd, buf, size, 0);
        xfer(fd, buf, size, 1);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (i >= 0) {
            lat[i] = (t1.tv_sec - t0.tv_sec) * 1e6 + (t1.tv_nsec - t0.tv_nsec) / 1e3;
        }
    }
    qsort(lat, (size_t)iters, sizeof(double), cmp);
    printf("p50_us=%.2f p99_us=%.2f\n", lat[iters / 2], lat[iters * 99 / 100]);
    return 0;
}
