//go:build !pkgconfig

package pj

// By default the package builds against this repository's own build output: the generated header in
// include/ and the library that `cargo build --release` writes to target/release. The rpath lets
// binaries (tests included) find libpj.so there without LD_LIBRARY_PATH. Build with `-tags pkgconfig`
// to use an installed pj through pkg-config instead (cgo_pkgconfig.go).

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: -L${SRCDIR}/../../target/release -Wl,-rpath,${SRCDIR}/../../target/release -lpj
*/
import "C"
