// pj::Options (every setter, validation), pj::ScopedConfig, the error classes, and the move-only
// owners of the C handles.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "support.hpp"

namespace {

using pj_test::contains;

// Every owner is move-only (and moves never throw); the exceptions are copyable without throwing.
template <typename T>
constexpr bool move_only = !std::is_copy_constructible_v<T> && !std::is_copy_assignable_v<T> &&
                           std::is_nothrow_move_constructible_v<T> && std::is_nothrow_move_assignable_v<T>;
static_assert(move_only<pj::Options>);
static_assert(move_only<pj::Parallel>);
static_assert(move_only<pj::Results>);
static_assert(move_only<pj::ErrorHandle>);
static_assert(move_only<pj::Stream<int>>);
static_assert(!std::is_copy_constructible_v<pj::ScopedConfig> && !std::is_move_constructible_v<pj::ScopedConfig>);
static_assert(std::is_nothrow_copy_constructible_v<pj::Error>);
static_assert(std::is_nothrow_copy_constructible_v<pj::TaskError>);
static_assert(std::is_base_of_v<std::runtime_error, pj::Error>);
static_assert(std::is_base_of_v<pj::Error, pj::TaskError> && std::is_base_of_v<pj::Error, pj::TimeoutError> &&
              std::is_base_of_v<pj::Error, pj::WorkerDiedError> && std::is_base_of_v<pj::Error, pj::CancelledError> &&
              std::is_base_of_v<pj::Error, pj::InvalidArgument>);

// The message of the InvalidArgument that `set` throws (empty when it throws nothing).
template <typename Set>
std::string invalid(Set set) {
    pj::Options opts;
    try {
        set(opts);
    } catch (const pj::InvalidArgument& e) {
        EXPECT_EQ(e.status(), PJ_STATUS_INVALID_ARGUMENT);
        EXPECT_EQ(e.task_index(), -1);
        return e.what();
    }
    return "";
}

TEST(Options, EverySetterAcceptsJoblibValues) {
    pj::Options opts;
    opts.n_jobs(2)
        .n_jobs(-1)
        .backend("threading")
        .backend("loky")
        .prefer("threads")
        .prefer("none")
        .require("none")
        .verbose(0)
        .timeout(2.5)
        .timeout(INFINITY)
        .timeout(std::chrono::milliseconds(1500))
        .pre_dispatch("2*n_jobs")
        .pre_dispatch(8)
        .pre_dispatch("all")
        .batch_size(16)
        .batch_size("auto")
        .temp_folder("/tmp")
        .max_nbytes("1M")
        .max_nbytes(std::uint64_t{4096})
        .max_nbytes("none")
        .mmap_mode("r+")
        .mmap_mode("none")
        .stack_size(std::size_t{16} << 20)
        .stack_size("8M")
        .stack_size("none")
        .max_tasks_per_child(10)
        .max_tasks_per_child("none")
        .worker_memory_limit(std::uint64_t{512} << 20)
        .worker_memory_limit("1.5G")
        .worker_memory_limit("none")
        .idle_worker_timeout(1.5)
        .idle_worker_timeout(INFINITY)
        .idle_worker_timeout(std::chrono::seconds(300))
        .return_as("generator")
        .keep_workers(false)
        .on_error("collect")
        .on_error("raise")
        .handle_sigint(true)
        .handle_sigint(false)
        .progress_bar(true)
        .progress_bar(false)
        .progress([](const pj::Progress&) {})
        .progress([](std::uint64_t, std::int64_t, double) {})
        .progress(nullptr)
        .set("on_error", "collect")
        .set("n_jobs", "none")
        .set("timeout", "none");
    EXPECT_NE(opts.capi(), nullptr);
    // and on a temporary, straight into a Parallel
    pj::Parallel par(pj::Options().n_jobs(2).backend("threads").batch_size(4).pre_dispatch("3*n_jobs"));
    EXPECT_EQ(par.map({1, 2, 3}, [](int x) { return x * x; }), (std::vector<int>{1, 4, 9}));
    auto kept = pj::Options().n_jobs(3);  // a chain on a temporary moves
    EXPECT_EQ(kept.effective_n_jobs(), 3u);
}

TEST(Options, BadValuesThrowInvalidArgumentQuotingThem) {
    EXPECT_TRUE(contains(invalid([](pj::Options& o) { o.set("n_jobs", "zero"); }), "zero"));
    EXPECT_TRUE(contains(invalid([](pj::Options& o) { o.set("no_such_option", "1"); }), "no_such_option"));
    EXPECT_TRUE(contains(invalid([](pj::Options& o) { o.backend("gpu"); }), "gpu"));
    EXPECT_TRUE(contains(invalid([](pj::Options& o) { o.prefer("fast"); }), "fast"));
    EXPECT_TRUE(contains(invalid([](pj::Options& o) { o.require("everything"); }), "everything"));
    EXPECT_TRUE(contains(invalid([](pj::Options& o) { o.pre_dispatch("import os"); }), "import os"));
    EXPECT_TRUE(contains(invalid([](pj::Options& o) { o.batch_size("huge"); }), "huge"));
    EXPECT_TRUE(contains(invalid([](pj::Options& o) { o.max_nbytes("lots"); }), "lots"));
    EXPECT_TRUE(contains(invalid([](pj::Options& o) { o.mmap_mode("x"); }), "x"));
    EXPECT_TRUE(contains(invalid([](pj::Options& o) { o.return_as("dict"); }), "dict"));
    EXPECT_TRUE(contains(invalid([](pj::Options& o) { o.on_error("ignore"); }), "ignore"));
    EXPECT_TRUE(contains(invalid([](pj::Options& o) { o.set("handle_sigint", "maybe"); }), "maybe"));
    EXPECT_TRUE(contains(invalid([](pj::Options& o) { o.set("progress", "spinner"); }), "spinner"));
    EXPECT_FALSE(invalid([](pj::Options& o) { o.n_jobs(0); }).empty());
    EXPECT_FALSE(invalid([](pj::Options& o) { o.verbose(-1); }).empty());
    EXPECT_FALSE(invalid([](pj::Options& o) { o.timeout(-1.0); }).empty());
    EXPECT_FALSE(invalid([](pj::Options& o) { o.timeout(NAN); }).empty());
    EXPECT_FALSE(invalid([](pj::Options& o) { o.batch_size(std::size_t{0}); }).empty());
    EXPECT_FALSE(invalid([](pj::Options& o) { o.batch_size(static_cast<std::size_t>(-1)); }).empty());
    EXPECT_FALSE(invalid([](pj::Options& o) { o.stack_size(std::size_t{1}); }).empty());
    EXPECT_TRUE(contains(invalid([](pj::Options& o) { o.stack_size("deep"); }), "deep"));
    EXPECT_FALSE(invalid([](pj::Options& o) { o.pre_dispatch(0); }).empty());
    EXPECT_TRUE(contains(invalid([](pj::Options& o) { o.max_tasks_per_child(std::uint64_t{0}); }),
                         "max_tasks_per_child"));
    EXPECT_TRUE(contains(invalid([](pj::Options& o) { o.max_tasks_per_child("often"); }), "often"));
    EXPECT_TRUE(contains(invalid([](pj::Options& o) { o.worker_memory_limit(std::uint64_t{0}); }),
                         "worker_memory_limit"));
    EXPECT_TRUE(contains(invalid([](pj::Options& o) { o.worker_memory_limit("plenty"); }), "plenty"));
    EXPECT_FALSE(invalid([](pj::Options& o) { o.idle_worker_timeout(0.0); }).empty());
    EXPECT_FALSE(invalid([](pj::Options& o) { o.idle_worker_timeout(NAN); }).empty());
    EXPECT_THROW(pj::Options().set("timeout", "soon"), pj::InvalidArgument);
}

TEST(Options, MaxTasksPerChildReplacesProcessWorkers) {
    pj::Parallel par(pj::Options()
                         .n_jobs(2)
                         .backend("processes")
                         .chunk_size(1)
                         .max_tasks_per_child(10)
                         .worker_memory_limit("64G")
                         .idle_worker_timeout(std::chrono::seconds(60)));
    std::vector<int> input(100);
    for (int i = 0; i < 100; ++i) {
        input[static_cast<std::size_t>(i)] = i;
    }
    auto pids = par.map(input, [](int x) { return std::to_string(x) + "@" + std::to_string(getpid()); });
    ASSERT_EQ(pids.size(), 100u);
    std::map<std::string, int> tasks_per_pid;
    for (std::size_t i = 0; i < pids.size(); ++i) {
        const auto at = pids[i].find('@');
        ASSERT_NE(at, std::string::npos);
        EXPECT_EQ(pids[i].substr(0, at), std::to_string(i));
        ++tasks_per_pid[pids[i].substr(at + 1)];
    }
    EXPECT_GE(tasks_per_pid.size(), 10u);
    for (const auto& [pid, tasks] : tasks_per_pid) {
        EXPECT_LE(tasks, 10) << pid;
    }
}

TEST(Options, ABadValueLeavesTheOptionsUnchanged) {
    pj::Options opts;
    opts.n_jobs(2);
    EXPECT_THROW(opts.n_jobs(0), pj::InvalidArgument);
    EXPECT_THROW(opts.set("n_jobs", "many"), pj::InvalidArgument);
    EXPECT_EQ(opts.effective_n_jobs(), 2u);
}

TEST(Options, HandleSigintCallsRunAsUsual) {
    pj::Parallel par(pj::Options().n_jobs(2).backend("threads").handle_sigint(true));
    EXPECT_EQ(par.map({1, 2, 3}, [](int x) { return x * 3; }), (std::vector<int>{3, 6, 9}));
}

TEST(Options, ProgressOnAMovedFromObjectThrows) {
    pj::Options opts;
    pj::Options other = std::move(opts);
    EXPECT_THROW(opts.progress([](const pj::Progress&) {}), pj::Error);  // NOLINT(bugprone-use-after-move)
    EXPECT_THROW(opts.progress(nullptr), pj::Error);                     // NOLINT(bugprone-use-after-move)
}

TEST(Options, InconsistentOptionsThrowWhenTheParallelIsMade) {
    try {
        pj::Parallel par(pj::Options().n_jobs(2).backend("processes").require("sharedmem"));
        FAIL() << "no exception";
    } catch (const pj::InvalidArgument& e) {
        EXPECT_TRUE(contains(e.what(), "sharedmem")) << e.what();
    }
    EXPECT_THROW(pj::Options().n_jobs(2).prefer("processes").require("sharedmem").effective_n_jobs(),
                 pj::InvalidArgument);
}

TEST(Options, EffectiveNJobs) {
    EXPECT_EQ(pj::Options().effective_n_jobs(), 1u);
    EXPECT_EQ(pj::Options().n_jobs(-1).effective_n_jobs(), pj::cpu_count());
    EXPECT_EQ(pj::Options().n_jobs(4).backend("sequential").effective_n_jobs(), 1u);
    EXPECT_GE(pj::cpu_count(), 1u);
}

TEST(Options, ScopedConfigSetsThisThreadsDefaults) {
    EXPECT_EQ(pj::Options().effective_n_jobs(), 1u);
    {
        pj::ScopedConfig outer(pj::Options().n_jobs(2));
        EXPECT_EQ(pj::Options().effective_n_jobs(), 2u);
        {
            pj::ScopedConfig inner(pj::Options().backend("sequential"));
            EXPECT_EQ(pj::Options().effective_n_jobs(), 1u);
        }
        EXPECT_EQ(pj::Options().effective_n_jobs(), 2u);
        EXPECT_EQ(pj::Options().n_jobs(3).effective_n_jobs(), 3u);  // its own options win
        pj::Parallel par;  // takes n_jobs 2 from the scope
        EXPECT_EQ(par.map({1, 2}, [](int x) { return x; }), (std::vector<int>{1, 2}));
    }
    EXPECT_EQ(pj::Options().effective_n_jobs(), 1u);
}

TEST(Options, MovedFromObjectsThrowInsteadOfCrashing) {
    pj::Options opts;
    pj::Options other = std::move(opts);
    other.n_jobs(2);
    try {
        opts.n_jobs(2);  // NOLINT(bugprone-use-after-move): that is the point
        FAIL() << "no exception";
    } catch (const pj::Error& e) {
        EXPECT_EQ(e.status(), PJ_STATUS_NULL_ARGUMENT);
    }
    pj::Parallel par(other.backend("threads"));
    pj::Parallel moved = std::move(par);
    EXPECT_EQ(moved.map({4}, [](int x) { return x; }), (std::vector<int>{4}));
    EXPECT_EQ(par.capi(), nullptr);  // NOLINT(bugprone-use-after-move)
    EXPECT_THROW(par.map({4}, [](int x) { return x; }), pj::Error);  // NOLINT(bugprone-use-after-move)
    par = std::move(moved);
    EXPECT_EQ(par.map({5}, [](int x) { return x; }), (std::vector<int>{5}));
}

TEST(Handles, ReleaseAndCapiInteroperateWithTheCApi) {
    pj::Options opts = pj::Options().n_jobs(2);
    pj_config_t* raw = opts.release();
    ASSERT_NE(raw, nullptr);
    EXPECT_EQ(opts.capi(), nullptr);
    EXPECT_EQ(pj_effective_n_jobs(raw), 2u);
    pj::Options back(raw);  // owns it again
    EXPECT_EQ(back.effective_n_jobs(), 2u);

    pj::Results none(nullptr);
    EXPECT_EQ(none.size(), 0u);
    EXPECT_TRUE(none.empty());

    pj::ErrorHandle err;
    EXPECT_EQ(pj_config_set(back.capi(), "n_jobs", "0", reinterpret_cast<pj_error_t**>(&raw)), PJ_STATUS_INVALID_ARGUMENT);
    err.reset(reinterpret_cast<pj_error_t*>(raw));
    EXPECT_TRUE(static_cast<bool>(err));
    try {
        pj::throw_error(PJ_STATUS_INVALID_ARGUMENT, err);
    } catch (const pj::InvalidArgument& e) {
        EXPECT_EQ(std::string(e.what()), pj_error_message(err.capi()));
        EXPECT_EQ(e.report(), pj_error_report(err.capi()));
    }
}

TEST(Errors, ThrowErrorPicksTheClassForTheStatus) {
    EXPECT_THROW(pj::throw_error(PJ_STATUS_TASK_FAILED, "m"), pj::TaskError);
    EXPECT_THROW(pj::throw_error(PJ_STATUS_TIMEOUT, "m"), pj::TimeoutError);
    EXPECT_THROW(pj::throw_error(PJ_STATUS_WORKER_DIED, "m"), pj::WorkerDiedError);
    EXPECT_THROW(pj::throw_error(PJ_STATUS_CANCELLED, "m"), pj::CancelledError);
    EXPECT_THROW(pj::throw_error(PJ_STATUS_INVALID_ARGUMENT, "m"), pj::InvalidArgument);
    for (pj_status other : {PJ_STATUS_NULL_ARGUMENT, PJ_STATUS_BUSY, PJ_STATUS_UNSUPPORTED, PJ_STATUS_IO, PJ_STATUS_PANIC}) {
        try {
            pj::throw_error(other, "m");
        } catch (const pj::TaskError&) {
            ADD_FAILURE() << "a subclass for " << pj::status_str(other);
        } catch (const pj::TimeoutError&) {
            ADD_FAILURE() << "a subclass for " << pj::status_str(other);
        } catch (const pj::WorkerDiedError&) {
            ADD_FAILURE() << "a subclass for " << pj::status_str(other);
        } catch (const pj::CancelledError&) {
            ADD_FAILURE() << "a subclass for " << pj::status_str(other);
        } catch (const pj::InvalidArgument&) {
            ADD_FAILURE() << "a subclass for " << pj::status_str(other);
        } catch (const pj::Error& e) {
            EXPECT_EQ(e.status(), other);
        }
    }
}

TEST(Errors, CarryStatusIndexCodeAndReport) {
    try {
        pj::throw_error(PJ_STATUS_TIMEOUT, "task 4 exceeded 0.5 s", "", 4, 0);
    } catch (const pj::Error& e) {
        pj::Error copy = e;  // copies share the report
        EXPECT_EQ(copy.status(), PJ_STATUS_TIMEOUT);
        EXPECT_EQ(copy.task_index(), 4);
        EXPECT_EQ(copy.callback_code(), 0);
        EXPECT_EQ(std::string(copy.what()), "task 4 exceeded 0.5 s");
        EXPECT_TRUE(contains(copy.report(), "PJ_STATUS_TIMEOUT")) << copy.report();
        EXPECT_TRUE(contains(copy.report(), "task 4 exceeded 0.5 s")) << copy.report();
        EXPECT_TRUE(contains(copy.status_str(), "PJ_STATUS_TIMEOUT"));
    }
}

TEST(Codecs, RejectMalformedBytes) {
    const std::uint8_t five[5] = {1, 2, 3, 4, 5};
    EXPECT_THROW(pj::codec<std::vector<std::int32_t>>::decode(five, 5), pj::InvalidArgument);
    EXPECT_THROW(pj::codec<double>::decode(five, 5), pj::InvalidArgument);
    EXPECT_THROW(pj::codec<std::u16string>::decode(five, 5), pj::InvalidArgument);
    EXPECT_EQ(pj::codec<std::vector<std::uint8_t>>::decode(five, 5).size(), 5u);
    EXPECT_EQ(pj::codec<std::string>::decode(five, 0), "");
    EXPECT_TRUE(pj::codec<std::vector<double>>::decode(nullptr, 0).empty());
}

TEST(Codecs, RoundTrip) {
    const std::vector<double> v{1.5, -2.25, 1e300};
    std::vector<std::uint8_t> buffer(pj::codec<std::vector<double>>::size(v));
    pj::codec<std::vector<double>>::encode(v, buffer.data());
    EXPECT_EQ(pj::codec<std::vector<double>>::decode(buffer.data(), buffer.size()), v);
    const std::u16string s = u"\u00e9t\u00e9";
    buffer.resize(pj::codec<std::u16string>::size(s));
    pj::codec<std::u16string>::encode(s, buffer.data());
    EXPECT_EQ(pj::codec<std::u16string>::decode(buffer.data(), buffer.size()), s);
}

TEST(Version, MatchesTheHeader) {
    const std::string expected = std::to_string(PJ_VERSION_MAJOR) + "." + std::to_string(PJ_VERSION_MINOR) + "." +
                                 std::to_string(PJ_VERSION_PATCH);
    EXPECT_EQ(expected, pj::version());
    EXPECT_EQ(pj::nesting_level(), 0u);
}

}  // namespace
