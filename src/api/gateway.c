/* The v3 JSON gateway: etcd's HTTP/JSON face of its gRPC API ("POST
 * /v3/kv/put" with {"key":"Zm9v","value":"YmFy"}), as etcd 3.4 serves it
 * through grpc-gateway. A request's JSON is encoded straight into protobuf
 * wire format using the method's request descriptor, then goes to the same
 * handler a gRPC client reaches; the answer is written back as JSON.
 *
 * JSON as grpc-gateway's marshaler (OrigName) writes it: field names as in the
 * .proto, 64-bit integers as strings, bytes in base64, enums by name, fields
 * at their default value left out. Reading accepts the .proto name or its
 * lowerCamelCase form, numbers as numbers or strings, enums by name or number,
 * and skips unknown fields. Errors are {"error":..., "message":..., "code":N}
 * with the HTTP status grpc-gateway maps the gRPC code to. Streaming methods
 * (watch, lease keep-alive, snapshot) answer with a chunked stream of
 * {"result":...} lines, as etcd's gateway does. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/internal.h"

#define JSON_MAX_DEPTH 32

/* etcd 3.4's gateway paths (below /v3/ and /v3beta/) and their methods. */
static const struct {
    const char *http, *grpc;
} gateway_paths[] = {
    {"kv/range", "/etcdserverpb.KV/Range"},
    {"kv/put", "/etcdserverpb.KV/Put"},
    {"kv/deleterange", "/etcdserverpb.KV/DeleteRange"},
    {"kv/txn", "/etcdserverpb.KV/Txn"},
    {"kv/compaction", "/etcdserverpb.KV/Compact"},
    {"lease/grant", "/etcdserverpb.Lease/LeaseGrant"},
    {"watch", "/etcdserverpb.Watch/Watch"},
    {"lease/keepalive", "/etcdserverpb.Lease/LeaseKeepAlive"},
    {"maintenance/snapshot", "/etcdserverpb.Maintenance/Snapshot"},
    {"lease/revoke", "/etcdserverpb.Lease/LeaseRevoke"},
    {"kv/lease/revoke", "/etcdserverpb.Lease/LeaseRevoke"},
    {"lease/timetolive", "/etcdserverpb.Lease/LeaseTimeToLive"},
    {"kv/lease/timetolive", "/etcdserverpb.Lease/LeaseTimeToLive"},
    {"lease/leases", "/etcdserverpb.Lease/LeaseLeases"},
    {"kv/lease/leases", "/etcdserverpb.Lease/LeaseLeases"},
    {"cluster/member/add", "/etcdserverpb.Cluster/MemberAdd"},
    {"cluster/member/remove", "/etcdserverpb.Cluster/MemberRemove"},
    {"cluster/member/update", "/etcdserverpb.Cluster/MemberUpdate"},
    {"cluster/member/list", "/etcdserverpb.Cluster/MemberList"},
    {"cluster/member/promote", "/etcdserverpb.Cluster/MemberPromote"},
    {"maintenance/alarm", "/etcdserverpb.Maintenance/Alarm"},
    {"maintenance/status", "/etcdserverpb.Maintenance/Status"},
    {"maintenance/defragment", "/etcdserverpb.Maintenance/Defragment"},
    {"maintenance/hash", "/etcdserverpb.Maintenance/HashKV"},
    {"maintenance/transfer-leadership", "/etcdserverpb.Maintenance/MoveLeader"},
    {"auth/enable", "/etcdserverpb.Auth/AuthEnable"},
    {"auth/disable", "/etcdserverpb.Auth/AuthDisable"},
    {"auth/authenticate", "/etcdserverpb.Auth/Authenticate"},
    {"auth/user/add", "/etcdserverpb.Auth/UserAdd"},
    {"auth/user/get", "/etcdserverpb.Auth/UserGet"},
    {"auth/user/list", "/etcdserverpb.Auth/UserList"},
    {"auth/user/delete", "/etcdserverpb.Auth/UserDelete"},
    {"auth/user/changepw", "/etcdserverpb.Auth/UserChangePassword"},
    {"auth/user/grant", "/etcdserverpb.Auth/UserGrantRole"},
    {"auth/user/revoke", "/etcdserverpb.Auth/UserRevokeRole"},
    {"auth/role/add", "/etcdserverpb.Auth/RoleAdd"},
    {"auth/role/get", "/etcdserverpb.Auth/RoleGet"},
    {"auth/role/list", "/etcdserverpb.Auth/RoleList"},
    {"auth/role/delete", "/etcdserverpb.Auth/RoleDelete"},
    {"auth/role/grant", "/etcdserverpb.Auth/RoleGrantPermission"},
    {"auth/role/revoke", "/etcdserverpb.Auth/RoleRevokePermission"},
};

