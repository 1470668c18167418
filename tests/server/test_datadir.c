/* Tests of the data directory: created private, locked against a second
 * process, and never written into when it holds someone else's files. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/server.h"

struct fixture {
    char root[64];
    char dir[128];
};

static int setup(void **state) {
    struct fixture *f = calloc(1, sizeof(*f));
    snprintf(f->root, sizeof(f->root), "/tmp/quoin-dd-XXXXXX");
    if (!mkdtemp(f->root))
        return -1;
    snprintf(f->dir, sizeof(f->dir), "%s/a/b/member.quoin", f->root);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    struct fixture *f = *state;
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->root);
    int rc = system(cmd);
    free(f);
    return rc == 0 ? 0 : -1;
}

static void touch(const char *dir, const char *name) {
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    int fd = open(p, O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    close(fd);
}

static void created_private_with_parents(void **state) {
    struct fixture *f = *state;
    server_datadir_t *dd = NULL;
    struct util_err err = {0};
    assert_int_equal(server_datadir_open(f->dir, NULL, &dd, &err), 0);
    struct stat st;
    assert_int_equal(stat(f->dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_string_equal(server_datadir_path(dd), f->dir);
    server_datadir_close(dd);
    /* Reopening our own directory works. */
    assert_int_equal(server_datadir_open(f->dir, NULL, &dd, &err), 0);
    server_datadir_close(dd);
}

static void second_opener_is_refused_until_release(void **state) {
    struct fixture *f = *state;
    server_datadir_t *dd = NULL, *dd2 = NULL;
    struct util_err err = {0};
    assert_int_equal(server_datadir_open(f->dir, NULL, &dd, &err), 0);
    assert_int_equal(server_datadir_open(f->dir, NULL, &dd2, &err), -EBUSY);
    assert_null(dd2);
    char pid[32];
    snprintf(pid, sizeof(pid), "(pid %ld)", (long)getpid());
    assert_non_null(strstr(err.msg, "in use by another quoin process"));
    assert_non_null(strstr(err.msg, pid));
    server_datadir_close(dd);
    assert_int_equal(server_datadir_open(f->dir, NULL, &dd2, &err), 0);
    server_datadir_close(dd2);
}

static void etcd_directory_is_refused_untouched(void **state) {
    struct fixture *f = *state;
    char p[512];
    snprintf(p, sizeof(p), "%s/etcd", f->root);
    mkdir(p, 0700);
    char snap[1024];
    snprintf(snap, sizeof(snap), "%s/member", p);
    mkdir(snap, 0700);
    strcat(snap, "/snap");
    mkdir(snap, 0700);
    touch(snap, "db");
    server_datadir_t *dd = NULL;
    struct util_err err = {0};
    assert_int_equal(server_datadir_open(p, NULL, &dd, &err), -EEXIST);
    assert_non_null(strstr(err.msg, "holds an etcd data directory (found member/snap/db)"));
    char lock[600];
    snprintf(lock, sizeof(lock), "%s/quoin.lock", p);
    assert_int_equal(access(lock, F_OK), -1); /* nothing written */
}

static void unknown_files_are_refused(void **state) {
    struct fixture *f = *state;
    char p[512];
    snprintf(p, sizeof(p), "%s/other", f->root);
    mkdir(p, 0700);
    touch(p, "notes.txt");
    server_datadir_t *dd = NULL;
    struct util_err err = {0};
    assert_int_equal(server_datadir_open(p, NULL, &dd, &err), -EEXIST);
    assert_non_null(strstr(err.msg, "is not a quoin data directory: it holds \"notes.txt\""));
}

static void foreign_marker_is_refused(void **state) {
    struct fixture *f = *state;
    server_datadir_t *dd = NULL;
    struct util_err err = {0};
    assert_int_equal(server_datadir_open(f->dir, NULL, &dd, &err), 0);
    server_datadir_close(dd);
    char p[512];
    snprintf(p, sizeof(p), "%s/QUOIN", f->dir);
    FILE *m = fopen(p, "w");
    fputs("quoin data directory, format 99\n", m);
    fclose(m);
    assert_int_equal(server_datadir_open(f->dir, NULL, &dd, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "unknown format"));
}

static void a_file_is_not_a_directory(void **state) {
    struct fixture *f = *state;
    touch(f->root, "plainfile");
    char p[512];
    snprintf(p, sizeof(p), "%s/plainfile", f->root);
    server_datadir_t *dd = NULL;
    struct util_err err = {0};
    assert_int_equal(server_datadir_open(p, NULL, &dd, &err), -ENOTDIR);
    assert_non_null(strstr(err.msg, "is not a directory"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(created_private_with_parents, setup, teardown),
        cmocka_unit_test_setup_teardown(second_opener_is_refused_until_release, setup, teardown),
        cmocka_unit_test_setup_teardown(etcd_directory_is_refused_untouched, setup, teardown),
        cmocka_unit_test_setup_teardown(unknown_files_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(foreign_marker_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(a_file_is_not_a_directory, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
