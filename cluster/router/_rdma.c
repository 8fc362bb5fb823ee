/*
 * dQEMU router: the RDMA link (RC queue pair), a second kind of link beside
 * the stream socket. Included by _fastpath.c (one translation unit), which
 * keeps framing, routing, counters and pending requests for both kinds; this
 * file gives the RDMA link's read, send and close (LinkOps) and its set-up.
 *
 * Wire: reliable-connected send/recv. Each side preallocates RD_NBUF receive
 * and RD_NBUF send buffers of RD_BUFSZ bytes in one registered region and
 * posts every receive buffer before it tells the peer its parameters. The
 * link's byte stream (the same frames as on TCP) is cut into messages of at
 * most RD_BUFSZ bytes; the receiver appends each to the link's read buffer,
 * so a frame may span messages exactly as it spans TCP segments.
 *
 * Flow control by credits: a sender may have at most as many messages
 * unconsumed as the peer has receives posted (its credits, RD_NBUF at
 * first). Every message is a SEND_WITH_IMM whose immediate value returns
 * the receives the sender reposted since its last message. One credit is
 * kept back for a credit-only (zero-length) message, sent when RD_BATCH
 * receives wait to be returned and no data goes out to carry them, so two
 * busy senders can't both run dry.
 *
 * Completions: one CQ with a completion channel. The channel's fd sits in the
 * engine's epoll set beside the link's TCP socket; while the data loop
 * spins after traffic it polls the CQ directly (rdma_spin_poll). The TCP
 * connection that authenticated the peer stays open: its end means the
 * remote router is gone, and closing the link shuts it down so the peer
 * learns at once.
 *
 * Errors name the device and the problem; the Python side adds the link.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <infiniband/verbs.h>

#define RD_NBUF 32
#define RD_BUFSZ 16384
#define RD_BATCH (RD_NBUF / 4)
#define RD_SIGNAL (RD_NBUF / 4) /* one send in RD_SIGNAL asks for a completion */
#define RD_PARAMS_SIZE 48
#define RD_MAGIC "DQRDMA01"
/* in the epoll tag of a link's completion channel, beside the link's handle */
#define RD_CHAN_TAG (1ULL << 32)

/* defined further on in _fastpath.c */
static void lock(Engine *e);
static void unlock(Engine *e);
static PyObject *stale(void);

struct RdmaLink {
    struct ibv_context *ctx;
    struct ibv_pd *pd;
    struct ibv_comp_channel *ch;
    struct ibv_cq *cq;
    struct ibv_qp *qp;
    struct ibv_mr *mr;
    uint8_t *mem; /* RD_NBUF receive buffers, then RD_NBUF send buffers */
    uint8_t port;
    int gid_index;
    enum ibv_mtu mtu;
    union ibv_gid gid;
    uint16_t lid;
    uint32_t psn;
    int credits;   /* messages the peer can take now */
    int to_return; /* receives reposted since we last told the peer */
    int send_free; /* send buffers not in flight */
    unsigned send_next;
    int unsignaled; /* sends posted since the last signaled one */
    uint64_t sends, send_cqes; /* posted, and completions of them taken */
    int polling;   /* served: in the epoll set, counted in nrdma */
    int chan_ready; /* set by handle_events: the channel fd, not the socket */
    char dev[64];
};

static inline uint8_t *rd_rbuf(RdmaLink *r, unsigned i)
{
    return r->mem + (size_t)i * RD_BUFSZ;
}

static inline uint8_t *rd_sbuf(RdmaLink *r, unsigned i)
{
    return r->mem + (size_t)(RD_NBUF + i) * RD_BUFSZ;
}

static void rd_destroy(RdmaLink *r)
{
    if (r->qp) {
        ibv_destroy_qp(r->qp);
    }
    if (r->mr) {
        ibv_dereg_mr(r->mr);
    }
    if (r->cq) {
        ibv_destroy_cq(r->cq);
    }
    if (r->ch) {
        ibv_destroy_comp_channel(r->ch);
    }
    if (r->pd) {
        ibv_dealloc_pd(r->pd);
    }
    if (r->ctx) {
        ibv_close_device(r->ctx);
    }
    free(r->mem);
    free(r);
}

static void rdma_free(Link *l)
{
    if (l->rdma) {
        rd_destroy(l->rdma);
        l->rdma = NULL;
    }
}