/* ---- base64 ---- */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int b64_encode(struct util_buf *b, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        char q[4] = {b64[v >> 18], b64[(v >> 12) & 63], i + 1 < n ? b64[(v >> 6) & 63] : '=',
                     i + 2 < n ? b64[v & 63] : '='};
        if (util_buf_append(b, q, 4) != 0)
            return -ENOMEM;
    }
    return 0;
}

static int b64_value(char c) {
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

/* Decodes standard or URL-safe base64, padded or not, into out. Returns 0, or
 * the index of the first bad byte plus one, negated. */
static int b64_decode(struct util_buf *out, const char *s, size_t n) {
    uint32_t acc = 0;
    int bits = 0;
    size_t end = n;
    while (end > 0 && s[end - 1] == '=')
        end--;
    if (n - end > 2)
        return -(int)end - 1;
    for (size_t i = 0; i < end; i++) {
        int v = b64_value(s[i]);
        if (v < 0)
            return -(int)i - 1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            uint8_t byte = (uint8_t)(acc >> bits);
            if (util_buf_append(out, &byte, 1) != 0)
                return -ENOMEM;
        }
    }
    return end % 4 == 1 ? -(int)end : 0;
}

/* ---- JSON reading ---- */

struct jr {
    const char *p, *end;
    char err[160];
};

static int jr_fail(struct jr *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Records the first error. Bytes of the input quoted in it that are not
 * printable ASCII become '?', so the error's JSON stays valid. */
static int jr_fail(struct jr *j, const char *fmt, ...) {
    if (!j->err[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(j->err, sizeof(j->err), fmt, ap);
        va_end(ap);
        for (char *c = j->err; *c; c++)
            if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7e)
                *c = '?';
    }
    return -EINVAL;
}

static void jr_ws(struct jr *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

/* Consumes c (after whitespace) if it is next. */
static bool jr_eat(struct jr *j, char c) {
    jr_ws(j);
    if (j->p < j->end && *j->p == c) {
        j->p++;
        return true;
    }
    return false;
}

static int jr_expect(struct jr *j, char c) {
    if (jr_eat(j, c))
        return 0;
    if (j->p >= j->end)
        return jr_fail(j, "unexpected EOF");
    return jr_fail(j, "invalid character '%c' looking for '%c'", *j->p, c);
}

static int put_utf8(struct util_buf *b, uint32_t cp) {
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xc0 | cp >> 6);
        u[1] = (char)(0x80 | (cp & 63));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xe0 | cp >> 12);
        u[1] = (char)(0x80 | ((cp >> 6) & 63));
        u[2] = (char)(0x80 | (cp & 63));
        n = 3;
    } else {
        u[0] = (char)(0xf0 | cp >> 18);
        u[1] = (char)(0x80 | ((cp >> 12) & 63));
        u[2] = (char)(0x80 | ((cp >> 6) & 63));
        u[3] = (char)(0x80 | (cp & 63));
        n = 4;
    }
    return util_buf_append(b, u, n);
}

static int jr_hex4(struct jr *j, uint32_t *v) {
    *v = 0;
    if (j->end - j->p < 4)
        return jr_fail(j, "unexpected EOF");
    for (int i = 0; i < 4; i++) {
        int d = api_hexval(*j->p++);
        if (d < 0)
            return jr_fail(j, "invalid character in \\u escape");
        *v = *v << 4 | (uint32_t)d;
    }
    return 0;
}

