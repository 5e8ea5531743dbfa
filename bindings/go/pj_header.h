/*
 * pj.h, or an #error that says how to get it. Every cgo preamble of this package includes this file
 * instead of pj.h: cgo compiles the preambles in no fixed order, so whichever comes first in a fresh
 * clone (before `cargo build --release`) must stop with this message rather than a bare "pj.h: No
 * such file or directory".
 */
#ifndef PJGO_PJ_HEADER_H
#define PJGO_PJ_HEADER_H

#if __has_include("pj.h")
#include "pj.h"
#else
#error "pj: include/pj.h is missing: run `cargo build --release` at the root of the pj repository (it writes include/pj.h and target/release/libpj.so), or build with -tags pkgconfig against an installed pj"
#endif

#endif /* PJGO_PJ_HEADER_H */
