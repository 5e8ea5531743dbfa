// Shared by the GoogleTest suites of pj.hpp: a fixture parameterised by backend name.
#ifndef PJ_CPP_TESTS_SUPPORT_HPP
#define PJ_CPP_TESTS_SUPPORT_HPP

#include <gtest/gtest.h>

#include <dirent.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>

#include "pj.hpp"

namespace pj_test {

/// A test that runs once with backend "threads" and once with "processes" (two workers each, so
/// the tasks really run on workers: n_jobs 1 would run them on the caller's thread).
class OnBackend : public ::testing::TestWithParam<std::string> {
protected:
    bool processes() const { return GetParam() == "processes"; }
    pj::Options options(std::int64_t n_jobs = 2) const {
        return pj::Options().n_jobs(n_jobs).backend(GetParam());
    }
    pj::Parallel parallel(std::int64_t n_jobs = 2) const { return pj::Parallel(options(n_jobs)); }
};

/// Whether `text` contains `part` (for readable EXPECT_TRUE messages, use EXPECT_THAT elsewhere).
inline bool contains(const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
}

/// This process's children (every thread's), as /proc lists them: what pj forked and has not
/// reaped yet.
inline std::size_t children() {
    std::size_t n = 0;
    if (DIR* d = ::opendir("/proc/self/task")) {
        while (const dirent* e = ::readdir(d)) {
            if (e->d_name[0] == '.') {
                continue;
            }
            std::ifstream in(std::string("/proc/self/task/") + e->d_name + "/children");
            std::string pid;
            while (in >> pid) {
                ++n;
            }
        }
        ::closedir(d);
    }
    return n;
}

}  // namespace pj_test

/// Instantiates a suite derived from pj_test::OnBackend for both backends (test names end in
/// /threads and /processes).
#define PJ_ON_EVERY_BACKEND(Suite)                                                        \
    INSTANTIATE_TEST_SUITE_P(Backends, Suite, ::testing::Values("threads", "processes"), \
                             [](const ::testing::TestParamInfo<std::string>& info) {     \
                                 return info.param;                                      \
                             })

#endif  // PJ_CPP_TESTS_SUPPORT_HPP
