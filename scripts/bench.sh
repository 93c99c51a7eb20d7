#!/usr/bin/env bash
# The whole benchmark suite in one command (`make bench`): builds glassloop with the
# release profile, then runs, interleaved and with asyncio, uvloop and rloop beside
# glassloop, the in-process workloads (compare.py), every network workload × size ×
# connection count against the pure-Rust ceiling, the aiohttp hello-world under wrk
# (net_compare.py), and the recording overhead (overhead.py). Tables go to
# benches/results/*.md (raw records to *.json). QUICK=1: one small round of each
# (about two minutes); the full suite takes about an hour on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONS="${PYTHONS:-$(scripts/pythons.sh | head -n1)}" scripts/setup.sh
py=$(PYTHONS="${PYTHONS:-}" scripts/pythons.sh | head -n1)
out=benches/results
mkdir -p "$out"
loops=asyncio:new_event_loop,uvloop:new_event_loop,rloop:new_event_loop,glassloop:new_event_loop
if [ "${QUICK:-0}" = 1 ]; then
    size=(--quick)
    net=(--quick)
    over=(--quick)
else
    size=(--reps 3)
    net=(--reps 2 --duration 2 --warmup 1 --retries 1 --sizes 100,1KiB,64KiB --conns 1,10,100)
    over=(--reps 8)
fi
status=0
run() {  # run NAME CMD...: one line per part, whatever the others did
    local name=$1; shift
    if "$@"; then echo "bench: $name: ok"; else echo "bench: $name: FAILED ($?)"; status=1; fi
}
run in-process "$py" benches/compare.py --loops "$loops" "${size[@]}" \
    --json "$out/inproc.json" --markdown "$out/inproc.md"
run network "$py" benches/net_compare.py --loops "$loops" "${net[@]}" \
    --workloads protocol,buffered,streams,sock,unix,udp,tls,http \
    --json "$out/net.json" --markdown "$out/net.md"
run overhead "$py" benches/overhead.py "${over[@]}" --markdown "$out/overhead.md"
echo "bench: tables in $out/ (inproc.md, net.md, overhead.md)"
exit $status
