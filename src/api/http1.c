/* HTTP/1.1 server side: a strict, bounded request parser (request line,
 * headers, Content-Length and chunked bodies, keep-alive and pipelining, one
 * request answered at a time per connection), the route table other layers
 * register handlers in, and the built-in GET /version and GET /health.
 *
 * Error answers follow Go's net/http, which etcd serves with: a malformed
 * request gets "400 Bad Request" and the connection is closed; a head over
 * max_header_bytes gets 431; a body over max_request_bytes gets 413. */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "api/internal.h"

struct http_header {
    const char *name;
    const char *value;
};

struct api_http_req {
    struct api_wake wake; /* first: the wake queue hands back this pointer */
    api_server_t *srv;
    struct api_conn *conn; /* NULL once the client has gone */
    char *head;            /* the request head, split in place into the strings below */
    const char *method;
    const char *path;
    const char *query;
    struct http_header *hdrs;
    size_t nhdrs;
    char *body;
    size_t body_len;
    int minor; /* HTTP/1.<minor> */
    bool keep_alive;
    bool is_head;
    struct util_buf extra; /* response headers added by the handler */
    struct util_buf resp;  /* the whole answer, built by api_http_respond */
    bool resp_failed;
    void (*gone)(void *arg); /* told when the client goes (streamed answers) */
    void *gone_arg;
};

/* Outcome of parsing: a complete request, more bytes needed, or an HTTP error
 * status to answer with before closing. */
enum { PARSE_MORE = 0, PARSE_DONE = 1 };

static const char *status_text(int status) {
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 307:
        return "Temporary Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Request Entity Too Large";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Status";
    }
}

/* RFC 9110 token characters (method and header names). */
static bool is_tchar(unsigned char c) {
    if (c >= 'a' && c <= 'z')
        return true;
    if (c >= 'A' && c <= 'Z')
        return true;
    if (c >= '0' && c <= '9')
        return true;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Finds the end of the head: returns the length up to and including the empty
 * line (CRLF or bare LF line ends, as Go accepts), or 0 if not all in yet. */
static size_t head_length(const char *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        const char *nl = memchr(p + i, '\n', n - i);
        if (!nl)
            return 0;
        size_t line_len = (size_t)(nl - (p + i));
        if (line_len == 0 || (line_len == 1 && p[i] == '\r'))
            return (size_t)(nl - p) + 1;
        i = (size_t)(nl - p) + 1;
    }
    return 0;
}

/* Cuts the next line out of *pp (in place), stripping CR; NULL at the end. */
static char *next_line(char **pp) {
    char *line = *pp;
    char *nl = strchr(line, '\n');
    if (!nl)
        return NULL;
    *nl = '\0';
    if (nl > line && nl[-1] == '\r')
        nl[-1] = '\0';
    *pp = nl + 1;
    return line;
}