/* Reads a JSON string into out (unescaped, not NUL-terminated). */
static int jr_string(struct jr *j, struct util_buf *out) {
    if (jr_expect(j, '"') != 0)
        return -EINVAL;
    while (j->p < j->end && *j->p != '"') {
        unsigned char c = (unsigned char)*j->p++;
        int rc;
        if (c < 0x20)
            return jr_fail(j, "invalid character in string literal");
        if (c != '\\') {
            rc = util_buf_append(out, &c, 1);
        } else {
            if (j->p >= j->end)
                break;
            char e = *j->p++;
            const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
            const char *k = strchr(from, e);
            if (e == 'u') {
                uint32_t cp, lo;
                if (jr_hex4(j, &cp) != 0)
                    return -EINVAL;
                if (cp >= 0xd800 && cp < 0xdc00 && j->end - j->p >= 6 && j->p[0] == '\\' &&
                    j->p[1] == 'u') {
                    j->p += 2;
                    if (jr_hex4(j, &lo) != 0)
                        return -EINVAL;
                    if (lo >= 0xdc00 && lo < 0xe000)
                        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    else if (put_utf8(out, cp) != 0) /* a lone surrogate, kept as is */
                        return -ENOMEM;
                    else
                        cp = lo;
                }
                rc = put_utf8(out, cp);
            } else if (e && k) {
                rc = util_buf_append(out, &to[k - from], 1);
            } else {
                return jr_fail(j, "invalid character '%c' in string escape code", e);
            }
        }
        if (rc != 0)
            return rc;
    }
    if (j->p >= j->end)
        return jr_fail(j, "unexpected EOF");
    j->p++;
    return 0;
}

/* The span of a number or literal (true, false, null). */
static int jr_token(struct jr *j, const char **start, size_t *len) {
    jr_ws(j);
    *start = j->p;
    while (j->p < j->end && (isalnum((unsigned char)*j->p) || strchr("+-.", *j->p)))
        j->p++;
    *len = (size_t)(j->p - *start);
    if (*len == 0) {
        if (j->p >= j->end)
            return jr_fail(j, "unexpected EOF");
        return jr_fail(j, "invalid character '%c' looking for beginning of value", *j->p);
    }
    return 0;
}

static int jr_skip(struct jr *j, int depth) {
    jr_ws(j);
    if (depth > JSON_MAX_DEPTH)
        return jr_fail(j, "exceeded max depth");
    if (j->p < j->end && *j->p == '"') {
        struct util_buf t = {0};
        int rc = jr_string(j, &t);
        util_buf_free(&t);
        return rc;
    }
    if (jr_eat(j, '{')) {
        if (jr_eat(j, '}'))
            return 0;
        do {
            struct util_buf t = {0};
            int rc = jr_string(j, &t);
            util_buf_free(&t);
            if (rc != 0 || jr_expect(j, ':') != 0 || jr_skip(j, depth + 1) != 0)
                return -EINVAL;
        } while (jr_eat(j, ','));
        return jr_expect(j, '}');
    }
    if (jr_eat(j, '[')) {
        if (jr_eat(j, ']'))
            return 0;
        do {
            if (jr_skip(j, depth + 1) != 0)
                return -EINVAL;
        } while (jr_eat(j, ','));
        return jr_expect(j, ']');
    }
    const char *t;
    size_t n;
    return jr_token(j, &t, &n);
}

/* ---- JSON to protobuf wire format ---- */

static int put_varint(struct util_buf *b, uint64_t v) {
    return util_buf_varint(b, v);
}

static int put_tag(struct util_buf *b, uint32_t id, int wire) {
    return put_varint(b, (uint64_t)id << 3 | (uint64_t)wire);
}

/* A varint field: tag, then the value. */
static int put_varint_field(struct util_buf *b, uint32_t id, uint64_t v) {
    int rc = put_tag(b, id, 0);
    return rc ? rc : put_varint(b, v);
}

/* A fixed-width field (4 bytes: wire type 5, 8 bytes: wire type 1), little-endian. */
static int put_fixed_field(struct util_buf *b, uint32_t id, const void *v, size_t n) {
    int rc = put_tag(b, id, n == 4 ? 5 : 1);
    return rc ? rc : util_buf_append(b, v, n);
}

/* A length-delimited field. */
static int put_bytes_field(struct util_buf *b, uint32_t id, const void *v, size_t n) {
    int rc = put_tag(b, id, 2);
    if (rc == 0)
        rc = put_varint(b, n);
    if (rc == 0 && n)
        rc = util_buf_append(b, v, n);
    return rc;
}

