// Options::progress on both backends: one report per task, in order, on the calling thread; the
// two signatures; the function's lifetime (shared by Options, Parallel and ScopedConfig); and a
// progress function that throws (the call is cancelled and the exception rethrown as it is).
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

using pj_test::contains;
using pj_test::OnBackend;

// What a progress function saw: one entry per report.
struct Report {
    std::uint64_t completed;
    std::int64_t total;
    double elapsed;
    std::thread::id thread;
};

// Checks the reports of a call of `n` tasks made on this thread. A map() knows the total by its
// last report; a stream may not (pj learns the total when it pulls past the last input, and a
// stream pulls only as its reader asks for more).
void expect_one_report_per_task(const std::vector<Report>& reports, std::size_t n, bool total_at_end = true) {
    ASSERT_EQ(reports.size(), n);
    double elapsed = 0;
    for (std::size_t i = 0; i < n; i++) {
        EXPECT_EQ(reports[i].completed, i + 1) << "report " << i;
        EXPECT_TRUE(reports[i].total == -1 || reports[i].total == static_cast<std::int64_t>(n))
            << "report " << i << ": total " << reports[i].total;
        EXPECT_GE(reports[i].elapsed, elapsed) << "report " << i;
        elapsed = reports[i].elapsed;
        EXPECT_EQ(reports[i].thread, std::this_thread::get_id()) << "report " << i;
    }
    if (total_at_end) {
        EXPECT_EQ(reports.back().total, static_cast<std::int64_t>(n));
    }
}

class ProgressFunction : public OnBackend {};
PJ_ON_EVERY_BACKEND(ProgressFunction);

TEST_P(ProgressFunction, OneReportPerTaskInOrderOnTheCallingThread) {
    std::vector<Report> reports;  // written on this thread only: even processes see it
    pj::Parallel par(options().progress([&reports](std::uint64_t completed, std::int64_t total, double elapsed) {
        reports.push_back({completed, total, elapsed, std::this_thread::get_id()});
    }));
    const std::size_t n = 500;
    std::vector<std::size_t> out = par.map_indexed(n, [](std::size_t i) { return i * 2; });
    ASSERT_EQ(out.size(), n);
    EXPECT_EQ(out[n - 1], 2 * (n - 1));
    expect_one_report_per_task(reports, n);

    // a second call reports from 1 again
    reports.clear();
    EXPECT_EQ(par.map({1, 2, 3}, [](int x) { return x; }), (std::vector<int>{1, 2, 3}));
    expect_one_report_per_task(reports, 3);
}

TEST_P(ProgressFunction, TakesAProgressStruct) {
    std::vector<Report> reports;
    pj::Parallel par(options().batch_size(1).progress([&reports](const pj::Progress& p) {
        EXPECT_EQ(p.total_known(), p.total >= 0);
        reports.push_back({p.completed, p.total, p.elapsed_seconds, std::this_thread::get_id()});
    }));
    std::vector<int> inputs(40, 7);
    EXPECT_EQ(par.map(inputs, [](int x) { return x + 1; }), std::vector<int>(40, 8));
    expect_one_report_per_task(reports, 40);
}

TEST_P(ProgressFunction, ReportsWhileAStreamIsIterated) {
    std::vector<Report> reports;
    pj::Parallel par(options().progress([&reports](std::uint64_t completed, std::int64_t total, double elapsed) {
        reports.push_back({completed, total, elapsed, std::this_thread::get_id()});
    }));
    std::size_t results = 0;
    for (auto&& [i, r] : par.imap(std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8}, [](int x) { return x * x; })) {
        EXPECT_EQ(r, static_cast<int>((i + 1) * (i + 1)));
        EXPECT_GE(reports.size(), i + 1) << "the task of result " << i << " was reported first";
        results++;
    }
    EXPECT_EQ(results, 8u);
    expect_one_report_per_task(reports, 8, /*total_at_end=*/false);
}

