/*
 * Stands in for a second Rust static library linked into the same program as libpj.a. Every Rust
 * staticlib carries its own copy of std, with
 *   - rust_eh_personality, a global unmangled function: two archives built by different Rust
 *     toolchains both define it, and the link stops with "multiple definition";
 *   - DW.ref.rust_eh_personality, a hidden weak pointer to it in a COMDAT group of that name, which
 *     its unwind tables use: the linker keeps one group of each name, so if libpj.a's group (with
 *     its symbol made local) were kept, this file's reference would find no definition.
 * This file has both, and second_rust_staticlib_uses_its_personality reads the pointer, so the test
 * second_rust_staticlib (tests/install/run.cmake) can link examples/sqrt.c, this file and libpj.a in
 * either order and run the program.
 */
void rust_eh_personality(void);
void rust_eh_personality(void) {}

__asm__(".section .data.rel.local.DW.ref.rust_eh_personality,\"awG\",@progbits,"
        "DW.ref.rust_eh_personality,comdat\n"
        ".p2align 3\n"
        ".weak DW.ref.rust_eh_personality\n"
        ".hidden DW.ref.rust_eh_personality\n"
        ".type DW.ref.rust_eh_personality, @object\n"
        ".size DW.ref.rust_eh_personality, 8\n"
        "DW.ref.rust_eh_personality:\n"
        ".quad rust_eh_personality\n"
        ".text\n");

extern void (*const second_rust_staticlib_personality)(void) __asm__("DW.ref.rust_eh_personality");

/* Called from the constructor below so that the reference is kept by the link. */
__attribute__((constructor)) static void second_rust_staticlib_uses_its_personality(void) {
    if (second_rust_staticlib_personality != rust_eh_personality) {
        __builtin_trap();
    }
}