int api_hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes %XX escapes of a path in place, as Go's URL.Path is; -1 on a bad escape. */
static int unescape_path(char *s) {
    char *w = s;
    for (char *r = s; *r; r++) {
        if (*r == '%') {
            int hi = api_hexval(r[1]), lo = hi < 0 ? -1 : api_hexval(r[2]);
            if (hi < 0 || lo < 0)
                return -1;
            *w++ = (char)(hi * 16 + lo);
            r += 2;
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
    return 0;
}

static bool valid_value(const char *v) {
    for (; *v; v++) {
        unsigned char c = (unsigned char)*v;
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false;
    }
    return true;
}

/* Whether a comma-separated header value (may be NULL) lists token. */
static bool has_token(const char *v, const char *token) {
    size_t n = strlen(token);
    while (v && *v) {
        v += strspn(v, " \t,");
        size_t len = strcspn(v, ",");
        size_t end = len;
        while (end > 0 && (v[end - 1] == ' ' || v[end - 1] == '\t'))
            end--;
        if (end == n && strncasecmp(v, token, n) == 0)
            return true;
        v += len;
    }
    return false;
}

/* Parses "METHOD target HTTP/1.x" (line is split in place). Returns 0 or an
 * HTTP error status. */
static int parse_request_line(char *line, struct api_http_req *req) {
    char *sp1 = strchr(line, ' ');
    char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    if (!sp1 || !sp2 || strchr(sp2 + 1, ' '))
        return 400;
    *sp1 = *sp2 = '\0';
    char *target = sp1 + 1, *version = sp2 + 1;
    if (line[0] == '\0' || target[0] == '\0')
        return 400;
    for (const char *m = line; *m; m++)
        if (!is_tchar((unsigned char)*m))
            return 400;
    if (strcmp(version, "HTTP/1.1") == 0) {
        req->minor = 1;
    } else if (strcmp(version, "HTTP/1.0") == 0) {
        req->minor = 0;
    } else if (strncmp(version, "HTTP/", 5) == 0 && version[5] >= '0' && version[5] <= '9' &&
               version[6] == '.' && version[7] >= '0' && version[7] <= '9' && !version[8]) {
        return 505;
    } else {
        return 400;
    }
    req->method = line;
    for (const char *t = target; *t; t++)
        if ((unsigned char)*t <= 0x20 || *t == 0x7f)
            return 400;
    if (strncmp(target, "http://", 7) == 0) { /* absolute form: keep the path */
        target = strchr(target + 7, '/');
        if (!target)
            return 400;
    }
    if (target[0] != '/' && strcmp(target, "*") != 0)
        return 400;
    char *qm = strchr(target, '?');
    req->query = "";
    if (qm) {
        *qm = '\0';
        req->query = qm + 1;
    }
    if (unescape_path(target) != 0)
        return 400;
    req->path = target;
    return 0;
}

/* Checks the request line as soon as it is in, as Go does, so garbage gets
 * its 400 without waiting for a blank line that may never come. Returns 0
 * (valid or not complete yet) or an error status. */
static int early_check(const char *p, size_t n) {
    while (n > 0 && (*p == '\r' || *p == '\n')) {
        p++;
        n--;
    }
    const char *nl = memchr(p, '\n', n);
    if (!nl)
        return 0;
    size_t len = (size_t)(nl - p);
    if (len > 0 && p[len - 1] == '\r')
        len--;
    if (memchr(p, '\0', len))
        return 400;
    char *line = strndup(p, len);
    if (!line)
        return 500;
    struct api_http_req scratch = {0};
    int rc = parse_request_line(line, &scratch);
    free(line);
    return rc;
}

/* Parses the request line and headers of req->head (NUL-terminated, ending
 * with the empty line). Fills method, path, query, headers, version. Returns 0
 * or an HTTP error status; *why gets extra text for the error body. */
static int parse_head(struct api_http_req *req, const char **why) {
    char *p = req->head;
    char *line;
    size_t nlines = 0;
    for (const char *q = p; (q = strchr(q, '\n')); q++)
        nlines++;
    req->hdrs = calloc(nlines ? nlines : 1, sizeof(*req->hdrs));
    if (!req->hdrs)
        return 500;

    while ((line = next_line(&p)) && *line == '\0')
        ; /* empty lines before a request are ignored (RFC 9112 2.2) */
    if (!line)
        return 400;
    int rc = parse_request_line(line, req);
    if (rc != 0)
        return rc;

    while ((line = next_line(&p)) && *line != '\0') {
        if (*line == ' ' || *line == '\t')
            return 400; /* obsolete line folding */
        char *colon = strchr(line, ':');
        if (!colon || colon == line)
            return 400;
        *colon = '\0';
        for (const char *n = line; *n; n++)
            if (!is_tchar((unsigned char)*n))
                return 400;
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        char *e = v + strlen(v);
        while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
            *--e = '\0';
        if (!valid_value(v))
            return 400;
        req->hdrs[req->nhdrs].name = line;
        req->hdrs[req->nhdrs].value = v;
        req->nhdrs++;
    }
    if (req->minor == 1 && !api_http_header(req, "Host")) {
        *why = ": missing required Host header";
        return 400;
    }
    const char *conn = api_http_header(req, "Connection");
    if (req->minor == 1)
        req->keep_alive = !has_token(conn, "close");
    else
        req->keep_alive = has_token(conn, "keep-alive");
    req->is_head = strcmp(req->method, "HEAD") == 0;
    return 0;
}

/* Decodes a chunked body from p[0..n). With dst NULL it only measures: sets
 * *total (decoded size) and *used (encoded size). Returns PARSE_DONE,
 * PARSE_MORE, or an error status. */
static int chunked(const char *p, size_t n, size_t max, size_t max_trailer, char *dst,
                   size_t *total, size_t *used) {
    size_t i = 0, out = 0;
    for (;;) {
        const char *nl = memchr(p + i, '\n', n - i);
        if (!nl)
            return n - i > 1024 ? 400 : PARSE_MORE;
        size_t size = 0, j = i;
        int digits = 0;
        for (; p + j < nl && api_hexval(p[j]) >= 0; j++, digits++) {
            if (size > (max + 1) / 16)
                return 413;
            size = size * 16 + (size_t)api_hexval(p[j]);
        }
        if (!digits || (p + j < nl && p[j] != ';' && p[j] != '\r'))
            return 400;
        i = (size_t)(nl - p) + 1;
        if (size == 0)
            break;
        if (out + size > max)
            return 413;
        if (n - i < size + 1)
            return PARSE_MORE;
        if (dst)
            memcpy(dst + out, p + i, size);
        out += size;
        i += size;
        if (p[i] == '\r') {
            if (n - i < 2)
                return PARSE_MORE;
            i++;
        }
        if (p[i] != '\n')
            return 400;
        i++;
    }
    /* Trailers (ignored), then the empty line. */
    size_t tl = head_length(p + i, n - i);
    if (tl == 0)
        return n - i > max_trailer ? 431 : PARSE_MORE;
    *total = out;
    *used = i + tl;
    return PARSE_DONE;
}

static void req_free(struct api_http_req *req) {
    free(req->head);
    free(req->hdrs);
    free(req->body);
    util_buf_free(&req->extra);
    util_buf_free(&req->resp);
    free(req);
}

/* Writes an error answer and ends the connection, as Go's server does for a
 * request it cannot parse. */
static void send_error(struct api_conn *c, int status, const char *why) {
    char buf[512];
    const char *text = status_text(status);
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %d %s%s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                     "Connection: close\r\n\r\n%d %s%s",
                     status, text, why, status, text, why);
    assert(n > 0 && (size_t)n < sizeof(buf));
    if (api_conn_write(c, buf, (size_t)n) == 0)
        api_conn_end(c);
}

/* Parses one request from the connection's input. Returns PARSE_DONE with *out
 * set, PARSE_MORE, or an error status (*why set). */
static int parse_request(struct api_conn *c, struct api_http_req **out, const char **why) {
    const struct api_config *cfg = &c->srv->cfg;
    struct util_buf *in = &c->in;
    size_t hl = head_length(in->data, in->len);
    if (hl == 0) {
        int rc = early_check(in->data, in->len);
        if (rc != 0)
            return rc;
        return in->len > cfg->max_header_bytes ? 431 : PARSE_MORE;
    }
    if (hl > cfg->max_header_bytes)
        return 431;

    struct api_http_req *req = calloc(1, sizeof(*req));
    if (!req)
        return 500;
    int rc = 500;
    req->head = malloc(hl + 1);
    if (!req->head)
        goto err;
    memcpy(req->head, in->data, hl);
    req->head[hl] = '\0';
    if (memchr(req->head, '\0', hl)) {
        rc = 400;
        goto err;
    }
    rc = parse_head(req, why);
    if (rc != 0)
        goto err;

    const char *te = api_http_header(req, "Transfer-Encoding");
    const char *cl = api_http_header(req, "Content-Length");
    size_t used = hl;
    if (te) {
        size_t total = 0, enc = 0;
        rc = 400;
        if (cl)
            goto err; /* both framings: a smuggling attempt */
        rc = 501;
        if (strcasecmp(te, "chunked") != 0)
            goto err;
        rc = chunked(in->data + hl, in->len - hl, cfg->max_request_bytes, cfg->max_header_bytes,
                     NULL, &total, &enc);
        if (rc != PARSE_DONE)
            goto err;
        rc = 500;
        req->body = malloc(total ? total : 1);
        if (!req->body)
            goto err;
        chunked(in->data + hl, in->len - hl, cfg->max_request_bytes, cfg->max_header_bytes,
                req->body, &total, &enc);
        req->body_len = total;
        used += enc;
    } else if (cl) {
        size_t len = 0;
        rc = 400;
        if (!*cl || strspn(cl, "0123456789") != strlen(cl) || strlen(cl) > 18)
            goto err;
        for (size_t i = 0; i < req->nhdrs; i++)
            if (strcasecmp(req->hdrs[i].name, "Content-Length") == 0 &&
                strcmp(req->hdrs[i].value, cl) != 0)
                goto err;
        len = (size_t)strtoull(cl, NULL, 10);
        rc = 413;
        if (len > cfg->max_request_bytes)
            goto err;
        rc = PARSE_MORE;
        if (in->len - hl < len)
            goto err;
        rc = 500;
        req->body = malloc(len ? len : 1);
        if (!req->body)
            goto err;
        memcpy(req->body, in->data + hl, len);
        req->body_len = len;
        used += len;
    }
    api_buf_consume(in, used);
    c->continue_sent = false;
    req->srv = c->srv;
    req->conn = c;
    *out = req;
    return PARSE_DONE;
err:
    /* A client waiting for "100 Continue" before sending its body (curl does,
     * for bodies over 1 KiB) is told to go on, once per request. */
    if (rc == PARSE_MORE && req->minor == 1 && !c->continue_sent) {
        const char *expect = api_http_header(req, "Expect");
        if (expect && strcasecmp(expect, "100-continue") == 0) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            c->continue_sent = true;
            api_conn_write(c, cont, sizeof(cont) - 1);
        }
    }
    req_free(req);
    return rc;
}

