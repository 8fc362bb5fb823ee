/*
 * dQEMU router data path in C: the per-frame hot path of cluster/router.
 *
 * One Engine per router. Its run() method is called by the data loop's thread
 * (cluster/router/dataloop.py); it drops the GIL and stays in C, serving every
 * link from one epoll set: it reads into a preallocated per-link buffer,
 * checks each frame header (the same rules as protocol.header_error), routes
 * the frame by its dst field to a link and appends it to that link's output
 * buffer, which is sent with one non-blocking send() per link after each read.
 * What a socket does not take stays queued and is sent when epoll reports the
 * socket writable. Per-link, per-type counters, the table of requests pending
 * on each link and the request latency histogram live here too.
 *
 * Anything that needs Python is queued as an event and run() returns the
 * queue: frames addressed to the router (DST_ROUTER), frames that cannot be
 * delivered (Python writes the error reply and the log line), protocol errors
 * (Python names the problem, logs it and closes the link) and lost links.
 *
 * Other threads call send/close/... with the GIL held; a mutex serialises
 * them with the loop, which holds it only while it handles ready sockets,
 * never while it waits, and never takes the GIL while holding it.
 *
 * After traffic the loop busy-polls (epoll_wait with a zero timeout and
 * sched_yield) for an adaptive window, with the CPU time spent spinning
 * capped per 100 ms; see the "Data path" notes in docs/protocol.md.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* wire constants (docs/protocol.md); tests compare them with protocol.py */
#define DQ_MAGIC 0x554D5144u
#define DQ_VERSION 1
#define DQ_HEADER_SIZE 24
#define DQ_MAX_PAYLOAD 65536
#define DQ_FLAG_REPLY 0x1
#define DQ_FLAG_ERROR 0x2
#define DQ_FLAG_WANT_REPLY 0x4
#define DQ_FLAGS_VALID 0x7
#define DQ_DST_BROADCAST 0xFFFF
#define DQ_DST_ROUTER 0xFFFE
#define DQ_MSG_ERROR 0x06

#ifndef DQ_SOURCE_HASH
#define DQ_SOURCE_HASH "unknown" /* setup.py passes a hash of this file */
#endif

#define MAX_FRAME (DQ_HEADER_SIZE + DQ_MAX_PAYLOAD)
#define RBUF_SIZE (256 * 1024 + MAX_FRAME)
#define MAX_LINKS 1024
#define NBUCKETS (42 * 8)
#define EPOCH_NS 100000000LL /* the spin CPU cap applies per 100 ms */
#define WAKE_TAG UINT64_MAX

/* events handed to Python */
enum {
    EV_ROUTER = 1,      /* (EV_ROUTER, handle, frame bytes) */
    EV_UNDELIVERABLE,   /* (.., handle, why, type, flags, src, dst, rid) */
    EV_PROTOCOL,        /* (.., handle, kind, header bytes, count) */
    EV_DOWN,            /* (.., handle, reason) */
};

/* why a frame is undeliverable */
enum {
    UD_NO_ROUTE = 1,    /* from the local shard: dst is not a connected peer */
    UD_BCAST_REPLY,     /* a broadcast that wants a reply */
    UD_NO_LOCAL,        /* from a peer: our shard is not connected */
    UD_MISROUTED,       /* from a peer: dst is neither us nor broadcast */
};

/* kinds of protocol error */
enum {
    PE_HEADER = 1,      /* invalid header (Python's header_error names it) */
    PE_SPOOFED,         /* src is not the shard at the far end */
    PE_TRUNCATED,       /* stream ended inside a frame; count = bytes held */
};

typedef struct {
    uint64_t rx_msgs[256], rx_bytes[256], tx_msgs[256], tx_bytes[256];
    uint64_t hist[NBUCKETS];
    uint64_t hcount, hsum, hmax;
} Counters;

typedef struct {
    uint64_t rid;
    int64_t t0;
    uint16_t src;
    uint8_t type;
    uint8_t used;
} Pend;

typedef struct {
    Pend *tab;
    size_t cap, n;
} PendTab;

typedef struct Engine Engine;
typedef struct RdmaLink RdmaLink; /* _rdma.c */

/*
 * What differs between kinds of link: how bytes are read in, how the queued
 * bytes go out, what closing does to the transport. Framing, routing,
 * counters and pending requests are shared (route_frames, queue_frame).
 */
typedef struct {
    void (*read)(Engine *e, int slot);
    int (*send)(Engine *e, int slot); /* 0 ok (maybe partial), -1 closed */
    void (*close)(Engine *e, int slot);
} LinkOps;

typedef struct {
    int used, started, registered, closed, rx_dead, out_armed, dirty, local;
    int tx_dead; /* the peer is gone, its last frames unread: see tx_gone() */
    int fd, peer_id;
    const LinkOps *ops;
    RdmaLink *rdma; /* an RDMA link (_rdma.c), else NULL */
    uint32_t gen;
    uint8_t *rbuf;
    size_t rs, re;
    uint8_t *ob;
    size_t oh, ot, ocap;
    int64_t last_rx;
    PendTab pend;
    Counters c;
    char reason[256];
} Link;

typedef struct {
    int kind;
    uint32_t handle;
    int a;
    uint8_t hdr[DQ_HEADER_SIZE];
    uint64_t n;
    uint8_t *data; /* EV_ROUTER: the frame; EV_DOWN: the reason (NUL ended) */
    size_t len;
} Event;

struct Engine {
    PyObject_HEAD
    pthread_mutex_t mu;
    int nrdma; /* RDMA links being served: their CQs are polled while spinning */
    int ep, evfd;
    int own;
    uint32_t lo[256], hi[256];
    Link *links[MAX_LINKS];
    int16_t *route; /* shard id -> slot of its peer link, or -1 */
    int local_slot;
    int peers[MAX_LINKS];
    int npeers;
    int dirty[MAX_LINKS];
    int ndirty;
    Event *q;
    size_t qn, qcap;
    int stopping, running;
    /* busy poll */
    int64_t w_max, w_min, w, cap;
    int64_t epoch_end, epoch_spin, spin_until, missed_at;
    int64_t spin_from_cpu; /* this thread's CPU time when the spin began */
    int64_t spun;          /* CPU spent in this spin, updated every 8 rounds */
    unsigned spin_rounds;
    int64_t spin_ns;
    uint64_t hits, misses, cap_stops;
    double cpu_share;
};

static int64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/*
 * CPU time of the calling thread: the spin cap counts the CPU that spinning
 * costs, not the time that sched_yield() gave to other tasks.
 */
static int64_t thread_cpu_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline uint32_t rd32(const uint8_t *p)
{
    uint32_t v;

    memcpy(&v, p, 4);
    return v; /* little-endian host (x86-64) */
}

static inline uint16_t rd16(const uint8_t *p)
{
    uint16_t v;

    memcpy(&v, p, 2);
    return v;
}

