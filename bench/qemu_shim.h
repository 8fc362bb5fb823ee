/*
 * The few QEMU utilities that the series' hw/dqemu/rdma.c uses, for the
 * benches that build it outside QEMU (tests/support/proto_header.py,
 * write_rdma_sources): bench/shard_pingpong.c then runs the shards' own
 * RDMA link, not a copy of it. Only what rdma.c calls is here.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef DQ_QEMU_SHIM_H
#define DQ_QEMU_SHIM_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <glib.h>
#include <glib-unix.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef ARRAY_SIZE
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#endif

typedef struct Error {
    char *msg;
} Error;

static inline void shim_error_vset(Error **errp, int err, const char *fmt,
                                   va_list ap)
{
    char *msg = g_strdup_vprintf(fmt, ap);

    if (err) {
        char *full = g_strdup_printf("%s: %s", msg, strerror(err));

        g_free(msg);
        msg = full;
    }
    *errp = g_new0(Error, 1);
    (*errp)->msg = msg;
}

static inline void shim_error_set(Error **errp, int err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    shim_error_vset(errp, err, fmt, ap);
    va_end(ap);
}

#define error_setg(errp, ...) shim_error_set(errp, 0, __VA_ARGS__)
#define error_setg_errno(errp, err, ...) shim_error_set(errp, err, __VA_ARGS__)

static inline void error_prepend(Error **errp, const char *fmt, ...)
{
    va_list ap;
    char *pre;
    char *msg;

    va_start(ap, fmt);
    pre = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    msg = g_strconcat(pre, (*errp)->msg, NULL);
    g_free(pre);
    g_free((*errp)->msg);
    (*errp)->msg = msg;
}

typedef pthread_mutex_t QemuMutex;
#define qemu_mutex_init(m) pthread_mutex_init((m), NULL)
#define qemu_mutex_destroy(m) pthread_mutex_destroy(m)
#define qemu_mutex_lock(m) pthread_mutex_lock(m)
#define qemu_mutex_unlock(m) pthread_mutex_unlock(m)

#define QEMU_CLOCK_REALTIME 0
static inline int64_t qemu_clock_get_ms(int clock)
{
    struct timespec ts;

    (void)clock;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline uint32_t ldl_le_p(const void *p)
{
    uint32_t v;

    memcpy(&v, p, 4);
    return le32toh(v);
}

static inline uint16_t lduw_le_p(const void *p)
{
    uint16_t v;

    memcpy(&v, p, 2);
    return le16toh(v);
}

static inline void stl_le_p(void *p, uint32_t v)
{
    v = htole32(v);
    memcpy(p, &v, 4);
}

static inline void stw_le_p(void *p, uint16_t v)
{
    v = htole16(v);
    memcpy(p, &v, 2);
}

static inline void pstrcpy(char *buf, int size, const char *s)
{
    snprintf(buf, size, "%s", s);
}

static inline size_t qemu_real_host_page_size(void)
{
    return (size_t)sysconf(_SC_PAGESIZE);
}

static inline void *qemu_memalign(size_t align, size_t size)
{
    void *p;

    if (posix_memalign(&p, align, size)) {
        abort();
    }
    return p;
}

static inline void qemu_vfree(void *p)
{
    free(p);
}

static inline ssize_t qemu_write_full(int fd, const void *buf, size_t n)
{
    const uint8_t *b = buf;
    size_t done = 0;

    while (done < n) {
        ssize_t k = write(fd, b + done, n - done);

        if (k < 0 && errno == EINTR) {
            continue;
        }
        if (k <= 0) {
            break;
        }
        done += (size_t)k;
    }
    return (ssize_t)done;
}

#endif
