/* log: structured logs, one JSON object a line, in the style of etcd's zap
 * logger, so the tools that read etcd's logs read quoin's:
 *
 *   {"level":"info","ts":"2026-11-27T08:07:05.546932Z","caller":"server/server.c:88",
 *    "msg":"serving client traffic","address":"127.0.0.1:2379"}
 *
 * A logger is a handle made once in main() and passed to whatever logs. Each
 * line is written with a single write(2), so lines from several threads never
 * interleave; the logger itself holds no lock and may be shared by threads.
 *
 *   LOG_INFO(lg, "serving client traffic", LOG_STR("address", addr));
 */
#ifndef QUOIN_LOG_H
#define QUOIN_LOG_H

#include <stdint.h>

#include "util/util.h"

enum log_level {
    LOG_LEVEL_DEBUG,
    LOG_LEVEL_INFO,
    LOG_LEVEL_WARN,
    LOG_LEVEL_ERROR,
    LOG_LEVEL_PANIC,
    LOG_LEVEL_FATAL,
};

enum log_field_type { LOG_F_END, LOG_F_STR, LOG_F_INT, LOG_F_UINT, LOG_F_BOOL, LOG_F_DOUBLE };

/* One key/value of a line. Build them with the LOG_* field macros. */
struct log_field {
    const char *key;
    enum log_field_type type;
    union {
        const char *s;
        long long i;
        unsigned long long u;
        int b;
        double d;
    } v;
};

#define LOG_STR(k, x) ((struct log_field){.key = (k), .type = LOG_F_STR, .v.s = (x)})
#define LOG_INT(k, x) ((struct log_field){.key = (k), .type = LOG_F_INT, .v.i = (long long)(x)})
#define LOG_UINT(k, x)                                                                             \
    ((struct log_field){.key = (k), .type = LOG_F_UINT, .v.u = (unsigned long long)(x)})
#define LOG_BOOL(k, x) ((struct log_field){.key = (k), .type = LOG_F_BOOL, .v.b = !!(x)})
#define LOG_DOUBLE(k, x) ((struct log_field){.key = (k), .type = LOG_F_DOUBLE, .v.d = (double)(x)})
#define LOG_END ((struct log_field){.key = 0, .type = LOG_F_END})

typedef struct log log_t;

/* Parses a level name as etcd's --log-level takes it (debug, info, warn, error,
 * panic, fatal). Returns 0, or -EINVAL for any other word. */
int log_parse_level(const char *name, enum log_level *out);

/* Opens a logger writing lines at `level` and above to `outputs`, a comma list
 * as etcd's --log-outputs takes it: "default" or "stderr" (standard error),
 * "stdout", or file paths (appended to, created 0600). Returns 0 or a negative
 * code with err filled. */
int log_open(enum log_level level, const char *outputs, log_t **out, struct util_err *err);

/* Closes the files the logger opened and frees it. NULL is a no-op. */
void log_close(log_t *lg);

/* Whether a line at `level` would be written: lets a caller skip building
 * expensive fields. */
int log_enabled(const log_t *lg, enum log_level level);

/* Writes one line. The variadic arguments are struct log_field values ending
 * with LOG_END; the LOG_* macros below add the caller and the terminator. A NULL
 * logger writes nothing, which keeps library code usable without one. */
void log_emit(log_t *lg, enum log_level level, const char *file, int line, const char *msg, ...);

#define LOG_AT(lg, level, ...) log_emit((lg), (level), __FILE__, __LINE__, __VA_ARGS__, LOG_END)
#define LOG_DEBUG(lg, ...) LOG_AT(lg, LOG_LEVEL_DEBUG, __VA_ARGS__)
#define LOG_INFO(lg, ...) LOG_AT(lg, LOG_LEVEL_INFO, __VA_ARGS__)
#define LOG_WARN(lg, ...) LOG_AT(lg, LOG_LEVEL_WARN, __VA_ARGS__)
#define LOG_ERROR(lg, ...) LOG_AT(lg, LOG_LEVEL_ERROR, __VA_ARGS__)

#endif
