// Parallel::map and Parallel::map_indexed on both backends: ranges, codecs, captures, errors.
#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <list>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

using pj_test::contains;
using pj_test::OnBackend;

// A trivially copyable type, sent as its bytes.
struct Point {
    double x;
    double y;
    std::int32_t tag;
};

// A type that needs a codec: a name and a count.
struct Named {
    std::string name;
    std::int32_t count;
};

// A type whose codec refuses odd values when decoding (to fail inside a task).
struct Even {
    std::int32_t value;
};

}  // namespace

template <>
struct pj::codec<Named> {
    static std::size_t size(const Named& v) { return sizeof(std::int32_t) + v.name.size(); }
    static void encode(const Named& v, std::uint8_t* dst) {
        std::memcpy(dst, &v.count, sizeof v.count);
        std::memcpy(dst + sizeof v.count, v.name.data(), v.name.size());
    }
    static Named decode(const std::uint8_t* data, std::size_t len) {
        if (len < sizeof(std::int32_t)) {
            throw pj::InvalidArgument(PJ_STATUS_INVALID_ARGUMENT, "Named: too short");
        }
        Named v;
        std::memcpy(&v.count, data, sizeof v.count);
        v.name.assign(reinterpret_cast<const char*>(data) + sizeof v.count, len - sizeof v.count);
        return v;
    }
};

template <>
struct pj::codec<Even> {
    static std::size_t size(const Even&) { return sizeof(std::int32_t); }
    static void encode(const Even& v, std::uint8_t* dst) { std::memcpy(dst, &v.value, sizeof v.value); }
    static Even decode(const std::uint8_t* data, std::size_t len) {
        Even v{pj::codec<std::int32_t>::decode(data, len)};
        if (v.value % 2 != 0) {
            throw std::domain_error("Even: got " + std::to_string(v.value));
        }
        return v;
    }
};

namespace {

double halve(const double& x) { return x / 2; }

// An input range whose iterator throws when it reaches `fail_at` (on the caller's thread).
struct ThrowingRange {
    int n;
    int fail_at;

