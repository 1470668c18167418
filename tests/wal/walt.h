/* Helpers shared by the WAL tests: temporary log directories, entries whose
 * bytes are a function of (index, term) so any reader can check them, and
 * ways to damage segment files. */
#ifndef QUOIN_WALT_H
#define QUOIN_WALT_H

#include <stddef.h>
#include <stdint.h>

#include "wal/wal.h"

#define WALT_MAX_DATA 256

/* Makes an empty directory under /tmp; the caller frees the string. */
char *walt_tmpdir(void);
/* The same under /dev/shm when there is one: for tests that open logs by the
 * hundred and check recovery logic, not the disk (fsync costs nothing there). */
char *walt_tmpdir_mem(void);
/* Removes a directory made by walt_tmpdir and everything in it, then frees it. */
void walt_rmdir(char *dir);

/* The data of entry (index, term): a length in [1, WALT_MAX_DATA] and bytes,
 * both derived from the pair. Returns the length. */
uint32_t walt_data(uint64_t index, uint64_t term, uint8_t buf[WALT_MAX_DATA]);
/* Fills e (and buf, which e->data points to) for (index, term). */
void walt_entry(struct wal_entry *e, uint64_t index, uint64_t term, uint8_t buf[WALT_MAX_DATA]);
/* Whether e carries exactly the data walt_entry gives (index, term). */
int walt_entry_ok(const struct wal_entry *e, uint64_t index, uint64_t term);

/* Opens the log in dir, failing the test with wal_open's message if it fails. */
wal_t *walt_open(const char *dir, const struct wal_options *o, struct wal_recovery *rec);
/* Frees rec, closes *w (expecting success) and opens dir again into *w, rec. */
void walt_reopen(wal_t **w, const char *dir, const struct wal_options *o, struct wal_recovery *rec);
/* Frees rec, closes w (expecting success) and removes dir (see walt_rmdir). */
void walt_finish(wal_t *w, struct wal_recovery *rec, char *dir);

/* Appends entries [first, first+n) of `term` with an optional hard state and
 * returns the seq; asserts success. */
uint64_t walt_append(wal_t *w, uint64_t first, size_t n, uint64_t term,
                     const struct wal_hard_state *hs);

/* Sorted segment file names of dir (caller frees names[i] and names). */
size_t walt_segments(const char *dir, char ***names);
void walt_free_names(char **names, size_t n);
/* dir/name into out. */
void walt_path(char *out, size_t cap, const char *dir, const char *name);

uint64_t walt_file_size(const char *path);
void walt_flip_bit(const char *path, uint64_t off, int bit);
void walt_truncate(const char *path, uint64_t size);
void walt_write_at(const char *path, uint64_t off, const void *p, size_t n);
void walt_read_at(const char *path, uint64_t off, void *p, size_t n);

/* Offsets of the records of a segment, up to the first zeroed record header:
 * offs[0..n) start records and offs[n] is where they end. Returns n. */
size_t walt_record_offsets(const char *path, uint64_t *offs, size_t max);

/* Whole-file copies, to damage a log and restore it between cases. */
uint8_t *walt_read_file(const char *path, size_t *n);
void walt_write_file(const char *path, const uint8_t *p, size_t n);

#endif
