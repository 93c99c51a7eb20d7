#!/usr/bin/env bash
# Installs what the build and tests need, builds the dashboard (embedded into the
# inspector at compile time), then builds and installs glassloop for every Python
# that scripts/pythons.sh finds.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "setup: cargo not found (install Rust with rustup first)"; exit 1; }
if command -v npm >/dev/null; then
    echo "setup: dashboard (web-ui)"
    (cd web-ui && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent)
else
    echo "setup: npm not found: the inspector will serve a placeholder page instead of the dashboard"
fi
for py in $(scripts/pythons.sh); do
    echo "setup: $py ($("$py" --version 2>&1))"
    "$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore -r requirements-dev.txt
    "$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore --force-reinstall --no-deps .
done
