// What a C++ user sees when pj fails where no task can reach: a worker that cannot start, receive,
// map, encode or send a batch, or clean up after one; a spilled argument that cannot be written;
// an exported function that fails. Built only against the failpoints-enabled libpj
// (target/failpoints/debug, see bindings/cpp/tests/CMakeLists.txt), never the release one.
//
// The GoogleTest test Failpoints.Matrix runs each cell in a process of its own (this executable
// again, with PJ_FAILPOINTS armed and PJ_FP_CELL naming the cell), three at a time. A cell makes
// one armed call in one call style (map, imap, for_each, submit + collect, map_collect under
// on_error "collect") on forked or spawned workers, then disarms every process (the file
// `disarmed` in PJ_FAILPOINTS_DIR) and makes a second call on the same pj::Parallel. It checks
// that the armed call returned (a bound: the task timeout, and the driver's limit), never with a
// wrong result; that it threw the pj::Error subclass of its status with a task index in range and
// a what() that says what failed; that the next call works; and that no child process, descriptor,
// thread or temp file is left. The cell prints `key value` lines and exits 0 when every check
// passed.
#include <gtest/gtest.h>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "pj.hpp"
#include "support.hpp"

namespace {

using pj_test::children;

constexpr std::uint64_t kTasks = 24;
constexpr std::size_t kArgBytes = 2048;  // above max_nbytes 1k: spilled on processes

/// A task's argument: x, padded so that it is spilled to a file when it travels as bytes.
struct Arg {
    std::uint64_t x;
    std::uint8_t pad[kArgBytes - sizeof(std::uint64_t)];
};
/// A task's result: x * x and the pid of the process that ran it.
struct Sq {
    std::uint64_t sq;
    std::uint64_t pid;
};

Sq square(const Arg& a) { return Sq{a.x * a.x, static_cast<std::uint64_t>(::getpid())}; }

/// for_each's range function: writes i * i into the shared buffer (fork: the caller's mapping;
/// spawn: a worker has no buffer and writes nothing).
std::uint64_t* g_shared = nullptr;
void fill_range(std::size_t begin, std::size_t end) {
    for (std::size_t i = begin; i < end && g_shared != nullptr; ++i) {
        g_shared[i] = i * i;
    }
}

std::vector<Arg> arguments() {
    std::vector<Arg> args(kTasks);
    for (std::uint64_t i = 0; i < kTasks; ++i) {
        std::memset(&args[i], 0, sizeof(Arg));
        args[i].x = i;
    }
    return args;
}

std::string env(const char* name) {
    const char* v = std::getenv(name);
    return v == nullptr ? std::string() : std::string(v);
}

bool contains(const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
}

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> parts;
    std::stringstream in(s);
    std::string part;
    while (std::getline(in, part, sep)) {
        parts.push_back(part);
    }
    return parts;
}

std::size_t count_dir(const std::string& path) {
    std::size_t n = 0;
    if (DIR* d = ::opendir(path.c_str())) {
        while (const dirent* e = ::readdir(d)) {
            n += std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0;
        }
        ::closedir(d);
    }
    return n;
}

/// Files (not folders) under `dir`.
std::vector<std::string> files_under(const std::string& dir) {
    std::vector<std::string> files;
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) {
        return files;
    }
    while (const dirent* e = ::readdir(d)) {
        if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) {
            continue;
        }
        const std::string path = dir + "/" + e->d_name;
        struct stat st {};
        if (::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
            for (auto& f : files_under(path)) {
                files.push_back(f);
            }
        } else {
            files.push_back(path);
        }
    }
    ::closedir(d);
    return files;
}


/// Waits up to 5 s for `probe()` to come down to `want` (the pool's threads and children end
/// asynchronously after the executor is freed); returns the last value.
template <typename Probe>
std::size_t settle(Probe probe, std::size_t want) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    std::size_t now = probe();
    while (now > want && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        now = probe();
    }
    return now;
}

/// What one call gave: the exception (status, what(), task index, the class's name) or OK, and
/// the results that came back by index; `blamed`: map_collect's failed elements and their errors.
struct Call {
    bool ok = true;
    pj_status status = PJ_STATUS_OK;
    std::string what;
    std::int64_t task = -1;
    bool class_matches = true;
    std::map<std::size_t, Sq> got;
    std::map<std::size_t, std::string> blamed;
    std::size_t for_each_wrong = 0;
};