/* ---- routes ---- */

static void not_found(api_http_req_t *req, void *arg) {
    (void)arg;
    static const char body[] = "404 page not found\n";
    api_http_add_header(req, "X-Content-Type-Options", "nosniff");
    api_http_respond(req, 404, "text/plain; charset=utf-8", body, sizeof(body) - 1);
}

static void version(api_http_req_t *req, void *arg) {
    (void)arg;
    static const char body[] =
        "{\"etcdserver\":\"" UTIL_ETCD_VERSION "\",\"etcdcluster\":\"" UTIL_ETCD_CLUSTER_VERSION
        "\",\"quoin\":\"" UTIL_QUOIN_VERSION "\"}";
    api_http_respond(req, 200, "application/json", body, sizeof(body) - 1);
}

int api_health_report(api_http_req_t *req, bool healthy) {
    static const char ok[] = "{\"health\":\"true\"}", bad[] = "{\"health\":\"false\"}";
    return healthy ? api_http_respond(req, 200, "text/plain; charset=utf-8", ok, sizeof(ok) - 1)
                   : api_http_respond(req, 503, "text/plain; charset=utf-8", bad, sizeof(bad) - 1);
}

static void health(api_http_req_t *req, void *arg) {
    api_server_t *srv = arg;
    if (srv->health_check)
        srv->health_check(req, srv->health_arg);
    else
        api_health_report(req, true);
}