/* lowerCamelCase of a .proto field name ("range_end" -> "rangeEnd"). */
static bool camel_equal(const char *proto, const char *s, size_t n) {
    size_t k = 0;
    for (const char *p = proto; *p; p++) {
        char c = *p;
        if (c == '_' && p[1]) {
            c = (char)toupper((unsigned char)*++p);
        }
        if (k >= n || s[k] != c)
            return false;
        k++;
    }
    return k == n;
}

static const ProtobufCFieldDescriptor *field_by_json_name(const ProtobufCMessageDescriptor *d,
                                                          const char *s, size_t n) {
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if ((strlen(f->name) == n && memcmp(f->name, s, n) == 0) || camel_equal(f->name, s, n))
            return f;
    }
    return NULL;
}

static int enc_message(struct jr *j, const ProtobufCMessageDescriptor *d, struct util_buf *out,
                       int depth);

/* Reads an integer given as a JSON number or a string holding one. */
static int jr_integer(struct jr *j, bool is_signed, int64_t *sv, uint64_t *uv) {
    struct util_buf s = {0};
    const char *t;
    size_t n;
    char tmp[32];
    int rc;
    jr_ws(j);
    if (j->p < j->end && *j->p == '"') {
        rc = jr_string(j, &s);
        t = s.data ? s.data : "";
        n = s.len;
    } else {
        rc = jr_token(j, &t, &n);
    }
    if (rc == 0) {
        char *e;
        rc = -EINVAL;
        if (n > 0 && n < sizeof(tmp)) {
            memcpy(tmp, t, n);
            tmp[n] = '\0';
            errno = 0;
            if (is_signed)
                *sv = strtoll(tmp, &e, 10);
            else
                *uv = tmp[0] == '-' ? (errno = ERANGE, 0) : strtoull(tmp, &e, 10);
            if (errno == 0 && *e == '\0')
                rc = 0;
        }
        if (rc != 0)
            jr_fail(j, "json: cannot unmarshal %.*s into an integer", (int)(n < 40 ? n : 40), t);
    }
    util_buf_free(&s);
    return rc;
}

