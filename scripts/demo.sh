#!/usr/bin/env bash
# Builds glassloop and runs the demo service on it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONS="${PYTHONS:-$(scripts/pythons.sh | head -n1)}" scripts/setup.sh
py=$(PYTHONS="${PYTHONS:-}" scripts/pythons.sh | head -n1)
echo "demo: open http://127.0.0.1:7070/ for the dashboard (Ctrl-C to stop)"
exec "$py" -m glassloop --inspect "${GLASSLOOP_INSPECT:-127.0.0.1:7070}" examples/demo.py --seconds 3600 "$@"
