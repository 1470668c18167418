/* flags: the table of etcd 3.4's server flags as quoin knows them — kind,
 * default, accepted words, and whether quoin honours the flag yet. The table is
 * the single place a layer flips a flag to supported when its feature lands. */
#include "config/flags.h"

#include <stddef.h>
#include <string.h>

static const char *const states[] = {"new", "existing", NULL};
static const char *const compaction_modes[] = {"periodic", "revision", NULL};
static const char *const loggers[] = {"zap", "capnslog", NULL};
static const char *const levels[] = {"debug", "info", "warn", "error", "panic", "fatal", NULL};
static const char *const fallbacks[] = {"exit", "proxy", NULL};
static const char *const proxies[] = {"off", "readonly", "on", NULL};
static const char *const freelists[] = {"array", "map", NULL};
static const char *const metrics[] = {"basic", "extensive", NULL};

/* clang-format off */
static const struct flag_def defs[] = {
    /* name                              kind        default                     choices  supported */
    {"name",                             FLAG_STR,      "default",                  NULL, true},
    {"data-dir",                         FLAG_STR,      "",                         NULL, true},
    {"wal-dir",                          FLAG_STR,      "",                         NULL, false},
    {"snapshot-count",                   FLAG_UINT,     "100000",                   NULL, true},
    {"heartbeat-interval",               FLAG_UINT,     "100",                      NULL, true},
    {"election-timeout",                 FLAG_UINT,     "1000",                     NULL, true},
    {"initial-election-tick-advance",    FLAG_BOOL,     "true",                     NULL, false},
    {"listen-peer-urls",                 FLAG_URLS,     "http://127.0.0.1:2380",    NULL, true},
    {"listen-client-urls",               FLAG_URLS,     "http://127.0.0.1:2379",    NULL, true},
    {"max-snapshots",                    FLAG_UINT,     "5",                        NULL, false},
    {"max-wals",                         FLAG_UINT,     "5",                        NULL, false},
    {"quota-backend-bytes",              FLAG_INT,      "0",                        NULL, true},
    {"backend-batch-interval",           FLAG_DURATION, "",                         NULL, false},
    {"backend-batch-limit",              FLAG_UINT,     "0",                        NULL, false},
    {"max-txn-ops",                      FLAG_UINT,     "128",                      NULL, true},
    {"max-request-bytes",                FLAG_UINT,     "1572864",                  NULL, true},
    {"max-concurrent-streams",           FLAG_UINT,     "4294967295",               NULL, false},
    {"grpc-keepalive-min-time",          FLAG_DURATION, "5s",                       NULL, false},
    {"grpc-keepalive-interval",          FLAG_DURATION, "2h",                       NULL, false},
    {"grpc-keepalive-timeout",           FLAG_DURATION, "20s",                      NULL, false},
    {"initial-advertise-peer-urls",      FLAG_URLS,     "http://127.0.0.1:2380",    NULL, true},
    {"initial-cluster",                  FLAG_STR,      "",                         NULL, true},
    {"initial-cluster-state",            FLAG_CHOICE,   "new",                      states, true},
    {"initial-cluster-token",            FLAG_STR,      "etcd-cluster",             NULL, true},
    {"advertise-client-urls",            FLAG_URLS,     "http://127.0.0.1:2379",    NULL, true},
    {"discovery",                        FLAG_STR,      "",                         NULL, false},
    {"discovery-fallback",               FLAG_CHOICE,   "proxy",                    fallbacks, false},
    {"discovery-proxy",                  FLAG_STR,      "",                         NULL, false},
    {"discovery-srv",                    FLAG_STR,      "",                         NULL, false},
    {"discovery-srv-name",               FLAG_STR,      "",                         NULL, false},
    {"strict-reconfig-check",            FLAG_BOOL,     "true",                     NULL, true},
    {"pre-vote",                         FLAG_BOOL,     "false",                    NULL, false},
    {"auto-compaction-retention",        FLAG_STR,      "0",                        NULL, true},
    {"auto-compaction-mode",             FLAG_CHOICE,   "periodic",                 compaction_modes, true},
    {"enable-v2",                        FLAG_BOOL,     "false",                    NULL, false},
    {"enable-grpc-gateway",              FLAG_BOOL,     "true",                     NULL, false},
    {"cert-file",                        FLAG_STR,      "",                         NULL, false},
    {"key-file",                         FLAG_STR,      "",                         NULL, false},
    {"client-cert-auth",                 FLAG_BOOL,     "false",                    NULL, false},
    {"client-crl-file",                  FLAG_STR,      "",                         NULL, false},
    {"client-cert-allowed-hostname",     FLAG_STR,      "",                         NULL, false},
    {"trusted-ca-file",                  FLAG_STR,      "",                         NULL, false},
    {"auto-tls",                         FLAG_BOOL,     "false",                    NULL, false},
    {"peer-cert-file",                   FLAG_STR,      "",                         NULL, false},
    {"peer-key-file",                    FLAG_STR,      "",                         NULL, false},
    {"peer-client-cert-auth",            FLAG_BOOL,     "false",                    NULL, false},
    {"peer-trusted-ca-file",             FLAG_STR,      "",                         NULL, false},
    {"peer-cert-allowed-cn",             FLAG_STR,      "",                         NULL, false},
    {"peer-cert-allowed-hostname",       FLAG_STR,      "",                         NULL, false},
    {"peer-auto-tls",                    FLAG_BOOL,     "false",                    NULL, false},
    {"peer-crl-file",                    FLAG_STR,      "",                         NULL, false},
    {"cipher-suites",                    FLAG_STR,      "",                         NULL, false},
    {"cors",                             FLAG_STR,      "*",                        NULL, false},
    {"host-whitelist",                   FLAG_STR,      "*",                        NULL, false},
    {"auth-token",                       FLAG_STR,      "simple",                   NULL, false},
    {"bcrypt-cost",                      FLAG_UINT,     "10",                       NULL, false},
    {"auth-token-ttl",                   FLAG_UINT,     "300",                      NULL, false},
    {"enable-pprof",                     FLAG_BOOL,     "false",                    NULL, false},
    {"metrics",                          FLAG_CHOICE,   "basic",                    metrics, false},
    {"listen-metrics-urls",              FLAG_STR,      "",                         NULL, false},
    {"logger",                           FLAG_CHOICE,   "zap",                      loggers, false},
    {"log-outputs",                      FLAG_STR,      "default",                  NULL, true},
    {"log-level",                        FLAG_CHOICE,   "info",                     levels, true},
    {"proxy",                            FLAG_CHOICE,   "off",                      proxies, false},
    {"proxy-failure-wait",               FLAG_UINT,     "5000",                     NULL, false},
    {"proxy-refresh-interval",           FLAG_UINT,     "30000",                    NULL, false},
    {"proxy-dial-timeout",               FLAG_UINT,     "1000",                     NULL, false},
    {"proxy-write-timeout",              FLAG_UINT,     "5000",                     NULL, false},
    {"proxy-read-timeout",               FLAG_UINT,     "0",                        NULL, false},
    {"experimental-initial-corrupt-check", FLAG_BOOL,   "false",                    NULL, false},
    {"experimental-corrupt-check-time",  FLAG_DURATION, "0s",                       NULL, false},
    {"experimental-enable-v2v3",         FLAG_STR,      "",                         NULL, false},
    {"experimental-backend-bbolt-freelist-type", FLAG_CHOICE, "array",              freelists, false},
    {"experimental-enable-lease-checkpoint", FLAG_BOOL, "false",                    NULL, false},
    {"experimental-compaction-batch-limit", FLAG_UINT,  "1000",                     NULL, false},
    {"experimental-peer-skip-client-san-verification", FLAG_BOOL, "false",          NULL, false},
    {"experimental-watch-progress-notify-interval", FLAG_DURATION, "10m",           NULL, false},
    {"experimental-warning-apply-duration", FLAG_DURATION, "100ms",                 NULL, false},
    {"force-new-cluster",                FLAG_BOOL,     "false",                    NULL, false},
    {"debug",                            FLAG_BOOL,     "false",                    NULL, false},
    {"log-package-levels",               FLAG_STR,      "",                         NULL, false},
    {"config-file",                      FLAG_STR,      "",                         NULL, true},
    {"version",                          FLAG_BOOL,     "false",                    NULL, true},
    {"help",                             FLAG_BOOL,     "false",                    NULL, true},
};
/* clang-format on */

size_t flag_count(void) {
    return sizeof(defs) / sizeof(defs[0]);
}

const struct flag_def *flag_at(size_t i) {
    return i < flag_count() ? &defs[i] : NULL;
}

int flag_index(const char *name, size_t len) {
    for (size_t i = 0; i < flag_count(); i++)
        if (strlen(defs[i].name) == len && memcmp(defs[i].name, name, len) == 0)
            return (int)i;
    return -1;
}
