#!/usr/bin/env bash
# Runs every suite: cargo test, the dashboard's unit tests, pytest and the CPython
# conformance runner on each Python, the dashboard in headless Chromium, and
# benchmark smoke runs. One summary line per suite, then a total.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONDONTWRITEBYTECODE=1
logdir=${TEST_LOG_DIR:-$(mktemp -d)}
results=()
passed=0
failed=0

suite() {  # suite NAME CMD...: runs CMD, keeps its output, records pass/fail with its last summary line
    local name=$1; shift
    local log="$logdir/$name.log"
    local start=$SECONDS
    echo "=== $name: $*"
    "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    local last
    last=$(grep -E "passed|failed|[0-9]+ pass|test result|floor" "$log" | tail -n1)
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1)); results+=("PASS $name ($((SECONDS - start))s): $last")
    else
        failed=$((failed + 1)); results+=("FAIL $name ($((SECONDS - start))s, exit $rc): $last")
    fi
}

suite setup scripts/setup.sh
suite cargo-test cargo test --workspace --quiet
if command -v npm >/dev/null; then
    suite web-ui-unit bash -c "cd web-ui && npm test"
fi
for py in $(scripts/pythons.sh); do
    ver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    suite "pytest-$ver" "$py" -m pytest tests -q -p no:cacheprovider
    suite "conformance-$ver" "$py" tests/conformance/run.py --loop glassloop:new_event_loop \
        --test-timeout 60 --floor tests/conformance/floor.json
done
first=$(scripts/pythons.sh | head -n1)
if command -v npm >/dev/null && [ -x /usr/bin/chromium ]; then
    suite browser bash -c "cd tests/browser && npm ci --no-audit --no-fund --loglevel=error && GLASSLOOP_TARGET=demo npm test"
fi
suite bench-smoke "$first" benches/compare.py --quick --loops asyncio:new_event_loop,glassloop:new_event_loop
suite overhead-smoke "$first" benches/overhead.py --quick --no-echo
suite http-smoke "$first" benches/net_compare.py --quick --workloads http \
    --loops asyncio:new_event_loop,glassloop:new_event_loop

echo
echo "=== summary (logs in $logdir)"
printf '%s\n' "${results[@]}"
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
