/* snap: snapshot streaming. A snapshot travels on a connection of its own, so
 * heartbeats on the peer's stream never wait behind it: the MsgSnap (metadata
 * only), then the data in chunks each carrying its SHA-256, then the total
 * size with the SHA-256 of everything; the receiver checks each, fsyncs the
 * file and answers with one status frame, which becomes the sender's
 * PEER_EV_SNAP_STATUS. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "peer/peer_int.h"

int peer_snap_send_new(peer_transport_t *pt, const struct raft_msg *m, int fd,
                       struct peer_snap_send **out) {
    struct peer_snap_send *ss = calloc(1, sizeof(*ss));
    if (!ss)
        return -ENOMEM;
    ss->pt = pt;
    ss->to = m->to;
    ss->fd = -1;
    int rc = peer_msg_encode(m, PEER_F_SNAP_BEGIN, &ss->begin);
    if (rc != 0)
        goto err;
    rc = -ENOMEM;
    ss->chunk = malloc(PEER_FRAME_HDR + PEER_SHA_LEN + PEER_SNAP_CHUNK);
    ss->whole = EVP_MD_CTX_new();
    if (!ss->chunk || !ss->whole || !EVP_DigestInit_ex(ss->whole, EVP_sha256(), NULL))
        goto err;
    ss->fd = fd;
    *out = ss;
    return 0;
err:
    peer_snap_send_free(ss);
    return rc;
}

void peer_snap_send_free(struct peer_snap_send *ss) {
    if (ss->fd >= 0)
        close(ss->fd);
    free(ss->begin);
    free(ss->chunk);
    EVP_MD_CTX_free(ss->whole);
    free(ss);
}

/* Reports the outcome once and lets go of the connection; the send itself is
 * freed now, or by the read or write in flight when it returns. */
static void send_finish(struct peer_snap_send *ss, bool failed, const char *why) {
    peer_transport_t *pt = ss->pt;
    if (!ss->done) {
        ss->done = true;
        if (failed)
            LOG_WARN(pt->lg, "failed to send database snapshot",
                     PEER_LOG_ID("remote-peer-id", ss->to), LOG_STR("error", why));
        else
            LOG_INFO(pt->lg, "sent database snapshot", PEER_LOG_ID("remote-peer-id", ss->to),
                     LOG_UINT("bytes", ss->sent));
        peer_report_snapshot(pt, ss->to, failed);
    }
    struct peer_conn *c = ss->conn;
    if (c) {
        ss->conn = NULL;
        c->ss = NULL;
        peer_conn_close(c);
    }
    if (!ss->reading && !ss->writing)
        peer_snap_send_free(ss);
}

void peer_snap_start(struct peer_snap_send *ss) {
    peer_transport_t *pt = ss->pt;
    pthread_mutex_lock(&pt->mu);
    struct peer_remote *r = peer_find(pt, ss->to);
    pthread_mutex_unlock(&pt->mu);
    /* Only this thread frees peers, so r stays valid while it dials. */
    struct peer_conn *c = r ? peer_conn_dial(pt, r, PEER_KIND_SNAP) : NULL;
    if (!c) {
        send_finish(ss, true, r ? "cannot dial the peer" : "unknown peer");
        return;
    }
    c->ss = ss;
    ss->conn = c;
}

static void read_next(struct peer_snap_send *ss);

static void on_chunk_written(uv_write_t *req, int status) {
    struct peer_snap_send *ss = req->data;
    ss->writing = false;
    if (!ss->conn || status < 0)
        send_finish(ss, true, status < 0 ? uv_strerror(status) : "connection closed");
    else
        read_next(ss);
}

static void send_chunk(struct peer_snap_send *ss, ssize_t n);

/* The request is counted until the very end: on a caller's loop, the last
 * count released while closing frees the transport. */
static void on_chunk_read(uv_fs_t *req) {
    struct peer_snap_send *ss = req->data;
    peer_transport_t *pt = ss->pt;
    ssize_t n = req->result;
    uv_fs_req_cleanup(req);
    ss->reading = false;
    send_chunk(ss, n);
    peer_fs_done(pt);
}

