#!/bin/sh
# Runs every unit-test executable under the given folder (cmocka programs) and
# prints one summary line. Exits non-zero if any test failed or any program
# crashed. Each program gets at most QUOIN_TEST_TIMEOUT seconds (default 600).
set -u
dir="${1:?usage: run-unit-tests.sh DIR}"
limit="${QUOIN_TEST_TIMEOUT:-600}"
passed=0
failed=0
broken=""
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

for t in $(find "$dir" -type f -name 'test_*' -perm -u+x | sort); do
    echo "== $t"
    timeout "$limit" "$t" >"$log" 2>&1
    rc=$?
    cat "$log"
    p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
    f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
    passed=$((passed + p))
    failed=$((failed + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        # Crashed, timed out or failed outside a test: count the program as one failure.
        failed=$((failed + 1))
        broken="$broken $t(rc=$rc)"
    fi
done

[ -n "$broken" ] && echo "unit: programs that exited abnormally:$broken"
echo "unit: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
