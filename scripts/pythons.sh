#!/usr/bin/env bash
# Prints the Python interpreters (3.11+) to build and test on, one per line.
# Override with PYTHONS="python3.11 /path/to/python3.13".
if [ -n "${PYTHONS:-}" ]; then
    printf '%s\n' $PYTHONS
    exit 0
fi
found=()
for minor in 11 12 13; do
    exe=""
    if command -v "python3.$minor" >/dev/null 2>&1 && "python3.$minor" -c 'import sys' >/dev/null 2>&1; then
        exe=$(command -v "python3.$minor")
    else
        for dir in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3."$minor".*; do
            [ -x "$dir/bin/python3.$minor" ] && exe="$dir/bin/python3.$minor"
        done
    fi
    [ -n "$exe" ] && found+=("$exe")
done
printf '%s\n' "${found[@]}"
