/* TLS for client connections (https:// URLs): OpenSSL over memory BIOs, so
 * libuv keeps doing the socket I/O. Ciphertext read from the socket goes into
 * the connection's read BIO and comes out as plaintext in its input buffer;
 * plaintext written by the protocols comes out of the write BIO as ciphertext
 * for the socket. ALPN offers http/1.1 and h2; the protocol is still told by
 * the first plaintext bytes, as without TLS. */
#include <errno.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>

#include "api/internal.h"

#define TLS_READ_CHUNK (16 * 1024) /* plaintext room made per SSL_read */

/* The OpenSSL error queue's latest entry as text, and the queue cleared. */
static const char *ssl_errstr(char *buf, size_t n) {
    unsigned long e = ERR_peek_last_error();
    if (e)
        ERR_error_string_n(e, buf, n);
    else
        snprintf(buf, n, "unknown error");
    ERR_clear_error();
    return buf;
}

/* Picks http/1.1 when the client offers it, else h2. gRPC clients offer h2
 * alone and get it; general HTTP clients (curl) offer both and get HTTP/1.1,
 * where the routes (/version, /health, ...) are served. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg) {
    static const unsigned char ours[] = "\x08http/1.1\x02h2";
    (void)ssl;
    (void)arg;
    if (SSL_select_next_proto((unsigned char **)out, outlen, ours, sizeof(ours) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    return SSL_TLSEXT_ERR_OK;
}

int api_server_set_tls(api_server_t *srv, const struct api_tls_config *tls, struct util_err *err) {
    char why[256];
    int rc = -EINVAL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return util_errorf(err, -ENOMEM, "cannot create a TLS context: %s",
                           ssl_errstr(why, sizeof(why)));
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    /* Renegotiation would let a write wait on a read: refused, as Go does. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    if (!tls->cert_file || !tls->key_file) {
        util_errorf(err, rc, "TLS key/cert (--cert-file, --key-file) must be provided");
        goto err;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, tls->cert_file) != 1) {
        util_errorf(err, rc, "cannot load the certificate %s: %s", tls->cert_file,
                    ssl_errstr(why, sizeof(why)));
        goto err;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, tls->key_file, SSL_FILETYPE_PEM) != 1) {
        util_errorf(err, rc, "cannot load the key %s: %s", tls->key_file,
                    ssl_errstr(why, sizeof(why)));
        goto err;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        util_errorf(err, rc, "tls: private key does not match public key");
        goto err;
    }
    if (tls->trusted_ca_file &&
        SSL_CTX_load_verify_locations(ctx, tls->trusted_ca_file, NULL) != 1) {
        util_errorf(err, rc, "cannot load the trusted CA %s: %s", tls->trusted_ca_file,
                    ssl_errstr(why, sizeof(why)));
        goto err;
    }
    if (tls->client_cert_auth) {
        if (!tls->trusted_ca_file) {
            util_errorf(err, rc, "--client-cert-auth needs --trusted-ca-file");
            goto err;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    SSL_CTX_free(srv->tls_ctx);
    srv->tls_ctx = ctx;
    return 0;
err:
    SSL_CTX_free(ctx);
    return rc;
}

void api_tls_free_ctx(api_server_t *srv) {
    SSL_CTX_free(srv->tls_ctx);
    srv->tls_ctx = NULL;
}

int api_tls_conn_start(struct api_conn *c) {
    BIO *rbio = NULL, *wbio = NULL;
    c->ssl = SSL_new(c->srv->tls_ctx);
    rbio = BIO_new(BIO_s_mem());
    wbio = BIO_new(BIO_s_mem());
    if (!c->ssl || !rbio || !wbio) {
        BIO_free(rbio);
        BIO_free(wbio);
        return -ENOMEM;
    }
    SSL_set_bio(c->ssl, rbio, wbio); /* the SSL owns both now */
    SSL_set_accept_state(c->ssl);
    return 0;
}

void api_tls_conn_free(struct api_conn *c) {
    SSL_free(c->ssl);
    c->ssl = NULL;
    free(c->peer_cn);
    c->peer_cn = NULL;
}

/* Sends what OpenSSL has written into the write BIO. */
static int tls_flush(struct api_conn *c) {
    size_t n = BIO_ctrl_pending(SSL_get_wbio(c->ssl));
    if (n == 0)
        return 0;
    char *buf = malloc(n);
    if (!buf)
        return -ENOMEM;
    int got = BIO_read(SSL_get_wbio(c->ssl), buf, (int)n);
    if (got <= 0) {
        free(buf);
        return -EPROTO;
    }
    return api_conn_write_raw(c, buf, (size_t)got);
}

/* Keeps the common name of a verified client certificate: with
 * --client-cert-auth etcd takes it as the user name. */
static int peer_name(struct api_conn *c) {
    X509 *cert = SSL_get1_peer_certificate(c->ssl);
    char cn[256];
    int rc = 0;
    if (!cert)
        return 0;
    if (SSL_get_verify_result(c->ssl) == X509_V_OK &&
        X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn)) >
            0) {
        c->peer_cn = strdup(cn);
        rc = c->peer_cn ? 0 : -ENOMEM;
    }
    X509_free(cert);
    return rc;
}

int api_tls_read(struct api_conn *c, const char *data, size_t n) {
    char why[256];
    int rc = 0;
    if (BIO_write(SSL_get_rbio(c->ssl), data, (int)n) != (int)n)
        return -ENOMEM;
    if (!SSL_is_init_finished(c->ssl)) {
        int r = SSL_do_handshake(c->ssl);
        int e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, r);
        if (e != SSL_ERROR_NONE && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
            LOG_DEBUG(c->srv->lg, "TLS handshake failed",
                      LOG_STR("error", ssl_errstr(why, sizeof(why))));
            rc = -EPROTO;
        } else if (r == 1) {
            rc = peer_name(c);
        }
    }
    while (rc == 0 && SSL_is_init_finished(c->ssl)) {
        if (c->in.cap - c->in.len < TLS_READ_CHUNK) {
            char *p = realloc(c->in.data, c->in.len + TLS_READ_CHUNK);
            if (!p) {
                rc = -ENOMEM;
                break;
            }
            c->in.data = p;
            c->in.cap = c->in.len + TLS_READ_CHUNK;
        }
        size_t room = c->in.cap - c->in.len;
        int r = SSL_read(c->ssl, c->in.data + c->in.len, room > INT_MAX ? INT_MAX : (int)room);
        if (r > 0) {
            c->in.len += (size_t)r;
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ)
            break;
        rc = e == SSL_ERROR_ZERO_RETURN ? -ECONNRESET : -EPROTO; /* close_notify, or broken */
    }
    /* Handshake messages, session tickets and alerts go out even on failure. */
    int frc = tls_flush(c);
    return rc ? rc : frc;
}

int api_tls_write(struct api_conn *c, const char *data, size_t len) {
    size_t off = 0;
    while (off < len) {
        size_t n = len - off > INT_MAX ? INT_MAX : len - off;
        int r = SSL_write(c->ssl, data + off, (int)n);
        if (r <= 0) {
            ERR_clear_error();
            return -EPROTO;
        }
        off += (size_t)r;
    }
    return tls_flush(c);
}

int api_tls_shutdown(struct api_conn *c) {
    SSL_shutdown(c->ssl); /* queues close_notify; the answer is not awaited */
    ERR_clear_error();
    return tls_flush(c);
}