/* Sends what a read returned: a chunk, or the end of the stream. */
static void send_chunk(struct peer_snap_send *ss, ssize_t n) {
    if (!ss->conn) {
        send_finish(ss, true, "connection closed");
        return;
    }
    if (n < 0) {
        send_finish(ss, true, uv_strerror((int)n));
        return;
    }
    if (n == 0) {
        uint8_t end[8 + PEER_SHA_LEN];
        peer_put_u64(end, ss->sent);
        if (!EVP_DigestFinal_ex(ss->whole, end + 8, NULL) ||
            peer_conn_send(ss->conn, PEER_F_SNAP_END, end, sizeof(end), false, NULL) != 0)
            send_finish(ss, true, "cannot finish the stream");
        return;
    }
    uint8_t *data = ss->chunk + PEER_FRAME_HDR + PEER_SHA_LEN;
    if (!EVP_Digest(data, (size_t)n, ss->chunk + PEER_FRAME_HDR, NULL, EVP_sha256(), NULL) ||
        !EVP_DigestUpdate(ss->whole, data, (size_t)n)) {
        send_finish(ss, true, "sha256 failed");
        return;
    }
#ifdef QUOIN_TESTING
    peer_transport_t *pt = ss->pt;
    pthread_mutex_lock(&pt->mu);
    if (pt->corrupt_at >= ss->sent && pt->corrupt_at - ss->sent < (uint64_t)n) {
        data[pt->corrupt_at - ss->sent] ^= 0x5a;
        pt->corrupt_at = UINT64_MAX;
    }
    pthread_mutex_unlock(&pt->mu);
#endif
    ss->sent += (uint64_t)n;
    peer_frame_header(ss->chunk, PEER_F_SNAP_CHUNK, (uint32_t)(PEER_SHA_LEN + (size_t)n));
    uv_buf_t buf =
        uv_buf_init((char *)ss->chunk, (unsigned)(PEER_FRAME_HDR + PEER_SHA_LEN + (size_t)n));
    ss->wreq.data = ss;
    int rc = uv_write(&ss->wreq, (uv_stream_t *)&ss->conn->tcp, &buf, 1, on_chunk_written);
    if (rc != 0)
        send_finish(ss, true, uv_strerror(rc));
    else
        ss->writing = true;
}

static void read_next(struct peer_snap_send *ss) {
    uv_buf_t buf = uv_buf_init((char *)ss->chunk + PEER_FRAME_HDR + PEER_SHA_LEN, PEER_SNAP_CHUNK);
    ss->fsreq.data = ss;
    int rc = uv_fs_read(ss->pt->loop, &ss->fsreq, ss->fd, &buf, 1, -1, on_chunk_read);
    if (rc != 0) {
        send_finish(ss, true, uv_strerror(rc));
        return;
    }
    ss->reading = true;
    peer_fs_started(ss->pt);
}

static void on_begin_written(uv_write_t *req, int status) {
    struct peer_conn *c = req->data;
    if (status == 0 && c->ss)
        read_next(c->ss);
}

/* ---- receiving ---- */

static void recv_free(struct peer_snap_recv *sr, bool discard) {
    if (sr->fd >= 0)
        close(sr->fd);
    if (discard && sr->path)
        unlink(sr->path);
    free(sr->path);
    free(sr->begin);
    EVP_MD_CTX_free(sr->whole);
    free(sr);
}

/* Lets go of c's incoming snapshot: freed (and its file removed) now, or by
 * the fsync in flight when it returns. */
static void recv_detach(struct peer_conn *c) {
    struct peer_snap_recv *sr = c->sr;
    if (!sr)
        return;
    c->sr = NULL;
    sr->conn = NULL;
    if (!sr->syncing)
        recv_free(sr, true);
}