static inline uint64_t rd64(const uint8_t *p)
{
    uint64_t v;

    memcpy(&v, p, 8);
    return v;
}

/* log-linear bucket of a nanosecond value: 8 sub-buckets per power of two */
static inline int bucket_of(uint64_t v)
{
    int e, idx;

    if (v < 8) {
        return (int)v;
    }
    e = 64 - __builtin_clzll(v);
    idx = (e - 3) * 8 + (int)((v >> (e - 4)) & 7);
    return idx < NBUCKETS ? idx : NBUCKETS - 1;
}

static void record(Counters *c, int64_t ns)
{
    uint64_t v = ns < 0 ? 0 : (uint64_t)ns;

    c->hist[bucket_of(v)]++;
    c->hcount++;
    c->hsum += v;
    if (v > c->hmax) {
        c->hmax = v;
    }
}

/* --- header check: true iff protocol.header_error() returns None ------- */

static int header_ok(const Engine *e, uint32_t magic, unsigned ver, unsigned t,
                     unsigned flags, uint32_t len, uint64_t rid)
{
    if (magic != DQ_MAGIC || ver != DQ_VERSION || (flags & ~DQ_FLAGS_VALID)) {
        return 0;
    }
    if (e->lo[t] > e->hi[t] || len > DQ_MAX_PAYLOAD) {
        return 0;
    }
    if ((flags & DQ_FLAG_REPLY) && (flags & DQ_FLAG_WANT_REPLY)) {
        return 0;
    }
    if ((flags & (DQ_FLAG_REPLY | DQ_FLAG_WANT_REPLY)) && rid == 0) {
        return 0;
    }
    if (t == DQ_MSG_ERROR && !(flags & DQ_FLAG_ERROR)) {
        return 0;
    }
    if (flags & DQ_FLAG_ERROR) {
        return e->lo[DQ_MSG_ERROR] <= len && len <= e->hi[DQ_MSG_ERROR];
    }
    return e->lo[t] <= len && len <= e->hi[t];
}

/* --- pending requests: open addressing, linear probing ----------------- */

static size_t pend_hash(uint16_t src, uint64_t rid, size_t mask)
{
    uint64_t h = (rid ^ ((uint64_t)src << 48)) * 0x9E3779B97F4A7C15ull;

    return (size_t)(h >> 20) & mask;
}

static int pend_grow(PendTab *pt)
{
    size_t ncap = pt->cap ? pt->cap * 2 : 64;
    Pend *nt = calloc(ncap, sizeof(Pend));
    size_t i, j;

    if (!nt) {
        return -1;
    }
    for (i = 0; i < pt->cap; i++) {
        Pend *o = &pt->tab[i];

        if (!o->used) {
            continue;
        }
        j = pend_hash(o->src, o->rid, ncap - 1);
        while (nt[j].used) {
            j = (j + 1) & (ncap - 1);
        }
        nt[j] = *o;
    }
    free(pt->tab);
    pt->tab = nt;
    pt->cap = ncap;
    return 0;
}

static void pend_put(PendTab *pt, uint16_t src, uint64_t rid, int64_t t0,
                     uint8_t type)
{
    size_t i;

    if ((pt->n + 1) * 2 > pt->cap && pend_grow(pt) < 0) {
        return; /* out of memory: the request just goes unmeasured */
    }
    i = pend_hash(src, rid, pt->cap - 1);
    while (pt->tab[i].used) {
        if (pt->tab[i].src == src && pt->tab[i].rid == rid) {
            break;
        }
        i = (i + 1) & (pt->cap - 1);
    }
    if (!pt->tab[i].used) {
        pt->n++;
    }
    pt->tab[i] = (Pend){
        .rid = rid, .t0 = t0, .src = src, .type = type, .used = 1
    };
}

static int pend_pop(PendTab *pt, uint16_t src, uint64_t rid, int64_t *t0)
{
    size_t mask, i, j, k;

    if (!pt->n) {
        return 0;
    }
    mask = pt->cap - 1;
    i = pend_hash(src, rid, mask);
    while (pt->tab[i].used) {
        if (pt->tab[i].src == src && pt->tab[i].rid == rid) {
            break;
        }
        i = (i + 1) & mask;
    }
    if (!pt->tab[i].used) {
        return 0;
    }
    *t0 = pt->tab[i].t0;
    pt->tab[i].used = 0;
    pt->n--;
    /* backward-shift deletion keeps every probe chain unbroken */
    j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!pt->tab[j].used) {
            break;
        }
        k = pend_hash(pt->tab[j].src, pt->tab[j].rid, mask);
        if ((j > i && (k <= i || k > j)) || (j < i && (k <= i && k > j))) {
            pt->tab[i] = pt->tab[j];
            pt->tab[j].used = 0;
            i = j;
        }
    }
    return 1;
}

/* --- events ------------------------------------------------------------ */

static Event *push_event(Engine *e, int kind, uint32_t handle)
{
    Event *ev;

    if (e->qn == e->qcap) {
        size_t ncap = e->qcap ? e->qcap * 2 : 64;
        Event *nq = realloc(e->q, ncap * sizeof(Event));

        if (!nq) {
            return NULL;
        }
        e->q = nq;
        e->qcap = ncap;
    }
    ev = &e->q[e->qn++];
    memset(ev, 0, sizeof(*ev));
    ev->kind = kind;
    ev->handle = handle;
    return ev;
}

static void wake(Engine *e)
{
    uint64_t one = 1;
    ssize_t r = write(e->evfd, &one, sizeof(one));

    (void)r;
}

/* --- links ------------------------------------------------------------- */

static inline uint32_t handle_of(int slot, const Link *l)
{
    return (l->gen << 16) | (uint32_t)slot;
}

static Link *lookup(Engine *e, unsigned long h, int *slot)
{
    unsigned long s = h & 0xFFFF;
    Link *l;

    if (s >= MAX_LINKS) {
        return NULL;
    }
    l = e->links[s];
    if (!l || !l->used || l->gen != (uint32_t)(h >> 16)) {
        return NULL;
    }
    if (slot) {
        *slot = (int)s;
    }
    return l;
}

static void unroute(Engine *e, int slot)
{
    Link *l = e->links[slot];
    int i;

    if (l->local) {
        if (e->local_slot == slot) {
            e->local_slot = -1;
        }
        return;
    }
    if (e->route[l->peer_id] == slot) {
        e->route[l->peer_id] = -1;
    }
    for (i = 0; i < e->npeers; i++) {
        if (e->peers[i] == slot) {
            e->peers[i] = e->peers[--e->npeers];
            break;
        }
    }
}

