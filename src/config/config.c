/* config: etcd-compatible flag, environment and YAML parsing. Values are first
 * collected as text per flag with the source they came from (so errors can say
 * "flag -x" or "ETCD_X" as etcd does), then checked by kind, then cross-checked,
 * then checked for support, and last converted into struct config. */
#include "config/config.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "config/flags.h"

enum source { SRC_DEFAULT, SRC_ENV, SRC_FLAG, SRC_FILE };

/* The text of every flag while parsing. Values are owned; NULL means "not
 * given", and the table's default applies. */
struct raw {
    char **val;
    enum source *src;
    const char *file;   /* the config file, for messages */
    struct config *cfg; /* receives warnings */
};

static int add_warning(struct config *cfg, struct util_err *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int add_warning(struct config *cfg, struct util_err *err, const char *fmt, ...) {
    char **w = realloc(cfg->warnings, (cfg->n_warnings + 1) * sizeof(*w));
    if (!w)
        return util_errorf(err, -ENOMEM, "out of memory parsing flags");
    cfg->warnings = w;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&w[cfg->n_warnings], fmt, ap);
    va_end(ap);
    if (n < 0)
        return util_errorf(err, -ENOMEM, "out of memory parsing flags");
    cfg->n_warnings++;
    return 0;
}

static int raw_set(struct raw *r, int i, const char *v, size_t len, enum source src,
                   struct util_err *err) {
    char *copy = strndup(v, len);
    if (!copy)
        return util_errorf(err, -ENOMEM, "out of memory parsing flags");
    free(r->val[i]);
    r->val[i] = copy;
    r->src[i] = src;
    return 0;
}

static void raw_clear(struct raw *r) {
    for (size_t i = 0; i < flag_count(); i++) {
        free(r->val[i]);
        r->val[i] = NULL;
        r->src[i] = SRC_DEFAULT;
    }
}

static int idx(const char *name) {
    int i = flag_index(name, strlen(name));
    assert(i >= 0);
    return i;
}

static const char *raw_get(const struct raw *r, const char *name) {
    int i = idx(name);
    return r->val[i] ? r->val[i] : flag_at((size_t)i)->def;
}

static int raw_given(const struct raw *r, const char *name) {
    return r->src[idx(name)] != SRC_DEFAULT;
}

/* Go's strconv.ParseBool. */
static int parse_bool(const char *s, bool *out) {
    static const char *const yes[] = {"1", "t", "T", "TRUE", "true", "True"};
    static const char *const no[] = {"0", "f", "F", "FALSE", "false", "False"};
    for (size_t i = 0; i < 6; i++) {
        if (strcmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -EINVAL;
}

/* Go's flag uint: an unsigned number (0x and 0 prefixes allowed), no sign. */
static int parse_uint(const char *s, uint64_t *out) {
    if (!isdigit((unsigned char)s[0]))
        return -EINVAL;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (*end != '\0')
        return -EINVAL;
    if (errno == ERANGE)
        return -ERANGE;
    *out = v;
    return 0;
}

static int parse_int(const char *s, int64_t *out) {
    const char *digits = (s[0] == '-' || s[0] == '+') ? s + 1 : s;
    if (!isdigit((unsigned char)digits[0]))
        return -EINVAL;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    if (*end != '\0')
        return -EINVAL;
    if (errno == ERANGE)
        return -ERANGE;
    *out = v;
    return 0;
}

/* Go's time.ParseDuration: "0", or a sequence of decimal numbers each with a
 * unit (ns, us, µs, ms, s, m, h), optionally signed. *ns gets the value
 * (negative durations are refused: no flag takes one). */
static int parse_duration(const char *s, uint64_t *ns) {
    static const struct {
        const char *name;
        double ns;
    } units[] = {{"ns", 1},  {"us", 1e3}, {"\xc2\xb5s", 1e3}, {"ms", 1e6},
                 {"s", 1e9}, {"m", 60e9}, {"h", 3600e9}};
    if (*s == '+')
        s++;
    if (strcmp(s, "0") == 0) {
        *ns = 0;
        return 0;
    }
    if (*s == '\0')
        return -EINVAL;
    double total = 0;
    while (*s) {
        char *end;
        if (!isdigit((unsigned char)*s) && *s != '.')
            return -EINVAL;
        double v = strtod(s, &end);
        if (end == s)
            return -EINVAL;
        s = end;
        size_t best = 0, which = 0;
        for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); u++) {
            size_t ul = strlen(units[u].name);
            if (ul > best && strncmp(s, units[u].name, ul) == 0) {
                best = ul;
                which = u;
            }
        }
        if (!best)
            return -EINVAL;
        total += v * units[which].ns;
        s += best;
    }
    if (total > 9.2e18)
        return -ERANGE;
    *ns = (uint64_t)total;
    return 0;
}

