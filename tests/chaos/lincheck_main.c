/* The lincheck command: reads a history file, runs every check and prints the
 * report and a verdict; the exit code is the verdict (0 ok, 1 violation, 2
 * unknown, 64 bad usage or unreadable history). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lincheck.h"

static int lc_cli_number(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-')
        return -EINVAL;
    *out = v;
    return 0;
}

int lincheck_cli(int argc, char **argv, FILE *out, FILE *errout) {
    struct lincheck_options opt = {0};
    struct lincheck_history *h = NULL;
    struct lincheck_result res;
    struct util_err err;
    const char *path = NULL;
    static const char *const verdicts[] = {"linearizable, no anomaly", "VIOLATION",
                                           "UNKNOWN (search budget exceeded)"};
    for (int i = 1; i < argc; i++) {
        if ((strcmp(argv[i], "--max-steps") == 0 || strcmp(argv[i], "--max-ms") == 0) &&
            i + 1 < argc) {
            uint64_t *dst = strcmp(argv[i], "--max-steps") == 0 ? &opt.max_steps : &opt.max_ms;
            if (lc_cli_number(argv[++i], dst) != 0) {
                fprintf(errout, "lincheck: %s needs a positive number\n", argv[i - 1]);
                return 64;
            }
        } else if (strcmp(argv[i], "--open-world") == 0) {
            opt.open_world = 1;
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            fprintf(errout, "lincheck: unknown option %s\n", argv[i]);
            return 64;
        } else if (path == NULL) {
            path = argv[i];
        } else {
            path = NULL;
            break;
        }
    }
    if (path == NULL) {
        fprintf(errout,
                "usage: lincheck [--max-steps N] [--max-ms N] [--open-world] HISTORY.jsonl|-\n");
        return 64;
    }
    if (lincheck_history_load(path, &h, &err) != 0) {
        fprintf(errout, "lincheck: %s\n", err.msg);
        return 64;
    }
    uint64_t t0 = util_now_mono_ns();
    if (lincheck_check(h, &opt, &res) != 0) {
        fprintf(errout, "lincheck: out of memory\n");
        lincheck_history_free(h);
        return 64;
    }
    fprintf(out,
            "lincheck: %zu operations, %zu partitions searched (%zu over budget), "
            "%llu steps, %.2f s\n",
            res.ops, res.partitions, res.unknown_parts, (unsigned long long)res.steps,
            (double)(util_now_mono_ns() - t0) / 1e9);
    if (res.report.len > 0)
        fwrite(res.report.data, 1, res.report.len, out);
    fprintf(out, "verdict: %s\n", verdicts[res.verdict]);
    int code = (int)res.verdict;
    lincheck_result_free(&res);
    lincheck_history_free(h);
    return code;
}

/* Weak, so that the unit tests of this folder, which link every helper file
 * here (this one too) and bring their own main, keep theirs. */
__attribute__((weak)) int main(int argc, char **argv) {
    return lincheck_cli(argc, argv, stdout, stderr);
}