static int rd_post_recv(RdmaLink *r, unsigned i)
{
    struct ibv_sge sge = {
        .addr = (uintptr_t)rd_rbuf(r, i), .length = RD_BUFSZ,
        .lkey = r->mr->lkey
    };
    struct ibv_recv_wr wr = { .wr_id = i, .sg_list = &sge, .num_sge = 1 };
    struct ibv_recv_wr *bad;

    return ibv_post_recv(r->qp, &wr, &bad);
}

static const char *port_state_name(enum ibv_port_state s)
{
    return ibv_port_state_str(s);
}

/*
 * Open ``dev`` (NULL or "": the first device with an active port), make the
 * QP (state INIT) with every receive posted. NULL with ``err`` set on error.
 */
static RdmaLink *rd_open(const char *dev, int port, int gid_index, char *err,
                         size_t errlen)
{
    struct ibv_device **list;
    int ndev = 0, i;
    RdmaLink *r = calloc(1, sizeof(*r));
    struct ibv_port_attr pa;
    char names[256] = "";

    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    list = ibv_get_device_list(&ndev);
    if (!list || ndev == 0) {
        snprintf(err, errlen,
                 "no RDMA device: this kernel has none (no RDMA support, or "
                 "no rxe device was added); `dqemu rdma-check` lists them");
        if (list) {
            ibv_free_device_list(list);
        }
        free(r);
        return NULL;
    }
    for (i = 0; i < ndev; i++) {
        const char *name = ibv_get_device_name(list[i]);

        snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
                 i ? ", " : "", name);
        if (dev && *dev && strcmp(dev, name) != 0) {
            continue;
        }
        r->ctx = ibv_open_device(list[i]);
        if (!r->ctx) {
            continue;
        }
        if (ibv_query_port(r->ctx, (uint8_t)port, &pa) == 0 &&
            (pa.state == IBV_PORT_ACTIVE || (dev && *dev))) {
            snprintf(r->dev, sizeof(r->dev), "%s", name);
            break;
        }
        ibv_close_device(r->ctx);
        r->ctx = NULL;
    }
    ibv_free_device_list(list);
    if (!r->ctx) {
        if (dev && *dev) {
            snprintf(err, errlen, "RDMA device %s not found or cannot be "
                     "opened (devices: %s)", dev, names);
        } else {
            snprintf(err, errlen, "no RDMA device has port %d active "
                     "(devices: %s)", port, names);
        }
        free(r);
        return NULL;
    }
    if (pa.state != IBV_PORT_ACTIVE) {
        snprintf(err, errlen, "port %d of RDMA device %s is %s, not ACTIVE",
                 port, r->dev, port_state_name(pa.state));
        rd_destroy(r);
        return NULL;
    }
    r->port = (uint8_t)port;
    r->gid_index = gid_index;
    r->mtu = pa.active_mtu;
    r->lid = pa.lid;
    if (ibv_query_gid(r->ctx, r->port, gid_index, &r->gid) != 0) {
        snprintf(err, errlen, "RDMA device %s port %d has no GID %d", r->dev,
                 port, gid_index);
        rd_destroy(r);
        return NULL;
    }
    r->mem = aligned_alloc(4096, (size_t)2 * RD_NBUF * RD_BUFSZ);
    r->pd = ibv_alloc_pd(r->ctx);
    r->ch = ibv_create_comp_channel(r->ctx);
    r->cq = r->ch ? ibv_create_cq(r->ctx, 2 * RD_NBUF + 2, NULL, r->ch, 0)
                  : NULL;
    r->mr = r->pd && r->mem ? ibv_reg_mr(r->pd, r->mem,
                                         (size_t)2 * RD_NBUF * RD_BUFSZ,
                                         IBV_ACCESS_LOCAL_WRITE) : NULL;
    if (!r->mem || !r->pd || !r->ch || !r->cq || !r->mr) {
        snprintf(err, errlen, "cannot set up RDMA resources on %s: %s",
                 r->dev, strerror(errno));
        rd_destroy(r);
        return NULL;
    }
    {
        struct ibv_qp_init_attr qa = {
            .send_cq = r->cq, .recv_cq = r->cq, .qp_type = IBV_QPT_RC,
            .cap = { .max_send_wr = RD_NBUF, .max_recv_wr = RD_NBUF,
                     .max_send_sge = 1, .max_recv_sge = 1 },
        };
        struct ibv_qp_attr at = {
            .qp_state = IBV_QPS_INIT, .pkey_index = 0, .port_num = r->port,
            .qp_access_flags = IBV_ACCESS_LOCAL_WRITE,
        };

        r->qp = ibv_create_qp(r->pd, &qa);
        if (!r->qp || ibv_modify_qp(r->qp, &at, IBV_QP_STATE |
                                    IBV_QP_PKEY_INDEX | IBV_QP_PORT |
                                    IBV_QP_ACCESS_FLAGS)) {
            snprintf(err, errlen, "cannot create an RC queue pair on %s: %s",
                     r->dev, strerror(errno));
            rd_destroy(r);
            return NULL;
        }
    }
    for (i = 0; i < RD_NBUF; i++) {
        if (rd_post_recv(r, (unsigned)i)) {
            snprintf(err, errlen, "cannot post RDMA receives on %s", r->dev);
            rd_destroy(r);
            return NULL;
        }
    }
    if (fcntl(r->ch->fd, F_SETFL, fcntl(r->ch->fd, F_GETFL) | O_NONBLOCK) < 0 ||
        ibv_req_notify_cq(r->cq, 0)) {
        snprintf(err, errlen, "cannot arm the completion channel on %s",
                 r->dev);
        rd_destroy(r);
        return NULL;
    }
    r->psn = (uint32_t)(now_ns() & 0xFFFFFF);
    r->send_free = RD_NBUF;
    return r;
}