// An input with a length (a vector, map_indexed's count, a stream over a vector) is announced to
// pj (pj_parallel_expect): every report knows the total, not just the last one.
TEST_P(ProgressFunction, ASizedInputGivesTheTotalFromTheFirstReport) {
    std::vector<Report> reports;
    pj::Parallel par(options().batch_size(1).progress([&reports](std::uint64_t completed, std::int64_t total, double elapsed) {
        reports.push_back({completed, total, elapsed, std::this_thread::get_id()});
    }));
    auto all_know = [&reports](std::int64_t n) {
        EXPECT_FALSE(reports.empty());
        for (const Report& r : reports) {
            EXPECT_EQ(r.total, n) << "report " << r.completed;
        }
        reports.clear();
    };
    par.map_indexed(30, [](std::size_t i) { return i; });
    all_know(30);
    const std::vector<int> inputs(25, 1);
    par.map(inputs, [](int x) { return x; });
    all_know(25);
    for (auto&& [i, r] : par.imap(std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8}, [](int x) { return x; })) {
        (void)i;
        (void)r;
    }
    all_know(8);
}

TEST_P(ProgressFunction, LivesAsLongAsTheParallel) {
    auto calls = std::make_shared<std::uint64_t>(0);
    // The options (and the only other reference to the function) die before the call.
    pj::Parallel par = [this, calls] {
        pj::Options opts = options();
        opts.progress([calls](const pj::Progress& p) { *calls = p.completed; });
        return pj::Parallel(opts);
    }();
    EXPECT_EQ(calls.use_count(), 2);  // the copy inside the function, kept by par
    pj::Parallel moved = std::move(par);
    moved.map_indexed(25, [](std::size_t i) { return i; });
    EXPECT_EQ(*calls, 25u);
    {
        auto stream = moved.imap(std::vector<int>{1, 2}, [](int x) { return x; });
        pj::Parallel gone = std::move(moved);  // the stream outlives every Parallel
    }
    EXPECT_EQ(calls.use_count(), 1);  // freed with the executor
}

TEST_P(ProgressFunction, AParallelKeepsTheFunctionItWasMadeWith) {
    int first = 0;
    int second = 0;
    pj::Options opts = options();
    opts.progress([&first](const pj::Progress&) { first++; });
    pj::Parallel a(opts);
    opts.progress([&second](const pj::Progress&) { second++; });
    pj::Parallel b(opts);
    opts.progress(nullptr);
    pj::Parallel c(opts);
    a.map_indexed(3, [](std::size_t i) { return i; });
    EXPECT_EQ(first, 3);
    EXPECT_EQ(second, 0);
    b.map_indexed(4, [](std::size_t i) { return i; });
    c.map_indexed(5, [](std::size_t i) { return i; });
    EXPECT_EQ(first, 3);
    EXPECT_EQ(second, 4);
}

TEST_P(ProgressFunction, InheritedFromAScopedConfigAndKeptAfterTheScope) {
    std::uint64_t last = 0;
    pj::Parallel par;
    {
        pj::ScopedConfig scope(pj::Options().n_jobs(2).backend(GetParam()).progress(
            [&last](std::uint64_t completed, std::int64_t, double) { last = completed; }));
        par = pj::Parallel();
    }
    par.map_indexed(12, [](std::size_t i) { return i; });
    EXPECT_EQ(last, 12u);
}

TEST_P(ProgressFunction, ThrowingCancelsTheCallAndIsRethrownAsItIs) {
    std::atomic<int> ran{0};  // counted by the threads backend only
    std::uint64_t reports = 0;
    bool armed = true;
    pj::Parallel par(options().batch_size(1).progress([&](const pj::Progress& p) {
        reports++;
        if (armed && p.completed == 3) {
            throw std::length_error("enough at " + std::to_string(p.completed));
        }
    }));
    const std::size_t n = 400;
    auto slow = [&ran](std::size_t i) {
        ran.fetch_add(1);
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        return i;
    };
    try {
        par.map_indexed(n, slow);
        FAIL() << "no exception";
    } catch (const pj::Error& e) {
        FAIL() << "a pj::Error instead of the function's own exception: " << e.what();
    } catch (const std::length_error& e) {
        EXPECT_STREQ(e.what(), "enough at 3");
    }
    EXPECT_EQ(reports, 3u) << "not called again once it threw";
    if (!processes()) {
        EXPECT_LT(ran.load(), static_cast<int>(n)) << "the call was not cancelled";
    }

    // the object (and the function) work for the next call
    armed = false;
    reports = 0;
    EXPECT_EQ(par.map_indexed(10, [](std::size_t i) { return i; }).size(), 10u);
    EXPECT_EQ(reports, 10u);
}