void api_server_set_health_check(api_server_t *srv, api_health_check check, void *arg) {
    srv->health_check = check;
    srv->health_arg = arg;
}

static bool route_matches(const struct api_route *r, const char *path) {
    size_t n = strlen(r->path);
    if (n > 0 && r->path[n - 1] == '/')
        return strncmp(path, r->path, n) == 0;
    return strcmp(path, r->path) == 0;
}

/* Longest matching path whose method fits; *allow collects the methods of
 * matching paths (for a 405's Allow header) when none fits. */
static const struct api_route *route_find(api_server_t *srv, const char *method, const char *path,
                                          struct util_buf *allow) {
    const struct api_route *best = NULL;
    size_t best_len = 0;
    for (size_t i = 0; i < srv->nroutes; i++) {
        const struct api_route *r = &srv->routes[i];
        size_t n = strlen(r->path);
        if (!route_matches(r, path))
            continue;
        if (r->method && strcmp(r->method, method) != 0) {
            if (allow->len == 0 || !strstr(allow->data, r->method))
                util_buf_printf(allow, "%s%s", allow->len ? ", " : "", r->method);
            continue;
        }
        if (!best || n > best_len) {
            best = r;
            best_len = n;
        }
    }
    return best;
}

int api_server_route(api_server_t *srv, const char *method, const char *path,
                     api_http_handler handler, void *arg) {
    for (size_t i = 0; i < srv->nroutes; i++) {
        const struct api_route *r = &srv->routes[i];
        bool same_method =
            (!r->method && !method) || (r->method && method && strcmp(r->method, method) == 0);
        if (same_method && strcmp(r->path, path) == 0)
            return -EEXIST;
    }
    struct api_route *rs = realloc(srv->routes, (srv->nroutes + 1) * sizeof(*rs));
    if (!rs)
        return -ENOMEM;
    srv->routes = rs;
    struct api_route *r = &rs[srv->nroutes];
    r->method = method ? strdup(method) : NULL;
    r->path = strdup(path);
    if ((method && !r->method) || !r->path) {
        free(r->method);
        free(r->path);
        return -ENOMEM;
    }
    r->handler = handler;
    r->arg = arg;
    srv->nroutes++;
    return 0;
}