/* docs/protocol.md "RDMA links": the 48 bytes each router sends */
static void rd_params(const RdmaLink *r, uint8_t *out)
{
    uint32_t qpn = r->qp->qp_num, psn = r->psn, n = RD_NBUF, sz = RD_BUFSZ;

    memset(out, 0, RD_PARAMS_SIZE);
    memcpy(out, RD_MAGIC, 8);
    memcpy(out + 8, &qpn, 4);
    memcpy(out + 12, &psn, 4);
    memcpy(out + 16, &r->lid, 2);
    out[18] = (uint8_t)r->mtu;
    memcpy(out + 20, &n, 4);
    memcpy(out + 24, &sz, 4);
    memcpy(out + 28, r->gid.raw, 16);
}

/* move the QP to RTR and RTS towards the peer's parameters */
static int rd_connect(RdmaLink *r, const uint8_t *in, char *err, size_t errlen)
{
    uint32_t qpn, psn, n, sz;
    uint16_t lid;
    enum ibv_mtu mtu;
    struct ibv_qp_attr at;

    if (memcmp(in, RD_MAGIC, 8) != 0) {
        snprintf(err, errlen, "the peer sent no RDMA parameters (is it set "
                 "up for transport \"rdma\"?)");
        return -1;
    }
    memcpy(&qpn, in + 8, 4);
    memcpy(&psn, in + 12, 4);
    memcpy(&lid, in + 16, 2);
    mtu = (enum ibv_mtu)in[18];
    memcpy(&n, in + 20, 4);
    memcpy(&sz, in + 24, 4);
    if (n != RD_NBUF || sz != RD_BUFSZ || mtu < IBV_MTU_256 ||
        mtu > IBV_MTU_4096) {
        snprintf(err, errlen, "the peer's RDMA parameters do not match ours "
                 "(%u buffers of %u bytes, mtu %d; we use %d of %d)", n, sz,
                 (int)mtu, RD_NBUF, RD_BUFSZ);
        return -1;
    }
    memset(&at, 0, sizeof(at));
    at.qp_state = IBV_QPS_RTR;
    at.path_mtu = mtu < r->mtu ? mtu : r->mtu;
    at.dest_qp_num = qpn & 0xFFFFFF;
    at.rq_psn = psn & 0xFFFFFF;
    at.max_dest_rd_atomic = 1;
    at.min_rnr_timer = 12;
    at.ah_attr.is_global = 1;
    at.ah_attr.dlid = lid;
    at.ah_attr.port_num = r->port;
    at.ah_attr.grh.hop_limit = 1;
    at.ah_attr.grh.sgid_index = (uint8_t)r->gid_index;
    memcpy(at.ah_attr.grh.dgid.raw, in + 28, 16);
    if (ibv_modify_qp(r->qp, &at, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU |
                      IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                      IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER)) {
        snprintf(err, errlen, "cannot move the queue pair on %s to RTR: %s",
                 r->dev, strerror(errno));
        return -1;
    }
    memset(&at, 0, sizeof(at));
    at.qp_state = IBV_QPS_RTS;
    at.timeout = 14;
    at.retry_cnt = 7;
    at.rnr_retry = 7;
    at.sq_psn = r->psn;
    at.max_rd_atomic = 1;
    if (ibv_modify_qp(r->qp, &at, IBV_QP_STATE | IBV_QP_TIMEOUT |
                      IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                      IBV_QP_MAX_QP_RD_ATOMIC)) {
        snprintf(err, errlen, "cannot move the queue pair on %s to RTS: %s",
                 r->dev, strerror(errno));
        return -1;
    }
    r->credits = (int)n;
    return 0;
}

