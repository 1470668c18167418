#!/bin/sh
# The README's run command: installs what building needs when missing, builds
# the optimised server and starts one member on the default ports (client
# 127.0.0.1:2379, peer 127.0.0.1:2380, data directory default.quoin). Extra
# arguments are passed to quoin.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh --runtime
make MODE=release all
exec ./build/quoin "$@"
