/* log: zap-style JSON lines, one write(2) per line to each output. */
#include "log/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOG_MAX_OUTPUTS 8

struct log {
    enum log_level level;
    int nfds;
    int fds[LOG_MAX_OUTPUTS];
    int owned[LOG_MAX_OUTPUTS]; /* 1 where we opened the file and must close it */
};

static const char *const level_names[] = {"debug", "info", "warn", "error", "panic", "fatal"};

int log_parse_level(const char *name, enum log_level *out) {
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -EINVAL;
}

int log_open(enum log_level level, const char *outputs, log_t **out, struct util_err *err) {
    log_t *lg = calloc(1, sizeof(*lg));
    char *list = outputs ? strdup(outputs) : strdup("default");
    int rc;
    if (!lg || !list) {
        rc = util_errorf(err, -ENOMEM, "out of memory opening the logger");
        goto err;
    }
    lg->level = level;
    char *save = NULL;
    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (lg->nfds == LOG_MAX_OUTPUTS) {
            rc = util_errorf(err, -EINVAL, "--log-outputs: at most %d outputs", LOG_MAX_OUTPUTS);
            goto err;
        }
        int fd, owned = 0;
        if (strcmp(tok, "default") == 0 || strcmp(tok, "stderr") == 0) {
            fd = STDERR_FILENO;
        } else if (strcmp(tok, "stdout") == 0) {
            fd = STDOUT_FILENO;
        } else {
            fd = open(tok, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
            if (fd < 0) {
                rc =
                    util_errorf(err, -errno, "cannot open log output %s: %s", tok, strerror(errno));
                goto err;
            }
            owned = 1;
        }
        lg->fds[lg->nfds] = fd;
        lg->owned[lg->nfds] = owned;
        lg->nfds++;
    }
    if (lg->nfds == 0) {
        rc = util_errorf(err, -EINVAL, "--log-outputs: no output given");
        goto err;
    }
    free(list);
    *out = lg;
    return 0;
err:
    free(list);
    log_close(lg);
    return rc;
}

void log_close(log_t *lg) {
    if (!lg)
        return;
    for (int i = 0; i < lg->nfds; i++)
        if (lg->owned[i])
            close(lg->fds[i]);
    free(lg);
}

int log_enabled(const log_t *lg, enum log_level level) {
    return lg && level >= lg->level;
}

/* Drops the directory part that says nothing ("src/"), leaving "layer/file.c"
 * as zap's short caller does for Go packages. */
static const char *short_caller(const char *file) {
    return strncmp(file, "src/", 4) == 0 ? file + 4 : file;
}

static void append_field(struct util_buf *b, const struct log_field *f) {
    util_buf_append(b, ",\"", 2);
    util_buf_json_escape(b, f->key, strlen(f->key));
    util_buf_append(b, "\":", 2);
    switch (f->type) {
    case LOG_F_STR:
        if (!f->v.s) {
            util_buf_append(b, "null", 4);
            break;
        }
        util_buf_append(b, "\"", 1);
        util_buf_json_escape(b, f->v.s, strlen(f->v.s));
        util_buf_append(b, "\"", 1);
        break;
    case LOG_F_INT:
        util_buf_printf(b, "%lld", f->v.i);
        break;
    case LOG_F_UINT:
        util_buf_printf(b, "%llu", f->v.u);
        break;
    case LOG_F_BOOL:
        util_buf_printf(b, "%s", f->v.b ? "true" : "false");
        break;
    case LOG_F_DOUBLE:
        util_buf_printf(b, "%.6g", f->v.d);
        break;
    case LOG_F_END:
        break;
    }
}

void log_emit(log_t *lg, enum log_level level, const char *file, int line, const char *msg, ...) {
    if (!log_enabled(lg, level))
        return;
    uint64_t now = util_now_wall_ns();
    time_t secs = (time_t)(now / 1000000000u);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char ts[64];
    snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%06uZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (unsigned)((now % 1000000000u) / 1000u));

    /* A failed append leaves a shorter line; a log line is never worth failing
     * the caller for, so appends are not checked one by one. */
    struct util_buf b = {0};
    util_buf_printf(&b, "{\"level\":\"%s\",\"ts\":\"%s\",\"caller\":\"%s:%d\",\"msg\":\"",
                    level_names[level], ts, short_caller(file), line);
    util_buf_json_escape(&b, msg, strlen(msg));
    util_buf_append(&b, "\"", 1);
    va_list ap;
    va_start(ap, msg);
    for (;;) {
        struct log_field f = va_arg(ap, struct log_field);
        if (f.type == LOG_F_END)
            break;
        append_field(&b, &f);
    }
    va_end(ap);
    util_buf_append(&b, "}\n", 2);
    if (b.data) {
        for (int i = 0; i < lg->nfds; i++) {
            ssize_t w = write(lg->fds[i], b.data, b.len);
            (void)w; /* nowhere better to report a failed log write */
        }
    }
    util_buf_free(&b);
}
