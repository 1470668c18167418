/* quoin: the server. Parses etcd's flags and runs one member. */
#include <stdio.h>
#include <string.h>

#include "util/util.h"

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        printf("quoin Version: %s\netcd API Version: %s\n", UTIL_QUOIN_VERSION, UTIL_ETCD_VERSION);
        return 0;
    }
    fprintf(stderr, "quoin: not runnable yet\n");
    return 2;
}
