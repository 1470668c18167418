/* Tests of etcd-compatible configuration: precedence of flag, ETCD_* variable
 * and config file; etcd's wording for bad values; refusal of flags quoin does
 * not honour yet; member and cluster ids equal to the ones etcd derives. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"

#define ARGV(...) ((char *[]){"quoin", __VA_ARGS__, NULL})

static char *no_env[] = {NULL};

/* Parses and expects success. */
static int count(char **argv) {
    int n = 0;
    while (argv[n])
        n++;
    return n;
}

static struct config *ok(char **argv, char **env) {
    int argc = count(argv);
    struct config *cfg = NULL;
    struct util_err err = {0};
    int rc = config_parse(argc, argv, env, &cfg, &err);
    if (rc != 0)
        fail_msg("config_parse failed (%d): %s", rc, err.msg);
    return cfg;
}

/* Parses, expects failure with `code` and a message containing `want`. */
static void bad(char **argv, char **env, int code, const char *want) {
    int argc = count(argv);
    struct config *cfg = NULL;
    struct util_err err = {0};
    int rc = config_parse(argc, argv, env, &cfg, &err);
    if (rc != code || !strstr(err.msg, want))
        fail_msg("want %d containing '%s', got %d: '%s'", code, want, rc, err.msg);
    assert_null(cfg);
}

/* Writes a YAML file and returns its path (static storage per call site is
 * enough for these tests: callers unlink it). */
