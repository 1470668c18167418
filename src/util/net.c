/* net: turning an etcd-style listen URL into a bound, listening libuv TCP
 * handle, with errors worded as Go's net.Listen words them (etcd's users grep
 * their logs for those). Shared by the client (api) and peer listeners. */
#include <ctype.h>
#include <stdbool.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <uv.h>

#include "util/util.h"

/* Go's spelling of a system error: strerror's text with a lower-case first letter. */
static void go_errstr(int uverr, char *out, size_t n) {
    snprintf(out, n, "%s", strerror(-uverr));
    out[0] = (char)tolower((unsigned char)out[0]);
}

/* Splits "host:port" or "[v6]:port" (the authority of a URL). */
static int split_hostport(const char *url, const char *hp, char *host, size_t hostsz, char *port,
                          size_t portsz, struct util_err *err) {
    const char *colon;
    const char *h = hp;
    size_t hlen;
    if (*hp == '[') {
        const char *end = strchr(hp, ']');
        if (!end)
            return util_errorf(err, -EINVAL, "parse %s: missing ']' in host", url);
        h = hp + 1;
        hlen = (size_t)(end - h);
        colon = end[1] == ':' ? end + 1 : NULL;
        if (!colon && end[1] != '\0')
            return util_errorf(err, -EINVAL, "parse %s: invalid port after host", url);
    } else {
        colon = strrchr(hp, ':');
        hlen = colon ? (size_t)(colon - hp) : strlen(hp);
        if (memchr(hp, ':', hlen))
            return util_errorf(err, -EINVAL, "address %s: too many colons in address", hp);
    }
    if (!colon)
        return util_errorf(err, -EINVAL, "listen tcp: address %s: missing port in address", hp);
    const char *p = colon + 1;
    size_t plen = strlen(p);
    if (plen == 0 || plen >= portsz || strspn(p, "0123456789") != plen || atol(p) > 65535)
        return util_errorf(err, -EINVAL, "parse %s: invalid port \"%s\" after host", url, colon);
    if (hlen >= hostsz)
        return util_errorf(err, -EINVAL, "parse %s: host name too long", url);
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    memcpy(port, p, plen + 1);
    return 0;
}

/* Resolves host (numeric or a name, "" = every interface) to one address,
 * preferring IPv4 as Go's listener does. */
static int resolve(const char *host, const char *port, struct sockaddr_storage *ss,
                   struct util_err *err) {
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host[0] ? host : "::", port, &hints, &res);
    if (rc != 0)
        return util_errorf(err, -EINVAL, "listen tcp: lookup %s: %s", host, gai_strerror(rc));
    struct addrinfo *pick = res;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
    }
    memcpy(ss, pick->ai_addr, pick->ai_addrlen);
    freeaddrinfo(res);
    return 0;
}

static void format_addr(const struct sockaddr_storage *ss, char *out, size_t n) {
    char ip[INET6_ADDRSTRLEN] = "";
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        uv_ip6_name(a, ip, sizeof(ip));
        snprintf(out, n, "[%s]:%u", ip, ntohs(a->sin6_port));
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        uv_ip4_name(a, ip, sizeof(ip));
        snprintf(out, n, "%s:%u", ip, ntohs(a->sin_port));
    }
}

int util_listen_addr(const char *url, struct sockaddr_storage *ss, char *addr, size_t addrlen,
                     struct util_err *err) {
    char host[256], port[8];
    if (strncmp(url, "unix://", 7) == 0 || strncmp(url, "unixs://", 8) == 0)
        return util_errorf(err, -ENOTSUP, "URL %s: unix sockets are not supported yet", url);
    bool tls = strncmp(url, "https://", 8) == 0;
    if (!tls && strncmp(url, "http://", 7) != 0)
        return util_errorf(err, -EINVAL, "URL scheme must be http, https, unix, or unixs: %s", url);
    const char *hp = url + (tls ? 8 : 7);
    char authority[300];
    size_t alen = strcspn(hp, "/");
    if (hp[alen] == '/' && hp[alen + 1] != '\0')
        return util_errorf(err, -EINVAL, "URL must not contain a path: %s", url);
    if (alen >= sizeof(authority))
        return util_errorf(err, -EINVAL, "URL %s is too long", url);
    memcpy(authority, hp, alen);
    authority[alen] = '\0';
    int rc = split_hostport(url, authority, host, sizeof(host), port, sizeof(port), err);
    if (rc == 0)
        rc = resolve(host, port, ss, err);
    if (rc == 0)
        format_addr(ss, addr, addrlen);
    return rc;
}

int util_tcp_listen(struct uv_tcp_s *tcp, const struct sockaddr_storage *ss, const char *addr,
                    void (*on_connection)(struct uv_stream_s *, int), struct util_err *err) {
    /* libuv may defer a bind error to listen(); both are reported as bind errors,
     * the only step Go names. */
    const char *step = "bind";
    int rc = uv_tcp_bind(tcp, (const struct sockaddr *)ss, 0);
    if (rc == 0) {
        rc = uv_listen((uv_stream_t *)tcp, 511, on_connection);
        if (rc != 0 && rc != UV_EADDRINUSE && rc != UV_EACCES && rc != UV_EADDRNOTAVAIL)
            step = "listen";
    }
    if (rc != 0) {
        char why[128];
        go_errstr(rc, why, sizeof(why));
        return util_errorf(err, rc, "listen tcp %s: %s: %s", addr, step, why);
    }
    return 0;
}
