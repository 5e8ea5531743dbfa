// Parallel::imap on both backends: ordered and unordered streams, laziness, early exits, errors and
// the lifetime rules of pj::Stream.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support.hpp"

namespace {

using pj_test::contains;
using pj_test::OnBackend;

// 0, 1, 2, ... without end; counts (in the caller's memory) how many elements were read.
struct Naturals {
    std::size_t* reads;

    struct iterator {
        std::size_t i;
        std::size_t* reads;
        std::size_t operator*() const {
            ++*reads;
            return i;
        }
        iterator& operator++() {
            ++i;
            return *this;
        }
        bool operator==(const iterator&) const { return false; }
        bool operator!=(const iterator&) const { return true; }
    };
    iterator begin() const { return {0, reads}; }
    iterator end() const { return {0, reads}; }
};

int negate(int x) { return -x; }

class Imap : public OnBackend {};
PJ_ON_EVERY_BACKEND(Imap);

TEST_P(Imap, OrderedStreamYieldsInputOrder) {
    pj::Parallel par = parallel();
    std::vector<int> inputs;
    for (int i = 0; i < 2000; i++) {
        inputs.push_back(i);
    }
    std::size_t expected = 0;
    for (auto&& [i, r] : par.imap(inputs, [](int x) { return static_cast<long long>(x) * 3; })) {
        ASSERT_EQ(i, expected);
        ASSERT_EQ(r, static_cast<long long>(i) * 3);
        expected++;
    }
    EXPECT_EQ(expected, inputs.size());
}

TEST_P(Imap, UnorderedStreamYieldsCompletionOrder) {
    pj::Parallel par(options().return_as("generator_unordered").batch_size(1));
    std::vector<std::size_t> seen;
    for (auto&& [i, r] : par.imap(std::vector<int>{0, 1, 2, 3, 4, 5}, [](int x) {
             if (x == 0) {
                 std::this_thread::sleep_for(std::chrono::milliseconds(500));
             }
             return std::to_string(x);
         })) {
        EXPECT_EQ(r, std::to_string(i));
        seen.push_back(i);
    }
    ASSERT_EQ(seen.size(), 6u);
    EXPECT_NE(seen.front(), 0u) << "the slow task 0 should not come first";
    std::sort(seen.begin(), seen.end());
    EXPECT_EQ(seen, (std::vector<std::size_t>{0, 1, 2, 3, 4, 5}));
}

TEST_P(Imap, InputsAreReadLazilyAndAnEarlyExitAbandonsTheCall) {
    pj::Parallel par = parallel();
    std::size_t reads = 0;
    std::size_t got = 0;
    for (auto&& [i, r] : par.imap(Naturals{&reads}, [](std::size_t x) { return x + 1; })) {
        EXPECT_EQ(r, i + 1);
        if (++got == 10) {
            break;  // the stream dies here: the endless call is abandoned
        }
    }
    EXPECT_EQ(got, 10u);
    EXPECT_LT(reads, 1000000u);
    // The object is ready for the next call.
    EXPECT_EQ(par.map({1, 2}, [](int x) { return -x; }), (std::vector<int>{-1, -2}));
}

TEST_P(Imap, TaskErrorEndsTheStreamAndTheObjectIsReusable) {
    pj::Parallel par = parallel();
    std::size_t read = 0;
    try {
        for (auto&& item : par.imap(std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7}, [](int x) {
                 if (x == 3) {
                     throw std::runtime_error("three is bad");
                 }
                 return x;
             })) {
            (void)item;
            read++;
        }
        FAIL() << "no exception";
    } catch (const pj::TaskError& e) {
        EXPECT_EQ(e.task_index(), 3);
        EXPECT_TRUE(contains(e.what(), "three is bad")) << e.what();
    }
    EXPECT_LE(read, 3u);
    EXPECT_EQ(par.map({5}, [](int x) { return x; }), (std::vector<int>{5}));
}

TEST_P(Imap, RangeExceptionIsRethrownFromTheIteration) {
    pj::Parallel par = parallel();
    struct Boom {};
    auto throws_at_4 = [](int x) { return x; };
    std::vector<int> inputs{0, 1, 2, 3, 4};
    struct Range {
        const std::vector<int>* v;
        struct iterator {
            std::vector<int>::const_iterator it;
            int operator*() const {
                if (*it == 4) {
                    throw Boom{};
                }
                return *it;
            }
            iterator& operator++() {
                ++it;
                return *this;
            }
            bool operator!=(const iterator& o) const { return it != o.it; }
            bool operator==(const iterator& o) const { return it == o.it; }
        };
        iterator begin() const { return {v->begin()}; }
        iterator end() const { return {v->end()}; }
    };
    EXPECT_THROW(
        {
            for (auto&& item : par.imap(Range{&inputs}, throws_at_4)) {
                (void)item;
            }
        },
        Boom);
    EXPECT_EQ(par.map({6}, throws_at_4), (std::vector<int>{6}));
}

