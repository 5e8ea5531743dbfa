#!/usr/bin/env python3
"""The joblib column of benches/compare.rs, which runs it with python3 once per workload.

Prints, for each measured variant, a line "NAME T1 T2 ..." (the wall time of each run, in
seconds), optionally followed by "note NAME TEXT"; a variant that cannot run here gives
"skip NAME REASON" instead. Every Parallel uses n_jobs=2 and joblib's default backend (loky worker
processes).

    joblib_bench.py trivial N RUNS      [x * 2 for x in range(N)] as N tasks (Python ints)
    joblib_bench.py cpu TASKS RUNS      TASKS spin loops calibrated here to about 1 ms each
    joblib_bench.py buffer BYTES RUNS   sum of the bytes of a BYTES buffer, 2 tasks of one half
                                        each (needs numpy)
    joblib_bench.py cold RUNS           a fresh Parallel running 2 trivial tasks, with no loky
                                        worker alive before it ("cold") and with live ones ("warm")
    joblib_bench.py data BYTES CALLS    the data path (benches/data.rs): BYTES of uint8 passed as
                                        512 KiB and 4 MiB numpy arguments (memmapping on: joblib's
                                        default max_nbytes 1M; and off: max_nbytes=None), and
                                        returned as 512 KiB arrays; one Parallel kept for CALLS
                                        calls of each (needs numpy); times are per call, call 1 first
"""

import os
import sys
import tempfile
import time

from joblib import Parallel, delayed

MASK = (1 << 64) - 1


def emit(name, seconds=None, skip=None, note=None):
    if skip is not None:
        print(f"skip {name} {skip}", flush=True)
        return
    print(" ".join([name] + [f"{t:.9f}" for t in seconds]), flush=True)
    if note is not None:
        print(f"note {name} {note}", flush=True)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def double(x):
    return x * 2


def spin(iters, seed):
    """The loop of spin() in benches/compare.rs, in Python."""
    x = seed
    for i in range(iters):
        x = (x * 6364136223846793005 + i) & MASK
    return x


def sum_half(array, half):
    import numpy as np

    n = len(array) // 2
    part = array[:n] if half == 0 else array[n:]
    return int(part.sum(dtype=np.uint64))


def shutdown_workers():
    """Stops loky's reusable executor (the worker processes joblib keeps between calls)."""
    from joblib.externals.loky import reusable_executor

    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True)


def trivial(n, runs):
    items = range(n)
    serial = []
    for _ in range(runs):
        t, out = timed(lambda: [double(x) for x in items])
        assert out[-1] == 2 * (n - 1)
        serial.append(t)
    emit("serial", serial)
    with Parallel(n_jobs=2) as parallel:
        parallel(delayed(double)(x) for x in items)  # warm-up: starts the workers
        times = []
        for _ in range(runs):
            t, out = timed(lambda: parallel(delayed(double)(x) for x in items))
            assert out[-1] == 2 * (n - 1)
            times.append(t)
    emit("joblib", times)


def calibrate():
    """Iterations of spin() that take about 1 ms here (the fastest of several measurements)."""
    iters = 1000
    while True:
        t, _ = timed(lambda: spin(iters, 1))
        if t > 0.01:
            break
        iters *= 2
    best = min(timed(lambda: spin(iters, 1))[0] for _ in range(5))
    return max(1, int(iters * 1e-3 / best))


def cpu(tasks, runs):
    iters = calibrate()
    note = f"{iters} iterations (calibrated in Python to about 1 ms)"
    serial = []
    for _ in range(runs):
        t, out = timed(lambda: [spin(iters, s) for s in range(tasks)])
        serial.append(t)
    emit("serial", serial, note=note)
    check = out[-1]
    Parallel(n_jobs=2)(delayed(double)(x) for x in range(10))  # warm-up: starts the workers
    times = []
    for _ in range(runs):
        t, out = timed(lambda: Parallel(n_jobs=2)(delayed(spin)(iters, s) for s in range(tasks)))
        assert out[-1] == check
        times.append(t)
    emit("joblib", times, note=note)