/// Whether an exception's class is the one pj::throw_error picks for its status.
bool class_matches(const pj::Error& e) {
    switch (e.status()) {
    case PJ_STATUS_TASK_FAILED:
        return dynamic_cast<const pj::TaskError*>(&e) != nullptr;
    case PJ_STATUS_TIMEOUT:
        return dynamic_cast<const pj::TimeoutError*>(&e) != nullptr;
    case PJ_STATUS_WORKER_DIED:
        return dynamic_cast<const pj::WorkerDiedError*>(&e) != nullptr;
    case PJ_STATUS_CANCELLED:
        return dynamic_cast<const pj::CancelledError*>(&e) != nullptr;
    case PJ_STATUS_INVALID_ARGUMENT:
        return dynamic_cast<const pj::InvalidArgument*>(&e) != nullptr;
    default:
        return typeid(e) == typeid(pj::Error);
    }
}

/// One call in `style` on `par`; every exception is caught and described.
Call one_call(pj::Parallel& par, const std::string& method, const std::string& style) {
    Call call;
    const std::vector<Arg> args = arguments();
    const bool spawn = method == "spawn";
    auto f = [](const Arg& a) { return square(a); };
    try {
        if (style == "map") {
            std::vector<Sq> out = spawn ? par.map<square>(args) : par.map(args, f);
            for (std::size_t i = 0; i < out.size(); ++i) {
                call.got[i] = out[i];
            }
        } else if (style == "imap") {
            auto run = [&](auto stream) {
                for (auto&& [i, r] : stream) {
                    call.got[i] = r;
                }
            };
            if (spawn) {
                run(par.imap<square>(args));
            } else {
                run(par.imap(args, f));
            }
        } else if (style == "for_each") {
            // A buffer the forked workers share with the caller (spawned ones write nothing).
            pj_shared_t* shared = nullptr;
            pj::detail::ErrorSlot err;
            pj::detail::check(pj_shared_new(nullptr, kTasks * 8, &shared, err.out()), err);
            g_shared = spawn ? nullptr : reinterpret_cast<std::uint64_t*>(pj_shared_data(shared));
            try {
                par.for_each<fill_range>(kTasks);
            } catch (...) {
                g_shared = nullptr;
                pj_shared_free(shared);
                throw;
            }
            for (std::uint64_t i = 0; i < kTasks && !spawn; ++i) {
                call.for_each_wrong += g_shared[i] != i * i;
            }
            g_shared = nullptr;
            pj_shared_free(shared);
        } else if (style == "submit") {
            for (const Arg& a : args) {
                pj::detail::ErrorSlot err;
                pj::detail::check(
                    pj_parallel_submit_named(par.capi(), "square",
                                             reinterpret_cast<const std::uint8_t*>(&a),
                                             sizeof a, err.out()),
                    err);
            }
            pj_results_t* raw = nullptr;
            pj::detail::ErrorSlot err;
            pj::detail::check(pj_parallel_collect(par.capi(), &raw, err.out()), err);
            pj::Results results(raw);
            std::vector<Sq> out = results.decode_all<Sq>();
            for (std::size_t i = 0; i < out.size(); ++i) {
                call.got[i] = out[i];
            }
        } else if (style == "collect") {
            std::vector<pj::Outcome<Sq>> out =
                spawn ? par.map_collect<square>(args) : par.map_collect(args, f);
            for (std::size_t i = 0; i < out.size(); ++i) {
                if (out[i]) {
                    call.got[i] = out[i].value();
                } else {
                    const pj::Error& e = *out[i].error();
                    call.blamed[i] = std::string(pj::status_str(e.status())) + " " + e.what();
                    if (call.ok) {  // the first failed element stands for the call
                        call.ok = false;
                        call.status = e.status();
                        call.what = e.what();
                        call.task = e.task_index();
                        call.class_matches = true;  // an Outcome's error is a pj::Error
                    }
                    if (e.task_index() != static_cast<std::int64_t>(i)) {
                        call.blamed[i] += " (its task index is " +
                                          std::to_string(e.task_index()) + ")";
                    }
                }
            }
        }
    } catch (const pj::Error& e) {
        call.ok = false;
        call.status = e.status();
        call.what = e.what();
        call.task = e.task_index();
        call.class_matches = class_matches(e);
    } catch (const std::exception& e) {
        call.ok = false;
        call.status = PJ_STATUS_OK;
        call.what = std::string("not a pj::Error: ") + e.what();
        call.class_matches = false;
    }
    return call;
}

/// Results that are not x * x for their index.
std::size_t wrong(const Call& call) {
    std::size_t n = call.for_each_wrong;
    for (const auto& [i, r] : call.got) {
        n += r.sq != static_cast<std::uint64_t>(i) * i;
    }
    return n;
}