static void free_urls(struct config_urls *u) {
    for (size_t i = 0; i < u->n; i++) {
        free(u->v[i].text);
        free(u->v[i].scheme);
        free(u->v[i].host);
    }
    free(u->v);
    u->v = NULL;
    u->n = 0;
}

/* Parses one URL as etcd's types.NewURLs does. On failure returns -EINVAL and
 * writes etcd's reason into why. */
static int parse_url(const char *s, struct config_url *out, char *why, size_t whylen) {
    memset(out, 0, sizeof(*out));
    const char *sep = strstr(s, "://");
    size_t slen = sep ? (size_t)(sep - s) : 0;
    if (!sep ||
        !((slen == 4 && strncmp(s, "http", 4) == 0) || (slen == 5 && strncmp(s, "https", 5) == 0) ||
          (slen == 4 && strncmp(s, "unix", 4) == 0) ||
          (slen == 5 && strncmp(s, "unixs", 5) == 0))) {
        snprintf(why, whylen, "URL scheme must be http, https, unix, or unixs: %s", s);
        return -EINVAL;
    }
    const char *hostport = sep + 3;
    const char *path = strpbrk(hostport, "/?#");
    if (path) {
        snprintf(why, whylen, "URL must not contain a path: %s", s);
        return -EINVAL;
    }
    const char *host = hostport, *host_end, *colon;
    if (*hostport == '[') {
        host = hostport + 1;
        host_end = strchr(host, ']');
        colon = host_end ? host_end + 1 : NULL;
        if (colon && *colon != ':')
            colon = NULL;
    } else {
        colon = strrchr(hostport, ':');
        host_end = colon;
        if (colon && memchr(hostport, ':', (size_t)(colon - hostport)))
            colon = NULL; /* a bare IPv6 address is not host:port */
    }
    uint64_t port = 0;
    if (!colon || !host_end || parse_uint(colon + 1, &port) != 0 || port > 65535 ||
        !isdigit((unsigned char)colon[1])) {
        snprintf(why, whylen, "URL address does not have the form \"host:port\": %s", s);
        return -EINVAL;
    }
    out->text = strdup(s);
    out->scheme = strndup(s, slen);
    out->host = strndup(host, (size_t)(host_end - host));
    out->port = (uint16_t)port;
    if (!out->text || !out->scheme || !out->host) {
        free(out->text);
        free(out->scheme);
        free(out->host);
        snprintf(why, whylen, "out of memory");
        return -ENOMEM;
    }
    return 0;
}

/* Parses a comma list of URLs into out (emptied first). */
static int parse_urls(const char *s, struct config_urls *out, char *why, size_t whylen) {
    free_urls(out);
    char *list = strdup(s);
    if (!list) {
        snprintf(why, whylen, "out of memory");
        return -ENOMEM;
    }
    int rc = 0;
    char *save = NULL;
    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        struct config_url *v = realloc(out->v, (out->n + 1) * sizeof(*v));
        if (!v) {
            snprintf(why, whylen, "out of memory");
            rc = -ENOMEM;
            break;
        }
        out->v = v;
        rc = parse_url(tok, &out->v[out->n], why, whylen);
        if (rc != 0)
            break;
        out->n++;
    }
    if (rc == 0 && out->n == 0) {
        snprintf(why, whylen, "URL scheme must be http, https, unix, or unixs: %s", s);
        rc = -EINVAL;
    }
    free(list);
    if (rc != 0)
        free_urls(out);
    return rc;
}

/* Checks one value against its flag's kind; on failure why holds the reason
 * etcd would give. */
static int check_value(const struct flag_def *d, const char *v, char *why, size_t whylen) {
    uint64_t u;
    int64_t i;
    bool b;
    int rc = 0;
    switch (d->kind) {
    case FLAG_STR:
        return 0;
    case FLAG_UINT:
        rc = parse_uint(v, &u);
        break;
    case FLAG_INT:
        rc = parse_int(v, &i);
        break;
    case FLAG_BOOL:
        rc = parse_bool(v, &b);
        break;
    case FLAG_DURATION:
        rc = *v ? parse_duration(v, &u) : 0;
        break;
    case FLAG_URLS: {
        struct config_urls urls = {0};
        rc = parse_urls(v, &urls, why, whylen);
        free_urls(&urls);
        return rc;
    }
    case FLAG_CHOICE:
        for (const char *const *c = d->choices; *c; c++)
            if (strcmp(*c, v) == 0)
                return 0;
        snprintf(why, whylen, "invalid value");
        return -EINVAL;
    }
    if (rc != 0)
        snprintf(why, whylen, "%s", rc == -ERANGE ? "value out of range" : "parse error");
    return rc;
}