def buffer(nbytes, runs):
    try:
        import numpy as np
    except ImportError:
        for name in ("serial", "joblib", "joblib_memmap"):
            emit(name, skip="numpy not installed: pip install numpy")
        return
    import joblib

    # Byte i is (i * 31) mod 256, as in benches/compare.rs.
    array = np.resize(np.arange(256, dtype=np.uint64).astype(np.uint8) * np.uint8(31), nbytes)
    expected = int(array.sum(dtype=np.uint64))

    serial = []
    for _ in range(runs):
        t, s = timed(lambda: int(array.sum(dtype=np.uint64)))
        assert s == expected
        serial.append(t)
    emit("serial", serial)

    Parallel(n_jobs=2)(delayed(double)(x) for x in range(10))  # warm-up: starts the workers
    times = []
    for _ in range(runs):
        t, out = timed(lambda: Parallel(n_jobs=2)(delayed(sum_half)(array, h) for h in (0, 1)))
        assert sum(out) == expected
        times.append(t)
    emit("joblib", times, note="ndarray argument: joblib memmaps it (max_nbytes 1M) at each call")

    with tempfile.TemporaryDirectory(prefix="pj-compare-") as folder:
        path = os.path.join(folder, "buffer.pkl")
        joblib.dump(array, path)
        mapped = joblib.load(path, mmap_mode="r")
        times = []
        for _ in range(runs):
            t, out = timed(
                lambda: Parallel(n_jobs=2)(delayed(sum_half)(mapped, h) for h in (0, 1))
            )
            assert sum(out) == expected
            times.append(t)
        del mapped
    emit("joblib_memmap", times, note="np.memmap dumped before the call")


def sample64(part):
    """The data bench's task work: one byte in 64 read and summed."""
    import numpy as np

    return int(part[::64].sum(dtype=np.uint64))


def chunk_of(source, chunk, index):
    """Chunk `index` of the pre-dumped source, copied: a 512 KiB result."""
    return source[index * chunk : (index + 1) * chunk].copy()


def data(nbytes, calls):
    try:
        import numpy as np
    except ImportError:
        for name in ("args512", "args4m", "args4m_nomemmap", "results512"):
            emit(name, skip="numpy not installed: pip install numpy")
        return
    import joblib

    # Byte i is i mod 251, as in benches/data.rs.
    source = (np.arange(nbytes, dtype=np.uint64) % 251).astype(np.uint8)
    variants = [
        ("args512", 512 << 10, {}, "512 KiB ndarray arguments (below max_nbytes 1M: pickled)"),
        ("args4m", 4 << 20, {}, "4 MiB ndarray arguments (memmapped by joblib, max_nbytes 1M)"),
        (
            "args4m_nomemmap",
            4 << 20,
            {"max_nbytes": None},
            "4 MiB ndarray arguments, memmapping off (max_nbytes=None: pickled)",
        ),
    ]
    for name, chunk, options, note in variants:
        parts = [source[i : i + chunk] for i in range(0, nbytes, chunk)]
        expected = sum(sample64(p) for p in parts)
        times = []
        with Parallel(n_jobs=2, **options) as parallel:
            for _ in range(calls):
                t, out = timed(lambda: parallel(delayed(sample64)(p) for p in parts))
                assert sum(out) == expected
                times.append(t)
        emit(name, times, note=note)

    chunk = 512 << 10
    with tempfile.TemporaryDirectory(prefix="pj-data-") as folder:
        path = os.path.join(folder, "source.pkl")
        joblib.dump(source, path)
        mapped = joblib.load(path, mmap_mode="r")
        n = nbytes // chunk
        times = []
        with Parallel(n_jobs=2) as parallel:
            for _ in range(calls):
                t, out = timed(lambda: parallel(delayed(chunk_of)(mapped, chunk, i) for i in range(n)))
                assert len(out) == n and all(len(r) == chunk for r in out)
                assert int(out[-1][::4096].sum()) == int(source[(n - 1) * chunk :: 4096].sum())
                times.append(t)
                del out
        del mapped
    emit(
        "results512",
        times,
        note="512 KiB ndarray results (pickled back), read in the workers from a pre-dumped np.memmap",
    )
    shutdown_workers()


def cold(runs):
    times = []
    for _ in range(runs):
        shutdown_workers()
        t, out = timed(lambda: Parallel(n_jobs=2)(delayed(double)(x) for x in range(2)))
        assert out == [0, 2]
        times.append(t)
    emit("cold", times, note="fresh Parallel, loky workers shut down before each run")
    times = []
    for _ in range(runs):
        t, out = timed(lambda: Parallel(n_jobs=2)(delayed(double)(x) for x in range(2)))
        assert out == [0, 2]
        times.append(t)
    emit("warm", times, note="fresh Parallel, loky workers alive from the previous call")


def main(argv):
    usage = "usage: joblib_bench.py trivial N RUNS | cpu TASKS RUNS | buffer BYTES RUNS | data BYTES CALLS | cold RUNS"
    if len(argv) == 4 and argv[1] == "trivial":
        trivial(int(argv[2]), int(argv[3]))
    elif len(argv) == 4 and argv[1] == "cpu":
        cpu(int(argv[2]), int(argv[3]))
    elif len(argv) == 4 and argv[1] == "buffer":
        buffer(int(argv[2]), int(argv[3]))
    elif len(argv) == 4 and argv[1] == "data":
        data(int(argv[2]), int(argv[3]))
    elif len(argv) == 3 and argv[1] == "cold":
        cold(int(argv[2]))
    else:
        print(usage, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
