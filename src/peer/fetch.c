/* fetch: the asking side of a question (enum peer_question) — a short
 * blocking exchange outside the streams (a member joining an existing
 * cluster asks before it has a transport): a HELLO whose kind is the
 * question and whose `to` is what it is about, then one HELLO_ACK whose text
 * is the answering member's cfg.answer bytes. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "peer/peer_int.h"

/* Waits until fd is ready for `events` or the deadline passes. */
static int wait_fd(int fd, short events, uint64_t deadline_ns) {
    uint64_t now = util_now_mono_ns();
    if (now >= deadline_ns)
        return -ETIMEDOUT;
    struct pollfd p = {.fd = fd, .events = events};
    int n = poll(&p, 1, (int)((deadline_ns - now) / 1000000 + 1));
    if (n < 0)
        return -errno;
    return n == 0 ? -ETIMEDOUT : 0;
}

static int write_all(int fd, const uint8_t *p, size_t len, uint64_t deadline_ns) {
    while (len) {
        int rc = wait_fd(fd, POLLOUT, deadline_ns);
        if (rc != 0)
            return rc;
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            return -errno;
        if (n > 0)
            p += n, len -= (size_t)n;
    }
    return 0;
}

static int read_all(int fd, uint8_t *p, size_t len, uint64_t deadline_ns) {
    while (len) {
        int rc = wait_fd(fd, POLLIN, deadline_ns);
        if (rc != 0)
            return rc;
        ssize_t n = recv(fd, p, len, 0);
        if (n == 0)
            return -EPROTO;
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            return -errno;
        if (n > 0)
            p += n, len -= (size_t)n;
    }
    return 0;
}

/* Connects to ss within the deadline. Returns the socket or a negative code. */
static int dial(const struct sockaddr_storage *ss, uint64_t deadline_ns) {
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    socklen_t sl =
        ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    int rc = 0;
    if (connect(fd, (const struct sockaddr *)ss, sl) != 0) {
        rc = errno == EINPROGRESS ? wait_fd(fd, POLLOUT, deadline_ns) : -errno;
        int soerr = 0;
        socklen_t el = sizeof(soerr);
        if (rc == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &el) == 0 && soerr)
            rc = -soerr;
    }
    if (rc != 0) {
        close(fd);
        return rc;
    }
    return fd;
}

int peer_ask(const char *url, enum peer_question q, uint64_t about, unsigned timeout_ms,
             uint64_t *cluster_id, uint64_t *member_id, struct util_buf *out,
             struct util_err *err) {
    struct sockaddr_storage ss;
    char addr[UTIL_ADDR_MAX];
    int rc = util_listen_addr(url, &ss, addr, sizeof(addr), err);
    if (rc != 0)
        return rc;
    uint64_t deadline = util_now_mono_ns() + (uint64_t)timeout_ms * 1000000u;
    int fd = dial(&ss, deadline);
    if (fd < 0)
        return util_errorf(err, fd, "cannot reach %s: %s", url, strerror(-fd));
    uint8_t hello[PEER_FRAME_HDR + 25] = {
        PEER_MAGIC0, PEER_MAGIC1, PEER_VERSION, PEER_F_HELLO, 0, 0, 0, 25};
    peer_put_u64(hello + PEER_FRAME_HDR + 16, about);
    hello[PEER_FRAME_HDR + 24] = (uint8_t)q;
    uint8_t h[PEER_FRAME_HDR];
    uint8_t *body = NULL;
    rc = write_all(fd, hello, sizeof(hello), deadline);
    if (rc == 0)
        rc = read_all(fd, h, sizeof(h), deadline);
    uint32_t len = (uint32_t)h[4] << 24 | (uint32_t)h[5] << 16 | (uint32_t)h[6] << 8 | h[7];
    if (rc == 0 && (h[0] != PEER_MAGIC0 || h[1] != PEER_MAGIC1 || h[2] != PEER_VERSION ||
                    h[3] != PEER_F_HELLO_ACK || len < 17 || len > PEER_MAX_FRAME))
        rc = -EPROTO;
    if (rc == 0 && !(body = malloc(len)))
        rc = -ENOMEM;
    if (rc == 0)
        rc = read_all(fd, body, len, deadline);
    if (rc == 0 && body[0] != PEER_ACK_OK)
        rc = -EPROTO;
    if (rc == 0) {
        *cluster_id = peer_get_u64(body + 1);
        *member_id = peer_get_u64(body + 9);
        rc = util_buf_append(out, body + 17, len - 17);
    }
    free(body);
    close(fd);
    if (rc != 0)
        return util_errorf(err, rc, "no answer from %s: %s", url,
                           rc == -EPROTO ? "not answered as a quoin peer" : strerror(-rc));
    return 0;
}
