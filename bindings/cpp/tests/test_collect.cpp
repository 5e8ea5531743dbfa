// on_error("collect") on both backends: Parallel::map_collect and pj::Outcome, map() throwing the
// first failure after every task ran, and streams that go on past a failed task.
#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "support.hpp"

namespace {

using pj_test::contains;
using pj_test::OnBackend;

static_assert(std::is_copy_constructible_v<pj::Outcome<int>>);
static_assert(std::is_nothrow_move_constructible_v<pj::Outcome<std::string>>);

class Collect : public OnBackend {
protected:
    pj::Options collecting() const { return options().on_error("collect"); }
};
PJ_ON_EVERY_BACKEND(Collect);

// Fails (throws) on every multiple of 5 plus 3.
std::size_t fails_on_3_mod_5(std::size_t i) {
    if (i % 5 == 3) {
        throw std::invalid_argument("no " + std::to_string(i));
    }
    return i * 10;
}

TEST_P(Collect, MapCollectGivesEveryOutcomeInInputOrder) {
    pj::Parallel par(collecting());
    const std::size_t n = 50;
    std::vector<pj::Outcome<std::size_t>> out = par.map_indexed_collect(n, fails_on_3_mod_5);
    ASSERT_EQ(out.size(), n);
    for (std::size_t i = 0; i < n; i++) {
        const pj::Outcome<std::size_t>& o = out[i];
        if (i % 5 == 3) {
            EXPECT_FALSE(o.ok()) << i;
            EXPECT_FALSE(o) << i;
            EXPECT_EQ(o.status(), PJ_STATUS_TASK_FAILED) << i;
            ASSERT_NE(o.error(), nullptr) << i;
            EXPECT_EQ(o.error()->status(), PJ_STATUS_TASK_FAILED);
            EXPECT_EQ(o.error()->task_index(), static_cast<std::int64_t>(i));
            EXPECT_EQ(o.error()->callback_code(), pj::exception_code);
            EXPECT_TRUE(contains(o.error()->what(), "no " + std::to_string(i))) << o.error()->what();
            EXPECT_TRUE(contains(o.error()->report(), "no " + std::to_string(i))) << o.error()->report();
            try {
                (void)o.value();
                ADD_FAILURE() << "value() of a failed task did not throw";
            } catch (const pj::TaskError& e) {
                EXPECT_EQ(e.task_index(), static_cast<std::int64_t>(i));
                EXPECT_TRUE(contains(e.what(), "no " + std::to_string(i))) << e.what();
            }
        } else {
            EXPECT_TRUE(o.ok()) << i;
            EXPECT_EQ(o.status(), PJ_STATUS_OK);
            EXPECT_EQ(o.error(), nullptr);
            EXPECT_EQ(o.value(), i * 10);
        }
    }
    // and the object works for a plain map afterwards
    EXPECT_EQ(par.map({1, 2}, [](int x) { return -x; }), (std::vector<int>{-1, -2}));
}

TEST_P(Collect, MapCollectOverARangeWithStrings) {
    pj::Parallel par(collecting());
    std::vector<std::string> words{"apple", "", "cherry", "", "fig"};
    auto out = par.map_collect(words, [](const std::string& w) {
        if (w.empty()) {
            throw std::runtime_error("empty word");
        }
        return w + "!";
    });
    static_assert(std::is_same_v<decltype(out), std::vector<pj::Outcome<std::string>>>);
    ASSERT_EQ(out.size(), 5u);
    EXPECT_EQ(out[0].value(), "apple!");
    EXPECT_FALSE(out[1]);
    EXPECT_EQ(out[2].value(), "cherry!");
    EXPECT_EQ(out[3].error()->task_index(), 3);
    EXPECT_EQ(std::move(out[4]).value(), "fig!");
    // a braced list, and no failure at all
    auto all = par.map_collect({1.0, 2.0}, [](double x) { return x / 2; });
    ASSERT_EQ(all.size(), 2u);
    EXPECT_TRUE(all[0] && all[1]);
    EXPECT_EQ(all[1].value(), 1.0);
    EXPECT_TRUE(par.map_collect(std::vector<int>{}, [](int x) { return x; }).empty());
}

TEST_P(Collect, MapThrowsTheFirstFailureAfterEveryTaskRan) {
    pj::Parallel par(collecting());
    std::atomic<int> ran{0};  // counted by the threads backend only
    try {
        par.map_indexed(200, [&ran](std::size_t i) {
            ran.fetch_add(1);
            return fails_on_3_mod_5(i);
        });
        FAIL() << "no exception";
    } catch (const pj::TaskError& e) {
        EXPECT_EQ(e.task_index(), 3);
        EXPECT_TRUE(contains(e.what(), "no 3")) << e.what();
    }
    if (!processes()) {
        EXPECT_EQ(ran.load(), 200);
    }
}

TEST_P(Collect, WithoutCollectMapCollectThrowsTheFirstFailure) {
    pj::Parallel par = parallel();  // on_error "raise", the default
    try {
        par.map_indexed_collect(20, fails_on_3_mod_5);
        FAIL() << "no exception";
    } catch (const pj::TaskError& e) {
        // The call's failure is the first one seen (as joblib raises the first it observes):
        // 3 unless a worker reached 8, 13 or 18 first.
        EXPECT_EQ(e.task_index() % 5, 3) << e.what();
        EXPECT_LT(e.task_index(), 20);
    }
    auto fine = par.map_indexed_collect(3, [](std::size_t i) { return i; });
    ASSERT_EQ(fine.size(), 3u);
    EXPECT_EQ(fine[2].value(), 2u);
}

TEST_P(Collect, ADeadWorkerIsTheOutcomeOfItsTaskOnly) {
    if (!processes()) {
        GTEST_SKIP() << "std::abort() on a worker thread would end the test program";
    }
    pj::Parallel par(collecting().batch_size(1));
    auto out = par.map_indexed_collect(6, [](std::size_t i) {
        if (i == 2) {
            std::abort();
        }
        return i + 100;
    });
    ASSERT_EQ(out.size(), 6u);
    for (std::size_t i = 0; i < 6; i++) {
        if (i == 2) {
            EXPECT_EQ(out[i].status(), PJ_STATUS_WORKER_DIED);
            EXPECT_EQ(out[i].error()->task_index(), 2);
            EXPECT_THROW((void)out[i].value(), pj::WorkerDiedError);
        } else {
            EXPECT_EQ(out[i].value(), i + 100) << i;
        }
    }
}

TEST_P(Collect, AStreamGoesOnPastAFailedTask) {
    pj::Parallel par(collecting());
    std::vector<std::size_t> inputs;
    for (std::size_t i = 0; i < 23; i++) {
        inputs.push_back(i);
    }
    auto stream = par.imap(inputs, fails_on_3_mod_5);
    std::vector<std::size_t> ok;
    std::vector<std::int64_t> failed;
    auto it = stream.begin();
    while (it != stream.end()) {
        ok.push_back(it->first);
        EXPECT_EQ(it->second, it->first * 10);
        for (;;) {
            try {
                ++it;  // reads the next result: a failed task throws, and the call goes on
                break;
            } catch (const pj::TaskError& e) {
                failed.push_back(e.task_index());
            }
        }
    }
    EXPECT_EQ(failed, (std::vector<std::int64_t>{3, 8, 13, 18}));
    EXPECT_EQ(ok.size(), 19u);
    EXPECT_TRUE(stream.done());
}

TEST_P(Collect, LeavingAStreamAtAFailedTaskFreesTheExecutor) {
    pj::Parallel par(collecting());
    try {
        for (auto&& [i, r] : par.imap(std::vector<std::size_t>{0, 1, 2, 3, 4, 5, 6}, fails_on_3_mod_5)) {
            EXPECT_LT(i, 3u);
            (void)r;
        }
        FAIL() << "no exception";
    } catch (const pj::TaskError& e) {
        EXPECT_EQ(e.task_index(), 3);
    }
    // the stream (destroyed) abandoned its call: no BUSY, even from another thread
    std::vector<int> out;
    std::thread other([&par, &out] { out = par.map({7, 8}, [](int x) { return x; }); });
    other.join();
    EXPECT_EQ(out, (std::vector<int>{7, 8}));
}

}  // namespace