/*
 * Post one SEND_WITH_IMM of ``len`` bytes from send buffer ``i``. Only one
 * send in RD_SIGNAL asks for a completion (its wr_id: how many sends it
 * frees, itself and the unsignaled ones before it, which an RC queue pair
 * completes in order): a completion per send would wake a sleeping data loop
 * once more per message, for nothing but freeing its buffer. At most
 * RD_SIGNAL - 1 < RD_NBUF sends wait unsignaled, so when no buffer is free
 * a signaled send is in flight and its completion frees them. Errors
 * complete every send, signaled or not.
 */
static int rd_post_send(RdmaLink *r, unsigned i, size_t len)
{
    int signal = r->unsignaled + 1 >= RD_SIGNAL;
    struct ibv_sge sge = {
        .addr = (uintptr_t)rd_sbuf(r, i), .length = (uint32_t)len,
        .lkey = r->mr->lkey
    };
    struct ibv_send_wr wr = {
        .wr_id = signal ? (uint64_t)r->unsignaled + 1 : 0, .sg_list = &sge,
        .num_sge = len ? 1 : 0, .opcode = IBV_WR_SEND_WITH_IMM,
        .send_flags = signal ? IBV_SEND_SIGNALED : 0,
        .imm_data = htonl((uint32_t)r->to_return),
    };
    struct ibv_send_wr *bad;
    int rc = ibv_post_send(r->qp, &wr, &bad);

    if (rc == 0) {
        r->to_return = 0;
        r->credits--;
        r->send_free--;
        r->send_next = (r->send_next + 1) % RD_NBUF;
        r->unsignaled = signal ? 0 : r->unsignaled + 1;
        r->sends++;
    }
    return rc;
}

static void rd_fail(Engine *e, int slot, const char *what, int err)
{
    char buf[200];

    snprintf(buf, sizeof(buf), "RDMA link on %s: %s%s%s",
             e->links[slot]->rdma->dev, what, err ? ": " : "",
             err ? strerror(err) : "");
    close_link(e, slot, buf);
}

/* LinkOps.send: as much of the queue as credits and send buffers allow */
static int rdma_send(Engine *e, int slot)
{
    Link *l = e->links[slot];
    RdmaLink *r = l->rdma;
    int rc;

    while (l->ot > l->oh && r->send_free > 0 && r->credits > 1) {
        size_t n = l->ot - l->oh < RD_BUFSZ ? l->ot - l->oh : RD_BUFSZ;

        memcpy(rd_sbuf(r, r->send_next), l->ob + l->oh, n);
        rc = rd_post_send(r, r->send_next, n);
        if (rc) {
            rd_fail(e, slot, "cannot post a send", rc);
            return -1;
        }
        l->oh += n;
    }
    if (l->oh == l->ot) {
        l->oh = l->ot = 0;
    }
    /* receives to hand back and nothing to carry them: a credit-only message */
    if (r->to_return >= RD_BATCH && r->send_free > 0 && r->credits > 0) {
        rc = rd_post_send(r, r->send_next, 0);
        if (rc) {
            rd_fail(e, slot, "cannot post a send", rc);
            return -1;
        }
    }
    return 0;
}

/*
 * Take the link's completions: received bytes go to the shared framing and
 * routing, returned credits and finished sends let queued bytes go out.
 * Returns how many completions it took, -1 if the link closed.
 */
