/* datadir: the member's data directory — created 0700, locked against a second
 * process, and refused when it holds anything quoin did not put there (an etcd
 * data directory above all: quoin must never write into one). */
#include "server/server.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define MARKER_NAME "QUOIN"
#define MARKER_TEXT "quoin data directory, format 1\n"
#define LOCK_NAME "quoin.lock"

struct server_datadir {
    char *path;
    int lock_fd;
};

/* What a quoin data directory may hold: the marker, the lock, and the folders
 * the storage layers create. */
static int is_ours(const char *name) {
    static const char *const names[] = {MARKER_NAME, LOCK_NAME, "wal",      "db",
                                        "db-lock",   "snap",    "identity", "identity.tmp"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(name, names[i]) == 0)
            return 1;
    return 0;
}

/* mkdir -p with mode 0700 for every folder it creates. */
static int make_dirs(const char *path, struct util_err *err) {
    char *p = strdup(path);
    if (!p)
        return util_errorf(err, -ENOMEM, "out of memory");
    int rc = 0;
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char c = *s;
        *s = '\0';
        if (mkdir(p, 0700) != 0 && errno != EEXIST) {
            rc =
                util_errorf(err, -errno, "cannot create data directory %s: %s", p, strerror(errno));
            break;
        }
        *s = c;
        if (c == '\0')
            break;
    }
    free(p);
    return rc;
}

/* Refuses a directory holding things quoin did not create, naming the first. */
static int check_contents(const char *path, struct util_err *err) {
    DIR *d = opendir(path);
    if (!d)
        return util_errorf(err, -errno, "cannot read data directory %s: %s", path, strerror(errno));
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 || is_ours(e->d_name))
            continue;
        char etcd_db[4096];
        struct stat st;
        snprintf(etcd_db, sizeof(etcd_db), "%s/member/snap/db", path);
        if (strcmp(e->d_name, "member") == 0 && stat(etcd_db, &st) == 0)
            rc = util_errorf(err, -EEXIST,
                             "data directory %s holds an etcd data directory (found "
                             "member/snap/db); quoin does not read or write etcd's files. Move "
                             "the data with 'etcdctl snapshot save' and restore it, or choose "
                             "another --data-dir",
                             path);
        else
            rc = util_errorf(err, -EEXIST,
                             "data directory %s is not a quoin data directory: it holds \"%s\". "
                             "quoin will not write into it; choose an empty or new --data-dir",
                             path, e->d_name);
    }
    closedir(d);
    return rc;
}

/* Reads the marker if present: 1 when it is ours, 0 when absent, or an error
 * for a marker of another format. */
static int read_marker(const char *path, struct util_err *err) {
    char name[4096], buf[128];
    snprintf(name, sizeof(name), "%s/" MARKER_NAME, path);
    int fd = open(name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT
                   ? 0
                   : util_errorf(err, -errno, "cannot read %s: %s", name, strerror(errno));
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 0 || (size_t)n != strlen(MARKER_TEXT) || memcmp(buf, MARKER_TEXT, (size_t)n) != 0)
        return util_errorf(err, -EINVAL,
                           "%s does not describe a data directory this quoin " UTIL_QUOIN_VERSION
                           " can use (unknown format)",
                           name);
    return 1;
}

/* Writes the marker durably: temporary file, fsync, rename, fsync the folder. */
static int write_marker(const char *path, struct util_err *err) {
    char tmp[4096], name[4096];
    snprintf(tmp, sizeof(tmp), "%s/" MARKER_NAME ".tmp", path);
    snprintf(name, sizeof(name), "%s/" MARKER_NAME, path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return util_errorf(err, -errno, "cannot create %s: %s", tmp, strerror(errno));
    size_t len = strlen(MARKER_TEXT);
    int ok = write(fd, MARKER_TEXT, len) == (ssize_t)len && fsync(fd) == 0;
    int saved = errno;
    close(fd);
    if (!ok || rename(tmp, name) != 0) {
        saved = ok ? errno : saved;
        unlink(tmp);
        return util_errorf(err, -saved, "cannot write %s: %s", name, strerror(saved));
    }
    server_sync_dir(path);
    return 0;
}

/* Takes the directory's lock, or explains who holds it. */
static int take_lock(const char *path, int *fd_out, struct util_err *err) {
    char name[4096];
    snprintf(name, sizeof(name), "%s/" LOCK_NAME, path);
    int fd = open(name, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return util_errorf(err, -errno, "cannot open lock file %s: %s", name, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int saved = errno;
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof(pid) - 1, 0);
        if (n > 0)
            pid[strcspn(pid, "\n")] = '\0';
        close(fd);
        if (saved == EWOULDBLOCK)
            return util_errorf(err, -EBUSY,
                               "data directory %s is in use by another quoin process%s%s%s; stop "
                               "it or choose another --data-dir",
                               path, n > 0 ? " (pid " : "", n > 0 ? pid : "", n > 0 ? ")" : "");
        return util_errorf(err, -saved, "cannot lock %s: %s", name, strerror(saved));
    }
    char pid[32];
    int len = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len) {
        int saved = errno;
        close(fd);
        return util_errorf(err, -saved, "cannot write lock file %s: %s", name, strerror(saved));
    }
    *fd_out = fd;
    return 0;
}

int server_datadir_open(const char *path, log_t *lg, server_datadir_t **out, struct util_err *err) {
    server_datadir_t *dd = calloc(1, sizeof(*dd));
    int rc;
    if (!dd || !(dd->path = strdup(path))) {
        rc = util_errorf(err, -ENOMEM, "out of memory");
        goto err;
    }
    dd->lock_fd = -1;
    struct stat st;
    if (stat(path, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) {
            rc =
                util_errorf(err, -ENOTDIR, "data directory %s exists and is not a directory", path);
            goto err;
        }
        if ((st.st_mode & 0077) != 0)
            LOG_WARN(lg, "data directory is readable by other users; 0700 is recommended",
                     LOG_STR("path", path), LOG_UINT("mode", st.st_mode & 0777));
    } else if ((rc = make_dirs(path, err)) != 0) {
        goto err;
    }
    if ((rc = check_contents(path, err)) != 0 || (rc = take_lock(path, &dd->lock_fd, err)) != 0)
        goto err;
    /* Checked again under the lock: another process may have started here. */
    if ((rc = check_contents(path, err)) != 0 || (rc = read_marker(path, err)) < 0)
        goto err;
    if (rc == 0 && (rc = write_marker(path, err)) != 0)
        goto err;
    LOG_INFO(lg, rc == 0 ? "initialised data directory" : "opened data directory",
             LOG_STR("path", path));
    *out = dd;
    return 0;
err:
    server_datadir_close(dd);
    return rc;
}

const char *server_datadir_path(const server_datadir_t *dd) {
    return dd->path;
}

int server_sync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

int server_open_temp(const char *dir) {
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
        return fd;
    char path[4096];
    snprintf(path, sizeof(path), "%s/snap.XXXXXX", dir);
    fd = mkostemp(path, O_CLOEXEC);
    if (fd >= 0)
        unlink(path);
    return fd;
}

void server_datadir_close(server_datadir_t *dd) {
    if (!dd)
        return;
    if (dd->lock_fd >= 0)
        close(dd->lock_fd); /* releases the flock */
    free(dd->path);
    free(dd);
}
