//go:build !pkgconfig && !pjfailpoints

package pj

// By default the package builds against this repository's own build output: the generated header in
// include/ and the library that `cargo build --release` writes to target/release. The rpath lets
// binaries (tests included) find libpj.so there without LD_LIBRARY_PATH. Build with `-tags pkgconfig`
// to use an installed pj through pkg-config instead (cgo_pkgconfig.go).
//
// When either is missing (a fresh clone, before `cargo build --release`), the compilation stops with
// an #error that says so (pj_header.h for the header, which every preamble includes; this preamble
// for the library), instead of the linker's "cannot find -lpj" (a link
// error cannot carry a message of ours). target/release is on the include path only so that
// __has_include can see whether the library is there.

/*
#cgo CFLAGS: -I${SRCDIR}/../../include -I${SRCDIR}/../../target/release
#cgo LDFLAGS: -L${SRCDIR}/../../target/release -Wl,-rpath,${SRCDIR}/../../target/release -lpj
#include "pj_header.h"
#if !__has_include("libpj.so")
#error "pj: target/release/libpj.so is missing: run `cargo build --release` at the root of the pj repository, or build with -tags pkgconfig against an installed pj"
#endif
*/
import "C"
