/* A member without a leader (see noleader.h). */
#include "noleader.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "api/proto/rpc.pb-c.h"

static void on_put(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                   void *arg) {
    struct noleader *n = arg;
    (void)data;
    (void)len;
    protobuf_c_message_free_unpacked(msg, NULL);
    atomic_fetch_add(&n->puts, 1);
    api_call_finish(call, API_GRPC_UNAVAILABLE, "etcdserver: no leader");
}

static void on_stop(uv_async_t *a) {
    struct noleader *n = a->data;
    api_server_close(n->srv, NULL, NULL);
    uv_close((uv_handle_t *)a, NULL);
}

static void *run(void *arg) {
    struct noleader *n = arg;
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, NULL); /* a client leaving mid-write */
    uv_run(&n->loop, UV_RUN_DEFAULT);
    return NULL;
}

int noleader_start(struct noleader *n) {
    struct util_err err;
    struct api_grpc_method m = {.path = "/etcdserverpb.KV/Put",
                                .request = &etcdserverpb__put_request__descriptor,
                                .on_message = on_put,
                                .arg = n};
    atomic_init(&n->puts, 0);
    if (uv_loop_init(&n->loop) != 0)
        return -1;
    if (api_server_new(&n->loop, NULL, NULL, &n->srv, &err) != 0 ||
        api_server_register(n->srv, &m) != 0)
        return -1;
    for (int i = 0;; i++) {
        char url[80];
        int port = 20000 + rand() % 10000;
        snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
        if (api_server_listen(n->srv, url, &err) == 0) {
            snprintf(n->endpoint, sizeof n->endpoint, "127.0.0.1:%d", port);
            break;
        }
        if (i == 50)
            return -1;
    }
    uv_async_init(&n->loop, &n->stop, on_stop);
    n->stop.data = n;
    return pthread_create(&n->thread, NULL, run, n) == 0 ? 0 : -1;
}

void noleader_stop(struct noleader *n) {
    uv_async_send(&n->stop);
    pthread_join(n->thread, NULL);
    uv_loop_close(&n->loop);
}
