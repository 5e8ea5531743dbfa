// Seams a new user of pj.hpp hits, probed adversarially: one pj::Parallel used from several
// threads at once, a stream left early and its pj::Parallel destroyed, odd exceptions from a task,
// and nonsense sizes. Every probe must end with a result or an exception, never an abort or hang.
#include <gtest/gtest.h>

#include <dirent.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

using pj_test::children;
using pj_test::contains;
using pj_test::OnBackend;


/// Waits up to 10 s for the children to come down to `want`; returns how many are left above it.
std::size_t children_left(std::size_t want) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (children() > want && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return children() > want ? children() - want : 0;
}

class Seams : public OnBackend {};

// Several threads calling map on one pj::Parallel: each call gets its own results, or BUSY while
// another thread's call is in flight (the documented one-call-at-a-time rule); never another
// call's results, a crash or a hang.
TEST_P(Seams, ConcurrentCallsOnOneParallelGetTheirOwnResultsOrBusy) {
    pj::Parallel par = parallel();
    std::atomic<int> ok{0}, busy{0}, other{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            for (int round = 0; round < 10; ++round) {
                std::vector<std::int64_t> in(40 + t);
                for (std::size_t i = 0; i < in.size(); ++i) {
                    in[i] = static_cast<std::int64_t>(i);
                }
                try {
                    std::vector<std::int64_t> out =
                        par.map(in, [t](const std::int64_t& x) { return x * 1000 + t; });
                    bool right = out.size() == in.size();
                    for (std::size_t i = 0; right && i < out.size(); ++i) {
                        right = out[i] == static_cast<std::int64_t>(i) * 1000 + t;
                    }
                    (right ? ok : other)++;
                } catch (const pj::Error& e) {
                    (e.status() == PJ_STATUS_BUSY ? busy : other)++;
                }
            }
        });
    }
    for (auto& th : threads) {
        th.join();
    }
    EXPECT_EQ(other.load(), 0) << "calls with wrong results or other errors";
    EXPECT_GT(ok.load(), 0);
    EXPECT_EQ(ok.load() + busy.load(), 40);
    // The object works afterwards.
    EXPECT_EQ(par.map({1, 2, 3}, [](int x) { return x + 1; }), (std::vector<int>{2, 3, 4}));
}

// Leaving an imap loop early, then destroying the pj::Parallel (the stream first, then the
// object; and the object first, with the stream alive): nothing hangs, no worker is left.
TEST_P(Seams, BreakingOutOfImapThenDestroyingTheParallelLeavesNothing) {
    const std::size_t before = children();
    std::vector<std::int64_t> in(200);
    for (std::size_t i = 0; i < in.size(); ++i) {
        in[i] = static_cast<std::int64_t>(i);
    }
    auto slow = [](const std::int64_t& x) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        return x * x;
    };
    {
        pj::Parallel par = parallel();
        for (auto&& [i, r] : par.imap(in, slow)) {
            EXPECT_EQ(r, static_cast<std::int64_t>(i * i));
            if (i == 3) {
                break;
            }
        }
    }
    {
        auto par = std::make_unique<pj::Parallel>(options());
        pj::Stream<std::int64_t> stream = par->imap(in, slow);
        auto it = stream.begin();
        ASSERT_NE(it, stream.end());
        par.reset();  // the stream keeps the executor alive
        std::size_t seen = 0;
        for (; it != stream.end(); ++it) {
            EXPECT_EQ(it->second, static_cast<std::int64_t>(it->first * it->first));
            if (++seen == 5) {
                break;
            }
        }
    }
    EXPECT_EQ(children_left(before), 0u);
}

// What a task throws, whatever its type, is a TaskError for its index; the object is reusable.
TEST_P(Seams, AnyExceptionFromATaskIsATaskError) {
    pj::Parallel par = parallel();
    std::vector<int> in(20);
    for (int i = 0; i < 20; ++i) {
        in[static_cast<std::size_t>(i)] = i;
    }
    const std::vector<std::function<void()>> throwers = {
        [] { throw std::bad_alloc(); },
        [] { throw std::string("a string"); },
        [] { throw pj::TimeoutError(PJ_STATUS_TIMEOUT, "a pj::Error of the task's own"); },
        [] { throw std::runtime_error(std::string(100000, 'x')); },
    };
    for (std::size_t k = 0; k < throwers.size(); ++k) {
        try {
            par.map(in, [&throwers, k](const int& x) {
                if (x == 13) {
                    throwers[k]();
                }
                return x;
            });
            ADD_FAILURE() << "thrower " << k << ": no exception";
        } catch (const pj::TaskError& e) {
            EXPECT_EQ(e.task_index(), 13) << "thrower " << k << ": " << e.what();
            EXPECT_EQ(e.callback_code(), pj::exception_code);
        } catch (const std::exception& e) {
            ADD_FAILURE() << "thrower " << k << ": not a TaskError: " << e.what();
        }
        EXPECT_EQ(par.map({1, 2}, [](int x) { return -x; }), (std::vector<int>{-1, -2}));
    }
}

// Nonsense sizes and values: an exception each, never an abort.
TEST_P(Seams, NonsenseSizesThrow) {
    auto refused = [](auto&& make) {
        try {
            make();
            return false;
        } catch (const pj::InvalidArgument&) {
            return true;
        }
    };
    EXPECT_TRUE(refused([] { pj::Options().n_jobs(0); }));
    EXPECT_TRUE(refused([] { pj::Options().n_jobs(65537); }));
    EXPECT_TRUE(refused([] { pj::Options().timeout(-1.0); }));
    EXPECT_TRUE(refused([] { pj::Options().timeout(std::nan("")); }));
    EXPECT_TRUE(refused([] { pj::Options().batch_size(0); }));
    // Extreme but valid: the most negative n_jobs is one worker; the longest timeout is none in
    // practice, the shortest fails the task with TimeoutError.
    for (double limit : {1e300, std::numeric_limits<double>::infinity()}) {
        try {
            pj::Parallel par(options().n_jobs(std::numeric_limits<std::int64_t>::min()).timeout(limit));
            EXPECT_EQ(par.map({1, 2, 3}, [](int x) { return x * 3; }), (std::vector<int>{3, 6, 9}));
        } catch (const pj::InvalidArgument& e) {
            // refusing it is fine too; aborting is not
            SUCCEED() << e.what();
        }
    }
    {
        pj::Parallel par(options().timeout(1e-300).chunk_size(1));
        try {
            par.map({1, 2, 3}, [](int x) {
                std::this_thread::sleep_for(std::chrono::milliseconds(200));
                return x;
            });
        } catch (const pj::TimeoutError&) {
        } catch (const pj::InvalidArgument&) {
        }
    }
    // More elements than memory can hold: std::length_error or std::bad_alloc, from the caller.
    pj::Parallel par = parallel();
    EXPECT_THROW(par.map_indexed(std::numeric_limits<std::size_t>::max(),
                                 [](std::size_t i) { return i; }),
                 std::exception);
    EXPECT_EQ(par.map({1, 2}, [](int x) { return x * 2; }), (std::vector<int>{2, 4}));
}

PJ_ON_EVERY_BACKEND(Seams);

}  // namespace
