// joblib's second example, in C++ (examples/modf.c with pj.hpp): a task with two results.
//
//     >>> from math import modf
//     >>> r = Parallel(n_jobs=2)(delayed(modf)(i / 2.) for i in range(10))
//     >>> res, i = zip(*r)
//     >>> res
//     (0.0, 0.5, 0.0, 0.5, 0.0, 0.5, 0.0, 0.5, 0.0, 0.5)
//     >>> i
//     (0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0)
//
// The inputs come from map_indexed (the counterpart of the Python generator: i is produced on the
// calling thread as the workers have room); the result is a trivially copyable struct, sent back
// as its bytes.
#include <cmath>
#include <cstdio>
#include <exception>
#include <vector>

#include "pj.hpp"

namespace {

struct Parts {
    double frac;
    double whole;
};

// Prints a tuple the way Python does.
void print_tuple(const std::vector<double>& values) {
    std::printf("(");
    for (std::size_t i = 0; i < values.size(); i++) {
        std::printf("%s%.1f", i ? ", " : "", values[i]);
    }
    std::printf(")\n");
}

}  // namespace

int main() {
    try {
        // Options can also be set from strings, with joblib's keywords and spellings.
        pj::Parallel par(pj::Options().set("n_jobs", "2"));
        std::vector<Parts> r = par.map_indexed(10, [](std::size_t i) {
            Parts parts{};
            parts.frac = std::modf(static_cast<double>(i) / 2.0, &parts.whole);
            return parts;
        });

        // zip(*r)
        std::vector<double> frac, whole;
        for (const Parts& parts : r) {
            frac.push_back(parts.frac);
            whole.push_back(parts.whole);
        }
        print_tuple(frac);
        print_tuple(whole);
        return 0;
    } catch (const pj::Error& e) {
        std::fprintf(stderr, "%s", e.report().c_str());
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
    }
    return 1;
}
