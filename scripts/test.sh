#!/usr/bin/env bash
# Runs every suite: cargo test, pytest on each Python, the CPython conformance
# runner, and a benchmark smoke run. One summary line per suite, then a total.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONDONTWRITEBYTECODE=1
logdir=${TEST_LOG_DIR:-$(mktemp -d)}
results=()
passed=0
failed=0

suite() {  # suite NAME CMD...: runs CMD, keeps its output, records pass/fail with its last line
    local name=$1; shift
    local log="$logdir/$name.log"
    local start=$SECONDS
    echo "=== $name: $*"
    "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    local last
    last=$(grep -E "passed|failed|error|test result" "$log" | tail -n1)
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1)); results+=("PASS $name ($((SECONDS - start))s): $last")
    else
        failed=$((failed + 1)); results+=("FAIL $name ($((SECONDS - start))s, exit $rc): $last")
    fi
}

suite setup scripts/setup.sh
suite cargo-test cargo test --workspace --quiet
for py in $(scripts/pythons.sh); do
    ver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    suite "pytest-$ver" "$py" -m pytest tests -q -p no:cacheprovider
done
first=$(scripts/pythons.sh | head -n1)
if [ -f tests/conformance/run.py ]; then
    suite conformance "$first" tests/conformance/run.py --loop glassloop:new_event_loop --floor tests/conformance/floor.json
fi
if [ -f benches/compare.py ]; then
    suite bench-smoke "$first" benches/compare.py --quick --loops asyncio:new_event_loop,glassloop:new_event_loop
fi

echo
echo "=== summary (logs in $logdir)"
printf '%s\n' "${results[@]}"
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