/// Whether an error says what failed (the rules of tests/failpoints.rs' says_what_failed).
bool says_what_failed(const std::string& stage, bool worker_side, const std::string& mode,
                      pj_status status, const std::string& what) {
    const bool died = status == PJ_STATUS_WORKER_DIED;
    const bool stuck = status == PJ_STATUS_TIMEOUT && contains(what, "stuck outside any task");
    return contains(what, "failpoint " + stage) || (mode == "panic" && contains(what, "panicked")) ||
           ((mode == "exit" || mode == "segv") && died) ||
           (mode == "hang" && worker_side && stuck) || (worker_side && mode == "panic" && died) ||
           (worker_side && mode == "panic" && stuck) ||
           ((stage == "result_send" || stage == "worker_start") && died) ||
           (stage == "worker_start" && contains(what, "handshake")) ||
           (stage == "result_encode" && mode == "truncate" && contains(what, "unreadable")) ||
           // The exports without an error_out: the wrapper names the function that failed.
           (stage == "export" && (contains(what, "pj_config_new failed") ||
                                  contains(what, "pj_results_get failed for result")));
}

std::size_t fired() {
    std::ifstream in(env("PJ_FAILPOINTS_DIR") + "/fired");
    std::size_t n = 0;
    std::string line;
    while (std::getline(in, line)) {
        ++n;
    }
    return n;
}

/// Disarms every stage in every process of the cell (this one, its workers, spawned or not).
void disarm() {
    std::ofstream(env("PJ_FAILPOINTS_DIR") + "/disarmed").flush();
}

/// In the cell's own process: prints what it saw and returns the exit status (0: every check
/// passed; otherwise the first failed check is the last line, "FAIL <why>").
int run_cell() {
    const std::vector<std::string> cell = split(env("PJ_FP_CELL"), ',');
    const std::string method = cell.at(0), style = cell.at(1);
    const std::string spec = env("PJ_FAILPOINTS");
    const std::string stage = spec.substr(0, spec.find('='));
    const std::string mode = split(split(spec, '=').at(1), '@').at(0);
    const bool worker_side = stage != "spill_write" && stage != "export";
    auto fail = [](const std::string& why) {
        std::printf("FAIL %s\n", why.c_str());
        std::fflush(stdout);
        return 1;
    };

    const std::size_t kids_before = children();
    const std::size_t fds_before = count_dir("/proc/self/fd");
    const std::size_t threads_before = count_dir("/proc/self/task");
    {
        auto options = [&] {
            pj::Options o;
            o.n_jobs(2).backend("processes").start_method(method).batch_size(4).max_nbytes("1k")
                .timeout(3.0).on_error(style == "collect" ? "collect" : "raise");
            return o;
        };
        std::optional<pj::Parallel> par;
        Call first;
        try {
            par.emplace(options());
        } catch (const pj::Error& e) {
            first.ok = false;
            first.status = e.status();
            first.what = e.what();
            first.class_matches = class_matches(e);
        }
        if (par) {
            first = one_call(*par, method, style);
        }
        std::printf("first %s %s\n", first.ok ? "OK" : pj::status_str(first.status),
                    first.what.c_str());
        std::printf("first_task %lld got %zu wrong %zu fired %zu\n",
                    static_cast<long long>(first.task), first.got.size(), wrong(first), fired());
        for (const auto& [i, why] : first.blamed) {
            std::printf("blame %zu %s\n", i, why.c_str());
        }
        if (wrong(first) != 0) {
            return fail("wrong results");
        }
        if (fired() == 0) {
            return fail(stage == "export" ? "the stage never fired (the cell makes fewer exported "
                                            "calls than n: give this style a lower n in cells())"
                                          : "the stage never fired");
        }
        // A worker that ends before any task of its batch started is replaced, and the batch
        // runs again: the call may succeed, whole.
        const bool replaceable = worker_side && (stage == "batch_receive" || stage == "arg_map") &&
                                 (mode == "panic" || mode == "exit" || mode == "segv");
        // An exported call whose status the wrapper ignores by design (pj_parallel_expect).
        const bool harmless = stage == "export";
        if (first.ok) {
            if (!replaceable && !harmless) {
                return fail("the armed call succeeded");
            }
            if (style != "for_each" && first.got.size() != kTasks) {
                return fail("the armed call succeeded with results missing");
            }
        } else {
            if (!first.class_matches) {
                return fail("the exception's class does not match its status");
            }
            if (!says_what_failed(stage, worker_side, mode, first.status, first.what)) {
                return fail("the error does not say what failed");
            }
            if (first.task < -1 || first.task >= static_cast<std::int64_t>(kTasks)) {
                return fail("the task index is out of range");
            }
            for (const auto& [i, why] : first.blamed) {
                if (!contains(why, "failpoint " + stage) && !contains(why, "WORKER_DIED") &&
                    !contains(why, "TIMEOUT") && !contains(why, "panicked")) {
                    return fail("element " + std::to_string(i) + " is blamed for something else");
                }
                if (contains(why, "its task index is")) {
                    return fail("element " + std::to_string(i) + "'s error names another task");
                }
            }
            if (!first.blamed.empty() && first.blamed.size() + first.got.size() != kTasks) {
                return fail("map_collect lost elements");
            }
        }

        disarm();
        if (!par) {
            par.emplace(options());
        }
        // What a failed submit left is collected first (submit + collect only).
        if (style == "submit") {
            pj_results_t* raw = nullptr;
            if (pj_parallel_collect(par->capi(), &raw, nullptr) == PJ_STATUS_OK) {
                pj_results_free(raw);
            }
        }
        const Call second = one_call(*par, method, style);
        std::printf("second %s %s got %zu\n", second.ok ? "OK" : pj::status_str(second.status),
                    second.what.c_str(), second.got.size());
        if (!second.ok || wrong(second) != 0 ||
            (style != "for_each" && second.got.size() != kTasks)) {
            return fail("the next call on the same pj::Parallel did not work");
        }
    }
    const std::size_t kids = settle(children, kids_before);
    const std::size_t threads = settle([] { return count_dir("/proc/self/task"); }, threads_before);
    const std::size_t fds = count_dir("/proc/self/fd");
    std::printf("children %zu threads %zu fds %zu\n", kids - kids_before, threads - threads_before,
                fds - fds_before);
    if (kids != kids_before) {
        return fail("child processes were left");
    }
    if (threads > threads_before) {
        return fail("threads were left");
    }
    if (fds > fds_before) {
        return fail("descriptors were left");
    }
    const std::vector<std::string> left = files_under(env("PJ_TEMP_FOLDER"));
    if (!left.empty()) {
        return fail("files were left in the temp folder: " + left.front());
    }
    std::printf("PASS\n");
    return 0;
}

