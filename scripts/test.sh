#!/usr/bin/env bash
# Runs every test of pj: Rust format and lints, Rust tests, the release build, the C examples and C
# tests through CMake/ctest, and the Go bindings when they exist. Works from any directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

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

step "cargo fmt --check"
if ! cargo fmt --all -- --check; then
    echo "error: Rust sources are not formatted: run 'cargo fmt' and commit the result" >&2
    exit 1
fi

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test"
cargo test --all-targets
cargo test --doc

step "failpoint matrix (cargo test --features failpoints --test failpoints)"
cargo test --features failpoints --test failpoints

step "failpoint matrix, MPI cells (cargo test --features failpoints --test failpoints_mpi)"
cargo test --features failpoints --test failpoints_mpi

step "cargo build --release"
cargo build --release

step "cmake (build/) + ctest"
configure
cmake --build build
(cd build && ctest --output-on-failure)

if [[ -f bindings/go/go.mod ]]; then
    step "gofmt + go vet + go test + go test -race (bindings/go)"
    (
        cd bindings/go
        export GOTOOLCHAIN=local   # never download a Go toolchain
        unformatted=$(gofmt -l .)
        if [[ -n $unformatted ]]; then
            echo "error: Go sources are not formatted: run 'gofmt -w bindings/go'" >&2
            echo "$unformatted" >&2
            exit 1
        fi
        go vet ./...
        # The MPI backend's files (the pjmpi tag), where MPI is found as that tag finds it.
        if pkg-config --exists ompi-c; then
            go vet -tags pjmpi ./...
        fi
        # -count=1: Go's test cache does not notice a rebuilt libpj.so.
        go test -count=1 ./...
        go test -race -count=1 ./...
    )
fi

# The wrappers' failpoint matrices, against the libpj with the cargo feature failpoints in its own
# target directory (target/failpoints/debug; the release libraries never have it). The C++ one is
# ctest's cpp_failpoints above (CMake builds that library); the Go one needs the pjfailpoints tag.
if [[ -f bindings/go/go.mod ]]; then
    step "failpoint matrix of the Go bindings (go test -tags pjfailpoints -run Failpoint)"
    cargo build --features failpoints --target-dir target/failpoints
    (
        cd bindings/go
        export GOTOOLCHAIN=local
        go vet -tags pjfailpoints ./...
        go test -tags pjfailpoints -count=1 -run Failpoint ./...
    )
fi