/* Refuses the snapshot: the sender learns why, the partial file goes. */
static int recv_fail(struct peer_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int recv_fail(struct peer_conn *c, const char *fmt, ...) {
    uint8_t ack[1 + UTIL_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    size_t n = peer_vtext((char *)ack + 1, fmt, ap);
    va_end(ap);
    ack[0] = PEER_ACK_FAILED;
    LOG_WARN(c->pt->lg, "failed to receive database snapshot",
             PEER_LOG_ID("remote-peer-id", c->remote_id), LOG_STR("error", (char *)ack + 1));
    recv_detach(c);
    if (peer_conn_send(c, PEER_F_SNAP_ACK, ack, 1 + n, true, NULL) != 0)
        peer_conn_close(c);
    return -1;
}

static int recv_begin(struct peer_conn *c, const uint8_t *p, size_t len) {
    peer_transport_t *pt = c->pt;
    struct peer_box *b = NULL;
    if (peer_msg_decode(p, len, NULL, 0, &b) != 0)
        return recv_fail(c, "malformed snapshot message");
    const struct raft_msg *m = &b->ev.msg;
    bool ok = m->type == RAFT_MSG_SNAP && m->from == c->remote_id && m->to == pt->cfg.member_id;
    uint64_t term = m->snapshot ? m->snapshot->meta.term : 0;
    uint64_t index = m->snapshot ? m->snapshot->meta.index : 0;
    free(b);
    if (!ok)
        return recv_fail(c, "not a snapshot message for member %" PRIx64, pt->cfg.member_id);
    struct peer_snap_recv *sr = calloc(1, sizeof(*sr));
    if (!sr)
        return recv_fail(c, "out of memory");
    sr->pt = pt;
    sr->fd = -1;
    c->sr = sr;
    sr->conn = c;
    sr->begin = malloc(len ? len : 1);
    sr->whole = EVP_MD_CTX_new();
    if (!sr->begin || !sr->whole || !EVP_DigestInit_ex(sr->whole, EVP_sha256(), NULL) ||
        asprintf(&sr->path, "%s/snap-%016" PRIx64 "-%016" PRIx64 "-XXXXXX.partial",
                 pt->cfg.snap_dir, term, index) < 0) {
        sr->path = NULL;
        return recv_fail(c, "out of memory");
    }
    memcpy(sr->begin, p, len);
    sr->begin_len = len;
    sr->fd = mkostemps(sr->path, (int)strlen(".partial"), O_CLOEXEC);
    if (sr->fd < 0) {
        int e = errno;
        free(sr->path);
        sr->path = NULL;
        return recv_fail(c, "cannot create a file in %s: %s", pt->cfg.snap_dir, strerror(e));
    }
    return 0;
}

static int recv_chunk(struct peer_conn *c, const uint8_t *p, size_t len) {
    struct peer_snap_recv *sr = c->sr;
    uint8_t md[PEER_SHA_LEN];
    if (len < PEER_SHA_LEN)
        return recv_fail(c, "short snapshot chunk");
    const uint8_t *data = p + PEER_SHA_LEN;
    size_t n = len - PEER_SHA_LEN;
    if (!EVP_Digest(data, n, md, NULL, EVP_sha256(), NULL) || memcmp(md, p, PEER_SHA_LEN) != 0)
        return recv_fail(
            c, "snapshot chunk %" PRIu32 " (bytes %" PRIu64 "-%" PRIu64 ") checksum mismatch",
            sr->chunks, sr->got, sr->got + n);
    /* A blocking write to the page cache; the fsync at the end runs off the loop. */
    for (size_t off = 0; off < n;) {
        ssize_t w = write(sr->fd, data + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return recv_fail(c, "write %s: %s", sr->path, strerror(errno));
        off += (size_t)w;
    }
    if (!EVP_DigestUpdate(sr->whole, data, n))
        return recv_fail(c, "sha256 failed");
    sr->got += n;
    sr->chunks++;
    return 0;
}

static void on_synced(uv_fs_t *req) {
    struct peer_snap_recv *sr = req->data;
    peer_transport_t *pt = sr->pt;
    int res = (int)req->result;
    uv_fs_req_cleanup(req);
    sr->syncing = false;
    struct peer_conn *c = sr->conn;
    if (!c) {
        recv_free(sr, true);
        peer_fs_done(pt);
        return;
    }
    peer_fs_done(pt);
    if (res < 0) {
        recv_fail(c, "fsync %s: %s", sr->path, uv_strerror(res));
        return;
    }
    /* The final name is the unique .partial name without its suffix. */
    char *final = strdup(sr->path);
    struct peer_box *b = NULL;
    if (!final)
        goto oom;
    final[strlen(final) - strlen(".partial")] = 0;
    if (rename(sr->path, final) != 0) {
        int e = errno;
        free(final);
        recv_fail(c, "rename %s: %s", sr->path, strerror(e));
        return;
    }
    free(sr->path);
    sr->path = final;
    if (peer_msg_decode(sr->begin, sr->begin_len, final, sr->got, &b) != 0)
        goto oom;
    LOG_INFO(pt->lg, "received and saved database snapshot",
             PEER_LOG_ID("remote-peer-id", c->remote_id), LOG_STR("path", final),
             LOG_UINT("bytes", sr->got));
    recv_free(sr, false);
    c->sr = NULL;
    uint8_t ok = PEER_ACK_OK;
    if (peer_conn_send(c, PEER_F_SNAP_ACK, &ok, 1, true, NULL) != 0)
        peer_conn_close(c);
    peer_inbox_push(pt, b);
    return;
oom:
    recv_fail(c, "out of memory");
}

static int recv_end(struct peer_conn *c, const uint8_t *p, size_t len) {
    struct peer_snap_recv *sr = c->sr;
    uint8_t md[PEER_SHA_LEN];
    if (len != 8 + PEER_SHA_LEN)
        return recv_fail(c, "malformed snapshot end");
    uint64_t total = peer_get_u64(p);
    if (total != sr->got)
        return recv_fail(
            c, "snapshot size mismatch (sender sent %" PRIu64 " bytes, received %" PRIu64 ")",
            total, sr->got);
    if (!EVP_DigestFinal_ex(sr->whole, md, NULL) || memcmp(md, p + 8, PEER_SHA_LEN) != 0)
        return recv_fail(c, "snapshot checksum mismatch (%" PRIu64 " bytes)", sr->got);
    sr->fsreq.data = sr;
    int rc = uv_fs_fsync(c->pt->loop, &sr->fsreq, sr->fd, on_synced);
    if (rc != 0)
        return recv_fail(c, "fsync %s: %s", sr->path, uv_strerror(rc));
    sr->syncing = true;
    peer_fs_started(c->pt);
    return 0;
}

int peer_snap_on_frame(struct peer_conn *c, uint8_t type, const uint8_t *p, size_t len) {
    if (c->outgoing) {
        struct peer_snap_send *ss = c->ss;
        if (type != PEER_F_SNAP_ACK || len < 1 || !ss) {
            peer_conn_close(c);
            return -1;
        }
        char why[UTIL_ERR_MAX];
        snprintf(why, sizeof(why), "%.*s", (int)(len - 1), (const char *)p + 1);
        send_finish(ss, p[0] != PEER_ACK_OK, why);
        return -1;
    }
    if (c->sr && c->sr->syncing)
        return recv_fail(c, "data after the end of the snapshot");
    if (type == PEER_F_SNAP_BEGIN && !c->sr)
        return recv_begin(c, p, len);
    if (type == PEER_F_SNAP_CHUNK && c->sr)
        return recv_chunk(c, p, len);
    if (type == PEER_F_SNAP_END && c->sr)
        return recv_end(c, p, len);
    return recv_fail(c, "unexpected frame %u in a snapshot stream", type);
}

void peer_snap_on_open(struct peer_conn *c) {
    struct peer_snap_send *ss = c->ss;
    if (!ss)
        return;
    const struct peer_frame *f = ss->begin;
    if (peer_conn_send(c, PEER_F_SNAP_BEGIN, f->data + PEER_FRAME_HDR, f->len - PEER_FRAME_HDR,
                       false, on_begin_written) != 0)
        send_finish(ss, true, "out of memory");
}

void peer_snap_on_close(struct peer_conn *c) {
    if (c->ss) {
        struct peer_snap_send *ss = c->ss;
        c->ss = NULL;
        ss->conn = NULL;
        send_finish(ss, true, "connection closed before the receiver confirmed the snapshot");
    }
    recv_detach(c);
}