    struct iterator {
        int i;
        int fail_at;
        int operator*() const {
            if (i == fail_at) {
                throw std::out_of_range("no input " + std::to_string(i));
            }
            return i;
        }
        iterator& operator++() {
            ++i;
            return *this;
        }
        bool operator==(const iterator& o) const { return i == o.i; }
        bool operator!=(const iterator& o) const { return i != o.i; }
    };
    iterator begin() const { return {0, fail_at}; }
    iterator end() const { return {n, fail_at}; }
};

// A task callback written against the C API: its result is 4 bytes long.
std::int32_t four_bytes(void*, const std::uint8_t*, std::size_t, pj_out_t* out) {
    const std::int32_t v = 42;
    return pj_out_set(out, reinterpret_cast<const std::uint8_t*>(&v), sizeof v) == PJ_STATUS_OK ? 0 : 1;
}

class Map : public OnBackend {};
PJ_ON_EVERY_BACKEND(Map);

TEST_P(Map, SquareRootsInInputOrder) {
    pj::Parallel par = parallel();
    std::vector<double> inputs;
    for (int i = 0; i < 10; i++) {
        inputs.push_back(static_cast<double>(i) * i);
    }
    std::vector<double> roots = par.map(inputs, [](double x) { return std::sqrt(x); });
    ASSERT_EQ(roots.size(), 10u);
    for (int i = 0; i < 10; i++) {
        EXPECT_EQ(roots[i], static_cast<double>(i));
    }
}

TEST_P(Map, AcceptsAnyRangeAndCallable) {
    pj::Parallel par = parallel();
    auto twice = [](int x) { return 2 * x; };

    std::list<int> list{5, 6, 7};
    EXPECT_EQ(par.map(list, twice), (std::vector<int>{10, 12, 14}));
    std::set<int> set{3, 1, 2};
    EXPECT_EQ(par.map(set, twice), (std::vector<int>{2, 4, 6}));
    const std::array<int, 3> array{1, 2, 3};
    EXPECT_EQ(par.map(array, twice), (std::vector<int>{2, 4, 6}));
    int c_array[] = {4, 5};
    EXPECT_EQ(par.map(c_array, twice), (std::vector<int>{8, 10}));
    EXPECT_EQ(par.map(std::vector<int>{9}, twice), (std::vector<int>{18}));
    EXPECT_EQ(par.map({1, 2}, twice), (std::vector<int>{2, 4}));
    EXPECT_EQ(par.map(std::vector<double>{3.0}, halve), (std::vector<double>{1.5}));
    EXPECT_EQ(par.map(std::vector<double>{3.0}, &halve), (std::vector<double>{1.5}));
    const auto const_lambda = [](double x) { return x + 1; };
    EXPECT_EQ(par.map({1.0}, const_lambda), (std::vector<double>{2.0}));
    std::vector<bool> bits{true, false, true};  // proxy references: sent as bool
    EXPECT_EQ(par.map(bits, [](bool b) { return b ? 1 : 0; }), (std::vector<int>{1, 0, 1}));
    // the element type converts to the parameter type
    EXPECT_EQ(par.map(std::vector<short>{7}, [](long long x) { return x; }), (std::vector<long long>{7}));
}

TEST_P(Map, TriviallyCopyableStructsTravelAsBytes) {
    pj::Parallel par = parallel();
    std::vector<Point> points;
    for (int i = 0; i < 50; i++) {
        points.push_back({static_cast<double>(i), -static_cast<double>(i), i});
    }
    std::vector<Point> moved = par.map(points, [](const Point& p) { return Point{p.x + 1, p.y - 1, p.tag * 2}; });
    ASSERT_EQ(moved.size(), points.size());
    for (int i = 0; i < 50; i++) {
        EXPECT_EQ(moved[i].x, i + 1.0);
        EXPECT_EQ(moved[i].y, -i - 1.0);
        EXPECT_EQ(moved[i].tag, 2 * i);
    }
}

TEST_P(Map, MapIndexedManyTasksInOrder) {
    pj::Parallel par = parallel();
    const std::size_t n = 20000;
    std::vector<std::uint64_t> out = par.map_indexed(n, [](std::size_t i) { return std::uint64_t{i} * i; });
    ASSERT_EQ(out.size(), n);
    for (std::size_t i = 0; i < n; i++) {
        ASSERT_EQ(out[i], std::uint64_t{i} * i) << "at " << i;
    }
}

TEST_P(Map, EmptyInputGivesEmptyResult) {
    pj::Parallel par = parallel();
    EXPECT_TRUE(par.map(std::vector<int>{}, [](int x) { return x; }).empty());
    EXPECT_TRUE(par.map_indexed(0, [](std::size_t i) { return i; }).empty());
}

TEST_P(Map, StringAndVectorCodecs) {
    pj::Parallel par = parallel();
    std::vector<std::string> words{"", "a", "hello", std::string(100000, 'x'), std::string("nul\0inside", 10)};
    std::vector<std::string> upper = par.map(words, [](const std::string& w) {
        std::string u = w;
        for (char& c : u) {
            c = static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
        }
        return u;
    });
    ASSERT_EQ(upper.size(), words.size());
    EXPECT_EQ(upper[0], "");
    EXPECT_EQ(upper[1], "A");
    EXPECT_EQ(upper[2], "HELLO");
    EXPECT_EQ(upper[3], std::string(100000, 'X'));
    EXPECT_EQ(upper[4], std::string("NUL\0INSIDE", 10));

    std::vector<std::vector<int>> ranges = par.map_indexed(6, [](std::size_t n) {
        std::vector<int> v;
        for (std::size_t i = 0; i < n; i++) {
            v.push_back(static_cast<int>(i));
        }
        return v;
    });
    for (std::size_t n = 0; n < 6; n++) {
        EXPECT_EQ(ranges[n].size(), n);
    }
    std::vector<double> sums = par.map(std::vector<std::vector<double>>{{}, {1.5}, {1, 2, 3}},
                                       [](const std::vector<double>& v) {
                                           double s = 0;
                                           for (double x : v) {
                                               s += x;
                                           }
                                           return s;
                                       });
    EXPECT_EQ(sums, (std::vector<double>{0, 1.5, 6}));
}

TEST_P(Map, UserCodec) {
    pj::Parallel par = parallel();
    std::vector<Named> in{{"apple", 1}, {"", 2}, {"cherry", 3}};
    std::vector<Named> out = par.map(in, [](const Named& v) { return Named{v.name + "!", v.count * 10}; });
    ASSERT_EQ(out.size(), 3u);
    EXPECT_EQ(out[0].name, "apple!");
    EXPECT_EQ(out[0].count, 10);
    EXPECT_EQ(out[1].name, "!");
    EXPECT_EQ(out[2].count, 30);
}

TEST_P(Map, CapturesAreValidInTheTasks) {
    pj::Parallel par = parallel();
    // Made right before the call: the workers fork when it starts, so they see it.
    std::vector<int> table;
    for (int i = 0; i < 1000; i++) {
        table.push_back(i * 7);
    }
    const std::string suffix = "-done";
    std::vector<std::string> out =
        par.map_indexed(table.size(), [&table, &suffix](std::size_t i) { return std::to_string(table[i]) + suffix; });
    EXPECT_EQ(out[0], "0-done");
    EXPECT_EQ(out[999], "6993-done");
}

TEST_P(Map, WritesInTasksStayInWorkerProcesses) {
    pj::Parallel par = parallel();
    std::atomic<int> calls{0};
    par.map_indexed(100, [&calls](std::size_t i) {
        calls.fetch_add(1);
        return i;
    });
    // A forked worker writes to its own copy; threads share the caller's memory.
    EXPECT_EQ(calls.load(), processes() ? 0 : 100);
}

TEST_P(Map, ExceptionBecomesTaskErrorWithIndexAndWhat) {
    pj::Parallel par = parallel();
    try {
        par.map_indexed(10, [](std::size_t i) {
            if (i == 7) {
                throw std::invalid_argument("cannot handle " + std::to_string(i));
            }
            return i;
        });
        FAIL() << "no exception";
    } catch (const pj::TaskError& e) {
        EXPECT_EQ(e.status(), PJ_STATUS_TASK_FAILED);
        EXPECT_EQ(e.task_index(), 7);
        EXPECT_EQ(e.callback_code(), pj::exception_code);
        EXPECT_TRUE(contains(e.what(), "cannot handle 7")) << e.what();
        EXPECT_TRUE(contains(e.report(), "task index: 7")) << e.report();
        EXPECT_TRUE(contains(e.report(), "cannot handle 7")) << e.report();
        EXPECT_TRUE(contains(e.report(), GetParam())) << e.report();
    }
}

TEST_P(Map, NonStandardExceptionIsUnknownCppException) {
    pj::Parallel par = parallel();
    try {
        par.map_indexed(4, [](std::size_t i) {
            if (i == 2) {
                throw 42;
            }
            return i;
        });
        FAIL() << "no exception";
    } catch (const pj::TaskError& e) {
        EXPECT_EQ(e.task_index(), 2);
        EXPECT_TRUE(contains(e.what(), "unknown C++ exception")) << e.what();
    }
}

TEST_P(Map, FailingTaskIndexAmongMany) {
    pj::Parallel par = parallel();
    try {
        par.map_indexed(1000, [](std::size_t i) {
            if (i == 537) {
                throw std::runtime_error("bad 537");
            }
            return i;
        });
        FAIL() << "no exception";
    } catch (const pj::TaskError& e) {
        EXPECT_EQ(e.task_index(), 537);
        EXPECT_TRUE(contains(e.what(), "bad 537")) << e.what();
    }
}

TEST_P(Map, ReusableAfterErrors) {
    pj::Parallel par = parallel();
    for (int round = 0; round < 3; round++) {
        EXPECT_THROW(par.map_indexed(20, [](std::size_t i) -> int {
            if (i == 5) {
                throw std::runtime_error("boom");
            }
            return 0;
        }),
                     pj::TaskError);
        EXPECT_EQ(par.map({1, 2, 3}, [round](int x) { return x + round; }), (std::vector<int>{1 + round, 2 + round, 3 + round}));
    }
}

TEST_P(Map, RangeExceptionIsRethrownAsItIs) {
    pj::Parallel par = parallel();
    EXPECT_THROW(par.map(ThrowingRange{100, 5}, [](int x) { return x; }), std::out_of_range);
    EXPECT_EQ(par.map(ThrowingRange{3, -1}, [](int x) { return x; }), (std::vector<int>{0, 1, 2}));
}

TEST_P(Map, CodecFailureInATaskIsTaskError) {
    pj::Parallel par = parallel();
    // A list, not a vector: map reads a random-access range's elements in place (no codec), but
    // sends the elements of other ranges to the tasks as bytes.
    std::list<Even> in{{0}, {2}, {3}, {4}};
    try {
        par.map(in, [](const Even& e) { return e.value; });
        FAIL() << "no exception";
    } catch (const pj::TaskError& e) {
        EXPECT_EQ(e.task_index(), 2);
        EXPECT_TRUE(contains(e.what(), "Even: got 3")) << e.what();
    }
}

TEST_P(Map, ResultSizeMismatchIsInvalidArgumentWithIndex) {
    pj::Parallel par = parallel();
    // A call through the C API on the same object: each result is 4 bytes.
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(pj_parallel_submit(par.capi(), four_bytes, nullptr, nullptr, 0, nullptr), PJ_STATUS_OK);
    }
    pj_results_t* raw = nullptr;
    ASSERT_EQ(pj_parallel_collect(par.capi(), &raw, nullptr), PJ_STATUS_OK);
    pj::Results results(raw);
    ASSERT_EQ(results.size(), 3u);
    EXPECT_EQ(results.get<std::int32_t>(1), 42);
    EXPECT_EQ(results[2].size, 4u);
    try {
        results.get<double>(1);
        FAIL() << "no exception";
    } catch (const pj::InvalidArgument& e) {
        EXPECT_EQ(e.task_index(), 1);
        EXPECT_TRUE(contains(e.what(), "expected 8 bytes")) << e.what();
    }
    EXPECT_THROW(results.bytes(3), pj::InvalidArgument);
    // and the typed API still works on the object afterwards
    EXPECT_EQ(par.map({2.0}, [](double x) { return x * x; }), (std::vector<double>{4.0}));
}

