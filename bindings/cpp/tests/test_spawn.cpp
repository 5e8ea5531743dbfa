// Parallel::map<F> with registered functions on workers started afresh (start_method "spawn"):
// this program is its own worker, so it has its own main (no GoogleTest). Exits non-zero on the
// first failed check.
#include "pj.hpp"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
    std::printf("%s: %s\n", ok ? "ok" : "FAILED", what.c_str());
    if (!ok) {
        ++failures;
    }
}

double root(const double& x) { return std::sqrt(x); }

// Returns the input with the pid of the process that ran it; throws on "bad".
std::string tag(std::string s) {
    if (s == "bad") {
        throw std::runtime_error("no bad words");
    }
    return s + "@" + std::to_string(getpid());
}

std::string not_registered(const std::string& s) { return s; }

// A range function: fails on the range holding item 777.
void check_range(std::size_t begin, std::size_t end) {
    if (begin <= 777 && 777 < end) {
        throw std::runtime_error("777 is in this range");
    }
}

void never_registered_range(std::size_t, std::size_t) {}

}  // namespace

int main(int argc, char** argv) {
    pj::register_function<root>("root");
    pj::register_function<tag>("tag");
    pj::register_range<check_range>("check_range");
    pj::worker_main_if_requested(argc, argv);  // a spawned worker serves here and exits

    pj::Parallel par(pj::Options().n_jobs(2).start_method("spawn"));
    std::vector<double> roots = par.map<root>(std::vector<double>{0, 1, 4, 9, 16, 25});
    check(roots == std::vector<double>{0, 1, 2, 3, 4, 5}, "map<root> returns the roots in order");

    std::vector<std::string> inputs;
    for (int i = 0; i < 50; i++) {
        inputs.push_back("s" + std::to_string(i));
    }
    std::vector<std::string> tagged = par.map<tag>(inputs);
    bool in_order = tagged.size() == inputs.size();
    std::set<std::string> pids;
    for (std::size_t i = 0; in_order && i < inputs.size(); i++) {
        const std::size_t at = tagged[i].find('@');
        in_order = at != std::string::npos && tagged[i].substr(0, at) == inputs[i];
        if (in_order) {
            pids.insert(tagged[i].substr(at + 1));
        }
    }
    check(in_order, "map<tag> over 50 strings keeps their order");
    check(pids.count(std::to_string(getpid())) == 0, "the tasks ran in other processes");

    std::vector<std::size_t> streamed;
    bool streamed_right = true;
    for (auto&& [i, r] : par.imap<root>(std::vector<double>{0, 1, 4, 9})) {
        streamed.push_back(i);
        streamed_right = streamed_right && r == static_cast<double>(i);
    }
    check(streamed_right && streamed == std::vector<std::size_t>{0, 1, 2, 3},
          "imap<root> streams the roots in order");

    try {
        par.map<tag>({std::string("x"), std::string("bad"), std::string("y")});
        check(false, "a throwing registered function is reported");
    } catch (const pj::TaskError& e) {
        check(e.task_index() == 1 && std::string(e.what()).find("no bad words") != std::string::npos,
              std::string("a throwing registered function is reported: ") + e.what());
    }

    pj::Parallel collecting(pj::Options().n_jobs(2).start_method("spawn").on_error("collect"));
    std::vector<pj::Outcome<std::string>> outcomes =
        collecting.map_collect<tag>(std::vector<std::string>{"a", "bad", "c"});
    check(outcomes.size() == 3 && outcomes[0].ok() && !outcomes[1].ok() && outcomes[2].ok(),
          "map_collect<tag> gives each task's outcome");

    try {
        par.map<not_registered>(std::vector<std::string>{"a"});
        check(false, "an unregistered function is refused");
    } catch (const pj::InvalidArgument& e) {
        check(std::string(e.what()).find("pj_register") != std::string::npos,
              std::string("an unregistered function is refused: ") + e.what());
    }

    // A lambda cannot run in a spawned worker: the error says what to do in C++ terms.
    try {
        par.map(std::vector<int>{1, 2}, [](int x) { return x + 1; });
        check(false, "a lambda is refused with spawn");
    } catch (const pj::InvalidArgument& e) {
        const std::string message = e.what();
        check(message.find("pj::register_function") != std::string::npos &&
                  message.find("map<f>") != std::string::npos &&
                  message.find("start_method \"spawn\"") != std::string::npos &&
                  message.find("pj_register ") == std::string::npos,
              "a lambda with spawn is refused in C++ terms: " + message);
    }
    try {
        for (auto&& [i, r] : par.imap(std::vector<int>{1}, [](int x) { return x; })) {
            (void)i;
            (void)r;
        }
        check(false, "a lambda is refused by imap with spawn");
    } catch (const pj::InvalidArgument& e) {
        check(std::string(e.what()).find("pj::register_function") != std::string::npos,
              std::string("imap: ") + e.what());
    }

    // for_each<F>: the named parallel loop runs in the spawned workers; a range's exception is
    // reported with the range's items.
    par.for_each<check_range>(500);
    check(true, "for_each<check_range> over 500 items");
    try {
        par.for_each<check_range>(10000);
        check(false, "a throwing range function is reported");
    } catch (const pj::TaskError& e) {
        const std::string message = e.what();
        check(message.find("items ") == 0 && message.find("777 is in this range") != std::string::npos,
              "a throwing range function is reported with its items: " + message);
    }
    try {
        par.for_each<never_registered_range>(10);
        check(false, "an unregistered range function is refused");
    } catch (const pj::InvalidArgument& e) {
        check(std::string(e.what()).find("register_range") != std::string::npos,
              std::string("an unregistered range function is refused: ") + e.what());
    }
    // start_method "forkserver": the same registered functions, in forks of the fork server.
    pj::Parallel served(pj::Options().n_jobs(2).start_method("forkserver"));
    check(served.map<root>(std::vector<double>{0, 1, 4, 9}) == std::vector<double>{0, 1, 2, 3},
          "map<root> on forkserver workers");
    std::vector<std::string> served_tags = served.map<tag>(inputs);
    check(served_tags.size() == inputs.size() && served_tags[7].rfind("s7@", 0) == 0 &&
              served_tags[7] != "s7@" + std::to_string(getpid()),
          "map<tag> on forkserver workers runs in other processes, in order");

    // On threads, map<F> runs like map(inputs, F).
    pj::Parallel threads(pj::Options().n_jobs(2).backend("threads"));
    check(threads.map<root>({1.0, 4.0}) == std::vector<double>{1, 2}, "map<root> on threads");

    if (failures != 0) {
        std::printf("%d check(s) failed\n", failures);
        return 1;
    }
    std::printf("all checks passed\n");
    return 0;
}
