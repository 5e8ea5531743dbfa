// backend "mpi" from C++: registered functions, pj_mpi_main, Parallel::map<F>.
//
//     $ mpirun -n 3 ./mpi_cpp
//     roots: 0 1 2 3 4 5 6 7 8 9
//     words: ALPHA BETA GAMMA
//     a failing task: task 1 failed with code 1: empty word
#include "pj.hpp"
#include "pj_mpi.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

static double root(const double& x) { return std::sqrt(x); }

static std::string upper(std::string word) {
    if (word.empty()) {
        throw std::invalid_argument("empty word");
    }
    for (char& c : word) {
        c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    }
    return word;
}

int main(int argc, char** argv) {
    // Every rank registers the same functions, in the same order, then starts MPI: ranks other
    // than 0 serve tasks inside pj_mpi_main and never return.
    pj::register_function<root>("root");
    pj::register_function<upper>("upper");
    if (pj_mpi_main(&argc, &argv) != 0) {
        return 1;
    }
    try {
        pj::Parallel par(pj::Options().backend("mpi"));
        std::vector<double> squares;
        for (int i = 0; i < 10; i++) {
            squares.push_back(static_cast<double>(i * i));
        }
        std::printf("roots:");
        for (double r : par.map<root>(squares)) {
            std::printf(" %g", r);
        }
        std::printf("\nwords:");
        for (const std::string& w : par.map<upper>({std::string("alpha"), std::string("beta"),
                                                    std::string("gamma")})) {
            std::printf(" %s", w.c_str());
        }
        std::printf("\n");
        try {
            par.map<upper>({std::string("x"), std::string(""), std::string("z")});
        } catch (const pj::TaskError& e) {
            // The rank that ran it varies: print the message up to the rank.
            const std::string what = e.what();
            std::printf("a failing task: %s\n", what.substr(0, what.find(" (MPI rank")).c_str());
        }
    } catch (const pj::Error& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
    return 0;
}