static void set_events(Engine *e, int slot)
{
    Link *l = e->links[slot];
    struct epoll_event ev = { 0 };

    if (l->closed || !l->registered) {
        return; /* start() registers it with the events wanted by then */
    }
    ev.events = (l->started && !l->rx_dead ? EPOLLIN | EPOLLRDHUP : 0) |
                (l->out_armed ? EPOLLOUT : 0);
    ev.data.u64 = handle_of(slot, l);
    epoll_ctl(e->ep, EPOLL_CTL_MOD, l->fd, &ev);
}

/*
 * Close a link (idempotent): unroute it, stop polling it, shut the socket
 * down and queue EV_DOWN. The fd itself is Python's to close after release().
 */
static int close_link(Engine *e, int slot, const char *reason)
{
    Link *l = e->links[slot];
    Event *ev;
    size_t n;

    if (l->closed) {
        return 0;
    }
    l->closed = 1;
    snprintf(l->reason, sizeof(l->reason), "%s", reason);
    unroute(e, slot);
    if (l->registered) {
        epoll_ctl(e->ep, EPOLL_CTL_DEL, l->fd, NULL);
        l->registered = 0;
    }
    l->ops->close(e, slot);
    l->oh = l->ot = 0;
    ev = push_event(e, EV_DOWN, handle_of(slot, l));
    if (ev) {
        n = strlen(l->reason);
        ev->data = malloc(n + 1);
        if (ev->data) {
            memcpy(ev->data, l->reason, n + 1);
            ev->len = n;
        }
    }
    return 1;
}

static void close_errno(Engine *e, int slot, const char *what, int err)
{
    char buf[200];

    snprintf(buf, sizeof(buf), "%s: %s", what, strerror(err));
    close_link(e, slot, buf);
}

static void arm_out(Engine *e, int slot, int on)
{
    Link *l = e->links[slot];

    if (l->out_armed != on) {
        l->out_armed = on;
        set_events(e, slot);
    }
}

/* send what is queued; 0 ok (maybe partial), -1 the link closed */
static int flush(Engine *e, int slot)
{
    Link *l = e->links[slot];

    l->dirty = 0;
    if (l->closed) {
        return -1;
    }
    if (!l->started) {
        return 0; /* held until start(): see Engine_start */
    }
    return l->ops->send(e, slot);
}

/*
 * A send found the peer gone (EPIPE, ECONNRESET), but what it sent before it
 * went may still be unread here: a shard sends its router COMMAND QUIT just
 * before it exits (docs/protocol.md, "Liveness"). So the link is not closed
 * yet: what is queued for it is dropped, and the read side closes it once it
 * has read everything (end of stream, or the receive error).
 */
static void tx_gone(Engine *e, int slot)
{
    Link *l = e->links[slot];

    l->tx_dead = 1;
    l->oh = l->ot = 0;
    arm_out(e, slot, 0);
}

/* a stream socket's send: what the socket takes now, the rest on EPOLLOUT */
static int stream_send(Engine *e, int slot)
{
    Link *l = e->links[slot];
    ssize_t n;

    if (l->tx_dead) {
        l->oh = l->ot = 0;
        return 0;
    }
    while (l->ot > l->oh) {
        n = send(l->fd, l->ob + l->oh, l->ot - l->oh,
                 MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                arm_out(e, slot, 1);
                return 0;
            }
            if ((errno == EPIPE || errno == ECONNRESET) && !l->rx_dead) {
                tx_gone(e, slot);
                return 0;
            }
            close_errno(e, slot, "send failed", errno);
            return -1;
        }
        l->oh += (size_t)n;
    }
    l->oh = l->ot = 0;
    arm_out(e, slot, 0);
    return 0;
}

static int reserve_out(Link *l, size_t n)
{
    if (l->ocap - l->ot >= n) {
        return 0;
    }
    if (l->oh) {
        memmove(l->ob, l->ob + l->oh, l->ot - l->oh);
        l->ot -= l->oh;
        l->oh = 0;
        if (l->ocap - l->ot >= n) {
            return 0;
        }
    }
    {
        size_t ncap = l->ocap ? l->ocap : 65536;
        uint8_t *nb;

        while (ncap - l->ot < n) {
            ncap *= 2;
        }
        nb = realloc(l->ob, ncap);
        if (!nb) {
            return -1;
        }
        l->ob = nb;
        l->ocap = ncap;
    }
    return 0;
}

/*
 * Queue one frame on a link and count it. A forwarded request (``track``) is
 * recorded as pending on the link; the router's own (PING) are not.
 */
static int queue_frame(Engine *e, int slot, const uint8_t *f, size_t nbytes,
                       int64_t now, int track)
{
    Link *l = e->links[slot];
    unsigned t = f[5];
    unsigned flags = rd16(f + 6);

    if (l->closed) {
        return -1;
    }
    if (reserve_out(l, nbytes) < 0) {
        close_link(e, slot, "out of memory for the send queue");
        return -1;
    }
    memcpy(l->ob + l->ot, f, nbytes);
    l->ot += nbytes;
    l->c.tx_msgs[t]++;
    l->c.tx_bytes[t] += nbytes;
    if (track && (flags & DQ_FLAG_WANT_REPLY)) {
        pend_put(&l->pend, rd16(f + 8), rd64(f + 16), now, (uint8_t)t);
    }
    if (!l->dirty) {
        l->dirty = 1;
        e->dirty[e->ndirty++] = slot;
    }
    return 0;
}

/* Queue the router's own frames (whole frames only); 0 ok, -1 not all */
static int queue_own(Engine *e, int slot, const uint8_t *d, size_t n)
{
    size_t off = 0;
    int64_t now = now_ns();

    while (n - off >= DQ_HEADER_SIZE) {
        size_t fl = DQ_HEADER_SIZE + rd32(d + off + 12);

        if (fl > n - off || queue_frame(e, slot, d + off, fl, now, 0) < 0) {
            break;
        }
        off += fl;
    }
    return off == n ? 0 : -1;
}

static void flush_dirty(Engine *e)
{
    int i;

    for (i = 0; i < e->ndirty; i++) {
        flush(e, e->dirty[i]);
    }
    e->ndirty = 0;
}

static void undeliverable(Engine *e, uint32_t h, int why, const uint8_t *f)
{
    Event *ev = push_event(e, EV_UNDELIVERABLE, h);

    if (ev) {
        ev->a = why;
        memcpy(ev->hdr, f, DQ_HEADER_SIZE);
    }
}

static void protocol_error(Engine *e, int slot, int kind, const uint8_t *hdr,
                           uint64_t n)
{
    Link *l = e->links[slot];
    Event *ev = push_event(e, EV_PROTOCOL, handle_of(slot, l));

    if (ev) {
        ev->a = kind;
        ev->n = n;
        if (hdr) {
            memcpy(ev->hdr, hdr, DQ_HEADER_SIZE);
        }
    }
    /* nothing more is read or delivered from this link; Python closes it */
    l->rx_dead = 1;
    set_events(e, slot);
}

