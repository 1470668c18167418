/* snapshot: `quoin snapshot restore FILE`, with etcdctl 3.4's flags of
 * `snapshot restore` (--name, --data-dir, --initial-cluster,
 * --initial-cluster-token, --initial-advertise-peer-urls, --skip-hash-check).
 * The member flags are read by the server's own parser, so the ids a restored
 * directory is made for are exactly those the server computes at start. */
#include "snapshot.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "log/log.h"
#include "server/server.h"

#define USAGE                                                                                      \
    "usage: quoin snapshot restore FILE [--name NAME] [--data-dir DIR]\n"                          \
    "         [--initial-cluster NAME=URL,...] [--initial-cluster-token TOKEN]\n"                  \
    "         [--initial-advertise-peer-urls URL,...] [--skip-hash-check]\n"                       \
    "FILE is what `etcdctl snapshot save` wrote from a quoin member. Restore every member of\n"    \
    "the new cluster from the same file, with the same --initial-cluster and token, then start\n"  \
    "each with the same flags.\n"

static const char *const member_flags[] = {"name", "data-dir", "initial-cluster",
                                           "initial-cluster-token", "initial-advertise-peer-urls"};

static bool is_member_flag(const char *name, size_t len) {
    for (size_t i = 0; i < sizeof(member_flags) / sizeof(member_flags[0]); i++)
        if (strlen(member_flags[i]) == len && strncmp(member_flags[i], name, len) == 0)
            return true;
    return false;
}

static int usage_error(const char *fmt, const char *what) {
    fprintf(stderr, "quoin snapshot restore: ");
    fprintf(stderr, fmt, what);
    fprintf(stderr, "\n%s", USAGE);
    return 2;
}

int quoin_snapshot_main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "restore") != 0) {
        fprintf(stderr,
                "quoin snapshot: the only subcommand is restore (take snapshots with "
                "etcdctl snapshot save)\n%s",
                USAGE);
        return 2;
    }
    /* The server's parser gets "quoin --flag=value ..." for the member flags. */
    char **args = calloc((size_t)argc + 1, sizeof(*args));
    if (!args)
        return 1;
    int n = 0, code = 2;
    args[n++] = "quoin";
    const char *file = NULL;
    bool skip_hash = false, flags_done = false;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (flags_done || a[0] != '-' || a[1] == '\0') {
            if (file) {
                code = usage_error("more than one file given (%s)", a);
                goto out;
            }
            file = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            flags_done = true;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(USAGE, stdout);
            code = 0;
            goto out;
        }
        const char *name = a + (a[1] == '-' ? 2 : 1);
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        if (len == strlen("skip-hash-check") && strncmp(name, "skip-hash-check", len) == 0) {
            skip_hash = !eq || strcmp(eq + 1, "true") == 0 || strcmp(eq + 1, "1") == 0;
            continue;
        }
        if (!is_member_flag(name, len)) {
            code = usage_error("unknown flag %s", a);
            goto out;
        }
        if (!eq && i + 1 == argc) {
            code = usage_error("flag needs an argument: %s", a);
            goto out;
        }
        args[n++] = (char *)a;
        if (!eq)
            args[n++] = argv[++i];
    }
    if (!file) {
        code = usage_error("%s", "no snapshot file given");
        goto out;
    }
    char *no_env[] = {NULL};
    struct config *cfg = NULL;
    struct util_err err = {0};
    if (config_parse(n, args, no_env, &cfg, &err) != 0) {
        code = usage_error("%s", err.msg);
        goto out;
    }
    log_t *lg = NULL;
    if (log_open(cfg->log_level, cfg->log_outputs, &lg, &err) != 0) {
        fprintf(stderr, "quoin snapshot restore: %s\n", err.msg);
        config_free(cfg);
        code = 1;
        goto out;
    }
    code = 0;
    if (server_snapshot_restore(file, cfg, skip_hash, lg, &err) != 0) {
        fprintf(stderr, "quoin snapshot restore: %s\n", err.msg);
        code = 1;
    }
    log_close(lg);
    config_free(cfg);
out:
    free(args);
    return code;
}