int api_http1_add_builtin_routes(api_server_t *srv) {
    int rc = api_server_route(srv, "GET", "/version", version, NULL);
    if (rc == 0)
        rc = api_server_route(srv, "GET", "/health", health, srv);
    return rc;
}

void api_http1_free_routes(api_server_t *srv) {
    for (size_t i = 0; i < srv->nroutes; i++) {
        free(srv->routes[i].method);
        free(srv->routes[i].path);
    }
    free(srv->routes);
    srv->routes = NULL;
    srv->nroutes = 0;
}

static void method_not_allowed(api_http_req_t *req, void *arg) {
    const char *allow = arg;
    static const char body[] = "Method Not Allowed\n";
    api_http_add_header(req, "Allow", allow);
    api_http_respond(req, 405, "text/plain; charset=utf-8", body, sizeof(body) - 1);
}

static void req_run(struct api_wake *w);

static void dispatch(struct api_conn *c, struct api_http_req *req) {
    api_server_t *srv = c->srv;
    struct util_buf allow = {0};
    const struct api_route *r = route_find(srv, req->method, req->path, &allow);
    req->wake.run = req_run;
    c->busy = req;
    srv->outstanding++;
    if (strcmp(req->method, "OPTIONS") == 0)
        api_http_respond(req, 200, NULL, NULL, 0); /* a CORS preflight, for any path */
    else if (r)
        r->handler(req, r->arg);
    else if (allow.len)
        method_not_allowed(req, allow.data); /* answers before returning: allow outlives it */
    else
        not_found(req, NULL);
    util_buf_free(&allow);
}

void api_http1_process(struct api_conn *c) {
    while (!c->busy && !c->close_after_write && c->in.len > 0 && api_conn_can_take(c)) {
        struct api_http_req *req = NULL;
        const char *why = "";
        int rc = parse_request(c, &req, &why);
        if (rc == PARSE_MORE)
            break;
        if (rc != PARSE_DONE) {
            send_error(c, rc, why);
            return;
        }
        dispatch(c, req);
    }
    if (c->closing || c->close_after_write)
        return;
    bool want = api_conn_can_take(c) && (!c->busy || c->in.len < API_PIPELINE_READAHEAD);
    api_conn_set_reading(c, want);
}

void api_http1_detach(struct api_conn *c) {
    struct api_http_req *req = c->busy;
    if (req) {
        req->conn = NULL;
        c->busy = NULL;
        if (req->gone)
            req->gone(req->gone_arg);
    }
}

/* ---- answers ---- */

const char *api_http_method(const api_http_req_t *req) {
    return req->method;
}

const char *api_http_path(const api_http_req_t *req) {
    return req->path;
}

const char *api_http_query(const api_http_req_t *req) {
    return req->query;
}

const char *api_http_header(const api_http_req_t *req, const char *name) {
    for (size_t i = 0; i < req->nhdrs; i++)
        if (strcasecmp(req->hdrs[i].name, name) == 0)
            return req->hdrs[i].value;
    return NULL;
}

const void *api_http_body(const api_http_req_t *req, size_t *len) {
    *len = req->body_len;
    return req->body;
}

int api_http_add_header(api_http_req_t *req, const char *name, const char *value) {
    return util_buf_printf(&req->extra, "%s: %s\r\n", name, value);
}

/* Loop thread: writes the last bytes of the answer if the client is still
 * there, continues with the connection's next request, and frees req. */
static void req_finish(struct api_http_req *req, const char *data, size_t len, bool failed) {
    struct api_conn *c = req->conn;
    api_server_t *srv = req->srv;
    if (c) {
        assert(c->busy == req);
        c->busy = NULL;
        bool keep = req->keep_alive && !failed && !c->close_after_write;
        int rc = len ? api_conn_write(c, data, len) : 0;
        if (rc == 0 && !keep)
            api_conn_end(c);
        else if (rc == 0)
            api_http1_process(c);
    }
    req_free(req);
    api_server_release(srv);
}

