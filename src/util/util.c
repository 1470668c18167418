/* util: error messages, clocks and a byte buffer shared by every layer. */
#include "util/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int util_errorf(struct util_err *err, int code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

void util_err_clear(struct util_err *err) {
    err->code = 0;
    err->msg[0] = '\0';
}

static uint64_t clock_ns(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t util_now_mono_ns(void) {
    return clock_ns(CLOCK_MONOTONIC);
}

uint64_t util_now_wall_ns(void) {
    return clock_ns(CLOCK_REALTIME);
}

/* Makes room for n more bytes plus a NUL; doubles capacity to keep appends O(1)
 * amortised. */
static int buf_reserve(struct util_buf *b, size_t n) {
    if (b->len + n + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + n + 1) {
        if (cap > SIZE_MAX / 2)
            return -ENOMEM;
        cap *= 2;
    }
    char *p = realloc(b->data, cap);
    if (!p)
        return -ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int util_buf_append(struct util_buf *b, const void *p, size_t n) {
    if (buf_reserve(b, n) != 0)
        return -ENOMEM;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int util_buf_printf(struct util_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -EINVAL;
    if (buf_reserve(b, (size_t)n) != 0)
        return -ENOMEM;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

int util_buf_json_escape(struct util_buf *b, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        int rc;
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            rc = util_buf_append(b, esc, 2);
        } else if (c == '\n') {
            rc = util_buf_append(b, "\\n", 2);
        } else if (c == '\t') {
            rc = util_buf_append(b, "\\t", 2);
        } else if (c == '\r') {
            rc = util_buf_append(b, "\\r", 2);
        } else if (c < 0x20) {
            rc = util_buf_printf(b, "\\u%04x", c);
        } else {
            rc = util_buf_append(b, &s[i], 1);
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

int util_buf_varint(struct util_buf *b, uint64_t v) {
    uint8_t tmp[10];
    size_t n = 0;
    do {
        tmp[n] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v)
            tmp[n] |= 0x80;
        n++;
    } while (v);
    return util_buf_append(b, tmp, n);
}

size_t util_varint_len(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

void util_buf_free(struct util_buf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
