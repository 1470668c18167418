/* Tests of the snapshot directory's files (src/server/snapshot.h): a received
 * snapshot is kept under its durable name; at start-up, leftovers go and the
 * one snapshot a crash left uninstalled stays. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/snapshot.h"

/* The test's state: a temporary directory's path. */
static int setup(void **state) {
    char *dir = malloc(64);
    if (!dir)
        return -1;
    snprintf(dir, 64, "/tmp/quoin-snap-XXXXXX");
    *state = dir;
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state) {
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", (char *)*state);
    free(*state);
    return system(cmd) == 0 ? 0 : -1;
}

static void touch(const char *dir, const char *name) {
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("data", f);
    fclose(f);
}

static int exists(const char *dir, const char *name) {
    char path[256];
    struct stat st;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return stat(path, &st) == 0;
}

static void test_keep_names_by_index(void **state) {
    const char *dir = *state;
    char received[256], kept[256];
    touch(dir, "snap-0000000000000002-0000000000002b0f-abcdef");
    snprintf(received, sizeof(received), "%s/snap-0000000000000002-0000000000002b0f-abcdef", dir);
    assert_int_equal(node_snap_keep(dir, received, 0x2b0f, kept, sizeof(kept)), 0);
    assert_true(exists(dir, "0000000000002b0f.snap.db"));
    assert_false(exists(dir, "snap-0000000000000002-0000000000002b0f-abcdef"));
    char want[256];
    node_snap_path(dir, 0x2b0f, want, sizeof(want));
    assert_string_equal(kept, want);
    /* A received file that vanished cannot be kept. */
    assert_int_equal(node_snap_keep(dir, received, 0x2b10, kept, sizeof(kept)), -ENOENT);
}

static void test_clean_keeps_only_the_pending_snapshot(void **state) {
    const char *dir = *state;
    touch(dir, "snap-0000000000000002-0000000000000010-aaaaaa"); /* delivered, never kept */
    touch(dir, "0000000000000010.snap.db");                      /* installed long ago */
    touch(dir, "0000000000000010.snap.db-lock");
    touch(dir, "0000000000000020.snap.db"); /* the marker's: a crash came before install */
    touch(dir, "snap-0000000000000003-0000000000000030-bbbbbb.partial"); /* the transport's */
    touch(dir, "unrelated");
    node_snap_clean(dir, 0x20, NULL);
    assert_false(exists(dir, "snap-0000000000000002-0000000000000010-aaaaaa"));
    assert_false(exists(dir, "0000000000000010.snap.db"));
    assert_false(exists(dir, "0000000000000010.snap.db-lock"));
    assert_true(exists(dir, "0000000000000020.snap.db"));
    assert_true(exists(dir, "snap-0000000000000003-0000000000000030-bbbbbb.partial"));
    assert_true(exists(dir, "unrelated"));
    node_snap_clean(dir, 0, NULL); /* installed since: it goes too */
    assert_false(exists(dir, "0000000000000020.snap.db"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_keep_names_by_index, setup, teardown),
        cmocka_unit_test_setup_teardown(test_clean_keeps_only_the_pending_snapshot, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