static int rdma_poll(Engine *e, int slot)
{
    Link *l = e->links[slot];
    RdmaLink *r = l->rdma;
    struct ibv_wc wc[16];
    int n, i, total = 0, more_out = 0;

    for (;;) {
        n = ibv_poll_cq(r->cq, 16, wc);
        if (n < 0) {
            rd_fail(e, slot, "polling the completion queue failed", 0);
            return -1;
        }
        if (n == 0) {
            break;
        }
        total += n;
        for (i = 0; i < n; i++) {
            if (wc[i].status != IBV_WC_SUCCESS) {
                char what[160];

                snprintf(what, sizeof(what), "queue pair in the error state "
                         "(%s on a %s)", ibv_wc_status_str(wc[i].status),
                         wc[i].opcode & IBV_WC_RECV ? "receive" : "send");
                rd_fail(e, slot, what, 0);
                return -1;
            }
            if (!(wc[i].opcode & IBV_WC_RECV)) {
                r->send_free += (int)wc[i].wr_id;
                r->send_cqes++;
                more_out = 1;
                continue;
            }
            if (wc[i].wc_flags & IBV_WC_WITH_IMM) {
                r->credits += (int)ntohl(wc[i].imm_data);
                more_out = 1;
            }
            if (wc[i].byte_len && !l->rx_dead) {
                memcpy(l->rbuf + l->re, rd_rbuf(r, (unsigned)wc[i].wr_id),
                       wc[i].byte_len);
                got_bytes(e, slot, wc[i].byte_len);
                if (l->closed) {
                    return -1;
                }
            }
            if (rd_post_recv(r, (unsigned)wc[i].wr_id)) {
                rd_fail(e, slot, "cannot repost a receive", 0);
                return -1;
            }
            r->to_return++;
        }
    }
    if ((more_out && l->ot > l->oh) || r->to_return >= RD_BATCH) {
        if (rdma_send(e, slot) < 0) {
            return -1;
        }
    }
    return total;
}

/*
 * LinkOps.read: the channel fd (``chan_ready``) or the TCP socket is
 * readable. A wake-up by the channel takes one event (epoll is level-
 * triggered: another one wakes it again) and never looks at the socket, so
 * that it costs as few system calls as it can.
 */
static void rdma_read(Engine *e, int slot)
{
    Link *l = e->links[slot];
    RdmaLink *r = l->rdma;
    struct ibv_cq *cq;
    void *ctx;
    char c;
    ssize_t k;

    if (r->chan_ready) {
        r->chan_ready = 0;
        if (ibv_get_cq_event(r->ch, &cq, &ctx) == 0) {
            ibv_ack_cq_events(cq, 1);
        }
        if (ibv_req_notify_cq(r->cq, 0)) {
            rd_fail(e, slot, "cannot arm the completion queue", 0);
            return;
        }
        rdma_poll(e, slot);
        return;
    }
    k = recv(l->fd, &c, 1, MSG_DONTWAIT | MSG_PEEK);
    if (k == 0) {
        close_link(e, slot, "remote gone: the peer router closed the "
                   "connection of its RDMA link");
        return;
    }
    if (k > 0) {
        close_link(e, slot, "unexpected bytes on the TCP connection of an "
                   "RDMA link");
        return;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        close_errno(e, slot, "remote gone: the RDMA link's TCP connection "
                    "failed", errno);
    }
}

/* LinkOps.close: error the QP (flushes what is posted), tell the peer */
static void rdma_close(Engine *e, int slot)
{
    Link *l = e->links[slot];
    RdmaLink *r = l->rdma;
    struct ibv_qp_attr at = { .qp_state = IBV_QPS_ERR };

    if (r->polling) {
        r->polling = 0;
        e->nrdma--;
        epoll_ctl(e->ep, EPOLL_CTL_DEL, r->ch->fd, NULL);
    }
    ibv_modify_qp(r->qp, &at, IBV_QP_STATE);
    shutdown(l->fd, SHUT_RDWR);
}

static const LinkOps rdma_ops = { rdma_read, rdma_send, rdma_close };

/* start(): the channel fd joins the epoll set under the link's handle */
static int rdma_start(Engine *e, int slot)
{
    Link *l = e->links[slot];
    struct epoll_event ev = { 0 };

    ev.events = EPOLLIN;
    ev.data.u64 = handle_of(slot, l) | RD_CHAN_TAG;
    if (epoll_ctl(e->ep, EPOLL_CTL_ADD, l->rdma->ch->fd, &ev) < 0) {
        return -1;
    }
    l->rdma->polling = 1;
    e->nrdma++;
    return 0;
}

/* while spinning: poll every RDMA link's CQ; how many completions */
static int rdma_spin_poll(Engine *e)
{
    int i, k, total = 0;

    pthread_mutex_lock(&e->mu);
    for (i = 0; i < e->npeers; i++) {
        int slot = e->peers[i];
        Link *l = e->links[slot];

        if (l->rdma && l->rdma->polling && !l->closed && !l->rx_dead) {
            k = rdma_poll(e, slot);
            if (k > 0) {
                total += k;
            }
        }
    }
    flush_dirty(e);
    pthread_mutex_unlock(&e->mu);
    return total;
}

