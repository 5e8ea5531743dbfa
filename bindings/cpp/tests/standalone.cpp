// pj.hpp on its own: nothing is included before it, so it must include everything it uses. This
// program links the static library and runs one small call.
#include "pj.hpp"

#include <cstdio>
#include <string>

#define PJ_STR2(x) #x
#define PJ_STR(x) PJ_STR2(x)

int main() {
    const std::string expected =
        PJ_STR(PJ_VERSION_MAJOR) "." PJ_STR(PJ_VERSION_MINOR) "." PJ_STR(PJ_VERSION_PATCH);
    if (expected != pj::version()) {
        std::fprintf(stderr, "version %s, header says %s\n", pj::version(), expected.c_str());
        return 1;
    }
    pj::Parallel par(pj::Options().n_jobs(2).backend("threads"));
    std::vector<int> out = par.map_indexed(100, [](std::size_t i) { return static_cast<int>(i) * 3; });
    for (std::size_t i = 0; i < out.size(); i++) {
        if (out[i] != static_cast<int>(i) * 3) {
            std::fprintf(stderr, "result %zu is %d\n", i, out[i]);
            return 1;
        }
    }
    return out.size() == 100 ? 0 : 1;
}