static void to_router(Engine *e, uint32_t h, const uint8_t *f, size_t nbytes)
{
    Event *ev = push_event(e, EV_ROUTER, h);

    if (ev) {
        ev->data = malloc(nbytes);
        if (ev->data) {
            memcpy(ev->data, f, nbytes);
            ev->len = nbytes;
        }
    }
}

/* Route the frames that a read completed. */
static void route_frames(Engine *e, int slot, int64_t now)
{
    Link *l = e->links[slot];
    uint32_t h = handle_of(slot, l);
    uint8_t *buf = l->rbuf;

    while (l->re - l->rs >= DQ_HEADER_SIZE && !l->closed) {
        uint8_t *f = buf + l->rs;
        uint32_t magic = rd32(f);
        unsigned ver = f[4], t = f[5], flags = rd16(f + 6);
        unsigned src = rd16(f + 8), dst = rd16(f + 10);
        uint32_t len = rd32(f + 12);
        uint64_t rid = rd64(f + 16);
        size_t nbytes;
        int target, i;

        if (flags || magic != DQ_MAGIC || ver != DQ_VERSION ||
            t == DQ_MSG_ERROR || len < e->lo[t] || len > e->hi[t]) {
            if (!header_ok(e, magic, ver, t, flags, len, rid)) {
                protocol_error(e, slot, PE_HEADER, f, 0);
                return;
            }
        }
        nbytes = DQ_HEADER_SIZE + (size_t)len;
        if (l->re - l->rs < nbytes) {
            return;
        }
        if ((int)src != l->peer_id) {
            protocol_error(e, slot, PE_SPOOFED, f, 0);
            return;
        }
        l->rs += nbytes;
        l->c.rx_msgs[t]++;
        l->c.rx_bytes[t] += nbytes;
        if (flags & DQ_FLAG_REPLY) {
            int64_t t0;

            if (pend_pop(&l->pend, (uint16_t)dst, rid, &t0)) {
                record(&l->c, now - t0);
            }
        }
        if (l->local) {
            if (dst == DQ_DST_ROUTER) {
                to_router(e, h, f, nbytes);
                continue;
            }
            if (dst == DQ_DST_BROADCAST) {
                if (flags & DQ_FLAG_WANT_REPLY) {
                    undeliverable(e, h, UD_BCAST_REPLY, f);
                    continue;
                }
                for (i = 0; i < e->npeers; i++) {
                    queue_frame(e, e->peers[i], f, nbytes, now, 1);
                }
                continue;
            }
            target = e->route[dst];
            if (target < 0) {
                if ((int)dst != e->own) {
                    undeliverable(e, h, UD_NO_ROUTE, f);
                    continue;
                }
                target = slot;
            }
        } else {
            if ((int)dst == e->own || dst == DQ_DST_BROADCAST) {
                target = e->local_slot;
                if (target < 0) {
                    undeliverable(e, h, UD_NO_LOCAL, f);
                    continue;
                }
                if (dst == DQ_DST_BROADCAST && (flags & DQ_FLAG_WANT_REPLY)) {
                    undeliverable(e, h, UD_BCAST_REPLY, f);
                    continue;
                }
            } else if (dst == DQ_DST_ROUTER) {
                to_router(e, h, f, nbytes);
                continue;
            } else {
                undeliverable(e, h, UD_MISROUTED, f);
                continue;
            }
        }
        queue_frame(e, target, f, nbytes, now, 1);
    }
}

/*
 * ``n`` bytes were appended to the link's read buffer: route the frames they
 * complete and keep room for a whole frame after the data.
 */
static void got_bytes(Engine *e, int slot, size_t n)
{
    Link *l = e->links[slot];
    int64_t now;

    l->re += n;
    now = now_ns();
    l->last_rx = now;
    route_frames(e, slot, now);
    if (l->rs == l->re) {
        l->rs = l->re = 0;
    } else if (RBUF_SIZE - l->re < MAX_FRAME) {
        memmove(l->rbuf, l->rbuf + l->rs, l->re - l->rs);
        l->re -= l->rs;
        l->rs = 0;
    }
}

static void on_readable(Engine *e, int slot)
{
    Link *l = e->links[slot];

    if (l->rx_dead || !l->started) {
        return;
    }
    l->ops->read(e, slot);
}

static void stream_read(Engine *e, int slot)
{
    Link *l = e->links[slot];
    ssize_t n;

    n = recv(l->fd, l->rbuf + l->re, RBUF_SIZE - l->re, MSG_DONTWAIT);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            return;
        }
        close_errno(e, slot, "receive failed", errno);
        return;
    }
    if (n == 0) {
        if (l->re > l->rs) {
            protocol_error(e, slot, PE_TRUNCATED, NULL, l->re - l->rs);
        } else {
            close_link(e, slot, "connection closed by peer");
        }
        return;
    }
    got_bytes(e, slot, (size_t)n);
}

static void stream_close(Engine *e, int slot)
{
    shutdown(e->links[slot]->fd, SHUT_RDWR);
}

static const LinkOps stream_ops = { stream_read, stream_send, stream_close };

#include "_rdma.c"

/* handle what epoll reported; holds e->mu */
static void handle_events(Engine *e, struct epoll_event *evs, int n)
{
    int i, slot;
    Link *l;

    for (i = 0; i < n; i++) {
        if (evs[i].data.u64 == WAKE_TAG) {
            uint64_t v;
            ssize_t r = read(e->evfd, &v, sizeof(v));

            (void)r;
            continue;
        }
        l = lookup(e, (unsigned long)(evs[i].data.u64 & ~RD_CHAN_TAG), &slot);
        if (!l || l->closed) {
            continue;
        }
        if (l->rdma) {
            l->rdma->chan_ready = (evs[i].data.u64 & RD_CHAN_TAG) != 0;
        }
        if (evs[i].events & EPOLLOUT) {
            flush(e, slot);
        }
        if (evs[i].events & ~EPOLLOUT) {
            if (l->rx_dead || l->closed) {
                continue;
            }
            on_readable(e, slot);
            flush_dirty(e);
        }
    }
}

/* --- Python: Engine ---------------------------------------------------- */

