#!/bin/sh
# The README's test command: installs what is missing (make and the compiler
# included, so a machine with only git will do), then runs the whole suite.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
exec make test