// ------------------------------------------------------------------------------------------------
// The driver
// ------------------------------------------------------------------------------------------------

struct Cell {
    std::string spec;  // stage=mode@n
    std::string cell;  // method,style
};

/// The cells: each armed worker stage and mode on both start methods, with the call styles
/// rotated so that each style meets every stage; the caller-side stages with the modes a caller
/// survives (error, panic). A hung spawned worker's start waits out the 30 s handshake limit: on
/// fork only.
std::vector<Cell> cells() {
    const std::vector<std::string> styles = {"map", "imap", "for_each", "submit", "collect"};
    const std::vector<std::pair<std::string, int>> worker_stages = {
        {"worker_start", 1}, {"batch_receive", 2}, {"arg_map", 2},
        {"result_encode", 2}, {"result_send", 2},  {"task_cleanup", 2}};
    const std::vector<std::string> modes = {"error", "panic", "exit", "segv", "hang"};
    std::vector<Cell> out;
    std::size_t k = 0;
    for (const auto& [stage, pass] : worker_stages) {
        for (const std::string& mode : modes) {
            for (const std::string method : {"fork", "spawn"}) {
                const std::string style = styles[k++ % styles.size()];
                if (stage == "worker_start" && mode == "hang" && method == "spawn") {
                    continue;
                }
                out.push_back({stage + "=" + mode + "@" + std::to_string(pass), method + "," + style});
            }
        }
    }
    // A spilled argument: only where elements travel as bytes (imap, submit, and every call on
    // spawned workers; map and map_collect over a vector on forked workers read them in place).
    for (const std::string mode : {"error", "panic"}) {
        for (const std::string cell : {"fork,imap", "fork,submit", "spawn,map", "spawn,imap",
                                       "spawn,submit", "spawn,collect"}) {
            out.push_back({"spill_write=" + mode + "@5", cell});
        }
    }
    // Every exported call the cell makes fails in turn (the n-th, from making the options to the
    // last call of the armed call; the first two are main's pj::register_* calls, which throw
    // their pj::Error out of main): each either fails the call with an error naming the stage or
    // the function, or is one whose failure changes nothing a user sees (pj_parallel_expect,
    // for progress only).
    // A for_each cell makes 13 exported calls up to the end of its armed call: beyond, the next
    // style.
    for (int n = 3; n <= 24; ++n) {
        for (const std::string method : {"fork", "spawn"}) {
            std::string style = styles[k++ % styles.size()];
            if (style == "for_each" && n > 13) {
                style = styles[k++ % styles.size()];
            }
            out.push_back({"export=error@" + std::to_string(n), method + "," + style});
        }
    }
    for (int n : {3, 9, 12}) {
        out.push_back({"export=panic@" + std::to_string(n), "fork," + styles[k++ % styles.size()]});
    }
    return out;
}

