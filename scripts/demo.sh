#!/usr/bin/env bash
# Builds pj and its C examples with CMake (in build/) and runs joblib's two seed examples in C.
# Works from any directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Configures build/ with Ninja (or Make when ninja is missing); a build/ made by another generator
# is started afresh, since CMake cannot switch generators in place.
configure() {
    local generator="Unix Makefiles"
    if command -v ninja >/dev/null; then generator=Ninja; fi
    if [[ -f build/CMakeCache.txt ]] && ! grep -qx "CMAKE_GENERATOR:INTERNAL=$generator" build/CMakeCache.txt; then
        rm -rf build
    fi
    cmake -S . -B build -G "$generator"
}

# Quiet unless something fails.
if ! log=$(configure 2>&1 && cmake --build build 2>&1); then
    printf '%s\n' "$log" >&2
    exit 1
fi
for example in sqrt modf shared_output progress; do
    printf '\n$ build/examples/%s    # examples/%s.c\n' "$example" "$example"
    "build/examples/$example"
done
