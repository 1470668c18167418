/* Helpers shared by the WAL tests (see walt.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "walt.h"

#include <dirent.h>
#include <endian.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wal/wal_int.h"

static char *tmpdir_in(const char *base) {
    char tmpl[64];
    snprintf(tmpl, sizeof(tmpl), "%s/quoin-wal-test-XXXXXX", base);
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    char *s = strdup(d);
    assert_non_null(s);
    return s;
}

char *walt_tmpdir(void) {
    return tmpdir_in("/tmp");
}

char *walt_tmpdir_mem(void) {
    return tmpdir_in(access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
}

void walt_rmdir(char *dir) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char p[512];
        walt_path(p, sizeof(p), dir, de->d_name);
        assert_int_equal(unlink(p), 0);
    }
    closedir(d);
    assert_int_equal(rmdir(dir), 0);
    free(dir);
}

wal_t *walt_open(const char *dir, const struct wal_options *o, struct wal_recovery *rec) {
    wal_t *w = NULL;
    struct util_err err = {0};
    int rc = wal_open(dir, o, &w, rec, &err);
    if (rc != 0)
        fail_msg("wal_open %s: %d %s", dir, rc, err.msg);
    return w;
}

void walt_reopen(wal_t **w, const char *dir, const struct wal_options *o,
                 struct wal_recovery *rec) {
    wal_recovery_free(rec);
    assert_int_equal(wal_close(*w), 0);
    *w = walt_open(dir, o, rec);
}

void walt_finish(wal_t *w, struct wal_recovery *rec, char *dir) {
    wal_recovery_free(rec);
    assert_int_equal(wal_close(w), 0);
    walt_rmdir(dir);
}

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

uint32_t walt_data(uint64_t index, uint64_t term, uint8_t buf[WALT_MAX_DATA]) {
    uint64_t h = mix(index * 0x9e3779b97f4a7c15ull ^ mix(term + 1));
    uint32_t len = 1 + (uint32_t)(h % WALT_MAX_DATA);
    for (uint32_t i = 0; i < len; i++) {
        h = mix(h + i);
        buf[i] = (uint8_t)h;
    }
    return len;
}

void walt_entry(struct wal_entry *e, uint64_t index, uint64_t term, uint8_t buf[WALT_MAX_DATA]) {
    e->index = index;
    e->term = term;
    e->type = (uint32_t)(index % 3);
    e->len = walt_data(index, term, buf);
    e->data = buf;
}

int walt_entry_ok(const struct wal_entry *e, uint64_t index, uint64_t term) {
    uint8_t buf[WALT_MAX_DATA];
    uint32_t len = walt_data(index, term, buf);
    return e->index == index && e->term == term && e->type == index % 3 && e->len == len &&
           memcmp(e->data, buf, len) == 0;
}

uint64_t walt_append(wal_t *w, uint64_t first, size_t n, uint64_t term,
                     const struct wal_hard_state *hs) {
    struct wal_entry *e = calloc(n ? n : 1, sizeof(*e));
    uint8_t(*bufs)[WALT_MAX_DATA] = calloc(n ? n : 1, WALT_MAX_DATA);
    assert_non_null(e);
    assert_non_null(bufs);
    for (size_t i = 0; i < n; i++)
        walt_entry(&e[i], first + i, term, bufs[i]);
    uint64_t seq = 0;
    assert_int_equal(wal_append(w, e, n, hs, &seq), 0);
    free(e);
    free(bufs);
    return seq;
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

size_t walt_segments(const char *dir, char ***names) {
    size_t n = 0;
    char **v = NULL;
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (len < 4 || strcmp(de->d_name + len - 4, ".wal") != 0)
            continue;
        v = realloc(v, (n + 1) * sizeof(*v));
        assert_non_null(v);
        v[n] = strdup(de->d_name);
        assert_non_null(v[n]);
        n++;
    }
    closedir(d);
    if (n)
        qsort(v, n, sizeof(*v), cmp_names);
    *names = v;
    return n;
}

void walt_free_names(char **names, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

void walt_path(char *out, size_t cap, const char *dir, const char *name) {
    int r = snprintf(out, cap, "%s/%s", dir, name);
    assert_true(r > 0 && (size_t)r < cap);
}

uint64_t walt_file_size(const char *path) {
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return (uint64_t)st.st_size;
}

void walt_read_at(const char *path, uint64_t off, void *p, size_t n) {
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, p, n, (off_t)off), (ssize_t)n);
    close(fd);
}

void walt_write_at(const char *path, uint64_t off, const void *p, size_t n) {
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, p, n, (off_t)off), (ssize_t)n);
    close(fd);
}

void walt_flip_bit(const char *path, uint64_t off, int bit) {
    uint8_t b;
    walt_read_at(path, off, &b, 1);
    b ^= (uint8_t)(1u << bit);
    walt_write_at(path, off, &b, 1);
}

void walt_truncate(const char *path, uint64_t size) {
    assert_int_equal(truncate(path, (off_t)size), 0);
}

size_t walt_record_offsets(const char *path, uint64_t *offs, size_t max) {
    uint64_t size = walt_file_size(path), off = WAL_SEG_HDR_SIZE;
    size_t n = 0;
    while (off + WAL_REC_HDR <= size) {
        uint8_t h[WAL_REC_HDR];
        walt_read_at(path, off, h, sizeof(h));
        if (h[8] == 0)
            break;
        uint32_t len;
        memcpy(&len, h + 4, 4);
        assert_true(n < max);
        offs[n++] = off;
        off += wal_rec_size(le32toh(len));
    }
    offs[n] = off;
    return n;
}

uint8_t *walt_read_file(const char *path, size_t *n) {
    *n = (size_t)walt_file_size(path);
    uint8_t *p = malloc(*n ? *n : 1);
    assert_non_null(p);
    walt_read_at(path, 0, p, *n);
    return p;
}

void walt_write_file(const char *path, const uint8_t *p, size_t n) {
    int fd = open(path, O_WRONLY | O_TRUNC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, p, n), (ssize_t)n);
    close(fd);
}
