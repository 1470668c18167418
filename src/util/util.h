/* util: small helpers every layer uses — error messages a user can act on,
 * checked allocation, monotonic and wall clocks, string building.
 *
 * Error convention (the whole project): a function returns 0 on success or a
 * negative errno-style code on failure. Functions whose failure a user will
 * read also take a `struct util_err *` and fill it with a sentence saying what
 * went wrong and, where it helps, what to do about it. */
#ifndef QUOIN_UTIL_H
#define QUOIN_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* quoin's own version, and the etcd server version whose API it speaks (what
 * etcd clients check before using newer calls). */
#define UTIL_QUOIN_VERSION "0.1.0"
#define UTIL_ETCD_VERSION "3.4.23"
#define UTIL_ETCD_CLUSTER_VERSION "3.4.0"

#define UTIL_ERR_MAX 512

struct util_err {
    int code;               /* negative errno-style code, 0 when clear */
    char msg[UTIL_ERR_MAX]; /* NUL-terminated message for the user */
};

/* Fills err (which may be NULL) with a formatted message and returns code, so a
 * failing path can say `return util_errorf(err, -EINVAL, "...", ...);`. */
int util_errorf(struct util_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Clears err to "no error". */
void util_err_clear(struct util_err *err);

/* Nanoseconds from a monotonic clock; only differences mean anything. */
uint64_t util_now_mono_ns(void);

/* Nanoseconds since the Unix epoch, from the wall clock. */
uint64_t util_now_wall_ns(void);

/* A growable byte buffer. Owns `data`; free with util_buf_free. */
struct util_buf {
    char *data;
    size_t len;
    size_t cap;
};

/* Appends bytes; returns 0 or -ENOMEM (the buffer is unchanged on failure). */
int util_buf_append(struct util_buf *b, const void *p, size_t n);

/* Appends printf-formatted text (NUL kept past len, not counted in it). */
int util_buf_printf(struct util_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Appends s as the inside of a JSON string (quotes not included). */
int util_buf_json_escape(struct util_buf *b, const char *s, size_t n);

void util_buf_free(struct util_buf *b);

/* Protobuf's base-128 varint: appends v (returns 0 or -ENOMEM), or tells how
 * many bytes it takes (1 to 10). */
int util_buf_varint(struct util_buf *b, uint64_t v);
size_t util_varint_len(uint64_t v);

/* Declared, not included, so that layers without I/O (raft) do not see
 * socket and libuv names. */
struct sockaddr_storage;
struct uv_tcp_s;
struct uv_stream_s;

/* Room for "[v6 address]:port" as util_listen_addr writes it. */
#define UTIL_ADDR_MAX 64

/* Resolves an etcd-style listen URL ("http://127.0.0.1:2379",
 * "http://localhost:2379" — the first address, IPv4 first, as Go's net.Listen —,
 * "http://[::1]:2379", "http://:2379" for every interface; https:// alike,
 * TLS being the caller's) to an address, and writes it as "127.0.0.1:2379"
 * into addr. Returns 0, -EINVAL for a malformed URL or a name that does not
 * resolve, -ENOTSUP for unix:// and unixs://. */
int util_listen_addr(const char *url, struct sockaddr_storage *ss, char *addr, size_t addrlen,
                     struct util_err *err);

/* Binds the caller's initialised handle to ss and listens. On failure err reads
 * as Go's "listen tcp 127.0.0.1:2379: bind: address already in use" and the
 * caller still owns (and must uv_close) the handle. */
int util_tcp_listen(struct uv_tcp_s *tcp, const struct sockaddr_storage *ss, const char *addr,
                    void (*on_connection)(struct uv_stream_s *, int), struct util_err *err);

#endif
