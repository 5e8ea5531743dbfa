//go:build pkgconfig

package pj

// With the pkgconfig build tag (`go build -tags pkgconfig`), the header and library come from an
// installed pj described by pj.pc (found through PKG_CONFIG_PATH), instead of this repository's
// include/ and target/release (cgo_repo.go).

/*
#cgo pkg-config: pj
*/
import "C"