TEST_P(Map, WorkerDiedErrorWhenAFunctionAborts) {
    if (!processes()) {
        GTEST_SKIP() << "std::abort() on a worker thread would end the test program";
    }
    pj::Parallel par = parallel();
    try {
        par.map_indexed(8, [](std::size_t i) {
            if (i == 3) {
                std::abort();
            }
            return i;
        });
        FAIL() << "no exception";
    } catch (const pj::WorkerDiedError& e) {
        EXPECT_EQ(e.status(), PJ_STATUS_WORKER_DIED);
        EXPECT_EQ(e.task_index(), 3);
        EXPECT_TRUE(contains(e.report(), "SIGABRT")) << e.report();
    }
    EXPECT_EQ(par.map({1}, [](int x) { return x; }), (std::vector<int>{1}));
}

// A crashing C++ function with a mangled name (namespace, std::string parameter): its backtrace
// frame must read as C++, not as "_ZN...".
namespace pj_crash_site {
[[gnu::noinline]] std::size_t digest(const std::string& text, std::size_t i) {
    if (i == 2) {
        std::abort();
    }
    return text.size() + i;
}
}  // namespace pj_crash_site

TEST_P(Map, ACrashBacktraceShowsCppNamesDemangled) {
    if (!processes()) {
        GTEST_SKIP() << "std::abort() on a worker thread would end the test program";
    }
    pj::Parallel par = parallel();
    const std::string text = "some text";
    try {
        par.map_indexed(4, [&text](std::size_t i) { return pj_crash_site::digest(text, i); });
        FAIL() << "no exception";
    } catch (const pj::WorkerDiedError& e) {
        EXPECT_EQ(e.task_index(), 2);
        EXPECT_TRUE(contains(e.report(), "pj_crash_site::digest(")) << e.report();
        EXPECT_FALSE(contains(e.report(), "pj_crash_site6digest")) << e.report();
    }
}

