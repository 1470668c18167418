/* config: the server's configuration, read the way etcd 3.4 reads its own, so
 * the command lines, ETCD_* environments and YAML files written for etcd start
 * quoin unchanged.
 *
 * Sources, strongest first:
 *   1. --config-file (or ETCD_CONFIG_FILE): a YAML file with etcd's keys. As in
 *      etcd, when a file is given every other flag and ETCD_* variable is ignored.
 *   2. Command-line flags: -name v, --name v, --name=v; a bool flag alone means
 *      true. "--" ends the flags.
 *   3. ETCD_<FLAG> environment variables (upper case, '-' as '_'); a flag given
 *      on the command line shadows its variable, with a warning.
 *   4. etcd's defaults (except the listen URLs, which default to 127.0.0.1).
 *
 * Every one of etcd 3.4's server flags is known. A flag whose feature quoin
 * does not have yet is refused with "not supported yet" when set to anything but
 * its default, never silently ignored.
 */
#ifndef QUOIN_CONFIG_H
#define QUOIN_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "log/log.h"
#include "util/util.h"

/* One parsed URL of a URL-list flag. */
struct config_url {
    char *text;   /* as given, e.g. "http://127.0.0.1:2379" */
    char *scheme; /* "http", "https", "unix" or "unixs" */
    char *host;   /* without brackets for IPv6 */
    uint16_t port;
};

struct config_urls {
    size_t n;
    struct config_url *v;
};

/* One member of --initial-cluster. */
struct config_member {
    char *name;
    struct config_urls peer_urls;
    uint64_t id; /* as etcd derives it from the peer URLs and the token */
};

/* What main() should do after parsing. */
enum config_action { CONFIG_RUN, CONFIG_PRINT_VERSION, CONFIG_PRINT_HELP };

struct config {
    enum config_action action;

    char *name;
    char *data_dir;
    char *wal_dir;
    struct config_urls listen_client_urls;
    struct config_urls advertise_client_urls;
    struct config_urls listen_peer_urls;
    struct config_urls initial_advertise_peer_urls;
    size_t n_initial_cluster;
    struct config_member *initial_cluster;
    bool initial_cluster_new; /* --initial-cluster-state new (else existing) */
    char *initial_cluster_token;

    uint64_t snapshot_count;
    unsigned heartbeat_ms;
    unsigned election_ms;
    int64_t quota_backend_bytes;
    unsigned max_txn_ops;
    uint64_t max_request_bytes;
    char *auto_compaction_mode;
    char *auto_compaction_retention;
    uint64_t auto_compaction_retention_ns;  /* periodic mode; 0 = off */
    int64_t auto_compaction_retention_revs; /* revision mode; 0 = off */
    bool enable_v2;
    bool strict_reconfig_check; /* refuse membership changes that risk the quorum */

    enum log_level log_level;
    char *log_outputs; /* comma list, as log_open takes it */

    char *config_file; /* NULL when none was given */

    /* Member and cluster ids, derived from --initial-cluster and
     * --initial-cluster-token as etcd derives them, so every member of a new
     * cluster computes the same ones. */
    uint64_t member_id;
    uint64_t cluster_id;

    /* Things worth a warning once the logger exists (shadowed or unknown ETCD_*
     * variables, ignored flags under --config-file). */
    size_t n_warnings;
    char **warnings;
};

/* Reads the configuration from argv (argv[0] is the program), envp (NULL
 * terminated, as environ) and, when one is named, the YAML file.
 * Returns 0 and a config to free with config_free, or -EINVAL with err saying
 * what was wrong in etcd's words ("invalid value \"abc\" for flag
 * -heartbeat-interval: parse error", "flag provided but not defined: -foo"), or
 * -ENOTSUP naming a flag that quoin does not support yet, or -ENOENT / -EIO
 * when the config file cannot be read. */
int config_parse(int argc, char **argv, char **envp, struct config **out, struct util_err *err);

void config_free(struct config *cfg);

/* Appends the --help text to out: every flag, its default, and whether quoin
 * supports it yet. Returns 0 or -ENOMEM. */
int config_usage(struct util_buf *out);

/* Finds a member of --initial-cluster by name, or NULL. */
const struct config_member *config_find_member(const struct config *cfg, const char *name);

#endif
