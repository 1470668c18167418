/* snapshot: the `quoin snapshot ...` subcommands. */
#ifndef QUOIN_CMD_SNAPSHOT_H
#define QUOIN_CMD_SNAPSHOT_H

/* Runs `quoin snapshot restore FILE [flags]` (argv[0] is "snapshot") and
 * returns the process's exit code: 0 done, 1 failed, 2 bad command line. */
int quoin_snapshot_main(int argc, char **argv);

#endif
