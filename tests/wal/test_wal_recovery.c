/* Recovery from damaged logs: a torn or corrupt tail of the last segment is
 * truncated (at every byte offset of the last record, for cuts, zeroing and bit
 * flips); damage anywhere else refuses to open with the file and byte offset in
 * the message, and leaves the files as they were. */
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

#include "walt.h"
#include "wal/wal.h"

#define MAXREC 512

/* Small segments, so restoring a damaged file is cheap. */
static const struct wal_options seg64k = {.segment_size = 65536};

/* A log of entries 1..n (term 1), one call each, in segments of seg_size. */
static char *make_log(uint64_t n, uint64_t seg_size) {
    char *dir = walt_tmpdir_mem();
    struct wal_options o = {.segment_size = seg_size};
    struct wal_recovery rec;
    wal_t *w = walt_open(dir, &o, &rec);
    for (uint64_t i = 1; i <= n; i++)
        walt_append(w, i, 1, 1, NULL);
    assert_int_equal(wal_close(w), 0);
    return dir;
}

/* Opens, expects success with entries 1..n of term 1, closes. */
static void expect_entries(const char *dir, uint64_t seg_size, uint64_t n, log_t *lg) {
    struct wal_options o = {.segment_size = seg_size, .log = lg};
    struct wal_recovery rec;
    wal_t *w = walt_open(dir, &o, &rec);
    assert_int_equal(rec.n_entries, n);
    for (uint64_t i = 1; i <= n; i++)
        assert_true(walt_entry_ok(&rec.entries[i - 1], i, 1));
    wal_recovery_free(&rec);
    assert_int_equal(wal_close(w), 0);
}

/* Opens, expects a refusal whose message names `file` and `offset`. */
static void expect_refusal(const char *dir, const char *file, uint64_t offset, const char *words) {
    struct wal_recovery rec;
    struct util_err err = {0};
    wal_t *w = NULL;
    int rc = wal_open(dir, NULL, &w, &rec, &err);
    assert_int_equal(rc, -EBADMSG);
    assert_null(w);
    char want[128];
    snprintf(want, sizeof(want), "byte offset %llu", (unsigned long long)offset);
    if (!strstr(err.msg, file) || !strstr(err.msg, want) || !strstr(err.msg, words))
        fail_msg("message lacks '%s', '%s' or '%s': %s", file, want, words, err.msg);
}

/* A log of 20 entries in one segment, with its records' offsets and its bytes
 * as written, to damage and restore. */
struct seg1 {
    char *dir;
    char path[512];
    const char *name;
    uint64_t offs[MAXREC + 1];
    uint8_t *orig;
    size_t size;
};

static void seg1_make(struct seg1 *f) {
    char **names;
    f->dir = make_log(20, 65536);
    size_t n = walt_segments(f->dir, &names);
    assert_int_equal(n, 1);
    walt_path(f->path, sizeof(f->path), f->dir, names[0]);
    walt_free_names(names, n);
    f->name = strrchr(f->path, '/') + 1;
    assert_int_equal(walt_record_offsets(f->path, f->offs, MAXREC), 20);
    f->orig = walt_read_file(f->path, &f->size);
}

static void seg1_restore(const struct seg1 *f) {
    walt_write_file(f->path, f->orig, f->size);
}

static void seg1_free(struct seg1 *f) {
    free(f->orig);
    walt_rmdir(f->dir);
}

static void cut_every_offset_of_last_record(void **state) {
    (void)state;
    struct seg1 f;
    seg1_make(&f);
    uint64_t r = f.offs[19], e = f.offs[20];
    for (uint64_t t = r; t < e; t++) {
        seg1_restore(&f);
        walt_truncate(f.path, t);
        expect_entries(f.dir, 65536, 19, NULL);
        /* Zeroed instead of cut: what a preallocated file shows. */
        seg1_restore(&f);
        uint8_t zeros[WALT_MAX_DATA + 64] = {0};
        walt_write_at(f.path, t, zeros, e - t);
        /* Zeroing only the padding leaves the record whole. */
        int padding = 1;
        for (uint64_t i = t; i < e; i++)
            padding &= f.orig[i] == 0;
        expect_entries(f.dir, 65536, padding ? 20 : 19, NULL);
    }
    seg1_restore(&f);
    walt_truncate(f.path, e);
    expect_entries(f.dir, 65536, 20, NULL);
    seg1_free(&f);
}

static void flip_every_byte_of_last_record(void **state) {
    (void)state;
    struct seg1 f;
    seg1_make(&f);
    for (uint64_t b = f.offs[19]; b < f.offs[20]; b++) {
        seg1_restore(&f);
        walt_flip_bit(f.path, b, (int)(b % 8));
        expect_entries(f.dir, 65536, 19, NULL);
    }
    seg1_free(&f);
}