static PyObject *Engine_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "own_id", "size_lo", "size_hi", "busy_poll_us",
                              "busy_poll_cpu", NULL };
    int own, i;
    PyObject *lo, *hi;
    double bp_us, bp_cpu;
    Engine *e;
    struct epoll_event ev = { 0 };

    if (!PyArg_ParseTupleAndKeywords(args, kw, "iOOdd", kwlist, &own, &lo,
                                     &hi, &bp_us, &bp_cpu)) {
        return NULL;
    }
    if (!PySequence_Check(lo) || !PySequence_Check(hi) ||
        PySequence_Size(lo) != 256 || PySequence_Size(hi) != 256) {
        PyErr_SetString(PyExc_ValueError,
                        "size_lo and size_hi need 256 entries");
        return NULL;
    }
    e = (Engine *)type->tp_alloc(type, 0);
    if (!e) {
        return NULL;
    }
    e->ep = e->evfd = -1;
    for (i = 0; i < 256; i++) {
        PyObject *a = PySequence_GetItem(lo, i), *b = PySequence_GetItem(hi, i);
        long va = a ? PyLong_AsLong(a) : -1, vb = b ? PyLong_AsLong(b) : -1;

        Py_XDECREF(a);
        Py_XDECREF(b);
        if (PyErr_Occurred()) {
            Py_DECREF(e);
            return NULL;
        }
        e->lo[i] = (uint32_t)va;
        e->hi[i] = (uint32_t)vb;
    }
    pthread_mutex_init(&e->mu, NULL);
    e->own = own;
    e->local_slot = -1;
    e->route = malloc(65536 * sizeof(int16_t));
    e->ep = epoll_create1(EPOLL_CLOEXEC);
    e->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!e->route || e->ep < 0 || e->evfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(e);
        return NULL;
    }
    memset(e->route, 0xFF, 65536 * sizeof(int16_t));
    ev.events = EPOLLIN;
    ev.data.u64 = WAKE_TAG;
    epoll_ctl(e->ep, EPOLL_CTL_ADD, e->evfd, &ev);
    e->w_max = e->w = (int64_t)(bp_us * 1000.0);
    e->w_min = e->w_max / 8;
    e->cpu_share = bp_cpu;
    e->cap = (int64_t)(bp_cpu * EPOCH_NS);
    return (PyObject *)e;
}

static void free_link(Link *l)
{
    rdma_free(l);
    free(l->rbuf);
    free(l->ob);
    free(l->pend.tab);
    free(l);
}

static void clear_queue(Engine *e)
{
    size_t i;

    for (i = 0; i < e->qn; i++) {
        free(e->q[i].data);
    }
    e->qn = 0;
}

static void Engine_dealloc(Engine *e)
{
    int i;

    for (i = 0; i < MAX_LINKS; i++) {
        if (e->links[i]) {
            free_link(e->links[i]);
        }
    }
    clear_queue(e);
    free(e->q);
    free(e->route);
    if (e->ep >= 0) {
        close(e->ep);
    }
    if (e->evfd >= 0) {
        close(e->evfd);
    }
    pthread_mutex_destroy(&e->mu);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

/*
 * Take the engine's lock from a thread that holds the GIL: never wait for it
 * with the GIL held (a thread may hold the lock while it waits for the GIL,
 * here). The data loop's thread takes the lock with the GIL released and
 * never waits for the GIL while holding it.
 */
static void lock(Engine *e)
{
    if (pthread_mutex_trylock(&e->mu) != 0) {
        PyThreadState *ts = PyEval_SaveThread();

        pthread_mutex_lock(&e->mu);
        PyEval_RestoreThread(ts);
    }
}

static void unlock(Engine *e)
{
    pthread_mutex_unlock(&e->mu);
}

static PyObject *stale(void)
{
    PyErr_SetString(PyExc_ValueError, "unknown or released link handle");
    return NULL;
}

static PyObject *Engine_add(Engine *e, PyObject *args)
{
    int fd, local, peer_id, slot;
    Link *l;

    if (!PyArg_ParseTuple(args, "ipi", &fd, &local, &peer_id)) {
        return NULL;
    }
    if (peer_id < 0 || peer_id > 0xFFFD) {
        PyErr_SetString(PyExc_ValueError, "peer_id must be a shard id");
        return NULL;
    }
    lock(e);
    for (slot = 0; slot < MAX_LINKS; slot++) {
        if (!e->links[slot] || !e->links[slot]->used) {
            break;
        }
    }
    if (slot == MAX_LINKS) {
        unlock(e);
        PyErr_SetString(PyExc_RuntimeError, "too many links");
        return NULL;
    }
    l = e->links[slot];
    if (!l) {
        l = e->links[slot] = calloc(1, sizeof(Link));
        if (!l) {
            unlock(e);
            return PyErr_NoMemory();
        }
    }
    {
        uint32_t gen = (l->gen + 1) & 0xFFFF;

        memset(l, 0, sizeof(*l));
        l->gen = gen;
    }
    l->rbuf = malloc(RBUF_SIZE);
    if (!l->rbuf) {
        unlock(e);
        return PyErr_NoMemory();
    }
    l->used = 1;
    l->ops = &stream_ops;
    l->fd = fd;
    l->local = local;
    l->peer_id = peer_id;
    l->last_rx = now_ns();
    unlock(e);
    return PyLong_FromUnsignedLong(handle_of(slot, l));
}

/*
 * start(handle[, notify_handle, notify]): read the link and route frames to
 * it. What was queued on it before is sent only now, after the route is in
 * place: a shard that got REGISTER_OK can be sent to at once. ``notify``
 * (LINK_STATE UP to the local shard) is queued on ``notify_handle`` in the
 * same step, so that it precedes every frame read from the new link and
 * follows the route to it.
 */
static PyObject *Engine_start(Engine *e, PyObject *args)
{
    unsigned long h, nh = 0;
    Py_buffer nb = { 0 };
    int slot, nslot;
    Link *l, *nl;

    if (!PyArg_ParseTuple(args, "k|ky*", &h, &nh, &nb)) {
        return NULL;
    }
    lock(e);
    l = lookup(e, h, &slot);
    if (!l || l->closed || e->stopping) {
        unlock(e);
        PyBuffer_Release(&nb);
        PyErr_SetString(PyExc_ValueError,
                        e->stopping ? "the data loop is stopping"
                                    : "link is closed or released");
        return NULL;
    }
    {
        struct epoll_event ev = { 0 };

        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.u64 = handle_of(slot, l);
        if (epoll_ctl(e->ep, EPOLL_CTL_ADD, l->fd, &ev) < 0) {
            int err = errno;

            unlock(e);
            PyBuffer_Release(&nb);
            errno = err;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
    }
    if (l->rdma && rdma_start(e, slot) < 0) {
        int err = errno;

        epoll_ctl(e->ep, EPOLL_CTL_DEL, l->fd, NULL);
        unlock(e);
        PyBuffer_Release(&nb);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    l->started = l->registered = 1;
    if (l->local) {
        e->local_slot = slot;
    } else {
        if (e->route[l->peer_id] >= 0) {
            int i, old = e->route[l->peer_id];

            for (i = 0; i < e->npeers; i++) {
                if (e->peers[i] == old) {
                    e->peers[i] = e->peers[--e->npeers];
                    break;
                }
            }
        }
        e->route[l->peer_id] = (int16_t)slot;
        e->peers[e->npeers++] = slot;
    }
    flush(e, slot);
    nl = nb.buf ? lookup(e, nh, &nslot) : NULL;
    if (nl && !nl->closed) {
        queue_own(e, nslot, nb.buf, (size_t)nb.len); /* held if not started */
    }
    flush_dirty(e);
    unlock(e);
    PyBuffer_Release(&nb);
    wake(e); /* data may be waiting already */
    Py_RETURN_NONE;
}

static PyObject *Engine_send(Engine *e, PyObject *args)
{
    unsigned long h;
    Py_buffer b;
    int slot, ok = 0;
    Link *l;

    if (!PyArg_ParseTuple(args, "ky*", &h, &b)) {
        return NULL;
    }
    lock(e);
    l = lookup(e, h, &slot);
    if (l && !l->closed) {
        ok = queue_own(e, slot, b.buf, (size_t)b.len) == 0;
        flush_dirty(e);
        if (l->closed) {
            ok = 0;
        }
    }
    unlock(e);
    PyBuffer_Release(&b);
    if (l && l->closed) {
        wake(e);
    }
    return PyBool_FromLong(ok);
}

/*
 * send_fd(handle, frame, fd) -> bool: send one whole frame with a file
 * descriptor attached to its first byte (SCM_RIGHTS), in order with the
 * link's queue. Only when nothing is queued: False means "not now" (the
 * queue is not empty, the link is not served yet, or the socket is full);
 * the caller retries. What the socket does not take after the first bytes
 * is queued as usual (the descriptor went with them).
 */
static PyObject *Engine_send_fd(Engine *e, PyObject *args)
{
    unsigned long h;
    Py_buffer b;
    int slot, fd, ok = 0;
    Link *l;

    if (!PyArg_ParseTuple(args, "ky*i", &h, &b, &fd)) {
        return NULL;
    }
    if (b.len < DQ_HEADER_SIZE ||
        (size_t)b.len != DQ_HEADER_SIZE + rd32((const uint8_t *)b.buf + 12)) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "send_fd needs exactly one frame");
        return NULL;
    }
    lock(e);
    l = lookup(e, h, &slot);
    if (l && !l->closed && l->started) {
        flush(e, slot);
    }
    if (l && !l->closed && l->started && l->ot == l->oh) {
        char cbuf[CMSG_SPACE(sizeof(int))];
        struct iovec iov = { .iov_base = b.buf, .iov_len = (size_t)b.len };
        struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1,
                            .msg_control = cbuf,
                            .msg_controllen = sizeof(cbuf) };
        struct cmsghdr *cm;
        ssize_t n;

        memset(cbuf, 0, sizeof(cbuf));
        cm = CMSG_FIRSTHDR(&m);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &fd, sizeof(int));
        do {
            n = sendmsg(l->fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
        } while (n < 0 && errno == EINTR);
        if (n > 0) {
            const uint8_t *f = b.buf;

            ok = 1;
            l->c.tx_msgs[f[5]]++;
            l->c.tx_bytes[f[5]] += (size_t)b.len;
            if (n < b.len && (reserve_out(l, (size_t)(b.len - n)) < 0)) {
                close_link(e, slot, "out of memory for the send queue");
            } else if (n < b.len) {
                memcpy(l->ob + l->ot, f + n, (size_t)(b.len - n));
                l->ot += (size_t)(b.len - n);
                flush(e, slot);
            }
        } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            close_errno(e, slot, "send failed", errno);
        }
    }
    unlock(e);
    PyBuffer_Release(&b);
    if (l && l->closed) {
        wake(e);
    }
    return PyBool_FromLong(ok);
}

