// The C++ column of benches/compare.rs, which builds it with `g++ -O2 -std=c++17` against pj.hpp
// and target/release/libpj.so into target/ and runs it for workload (a). Prints one line per
// measured variant: its name, then the wall time of each run in seconds.
//
//   cpp_map trivial N RUNS   pj::Parallel::map of x*2 over N longs (a std::vector), n_jobs=2:
//                            "threads ...", "processes ...", "sequential ..." (automatic chunks)
//                            and "threads-chunk1 ..." (chunk_size(1): one pj task per element)
//
// Each pj::Parallel is warmed by one untimed call, as in compare.rs.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "pj.hpp"

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void trivial(const char* name, pj::Options options, const std::vector<long>& in, int runs) {
    pj::Parallel par(options);
    auto twice = [](long x) { return x * 2; };
    par.map(in, twice);  // warm
    std::printf("%s", name);
    for (int r = 0; r < runs; r++) {
        const auto start = std::chrono::steady_clock::now();
        std::vector<long> out = par.map(in, twice);
        const double t = seconds_since(start);
        if (out.size() != in.size() || out.back() != in.back() * 2) {
            std::fprintf(stderr, "cpp_map: wrong result in %s\n", name);
            std::exit(3);
        }
        std::printf(" %.9f", t);
    }
    std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 4 || std::string(argv[1]) != "trivial") {
        std::fprintf(stderr, "usage: cpp_map trivial N RUNS\n");
        return 2;
    }
    const long n = std::atol(argv[2]);
    const int runs = std::atoi(argv[3]);
    std::vector<long> in(static_cast<std::size_t>(n));
    for (long i = 0; i < n; i++) {
        in[static_cast<std::size_t>(i)] = i;
    }
    try {
        trivial("threads", pj::Options().n_jobs(2).backend("threads"), in, runs);
        trivial("processes", pj::Options().n_jobs(2).backend("processes"), in, runs);
        trivial("sequential", pj::Options().backend("sequential"), in, runs);
#ifndef CPP_MAP_NO_CHUNK_SIZE
        trivial("threads-chunk1", pj::Options().n_jobs(2).backend("threads").chunk_size(1), in,
                runs);
#endif
    } catch (const std::exception& e) {
        std::fprintf(stderr, "cpp_map: %s\n", e.what());
        return 1;
    }
    return 0;
}