static void req_run(struct api_wake *w) {
    struct api_http_req *req = (struct api_http_req *)w;
    static const char oom[] = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
                              "Connection: close\r\n\r\n";
    if (req->resp_failed)
        req_finish(req, oom, sizeof(oom) - 1, true);
    else
        req_finish(req, req->resp.data, req->resp.len, false);
}

/* How an answer's body is delimited. */
enum body_framing { BODY_LENGTH, BODY_CHUNKED, BODY_UNTIL_CLOSE };

/* The status line and headers of an answer. */
static int build_head(struct api_http_req *req, struct util_buf *b, int status,
                      const char *content_type, enum body_framing framing, size_t len) {
    char date[64];
    struct tm tm;
    time_t now = time(NULL);
    int rc;
    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    rc = util_buf_printf(b, "HTTP/1.%d %d %s\r\n", req->minor, status, status_text(status));
    /* etcd answers every client request with open CORS headers (its --cors
     * default), which browser-based tools rely on. */
    if (rc == 0)
        rc = util_buf_printf(b, "Access-Control-Allow-Headers: accept, content-type, "
                                "authorization\r\nAccess-Control-Allow-Methods: POST, GET, "
                                "OPTIONS, PUT, DELETE\r\nAccess-Control-Allow-Origin: *\r\n");
    if (rc == 0 && content_type)
        rc = util_buf_printf(b, "Content-Type: %s\r\n", content_type);
    if (rc == 0 && req->extra.len)
        rc = util_buf_append(b, req->extra.data, req->extra.len);
    if (rc == 0 && !req->keep_alive)
        rc = util_buf_printf(b, "Connection: close\r\n");
    else if (rc == 0 && req->minor == 0)
        rc = util_buf_printf(b, "Connection: keep-alive\r\n");
    if (rc == 0)
        rc = util_buf_printf(b, "Date: %s\r\n", date);
    if (rc == 0 && framing == BODY_LENGTH)
        rc = util_buf_printf(b, "Content-Length: %zu\r\n", len);
    else if (rc == 0 && framing == BODY_CHUNKED)
        rc = util_buf_printf(b, "Transfer-Encoding: chunked\r\n");
    return rc ? rc : util_buf_append(b, "\r\n", 2);
}

int api_http1_stream_begin(api_http_req_t *req, int status, const char *content_type) {
    struct util_buf b = {0};
    if (req->minor == 0)
        req->keep_alive = false; /* no chunks in HTTP/1.0: the close ends the body */
    int rc = build_head(req, &b, status, content_type,
                        req->minor == 0 ? BODY_UNTIL_CLOSE : BODY_CHUNKED, 0);
    if (rc != 0 || !req->conn) {
        util_buf_free(&b);
        return rc ? rc : -EPIPE;
    }
    return api_conn_write_take(req->conn, b.data, b.len);
}

int api_http1_stream_write(api_http_req_t *req, const void *data, size_t len) {
    struct util_buf b = {0};
    int rc = 0;
    if (!req->conn)
        return -EPIPE;
    if (req->minor == 1)
        rc = util_buf_printf(&b, "%zx\r\n", len);
    if (rc == 0)
        rc = util_buf_append(&b, data, len);
    if (rc == 0 && req->minor == 1)
        rc = util_buf_append(&b, "\r\n", 2);
    if (rc != 0) {
        util_buf_free(&b);
        return rc;
    }
    return api_conn_write_take(req->conn, b.data, b.len);
}

void api_http1_stream_end(api_http_req_t *req) {
    if (req->minor == 1)
        req_finish(req, "0\r\n\r\n", 5, false);
    else
        req_finish(req, NULL, 0, false);
}

void api_http1_on_gone(api_http_req_t *req, void (*gone)(void *arg), void *arg) {
    req->gone = gone;
    req->gone_arg = arg;
}

int api_http_respond(api_http_req_t *req, int status, const char *content_type, const void *body,
                     size_t len) {
    int rc = build_head(req, &req->resp, status, content_type, BODY_LENGTH, len);
    if (rc == 0 && !req->is_head)
        rc = util_buf_append(&req->resp, body, len);
    req->resp_failed = rc != 0;
    api_wake_post(req->srv, &req->wake);
    return rc;
}
