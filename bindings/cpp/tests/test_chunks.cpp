// Parallel::map, map_indexed and map_collect over random-access ranges: chunks of elements per pj
// task (Options::chunk_size), values without a pj::codec on threads and sequentially, and
// everything a caller sees staying per element (results, errors, outcomes, progress).
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <functional>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <signal.h>
#include <unistd.h>

#include "support.hpp"

namespace {

using pj_test::contains;
using pj_test::OnBackend;

// Not trivially copyable, and no pj::codec.
struct Record {
    std::string name;
    std::vector<int> values;
};
static_assert(!pj::has_codec_v<Record>);
static_assert(!pj::has_codec_v<std::vector<Record>>);
static_assert(pj::has_codec_v<int> && pj::has_codec_v<std::string>);
static_assert(pj::has_codec_v<std::vector<double>>);

// Not default-constructible either (map keeps its results in std::optional slots).
struct Labelled {
    explicit Labelled(std::string text) : label(std::move(text)) {}
    std::string label;
};

Record grow(const Record& r) {
    Record out{r.name + "+", r.values};
    out.values.push_back(static_cast<int>(r.values.size()));
    return out;
}

std::vector<Record> records(std::size_t n) {
    std::vector<Record> in;
    for (std::size_t i = 0; i < n; i++) {
        in.push_back(Record{"r" + std::to_string(i), std::vector<int>(i % 4, static_cast<int>(i))});
    }
    return in;
}

void expect_grown(const std::vector<Record>& in, const std::vector<Record>& out) {
    ASSERT_EQ(out.size(), in.size());
    for (std::size_t i = 0; i < in.size(); i++) {
        EXPECT_EQ(out[i].name, in[i].name + "+") << i;
        ASSERT_EQ(out[i].values.size(), in[i].values.size() + 1) << i;
        EXPECT_EQ(out[i].values.back(), static_cast<int>(in[i].values.size())) << i;
    }
}

// ---- no codec on threads and sequentially --------------------------------------------------

class NoCodec : public ::testing::TestWithParam<std::string> {
protected:
    pj::Options options() const {
        return GetParam() == "sequential" ? pj::Options().backend("sequential")
                                          : pj::Options().n_jobs(2).backend("threads");
    }
};
INSTANTIATE_TEST_SUITE_P(InProcess, NoCodec, ::testing::Values("threads", "sequential"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                             return info.param;
                         });

TEST_P(NoCodec, MapsANonTriviallyCopyableTypeWithoutACodec) {
    pj::Parallel par(options());
    const std::vector<Record> in = records(1000);
    expect_grown(in, par.map(in, grow));
    expect_grown(in, par.map(in, [](const Record& r) { return grow(r); }));
    // chunk sizes 1 (a task per element), 7 (a short last chunk) and larger than the input
    for (std::size_t chunk : {1, 7, 5000}) {
        pj::Parallel sized(options().chunk_size(chunk));
        expect_grown(in, sized.map(in, grow));
    }
    // a std::deque, and results that are not default-constructible, and bools
    std::deque<Record> deque(in.begin(), in.begin() + 10);
    std::vector<Labelled> labels = par.map(deque, [](const Record& r) { return Labelled(r.name); });
    ASSERT_EQ(labels.size(), 10u);
    EXPECT_EQ(labels[9].label, "r9");
    std::vector<bool> odd = par.map_indexed(101, [](std::size_t i) { return i % 2 == 1; });
    ASSERT_EQ(odd.size(), 101u);
    for (std::size_t i = 0; i < odd.size(); i++) {
        EXPECT_EQ(odd[i], i % 2 == 1) << i;
    }
    EXPECT_TRUE(par.map(std::vector<Record>{}, grow).empty());
}

TEST_P(NoCodec, MapIndexedAndMapCollectWithoutACodec) {
    pj::Parallel par(options().on_error("collect").chunk_size(6));
    std::vector<Record> made = par.map_indexed(20, [](std::size_t i) {
        return Record{std::string(i, 'x'), {static_cast<int>(i)}};
    });
    ASSERT_EQ(made.size(), 20u);
    EXPECT_EQ(made[19].name, std::string(19, 'x'));
    EXPECT_EQ(made[19].values, (std::vector<int>{19}));

    auto out = par.map_collect(records(40), [](const Record& r) {
        if (r.values.size() == 3) {
            throw std::runtime_error("three in " + r.name);
        }
        return grow(r);
    });
    ASSERT_EQ(out.size(), 40u);
    for (std::size_t i = 0; i < out.size(); i++) {
        if (i % 4 == 3) {
            ASSERT_FALSE(out[i].ok()) << i;
            EXPECT_EQ(out[i].error()->task_index(), static_cast<std::int64_t>(i));
            EXPECT_TRUE(contains(out[i].error()->what(), "three in r" + std::to_string(i)))
                << out[i].error()->what();
        } else {
            ASSERT_TRUE(out[i].ok()) << i;
            EXPECT_EQ(out[i].value().name, "r" + std::to_string(i) + "+");
        }
    }
}

TEST(NoCodecOnProcesses, ResultsWithoutACodecAreInvalidArgumentInputsNeedNone) {
    pj::Parallel par(pj::Options().n_jobs(2).backend("processes"));
    // Inputs are read in the forked workers' copy of the caller's memory: no codec needed.
    const std::vector<Record> in = records(50);
    std::vector<std::size_t> sizes = par.map(in, [](const Record& r) { return r.values.size(); });
    ASSERT_EQ(sizes.size(), 50u);
    EXPECT_EQ(sizes[7], 3u);
    // Results come back as bytes: without a codec, a clear error, not a crash.
    try {
        par.map(in, grow);
        FAIL() << "no exception";
    } catch (const pj::InvalidArgument& e) {
        EXPECT_TRUE(contains(e.what(), "no pj::codec")) << e.what();
        EXPECT_TRUE(contains(e.what(), "\"threads\"")) << e.what();
    }
    EXPECT_EQ(par.map_indexed(3, [](std::size_t i) { return i * 3; }),
              (std::vector<std::size_t>{0, 3, 6}));
}

// ---- chunks on both backends -----------------------------------------------------------------

class Chunks : public OnBackend {};
PJ_ON_EVERY_BACKEND(Chunks);

TEST_P(Chunks, ResultsInInputOrderWithCodecs) {
    for (std::size_t chunk : {0, 1, 3, 64, 10000}) {
        pj::Parallel par(options().chunk_size(chunk));
        const std::size_t n = 1000;
        std::vector<std::string> out =
            par.map_indexed(n, [](std::size_t i) { return std::string(i % 7, 'a') + std::to_string(i); });
        ASSERT_EQ(out.size(), n) << chunk;
        for (std::size_t i = 0; i < n; i++) {
            ASSERT_EQ(out[i], std::string(i % 7, 'a') + std::to_string(i)) << chunk;
        }
        std::vector<double> in(333);
        for (std::size_t i = 0; i < in.size(); i++) {
            in[i] = static_cast<double>(i) / 4;
        }
        EXPECT_EQ(par.map(in, [](double x) { return x * 4; })[332], 332.0) << chunk;
    }
}

TEST_P(Chunks, AFailureNamesTheElementNotTheChunk) {
    pj::Parallel par(options().chunk_size(10));
    try {
        par.map_indexed(100, [](std::size_t i) {
            if (i == 37) {
                throw std::invalid_argument("bad element " + std::to_string(i));
            }
            return i;
        });
        FAIL() << "no exception";
    } catch (const pj::TaskError& e) {
        EXPECT_EQ(e.task_index(), 37);
        EXPECT_EQ(e.callback_code(), pj::exception_code);
        EXPECT_TRUE(contains(e.what(), "task 37 failed")) << e.what();
        EXPECT_TRUE(contains(e.what(), "bad element 37")) << e.what();
        EXPECT_FALSE(contains(e.what(), "[pj.hpp")) << e.what();
        EXPECT_TRUE(contains(e.report(), "task index: 37\n")) << e.report();
        EXPECT_FALSE(contains(e.report(), "task index: 3\n")) << e.report();
        EXPECT_FALSE(contains(e.report(), "[pj.hpp")) << e.report();
    }
    // a non-standard exception, in the first element of a chunk
    try {
        par.map(std::vector<int>(30, 1), [](int) -> int { throw 5; });
        FAIL() << "no exception";
    } catch (const pj::TaskError& e) {
        EXPECT_EQ(e.task_index() % 10, 0);
        EXPECT_TRUE(contains(e.what(), "unknown C++ exception")) << e.what();
    }
}

TEST_P(Chunks, MapCollectGivesEachElementItsOwnOutcome) {
    pj::Parallel par(options().on_error("collect").chunk_size(8));
    const std::size_t n = 50;
    std::atomic<int> ran{0};  // counted by the threads backend only
    auto out = par.map_indexed_collect(n, [&ran](std::size_t i) {
        ran++;
        if (i % 5 == 3) {
            throw std::invalid_argument("no " + std::to_string(i));
        }
        return std::to_string(i * 10);
    });
    ASSERT_EQ(out.size(), n);
    for (std::size_t i = 0; i < n; i++) {
        if (i % 5 == 3) {
            ASSERT_FALSE(out[i].ok()) << i;
            EXPECT_EQ(out[i].status(), PJ_STATUS_TASK_FAILED);
            EXPECT_EQ(out[i].error()->task_index(), static_cast<std::int64_t>(i));
            EXPECT_EQ(out[i].error()->callback_code(), pj::exception_code);
            EXPECT_TRUE(contains(out[i].error()->what(), "no " + std::to_string(i)));
            EXPECT_TRUE(contains(out[i].error()->report(), "task index: " + std::to_string(i)));
            EXPECT_THROW((void)out[i].value(), pj::TaskError);
        } else {
            ASSERT_TRUE(out[i].ok()) << i << ": " << out[i].error()->what();
            EXPECT_EQ(out[i].value(), std::to_string(i * 10));
        }
    }
    if (!processes()) {
        EXPECT_EQ(ran.load(), static_cast<int>(n)) << "every element runs, failures or not";
    }
    // map() under collect: every element runs, then the first failure is thrown
    try {
        par.map_indexed(n, [](std::size_t i) -> std::size_t {
            if (i == 12 || i == 41) {
                throw std::runtime_error("late " + std::to_string(i));
            }
            return i;
        });
        FAIL() << "no exception";
    } catch (const pj::TaskError& e) {
        EXPECT_EQ(e.task_index(), 12);
        EXPECT_TRUE(contains(e.what(), "late 12")) << e.what();
    }
}

TEST_P(Chunks, ProgressCountsElementsWithTheTotalFromTheFirstReport) {
    std::vector<pj::Progress> reports;
    pj::Parallel par(options().chunk_size(16).progress(
        [&reports](const pj::Progress& p) { reports.push_back(p); }));
    const std::size_t n = 100;
    ASSERT_EQ(par.map_indexed(n, [](std::size_t i) { return i; }).size(), n);
    ASSERT_EQ(reports.size(), n);
    for (std::size_t i = 0; i < n; i++) {
        EXPECT_EQ(reports[i].completed, i + 1);
        EXPECT_EQ(reports[i].total, static_cast<std::int64_t>(n)) << "report " << i;
    }
}

TEST_P(Chunks, AChunkRunsItsElementsInOrderInOneTask) {
    // One chunk for the whole input: every element runs in the same task, hence on one thread of
    // one process, in input order (recorded in the results, so it works on processes too).
    pj::Parallel par(options().chunk_size(1000));
    std::atomic<std::uint64_t> clock{0};
    struct Seen {
        std::size_t thread;
        std::uint64_t tick;
    };
    auto out = par.map_indexed(200, [&clock](std::size_t) {
        return Seen{std::hash<std::thread::id>()(std::this_thread::get_id()), clock.fetch_add(1)};
    });
    ASSERT_EQ(out.size(), 200u);
    for (std::size_t i = 1; i < out.size(); i++) {
        EXPECT_EQ(out[i].thread, out[0].thread) << i;
        EXPECT_EQ(out[i].tick, out[i - 1].tick + 1) << i;
    }
}

TEST_P(Chunks, AScopedConfigPassesOnChunkSizeAndOnError) {
    pj::ScopedConfig scope(pj::Options().on_error("collect").chunk_size(4));
    pj::Parallel par = parallel();
    auto out = par.map_indexed_collect(10, [](std::size_t i) {
        if (i == 5) {
            throw std::runtime_error("five");
        }
        return i;
    });
    ASSERT_EQ(out.size(), 10u);
    EXPECT_TRUE(out[4].ok());
    EXPECT_FALSE(out[5].ok());
    EXPECT_EQ(out[5].error()->task_index(), 5);
    EXPECT_TRUE(out[6].ok()) << "the rest of the chunk ran";
    EXPECT_EQ(out[7].value(), 7u);
}

TEST(ChunksOnProcesses, ADeadWorkerNamesTheFirstElementOfItsChunk) {
    pj::Parallel par(pj::Options().n_jobs(2).backend("processes").chunk_size(10));
    try {
        par.map_indexed(40, [](std::size_t i) {
            if (i == 23) {
                std::abort();
            }
            return i;
        });
        FAIL() << "no exception";
    } catch (const pj::WorkerDiedError& e) {
        EXPECT_EQ(e.task_index(), 20);
        EXPECT_TRUE(contains(e.report(), "task index: 20\n")) << e.report();
    }
}

TEST(ChunksOnProcesses, KeptWorkersGetTheElementsAsBytes) {
    // Kept workers have the memory of the first call: map sends later calls' elements as bytes.
    pj::Parallel par(pj::Options().n_jobs(2).backend("processes").keep_workers(true));
    EXPECT_EQ(par.map(std::vector<int>{1, 2, 3}, [](int x) { return x * 2; }),
              (std::vector<int>{2, 4, 6}));
    std::vector<int> later(100);
    for (int i = 0; i < 100; i++) {
        later[static_cast<std::size_t>(i)] = 1000 + i;
    }
    std::vector<int> out = par.map(later, [](int x) { return x + 1; });
    ASSERT_EQ(out.size(), 100u);
    EXPECT_EQ(out[0], 1001);
    EXPECT_EQ(out[99], 1100);
}

// The pids of the worker processes that ran a call of 40 elements.
std::set<int> worker_pids(pj::Parallel& par) {
    std::vector<int> pids = par.map_indexed(40, [](std::size_t) { return static_cast<int>(getpid()); });
    return {pids.begin(), pids.end()};
}

TEST(KeepWorkers, ReusesTheWorkerProcessesAcrossCalls) {
    // Issue 18 item 5: pj::Parallel lives across calls, and keep_workers (a pj::Options setter)
    // keeps its worker processes between them; destroying it reaps them.
    std::set<int> all;
    {
        pj::Parallel par(pj::Options().n_jobs(2).backend("processes").keep_workers(true).chunk_size(1));
        for (int call = 0; call < 3; call++) {
            for (int pid : worker_pids(par)) {
                EXPECT_NE(pid, getpid());
                all.insert(pid);
            }
            for (int pid : all) {
                EXPECT_EQ(kill(pid, 0), 0) << "worker " << pid << " alive between calls";
            }
        }
        EXPECT_LE(all.size(), 2u) << "3 calls on 2 kept workers";
    }
    for (int pid : all) {
        errno = 0;
        EXPECT_EQ(kill(pid, 0), -1);
        EXPECT_EQ(errno, ESRCH) << "worker " << pid << " reaped once the executor is gone";
    }
}

TEST(KeepWorkers, WithoutItEachCallForksItsOwnWorkers) {
    // The check above can fail: without keep_workers every call has new worker processes.
    pj::Parallel par(pj::Options().n_jobs(2).backend("processes").chunk_size(1));
    std::set<int> all;
    for (int call = 0; call < 3; call++) {
        for (int pid : worker_pids(par)) {
            all.insert(pid);
        }
    }
    EXPECT_GE(all.size(), 3u);
}

}  // namespace