static int enc_value(struct jr *j, const ProtobufCFieldDescriptor *f, struct util_buf *out,
                     int depth) {
    int64_t sv = 0;
    uint64_t uv = 0;
    int rc;
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_SFIXED64:
        if (jr_integer(j, true, &sv, NULL) != 0)
            return -EINVAL;
        if ((f->type == PROTOBUF_C_TYPE_INT32 || f->type == PROTOBUF_C_TYPE_SINT32 ||
             f->type == PROTOBUF_C_TYPE_SFIXED32) &&
            (sv < INT32_MIN || sv > INT32_MAX))
            return jr_fail(j, "json: value out of range for %s", f->name);
        if (f->type == PROTOBUF_C_TYPE_SFIXED32) {
            uint32_t x = (uint32_t)(int32_t)sv;
            return put_fixed_field(out, f->id, &x, 4);
        }
        if (f->type == PROTOBUF_C_TYPE_SFIXED64)
            return put_fixed_field(out, f->id, &sv, 8);
        if (f->type == PROTOBUF_C_TYPE_SINT32 || f->type == PROTOBUF_C_TYPE_SINT64)
            uv = ((uint64_t)sv << 1) ^ (uint64_t)(sv >> 63);
        else
            uv = (uint64_t)sv;
        return put_varint_field(out, f->id, uv);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_FIXED64:
        if (jr_integer(j, false, NULL, &uv) != 0)
            return -EINVAL;
        if ((f->type == PROTOBUF_C_TYPE_UINT32 || f->type == PROTOBUF_C_TYPE_FIXED32) &&
            uv > UINT32_MAX)
            return jr_fail(j, "json: value out of range for %s", f->name);
        if (f->type == PROTOBUF_C_TYPE_FIXED32) {
            uint32_t x = (uint32_t)uv;
            return put_fixed_field(out, f->id, &x, 4);
        }
        if (f->type == PROTOBUF_C_TYPE_FIXED64)
            return put_fixed_field(out, f->id, &uv, 8);
        return put_varint_field(out, f->id, uv);
    case PROTOBUF_C_TYPE_BOOL: {
        const char *t;
        size_t n;
        if (jr_token(j, &t, &n) != 0)
            return -EINVAL;
        if (n == 4 && memcmp(t, "true", 4) == 0)
            uv = 1;
        else if (!(n == 5 && memcmp(t, "false", 5) == 0))
            return jr_fail(j, "json: cannot unmarshal %.*s into a bool", (int)(n < 40 ? n : 40), t);
        return put_varint_field(out, f->id, uv);
    }
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *ed = f->descriptor;
        jr_ws(j);
        if (j->p < j->end && *j->p == '"') {
            struct util_buf s = {0};
            rc = jr_string(j, &s);
            if (rc == 0 && util_buf_append(&s, "", 1) == 0) {
                const ProtobufCEnumValue *v =
                    protobuf_c_enum_descriptor_get_value_by_name(ed, s.data);
                if (v)
                    sv = v->value;
                else
                    rc = jr_fail(j, "unknown value \"%s\" for enum %s", s.data, ed->name);
            }
            util_buf_free(&s);
            if (rc != 0)
                return -EINVAL;
        } else if (jr_integer(j, true, &sv, NULL) != 0) {
            return -EINVAL;
        }
        return put_varint_field(out, f->id, (uint64_t)sv);
    }
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE: {
        const char *t;
        size_t n;
        char tmp[64], *e;
        if (jr_token(j, &t, &n) != 0 || n >= sizeof(tmp))
            return jr_fail(j, "json: cannot unmarshal a number for %s", f->name);
        memcpy(tmp, t, n);
        tmp[n] = '\0';
        double d = strtod(tmp, &e);
        if (*e)
            return jr_fail(j, "json: cannot unmarshal %s into a number", tmp);
        if (f->type == PROTOBUF_C_TYPE_FLOAT) {
            float x = (float)d;
            return put_fixed_field(out, f->id, &x, 4);
        }
        return put_fixed_field(out, f->id, &d, 8);
    }
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_BYTES: {
        struct util_buf s = {0}, raw = {0};
        rc = jr_string(j, &s);
        if (rc == 0 && f->type == PROTOBUF_C_TYPE_BYTES) {
            int bad = b64_decode(&raw, s.data ? s.data : "", s.len);
            if (bad != 0)
                rc = bad == -ENOMEM ? -ENOMEM
                                    : jr_fail(j, "illegal base64 data at input byte %d", -bad - 1);
        }
        const struct util_buf *v = f->type == PROTOBUF_C_TYPE_BYTES ? &raw : &s;
        if (rc == 0)
            rc = put_bytes_field(out, f->id, v->data, v->len);
        util_buf_free(&s);
        util_buf_free(&raw);
        return rc;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        struct util_buf sub = {0};
        rc = enc_message(j, f->descriptor, &sub, depth + 1);
        if (rc == 0)
            rc = put_bytes_field(out, f->id, sub.data, sub.len);
        util_buf_free(&sub);
        return rc;
    }
    }
    return jr_fail(j, "unsupported field type for %s", f->name);
}

static bool jr_null(struct jr *j) {
    jr_ws(j);
    if (j->end - j->p >= 4 && memcmp(j->p, "null", 4) == 0) {
        j->p += 4;
        return true;
    }
    return false;
}

static int enc_message(struct jr *j, const ProtobufCMessageDescriptor *d, struct util_buf *out,
                       int depth) {
    if (depth > JSON_MAX_DEPTH)
        return jr_fail(j, "exceeded max depth");
    if (jr_expect(j, '{') != 0)
        return -EINVAL;
    if (jr_eat(j, '}'))
        return 0;
    do {
        struct util_buf key = {0};
        int rc = jr_string(j, &key);
        const ProtobufCFieldDescriptor *f =
            rc == 0 ? field_by_json_name(d, key.data ? key.data : "", key.len) : NULL;
        util_buf_free(&key);
        if (rc != 0 || jr_expect(j, ':') != 0)
            return -EINVAL;
        if (!f) {
            rc = jr_skip(j, depth + 1); /* unknown fields are ignored, as grpc-gateway does */
        } else if (jr_null(j)) {
            rc = 0;
        } else if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            rc = jr_expect(j, '[');
            if (rc == 0 && !jr_eat(j, ']')) {
                do {
                    rc = enc_value(j, f, out, depth);
                } while (rc == 0 && jr_eat(j, ','));
                if (rc == 0)
                    rc = jr_expect(j, ']');
            }
        } else {
            rc = enc_value(j, f, out, depth);
        }
        if (rc != 0)
            return rc;
    } while (jr_eat(j, ','));
    return jr_expect(j, '}');
}