static PyObject *Engine_close(Engine *e, PyObject *args)
{
    unsigned long h;
    const char *reason = "closed";
    int slot, r = 0;
    Link *l;

    if (!PyArg_ParseTuple(args, "k|s", &h, &reason)) {
        return NULL;
    }
    lock(e);
    l = lookup(e, h, &slot);
    if (l) {
        r = close_link(e, slot, reason);
    }
    unlock(e);
    if (r) {
        wake(e);
    }
    return PyBool_FromLong(r);
}

static PyObject *Engine_release(Engine *e, PyObject *arg)
{
    unsigned long h = PyLong_AsUnsignedLong(arg);
    int slot;
    Link *l;

    if (PyErr_Occurred()) {
        return NULL;
    }
    lock(e);
    l = lookup(e, h, &slot);
    if (l) {
        if (!l->closed) {
            close_link(e, slot, "released");
        }
        l->used = 0;
        rdma_free(l);
        free(l->rbuf);
        free(l->ob);
        free(l->pend.tab);
        l->rbuf = l->ob = NULL;
        l->pend.tab = NULL;
        l->pend.cap = l->pend.n = 0;
        l->ocap = 0;
    }
    unlock(e);
    Py_RETURN_NONE;
}

static PyObject *Engine_take_pending(Engine *e, PyObject *arg)
{
    unsigned long h = PyLong_AsUnsignedLong(arg);
    Link *l;
    PyObject *out;
    Pend *tab;
    size_t cap, i;

    if (PyErr_Occurred()) {
        return NULL;
    }
    lock(e);
    l = lookup(e, h, NULL);
    if (!l) {
        unlock(e);
        return stale();
    }
    tab = l->pend.tab;
    cap = l->pend.cap;
    l->pend.tab = NULL;
    l->pend.cap = l->pend.n = 0;
    unlock(e);
    out = PyList_New(0);
    for (i = 0; out && i < cap; i++) {
        PyObject *t;

        if (!tab[i].used) {
            continue;
        }
        t = Py_BuildValue("(iKLi)", tab[i].src, (unsigned long long)tab[i].rid,
                          (long long)tab[i].t0, tab[i].type);
        if (!t || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            Py_CLEAR(out);
            break;
        }
        Py_DECREF(t);
    }
    free(tab);
    return out;
}

/* info(handle) -> (pending requests, backlog bytes, last_rx ns) */
static PyObject *Engine_info(Engine *e, PyObject *arg)
{
    unsigned long h = PyLong_AsUnsignedLong(arg);
    Link *l;
    size_t pend, backlog;
    long long last_rx;

    if (PyErr_Occurred()) {
        return NULL;
    }
    lock(e);
    l = lookup(e, h, NULL);
    if (!l) {
        unlock(e);
        return stale();
    }
    pend = l->pend.n;
    backlog = l->ot - l->oh;
    last_rx = l->last_rx;
    unlock(e);
    return Py_BuildValue("(nnL)", (Py_ssize_t)pend, (Py_ssize_t)backlog,
                         last_rx);
}

/*
 * Parse (handle, ns) and look the link up.  Returns 0 with e->mu held (the
 * caller unlocks) and *l NULL for an unknown or released handle, or -1
 * with a Python exception set.
 */
static int lock_link_ns(Engine *e, PyObject *args, Link **l, long long *ns)
{
    unsigned long h;

    if (!PyArg_ParseTuple(args, "kL", &h, ns)) {
        return -1;
    }
    lock(e);
    *l = lookup(e, h, NULL);
    return 0;
}

