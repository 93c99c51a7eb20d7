#!/usr/bin/env bash
# Builds glassloop and runs the demo service on it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONS="${PYTHONS:-$(scripts/pythons.sh | head -n1)}" scripts/setup.sh
py=$(PYTHONS="${PYTHONS:-}" scripts/pythons.sh | head -n1)
exec "$py" -m glassloop examples/demo.py "$@"
