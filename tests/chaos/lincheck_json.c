/* Recursive-descent JSON reader for history lines (see lincheck_json.h). Depth is
 * bounded so a hostile line cannot overflow the stack. */
#include "lincheck_json.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LCJ_MAX_DEPTH 32

struct lcj_parser {
    const char *p, *end;
    char *why;
    size_t whylen;
};

static int lcj_fail(struct lcj_parser *ps, const char *what) {
    if (ps->why != NULL && ps->whylen > 0)
        snprintf(ps->why, ps->whylen, "%s at byte %zu", what, (size_t)(ps->end - ps->p));
    return -EINVAL;
}

static void lcj_skip_ws(struct lcj_parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int lcj_hex4(struct lcj_parser *ps, unsigned *out) {
    unsigned v = 0;
    if (ps->end - ps->p < 4)
        return lcj_fail(ps, "short \\u escape");
    for (int i = 0; i < 4; i++) {
        char c = *ps->p++;
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return lcj_fail(ps, "bad \\u escape");
    }
    *out = v;
    return 0;
}

/* Writes code point cp as UTF-8 into dst (room for 4) and returns the length. */
static size_t lcj_utf8(unsigned cp, char *dst) {
    if (cp < 0x80) {
        dst[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        dst[0] = (char)(0xc0 | (cp >> 6));
        dst[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        dst[0] = (char)(0xe0 | (cp >> 12));
        dst[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        dst[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    dst[0] = (char)(0xf0 | (cp >> 18));
    dst[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    dst[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    dst[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Reads a string whose opening quote was consumed; the decoded text is never
 * longer than the encoded one, so one allocation of the raw length suffices. */
static int lcj_string(struct lcj_parser *ps, char **out, size_t *outlen) {
    const char *q = ps->p;
    while (q < ps->end && *q != '"')
        q += (*q == '\\') ? 2 : 1;
    if (q >= ps->end)
        return lcj_fail(ps, "unterminated string");
    char *s = malloc((size_t)(q - ps->p) + 1);
    if (s == NULL)
        return -ENOMEM;
    size_t n = 0;
    int rc;
    while (*ps->p != '"') {
        char c = *ps->p++;
        if (c != '\\') {
            s[n++] = c;
            continue;
        }
        c = *ps->p++;
        switch (c) {
        case 'n':
            s[n++] = '\n';
            break;
        case 't':
            s[n++] = '\t';
            break;
        case 'r':
            s[n++] = '\r';
            break;
        case 'b':
            s[n++] = '\b';
            break;
        case 'f':
            s[n++] = '\f';
            break;
        case '/':
        case '\\':
        case '"':
            s[n++] = c;
            break;
        case 'u': {
            unsigned cp;
            rc = lcj_hex4(ps, &cp);
            if (rc != 0)
                goto err;
            if (cp >= 0xd800 && cp < 0xdc00 && ps->end - ps->p >= 6 && ps->p[0] == '\\' &&
                ps->p[1] == 'u') {
                unsigned lo;
                ps->p += 2;
                rc = lcj_hex4(ps, &lo);
                if (rc != 0)
                    goto err;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            n += lcj_utf8(cp, s + n);
            break;
        }
        default:
            rc = lcj_fail(ps, "bad escape");
            goto err;
        }
    }
    ps->p++;
    s[n] = '\0';
    *out = s;
    *outlen = n;
    return 0;
err:
    free(s);
    return rc;
}

static int lcj_value(struct lcj_parser *ps, int depth, struct lcj **out);

/* Appends item (and name, for objects) to v, growing its arrays. */
static int lcj_push(struct lcj *v, char *name, struct lcj *item) {
    struct lcj **items = realloc(v->items, (v->len + 1) * sizeof(*items));
    if (items == NULL)
        return -ENOMEM;
    v->items = items;
    if (v->type == LCJ_OBJ) {
        char **names = realloc(v->names, (v->len + 1) * sizeof(*names));
        if (names == NULL)
            return -ENOMEM;
        v->names = names;
        names[v->len] = name;
    }
    items[v->len++] = item;
    return 0;
}

static int lcj_container(struct lcj_parser *ps, int depth, struct lcj *v) {
    char close = v->type == LCJ_OBJ ? '}' : ']';
    lcj_skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        return 0;
    }
    for (;;) {
        char *name = NULL;
        size_t namelen;
        struct lcj *item = NULL;
        int rc;
        lcj_skip_ws(ps);
        if (v->type == LCJ_OBJ) {
            if (ps->p >= ps->end || *ps->p != '"')
                return lcj_fail(ps, "expected member name");
            ps->p++;
            rc = lcj_string(ps, &name, &namelen);
            if (rc != 0)
                return rc;
            lcj_skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') {
                free(name);
                return lcj_fail(ps, "expected ':'");
            }
            ps->p++;
        }
        rc = lcj_value(ps, depth + 1, &item);
        if (rc == 0)
            rc = lcj_push(v, name, item);
        if (rc != 0) {
            free(name);
            lcj_free(item);
            return rc;
        }
        lcj_skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            return 0;
        }
        return lcj_fail(ps, "expected ',' or end of container");
    }
}

static int lcj_number(struct lcj_parser *ps, struct lcj *v) {
    int neg = 0;
    uint64_t acc = 0;
    if (ps->p < ps->end && *ps->p == '-') {
        neg = 1;
        ps->p++;
    }
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
        return lcj_fail(ps, "bad number");
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
        uint64_t d = (uint64_t)(*ps->p++ - '0');
        if (acc > ((uint64_t)INT64_MAX - d) / 10)
            return lcj_fail(ps, "number out of int64 range");
        acc = acc * 10 + d;
    }
    if (ps->p < ps->end && (*ps->p == '.' || *ps->p == 'e' || *ps->p == 'E'))
        return lcj_fail(ps, "only integer numbers are used in histories");
    v->num = neg ? -(int64_t)acc : (int64_t)acc;
    return 0;
}

static int lcj_word(struct lcj_parser *ps, const char *w) {
    size_t n = strlen(w);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, w, n) != 0)
        return lcj_fail(ps, "unexpected token");
    ps->p += n;
    return 0;
}

static int lcj_value(struct lcj_parser *ps, int depth, struct lcj **out) {
    if (depth > LCJ_MAX_DEPTH)
        return lcj_fail(ps, "nested too deep");
    lcj_skip_ws(ps);
    if (ps->p >= ps->end)
        return lcj_fail(ps, "unexpected end");
    struct lcj *v = calloc(1, sizeof(*v));
    if (v == NULL)
        return -ENOMEM;
    int rc;
    char c = *ps->p;
    if (c == '{' || c == '[') {
        ps->p++;
        v->type = c == '{' ? LCJ_OBJ : LCJ_ARR;
        rc = lcj_container(ps, depth, v);
    } else if (c == '"') {
        ps->p++;
        v->type = LCJ_STR;
        rc = lcj_string(ps, &v->str, &v->len);
    } else if (c == 't' || c == 'f') {
        v->type = LCJ_BOOL;
        v->num = c == 't';
        rc = lcj_word(ps, c == 't' ? "true" : "false");
    } else if (c == 'n') {
        v->type = LCJ_NULL;
        rc = lcj_word(ps, "null");
    } else {
        v->type = LCJ_INT;
        rc = lcj_number(ps, v);
    }
    if (rc != 0) {
        lcj_free(v);
        return rc;
    }
    *out = v;
    return 0;
}

int lcj_parse(const char *text, size_t n, struct lcj **out, char *why, size_t whylen) {
    struct lcj_parser ps = {text, text + n, why, whylen};
    struct lcj *v = NULL;
    int rc = lcj_value(&ps, 0, &v);
    if (rc != 0)
        return rc;
    lcj_skip_ws(&ps);
    if (ps.p != ps.end) {
        lcj_free(v);
        return lcj_fail(&ps, "trailing text");
    }
    *out = v;
    return 0;
}

void lcj_free(struct lcj *v) {
    if (v == NULL)
        return;
    for (size_t i = 0; i < v->len && v->items != NULL; i++) {
        lcj_free(v->items[i]);
        if (v->names != NULL)
            free(v->names[i]);
    }
    free(v->items);
    free(v->names);
    free(v->str);
    free(v);
}

const struct lcj *lcj_get(const struct lcj *v, const char *name) {
    if (v == NULL || v->type != LCJ_OBJ)
        return NULL;
    for (size_t i = 0; i < v->len; i++)
        if (strcmp(v->names[i], name) == 0)
            return v->items[i];
    return NULL;
}