/* ---- protobuf to JSON ---- */

static int json_message(struct util_buf *b, const ProtobufCMessage *m);

/* Length of the valid UTF-8 sequence at p (n bytes left), or 0. */
static size_t utf8_len(const unsigned char *p, size_t n) {
    size_t len = p[0] < 0x80             ? 1
                 : (p[0] & 0xe0) == 0xc0 ? 2
                 : (p[0] & 0xf0) == 0xe0 ? 3
                 : (p[0] & 0xf8) == 0xf0 ? 4
                                         : 0;
    if (len == 0 || len > n || (len == 2 && p[0] < 0xc2))
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((p[i] & 0xc0) != 0x80)
            return 0;
    if ((len == 3 && p[0] == 0xe0 && p[1] < 0xa0) || (len == 3 && p[0] == 0xed && p[1] >= 0xa0) ||
        (len == 4 && p[0] == 0xf0 && p[1] < 0x90) || (len == 4 && p[0] > 0xf4) ||
        (len == 4 && p[0] == 0xf4 && p[1] >= 0x90))
        return 0; /* overlong, surrogate or past U+10FFFF */
    return len;
}

/* Appends "s" as a JSON string; bytes that are not UTF-8 become U+FFFD, as
 * Go's encoder writes them. */
static int json_string(struct util_buf *b, const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    int rc = util_buf_append(b, "\"", 1);
    size_t i = 0;
    while (rc == 0 && i < n) {
        size_t run = i;
        size_t len;
        while (run < n && (len = utf8_len(p + run, n - run)) > 0)
            run += len;
        rc = util_buf_json_escape(b, s + i, run - i);
        if (rc == 0 && run < n) {
            rc = util_buf_append(b, "\\ufffd", 6);
            run++;
        }
        i = run;
    }
    return rc ? rc : util_buf_append(b, "\"", 1);
}

static int json_scalar(struct util_buf *b, const ProtobufCFieldDescriptor *f, const void *v) {
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        return util_buf_printf(b, "%" PRId32, *(const int32_t *)v);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return util_buf_printf(b, "%" PRIu32, *(const uint32_t *)v);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        return util_buf_printf(b, "\"%" PRId64 "\"", *(const int64_t *)v);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return util_buf_printf(b, "\"%" PRIu64 "\"", *(const uint64_t *)v);
    case PROTOBUF_C_TYPE_BOOL:
        return util_buf_printf(b, "%s", *(const protobuf_c_boolean *)v ? "true" : "false");
    case PROTOBUF_C_TYPE_FLOAT:
        return util_buf_printf(b, "%.9g", (double)*(const float *)v);
    case PROTOBUF_C_TYPE_DOUBLE:
        return util_buf_printf(b, "%.17g", *(const double *)v);
    case PROTOBUF_C_TYPE_ENUM: {
        int x = *(const int *)v;
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, x);
        return ev ? util_buf_printf(b, "\"%s\"", ev->name) : util_buf_printf(b, "%d", x);
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)v;
        s = s ? s : "";
        return json_string(b, s, strlen(s));
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *d = v;
        int rc = util_buf_append(b, "\"", 1);
        if (rc == 0)
            rc = b64_encode(b, d->data, d->len);
        return rc ? rc : util_buf_append(b, "\"", 1);
    }
    case PROTOBUF_C_TYPE_MESSAGE:
        return json_message(b, *(ProtobufCMessage *const *)v);
    }
    return -EINVAL;
}

/* Whether a singular field holds its default (grpc-gateway leaves those out). */
static bool is_default(const ProtobufCFieldDescriptor *f, const void *v) {
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_ENUM:
        return *(const uint32_t *)v == 0;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return *(const uint64_t *)v == 0;
    case PROTOBUF_C_TYPE_BOOL:
        return !*(const protobuf_c_boolean *)v;
    case PROTOBUF_C_TYPE_FLOAT:
        return *(const float *)v == 0;
    case PROTOBUF_C_TYPE_DOUBLE:
        return *(const double *)v == 0;
    case PROTOBUF_C_TYPE_STRING:
        return !*(char *const *)v || !**(char *const *)v;
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)v)->len == 0;
    case PROTOBUF_C_TYPE_MESSAGE:
        return !*(ProtobufCMessage *const *)v;
    }
    return true;
}

