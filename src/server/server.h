/* server: one quoin member — its data directory, its threads and loops, and
 * the wiring of the layers below (see docs/architecture.md).
 *
 * Threads: server_run runs on the calling thread, which becomes the member's io
 * loop; it returns when the member has stopped. */
#ifndef QUOIN_SERVER_H
#define QUOIN_SERVER_H

#include <stdbool.h>

#include "config/config.h"
#include "log/log.h"
#include "util/util.h"

typedef struct server_datadir server_datadir_t;

/* Opens (creating it with mode 0700 where missing) the data directory at path
 * and takes its exclusive lock, which is held until server_datadir_close.
 * Returns 0, or:
 *   -EBUSY    another process holds the lock (err names its pid);
 *   -EEXIST   the directory holds files quoin did not create — an etcd data
 *             directory (member/snap/db) or anything else; err names what was
 *             found. Nothing in the directory is changed;
 *   -EINVAL   a marker of a format this version cannot use;
 *   -ENOTDIR, -EACCES, ...  the path cannot be used, err says why. */
int server_datadir_open(const char *path, log_t *lg, server_datadir_t **out, struct util_err *err);

const char *server_datadir_path(const server_datadir_t *dd);

/* fsyncs directory dir, making renames and new files in it durable.
 * Returns 0 or a negative errno. */
int server_sync_dir(const char *dir);

/* Opens a file that disappears when closed, in dir (on the data's disk,
 * never /tmp's size limits). Returns a descriptor or -1 with errno set. */
int server_open_temp(const char *dir);

/* Releases the lock and frees dd. NULL is a no-op. */
void server_datadir_close(server_datadir_t *dd);

/* Runs a member with cfg until SIGTERM or SIGINT, then stops accepting, closes
 * every connection and returns 0. Returns a negative code with err filled when
 * the member cannot start (data directory refused or locked, a listen URL that
 * cannot be bound, ...). */
int server_run(const struct config *cfg, log_t *lg, struct util_err *err);

/* `quoin snapshot restore`: makes cfg->data_dir (which must not exist) the
 * data directory of member cfg->name of a new cluster (cfg->initial_cluster,
 * cfg->initial_cluster_token) from `file`, what `etcdctl snapshot save` wrote
 * from a quoin member: the file's SHA-256 trailer is checked (unless
 * skip_hash_check), every key, revision, lease and alarm is kept, the raft
 * log starts afresh. The directory is built beside it and renamed into place
 * at the end. Returns 0, or -EEXIST (data directory exists), -EBADMSG (the
 * file is cut short, corrupt, or not a quoin snapshot: err says which and
 * what to do), or a file-system errno; on failure nothing is left at
 * cfg->data_dir. */
int server_snapshot_restore(const char *file, const struct config *cfg, bool skip_hash_check,
                            log_t *lg, struct util_err *err);

#endif
