/* A small JSON reader for the checker's history lines: one line is parsed into a
 * tree, read, and freed. Numbers are integers only (revisions, times, lease ids),
 * which is all the history format uses. Internal to tests/chaos. */
#ifndef QUOIN_LINCHECK_JSON_H
#define QUOIN_LINCHECK_JSON_H

#include <stddef.h>
#include <stdint.h>

enum lcj_type { LCJ_NULL, LCJ_BOOL, LCJ_INT, LCJ_STR, LCJ_ARR, LCJ_OBJ };

struct lcj {
    enum lcj_type type;
    int64_t num;        /* LCJ_INT, and LCJ_BOOL as 0/1 */
    char *str;          /* LCJ_STR: decoded bytes, NUL-terminated */
    size_t len;         /* LCJ_STR: bytes; LCJ_ARR/LCJ_OBJ: members */
    char **names;       /* LCJ_OBJ: member names */
    struct lcj **items; /* LCJ_ARR/LCJ_OBJ: members */
};

/* Parses text[0..n) as exactly one JSON value. Returns 0 and the tree in *out,
 * -EINVAL with a short reason in why (at least 80 bytes) for bad input, -ENOMEM. */
int lcj_parse(const char *text, size_t n, struct lcj **out, char *why, size_t whylen);

void lcj_free(struct lcj *v);

/* The member called name of an object, or NULL (also when v is not an object). */
const struct lcj *lcj_get(const struct lcj *v, const char *name);

#endif
