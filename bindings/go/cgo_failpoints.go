//go:build pjfailpoints && !pkgconfig

package pj

// With the pjfailpoints build tag (the failpoint tests only: `go test -tags pjfailpoints -run
// Failpoint`), the package links the libpj that `cargo build --features failpoints --target-dir
// target/failpoints` writes to target/failpoints/debug, whose PJ_FAILPOINTS injects failures where
// no task can reach (see src/failpoint.rs). Never for programs: the release library has no
// failpoints, and this one is a debug build.

/*
#cgo CFLAGS: -I${SRCDIR}/../../include -I${SRCDIR}/../../target/failpoints/debug
#cgo LDFLAGS: -L${SRCDIR}/../../target/failpoints/debug -Wl,-rpath,${SRCDIR}/../../target/failpoints/debug -lpj
#include "pj_header.h"
#if !__has_include("libpj.so")
#error "pj: target/failpoints/debug/libpj.so is missing: run `cargo build --features failpoints --target-dir target/failpoints` at the root of the pj repository"
#endif
*/
import "C"