static size_t scalar_size(const ProtobufCFieldDescriptor *f) {
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return 8;
    case PROTOBUF_C_TYPE_DOUBLE:
        return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    default:
        return 4;
    }
}

static int json_message(struct util_buf *b, const ProtobufCMessage *m) {
    const ProtobufCMessageDescriptor *d = m->descriptor;
    bool first = true;
    int rc = util_buf_append(b, "{", 1);
    for (unsigned i = 0; rc == 0 && i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *base = (const char *)m;
        const void *v = base + f->offset;
        size_t n = 1;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            if (*(const uint32_t *)(base + f->quantifier_offset) != f->id)
                continue;
        } else if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            n = *(const size_t *)(base + f->quantifier_offset);
            if (n == 0)
                continue;
            v = *(void *const *)v;
        } else if (is_default(f, v)) {
            continue;
        }
        rc = util_buf_printf(b, "%s\"%s\":", first ? "" : ",", f->name);
        first = false;
        if (f->label != PROTOBUF_C_LABEL_REPEATED) {
            if (rc == 0)
                rc = json_scalar(b, f, v);
            continue;
        }
        if (rc == 0)
            rc = util_buf_append(b, "[", 1);
        for (size_t k = 0; rc == 0 && k < n; k++) {
            if (k)
                rc = util_buf_append(b, ",", 1);
            if (rc == 0)
                rc = json_scalar(b, f, (const char *)v + k * scalar_size(f));
        }
        if (rc == 0)
            rc = util_buf_append(b, "]", 1);
    }
    return rc ? rc : util_buf_append(b, "}", 1);
}

/* ---- HTTP ---- */

/* grpc-gateway's HTTP status for a gRPC code (v1, which etcd 3.4 uses). */
static int http_status(int code) {
    static const int map[] = {200, 408, 500, 400, 504, 404, 409, 403, 429,
                              412, 409, 400, 501, 500, 503, 500, 401};
    return code >= 0 && code < (int)(sizeof(map) / sizeof(map[0])) ? map[code] : 500;
}

static void answer_error(api_http_req_t *req, int code, const char *message) {
    struct util_buf b = {0};
    const char *m = message ? message : "";
    int rc = util_buf_append(&b, "{\"error\":", 9);
    if (rc == 0)
        rc = json_string(&b, m, strlen(m));
    if (rc == 0)
        rc = util_buf_append(&b, ",\"message\":", 11);
    if (rc == 0)
        rc = json_string(&b, m, strlen(m));
    if (rc == 0)
        rc = util_buf_printf(&b, ",\"code\":%d}", code);
    if (rc == 0)
        api_http_respond(req, http_status(code), "application/json", b.data, b.len);
    else
        api_http_respond(req, 500, "text/plain; charset=utf-8", "out of memory\n", 14);
    util_buf_free(&b);
}

