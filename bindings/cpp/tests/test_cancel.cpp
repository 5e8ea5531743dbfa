// pj::cancelled(): a task's function asks whether its call is stopping (cancel, fail-fast,
// destruction), so that a long function returns early and the call ends promptly.
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

using pj_test::OnBackend;
using Clock = std::chrono::steady_clock;

class Cancelled : public OnBackend {
protected:
    pj::Parallel one_task_per_batch() const { return pj::Parallel(options().batch_size(1)); }
};
PJ_ON_EVERY_BACKEND(Cancelled);

// Polls pj::cancelled() for up to 10 s; 1 when it saw the call stopping.
int poll_for_10s() {
    const auto start = Clock::now();
    while (Clock::now() - start < std::chrono::seconds(10)) {
        if (pj::cancelled()) {
            return 1;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return 0;
}

TEST(CancelledOutsideATask, IsFalse) { EXPECT_FALSE(pj::cancelled()); }

TEST_P(Cancelled, IsFalseInACallThatGoesOn) {
    pj::Parallel par = parallel();
    std::vector<int> seen = par.map_indexed(20, [](std::size_t) { return pj::cancelled() ? 1 : 0; });
    EXPECT_EQ(seen, std::vector<int>(20, 0));
    EXPECT_FALSE(pj::cancelled());
}

TEST_P(Cancelled, FailFastWithAPollingSiblingIsPrompt) {
    pj::Parallel par = one_task_per_batch();
    const auto start = Clock::now();
    try {
        par.map_indexed(2, [](std::size_t i) {
            if (i == 1) {
                std::this_thread::sleep_for(std::chrono::milliseconds(200));
                throw std::runtime_error("task 1 gives up");
            }
            return poll_for_10s();
        });
        ADD_FAILURE() << "the failure was not thrown";
    } catch (const pj::TaskError& e) {
        EXPECT_EQ(e.task_index(), 1);
    }
    const auto elapsed = Clock::now() - start;
    EXPECT_LT(elapsed, std::chrono::seconds(2))
        << std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count() << " ms";
}

TEST_P(Cancelled, CancelWithPollingFunctionsIsPrompt) {
    pj::Parallel par = one_task_per_batch();
    std::thread canceller([&par] {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        pj_parallel_cancel(par.capi());
    });
    const auto start = Clock::now();
    EXPECT_THROW(par.map_indexed(4, [](std::size_t) { return poll_for_10s(); }),
                 pj::CancelledError);
    const auto elapsed = Clock::now() - start;
    canceller.join();
    EXPECT_LT(elapsed, std::chrono::seconds(2))
        << std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count() << " ms";
}

}  // namespace