TEST_P(ProgressFunction, ANonStandardExceptionIsRethrownToo) {
    pj::Parallel par(options().progress([](std::uint64_t completed, std::int64_t, double) {
        if (completed == 1) {
            throw 42;
        }
    }));
    try {
        par.map({1, 2, 3}, [](int x) { return x; });
        FAIL() << "no exception";
    } catch (int thrown) {
        EXPECT_EQ(thrown, 42);
    }
    // a throw on the very last report: the call is over, the exception still comes out
    pj::Parallel last(options().progress([](const pj::Progress& p) {
        if (p.total_known() && p.completed == static_cast<std::uint64_t>(p.total)) {
            throw std::runtime_error("last");
        }
    }));
    EXPECT_THROW(last.map({1, 2, 3}, [](int x) { return x; }), std::runtime_error);
    EXPECT_THROW(last.map({4}, [](int x) { return x; }), std::runtime_error);
}

TEST_P(ProgressFunction, ThrowingDuringAStreamEndsIt) {
    pj::Parallel par(options().progress([](const pj::Progress& p) {
        if (p.completed == 2) {
            throw std::logic_error("stream stop");
        }
    }));
    std::vector<int> inputs(200, 1);
    auto stream = par.imap(inputs, [](int x) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        return x;
    });
    std::size_t seen = 0;
    try {
        for (auto&& [i, r] : stream) {
            (void)i;
            seen += static_cast<std::size_t>(r);
        }
        FAIL() << "no exception";
    } catch (const std::logic_error& e) {
        EXPECT_STREQ(e.what(), "stream stop");
    }
    EXPECT_LT(seen, inputs.size());
    EXPECT_TRUE(stream.done());
    // the executor is free again: no BUSY, no leftover cancellation (one task: one report)
    EXPECT_EQ(par.map({5}, [](int x) { return x; }), (std::vector<int>{5}));
}

TEST_P(ProgressFunction, WorksWithTheProgressBarAndVerboseLines) {
    std::uint64_t last = 0;
    pj::Parallel par(options().progress_bar(true).verbose(1).progress(
        [&last](const pj::Progress& p) { last = p.completed; }));
    EXPECT_EQ(par.map_indexed(30, [](std::size_t i) { return i; }).size(), 30u);
    EXPECT_EQ(last, 30u);
}

TEST(ProgressSequential, ReportsOnTheCallingThreadWithOneJob) {
    std::vector<Report> reports;
    pj::Parallel par(pj::Options().progress([&reports](std::uint64_t completed, std::int64_t total, double elapsed) {
        reports.push_back({completed, total, elapsed, std::this_thread::get_id()});
    }));
    EXPECT_EQ(par.map_indexed(6, [](std::size_t i) { return i; }).size(), 6u);
    expect_one_report_per_task(reports, 6);

    pj::Parallel throwing(pj::Options().progress([](const pj::Progress& p) {
        if (p.completed == 2) {
            throw std::runtime_error("sequential stop");
        }
    }));
    int ran = 0;
    EXPECT_THROW(throwing.map_indexed(100,
                                      [&ran](std::size_t i) {
                                          ran++;
                                          return i;
                                      }),
                 std::runtime_error);
    EXPECT_LT(ran, 100);
}

TEST(ProgressSequential, AStdFunctionAndAPlainFunctionAreAccepted) {
    static std::uint64_t seen = 0;
    struct Plain {
        static void report(std::uint64_t completed, std::int64_t, double) { seen = completed; }
    };
    pj::Parallel plain(pj::Options().progress(Plain::report));
    plain.map({1, 2}, [](int x) { return x; });
    EXPECT_EQ(seen, 2u);
    std::function<void(const pj::Progress&)> f = [](const pj::Progress& p) { seen = 10 + p.completed; };
    pj::Parallel wrapped(pj::Options().progress(f));
    wrapped.map({1, 2, 3}, [](int x) { return x; });
    EXPECT_EQ(seen, 13u);
    // a null function pointer removes the function
    void (*none)(const pj::Progress&) = nullptr;
    seen = 0;
    pj::Parallel removed(pj::Options().progress(Plain::report).progress(none));
    removed.map({1, 2}, [](int x) { return x; });
    EXPECT_EQ(seen, 0u);
    // an empty std::function throws std::bad_function_call when called: rethrown from map
    pj::Parallel empty(pj::Options().progress(std::function<void(const pj::Progress&)>()));
    EXPECT_THROW(empty.map({1}, [](int x) { return x; }), std::bad_function_call);
}

}  // namespace