/* The truncation is logged, and the space after it is clean: a shorter
 * record written there later cannot be followed by stale bytes. */
static void repair_is_logged_and_clean(void **state) {
    (void)state;
    struct seg1 f;
    char logpath[] = "/tmp/quoin-wal-log-XXXXXX";
    seg1_make(&f);
    walt_flip_bit(f.path, f.offs[19] + 20, 3);
    int fd = mkstemp(logpath);
    assert_true(fd >= 0);
    close(fd);
    log_t *lg;
    assert_int_equal(log_open(LOG_LEVEL_INFO, logpath, &lg, NULL), 0);
    expect_entries(f.dir, 65536, 19, lg);
    log_close(lg);
    size_t n;
    char *text = (char *)walt_read_file(logpath, &n);
    text = realloc(text, n + 1);
    text[n] = '\0';
    assert_non_null(strstr(text, "truncating a torn tail"));
    assert_non_null(strstr(text, "checksum mismatch"));
    char off[64];
    snprintf(off, sizeof(off), "\"offset\":%llu", (unsigned long long)f.offs[19]);
    assert_non_null(strstr(text, off));
    free(text);
    unlink(logpath);

    struct wal_recovery rec;
    wal_t *w = walt_open(f.dir, &seg64k, &rec);
    struct wal_entry e = {.index = 20, .term = 2};
    assert_int_equal(wal_append(w, &e, 1, NULL, NULL), 0);
    walt_reopen(&w, f.dir, &seg64k, &rec);
    assert_int_equal(rec.n_entries, 20);
    assert_int_equal(rec.entries[19].term, 2);
    assert_int_equal(rec.entries[19].len, 0);
    wal_recovery_free(&rec);
    assert_int_equal(wal_close(w), 0);
    seg1_free(&f);
}

static void flip_mid_log_refused(void **state) {
    (void)state;
    struct seg1 f;
    seg1_make(&f);
    for (uint64_t b = f.offs[9]; b < f.offs[10]; b++) {
        seg1_restore(&f);
        walt_flip_bit(f.path, b, (int)(b % 8));
        size_t n;
        uint8_t *damaged = walt_read_file(f.path, &n);
        expect_refusal(f.dir, f.name, f.offs[9], "not a torn write");
        /* Refusing changes nothing. */
        uint8_t *after = walt_read_file(f.path, &n);
        assert_memory_equal(damaged, after, n);
        free(damaged);
        free(after);
    }
    seg1_free(&f);
}

static void flip_in_earlier_segment_refused(void **state) {
    (void)state;
    char *dir = make_log(100, 4096), path[512];
    char **names;
    size_t nseg = walt_segments(dir, &names);
    assert_true(nseg >= 3);
    walt_path(path, sizeof(path), dir, names[0]);
    uint64_t offs[MAXREC + 1];
    size_t nrec = walt_record_offsets(path, offs, MAXREC);
    assert_true(nrec >= 3);
    assert_int_equal(offs[nrec], walt_file_size(path)); /* cut to its records */
    size_t size;
    uint8_t *orig = walt_read_file(path, &size);
    uint64_t targets[] = {offs[1], offs[nrec - 1]}; /* a middle and the last record */
    for (int i = 0; i < 2; i++) {
        walt_flip_bit(path, targets[i] + 14, 1);
        expect_refusal(dir, names[0], targets[i], "not the last");
        walt_write_file(path, orig, size);
    }
    /* Its last record gone whole: the next segment's header notices. */
    walt_truncate(path, offs[nrec - 1]);
    expect_refusal(dir, names[1], 0, "does not continue");
    walt_write_file(path, orig, size);
    expect_entries(dir, 4096, 100, NULL);
    free(orig);
    walt_free_names(names, nseg);
    walt_rmdir(dir);
}

/* A call is all or nothing: cutting the last call (three entries and a hard
 * state) anywhere, or damaging its last record, drops the whole call; damage
 * to an earlier record of it, followed by valid ones, is refused like any. */
static void last_call_is_atomic(void **state) {
    (void)state;
    char *dir = make_log(19, 65536), path[512];
    struct wal_recovery rec;
    wal_t *w = walt_open(dir, &seg64k, &rec);
    struct wal_hard_state hs = {.term = 1, .vote = 1, .commit = 22};
    walt_append(w, 20, 3, 1, &hs);
    walt_reopen(&w, dir, &seg64k, &rec);
    assert_int_equal(rec.n_entries, 22);
    wal_recovery_free(&rec);
    assert_int_equal(wal_close(w), 0);
    char **names;
    size_t nseg = walt_segments(dir, &names);
    walt_path(path, sizeof(path), dir, names[0]);
    walt_free_names(names, nseg);
    uint64_t offs[MAXREC + 1];
    assert_int_equal(walt_record_offsets(path, offs, MAXREC), 23);
    size_t size;
    uint8_t *orig = walt_read_file(path, &size);
    for (uint64_t t = offs[19]; t < offs[23]; t += 3) {
        walt_write_file(path, orig, size);
        walt_truncate(path, t);
        expect_entries(dir, 65536, 19, NULL);
    }
    for (uint64_t t = offs[22]; t < offs[23]; t++) {
        walt_write_file(path, orig, size);
        walt_flip_bit(path, t, 5);
        expect_entries(dir, 65536, 19, NULL);
    }
    walt_write_file(path, orig, size);
    walt_flip_bit(path, offs[20] + 30, 5);
    expect_refusal(dir, strrchr(path, '/') + 1, offs[20], "not a torn write");
    walt_write_file(path, orig, size);
    w = walt_open(dir, &seg64k, &rec);
    assert_int_equal(rec.n_entries, 22);
    assert_int_equal(rec.hard_state.commit, 22);
    free(orig);
    walt_finish(w, &rec, dir);
}

