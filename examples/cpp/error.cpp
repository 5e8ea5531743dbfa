// When a task's function throws, pj fails fast and pj.hpp throws a pj::TaskError that names the
// task (its index in input order) and carries the exception's what(); the pj::Parallel is ready
// for the next call. Here task 7 of 10 throws, in a forked worker process.
//
// The program exits 0 when it observed exactly that failure and the next map succeeded.
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "pj.hpp"

int main() {
    pj::Parallel par(pj::Options().n_jobs(2));
    int rc = 1;
    try {
        par.map_indexed(10, [](std::size_t i) {
            if (i == 7) {
                throw std::invalid_argument("cannot handle " + std::to_string(i));
            }
            return static_cast<int>(i);
        });
        std::fprintf(stderr, "expected task 7 to fail, but every task succeeded\n");
        return 1;
    } catch (const pj::TaskError& e) {
        std::printf("caught pj::TaskError\n");
        std::printf("status: %s\n", e.status_str());
        std::printf("task index: %lld\n", static_cast<long long>(e.task_index()));
        std::printf("what(): %s\n", e.what());
        std::printf("report:\n%s", e.report().c_str());
        if (e.task_index() == 7 && e.callback_code() == pj::exception_code) {
            rc = 0;
        }
    }

    // The same object runs the next call.
    try {
        std::vector<int> squares = par.map({0, 1, 2, 3}, [](int x) { return x * x; });
        std::printf("next map on the same object: [");
        for (std::size_t i = 0; i < squares.size(); i++) {
            std::printf("%s%d", i ? ", " : "", squares[i]);
        }
        std::printf("]\n");
    } catch (const pj::Error& e) {
        std::fprintf(stderr, "the next map failed:\n%s", e.report().c_str());
        rc = 1;
    }
    return rc;
}
