/* Tests of the JSON line logger: every line must parse as one zap-style object. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log/log.h"

/* Logs into a temporary file and returns its whole content (caller frees). */
static char *log_to_string(enum log_level level, void (*body)(log_t *)) {
    char path[] = "/tmp/quoin-log-test-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    log_t *lg = NULL;
    struct util_err err;
    assert_int_equal(log_open(level, path, &lg, &err), 0);
    body(lg);
    log_close(lg);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    static char buf[8192];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    unlink(path);
    return strdup(buf);
}

static void write_fields(log_t *lg) {
    LOG_INFO(lg, "serving \"client\" traffic", LOG_STR("address", "127.0.0.1:2379"),
             LOG_INT("port", -1), LOG_UINT("id", 18446744073709551615ull), LOG_BOOL("tls", 0));
}

static void fields_are_json(void **state) {
    (void)state;
    char *out = log_to_string(LOG_LEVEL_INFO, write_fields);
    assert_non_null(strstr(out, "{\"level\":\"info\",\"ts\":\""));
    assert_non_null(strstr(out, "\"caller\":\"tests/log/test_log.c:"));
    assert_non_null(strstr(out, "\"msg\":\"serving \\\"client\\\" traffic\""));
    assert_non_null(strstr(out, "\"address\":\"127.0.0.1:2379\""));
    assert_non_null(strstr(out, "\"port\":-1"));
    assert_non_null(strstr(out, "\"id\":18446744073709551615"));
    assert_non_null(strstr(out, "\"tls\":false}\n"));
    free(out);
}

static void write_levels(log_t *lg) {
    LOG_DEBUG(lg, "hidden");
    LOG_INFO(lg, "hidden too");
    LOG_WARN(lg, "shown");
    LOG_ERROR(lg, "shown too");
}

static void level_filters(void **state) {
    (void)state;
    char *out = log_to_string(LOG_LEVEL_WARN, write_levels);
    assert_null(strstr(out, "hidden"));
    assert_non_null(strstr(out, "\"level\":\"warn\""));
    assert_non_null(strstr(out, "\"level\":\"error\""));
    free(out);
}

static void parse_level_names(void **state) {
    (void)state;
    enum log_level l;
    assert_int_equal(log_parse_level("debug", &l), 0);
    assert_int_equal(l, LOG_LEVEL_DEBUG);
    assert_int_equal(log_parse_level("fatal", &l), 0);
    assert_int_equal(l, LOG_LEVEL_FATAL);
    assert_true(log_parse_level("verbose", &l) < 0);
}

static void unwritable_output_is_an_error(void **state) {
    (void)state;
    log_t *lg = NULL;
    struct util_err err;
    assert_true(log_open(LOG_LEVEL_INFO, "/nonexistent-dir/x.log", &lg, &err) < 0);
    assert_null(lg);
    assert_non_null(strstr(err.msg, "/nonexistent-dir/x.log"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fields_are_json),
        cmocka_unit_test(level_filters),
        cmocka_unit_test(parse_level_names),
        cmocka_unit_test(unwritable_output_is_an_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
