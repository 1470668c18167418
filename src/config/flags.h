/* flags: internal to src/config — the table of etcd's server flags. */
#ifndef QUOIN_CONFIG_FLAGS_H
#define QUOIN_CONFIG_FLAGS_H

#include <stdbool.h>
#include <stddef.h>

enum flag_kind {
    FLAG_STR,
    FLAG_UINT,     /* Go's uint: digits only, no sign */
    FLAG_INT,      /* Go's int64 */
    FLAG_BOOL,     /* Go's strconv.ParseBool words */
    FLAG_URLS,     /* comma list of http/https/unix/unixs URLs with host:port */
    FLAG_CHOICE,   /* one word of `choices` */
    FLAG_DURATION, /* Go's time.Duration syntax, e.g. "1h30m", "100ms" */
};

struct flag_def {
    const char *name;
    enum flag_kind kind;
    const char *def; /* default, as text */
    const char *const *choices;
    bool supported; /* false: refused when set to anything but the default */
};

size_t flag_count(void);
const struct flag_def *flag_at(size_t i);

/* Index of the flag named by the first len bytes of name, or -1. */
int flag_index(const char *name, size_t len);

#endif