static char *yaml_file(const char *text) {
    char *path = strdup("/tmp/quoin-config-test-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static int has_warning(const struct config *cfg, const char *want) {
    for (size_t i = 0; i < cfg->n_warnings; i++)
        if (strstr(cfg->warnings[i], want))
            return 1;
    return 0;
}

static void defaults_match_etcd_with_quoin_paths(void **state) {
    (void)state;
    char *argv[] = {"quoin", NULL};
    struct config *cfg = ok(argv, no_env);
    assert_string_equal(cfg->name, "default");
    assert_string_equal(cfg->data_dir, "default.quoin");
    assert_int_equal(cfg->listen_client_urls.n, 1);
    assert_string_equal(cfg->listen_client_urls.v[0].host, "127.0.0.1");
    assert_int_equal(cfg->listen_client_urls.v[0].port, 2379);
    assert_int_equal(cfg->listen_peer_urls.v[0].port, 2380);
    assert_int_equal(cfg->heartbeat_ms, 100);
    assert_int_equal(cfg->election_ms, 1000);
    assert_int_equal(cfg->max_request_bytes, 1572864);
    assert_int_equal(cfg->max_txn_ops, 128);
    assert_int_equal(cfg->snapshot_count, 100000);
    assert_int_equal(cfg->log_level, LOG_LEVEL_INFO);
    assert_true(cfg->initial_cluster_new);
    assert_int_equal(cfg->n_initial_cluster, 1);
    assert_string_equal(cfg->initial_cluster[0].name, "default");
    config_free(cfg);
}

static void flag_forms_of_go(void **state) {
    (void)state;
    char **argv = ARGV("-name", "a", "--data-dir=/tmp/x", "--log-level", "debug");
    struct config *cfg = ok(argv, no_env);
    assert_string_equal(cfg->name, "a");
    assert_string_equal(cfg->data_dir, "/tmp/x");
    assert_int_equal(cfg->log_level, LOG_LEVEL_DEBUG);
    config_free(cfg);
}

static void env_sets_unset_flags(void **state) {
    (void)state;
    char *env[] = {"ETCD_NAME=fromenv", "ETCD_LOG_LEVEL=warn", "PATH=/bin", NULL};
    char *argv[] = {"quoin", NULL};
    struct config *cfg = ok(argv, env);
    assert_string_equal(cfg->name, "fromenv");
    assert_string_equal(cfg->data_dir, "fromenv.quoin");
    assert_int_equal(cfg->log_level, LOG_LEVEL_WARN);
    config_free(cfg);
}

static void flag_wins_over_env_with_warning(void **state) {
    (void)state;
    char *env[] = {"ETCD_NAME=fromenv", "ETCD_LOG_LEVEL=warn", NULL};
    char *argv[] = {"quoin", "--name", "fromflag", NULL};
    struct config *cfg = ok(argv, env);
    assert_string_equal(cfg->name, "fromflag");
    assert_int_equal(cfg->log_level, LOG_LEVEL_WARN); /* env still fills the rest */
    assert_true(has_warning(cfg, "ETCD_NAME is shadowed by the command-line flag --name"));
    config_free(cfg);
}

static void unknown_env_is_a_warning(void **state) {
    (void)state;
    char *env[] = {"ETCD_NO_SUCH_THING=1", "ETCDCTL_API=3", NULL};
    char *argv[] = {"quoin", NULL};
    struct config *cfg = ok(argv, env);
    assert_true(has_warning(cfg, "unrecognized environment variable ETCD_NO_SUCH_THING=1"));
    assert_false(has_warning(cfg, "ETCDCTL_API"));
    config_free(cfg);
}

static void config_file_wins_over_flags_and_env(void **state) {
    (void)state;
    char *path = yaml_file("name: fromfile\n"
                           "data-dir: /tmp/filedir\n"
                           "log-outputs: [stderr]\n");
    char *env[] = {"ETCD_NAME=fromenv", "ETCD_LOG_LEVEL=warn", NULL};
    char *argv[] = {"quoin",    "--config-file", path,    "--name",
                    "fromflag", "--log-level",   "error", NULL};
    struct config *cfg = ok(argv, env);
    assert_string_equal(cfg->name, "fromfile");
    assert_string_equal(cfg->data_dir, "/tmp/filedir");
    assert_string_equal(cfg->log_outputs, "stderr");
    /* Keys the file leaves out take etcd's defaults, not the ignored flag/env. */
    assert_int_equal(cfg->log_level, LOG_LEVEL_INFO);
    assert_string_equal(cfg->config_file, path);
    assert_true(has_warning(cfg, "are ignored"));
    config_free(cfg);
    unlink(path);
    free(path);
}

static void config_file_from_env(void **state) {
    (void)state;
    char *path = yaml_file("name: viaenvfile\n");
    char var[256];
    snprintf(var, sizeof(var), "ETCD_CONFIG_FILE=%s", path);
    char *env[] = {var, NULL};
    char *argv[] = {"quoin", NULL};
    struct config *cfg = ok(argv, env);
    assert_string_equal(cfg->name, "viaenvfile");
    config_free(cfg);
    unlink(path);
    free(path);
}

static void config_file_errors(void **state) {
    (void)state;
    char *path = yaml_file("name: x\nno-such-key: 1\n");
    char *argv[] = {"quoin", "--config-file", path, NULL};
    bad(argv, no_env, -EINVAL, "unknown key \"no-such-key\"");
    unlink(path);
    free(path);

    path = yaml_file("heartbeat-interval: fast\n");
    argv[2] = path;
    bad(argv, no_env, -EINVAL, "invalid value \"fast\" for key heartbeat-interval in config file");
    unlink(path);
    free(path);

    path = yaml_file("name: [unclosed\n");
    argv[2] = path;
    bad(argv, no_env, -EINVAL, "config file");
    unlink(path);
    free(path);

    char *missing[] = {"quoin", "--config-file", "/nonexistent/quoin.yaml", NULL};
    bad(missing, no_env, -ENOENT, "cannot read config file /nonexistent/quoin.yaml");
}

static void config_file_transport_security_maps_to_flags(void **state) {
    (void)state;
    char *path = yaml_file("client-transport-security:\n  cert-file: /x.pem\n");
    char *argv[] = {"quoin", "--config-file", path, NULL};
    bad(argv, no_env, -ENOTSUP, "--cert-file=/x.pem: not supported yet");
    unlink(path);
    free(path);
}

static void bad_values_get_etcd_wording(void **state) {
    (void)state;
    bad(ARGV("--foo"), no_env, -EINVAL, "flag provided but not defined: -foo");
    bad(ARGV("--name"), no_env, -EINVAL, "flag needs an argument: -name");
    bad(ARGV("stray"), no_env, -EINVAL, "'stray' is not a valid flag");
    bad(ARGV("--heartbeat-interval=-5"), no_env, -EINVAL,
        "invalid value \"-5\" for flag -heartbeat-interval: parse error");
    bad(ARGV("--election-timeout", "abc"), no_env, -EINVAL,
        "invalid value \"abc\" for flag -election-timeout: parse error");
    bad(ARGV("--listen-peer-urls=foo"), no_env, -EINVAL,
        "invalid value \"foo\" for flag -listen-peer-urls: URL scheme must be http, https, unix, "
        "or unixs: foo");
    bad(ARGV("--listen-peer-urls=http://127.0.0.1"), no_env, -EINVAL,
        "URL address does not have the form \"host:port\": http://127.0.0.1");
    bad(ARGV("--listen-peer-urls=http://127.0.0.1:2380/x"), no_env, -EINVAL,
        "URL must not contain a path: http://127.0.0.1:2380/x");
    bad(ARGV("--initial-cluster-state=bogus"), no_env, -EINVAL,
        "invalid value \"bogus\" for flag -initial-cluster-state: invalid value");
    bad(ARGV("--enable-v2=maybe"), no_env, -EINVAL,
        "invalid boolean value \"maybe\" for -enable-v2: parse error");
    bad(ARGV("--heartbeat-interval=100", "--election-timeout=200"), no_env, -EINVAL,
        "--election-timeout[200ms] should be at least as 5 times as --heartbeat-interval[100ms]");
    bad(ARGV("--election-timeout=60000"), no_env, -EINVAL,
        "--election-timeout[60000ms] is too long");
    bad(ARGV("--listen-client-urls=http://127.0.0.1:3379"), no_env, -EINVAL,
        "--advertise-client-urls is required when --listen-client-urls is set explicitly");
    bad(ARGV("--name", "a", "--initial-cluster", "b=http://127.0.0.1:2380"), no_env, -EINVAL,
        "couldn't find local name \"a\" in the initial cluster configuration");
    char *env[] = {"ETCD_HEARTBEAT_INTERVAL=abc", NULL};
    char *argv[] = {"quoin", NULL};
    bad(argv, env, -EINVAL, "invalid value \"abc\" for ETCD_HEARTBEAT_INTERVAL: parse error");
}

static void unsupported_flags_are_refused_unless_default(void **state) {
    (void)state;
    bad(ARGV("--enable-v2"), no_env, -ENOTSUP, "--enable-v2=true: not supported yet");
    bad(ARGV("--logger=capnslog"), no_env, -ENOTSUP, "not supported yet");
    bad(ARGV("--max-snapshots=9"), no_env, -ENOTSUP, "--max-snapshots=9: not supported yet");
    /* Spelled-out defaults are what service files do: accepted. */
    char **argv = ARGV("--enable-v2=false", "--heartbeat-interval", "100", "--logger", "zap",
                       "--max-txn-ops=128");
    struct config *cfg = ok(argv, no_env);
    assert_false(cfg->enable_v2);
    assert_true(cfg->strict_reconfig_check); /* etcd's default */
    assert_true(cfg->initial_cluster_new);
    config_free(cfg);
    cfg = ok(ARGV("--strict-reconfig-check=false", "--initial-cluster-state=existing"), no_env);
    assert_false(cfg->strict_reconfig_check);
    assert_false(cfg->initial_cluster_new);
    config_free(cfg);
}

/* `etcdctl member add` prints a member that has not started yet as "=url";
 * etcd takes such a list, so quoin must too. A token without "=" stays an
 * error. */
static void initial_cluster_with_an_unnamed_member(void **state) {
    (void)state;
    struct config *cfg =
        ok(ARGV("--name", "n4", "--initial-advertise-peer-urls", "http://127.0.0.1:2384",
                "--initial-cluster-state", "existing", "--initial-cluster",
                "n4=http://127.0.0.1:2384,n1=http://127.0.0.1:2381,=http://127.0.0.1:2383"),
           no_env);
    assert_int_equal(cfg->n_initial_cluster, 3);
    assert_string_equal(cfg->initial_cluster[2].name, "");
    assert_string_equal(cfg->initial_cluster[2].peer_urls.v[0].text, "http://127.0.0.1:2383");
    config_free(cfg);
    bad(ARGV("--initial-cluster", "default=http://127.0.0.1:2380,http://127.0.0.1:2383"), no_env,
        -EINVAL, "is not of the form name=URL");
}

static void help_and_version(void **state) {
    (void)state;
    struct config *cfg = ok(ARGV("--version"), no_env);
    assert_int_equal(cfg->action, CONFIG_PRINT_VERSION);
    config_free(cfg);
    cfg = ok(ARGV("-h"), no_env);
    assert_int_equal(cfg->action, CONFIG_PRINT_HELP);
    config_free(cfg);
    struct util_buf b = {0};
    assert_int_equal(config_usage(&b), 0);
    assert_non_null(strstr(b.data, "--data-dir '${name}.quoin'"));
    assert_non_null(strstr(b.data, "--enable-v2 'false'  (not supported yet)"));
    util_buf_free(&b);
}

/* The ids etcd 3.4 gave a single member named idtest at
 * http://127.0.0.1:12380 with --initial-cluster-token tok-1 (read from the real
 * etcd's `etcdctl member list -w json`). */
static void ids_match_etcd(void **state) {
    (void)state;
    char **argv = ARGV("--name", "idtest", "--initial-advertise-peer-urls",
                       "http://127.0.0.1:12380", "--initial-cluster",
                       "idtest=http://127.0.0.1:12380", "--initial-cluster-token", "tok-1");
    struct config *cfg = ok(argv, no_env);
    assert_true(cfg->member_id == 13446180669391755897ull);
    assert_true(cfg->cluster_id == 2734723144628715549ull);
    config_free(cfg);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults_match_etcd_with_quoin_paths),
        cmocka_unit_test(flag_forms_of_go),
        cmocka_unit_test(env_sets_unset_flags),
        cmocka_unit_test(flag_wins_over_env_with_warning),
        cmocka_unit_test(unknown_env_is_a_warning),
        cmocka_unit_test(config_file_wins_over_flags_and_env),
        cmocka_unit_test(config_file_from_env),
        cmocka_unit_test(config_file_errors),
        cmocka_unit_test(config_file_transport_security_maps_to_flags),
        cmocka_unit_test(bad_values_get_etcd_wording),
        cmocka_unit_test(unsupported_flags_are_refused_unless_default),
        cmocka_unit_test(initial_cluster_with_an_unnamed_member),
        cmocka_unit_test(help_and_version),
        cmocka_unit_test(ids_match_etcd),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