TEST_P(Map, TaskUsingItsOwnParallelGetsBusy) {
    pj::Parallel par = parallel();
    pj::Parallel* self = &par;
    try {
        par.map_indexed(2, [self](std::size_t i) { return self->map({1}, [](int x) { return x; }).size() + i; });
        FAIL() << "no exception";
    } catch (const pj::TaskError& e) {
        EXPECT_TRUE(contains(e.what(), "already running")) << e.what();
    }
}

TEST_P(Map, ThreadsBackendRunsConcurrently) {
    if (processes()) {
        GTEST_SKIP() << "a rendezvous in memory needs shared memory";
    }
    // Two tasks that each wait for the other can only finish on two workers at once.
    pj::Parallel par(options().batch_size(1));
    std::atomic<int> arrived{0};
    std::vector<int> out = par.map_indexed(2, [&arrived](std::size_t) {
        arrived.fetch_add(1);
        for (int spin = 0; spin < 10000 && arrived.load() < 2; spin++) {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        return arrived.load();
    });
    EXPECT_EQ(out, (std::vector<int>{2, 2}));
}

TEST(MapDefaults, DefaultParallelRunsOnTheCallersThread) {
    pj::Parallel par;  // n_jobs unset: 1
    const std::thread::id me = std::this_thread::get_id();
    std::vector<int> same = par.map_indexed(5, [me](std::size_t) { return std::this_thread::get_id() == me ? 1 : 0; });
    EXPECT_EQ(same, (std::vector<int>{1, 1, 1, 1, 1}));
}

}  // namespace
