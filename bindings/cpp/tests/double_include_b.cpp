// The other translation unit of the double-include test (see double_include_a.cpp).
#include <string>
#include <vector>

#include "pj.hpp"

std::string other_unit(pj::Parallel& par);

std::string other_unit(pj::Parallel& par) {
    std::vector<std::string> words{"a", "bb", "ccc"};
    std::vector<std::string> same = par.map(words, [](const std::string& w) { return w; });
    std::string joined;
    for (const std::string& w : same) {
        joined += (joined.empty() ? "" : "-") + w;
    }
    try {
        pj::Options().set("n_jobs", "zero");
    } catch (const pj::InvalidArgument&) {
        return joined;
    }
    return "no InvalidArgument";
}