static PyObject *Engine_set_last_rx(Engine *e, PyObject *args)
{
    long long ns;
    Link *l;

    if (lock_link_ns(e, args, &l, &ns) < 0) {
        return NULL;
    }
    if (l) {
        l->last_rx = ns;
    }
    unlock(e);
    if (!l) {
        return stale();
    }
    Py_RETURN_NONE;
}

/*
 * counters(handle) -> bytes: rx_msgs, rx_bytes, tx_msgs, tx_bytes [256 u64
 * each], the latency histogram [NBUCKETS u64], its count, sum and max (ns)
 */
static PyObject *Engine_counters(Engine *e, PyObject *arg)
{
    unsigned long h = PyLong_AsUnsignedLong(arg);
    Link *l;
    Counters c;

    if (PyErr_Occurred()) {
        return NULL;
    }
    lock(e);
    l = lookup(e, h, NULL);
    if (l) {
        c = l->c;
    }
    unlock(e);
    if (!l) {
        return stale();
    }
    return PyBytes_FromStringAndSize((const char *)&c, sizeof(c));
}

static PyObject *Engine_record(Engine *e, PyObject *args)
{
    long long ns;
    Link *l;

    if (lock_link_ns(e, args, &l, &ns) < 0) {
        return NULL;
    }
    if (l) {
        record(&l->c, ns);
    }
    unlock(e);
    Py_RETURN_NONE;
}

static PyObject *Engine_header_ok(Engine *e, PyObject *arg)
{
    Py_buffer b;
    int ok;

    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (b.len < DQ_HEADER_SIZE) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "need 24 header bytes");
        return NULL;
    }
    {
        const uint8_t *f = b.buf;

        ok = header_ok(e, rd32(f), f[4], f[5], rd16(f + 6), rd32(f + 12),
                       rd64(f + 16));
    }
    PyBuffer_Release(&b);
    return PyBool_FromLong(ok);
}

static PyObject *event_tuple(Event *ev)
{
    const uint8_t *f = ev->hdr;

    switch (ev->kind) {
    case EV_ROUTER:
        return Py_BuildValue("(iky#)", ev->kind, (unsigned long)ev->handle,
                             (const char *)ev->data,
                             (Py_ssize_t)(ev->data ? ev->len : 0));
    case EV_UNDELIVERABLE:
        return Py_BuildValue("(ikiiiiiK)", ev->kind, (unsigned long)ev->handle,
                             ev->a, (int)f[5], (int)rd16(f + 6),
                             (int)rd16(f + 8), (int)rd16(f + 10),
                             (unsigned long long)rd64(f + 16));
    case EV_PROTOCOL:
        return Py_BuildValue("(ikiy#K)", ev->kind, (unsigned long)ev->handle,
                             ev->a,
                             (const char *)ev->hdr, (Py_ssize_t)DQ_HEADER_SIZE,
                             (unsigned long long)ev->n);
    default:
        return Py_BuildValue("(iks)", ev->kind, (unsigned long)ev->handle,
                             ev->data ? (const char *)ev->data : "closed");
    }
}

/* take the queued events as a list of tuples; caller holds the GIL, no lock */
static PyObject *take_events(Engine *e)
{
    Event *q;
    size_t n, i;
    PyObject *out;

    lock(e);
    q = e->q;
    n = e->qn;
    e->q = NULL;
    e->qn = e->qcap = 0;
    unlock(e);
    out = PyList_New((Py_ssize_t)n);
    for (i = 0; i < n; i++) {
        PyObject *t = out ? event_tuple(&q[i]) : NULL;

        if (out && !t) {
            Py_CLEAR(out);
        }
        if (out) {
            PyList_SET_ITEM(out, (Py_ssize_t)i, t);
        }
        free(q[i].data);
    }
    free(q);
    return out;
}

/* run() -> list of events, or None once stop() was called */
static PyObject *Engine_run(Engine *e, PyObject *unused)
{
    struct epoll_event evs[64];
    PyThreadState *ts;
    int n, stop = 0;

    lock(e);
    if (e->running) {
        unlock(e);
        PyErr_SetString(PyExc_RuntimeError, "run() is already running");
        return NULL;
    }
    e->running = 1;
    unlock(e);

    ts = PyEval_SaveThread();
    for (;;) {
        int64_t now;

        pthread_mutex_lock(&e->mu);
        stop = e->stopping;
        n = (int)e->qn;
        pthread_mutex_unlock(&e->mu);
        if (stop || n) {
            break;
        }
        if (e->spin_until) {
            int64_t spun;
            int polled = 0;

            n = epoll_wait(e->ep, evs, 64, 0);
            if (n == 0 && e->nrdma) {
                polled = rdma_spin_poll(e); /* completions, not fds */
            }
            now = now_ns();
            if ((++e->spin_rounds & 7) == 0 || n > 0 || polled) {
                e->spun = thread_cpu_ns() - e->spin_from_cpu; /* a syscall */
            }
            spun = e->spun;
            if (n <= 0 && !polled) {
                if (now < e->spin_until && e->epoch_spin + spun < e->cap) {
                    sched_yield();
                    continue;
                }
                if (now < e->spin_until) {
                    e->cap_stops++;
                } else {
                    e->misses++;
                    e->missed_at = now;
                }
                e->spin_ns += spun;
                e->epoch_spin += spun;
                e->spin_until = 0;
                continue;
            }
            e->spin_ns += spun;
            e->epoch_spin += spun;
            e->hits++;
            if (e->w < e->w_max) {
                e->w = e->w * 2 < e->w_max ? e->w * 2 : e->w_max;
            }
            e->spin_until = 0;
        } else {
            n = epoll_wait(e->ep, evs, 64, -1);
            if (n < 0) {
                continue; /* EINTR */
            }
            if (e->missed_at) {
                /*
                 * traffic came back after a spin ran out: soon (the window
                 * was a bit short: grow it) or after a long idle gap
                 * (spinning is wasted: shrink it)
                 */
                int64_t gap = now_ns() - e->missed_at;

                if (gap < 4 * e->w_max) {
                    e->w = e->w * 2 < e->w_max ? e->w * 2 : e->w_max;
                } else {
                    e->w = e->w / 2 > e->w_min ? e->w / 2 : e->w_min;
                }
                e->missed_at = 0;
            }
        }
        pthread_mutex_lock(&e->mu);
        handle_events(e, evs, n);
        pthread_mutex_unlock(&e->mu);
        if (e->w_max) {
            now = now_ns();
            if (now >= e->epoch_end) {
                e->epoch_end = now + EPOCH_NS;
                e->epoch_spin = 0;
            }
            if (e->epoch_spin < e->cap) {
                e->spin_from_cpu = thread_cpu_ns();
                e->spun = 0;
                e->spin_rounds = 0;
                e->spin_until = now + e->w;
            }
        }
    }
    PyEval_RestoreThread(ts);

    lock(e);
    e->running = 0;
    unlock(e);
    if (stop) {
        Py_RETURN_NONE;
    }
    return take_events(e);
}

