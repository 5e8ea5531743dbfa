/*
 * Stands in for a second Rust static library linked into the same program as libpj.a: every Rust
 * staticlib carries its own copy of std, whose personality routine rust_eh_personality is a global,
 * unmangled symbol. Two archives built by different Rust toolchains both define it (and the linker
 * stops with "multiple definition of `rust_eh_personality'"); this file defines it too, so that the
 * test second_rust_staticlib (tests/install/run.cmake) links examples/sqrt.c, this file and libpj.a
 * and checks that pj keeps its std's symbols to itself (only pj_* are global in libpj.a).
 */
void rust_eh_personality(void);
void rust_eh_personality(void) {}