TEST_P(Imap, AnotherCallAbandonsTheStream) {
    pj::Parallel par = parallel();
    pj::Stream<int> stream = par.imap(std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8}, [](int x) { return x * 10; });
    auto it = stream.begin();
    ASSERT_NE(it, stream.end());
    EXPECT_EQ(it->second, 10);
    // A new call on the same object (same thread) abandons the stream's call.
    EXPECT_EQ(par.map({1}, [](int x) { return x; }), (std::vector<int>{1}));
    EXPECT_THROW(++it, pj::CancelledError);
    EXPECT_TRUE(stream.done());
}

TEST_P(Imap, StreamOutlivesItsParallel) {
    auto make = [this] {
        pj::Parallel par = parallel();
        return par.imap(std::vector<int>{1, 2, 3}, [](int x) { return x + 100; });
    };
    pj::Stream<int> stream = make();
    std::vector<int> got;
    for (auto&& [i, r] : stream) {
        got.push_back(r);
    }
    EXPECT_EQ(got, (std::vector<int>{101, 102, 103}));
}

TEST_P(Imap, TemporariesLiveAsLongAsTheStream) {
    pj::Parallel par = parallel();
    std::vector<std::string> got;
    // The vector and the lambda (with its captured string) are temporaries of the range-init: the
    // stream holds them.
    for (auto&& [i, r] : par.imap(std::vector<std::string>{"a", "b", "c"},
                                  [suffix = std::string(1000, '!')](const std::string& s) { return s + suffix; })) {
        got.push_back(r.substr(0, 2));
    }
    EXPECT_EQ(got, (std::vector<std::string>{"a!", "b!", "c!"}));
    std::vector<int> by_function;
    for (auto&& [i, r] : par.imap(std::vector<int>{2, 3}, negate)) {
        by_function.push_back(r);
    }
    EXPECT_EQ(by_function, (std::vector<int>{-2, -3}));
    std::vector<int> braced;
    for (auto&& [i, r] : par.imap({7, 8}, [](int x) { return x; })) {
        braced.push_back(r);
    }
    EXPECT_EQ(braced, (std::vector<int>{7, 8}));
}

TEST_P(Imap, MovingAStreamMidwayContinuesIt) {
    pj::Parallel par = parallel();
    pj::Stream<int> first = par.imap(std::vector<int>{0, 1, 2, 3, 4, 5}, [](int x) { return x; });
    auto it = first.begin();
    ASSERT_EQ(it->first, 0u);
    pj::Stream<int> second = std::move(first);
    EXPECT_TRUE(first.done());
    std::vector<int> rest;
    for (++it; it != second.end(); ++it) {  // the iterator follows the state, not the object
        rest.push_back(it->second);
    }
    EXPECT_EQ(rest, (std::vector<int>{1, 2, 3, 4, 5}));
}

TEST_P(Imap, AnotherThreadGetsBusyWhileTheStreamIsInFlight) {
    pj::Parallel par = parallel();
    pj::Stream<int> stream = par.imap(std::vector<int>{1, 2, 3}, [](int x) { return x; });
    auto it = stream.begin();
    pj_status seen = PJ_STATUS_OK;
    std::thread other([&par, &seen] {
        try {
            par.map({1}, [](int x) { return x; });
        } catch (const pj::Error& e) {
            seen = e.status();
        }
    });
    other.join();
    EXPECT_EQ(seen, PJ_STATUS_BUSY);
    std::vector<int> got;
    for (; it != stream.end(); ++it) {
        got.push_back(it->second);
    }
    EXPECT_EQ(got, (std::vector<int>{1, 2, 3}));
}

TEST_P(Imap, WorkerDiedErrorFromTheIteration) {
    if (!processes()) {
        GTEST_SKIP() << "std::abort() on a worker thread would end the test program";
    }
    pj::Parallel par = parallel();
    try {
        for (auto&& item : par.imap(std::vector<int>{0, 1, 2}, [](int x) {
                 if (x == 1) {
                     std::abort();
                 }
                 return x;
             })) {
            (void)item;
        }
        FAIL() << "no exception";
    } catch (const pj::WorkerDiedError& e) {
        EXPECT_EQ(e.task_index(), 1);
    }
    EXPECT_EQ(par.map({3}, [](int x) { return x; }), (std::vector<int>{3}));
}

TEST_P(Imap, EmptyInput) {
    pj::Parallel par = parallel();
    pj::Stream<int> stream = par.imap(std::vector<int>{}, [](int x) { return x; });
    EXPECT_EQ(stream.begin(), stream.end());
    EXPECT_TRUE(stream.done());
}

}  // namespace