/* The flag's name as the source spelled it, for messages. */
static void source_name(const struct raw *r, int i, char *buf, size_t len) {
    const char *name = flag_at((size_t)i)->name;
    switch (r->src[i]) {
    case SRC_ENV: {
        size_t k = (size_t)snprintf(buf, len, "ETCD_");
        for (const char *p = name; *p && k + 1 < len; p++)
            buf[k++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
        buf[k] = '\0';
        break;
    }
    case SRC_FILE:
        snprintf(buf, len, "key %s in config file %s", name, r->file);
        break;
    default:
        snprintf(buf, len, "flag -%s", name);
        break;
    }
}

/* Reads argv with Go's flag package rules, as etcd does. */
static int parse_args(struct raw *r, int argc, char **argv, struct util_err *err) {
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (strcmp(arg, "--") == 0) {
            if (a + 1 < argc)
                return util_errorf(err, -EINVAL, "'%s' is not a valid flag", argv[a + 1]);
            break;
        }
        if (arg[0] != '-' || arg[1] == '\0')
            return util_errorf(err, -EINVAL, "'%s' is not a valid flag", arg);
        const char *name = arg + (arg[1] == '-' ? 2 : 1);
        if (name[0] == '-' || name[0] == '=' || name[0] == '\0')
            return util_errorf(err, -EINVAL, "bad flag syntax: %s", arg);
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        int i = flag_index(name, nlen);
        if (i < 0 && nlen == 1 && name[0] == 'h')
            i = idx("help");
        if (i < 0)
            return util_errorf(err, -EINVAL, "flag provided but not defined: -%.*s", (int)nlen,
                               name);
        const struct flag_def *d = flag_at((size_t)i);
        const char *val;
        if (eq) {
            val = eq + 1;
        } else if (d->kind == FLAG_BOOL) {
            val = "true";
        } else if (a + 1 < argc) {
            val = argv[++a];
        } else {
            return util_errorf(err, -EINVAL, "flag needs an argument: -%s", d->name);
        }
        bool b;
        if (d->kind == FLAG_BOOL && parse_bool(val, &b) != 0)
            return util_errorf(err, -EINVAL, "invalid boolean value \"%s\" for -%s: parse error",
                               val, d->name);
        int rc = raw_set(r, i, val, strlen(val), SRC_FLAG, err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* Takes ETCD_* variables for the flags the command line did not set. */
static int parse_env(struct raw *r, char **envp, struct util_err *err) {
    for (char **e = envp; e && *e; e++) {
        if (strncmp(*e, "ETCD_", 5) != 0)
            continue;
        const char *eq = strchr(*e, '=');
        if (!eq)
            continue;
        char name[128];
        size_t n = (size_t)(eq - (*e + 5));
        if (n >= sizeof(name))
            n = sizeof(name) - 1;
        for (size_t k = 0; k < n; k++) {
            char c = (*e)[5 + k];
            name[k] = c == '_' ? '-' : (char)tolower((unsigned char)c);
        }
        name[n] = '\0';
        int i = flag_index(name, n);
        int rc = 0;
        if (i < 0 || strcmp(name, "version") == 0 || strcmp(name, "help") == 0)
            rc = add_warning(r->cfg, err, "unrecognized environment variable %s", *e);
        else if (r->src[i] == SRC_FLAG)
            rc = add_warning(r->cfg, err,
                             "environment variable %.*s is shadowed by the command-line flag "
                             "--%s",
                             (int)(eq - *e), *e, name);
        else
            rc = raw_set(r, i, eq + 1, strlen(eq + 1), SRC_ENV, err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* Maps a key of etcd's client-transport-security / peer-transport-security
 * YAML sections to its flag. */
static const char *security_flag(bool peer, const char *key) {
    static const char *const map[][3] = {
        {"cert-file", "cert-file", "peer-cert-file"},
        {"key-file", "key-file", "peer-key-file"},
        {"client-cert-auth", "client-cert-auth", "peer-client-cert-auth"},
        {"trusted-ca-file", "trusted-ca-file", "peer-trusted-ca-file"},
        {"auto-tls", "auto-tls", "peer-auto-tls"},
        {"crl-file", "client-crl-file", "peer-crl-file"},
        {"allowed-hostname", "client-cert-allowed-hostname", "peer-cert-allowed-hostname"},
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(map[i][0], key) == 0)
            return map[i][peer ? 2 : 1];
    if (peer && strcmp(key, "allowed-cn") == 0)
        return "peer-cert-allowed-cn";
    return NULL;
}

/* Sets flag `name` from a YAML node: a scalar as is, a sequence of scalars
 * joined with commas (etcd's files write log-outputs as a list). */
static int set_from_yaml(struct raw *r, yaml_document_t *doc, const char *name, yaml_node_t *val,
                         struct util_err *err) {
    int i = flag_index(name, strlen(name));
    if (i < 0 || strcmp(name, "config-file") == 0 || strcmp(name, "version") == 0 ||
        strcmp(name, "help") == 0)
        return util_errorf(err, -EINVAL, "config file %s: unknown key \"%s\"", r->file, name);
    if (val->type == YAML_SCALAR_NODE) {
        const char *s = (const char *)val->data.scalar.value;
        if (val->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
            (strcmp(s, "") == 0 || strcmp(s, "~") == 0 || strcmp(s, "null") == 0))
            return 0; /* an empty value leaves the default, as in etcd */
        return raw_set(r, i, s, val->data.scalar.length, SRC_FILE, err);
    }
    if (val->type == YAML_SEQUENCE_NODE) {
        struct util_buf b = {0};
        int rc = 0;
        for (yaml_node_item_t *it = val->data.sequence.items.start;
             it < val->data.sequence.items.top; it++) {
            yaml_node_t *item = yaml_document_get_node(doc, *it);
            if (!item || item->type != YAML_SCALAR_NODE) {
                rc = util_errorf(err, -EINVAL, "config file %s: key \"%s\" holds a nested list",
                                 r->file, name);
                break;
            }
            if ((b.len && util_buf_append(&b, ",", 1) != 0) ||
                util_buf_append(&b, item->data.scalar.value, item->data.scalar.length) != 0) {
                rc = util_errorf(err, -ENOMEM, "out of memory reading %s", r->file);
                break;
            }
        }
        if (rc == 0)
            rc = raw_set(r, i, b.data ? b.data : "", b.len, SRC_FILE, err);
        util_buf_free(&b);
        return rc;
    }
    return util_errorf(err, -EINVAL, "config file %s: key \"%s\" must be a value or a list",
                       r->file, name);
}

static int load_yaml(struct raw *r, const char *path, struct util_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return util_errorf(err, errno == ENOENT ? -ENOENT : -EIO, "cannot read config file %s: %s",
                           path, strerror(errno));
    yaml_parser_t parser;
    yaml_document_t doc;
    int rc = 0, have_doc = 0;
    if (!yaml_parser_initialize(&parser)) {
        fclose(f);
        return util_errorf(err, -ENOMEM, "out of memory reading %s", path);
    }
    yaml_parser_set_input_file(&parser, f);
    if (!yaml_parser_load(&parser, &doc)) {
        rc = util_errorf(err, -EINVAL, "config file %s: line %zu: %s", path,
                         parser.problem_mark.line + 1,
                         parser.problem ? parser.problem : "not valid YAML");
        goto out;
    }
    have_doc = 1;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root)
        goto out; /* an empty file sets nothing */
    if (root->type != YAML_MAPPING_NODE) {
        rc =
            util_errorf(err, -EINVAL, "config file %s: expected a mapping of keys to values", path);
        goto out;
    }
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start;
         rc == 0 && p < root->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(&doc, p->key);
        yaml_node_t *v = yaml_document_get_node(&doc, p->value);
        if (!k || !v || k->type != YAML_SCALAR_NODE) {
            rc = util_errorf(err, -EINVAL, "config file %s: keys must be plain words", path);
            break;
        }
        const char *key = (const char *)k->data.scalar.value;
        bool peer = strcmp(key, "peer-transport-security") == 0;
        if (v->type == YAML_MAPPING_NODE &&
            (peer || strcmp(key, "client-transport-security") == 0)) {
            for (yaml_node_pair_t *q = v->data.mapping.pairs.start;
                 rc == 0 && q < v->data.mapping.pairs.top; q++) {
                yaml_node_t *sk = yaml_document_get_node(&doc, q->key);
                yaml_node_t *sv = yaml_document_get_node(&doc, q->value);
                const char *flag = sk && sk->type == YAML_SCALAR_NODE
                                       ? security_flag(peer, (const char *)sk->data.scalar.value)
                                       : NULL;
                if (!flag || !sv)
                    rc = util_errorf(
                        err, -EINVAL, "config file %s: unknown key \"%s.%s\"", path, key,
                        sk && sk->type == YAML_SCALAR_NODE ? (const char *)sk->data.scalar.value
                                                           : "?");
                else
                    rc = set_from_yaml(r, &doc, flag, sv, err);
            }
            continue;
        }
        rc = set_from_yaml(r, &doc, strcmp(key, "log-output") == 0 ? "log-outputs" : key, v, err);
    }
out:
    if (have_doc)
        yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    fclose(f);
    return rc;
}

static void free_members(struct config *cfg) {
    for (size_t i = 0; i < cfg->n_initial_cluster; i++) {
        free(cfg->initial_cluster[i].name);
        free_urls(&cfg->initial_cluster[i].peer_urls);
    }
    free(cfg->initial_cluster);
    cfg->initial_cluster = NULL;
    cfg->n_initial_cluster = 0;
}

/* Finds or adds the member `name` of --initial-cluster. */
static struct config_member *member_slot(struct config *cfg, const char *name, size_t len) {
    for (size_t i = 0; i < cfg->n_initial_cluster; i++)
        if (strlen(cfg->initial_cluster[i].name) == len &&
            memcmp(cfg->initial_cluster[i].name, name, len) == 0)
            return &cfg->initial_cluster[i];
    struct config_member *m =
        realloc(cfg->initial_cluster, (cfg->n_initial_cluster + 1) * sizeof(*m));
    if (!m)
        return NULL;
    cfg->initial_cluster = m;
    m = &m[cfg->n_initial_cluster];
    memset(m, 0, sizeof(*m));
    m->name = strndup(name, len);
    if (!m->name)
        return NULL;
    cfg->n_initial_cluster++;
    return m;
}

/* Parses "name=url,name=url" (a name may repeat, once per URL). A name may
 * be empty, as etcd allows: `etcdctl member add` prints members that have
 * not started yet (and so have published no name) as "=url". */
static int parse_initial_cluster(struct config *cfg, const char *s, struct util_err *err) {
    char *list = strdup(s);
    if (!list)
        return util_errorf(err, -ENOMEM, "out of memory parsing --initial-cluster");
    int rc = 0;
    char *save = NULL;
    for (char *tok = strtok_r(list, ",", &save); tok && rc == 0; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq) {
            rc = util_errorf(err, -EINVAL,
                             "invalid value \"%s\" for flag -initial-cluster: \"%s\" is not of "
                             "the form name=URL",
                             s, tok);
            break;
        }
        struct config_member *m = member_slot(cfg, tok, (size_t)(eq - tok));
        struct config_url *v =
            m ? realloc(m->peer_urls.v, (m->peer_urls.n + 1) * sizeof(*v)) : NULL;
        if (!v) {
            rc = util_errorf(err, -ENOMEM, "out of memory parsing --initial-cluster");
            break;
        }
        m->peer_urls.v = v;
        char why[256];
        if (parse_url(eq + 1, &v[m->peer_urls.n], why, sizeof(why)) != 0) {
            rc = util_errorf(err, -EINVAL, "invalid value \"%s\" for flag -initial-cluster: %s", s,
                             why);
            break;
        }
        m->peer_urls.n++;
    }
    free(list);
    return rc;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static uint64_t be64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* First 8 bytes, big-endian, of the SHA-1 of data: how etcd turns hashes into
 * ids. */
static int sha1_id(const void *data, size_t len, uint64_t *out) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(data, len, md, &mdlen, EVP_sha1(), NULL))
        return -ENOMEM;
    *out = be64(md);
    return 0;
}

/* etcd's member id: the sorted peer URLs concatenated, then the cluster token,
 * through sha1_id. */
static int member_id(const struct config_member *m, const char *token, uint64_t *out) {
    char **urls = calloc(m->peer_urls.n, sizeof(*urls));
    if (!urls && m->peer_urls.n)
        return -ENOMEM;
    for (size_t i = 0; i < m->peer_urls.n; i++)
        urls[i] = m->peer_urls.v[i].text;
    qsort(urls, m->peer_urls.n, sizeof(*urls), cmp_str);
    struct util_buf b = {0};
    int rc = 0;
    for (size_t i = 0; i < m->peer_urls.n && rc == 0; i++)
        rc = util_buf_append(&b, urls[i], strlen(urls[i]));
    if (rc == 0)
        rc = util_buf_append(&b, token, strlen(token));
    if (rc == 0)
        rc = sha1_id(b.data, b.len, out);
    util_buf_free(&b);
    free(urls);
    return rc;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* etcd's cluster id: SHA-1 over the sorted member ids, 8 big-endian bytes each. */
static int cluster_id(struct config *cfg, uint64_t *out) {
    size_t n = cfg->n_initial_cluster;
    uint64_t *ids = calloc(n, sizeof(*ids));
    unsigned char *b = calloc(n, 8);
    if (!ids || !b) {
        free(ids);
        free(b);
        return -ENOMEM;
    }
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = member_id(&cfg->initial_cluster[i], cfg->initial_cluster_token, &ids[i]);
    qsort(ids, n, sizeof(*ids), cmp_u64);
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < 8; k++)
            b[i * 8 + (size_t)k] = (unsigned char)(ids[i] >> (56 - 8 * k));
    if (rc == 0)
        rc = sha1_id(b, n * 8, out);
    free(ids);
    free(b);
    return rc;
}

static int same_url_set(const struct config_urls *a, const struct config_urls *b) {
    if (a->n != b->n)
        return 0;
    for (size_t i = 0; i < a->n; i++) {
        size_t k = 0;
        while (k < b->n && strcmp(a->v[i].text, b->v[k].text) != 0)
            k++;
        if (k == b->n)
            return 0;
    }
    return 1;
}

/* Whether a flag's value means the same as its default. */
static int is_default(const struct flag_def *d, const char *v) {
    if (d->kind == FLAG_BOOL) {
        bool x, y;
        return parse_bool(v, &x) == 0 && parse_bool(d->def, &y) == 0 && x == y;
    }
    if (d->kind == FLAG_UINT) {
        uint64_t x, y;
        return parse_uint(v, &x) == 0 && parse_uint(d->def, &y) == 0 && x == y;
    }
    if (d->kind == FLAG_INT) {
        int64_t x, y;
        return parse_int(v, &x) == 0 && parse_int(d->def, &y) == 0 && x == y;
    }
    return strcmp(v, d->def) == 0;
}

/* Checks each given value against its kind, in table order. */
static int check_values(const struct raw *r, struct util_err *err) {
    for (size_t i = 0; i < flag_count(); i++) {
        if (r->src[i] == SRC_DEFAULT)
            continue;
        char why[256];
        int rc = check_value(flag_at(i), r->val[i], why, sizeof(why));
        if (rc == -ENOMEM)
            return util_errorf(err, rc, "out of memory parsing flags");
        if (rc != 0) {
            char who[256];
            source_name(r, (int)i, who, sizeof(who));
            return util_errorf(err, -EINVAL, "invalid value \"%s\" for %s: %s", r->val[i], who,
                               why);
        }
    }
    return 0;
}

static int dup_str(char **dst, const char *s, struct util_err *err) {
    *dst = strdup(s);
    return *dst ? 0 : util_errorf(err, -ENOMEM, "out of memory parsing flags");
}

static int urls_of(const struct raw *r, const char *name, struct config_urls *out,
                   struct util_err *err) {
    char why[256];
    int rc = parse_urls(raw_get(r, name), out, why, sizeof(why));
    return rc == 0 ? 0 : util_errorf(err, rc, "invalid value for -%s: %s", name, why);
}

static uint64_t uint_of(const struct raw *r, const char *name) {
    uint64_t v = 0;
    parse_uint(raw_get(r, name), &v); /* checked by check_values */
    return v;
}

/* Converts checked text into the config's typed fields. */
static int fill(struct config *cfg, const struct raw *r, struct util_err *err) {
    int rc;
    if ((rc = dup_str(&cfg->name, raw_get(r, "name"), err)) != 0)
        return rc;
    const char *dd = raw_get(r, "data-dir");
    if (*dd) {
        rc = dup_str(&cfg->data_dir, dd, err);
    } else if (asprintf(&cfg->data_dir, "%s.quoin", cfg->name) < 0) {
        cfg->data_dir = NULL;
        rc = util_errorf(err, -ENOMEM, "out of memory parsing flags");
    }
    if (rc != 0)
        return rc;
    const char *wd = raw_get(r, "wal-dir");
    if (*wd && (rc = dup_str(&cfg->wal_dir, wd, err)) != 0)
        return rc;
    if ((rc = urls_of(r, "listen-client-urls", &cfg->listen_client_urls, err)) != 0 ||
        (rc = urls_of(r, "advertise-client-urls", &cfg->advertise_client_urls, err)) != 0 ||
        (rc = urls_of(r, "listen-peer-urls", &cfg->listen_peer_urls, err)) != 0 ||
        (rc = urls_of(r, "initial-advertise-peer-urls", &cfg->initial_advertise_peer_urls, err)) !=
            0)
        return rc;
    cfg->initial_cluster_new = strcmp(raw_get(r, "initial-cluster-state"), "new") == 0;
    if ((rc = dup_str(&cfg->initial_cluster_token, raw_get(r, "initial-cluster-token"), err)) != 0)
        return rc;
    cfg->snapshot_count = uint_of(r, "snapshot-count");
    cfg->heartbeat_ms = (unsigned)uint_of(r, "heartbeat-interval");
    cfg->election_ms = (unsigned)uint_of(r, "election-timeout");
    parse_int(raw_get(r, "quota-backend-bytes"), &cfg->quota_backend_bytes);
    cfg->max_txn_ops = (unsigned)uint_of(r, "max-txn-ops");
    cfg->max_request_bytes = uint_of(r, "max-request-bytes");
    if ((rc = dup_str(&cfg->auto_compaction_mode, raw_get(r, "auto-compaction-mode"), err)) != 0 ||
        (rc = dup_str(&cfg->auto_compaction_retention, raw_get(r, "auto-compaction-retention"),
                      err)) != 0)
        return rc;
    parse_bool(raw_get(r, "enable-v2"), &cfg->enable_v2);
    parse_bool(raw_get(r, "strict-reconfig-check"), &cfg->strict_reconfig_check);
    /* etcd's --auto-compaction-retention: revisions in revision mode; in
     * periodic mode a duration, or a number of hours. */
    const char *ret = cfg->auto_compaction_retention;
    uint64_t n = 0;
    if (strcmp(cfg->auto_compaction_mode, "revision") == 0) {
        if (parse_uint(ret, &n) != 0 || n > INT64_MAX)
            return util_errorf(err, -EINVAL,
                               "invalid auto-compaction-retention \"%s\" (must be a number of "
                               "revisions in revision mode)",
                               ret);
        cfg->auto_compaction_retention_revs = (int64_t)n;
    } else if (parse_uint(ret, &n) == 0) {
        cfg->auto_compaction_retention_ns = n * 3600000000000ull;
    } else if (parse_duration(ret, &n) == 0) {
        cfg->auto_compaction_retention_ns = n;
    } else {
        return util_errorf(err, -EINVAL,
                           "invalid auto-compaction-retention \"%s\" (want a duration such as "
                           "\"1h\" or \"30m\", or a number of hours)",
                           ret);
    }
    log_parse_level(raw_get(r, "log-level"), &cfg->log_level);
    if ((rc = dup_str(&cfg->log_outputs, raw_get(r, "log-outputs"), err)) != 0)
        return rc;

    /* Without --initial-cluster, the cluster is this member alone at its
     * advertised peer URLs, as etcd does. */
    const char *ic = raw_get(r, "initial-cluster");
    if (*ic) {
        rc = parse_initial_cluster(cfg, ic, err);
    } else {
        struct util_buf b = {0};
        for (size_t i = 0; i < cfg->initial_advertise_peer_urls.n && rc == 0; i++)
            rc = util_buf_printf(&b, "%s%s=%s", i ? "," : "", cfg->name,
                                 cfg->initial_advertise_peer_urls.v[i].text);
        rc = rc ? util_errorf(err, rc, "out of memory parsing flags")
                : parse_initial_cluster(cfg, b.data, err);
        util_buf_free(&b);
    }
    return rc;
}

/* The checks etcd makes across flags, worded as etcd words them. */
static int cross_check(const struct config *cfg, const struct raw *r, struct util_err *err) {
    if (cfg->heartbeat_ms == 0)
        return util_errorf(err, -EINVAL, "--heartbeat-interval must be greater than 0");
    if ((uint64_t)cfg->election_ms < 5ull * cfg->heartbeat_ms)
        return util_errorf(err, -EINVAL,
                           "--election-timeout[%ums] should be at least as 5 times as "
                           "--heartbeat-interval[%ums]",
                           cfg->election_ms, cfg->heartbeat_ms);
    if (cfg->election_ms > 50000)
        return util_errorf(err, -EINVAL,
                           "--election-timeout[%ums] is too long, and should be set less than "
                           "50000ms",
                           cfg->election_ms);
    if (raw_given(r, "listen-client-urls") && !raw_given(r, "advertise-client-urls"))
        return util_errorf(err, -EINVAL,
                           "--advertise-client-urls is required when --listen-client-urls is "
                           "set explicitly");
    const struct config_member *self = config_find_member(cfg, cfg->name);
    if (!self)
        return util_errorf(err, -EINVAL,
                           "couldn't find local name \"%s\" in the initial cluster configuration",
                           cfg->name);
    if (!same_url_set(&self->peer_urls, &cfg->initial_advertise_peer_urls))
        return util_errorf(err, -EINVAL,
                           "--initial-cluster has %s=%s but missing from "
                           "--initial-advertise-peer-urls=%s",
                           cfg->name, self->peer_urls.v[0].text,
                           raw_get(r, "initial-advertise-peer-urls"));
    return 0;
}

/* Refuses, by name, the first flag set to a value quoin cannot honour yet. */
static int check_supported(const struct config *cfg, const struct raw *r, struct util_err *err) {
    for (size_t i = 0; i < flag_count(); i++) {
        const struct flag_def *d = flag_at(i);
        if (d->supported || r->src[i] == SRC_DEFAULT || is_default(d, r->val[i]))
            continue;
        return util_errorf(err, -ENOTSUP,
                           "--%s=%s: not supported yet by quoin " UTIL_QUOIN_VERSION
                           " (leave it at its default '%s')",
                           d->name, r->val[i], d->def);
    }
    for (size_t i = 0; i < cfg->listen_client_urls.n; i++)
        if (strcmp(cfg->listen_client_urls.v[i].scheme, "http") != 0)
            return util_errorf(
                err, -ENOTSUP, "--listen-client-urls=%s: %s URLs are not supported yet by quoin",
                cfg->listen_client_urls.v[i].text, cfg->listen_client_urls.v[i].scheme);
    for (size_t i = 0; i < cfg->listen_peer_urls.n; i++)
        if (strcmp(cfg->listen_peer_urls.v[i].scheme, "http") != 0)
            return util_errorf(err, -ENOTSUP,
                               "--listen-peer-urls=%s: %s URLs are not supported yet by quoin",
                               cfg->listen_peer_urls.v[i].text, cfg->listen_peer_urls.v[i].scheme);
    return 0;
}

int config_parse(int argc, char **argv, char **envp, struct config **out, struct util_err *err) {
    struct config *cfg = calloc(1, sizeof(*cfg));
    struct raw r = {0};
    r.val = calloc(flag_count(), sizeof(*r.val));
    r.src = calloc(flag_count(), sizeof(*r.src));
    int rc;
    if (!cfg || !r.val || !r.src) {
        rc = util_errorf(err, -ENOMEM, "out of memory parsing flags");
        goto err;
    }
    r.cfg = cfg;
    cfg->action = CONFIG_RUN;
    if ((rc = parse_args(&r, argc, argv, err)) != 0)
        goto err;
    bool flag_on;
    if (parse_bool(raw_get(&r, "help"), &flag_on) == 0 && flag_on) {
        cfg->action = CONFIG_PRINT_HELP;
        goto done;
    }
    if (parse_bool(raw_get(&r, "version"), &flag_on) == 0 && flag_on) {
        cfg->action = CONFIG_PRINT_VERSION;
        goto done;
    }
    if ((rc = parse_env(&r, envp, err)) != 0)
        goto err;

    const char *file = raw_get(&r, "config-file");
    if (*file) {
        if ((rc = dup_str(&cfg->config_file, file, err)) != 0)
            goto err;
        raw_clear(&r);
        r.file = cfg->config_file;
        if ((rc = load_yaml(&r, cfg->config_file, err)) != 0)
            goto err;
        if ((rc = add_warning(cfg, err,
                              "loaded server configuration from %s; other configuration "
                              "command line flags and environment variables are ignored",
                              cfg->config_file)) != 0)
            goto err;
    }
    if ((rc = check_values(&r, err)) != 0 || (rc = fill(cfg, &r, err)) != 0 ||
        (rc = cross_check(cfg, &r, err)) != 0 || (rc = check_supported(cfg, &r, err)) != 0)
        goto err;
    const struct config_member *self = config_find_member(cfg, cfg->name);
    for (size_t i = 0; i < cfg->n_initial_cluster; i++)
        if (member_id(&cfg->initial_cluster[i], cfg->initial_cluster_token,
                      &cfg->initial_cluster[i].id) != 0) {
            rc = util_errorf(err, -ENOMEM, "out of memory parsing flags");
            goto err;
        }
    if (member_id(self, cfg->initial_cluster_token, &cfg->member_id) != 0 ||
        cluster_id(cfg, &cfg->cluster_id) != 0) {
        rc = util_errorf(err, -ENOMEM, "out of memory parsing flags");
        goto err;
    }
done:
    raw_clear(&r);
    free(r.val);
    free(r.src);
    *out = cfg;
    return 0;
err:
    if (r.val)
        raw_clear(&r);
    free(r.val);
    free(r.src);
    config_free(cfg);
    return rc;
}

void config_free(struct config *cfg) {
    if (!cfg)
        return;
    free(cfg->name);
    free(cfg->data_dir);
    free(cfg->wal_dir);
    free_urls(&cfg->listen_client_urls);
    free_urls(&cfg->advertise_client_urls);
    free_urls(&cfg->listen_peer_urls);
    free_urls(&cfg->initial_advertise_peer_urls);
    free_members(cfg);
    free(cfg->initial_cluster_token);
    free(cfg->auto_compaction_mode);
    free(cfg->auto_compaction_retention);
    free(cfg->log_outputs);
    free(cfg->config_file);
    for (size_t i = 0; i < cfg->n_warnings; i++)
        free(cfg->warnings[i]);
    free(cfg->warnings);
    free(cfg);
}

const struct config_member *config_find_member(const struct config *cfg, const char *name) {
    for (size_t i = 0; i < cfg->n_initial_cluster; i++)
        if (strcmp(cfg->initial_cluster[i].name, name) == 0)
            return &cfg->initial_cluster[i];
    return NULL;
}

int config_usage(struct util_buf *out) {
    int rc = util_buf_printf(out, "Usage:\n\n"
                                  "  quoin [flags]\n    Start a quoin member.\n\n"
                                  "  quoin --version\n    Show the version of quoin.\n\n"
                                  "  quoin -h | --help\n    Show this help.\n\n"
                                  "Flags are etcd 3.4's; each may also be given as an ETCD_* "
                                  "environment variable\n(flag wins) or in --config-file "
                                  "(which then overrides both).\n"
                                  "Flags marked (not supported yet) are refused unless left at "
                                  "their default.\n\n");
    for (size_t i = 0; rc == 0 && i < flag_count(); i++) {
        const struct flag_def *d = flag_at(i);
        rc = util_buf_printf(out, "  --%s '%s'%s\n", d->name,
                             strcmp(d->name, "data-dir") == 0 ? "${name}.quoin" : d->def,
                             d->supported ? "" : "  (not supported yet)");
    }
    return rc;
}
