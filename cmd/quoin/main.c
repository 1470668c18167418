/* quoin: the server. Reads etcd's flags, opens the logger, runs one member.
 *
 * `quoin snapshot restore ...` is a subcommand of its own (snapshot.c).
 *
 * Exit codes: 0 after a clean stop (SIGTERM/SIGINT) or --help/--version; 1 when
 * the member cannot start or fails; 2 for a bad command line, environment or
 * config file (as etcd's flag parsing does). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "config/config.h"
#include "log/log.h"
#include "server/server.h"
#include "snapshot.h"

extern char **environ;

int main(int argc, char **argv) {
    /* A write to a socket the peer has closed must fail with EPIPE, not kill
     * the member. */
    signal(SIGPIPE, SIG_IGN);
    if (argc > 1 && strcmp(argv[1], "snapshot") == 0)
        return quoin_snapshot_main(argc - 1, argv + 1);
    struct config *cfg = NULL;
    struct util_err err = {0};
    int rc = config_parse(argc, argv, environ, &cfg, &err);
    if (rc != 0) {
        fprintf(stderr, "quoin: %s\nSee 'quoin --help'.\n", err.msg);
        return rc == -ENOMEM ? 1 : 2;
    }
    if (cfg->action == CONFIG_PRINT_VERSION) {
        printf("quoin Version: %s\netcd API Version: %s\n", UTIL_QUOIN_VERSION,
               UTIL_ETCD_CLUSTER_VERSION);
        config_free(cfg);
        return 0;
    }
    if (cfg->action == CONFIG_PRINT_HELP) {
        struct util_buf help = {0};
        rc = config_usage(&help);
        if (rc == 0)
            printf(
                "%s\nSubcommand:\n  quoin snapshot restore FILE ...  a new member's data directory "
                "from an etcdctl snapshot\n                                   (quoin snapshot "
                "restore --help)\n",
                help.data);
        util_buf_free(&help);
        config_free(cfg);
        return rc == 0 ? 0 : 1;
    }

    log_t *lg = NULL;
    if (log_open(cfg->log_level, cfg->log_outputs, &lg, &err) != 0) {
        fprintf(stderr, "quoin: %s\n", err.msg);
        config_free(cfg);
        return 2;
    }
    for (size_t i = 0; i < cfg->n_warnings; i++)
        LOG_WARN(lg, cfg->warnings[i]);

    rc = server_run(cfg, lg, &err);
    if (rc != 0)
        LOG_ERROR(lg, "quoin stopped", LOG_STR("error", err.msg));
    log_close(lg);
    config_free(cfg);
    return rc == 0 ? 0 : 1;
}