/* A zeroed record header (a page the kernel never wrote before a crash) ends
 * the log even when later pages made it to disk: nothing after it was ever
 * reported durable. */
static void zeroed_hole_truncates(void **state) {
    (void)state;
    struct seg1 f;
    seg1_make(&f);
    uint8_t zeros[12] = {0};
    walt_write_at(f.path, f.offs[14], zeros, sizeof(zeros));
    expect_entries(f.dir, 65536, 14, NULL);
    seg1_free(&f);
}

/* A whole page of zeros inside the log (written back after the pages that
 * follow it, then a crash) cuts the log where it starts, though valid records
 * follow. */
static void zeroed_page_truncates(void **state) {
    (void)state;
    char *dir = make_log(200, 65536), path[512];
    char **names;
    size_t nseg = walt_segments(dir, &names);
    assert_int_equal(nseg, 1);
    walt_path(path, sizeof(path), dir, names[0]);
    walt_free_names(names, nseg);
    uint64_t offs[MAXREC + 1];
    assert_int_equal(walt_record_offsets(path, offs, MAXREC), 200);
    assert_true(offs[200] > 3 * 4096);
    uint8_t zeros[4096] = {0};
    walt_write_at(path, 8192, zeros, sizeof(zeros));
    uint64_t kept = 0;
    while (offs[kept + 1] <= 8192)
        kept++;
    expect_entries(dir, 65536, kept, NULL);
    walt_rmdir(dir);
}

static void damaged_header_refused(void **state) {
    (void)state;
    struct seg1 f;
    seg1_make(&f);
    walt_flip_bit(f.path, 20, 0);
    expect_refusal(f.dir, f.name, 0, "checksum");
    seg1_free(&f);
}

static void missing_segments_refused(void **state) {
    (void)state;
    char *dir = make_log(100, 4096), path[512];
    char **names;
    size_t nseg = walt_segments(dir, &names);
    assert_true(nseg >= 3);
    size_t size;
    walt_path(path, sizeof(path), dir, names[1]);
    uint8_t *keep = walt_read_file(path, &size);
    assert_int_equal(unlink(path), 0);
    struct wal_recovery rec;
    struct util_err err = {0};
    wal_t *w = NULL;
    assert_int_equal(wal_open(dir, NULL, &w, &rec, &err), -EBADMSG);
    assert_non_null(strstr(err.msg, "segment 0000000000000001 is missing"));
    /* Losing the first segment without a snapshot covering it is refused too. */
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
    walt_write_file(path, keep, size);
    walt_path(path, sizeof(path), dir, names[0]);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(wal_open(dir, NULL, &w, &rec, &err), -EBADMSG);
    assert_non_null(strstr(err.msg, "entries 1 to"));
    assert_non_null(strstr(err.msg, "are missing"));
    free(keep);
    walt_free_names(names, nseg);
    walt_rmdir(dir);
}

/* A segment whose creation did not finish is removed, never read. */
static void unfinished_segment_removed(void **state) {
    (void)state;
    char *dir = make_log(3, 65536), path[512];
    walt_path(path, sizeof(path), dir, "0000000000000001-0000000000000004.wal.tmp");
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("garbage", f);
    fclose(f);
    expect_entries(dir, 65536, 3, NULL);
    assert_int_equal(access(path, F_OK), -1);
    walt_rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cut_every_offset_of_last_record),
        cmocka_unit_test(flip_every_byte_of_last_record),
        cmocka_unit_test(repair_is_logged_and_clean),
        cmocka_unit_test(flip_mid_log_refused),
        cmocka_unit_test(flip_in_earlier_segment_refused),
        cmocka_unit_test(last_call_is_atomic),
        cmocka_unit_test(zeroed_hole_truncates),
        cmocka_unit_test(zeroed_page_truncates),
        cmocka_unit_test(damaged_header_refused),
        cmocka_unit_test(missing_segments_refused),
        cmocka_unit_test(unfinished_segment_removed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