/* events queued without running the loop (used after stop) */
static PyObject *Engine_events(Engine *e, PyObject *unused)
{
    return take_events(e);
}

static PyObject *Engine_stop(Engine *e, PyObject *unused)
{
    lock(e);
    e->stopping = 1;
    unlock(e);
    wake(e);
    Py_RETURN_NONE;
}

static PyObject *Engine_stats(Engine *e, PyObject *unused)
{
    return Py_BuildValue("{s:d,s:d,s:d,s:d,s:K,s:K,s:K}",
                         "busy_poll_us", (double)e->w_max / 1000.0,
                         "window_us", (double)e->w / 1000.0,
                         "cpu_cap", e->cpu_share,
                         "spin_cpu_s", (double)e->spin_ns / 1e9,
                         "spin_hits", (unsigned long long)e->hits,
                         "spin_misses", (unsigned long long)e->misses,
                         "spin_cap_stops", (unsigned long long)e->cap_stops);
}

static PyMethodDef Engine_methods[] = {
    { "add", (PyCFunction)Engine_add, METH_VARARGS,
      "add(fd, local, peer_id) -> handle: a link, not yet read or routed" },
    { "start", (PyCFunction)Engine_start, METH_VARARGS,
      "start(handle[, notify_handle, notify]): read and route the link" },
    { "send", (PyCFunction)Engine_send, METH_VARARGS,
      "send(handle, frames) -> bool: queue whole frames, send what it takes" },
    { "send_fd", (PyCFunction)Engine_send_fd, METH_VARARGS,
      "send_fd(handle, frame, fd) -> bool: one frame carrying fd" },
    { "close", (PyCFunction)Engine_close, METH_VARARGS,
      "close(handle[, reason]) -> bool: True for the call that closed it" },
    { "release", (PyCFunction)Engine_release, METH_O,
      "release(handle): forget a closed link (its fd is the caller's)" },
    { "take_pending", (PyCFunction)Engine_take_pending, METH_O,
      "take_pending(handle) -> [(src, request_id, t0_ns, type)]" },
    { "info", (PyCFunction)Engine_info, METH_O,
      "info(handle) -> (pending requests, backlog bytes, last_rx ns)" },
    { "set_last_rx", (PyCFunction)Engine_set_last_rx, METH_VARARGS,
      "set_last_rx(handle, ns)" },
    { "counters", (PyCFunction)Engine_counters, METH_O,
      "counters(handle) -> bytes of u64: per-type counters, histogram" },
    { "record", (PyCFunction)Engine_record, METH_VARARGS,
      "record(handle, ns): add a latency sample" },
    { "header_ok", (PyCFunction)Engine_header_ok, METH_O,
      "header_ok(header) -> bool: the data path's header check" },
    RDMA_METHODS
    { "run", (PyCFunction)Engine_run, METH_NOARGS,
      "run() -> events, or None after stop(); serves links without the GIL" },
    { "events", (PyCFunction)Engine_events, METH_NOARGS,
      "events() -> queued events" },
    { "stop", (PyCFunction)Engine_stop, METH_NOARGS, "make run() return None" },
    { "stats", (PyCFunction)Engine_stats, METH_NOARGS, "busy-poll figures" },
    { NULL },
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cluster.router._fastpath.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The router's data path: epoll loop, routing, counters.",
    .tp_new = Engine_new,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
};

static PyObject *mod_bucket(PyObject *self, PyObject *arg)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(arg);

    if (PyErr_Occurred()) {
        return NULL;
    }
    return PyLong_FromLong(bucket_of(v));
}

static PyMethodDef mod_methods[] = {
    { "bucket", mod_bucket, METH_O,
      "bucket(ns) -> latency histogram bucket index" },
    { NULL },
};

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fastpath",
    .m_doc = "dQEMU router data path (C).",
    .m_size = -1,
    .m_methods = mod_methods,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    PyObject *m;

    if (PyType_Ready(&EngineType) < 0) {
        return NULL;
    }
    m = PyModule_Create(&fastpath_module);
    if (!m) {
        return NULL;
    }
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0 ||
        PyModule_AddStringConstant(m, "SOURCE_HASH", DQ_SOURCE_HASH) < 0 ||
        PyModule_AddIntConstant(m, "MAGIC", DQ_MAGIC) < 0 ||
        PyModule_AddIntConstant(m, "VERSION", DQ_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "HEADER_SIZE", DQ_HEADER_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "MAX_PAYLOAD", DQ_MAX_PAYLOAD) < 0 ||
        PyModule_AddIntConstant(m, "FLAG_REPLY", DQ_FLAG_REPLY) < 0 ||
        PyModule_AddIntConstant(m, "FLAG_ERROR", DQ_FLAG_ERROR) < 0 ||
        PyModule_AddIntConstant(m, "FLAG_WANT_REPLY", DQ_FLAG_WANT_REPLY) < 0 ||
        PyModule_AddIntConstant(m, "DST_BROADCAST", DQ_DST_BROADCAST) < 0 ||
        PyModule_AddIntConstant(m, "DST_ROUTER", DQ_DST_ROUTER) < 0 ||
        PyModule_AddIntConstant(m, "MSG_ERROR", DQ_MSG_ERROR) < 0 ||
        PyModule_AddIntConstant(m, "NBUCKETS", NBUCKETS) < 0 ||
        PyModule_AddIntConstant(m, "EV_ROUTER", EV_ROUTER) < 0 ||
        PyModule_AddIntConstant(m, "EV_UNDELIVERABLE", EV_UNDELIVERABLE) < 0 ||
        PyModule_AddIntConstant(m, "EV_PROTOCOL", EV_PROTOCOL) < 0 ||
        PyModule_AddIntConstant(m, "EV_DOWN", EV_DOWN) < 0 ||
        PyModule_AddIntConstant(m, "UD_NO_ROUTE", UD_NO_ROUTE) < 0 ||
        PyModule_AddIntConstant(m, "UD_BCAST_REPLY", UD_BCAST_REPLY) < 0 ||
        PyModule_AddIntConstant(m, "UD_NO_LOCAL", UD_NO_LOCAL) < 0 ||
        PyModule_AddIntConstant(m, "UD_MISROUTED", UD_MISROUTED) < 0 ||
        PyModule_AddIntConstant(m, "PE_HEADER", PE_HEADER) < 0 ||
        PyModule_AddIntConstant(m, "PE_SPOOFED", PE_SPOOFED) < 0 ||
        PyModule_AddIntConstant(m, "PE_TRUNCATED", PE_TRUNCATED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