struct Running {
    const Cell* cell;
    pid_t pid;
    std::string folder;
    std::chrono::steady_clock::time_point started;
};

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

pid_t start_cell(const Cell& cell, const std::string& folder) {
    const std::string temp = folder + "/temp", fp = folder + "/fp";
    ::mkdir(temp.c_str(), 0700);
    ::mkdir(fp.c_str(), 0700);
    const std::string out = folder + "/out";
    const pid_t pid = ::fork();
    if (pid == 0) {
        const int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        ::dup2(fd, 1);
        ::dup2(fd, 2);
        ::setenv("PJ_FAILPOINTS", cell.spec.c_str(), 1);
        ::setenv("PJ_FP_CELL", cell.cell.c_str(), 1);
        ::setenv("PJ_FAILPOINTS_DIR", fp.c_str(), 1);
        ::setenv("PJ_TEMP_FOLDER", temp.c_str(), 1);
        ::execl("/proc/self/exe", "cpp_failpoints", static_cast<char*>(nullptr));
        ::_exit(127);
    }
    return pid;
}

TEST(Failpoints, Matrix) {
    const auto limit = std::chrono::seconds(60);
    const std::vector<Cell> all = cells();
    char root_template[] = "/tmp/pj-cpp-fp-XXXXXX";
    ASSERT_NE(::mkdtemp(root_template), nullptr);
    const std::string root = root_template;
    std::vector<std::string> failures;
    std::vector<Running> running;
    std::size_t next = 0;
    // The hang cells first, so that the slow ones overlap the rest.
    std::vector<const Cell*> order;
    for (const Cell& c : all) {
        if (contains(c.spec, "=hang")) order.push_back(&c);
    }
    for (const Cell& c : all) {
        if (!contains(c.spec, "=hang")) order.push_back(&c);
    }
    const std::string only = env("PJ_FP_ONLY");  // stage[,stage]: while working on them
    while (next < order.size() || !running.empty()) {
        while (running.size() < 3 && next < order.size()) {
            const Cell* c = order[next];
            const std::string folder = root + "/" + std::to_string(next++);
            if (!only.empty() && !contains(only, c->spec.substr(0, c->spec.find('=')))) {
                continue;
            }
            ::mkdir(folder.c_str(), 0700);
            running.push_back({c, start_cell(*c, folder), folder, std::chrono::steady_clock::now()});
        }
        bool any = false;
        for (auto it = running.begin(); it != running.end();) {
            int status = 0;
            const pid_t done = ::waitpid(it->pid, &status, WNOHANG);
            const bool hung = done == 0 && std::chrono::steady_clock::now() - it->started > limit;
            if (done == 0 && !hung) {
                ++it;
                continue;
            }
            if (hung) {
                ::kill(it->pid, SIGKILL);
                ::waitpid(it->pid, &status, 0);
            }
            any = true;
            const std::string out = read_file(it->folder + "/out");
            const std::string name = it->cell->spec + " on " + it->cell->cell;
            if (env("PJ_FP_VERBOSE") != "") {
                std::printf("--- %s\n%s", name.c_str(), out.c_str());
            }
            if (hung) {
                failures.push_back(name + ": hung (killed after 60 s)");
            } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                const auto lines = split(out, '\n');
                failures.push_back(name + ": " +
                                   (WIFSIGNALED(status)
                                        ? "the cell died of signal " + std::to_string(WTERMSIG(status))
                                        : "exit " + std::to_string(WEXITSTATUS(status))) +
                                   ": " + (lines.empty() ? "" : lines.back()) + "\n" + out);
            }
            std::error_code ignored;
            std::filesystem::remove_all(it->folder, ignored);
            it = running.erase(it);
        }
        if (!any) {
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
    }
    std::error_code ignored;
    std::filesystem::remove_all(root, ignored);
    std::printf("C++ failpoint matrix: %zu cells, %zu failed\n", all.size(), failures.size());
    for (const std::string& f : failures) {
        ADD_FAILURE() << f;
    }
}

}  // namespace

int main(int argc, char** argv) {
    pj::register_function<square>("square");
    pj::register_range<fill_range>("fill_range");
    pj::worker_main_if_requested(argc, argv);  // a spawned worker serves here and exits
    if (!env("PJ_FP_CELL").empty()) {
        return run_cell();
    }
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