/* --- Python ------------------------------------------------------------ */

/*
 * add_rdma(fd, peer_id, device, port, gid_index) -> (handle, params): a
 * peer link over a new RC queue pair, ``fd`` being the authenticated TCP
 * connection to that peer; ``params`` go to the peer, whose own go to
 * rdma_connect() before start().
 */
static PyObject *Engine_add_rdma(Engine *e, PyObject *args)
{
    int fd, peer_id, port, gidx, slot;
    const char *dev;
    char err[300];
    RdmaLink *r;
    PyObject *h;
    Link *l;
    uint8_t params[RD_PARAMS_SIZE];

    if (!PyArg_ParseTuple(args, "iizii", &fd, &peer_id, &dev, &port, &gidx)) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    r = rd_open(dev, port, gidx, err, sizeof(err));
    Py_END_ALLOW_THREADS
    if (!r) {
        PyErr_SetString(PyExc_OSError, err);
        return NULL;
    }
    h = PyObject_CallMethod((PyObject *)e, "add", "iOi", fd, Py_False, peer_id);
    if (!h) {
        rd_destroy(r);
        return NULL;
    }
    lock(e);
    l = lookup(e, PyLong_AsUnsignedLong(h), &slot);
    if (l) {
        l->rdma = r;
        l->ops = &rdma_ops;
    }
    unlock(e);
    if (!l) {
        rd_destroy(r);
        Py_DECREF(h);
        return stale();
    }
    rd_params(r, params);
    return Py_BuildValue("(Ny#)", h, (const char *)params,
                         (Py_ssize_t)RD_PARAMS_SIZE);
}

/* rdma_connect(handle, peer_params): ready the QP (RTR, RTS) */
static PyObject *Engine_rdma_connect(Engine *e, PyObject *args)
{
    unsigned long h;
    Py_buffer b;
    Link *l;
    char err[300] = "";
    int rc = -1;

    if (!PyArg_ParseTuple(args, "ky*", &h, &b)) {
        return NULL;
    }
    if (b.len != RD_PARAMS_SIZE) {
        PyBuffer_Release(&b);
        PyErr_Format(PyExc_OSError, "the peer's RDMA parameters are %zd "
                     "bytes, not %d", b.len, RD_PARAMS_SIZE);
        return NULL;
    }
    lock(e);
    l = lookup(e, h, NULL);
    if (l && l->rdma && !l->started) {
        rc = rd_connect(l->rdma, b.buf, err, sizeof(err));
    } else {
        snprintf(err, sizeof(err), "not an RDMA link being set up");
    }
    unlock(e);
    PyBuffer_Release(&b);
    if (rc < 0) {
        PyErr_SetString(PyExc_OSError, err);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* rdma_info(handle) -> dict, or None for a TCP link */
static PyObject *Engine_rdma_info(Engine *e, PyObject *arg)
{
    unsigned long h = PyLong_AsUnsignedLong(arg);
    Link *l;
    PyObject *out = NULL;

    if (PyErr_Occurred()) {
        return NULL;
    }
    lock(e);
    l = lookup(e, h, NULL);
    if (l && l->rdma) {
        RdmaLink *r = l->rdma;

        out = Py_BuildValue("{s:s,s:i,s:I,s:i,s:i,s:i,s:i,s:K,s:K,s:i}",
                            "device", r->dev, "port", (int)r->port,
                            "qp_num", r->qp->qp_num, "credits", r->credits,
                            "to_return", r->to_return,
                            "send_free", r->send_free,
                            "unsignaled", r->unsignaled,
                            "sends", (unsigned long long)r->sends,
                            "send_completions",
                            (unsigned long long)r->send_cqes,
                            "signal_every", RD_SIGNAL);
    }
    unlock(e);
    if (!l) {
        return stale();
    }
    if (!out) {
        Py_RETURN_NONE;
    }
    return out;
}

#define RDMA_METHODS \
    { "add_rdma", (PyCFunction)Engine_add_rdma, METH_VARARGS, \
      "add_rdma(fd, peer_id, device, port, gid_index) -> (handle, params)" }, \
    { "rdma_connect", (PyCFunction)Engine_rdma_connect, METH_VARARGS, \
      "rdma_connect(handle, peer_params): ready the queue pair" }, \
    { "rdma_info", (PyCFunction)Engine_rdma_info, METH_O, \
      "rdma_info(handle) -> dict or None" },
