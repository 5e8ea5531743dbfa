#!/usr/bin/env python3
"""Writes the expected files of tests/verbose_golden.rs from joblib's real verbose output.

How the committed files were made (joblib 1.6.0, CPython 3.11, Linux, 2 CPUs):

    python3 -m venv /tmp/venv-joblib
    /tmp/venv-joblib/bin/pip install 'joblib==1.6.*'
    /tmp/venv-joblib/bin/python tests/golden/verbose/gen_joblib.py --repeat 5

For every configuration below it runs

    Parallel(n_jobs=..., batch_size=..., backend=..., verbose=V)(delayed(f)(i) for i in range(n))

with a trivial `f`, captures what joblib writes to sys.stdout and sys.stderr, normalises the
elapsed figures (see `normalise`) and writes `<config>-v<V>-n<n>.txt`: one line per line joblib
wrote, `stdout|` or `stderr|` first. The matrix: verbose 1, 2, 5, 10, 11, 50, 100 and
n = 1, 7, 10, 100, 1000, for
  - `sequential`: n_jobs=1, batch_size="auto" (joblib's sequential path);
  - `threading`: n_jobs=2, batch_size=1, backend="threading";
  - `loky`: n_jobs=2, batch_size=1, backend="loky";
plus `multiprocessing` (n_jobs=2, batch_size=1, backend="multiprocessing") at verbose 10, n=10,
for its start line.

The input is a generator, so joblib does not know the number of tasks in advance (the counts are
3 wide and the progress lines say "Done k tasks" while the input is being read), as with pj's
pj_parallel_map, submit/collect and imap/next. The `-list` configurations (`sequential-list`,
`threading-list`) pass a list instead, `[delayed(f)(i) for i in range(n)]`: joblib then knows
`len(iterable)` (the counts are as wide as n and the lines say "Done k out of n"), as pj does
after `pj_parallel_expect(par, n, 1)`.

With `--repeat R` every configuration runs R times; the first run is written, and the
configurations whose lines differed between runs are listed in `timing-dependent.txt` (the
parallel configurations whose sequence depends on scheduling). The sequential ones never differ.
Every loky worker is shut down before the script ends.
"""

import argparse
import contextlib
import io
import os
import re
import sys

from joblib import Parallel, delayed

VERBOSE = (1, 2, 5, 10, 11, 50, 100)
SIZES = (1, 7, 10, 100, 1000)
CONFIGS = {
    "sequential": dict(n_jobs=1),
    "threading": dict(n_jobs=2, batch_size=1, backend="threading"),
    "loky": dict(n_jobs=2, batch_size=1, backend="loky"),
    "multiprocessing": dict(n_jobs=2, batch_size=1, backend="multiprocessing"),
    "sequential-list": dict(n_jobs=1),
    "threading-list": dict(n_jobs=2, batch_size=1, backend="threading"),
}
# multiprocessing only for its start line.
ONLY = {"multiprocessing": [(10, 10)]}

# "elapsed: " and "remaining: " are followed by joblib's short_format_time: " %5.1fs" up to 60 s,
# "%4.1fmin" above, 7 characters either way.
TIME = re.compile(r"(elapsed|remaining): (?P<t> *\d+\.\d(?:s|min))")


def normalise(line):
    """Replaces each elapsed/remaining figure (7 characters) by `<t>`."""

    def token(match):
        figure = match.group("t")
        if len(figure) != 7:
            raise ValueError(f"a time figure that is not 7 characters wide: {line!r}")
        return f"{match.group(1)}: <t>"

    return TIME.sub(token, line)


def f(i):
    return i


def run(config, verbose, n):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        tasks = (delayed(f)(i) for i in range(n))
        if config.endswith("-list"):
            tasks = list(tasks)
        Parallel(verbose=verbose, **CONFIGS[config])(tasks)
    lines = []
    for name, text in (("stdout", out.getvalue()), ("stderr", err.getvalue())):
        if text and not text.endswith("\n"):
            raise ValueError(f"{config} v{verbose} n{n}: {name} ends mid-line")
        lines += [f"{name}|{normalise(line)}" for line in text.splitlines()]
    # One stream per verbose level: stderr below 50, stdout from 50, so the order between the two
    # streams never matters.
    streams = {line.split("|", 1)[0] for line in lines}
    if len(streams) > 1:
        raise ValueError(f"{config} v{verbose} n{n}: lines on both streams")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="configurations to write (default: all)")
    args = parser.parse_args()

    varying = []
    try:
        for config in args.only or CONFIGS:
            cases = ONLY.get(config, [(v, n) for v in VERBOSE for n in SIZES])
            for verbose, n in cases:
                runs = [run(config, verbose, n) for _ in range(args.repeat)]
                name = f"{config}-v{verbose}-n{n}"
                if any(r != runs[0] for r in runs):
                    varying.append(name)
                with open(os.path.join(args.out, f"{name}.txt"), "w") as file:
                    file.writelines(line + "\n" for line in runs[0])
    finally:
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)
    if args.only:
        # timing-dependent.txt lists the whole matrix: a partial run leaves it alone.
        print(f"timing-dependent among {args.only}: {varying}", file=sys.stderr)
        return
    with open(os.path.join(args.out, "timing-dependent.txt"), "w") as file:
        file.write(
            f"# Configurations whose lines differed between {args.repeat} runs of joblib.\n"
        )
        file.writelines(name + "\n" for name in varying)
    print(f"{len(varying)} timing-dependent configurations", file=sys.stderr)


if __name__ == "__main__":
    main()
