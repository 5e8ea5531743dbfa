// One of two translation units that include pj.hpp (this one twice) and instantiate the same
// templates: a non-inline definition in the header would fail to link.
#include "pj.hpp"
#include "pj.hpp"  // the include guard must hold

#include <cstdio>
#include <string>

std::string other_unit(pj::Parallel& par);

int main() {
    pj::Parallel par(pj::Options().n_jobs(2).backend("threads"));
    std::vector<std::string> here = par.map_indexed(3, [](std::size_t i) { return std::to_string(i); });
    std::string joined = here[0] + here[1] + here[2] + "|" + other_unit(par);
    if (joined != "012|a-bb-ccc") {
        std::fprintf(stderr, "got %s\n", joined.c_str());
        return 1;
    }
    try {
        pj::throw_error(PJ_STATUS_TIMEOUT, "late");
    } catch (const pj::TimeoutError&) {
        return 0;
    }
    return 1;
}