void api_gateway_answer(api_http_req_t *req, const struct api_grpc_method *m, int code,
                        const char *message, const uint8_t *data, size_t len) {
    if (code != API_GRPC_OK) {
        answer_error(req, code, message);
        return;
    }
    ProtobufCMessage *msg = protobuf_c_message_unpack(m->response, NULL, len, data);
    struct util_buf b = {0};
    if (!msg) {
        answer_error(req, API_GRPC_INTERNAL, "the handler's answer does not decode");
        return;
    }
    if (json_message(&b, msg) == 0) {
        api_http_add_header(req, "Grpc-Metadata-Content-Type", "application/grpc");
        api_http_respond(req, 200, "application/json", b.data, b.len);
    } else {
        answer_error(req, API_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    util_buf_free(&b);
    protobuf_c_message_free_unpacked(msg, NULL);
}

/* A streaming answer's error line, as grpc-gateway v1 writes it. */
static int stream_error_line(struct util_buf *b, int code, const char *message) {
    const char *m = message ? message : "";
    int rc = util_buf_printf(b, "{\"error\":{\"grpc_code\":%d,\"http_code\":%d,\"message\":", code,
                             http_status(code));
    if (rc == 0)
        rc = json_string(b, m, strlen(m));
    return rc ? rc : util_buf_append(b, "}}\n", 3);
}

int api_gateway_stream_message(api_http_req_t *req, const struct api_grpc_method *m,
                               const uint8_t *data, size_t len, bool *started) {
    ProtobufCMessage *msg = protobuf_c_message_unpack(m->response, NULL, len, data);
    struct util_buf b = {0};
    int rc = msg ? util_buf_append(&b, "{\"result\":", 10) : -EINVAL;
    if (rc == 0)
        rc = json_message(&b, msg);
    if (rc == 0)
        rc = util_buf_append(&b, "}\n", 2);
    if (msg)
        protobuf_c_message_free_unpacked(msg, NULL);
    if (rc == 0 && !*started) {
        *started = true;
        rc = api_http1_stream_begin(req, 200, "application/json");
    }
    if (rc == 0)
        rc = api_http1_stream_write(req, b.data, b.len);
    util_buf_free(&b);
    return rc;
}

void api_gateway_stream_end(api_http_req_t *req, bool started, int code, const char *message) {
    if (!started && code != API_GRPC_OK) {
        answer_error(req, code, message); /* nothing sent yet: a plain error answer */
        return;
    }
    if (!started)
        api_http1_stream_begin(req, 200, "application/json");
    if (code != API_GRPC_OK) {
        struct util_buf b = {0};
        if (stream_error_line(&b, code, message) == 0)
            api_http1_stream_write(req, b.data, b.len);
        util_buf_free(&b);
    }
    api_http1_stream_end(req);
}

/* The request body: one JSON object per request message (a streaming method
 * may take several); none at all is one empty message. */
static int read_messages(struct jr *j, const ProtobufCMessageDescriptor *d, struct util_buf **out,
                         size_t *n) {
    *out = NULL;
    *n = 0;
    do {
        struct util_buf *more = realloc(*out, (*n + 1) * sizeof(**out));
        if (!more)
            return -ENOMEM;
        *out = more;
        (*out)[*n] = (struct util_buf){0};
        (*n)++;
        jr_ws(j);
        if (j->p < j->end) {
            int rc = enc_message(j, d, &(*out)[*n - 1], 0);
            if (rc != 0)
                return rc;
        }
        jr_ws(j);
    } while (j->p < j->end);
    return 0;
}

static void gateway(api_http_req_t *req, void *arg) {
    api_server_t *srv = arg;
    const char *path = api_http_path(req);
    const char *rest = strncmp(path, "/v3/", 4) == 0 ? path + 4 : path + 8; /* or /v3beta/ */
    const struct api_grpc_method *m = NULL;
    for (size_t i = 0; i < sizeof(gateway_paths) / sizeof(gateway_paths[0]); i++) {
        if (strcmp(rest, gateway_paths[i].http) == 0) {
            m = api_grpc_find(srv, gateway_paths[i].grpc);
            if (!m || !m->request || !m->response) {
                answer_error(req, API_GRPC_UNIMPLEMENTED, "method not served over the gateway");
                return;
            }
            break;
        }
    }
    if (!m) {
        api_http_respond(req, 404, "text/plain; charset=utf-8", "Not Found\n", 10);
        return;
    }
    size_t len, n = 0;
    const char *body = api_http_body(req, &len);
    struct jr j = {.p = body, .end = body + len};
    struct util_buf *msgs = NULL;
    int rc = read_messages(&j, m->request, &msgs, &n);
    if (rc == 0) {
        if (m->server_streaming)
            api_http_add_header(req, "Grpc-Metadata-Content-Type", "application/grpc");
        rc = api_grpc_gateway_call(srv, m, req, msgs, m->client_streaming ? n : 1);
    }
    if (rc == -EINVAL)
        answer_error(req, API_GRPC_INVALID_ARGUMENT, j.err[0] ? j.err : "malformed request");
    else if (rc != 0)
        answer_error(req, API_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    for (size_t i = 0; i < n; i++)
        util_buf_free(&msgs[i]);
    free(msgs);
}

int api_gateway_add_routes(api_server_t *srv) {
    int rc = api_server_route(srv, "POST", "/v3/", gateway, srv);
    return rc ? rc : api_server_route(srv, "POST", "/v3beta/", gateway, srv);
}
