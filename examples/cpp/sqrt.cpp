// joblib's first example, in C++ (examples/sqrt.c with pj.hpp):
//
//     >>> from math import sqrt
//     >>> Parallel(n_jobs=2)(delayed(sqrt)(i ** 2) for i in range(10))
//     [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
//
// Parallel::map sends each double's bytes to a task, runs the lambda there (a forked worker
// process by default, as in joblib) and returns the results in input order.
#include <cmath>
#include <cstdio>
#include <exception>
#include <vector>

#include "pj.hpp"

int main() {
    try {
        std::vector<double> inputs;
        for (int i = 0; i < 10; i++) {
            inputs.push_back(static_cast<double>(i) * i);
        }
        pj::Parallel par(pj::Options().n_jobs(2));
        std::vector<double> roots = par.map(inputs, [](double x) { return std::sqrt(x); });

        std::printf("[");
        for (std::size_t i = 0; i < roots.size(); i++) {
            std::printf("%s%.1f", i ? ", " : "", roots[i]);
        }
        std::printf("]\n");
        return 0;
    } catch (const pj::Error& e) {  // what() is one line, report() the whole story
        std::fprintf(stderr, "%s", e.report().c_str());
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
    }
    return 1;
}
