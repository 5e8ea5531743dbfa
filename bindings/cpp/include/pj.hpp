/**
 * @file pj.hpp
 * @brief pj for C++17: joblib's `Parallel` with lambdas, typed results and exceptions.
 *
 * Header-only: include it (it includes pj.h) and link libpj.
 *
 * @code
 *     pj::Parallel par(pj::Options().n_jobs(2));         // forked worker processes by default
 *     std::vector<double> roots = par.map(inputs, [](double x) { return std::sqrt(x); });
 *
 *     for (auto&& [i, r] : par.imap(inputs, f)) { ... }  // streaming, in input order
 *     try { par.map(inputs, f); } catch (const pj::TaskError& e) { e.task_index(); e.what(); }
 *
 *     pj::Parallel each(pj::Options().n_jobs(2).on_error("collect")     // every task runs
 *                           .progress([](const pj::Progress& p) { ... }));  // on this thread
 *     for (const pj::Outcome<double>& o : each.map_collect(inputs, f)) { o.ok(); o.error(); }
 * @endcode
 *
 * @par Ownership
 * Every C handle has one move-only owner that frees it: pj::Options (pj_config_t), pj::Parallel
 * (pj_parallel_t), pj::Results (pj_results_t), pj::ErrorHandle (pj_error_t; pj::Error copies what
 * it needs from one, so exceptions stay copyable). `capi()` lends the raw handle (still owned),
 * `release()` gives it up (the caller frees it with the C function). No owner is copyable; the
 * exceptions are.
 *
 * @par Errors
 * Every failure is thrown: pj::Error (a std::runtime_error carrying the pj_status, the task index
 * and pj's multi-line report) or its subclass for the status (TaskError, TimeoutError,
 * WorkerDiedError, CancelledError, InvalidArgument). A function's exception is caught inside a
 * `noexcept` trampoline and becomes a TaskError whose message holds its what() (or "unknown C++
 * exception"): nothing unwinds into pj, std::terminate is never called, and the pj::Parallel is
 * ready for the next call. An exception thrown by the input range (while pj pulls inputs, on the
 * caller's thread) or by the progress function (Options::progress, on the caller's thread; it also
 * cancels the call) is rethrown as it is. With on_error("collect"), Parallel::map_collect returns
 * each task's pj::Outcome (value or pj::Error) instead of throwing the first failure.
 *
 * @par Where a function runs (read this once)
 * - "processes" (the default backend, as in joblib): in worker processes forked from the caller
 *   when the call starts. The function object, what it captures and everything else that exists at
 *   that moment is valid in the worker (a copy-on-write image), so lambdas just work. But what a
 *   task writes to memory (a captured counter, a global) stays in the worker: return the result.
 *   Results travel back as bytes, through pj::codec; so do inputs, except in map over a
 *   random-access range (see Parallel::map). An exception in a worker comes back as
 *   text; a crash (std::abort(), a signal) kills only that worker and throws WorkerDiedError. The
 *   worker has only the forking thread: do not wait for a lock another thread of your program may
 *   hold. With keep_workers(true) the workers keep the image of the first call, so later calls must
 *   not rely on anything created after it: do not combine it with capturing lambdas (map then
 *   sends a random-access range's elements as bytes too, when set through pj::Options).
 * - "threads": on pj's worker threads, several at once, on the same function object: it must be
 *   thread-safe (it is called as a non-const lvalue; a `mutable` lambda races with itself).
 * - n_jobs 1 (the default when unset) or "sequential": on the caller's thread.
 * - Everywhere: a long function can poll pj::cancelled() and return early once its call is
 *   cancelled, has failed or is being destroyed (a call waits for the functions running on
 *   threads).
 *
 * @par What each failure throws (worker processes)
 * Whatever fails, the call returns (a stuck worker within the timeout, when one is set), never with
 * a wrong result; task_index() names the task (or, over a random-access range, the first element of
 * the chunk; what() then says "items i..j"); the pj::Parallel is ready for the next call; and no
 * worker process, descriptor or temp file is left (test_failpoints.cpp injects each of these).
 * - The function throws: TaskError, what() holds its what() ("unknown C++ exception" otherwise).
 * - A worker dies: it crashed, exited, or pj itself failed in it while sending or encoding a
 *   result or cleaning up after a task (pj ends such a worker): WorkerDiedError, what() saying
 *   how ("exited with exit status 4", "was killed by SIGSEGV") and the worker's pid.
 * - A worker dies before any task of its batch started (receiving or mapping the batch): it is
 *   replaced and the batch runs again; the call succeeds.
 * - A task runs past timeout, or a worker is stuck outside any task (receiving, mapping or
 *   returning a batch): TimeoutError ("stuck outside any task" in what() for the latter); the
 *   worker is killed and replaced. Without a timeout, a stuck worker is waited for.
 * - A worker cannot start (a spawned one that ends before its handshake, or a start that fails):
 *   pj::Error with PJ_STATUS_IO ("cannot start a worker process: ...") or WorkerDiedError.
 * - pj's own I/O fails (a spilled argument cannot be written: "task 4: its argument (2048 bytes)
 *   cannot be stored: ..."; a batch or its arguments cannot be read in the worker): pj::Error
 *   with PJ_STATUS_IO naming the task.
 * - pj panics (a bug in pj): pj::Error with PJ_STATUS_PANIC, "pj panicked: ..."; no unwinding
 *   crosses into your code.
 * - A C function of pj that reports only a status fails: pj::Error naming it ("pj_config_new
 *   failed", "pj::Results: pj_results_get failed for result 3 of 24").
 *
 * @par Threading
 * A pj::Parallel runs one call at a time; another thread that uses it meanwhile gets a pj::Error
 * with PJ_STATUS_BUSY. A task must not use the pj::Parallel running it (also BUSY).
 */
#ifndef PJ_HPP
#define PJ_HPP

#include <pj.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <pthread.h>
#include <unistd.h>

namespace pj {

class Options;
class Parallel;
class ScopedConfig;

// ------------------------------------------------------------------------------------------------
// Version and machine
// ------------------------------------------------------------------------------------------------

/// pj's version, e.g. "0.1.0" (the library's, at run time).
inline const char* version() noexcept { return pj_version(); }

/// A short static description of a status, e.g. "PJ_STATUS_TIMEOUT: a task exceeded the timeout".
inline const char* status_str(pj_status status) noexcept {
    return pj_status_str(static_cast<std::uint32_t>(status));
}

/// The number of CPUs pj may use (affinity, cgroup quota and PJ_MAX_CPU_COUNT included).
inline std::size_t cpu_count() noexcept { return pj_cpu_count(); }

/// 0 in your code, 1 inside a task of a top-level call, and so on (see pj_nesting_level).
inline std::size_t nesting_level() noexcept { return pj_nesting_level(); }

/// The callback code a task reports when its function threw (pj::TaskError::callback_code()).
inline constexpr std::int32_t exception_code = 1;

// ------------------------------------------------------------------------------------------------
// Handles
// ------------------------------------------------------------------------------------------------

/**
 * A move-only owner of one C handle, freed with `Free` (the pj `_free` function, NULL-safe).
 * The building block of Options, Parallel and Results; on its own for pj_error_t (ErrorHandle).
 */
template <typename T, void (*Free)(T*)>
class Handle {
public:
    /// Owns nothing.
    Handle() noexcept = default;
    /// Takes ownership of `raw` (may be NULL).
    explicit Handle(T* raw) noexcept : raw_(raw) {}
    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;
    Handle(Handle&& other) noexcept : raw_(other.release()) {}
    Handle& operator=(Handle&& other) noexcept {
        reset(other.release());
        return *this;
    }
    ~Handle() { Free(raw_); }

    /// The handle, still owned by this object (NULL when empty).
    T* capi() const noexcept { return raw_; }
    /// Gives up ownership: the caller frees the returned handle.
    T* release() noexcept {
        T* raw = raw_;
        raw_ = nullptr;
        return raw;
    }
    /// Frees the current handle and owns `raw` instead.
    void reset(T* raw = nullptr) noexcept {
        T* old = raw_;
        raw_ = raw;
        Free(old);
    }
    /// Whether it owns a handle.
    explicit operator bool() const noexcept { return raw_ != nullptr; }

private:
    T* raw_ = nullptr;
};

/// Owns a pj_error_t. pj::Error copies its contents, so you rarely need this.
using ErrorHandle = Handle<pj_error_t, pj_error_free>;

// ------------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------------

namespace detail {
struct ErrorAccess;
}

/**
 * Every error pj::* throws. what() is pj's one-line message (for a task: "task 7 failed with code
 * 1: <what the function threw>"); report() the multi-line report (kind, task index, backend,
 * worker, code, message). Copies share the report, so copying never throws.
 */
class Error : public std::runtime_error {
public:
    /// An error with `status` and `message`; an empty `report` is made from the two.
    Error(pj_status status, const std::string& message, std::string report = {},
          std::int64_t task_index = -1, std::int32_t callback_code = 0)
        : std::runtime_error(message),
          status_(status),
          task_index_(task_index),
          callback_code_(callback_code),
          report_(std::make_shared<const std::string>(
              report.empty() ? std::string(pj::status_str(status)) + "\n" + message + "\n"
                             : std::move(report))) {}

    /// The pj_status it was returned with.
    pj_status status() const noexcept { return status_; }
    /// The status as text, e.g. "PJ_STATUS_TASK_FAILED: a task failed".
    const char* status_str() const noexcept { return pj::status_str(status_); }
    /// The index (in input order, from 0) of the task it is about, or -1.
    std::int64_t task_index() const noexcept { return task_index_; }
    /// The failed task callback's non-zero code (pj::exception_code for a C++ exception), or 0.
    std::int32_t callback_code() const noexcept { return callback_code_; }
    /// pj's multi-line report, each line ending in '\n'.
    const std::string& report() const noexcept { return *report_; }

private:
    friend struct detail::ErrorAccess;
    pj_status status_;
    std::int64_t task_index_;
    std::int32_t callback_code_;
    std::shared_ptr<const std::string> report_;
};

/// A task failed: its function threw (or a C callback returned non-zero). task_index() names it.
class TaskError : public Error {
public:
    using Error::Error;
};

/// A task exceeded the configured timeout.
class TimeoutError : public Error {
public:
    using Error::Error;
};

/// A worker process died while running a task (std::abort(), a signal, exit()).
class WorkerDiedError : public Error {
public:
    using Error::Error;
};

/// The call was cancelled, or (pj::Stream) abandoned by another call on the same pj::Parallel.
class CancelledError : public Error {
public:
    using Error::Error;
};

/// An invalid option, key or argument (the message quotes it), or bytes a pj::codec cannot decode.
class InvalidArgument : public Error {
public:
    using Error::Error;
};

/**
 * Throws the exception class that matches `status`: TaskError (PJ_STATUS_TASK_FAILED),
 * TimeoutError, WorkerDiedError, CancelledError, InvalidArgument, or pj::Error for any other status.
 */
[[noreturn]] inline void throw_error(pj_status status, const std::string& message,
                                     std::string report = {}, std::int64_t task_index = -1,
                                     std::int32_t callback_code = 0) {
    switch (status) {
    case PJ_STATUS_TASK_FAILED:
        throw TaskError(status, message, std::move(report), task_index, callback_code);
    case PJ_STATUS_TIMEOUT:
        throw TimeoutError(status, message, std::move(report), task_index, callback_code);
    case PJ_STATUS_WORKER_DIED:
        throw WorkerDiedError(status, message, std::move(report), task_index, callback_code);
    case PJ_STATUS_CANCELLED:
        throw CancelledError(status, message, std::move(report), task_index, callback_code);
    case PJ_STATUS_INVALID_ARGUMENT:
        throw InvalidArgument(status, message, std::move(report), task_index, callback_code);
    default:
        throw Error(status, message, std::move(report), task_index, callback_code);
    }
}

/// Throws `error` again as the exception class for its status (TaskError, TimeoutError, ...).
[[noreturn]] inline void throw_error(const Error& error) {
    throw_error(error.status(), error.what(), error.report(), error.task_index(),
                error.callback_code());
}

/// Throws the exception for `status` with the contents of `error` (which may be empty).
[[noreturn]] inline void throw_error(pj_status status, const ErrorHandle& error) {
    const pj_error_t* raw = error.capi();
    if (raw == nullptr) {
        throw_error(status, pj::status_str(status));
    }
    throw_error(status, pj_error_message(raw), pj_error_report(raw), pj_error_task_index(raw),
                pj_error_callback_code(raw));
}

namespace detail {

struct ErrorAccess {
    static void set_task_index(Error& error, std::int64_t index) noexcept {
        error.task_index_ = index;
    }
};

/// Receives a C function's error_out and frees it: `check(pj_x(..., err.out()), err)`.
class ErrorSlot {
public:
    ErrorSlot() = default;
    ErrorSlot(const ErrorSlot&) = delete;
    ErrorSlot& operator=(const ErrorSlot&) = delete;
    ~ErrorSlot() { pj_error_free(raw_); }
    pj_error_t** out() noexcept { return &raw_; }
    ErrorHandle take() noexcept {
        ErrorHandle handle(raw_);
        raw_ = nullptr;
        return handle;
    }

private:
    pj_error_t* raw_ = nullptr;
};

/// Throws unless `status` is PJ_STATUS_OK.
inline void check(pj_status status, ErrorSlot& error) {
    if (status != PJ_STATUS_OK) {
        throw_error(status, error.take());
    }
}

}  // namespace detail

// ------------------------------------------------------------------------------------------------
// Codecs
// ------------------------------------------------------------------------------------------------

/**
 * How a value of type T travels as bytes (inputs to the tasks, results back) where it must: across
 * processes, and in imap and map<F> (Parallel::map over a random-access range needs none on
 * threads and sequentially, and none for inputs on forked processes). The primary template
 * handles trivially copyable types (their object representation, checked for size); pj.hpp
 * specialises it for std::string and std::vector<U> of trivially copyable U. Specialise it for
 * your own types, before the call that uses them:
 *
 * @code
 *     template <> struct pj::codec<Named> {
 *         static std::size_t size(const Named& v);                       // bytes encode() writes
 *         static void encode(const Named& v, std::uint8_t* dst);          // exactly size(v) bytes
 *         static Named decode(const std::uint8_t* data, std::size_t len); // throw when malformed
 *     };
 * @endcode
 *
 * `dst` and `data` carry no alignment promise: copy with std::memcpy. decode() may throw (any
 * exception; pj::InvalidArgument by convention): inside a task that fails the task, on the
 * caller's side the exception propagates (a pj::Error gets the task's index).
 */
template <typename T>
struct codec {
    /// True when T cannot travel as bytes (pj::has_codec_v<T> is then false): T is not trivially
    /// copyable and nobody specialised pj::codec<T>. The functions then refuse to compile.
    static constexpr bool unsupported = !std::is_trivially_copyable_v<T>;

    static std::size_t size(const T&) noexcept {
        static_assert(std::is_trivially_copyable_v<T>,
                      "pj::codec<T>: T is not trivially copyable; specialise pj::codec<T> to send "
                      "it between processes");
        return sizeof(T);
    }
    static void encode(const T& value, std::uint8_t* dst) noexcept {
        static_assert(std::is_trivially_copyable_v<T>,
                      "pj::codec<T>: T is not trivially copyable; specialise pj::codec<T> to send "
                      "it between processes");
        std::memcpy(dst, std::addressof(value), sizeof(T));
    }
    static T decode(const std::uint8_t* data, std::size_t len) {
        static_assert(std::is_trivially_copyable_v<T>,
                      "pj::codec<T>: T is not trivially copyable; specialise pj::codec<T> to send "
                      "it between processes");
        if (len != sizeof(T)) {
            throw InvalidArgument(PJ_STATUS_INVALID_ARGUMENT,
                                  "pj::codec: expected " + std::to_string(sizeof(T)) +
                                      " bytes for a trivially copyable value, got " +
                                      std::to_string(len));
        }
        // Trivially copyable: copying the bytes into suitably aligned storage makes the object.
        alignas(T) unsigned char storage[sizeof(T)];
        std::memcpy(storage, data, sizeof(T));
        return *std::launder(reinterpret_cast<T*>(storage));
    }
};

/// std::string: its bytes, no terminator.
template <typename Char, typename Traits, typename Alloc>
struct codec<std::basic_string<Char, Traits, Alloc>> {
    using string_type = std::basic_string<Char, Traits, Alloc>;
    static_assert(std::is_trivially_copyable_v<Char>, "pj::codec: unsupported character type");

    static std::size_t size(const string_type& s) noexcept { return s.size() * sizeof(Char); }
    static void encode(const string_type& s, std::uint8_t* dst) noexcept {
        if (!s.empty()) {
            std::memcpy(dst, s.data(), s.size() * sizeof(Char));
        }
    }
    static string_type decode(const std::uint8_t* data, std::size_t len) {
        if (len % sizeof(Char) != 0) {
            throw InvalidArgument(PJ_STATUS_INVALID_ARGUMENT,
                                  "pj::codec<std::basic_string>: " + std::to_string(len) +
                                      " bytes is not a whole number of characters");
        }
        string_type s(len / sizeof(Char), Char());
        if (len != 0) {
            std::memcpy(&s[0], data, len);
        }
        return s;
    }
};

/// std::vector<U> of trivially copyable U: its elements' bytes, back to back.
template <typename U, typename Alloc>
struct codec<std::vector<U, Alloc>> {
    using vector_type = std::vector<U, Alloc>;
    /// See the primary template: a vector of U that is not trivially copyable (or bool) has no
    /// codec unless you specialise pj::codec for it.
    static constexpr bool unsupported = !std::is_trivially_copyable_v<U> || std::is_same_v<U, bool>;

    static std::size_t size(const vector_type& v) noexcept {
        static_assert(!unsupported,
                      "pj::codec<std::vector<U>>: U must be trivially copyable (and not bool); "
                      "specialise pj::codec for this vector type");
        return v.size() * sizeof(U);
    }
    static void encode(const vector_type& v, std::uint8_t* dst) noexcept {
        static_assert(!unsupported,
                      "pj::codec<std::vector<U>>: U must be trivially copyable (and not bool); "
                      "specialise pj::codec for this vector type");
        if (!v.empty()) {
            std::memcpy(dst, v.data(), v.size() * sizeof(U));
        }
    }
    static vector_type decode(const std::uint8_t* data, std::size_t len) {
        static_assert(!unsupported,
                      "pj::codec<std::vector<U>>: U must be trivially copyable (and not bool); "
                      "specialise pj::codec for this vector type");
        if (len % sizeof(U) != 0) {
            throw InvalidArgument(PJ_STATUS_INVALID_ARGUMENT,
                                  "pj::codec<std::vector>: " + std::to_string(len) +
                                      " bytes is not a multiple of the element size " +
                                      std::to_string(sizeof(U)));
        }
        vector_type v(len / sizeof(U));
        if (len != 0) {
            std::memcpy(v.data(), data, len);
        }
        return v;
    }
};

namespace detail {
template <typename T, typename = void>
struct codec_unsupported : std::false_type {};  // a specialisation of yours: supported
template <typename T>
struct codec_unsupported<T, std::void_t<decltype(codec<T>::unsupported)>>
    : std::bool_constant<codec<T>::unsupported> {};
}  // namespace detail

/**
 * Whether values of T can travel as bytes: T is trivially copyable, a std::string, a std::vector
 * of trivially copyable elements, or you specialised pj::codec<T>. Parallel::map and
 * map_collect over a random-access range need no codec on threads and sequentially, nor for
 * inputs on forked processes (see Parallel::map); everything else that crosses a process does.
 */
template <typename T>
inline constexpr bool has_codec_v = !detail::codec_unsupported<T>::value;

// ------------------------------------------------------------------------------------------------
// Progress
// ------------------------------------------------------------------------------------------------

/**
 * One progress report, for a function given to Options::progress (which also accepts a function of
 * the three fields: `void(std::uint64_t completed, std::int64_t total, double elapsed_seconds)`).
 */
struct Progress {
    /// Tasks completed so far: 1, 2, 3, ... (one report per task, in this order; per element in
    /// a map over a random-access range, which runs chunks of elements per task).
    std::uint64_t completed = 0;
    /// The number of tasks in the call, or -1 while it is unknown (pj learns it when the input
    /// range has been read to its end).
    std::int64_t total = -1;
    /// Seconds since the call started.
    double elapsed_seconds = 0;

    /// Whether `total` is known.
    bool total_known() const noexcept { return total >= 0; }
};

namespace detail {

/// The function given to Options::progress, on the heap: shared by the Options, every Parallel
/// made from them and every ScopedConfig pushing them, because each C config copied from them
/// points at it.
struct ProgressState {
    ProgressState() = default;
    ProgressState(const ProgressState&) = delete;
    ProgressState& operator=(const ProgressState&) = delete;
    virtual ~ProgressState() = default;
    virtual void call(const Progress& progress) = 0;
};

template <typename F>
inline constexpr bool is_progress_function_v =
    std::is_invocable_v<F&, const Progress&> ||
    std::is_invocable_v<F&, std::uint64_t, std::int64_t, double>;

template <typename F>
struct ProgressFunction final : ProgressState {
    template <typename G>
    explicit ProgressFunction(G&& g) : f(std::forward<G>(g)) {}

    void call(const Progress& progress) override {
        if constexpr (std::is_invocable_v<F&, const Progress&>) {
            std::invoke(f, progress);
        } else {
            std::invoke(f, progress.completed, progress.total, progress.elapsed_seconds);
        }
    }

    F f;
};

using ProgressStates = std::vector<std::shared_ptr<ProgressState>>;

/// What pj.hpp itself must know of a call's options, since pj's C API does not tell it: the
/// on_error policy and keep_workers (as set through pj::Options, directly or in a ScopedConfig)
/// and the C++-only chunk_size. Unset fields inherit from this thread's ScopedConfigs.
struct WrapperSettings {
    std::optional<bool> collect;       // on_error: "collect" (true) or "raise" (false)
    std::optional<bool> keep_workers;  // keep_workers
    std::optional<std::size_t> chunk_size;  // Options::chunk_size (0: automatic)
    std::optional<bool> timeout;            // whether a timeout is set

    /// Records option `key` set to `value` (already accepted by pj).
    void note(const std::string& key, const std::string& value) {
        std::string v;
        for (char c : value) {
            if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
                v.push_back(static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c));
            }
        }
        if (key == "on_error") {
            collect = v == "collect";
        } else if (key == "keep_workers") {
            keep_workers = v == "true" || v == "1" || v == "yes" || v == "on";
        } else if (key == "timeout") {
            timeout = !(v == "none" || v == "inf" || v == "infinity");
        }
    }

    /// Each unset field taken from `outer`.
    void inherit(const WrapperSettings& outer) {
        if (!collect) {
            collect = outer.collect;
        }
        if (!keep_workers) {
            keep_workers = outer.keep_workers;
        }
        if (!chunk_size) {
            chunk_size = outer.chunk_size;
        }
        if (!timeout) {
            timeout = outer.timeout;
        }
    }
};

/// The WrapperSettings of this thread's ScopedConfigs, innermost last.
inline std::vector<WrapperSettings>& scoped_settings() {
    static thread_local std::vector<WrapperSettings> settings;
    return settings;
}

/// The progress functions of this thread's ScopedConfigs, innermost last (a pj::Parallel made in
/// their scope may inherit one, so it keeps them all alive).
inline ProgressStates& scoped_progress() {
    static thread_local ProgressStates states;
    return states;
}

/// A call pj.hpp drives on this thread (pj_parallel_map, pj_parallel_imap, pj_parallel_next):
/// which executor runs it, which progress functions it may call, and the first exception one of
/// them threw. Scopes nest (a task run on the caller's thread may make its own call).
class CallScope {
public:
    CallScope(pj_parallel_t* handle, const ProgressStates* states) noexcept
        : handle_(handle), states_(states), outer_(current()) {
        current() = this;
    }
    CallScope(const CallScope&) = delete;
    CallScope& operator=(const CallScope&) = delete;
    ~CallScope() { current() = outer_; }

    /// The innermost scope of this thread, or NULL.
    static CallScope*& current() noexcept {
        static thread_local CallScope* scope = nullptr;
        return scope;
    }

    /// Whether a progress function of this call threw.
    bool failed() const noexcept { return static_cast<bool>(error_); }
    /// Rethrows what a progress function of this call threw, if anything.
    void rethrow_if_failed() {
        if (error_) {
            std::rethrow_exception(std::exchange(error_, nullptr));
        }
    }

    /// Whether `state` is a progress function of this call's executor.
    bool owns(const void* state) const noexcept {
        if (states_ != nullptr) {
            for (const auto& owned : *states_) {
                if (owned.get() == state) {
                    return true;
                }
            }
        }
        return false;
    }

    /// For a chunked call, where pj reports elements a task at a time (completed jumps by a
    /// chunk): the progress function is then called once per element, as for other calls.
    void count_elements() noexcept { elements_ = true; }
    bool counts_elements() const noexcept { return elements_; }
    /// The last element count reported to the progress function (count_elements only).
    std::uint64_t& reported() noexcept { return reported_; }

    /// Keeps the first exception and cancels the call (pj_parallel_cancel only stores atomics).
    void fail(std::exception_ptr error) noexcept {
        if (!error_) {
            error_ = std::move(error);
            pj_parallel_cancel(handle_);
        }
    }

private:
    pj_parallel_t* handle_;
    const ProgressStates* states_;
    CallScope* outer_;
    std::exception_ptr error_;
    bool elements_ = false;
    std::uint64_t reported_ = 0;
};

/// The pj_progress_fn given to pj_config_set_progress: calls the function on the thread that drives
/// the call. Never lets anything unwind: an exception is kept in the call's CallScope, the call is
/// cancelled and the function is not called again during it; the pj.hpp call that drives it
/// (map, an iteration of a Stream) rethrows the exception once pj has returned. Outside a pj.hpp
/// call (the C API used on Parallel::capi()), an exception is dropped.
inline void progress_trampoline(void* userdata, std::uint64_t completed, std::int64_t total,
                                double elapsed_seconds) noexcept {
    CallScope* scope = CallScope::current();
    if (scope != nullptr && !scope->owns(userdata)) {
        scope = nullptr;  // another executor's call, made through the C API inside a task
    }
    if (scope != nullptr && scope->failed()) {
        return;  // the call is being cancelled: no more reports
    }
    try {
        auto* state = static_cast<ProgressState*>(userdata);
        if (scope != nullptr && scope->counts_elements()) {
            // One report per element, in order, however many a chunk completed.
            std::uint64_t& reported = scope->reported();
            while (reported < completed) {
                state->call(Progress{++reported, total, elapsed_seconds});
            }
            return;
        }
        state->call(Progress{completed, total, elapsed_seconds});
    } catch (...) {
        if (scope != nullptr) {
            scope->fail(std::current_exception());
        }
    }
}

}  // namespace detail

// ------------------------------------------------------------------------------------------------
// Options
// ------------------------------------------------------------------------------------------------

/**
 * Options for pj::Parallel (owns a pj_config_t). Every option starts unset, so joblib's defaults
 * (and scoped defaults, pj::ScopedConfig) apply. Each setter validates its value at once and
 * throws pj::InvalidArgument (quoting it) when it is bad; the options are then unchanged.
 * Setters chain, on lvalues and on temporaries:
 *
 * @code
 *     pj::Parallel par(pj::Options().n_jobs(-1).backend("threads").batch_size(64));
 *     auto opts = pj::Options().set("pre_dispatch", "3*n_jobs");
 * @endcode
 *
 * pj::Parallel copies the options: they may change or die afterwards (a progress function is
 * shared, not copied: see progress()). Move-only (pj has no pj_config_clone). Not thread-safe for
 * writing.
 */
class Options {
public:
    /// Every option unset.
    Options() {
        pj_config_t* raw = nullptr;
        pj_status status = pj_config_new(&raw);
        if (status != PJ_STATUS_OK) {
            throw_error(status, "pj_config_new failed");
        }
        handle_.reset(raw);
    }
    /// Takes ownership of a config made by pj_config_new.
    explicit Options(pj_config_t* raw) noexcept : handle_(raw) {}

    Options(Options&&) noexcept = default;
    Options& operator=(Options&&) noexcept = default;
    Options(const Options&) = delete;
    Options& operator=(const Options&) = delete;

    /// Any option by joblib keyword and spelling, e.g. set("n_jobs", "-1"), set("timeout", "none");
    /// see pj_config_set for the keys.
    Options& set(const std::string& key, const std::string& value) & {
        detail::ErrorSlot err;
        detail::check(pj_config_set(raw(), key.c_str(), value.c_str(), err.out()), err);
        settings_.note(key, value);
        return *this;
    }
    Options&& set(const std::string& key, const std::string& value) && {
        return std::move(set(key, value));
    }

    /// Workers: positive, or negative for "all CPUs but |n|-1" (-1: every CPU). 0 is invalid.
    Options& n_jobs(std::int64_t n) & {
        return apply(pj_config_set_n_jobs, n);
    }
    Options&& n_jobs(std::int64_t n) && { return std::move(n_jobs(n)); }

    /// "processes" (the default; "loky", "multiprocessing"), "threads" ("threading"), "sequential".
    /// "mpi" (after pj_mpi_main, pj_mpi.h) runs only functions registered with
    /// pj::register_function, through map<F>: lambdas are refused with pj::InvalidArgument.
    Options& backend(const std::string& name) & {
        return apply(pj_config_set_backend, name.c_str());
    }
    Options&& backend(const std::string& name) && { return std::move(backend(name)); }

    /// A soft backend hint: "threads", "processes" or "none".
    Options& prefer(const std::string& value) & { return set("prefer", value); }
    Options&& prefer(const std::string& value) && { return std::move(prefer(value)); }

    /// A hard constraint: "sharedmem" (threads only) or "none".
    Options& require(const std::string& value) & { return set("require", value); }
    Options&& require(const std::string& value) && { return std::move(require(value)); }

    /// joblib's verbosity (0 silent; progress lines on stderr below 50, on stdout from 50).
    Options& verbose(std::int64_t level) & {
        return apply(pj_config_set_verbose, level);
    }
    Options&& verbose(std::int64_t level) && { return std::move(verbose(level)); }

    /// A per-task time limit in seconds (> 0; INFINITY means none). A late task throws TimeoutError.
    Options& timeout(double seconds) & {
        apply(pj_config_set_timeout, seconds);
        settings_.timeout = seconds != std::numeric_limits<double>::infinity();
        return *this;
    }
    Options&& timeout(double seconds) && { return std::move(timeout(seconds)); }
    /// A per-task time limit as a duration, e.g. timeout(std::chrono::milliseconds(500)).
    template <typename Rep, typename Period>
    Options& timeout(std::chrono::duration<Rep, Period> limit) & {
        return timeout(std::chrono::duration<double>(limit).count());
    }
    template <typename Rep, typename Period>
    Options&& timeout(std::chrono::duration<Rep, Period> limit) && {
        return std::move(timeout(limit));
    }

    /// Tasks dispatched ahead: "all", a number, or arithmetic on n_jobs such as "2*n_jobs".
    Options& pre_dispatch(const std::string& expression) & {
        return set("pre_dispatch", expression);
    }
    Options&& pre_dispatch(const std::string& expression) && {
        return std::move(pre_dispatch(expression));
    }
    /// Tasks dispatched ahead, as a number (>= 1).
    Options& pre_dispatch(std::int64_t tasks) & { return set("pre_dispatch", std::to_string(tasks)); }
    Options&& pre_dispatch(std::int64_t tasks) && { return std::move(pre_dispatch(tasks)); }

    /// A fixed number of tasks per batch (>= 1).
    Options& batch_size(std::size_t tasks) & {
        return apply(pj_config_set_batch_size, tasks);
    }
    Options&& batch_size(std::size_t tasks) && { return std::move(batch_size(tasks)); }
    /// "auto" (joblib's heuristic, the default) or a number as text.
    Options& batch_size(const std::string& value) & { return set("batch_size", value); }
    Options&& batch_size(const std::string& value) && { return std::move(batch_size(value)); }

    /// Where memory-mapped files go.
    Options& temp_folder(const std::string& path) & { return set("temp_folder", path); }
    Options&& temp_folder(const std::string& path) && { return std::move(temp_folder(path)); }

    /// Size above which arguments are memory-mapped: "1M", "512k", "none", "1048576".
    Options& max_nbytes(const std::string& size) & { return set("max_nbytes", size); }
    Options&& max_nbytes(const std::string& size) && { return std::move(max_nbytes(size)); }
    /// Size above which arguments are memory-mapped, in bytes.
    Options& max_nbytes(std::uint64_t bytes) & { return set("max_nbytes", std::to_string(bytes)); }
    Options&& max_nbytes(std::uint64_t bytes) && { return std::move(max_nbytes(bytes)); }

    /// Stack bytes of the threads that run tasks (worker threads, forked workers' task thread);
    /// default: the caller's RLIMIT_STACK (8 MiB when unlimited); 64 KiB to 1 GiB.
    Options& stack_size(std::size_t bytes) & {
        return apply(pj_config_set_stack_size, bytes);
    }
    Options&& stack_size(std::size_t bytes) && { return std::move(stack_size(bytes)); }
    /// Stack size as text: "8M", a number of bytes, or "none" (the default).
    Options& stack_size(const std::string& value) & { return set("stack_size", value); }
    Options&& stack_size(const std::string& value) && { return std::move(stack_size(value)); }

    /// Process workers only: a worker process is replaced, silently, after running this many tasks
    /// (>= 1; a task is a chunk of map's elements). Unset: never. Threads and sequential ignore it;
    /// see pj_config_set_max_tasks_per_child.
    Options& max_tasks_per_child(std::uint64_t tasks) & {
        return apply(pj_config_set_max_tasks_per_child, tasks);
    }
    Options&& max_tasks_per_child(std::uint64_t tasks) && { return std::move(max_tasks_per_child(tasks)); }
    /// max_tasks_per_child as text: a number, or "none" (never, the default).
    Options& max_tasks_per_child(const std::string& value) & { return set("max_tasks_per_child", value); }
    Options&& max_tasks_per_child(const std::string& value) && {
        return std::move(max_tasks_per_child(value));
    }

    /// Process workers only: a worker process whose resident memory exceeds this many bytes after
    /// a batch is replaced, silently, before the next one (loky's memory-leak protection). Unset:
    /// no limit. See pj_config_set_worker_memory_limit.
    Options& worker_memory_limit(std::uint64_t bytes) & {
        return apply(pj_config_set_worker_memory_limit, bytes);
    }
    Options&& worker_memory_limit(std::uint64_t bytes) && { return std::move(worker_memory_limit(bytes)); }
    /// worker_memory_limit as text: "512M", a number of bytes, or "none" (the default).
    Options& worker_memory_limit(const std::string& size) & { return set("worker_memory_limit", size); }
    Options&& worker_memory_limit(const std::string& size) && {
        return std::move(worker_memory_limit(size));
    }

    /// Process workers only: a worker process idle this many seconds exits (> 0; INFINITY: never;
    /// default 300, as loky); the next call starts new ones. See pj_config_set_idle_worker_timeout.
    Options& idle_worker_timeout(double seconds) & {
        return apply(pj_config_set_idle_worker_timeout, seconds);
    }
    Options&& idle_worker_timeout(double seconds) && { return std::move(idle_worker_timeout(seconds)); }
    /// The idle timeout as a duration, e.g. idle_worker_timeout(std::chrono::seconds(10)).
    template <typename Rep, typename Period>
    Options& idle_worker_timeout(std::chrono::duration<Rep, Period> limit) & {
        return idle_worker_timeout(std::chrono::duration<double>(limit).count());
    }
    template <typename Rep, typename Period>
    Options&& idle_worker_timeout(std::chrono::duration<Rep, Period> limit) && {
        return std::move(idle_worker_timeout(limit));
    }

    /// How workers map those files: "r", "r+", "w+", "c" or "none" (copied, never mapped).
    Options& mmap_mode(const std::string& mode) & { return set("mmap_mode", mode); }
    Options&& mmap_mode(const std::string& mode) && { return std::move(mmap_mode(mode)); }

    /// The order of Parallel::imap: "generator" or "list" (input order), "generator_unordered"
    /// (completion order). Parallel::map always returns input order.
    Options& return_as(const std::string& value) & { return set("return_as", value); }
    Options&& return_as(const std::string& value) && { return std::move(return_as(value)); }

    /// Keep worker processes alive across calls. They keep the memory image of the call that forked
    /// them: later calls must not use function objects or data created after it (see the file
    /// comment); leave it off with capturing lambdas.
    Options& keep_workers(bool keep) & { return set("keep_workers", keep ? "true" : "false"); }
    Options&& keep_workers(bool keep) && { return std::move(keep_workers(keep)); }

    /// How worker processes start (pj's own option): "fork" (the default: copies of the caller,
    /// which see its memory), "spawn" (fresh runs of the executable: only functions registered
    /// with pj::register_function run there, through Parallel::map<F>; see
    /// pj::worker_main_if_requested) or "forkserver" (forks of pj's fork server, a copy of the
    /// process made once, when the first such Parallel is created: worker starts do not grow with
    /// the caller's memory; registered functions only, as with "spawn", registered before the
    /// server starts; see pj_forkserver_start in pj.h).
    Options& start_method(const std::string& method) & { return set("start_method", method); }
    Options&& start_method(const std::string& method) && {
        return std::move(start_method(method));
    }

    /// What a failed task does (pj's own option): "raise" (the default, as joblib: the first
    /// failure ends the call and is thrown) or "collect" (every task runs; Parallel::map_collect
    /// gives each task's outcome, Parallel::map throws the first failure after all ran).
    Options& on_error(const std::string& policy) & { return set("on_error", policy); }
    Options&& on_error(const std::string& policy) && { return std::move(on_error(policy)); }

    /// While a call blocks, a SIGINT (Ctrl-C) cancels it (the call throws CancelledError) instead
    /// of killing the process; pj's handler is installed only while the call blocks.
    Options& handle_sigint(bool handle) & {
        return set("handle_sigint", handle ? "true" : "false");
    }
    Options&& handle_sigint(bool handle) && { return std::move(handle_sigint(handle)); }

    /// pj's progress bar on stderr (redrawn in place on a terminal), independent of verbose() and
    /// of progress().
    Options& progress_bar(bool show) & { return set("progress", show ? "bar" : "none"); }
    Options&& progress_bar(bool show) && { return std::move(progress_bar(show)); }

    /**
     * A function told of every completed task: `f(const pj::Progress&)` or
     * `f(std::uint64_t completed, std::int64_t total, double elapsed_seconds)`, as in
     *
     * @code
     *     pj::Options().n_jobs(4).progress([](std::uint64_t done, std::int64_t total, double) {
     *         std::fprintf(stderr, "\r%llu/%lld", (unsigned long long)done, (long long)total);
     *     });
     * @endcode
     *
     * It is called on the thread that runs the call (inside map(), or while a Stream is iterated),
     * on every backend, once per task with completed = 1, 2, 3, ... in order, but as batches
     * complete (several reports may come at once); total is -1 until the input has been read to
     * its end. A map over an input with a size knows the total from the first report; one over a
     * random-access range counts elements, not its tasks (chunks): the reports of a chunk's
     * elements come at once when the chunk completes. It should return quickly. It is called as a non-const lvalue and shared, not copied:
     * the options, every pj::Parallel made from them (or in the scope of a ScopedConfig of them)
     * and their streams own it together, so it lives as long as any of them can call it. Two such
     * objects running calls on two threads at once call it concurrently.
     *
     * If it throws, nothing reaches pj: the exception is caught, the call is cancelled
     * (pj_parallel_cancel: queued tasks never start, process workers are killed), the function is
     * not called again during that call, and the exception is rethrown as it is (its own type,
     * not a pj::Error) from the map() or the Stream iteration that drove the call, once the call
     * has stopped. The pj::Parallel is ready for the next call. (In a call made with the C API on
     * Parallel::capi(), there is nothing to rethrow from: the exception is dropped.)
     *
     * Replaces a previous progress function; progress(nullptr) (or a null function pointer)
     * removes it. A pj::Parallel made earlier keeps the function it was made with.
     */
    template <typename F>
    Options& progress(F&& f) & {
        using Fn = std::decay_t<F>;
        static_assert(detail::is_progress_function_v<Fn>,
                      "pj::Options::progress: the function must be callable as "
                      "f(const pj::Progress&) or f(std::uint64_t, std::int64_t, double)");
        if constexpr (std::is_pointer_v<std::remove_reference_t<F>>) {  // not a function reference
            if (f == nullptr) {
                return progress(nullptr);
            }
        }
        pj_config_t* config = raw();
        auto state = std::make_shared<detail::ProgressFunction<Fn>>(std::forward<F>(f));
        detail::ErrorSlot err;
        detail::check(pj_config_set_progress(config, &detail::progress_trampoline, state.get(),
                                             err.out()),
                      err);
        progress_ = std::move(state);
        return *this;
    }
    template <typename F>
    Options&& progress(F&& f) && {
        return std::move(progress(std::forward<F>(f)));
    }
    /// Removes the progress function.
    Options& progress(std::nullptr_t) & {
        detail::ErrorSlot err;
        detail::check(pj_config_set_progress(raw(), nullptr, nullptr, err.out()), err);
        progress_.reset();
        return *this;
    }
    Options&& progress(std::nullptr_t) && { return std::move(progress(nullptr)); }

    /**
     * How many elements of a random-access input one pj task runs in Parallel::map,
     * Parallel::map_indexed and Parallel::map_collect (pj.hpp's own option, like Go's ChunkSize):
     * 0 (the default) chooses max(1, n / (32 * workers)) for n elements, which keeps a task's
     * cost (under a microsecond) negligible while leaving about 32 tasks per worker to balance
     * the load; 1 sends one task per element, as imap does. Chunking changes nothing you see:
     * results, errors (they name the element's index), progress (it counts elements) and
     * map_collect's outcomes stay per element. A ScopedConfig of these options passes it on.
     * With a timeout (set through pj::Options or a ScopedConfig), automatic chunks are single
     * elements, since pj's timeout applies to a task: a chunk_size above 1 makes it apply to
     * each chunk.
     */
    Options& chunk_size(std::size_t elements) & {
        settings_.chunk_size = elements;
        return *this;
    }
    Options&& chunk_size(std::size_t elements) && { return std::move(chunk_size(elements)); }

    /// The number of workers a pj::Parallel made from these options would use (joblib's
    /// effective_n_jobs), scoped defaults included. Throws when the options cannot be resolved.
    std::size_t effective_n_jobs() const;

    /// The config, still owned by this object.
    pj_config_t* capi() const noexcept { return handle_.capi(); }
    /// Gives up ownership: free the result with pj_config_free. A progress function stays owned by
    /// this object (the config points at it): keep the object alive while the config, or an
    /// executor made from it with the C API, may run calls.
    pj_config_t* release() noexcept { return handle_.release(); }

private:
    friend class Parallel;
    friend class ScopedConfig;

    pj_config_t* raw() const {
        if (!handle_) {
            throw Error(PJ_STATUS_NULL_ARGUMENT, "pj::Options: used after being moved from");
        }
        return handle_.capi();
    }

    // One typed pj_config_set_* call on this config; its error is thrown.
    template <typename Setter, typename Value>
    Options& apply(Setter setter, Value value) {
        detail::ErrorSlot err;
        detail::check(setter(raw(), value, err.out()), err);
        return *this;
    }

    Handle<pj_config_t, pj_config_free> handle_;
    std::shared_ptr<detail::ProgressState> progress_;  // what the config's progress userdata is
    detail::WrapperSettings settings_;                  // what pj.hpp must know of them
};

/**
 * joblib's parallel_config: while it lives, a pj::Parallel created on this thread takes each option
 * it does not set from `options` (innermost scope first). Other threads (pj's workers included) do
 * not see it. Create and destroy it on the same thread, innermost first; neither copyable nor
 * movable.
 */
class ScopedConfig {
public:
    /// A progress function of `options` is shared with the pj::Parallel objects made in the scope
    /// that inherit it (they keep it alive after the scope ends).
    explicit ScopedConfig(const Options& options) {
        detail::ErrorSlot err;
        detail::check(pj_config_push(options.capi(), err.out()), err);
        try {
            detail::scoped_settings().reserve(detail::scoped_settings().size() + 1);
            detail::scoped_progress().push_back(options.progress_);
        } catch (...) {
            pj_config_pop(nullptr);
            throw;
        }
        detail::scoped_settings().push_back(options.settings_);  // reserved: cannot throw
    }
    ScopedConfig(const ScopedConfig&) = delete;
    ScopedConfig& operator=(const ScopedConfig&) = delete;
    ~ScopedConfig() {
        pj_config_pop(nullptr);
        detail::scoped_progress().pop_back();
        detail::scoped_settings().pop_back();
    }
};

// ------------------------------------------------------------------------------------------------
// Results
// ------------------------------------------------------------------------------------------------

/// A borrowed run of bytes.
struct ByteView {
    const std::uint8_t* data = nullptr;
    std::size_t size = 0;

    const std::uint8_t* begin() const noexcept { return data; }
    const std::uint8_t* end() const noexcept { return data + size; }
};

namespace detail {

/// Decodes a result with codec<R>; a pj::Error from the codec gets `index` as its task index.
template <typename R>
R decode_result(const std::uint8_t* data, std::size_t len, std::size_t index) {
    try {
        return codec<R>::decode(data, len);
    } catch (Error& e) {
        if (e.task_index() < 0) {
            ErrorAccess::set_task_index(e, static_cast<std::int64_t>(index));
        }
        throw;
    }
}

}  // namespace detail

/**
 * The results of a call made through the C API (pj_parallel_collect, pj_parallel_map): one byte
 * string per task, in submission order. Owns the pj_results_t; move-only.
 */
class Results {
public:
    /// Takes ownership of `raw` (NULL: no results).
    explicit Results(pj_results_t* raw) noexcept : handle_(raw) {}

    /// Number of results.
    std::size_t size() const noexcept { return pj_results_len(handle_.capi()); }
    bool empty() const noexcept { return size() == 0; }

    /// The bytes of result `index`, valid while this object lives. Throws InvalidArgument when
    /// `index >= size()`, and the pj::Error of any other status pj_results_get returns (naming
    /// the function and the index, which is its task_index()).
    ByteView bytes(std::size_t index) const {
        ByteView view;
        pj_status status = pj_results_get(handle_.capi(), index, &view.data, &view.size);
        if (status != PJ_STATUS_OK) {
            const std::size_t n = size();
            if (index >= n) {
                throw_error(status, "pj::Results: no result " + std::to_string(index) +
                                        " among " + std::to_string(n));
            }
            throw_error(status,
                        "pj::Results: pj_results_get failed for result " +
                            std::to_string(index) + " of " + std::to_string(n) + " (" +
                            pj::status_str(status) + ")",
                        {}, static_cast<std::int64_t>(index));
        }
        return view;
    }
    ByteView operator[](std::size_t index) const { return bytes(index); }

    /// Result `index` decoded with pj::codec<R> (a size mismatch throws InvalidArgument).
    template <typename R>
    R get(std::size_t index) const {
        ByteView view = bytes(index);
        return detail::decode_result<R>(view.data, view.size, index);
    }

    /// Every result decoded with pj::codec<R>, in order.
    template <typename R>
    std::vector<R> decode_all() const {
        std::vector<R> out;
        const std::size_t n = size();
        out.reserve(n);
        for (std::size_t i = 0; i < n; ++i) {
            out.push_back(get<R>(i));
        }
        return out;
    }

    pj_results_t* capi() const noexcept { return handle_.capi(); }
    pj_results_t* release() noexcept { return handle_.release(); }

private:
    Handle<pj_results_t, pj_results_free> handle_;
};

// ------------------------------------------------------------------------------------------------
// Outcome (Parallel::map_collect)
// ------------------------------------------------------------------------------------------------

/**
 * What one task of Parallel::map_collect gave: its value, or the pj::Error that says why it failed
 * (status PJ_STATUS_TASK_FAILED when the function threw, PJ_STATUS_TIMEOUT, PJ_STATUS_WORKER_DIED
 * or PJ_STATUS_PANIC; the task's index, pj's message and report). Copyable when R is.
 *
 * @code
 *     for (const pj::Outcome<double>& o : par.map_collect(inputs, f)) {
 *         if (o) use(o.value()); else log(o.error()->what());
 *     }
 * @endcode
 */
template <typename R>
class Outcome {
public:
    /// A success.
    explicit Outcome(R value) : v_(std::in_place_index<0>, std::move(value)) {}
    /// A failure.
    explicit Outcome(Error error) : v_(std::in_place_index<1>, std::move(error)) {}

    /// Whether the task succeeded.
    bool ok() const noexcept { return v_.index() == 0; }
    explicit operator bool() const noexcept { return ok(); }
    /// PJ_STATUS_OK, or the status the task failed with.
    pj_status status() const noexcept { return ok() ? PJ_STATUS_OK : std::get<1>(v_).status(); }

    /// The value; throws the task's error, as its class (TaskError, TimeoutError,
    /// WorkerDiedError, pj::Error), when the task failed.
    R& value() & {
        throw_if_failed();
        return std::get<0>(v_);
    }
    const R& value() const& {
        throw_if_failed();
        return std::get<0>(v_);
    }
    R&& value() && {
        throw_if_failed();
        return std::get<0>(std::move(v_));
    }

    /// The error when the task failed, NULL when it succeeded.
    const Error* error() const noexcept { return std::get_if<1>(&v_); }

private:
    void throw_if_failed() const {
        if (const Error* e = error()) {
            throw_error(*e);
        }
    }

    std::variant<R, Error> v_;
};

// ------------------------------------------------------------------------------------------------
// Trampolines (the only code pj calls; each is noexcept and catches everything)
// ------------------------------------------------------------------------------------------------

namespace detail {

/// The output handle of the task running on this thread, for pj::cancelled(); NULL outside tasks.
inline thread_local pj_out_t* current_out = nullptr;

/// Makes `out` this thread's current task output for one task, then restores the previous one (a
/// task may run a nested call on its own thread).
class CurrentOut {
public:
    explicit CurrentOut(pj_out_t* out) noexcept : previous_(current_out) { current_out = out; }
    ~CurrentOut() { current_out = previous_; }
    CurrentOut(const CurrentOut&) = delete;
    CurrentOut& operator=(const CurrentOut&) = delete;

private:
    pj_out_t* previous_;
};

}  // namespace detail

/**
 * Inside a task's function: true once the call running it is stopping (cancelled, another task
 * failed under on_error "raise", or its pj::Parallel is being destroyed). Outside a task: false.
 *
 * A call that stops waits for the functions still running on threads (a thread cannot be
 * interrupted), so a long function that polls this and returns early makes cancellation,
 * fail-fast and destruction prompt; what it returns then is discarded. Cheap enough to call in
 * every iteration of a loop (pj_out_cancelled: one atomic load). Works on every backend.
 */
inline bool cancelled() noexcept {
    return detail::current_out != nullptr && pj_out_cancelled(detail::current_out) != 0;
}

namespace detail {

/// Writes `value` with codec<R> into the task's output.
template <typename R>
void write_result(pj_out_t* out, const R& value) {
    const std::size_t n = codec<R>::size(value);
    std::uint8_t* dst = pj_out_alloc(out, n);
    if (dst == nullptr) {
        throw std::runtime_error("pj_out_alloc failed");
    }
    codec<R>::encode(value, dst);
}

/// Decodes a T from the argument bytes, applies `call` and writes its R; an exception becomes the
/// task's error message and exception_code. Never lets anything unwind.
template <typename T, typename R, typename Call>
std::int32_t run_task(const std::uint8_t* arg, std::size_t arg_len, pj_out_t* out,
                      Call&& call) noexcept {
    const CurrentOut current(out);
    try {
        const T input = codec<T>::decode(arg, arg_len);
        write_result<R>(out, call(input));
        return 0;
    } catch (const std::exception& e) {
        pj_out_error(out, e.what());
    } catch (...) {
        pj_out_error(out, "unknown C++ exception");
    }
    return exception_code;
}

/// The task callback for a function object F applied to a T decoded from the argument bytes.
/// Runs in a worker (process or thread) or on the caller's thread.
template <typename F, typename T, typename R>
std::int32_t task_trampoline(void* userdata, const std::uint8_t* arg, std::size_t arg_len,
                             pj_out_t* out) noexcept {
    F& f = *static_cast<F*>(userdata);
    return run_task<T, R>(arg, arg_len, out, [&f](const T& input) { return std::invoke(f, input); });
}

/// What a plain function `R f(A)` takes and returns (the functions register_function accepts).
template <typename Fn>
struct function_traits;
template <typename R, typename A>
struct function_traits<R (*)(A)> {
    using input = std::decay_t<A>;
    using result = R;
};
template <typename R, typename A>
struct function_traits<R (*)(A) noexcept> : function_traits<R (*)(A)> {};

/// The task callback for a registered function F: no userdata (a worker started afresh or an MPI
/// rank has none of the caller's memory), the input decoded from the argument bytes.
template <auto F>
std::int32_t registered_trampoline(void*, const std::uint8_t* arg, std::size_t arg_len,
                                   pj_out_t* out) noexcept {
    using traits = function_traits<decltype(F)>;
    using T = typename traits::input;
    return run_task<T, typename traits::result>(arg, arg_len, out,
                                                [](const T& input) { return F(input); });
}

/// The range callback for a registered range function F(begin, end): an exception becomes the
/// range's error message and exception_code.
template <auto F>
std::int32_t registered_range_trampoline(void*, std::size_t begin, std::size_t end,
                                         pj_out_t* out) noexcept {
    const CurrentOut current(out);
    try {
        F(begin, end);
        return 0;
    } catch (const std::exception& e) {
        pj_out_error(out, e.what());
    } catch (...) {
        pj_out_error(out, "unknown C++ exception");
    }
    return exception_code;
}

/// The name register_range<F> registered F under (empty until then).
template <auto F>
std::string& range_name() {
    static std::string name;
    return name;
}

/// Does nothing (for the empty call that abandons a stream's call).
inline std::int32_t noop_task(void*, const std::uint8_t*, std::size_t, pj_out_t*) noexcept {
    return 0;
}
inline std::int32_t no_inputs(void*, const std::uint8_t**, std::size_t*) noexcept { return 0; }

/// The producer over a range [it, end): encodes each element with codec<T> into a reused buffer.
/// Advances lazily (the next element is read only when pj asks for it) and stores an exception
/// from the range or the codec, for the caller to rethrow once the C call has returned.
template <typename It, typename End, typename T>
class Producer {
public:
    Producer(It begin, End end) : it_(std::move(begin)), end_(std::move(end)) {}

    static std::int32_t call(void* userdata, const std::uint8_t** arg_out,
                             std::size_t* len_out) noexcept {
        auto* self = static_cast<Producer*>(userdata);
        try {
            if (self->advance_) {
                ++self->it_;
            }
            self->advance_ = true;
            if (self->it_ == self->end_) {
                self->advance_ = false;
                return 0;
            }
            const T& value = *self->it_;  // a proxy converts to a temporary T
            self->buffer_.resize(codec<T>::size(value));
            codec<T>::encode(value, self->buffer_.data());
            *arg_out = self->buffer_.data();
            *len_out = self->buffer_.size();
            return 1;
        } catch (...) {
            self->error_ = std::current_exception();
            return -1;
        }
    }

    /// Rethrows what the range or the codec threw, if anything.
    void rethrow_if_failed() const {
        if (error_) {
            std::rethrow_exception(error_);
        }
    }

private:
    It it_;
    End end_;
    bool advance_ = false;
    std::vector<std::uint8_t> buffer_;
    std::exception_ptr error_;
};

using std::begin;
using std::end;

template <typename Range>
using iterator_t = decltype(begin(std::declval<Range&>()));
template <typename Range>
using sentinel_t = decltype(end(std::declval<Range&>()));
/// The value type of an iterator: iterator_traits' when it has one (so that proxies such as
/// std::vector<bool>'s give bool), else what dereferencing gives, without reference and cv.
template <typename It, typename = void>
struct iter_value {
    using type = std::remove_cv_t<std::remove_reference_t<decltype(*std::declval<It&>())>>;
};
template <typename It>
struct iter_value<It, std::void_t<typename std::iterator_traits<It>::value_type>> {
    using type = std::remove_cv_t<typename std::iterator_traits<It>::value_type>;
};
/// The element type of a range.
template <typename Range>
using element_t = typename iter_value<iterator_t<Range>>::type;

/// The result type of calling an `F&` with the elements of Range (both without reference);
/// SFINAE-friendly.
template <typename Range, typename F, typename = void>
struct map_result {};
template <typename Range, typename F>
struct map_result<Range, F, std::enable_if_t<std::is_invocable_v<F&, const element_t<Range>&>>> {
    using type = std::decay_t<std::invoke_result_t<F&, const element_t<Range>&>>;
    static_assert(!std::is_void_v<type>,
                  "pj: the function must return a value (results travel back as bytes)");
};
template <typename Range, typename F>
using map_result_t =
    typename map_result<std::remove_reference_t<Range>, std::remove_reference_t<F>>::type;

/// The producer over `range`, encoding each element as a T (by default, the element's own type).
template <typename Range, typename T = element_t<Range>>
auto make_producer(Range& range) {
    using It = iterator_t<Range>;
    using End = sentinel_t<Range>;
    return Producer<It, End, T>(begin(range), end(range));
}

/// Whether a range knows its length (std::size works on it): a vector, a list, an array.
template <typename Range, typename = void>
struct has_size : std::false_type {};
template <typename Range>
struct has_size<Range, std::void_t<decltype(std::size(std::declval<Range&>()))>>
    : std::true_type {};

/// Announces the length of `inputs`, when it has one, to pj's progress reporting
/// (pj_parallel_expect: the progress callback and bar show the total from the first result, the
/// verbose lines say "out of N" as joblib's do for a list). Nothing for a range without a length.
template <typename Range>
void expect_length(pj_parallel_t* raw, Range& inputs) noexcept {
    if constexpr (has_size<Range>::value) {
        // Only progress display depends on it, and the call that follows reports any real
        // problem (busy, inherited executor): its status is not needed here.
        (void)pj_parallel_expect(raw, static_cast<std::size_t>(std::size(inputs)), 1, nullptr);
    }
}

/// 0, 1, ..., n-1 as a range (for map_indexed).
class IndexRange {
public:
    class iterator {
    public:
        using iterator_category = std::input_iterator_tag;
        using value_type = std::size_t;
        using difference_type = std::ptrdiff_t;
        using pointer = const std::size_t*;
        using reference = const std::size_t&;

        explicit iterator(std::size_t i) noexcept : i_(i) {}
        const std::size_t& operator*() const noexcept { return i_; }
        iterator& operator++() noexcept {
            ++i_;
            return *this;
        }
        bool operator==(const iterator& other) const noexcept { return i_ == other.i_; }
        bool operator!=(const iterator& other) const noexcept { return i_ != other.i_; }

    private:
        std::size_t i_;
    };

    explicit IndexRange(std::size_t n) noexcept : n_(n) {}
    iterator begin() const noexcept { return iterator(0); }
    iterator end() const noexcept { return iterator(n_); }
    std::size_t size() const noexcept { return n_; }

private:
    std::size_t n_;
};

// ---- Chunked map: tasks that each run a range [lo, hi) of a random-access input ----------------

/// Whether Parallel::map can hand pj ranges of `Range`'s elements instead of the elements: its
/// iterators are random-access and it knows its length (std::vector, std::array, std::deque,
/// std::string, std::initializer_list, C arrays), or it is map_indexed's IndexRange.
template <typename Range, typename = void>
struct is_chunkable : std::false_type {};
template <typename Range>
struct is_chunkable<
    Range, std::enable_if_t<has_size<Range>::value &&
                            std::is_base_of_v<std::random_access_iterator_tag,
                                              typename std::iterator_traits<
                                                  iterator_t<Range>>::iterator_category>>>
    : std::true_type {};
template <>
struct is_chunkable<IndexRange> : std::true_type {};

/// Element `i` of a chunkable range.
template <typename Range>
decltype(auto) element_at(Range& range, std::size_t i) {
    return begin(range)[static_cast<std::ptrdiff_t>(i)];
}
inline std::size_t element_at(IndexRange&, std::size_t i) noexcept { return i; }

/// This process's id, cached: getpid() is a system call, too slow for every task. A
/// pthread_atfork child handler refreshes it in a forked child (pj's workers are forked with
/// fork(), which runs the handlers); the handler is registered by the first call, before any
/// fork that could copy a cached value.
inline std::atomic<pid_t> process_id{0};
inline void refresh_process_id() noexcept {
    process_id.store(::getpid(), std::memory_order_relaxed);
}
inline pid_t current_process() noexcept {
    pid_t pid = process_id.load(std::memory_order_relaxed);
    if (pid == 0) {
        static const int registered = pthread_atfork(nullptr, nullptr, &refresh_process_id);
        (void)registered;
        refresh_process_id();
        pid = process_id.load(std::memory_order_relaxed);
    }
    return pid;
}

/// The argument of a chunk task: its elements [lo, hi) and the token of its call.
struct ChunkArg {
    std::uint64_t lo;
    std::uint64_t hi;
    std::uint64_t token;
};

/// Every chunked call gets the next token, which its tasks compare with the one in the memory
/// they read: a worker kept from an earlier call (keep_workers) has a stale image of it.
inline std::atomic<std::uint64_t> chunk_tokens{0};

/// How a chunk task's failure message starts when an element threw: the element's index, so that
/// the caller names the element, not the chunk, and drops this prefix again.
inline constexpr const char element_marker[] = "[pj.hpp element ";
/// A chunk task ran in a worker whose memory predates the call (keep_workers).
inline constexpr const char stale_marker[] = "[pj.hpp stale worker image]";
/// A chunk task ran in a worker process and the result type has no pj::codec.
inline constexpr const char no_codec_marker[] = "[pj.hpp no codec for the result]";

/// Whether the chunks can write results of type R straight into a std::vector<R> (else each
/// slot is a std::optional<R>). std::vector<bool> packs bits, which two threads cannot write.
template <typename R>
inline constexpr bool direct_slot_v = std::is_default_constructible_v<R> &&
                                      std::is_move_assignable_v<R> && !std::is_same_v<R, bool>;

/// Appends an unaligned u64 to `buffer`.
inline void put_u64(std::vector<std::uint8_t>& buffer, std::uint64_t v) {
    const std::size_t at = buffer.size();
    buffer.resize(at + sizeof v);
    std::memcpy(buffer.data() + at, &v, sizeof v);
}

/**
 * One chunked map call (on the caller's stack for its whole synchronous duration): the producer
 * of the chunk arguments, the task callback that runs a chunk, and where the results go.
 *
 * A chunk that runs in the caller's process (threads, n_jobs 1, sequential) reads its elements
 * in place and moves each result into `out[i]`, so neither needs a pj::codec; its pj output stays
 * empty. A chunk that runs in a forked worker reads its elements in place too (the worker is a
 * copy of the caller) but sends its results back as bytes: for each element, its u64 length and
 * its codec<R> bytes (under on_error "collect" each preceded by a byte: 0 a value, 1 an error
 * message), so its pj output is never empty. An element that throws ends its chunk under
 * on_error "raise" (the chunk fails with element_marker, the index and the message; later
 * elements of the chunk do not run); under "collect" the chunk goes on and keeps the message
 * (`errors[i]` in the caller's process, a record in a worker).
 */
template <typename Range, typename F, typename R>
struct ChunkCall {
    using T = element_t<Range>;
    using Slot = std::conditional_t<direct_slot_v<R>, R, std::optional<R>>;

    Range* inputs;
    F* f;
    Slot* out;                           // n slots
    std::optional<std::string>* errors;  // n messages under "collect", else NULL
    std::size_t n;
    std::size_t chunk;
    bool collect;
    std::uint64_t token;
    pid_t pid;  // the caller's process
    std::size_t next = 0;
    ChunkArg arg{};

    /// The pj_input_fn: the next chunk's ChunkArg, 0 after the last one.
    static std::int32_t produce(void* userdata, const std::uint8_t** arg_out,
                                std::size_t* len_out) noexcept {
        auto* self = static_cast<ChunkCall*>(userdata);
        if (self->next >= self->n) {
            return 0;
        }
        const std::size_t lo = self->next;
        const std::size_t hi = lo + std::min(self->chunk, self->n - lo);
        self->next = hi;
        self->arg = ChunkArg{lo, hi, self->token};
        *arg_out = reinterpret_cast<const std::uint8_t*>(&self->arg);
        *len_out = sizeof(ChunkArg);
        return 1;
    }

    /// The pj_task_fn: runs the chunk described by `arg`. Never lets anything unwind.
    static std::int32_t run(void* userdata, const std::uint8_t* arg, std::size_t arg_len,
                            pj_out_t* out) noexcept {
        auto* self = static_cast<ChunkCall*>(userdata);
        const CurrentOut current(out);
        ChunkArg a{};
        if (arg_len != sizeof a) {
            pj_out_error(out, "pj.hpp: malformed chunk argument");
            return exception_code;
        }
        std::memcpy(&a, arg, sizeof a);
        if (self->token != a.token) {
            pj_out_error(out, stale_marker);
            return exception_code;
        }
        if (current_process() == self->pid) {
            return self->run_here(static_cast<std::size_t>(a.lo), static_cast<std::size_t>(a.hi),
                                  out);
        }
        if constexpr (has_codec_v<R>) {
            return self->run_forked(static_cast<std::size_t>(a.lo),
                                    static_cast<std::size_t>(a.hi), out);
        } else {
            pj_out_error(out, no_codec_marker);
            return exception_code;
        }
    }

    R call(std::size_t i) { return std::invoke(*f, static_cast<const T&>(element_at(*inputs, i))); }

    /// Fails the chunk for element `i` with `message`.
    static std::int32_t element_failed(pj_out_t* out, std::size_t i, const char* message) noexcept {
        try {
            const std::string text = element_marker + std::to_string(i) + "] " + message;
            pj_out_error(out, text.c_str());
        } catch (...) {
            pj_out_error(out, message);
        }
        return exception_code;
    }

    std::int32_t run_here(std::size_t lo, std::size_t hi, pj_out_t* out) noexcept {
        for (std::size_t i = lo; i < hi; ++i) {
            if (pj_out_cancelled(out) != 0) {
                return 0;  // the call is stopping: what this chunk returns is discarded
            }
            try {
                if constexpr (direct_slot_v<R>) {
                    this->out[i] = call(i);
                } else {
                    this->out[i].emplace(call(i));
                }
            } catch (const std::exception& e) {
                if (!collect) {
                    return element_failed(out, i, e.what());
                }
                if (!note_error(out, i, e.what())) {
                    return exception_code;
                }
            } catch (...) {
                if (!collect) {
                    return element_failed(out, i, "unknown C++ exception");
                }
                if (!note_error(out, i, "unknown C++ exception")) {
                    return exception_code;
                }
            }
        }
        return 0;
    }

    /// Keeps element i's message (on_error "collect", in the caller's process).
    bool note_error(pj_out_t* out, std::size_t i, const char* message) noexcept {
        try {
            errors[i].emplace(message);
            return true;
        } catch (...) {
            pj_out_error(out, "pj.hpp: cannot store an element's error message");
            return false;
        }
    }

    std::int32_t run_forked(std::size_t lo, std::size_t hi, pj_out_t* out) noexcept {
        static thread_local std::vector<std::uint8_t> bytes;  // reused: no allocation per task
        bytes.clear();
        std::size_t i = lo;
        try {
            for (; i < hi; ++i) {
                if (pj_out_cancelled(out) != 0) {
                    return 0;
                }
                std::optional<R> value;
                std::string message;
                try {
                    value.emplace(call(i));
                } catch (const std::exception& e) {
                    message = e.what();
                } catch (...) {
                    message = "unknown C++ exception";
                }
                if (!value && !collect) {
                    return element_failed(out, i, message.c_str());
                }
                if (collect) {
                    bytes.push_back(value ? 0 : 1);
                }
                if (value) {
                    const std::size_t len = codec<R>::size(*value);
                    put_u64(bytes, len);
                    const std::size_t at = bytes.size();
                    bytes.resize(at + len);
                    codec<R>::encode(*value, bytes.data() + at);
                } else {
                    put_u64(bytes, message.size());
                    bytes.insert(bytes.end(), message.begin(), message.end());
                }
            }
        } catch (const std::exception& e) {  // memory, or the codec
            return element_failed(out, i, e.what());
        } catch (...) {
            return element_failed(out, i, "unknown C++ exception");
        }
        return pj_out_set(out, bytes.data(), bytes.size()) == PJ_STATUS_OK ? 0 : exception_code;
    }
};

/// Replaces "task <from>" (not followed by a digit) with "task <to>" everywhere in `text`, and
/// "task index: <from>" likewise; removes every `drop`.
inline std::string renumber(std::string text, std::size_t from, std::size_t to,
                            const std::string& drop) {
    if (!drop.empty()) {
        for (std::size_t at = text.find(drop); at != std::string::npos; at = text.find(drop, at)) {
            text.erase(at, drop.size());
        }
    }
    for (const char* prefix : {"task ", "task index: "}) {
        const std::string needle = prefix + std::to_string(from);
        const std::string with = prefix + std::to_string(to);
        std::size_t at = text.find(needle);
        while (at != std::string::npos) {
            const std::size_t end = at + needle.size();
            const bool whole = (end >= text.size() || text[end] < '0' || text[end] > '9') &&
                               (at == 0 || text[at - 1] == ' ' || text[at - 1] == '\n');
            if (whole) {
                text.replace(at, needle.size(), with);
                at = text.find(needle, at + with.size());
            } else {
                at = text.find(needle, end);
            }
        }
    }
    return text;
}

/// The error of an element, from pj's error `e` about chunk `k` (elements from `lo`), with
/// status `status`: the element named by element_marker, else the chunk's first element (a
/// timeout or a dead worker: pj does not know which element was running). Throws
/// InvalidArgument for a stale worker image or a missing codec.
inline Error chunk_error(const pj_error_t* e, pj_status status, std::size_t lo,
                         std::optional<std::size_t> element = std::nullopt) {
    const char* callback = pj_error_callback_message(e);
    const std::string said = callback != nullptr ? callback : "";
    if (said.rfind(stale_marker, 0) == 0) {
        throw InvalidArgument(
            PJ_STATUS_INVALID_ARGUMENT,
            "pj::Parallel::map: a worker process kept from an earlier call (keep_workers) ran a "
            "chunk, but its memory predates this call's inputs: set keep_workers through "
            "pj::Options (then map sends the elements as bytes) or leave it off");
    }
    if (said.rfind(no_codec_marker, 0) == 0) {
        throw InvalidArgument(
            PJ_STATUS_INVALID_ARGUMENT,
            "pj::Parallel::map: the tasks ran in worker processes, where results travel back as "
            "bytes, but the result type has no pj::codec: specialise pj::codec for it, or use "
            "backend \"threads\" or \"sequential\"");
    }
    const std::int64_t k = pj_error_task_index(e);
    std::size_t index = lo;
    std::string drop;
    if (said.rfind(element_marker, 0) == 0) {
        const std::size_t close = said.find("] ");
        if (close != std::string::npos) {
            index = static_cast<std::size_t>(
                std::strtoull(said.c_str() + sizeof(element_marker) - 1, nullptr, 10));
            drop = said.substr(0, close + 2);
        }
    }
    if (element) {
        index = *element;
    }
    const std::size_t from = k >= 0 ? static_cast<std::size_t>(k) : index;
    return Error(status, renumber(pj_error_message(e), from, index, drop),
                 renumber(pj_error_report(e), from, index, drop),
                 static_cast<std::int64_t>(index), pj_error_callback_code(e));
}

/// The error of element `i` that threw `message` in a chunk under on_error "collect", as pj
/// reports a failed task.
inline Error element_error(std::size_t i, const std::string& message) {
    const std::string text =
        "task " + std::to_string(i) + " failed with code " + std::to_string(exception_code) +
        (message.empty() ? std::string() : ": " + message);
    return Error(PJ_STATUS_TASK_FAILED, text,
                 "pj error: task failed\n  task index: " + std::to_string(i) +
                     "\n  callback returned: " + std::to_string(exception_code) +
                     "\n  message: " + text + "\n",
                 static_cast<std::int64_t>(i), exception_code);
}

/// Reads an unaligned u64 at `at` of [data, data + len); throws when it does not fit.
inline std::uint64_t get_u64(const std::uint8_t* data, std::size_t len, std::size_t& at) {
    std::uint64_t v = 0;
    if (at > len || len - at < sizeof v) {
        throw InvalidArgument(PJ_STATUS_INVALID_ARGUMENT, "pj.hpp: truncated chunk results");
    }
    std::memcpy(&v, data + at, sizeof v);
    at += sizeof v;
    return v;
}

/// What a pj::Parallel shares with its streams: the handle (freed with the last owner, so a
/// stream may outlive its Parallel), a count of the calls started, which tells a stream whether
/// its call is still the one in flight, and the progress functions the handle may call.
struct Core {
    Core(pj_parallel_t* raw, ProgressStates progress_in) noexcept
        : handle(raw), progress(std::move(progress_in)) {}
    Core(const Core&) = delete;
    Core& operator=(const Core&) = delete;
    ~Core() { pj_parallel_free(handle); }  // before `progress` dies

    pj_parallel_t* handle;
    std::atomic<std::uint64_t> calls{0};
    /// The progress functions its config may point at (its options', its ScopedConfigs').
    ProgressStates progress;
};

/// The state of one imap call: the stored range, the function object, the producer. On the heap,
/// so that the pointers pj holds stay valid while the pj::Stream moves.
struct StreamState {
    StreamState() = default;
    StreamState(const StreamState&) = delete;
    StreamState& operator=(const StreamState&) = delete;
    virtual ~StreamState() = default;
    /// Rethrows what the input range (or its codec) threw, if anything.
    virtual void rethrow_if_failed() const = 0;
};

template <typename Range, typename F, typename T = element_t<std::remove_reference_t<Range>>>
struct ImapState final : StreamState {
    using Stored = std::remove_cv_t<std::remove_reference_t<Range>>;
    // An lvalue range is referenced (it must outlive the stream); an rvalue one is moved in.
    using Holder = std::conditional_t<std::is_lvalue_reference_v<Range>, Range, Stored>;
    using Held = std::remove_reference_t<Holder>;

    ImapState(Range&& range_in, F&& f_in)
        : range(std::forward<Range>(range_in)),
          f(std::forward<F>(f_in)),
          producer(make_producer<Held, T>(range)) {}

    void rethrow_if_failed() const override { producer.rethrow_if_failed(); }

    Holder range;
    std::decay_t<F> f;
    decltype(make_producer<Held, T>(std::declval<Held&>())) producer;
};

/// The function slot of an ImapState whose task is a registered function (it has no object).
struct NoFunction {};

}  // namespace detail

// ------------------------------------------------------------------------------------------------
// Stream (Parallel::imap)
// ------------------------------------------------------------------------------------------------

/**
 * The results of Parallel::imap, read one at a time as pairs (task index in input order, result):
 *
 * @code
 *     for (auto&& [i, r] : par.imap(inputs, f)) { ... }
 * @endcode
 *
 * Order: input order, or completion order when the options say return_as("generator_unordered").
 * The inputs are pulled lazily, on the iterating thread, as the pre-dispatch window has room.
 * A failed task throws (TaskError, WorkerDiedError, ...) from the iteration; the call is then over,
 * except with on_error("collect"): then the call goes on, and incrementing the iterator again
 * (after catching the error) reads the next result. An exception thrown by the progress function
 * (Options::progress) is rethrown as it is from the iteration and ends the call.
 *
 * Lifetime: an lvalue input range must outlive the stream (an rvalue one is moved into it); the
 * function object is always copied (or moved) into it. Destroying a stream before its end
 * abandons the call (queued tasks never start, running ones are waited for); do that on the
 * iterating thread. A stream keeps its pj::Parallel's executor alive. Starting another call on
 * the same pj::Parallel abandons the stream's call: iterating it further throws CancelledError.
 * Move-only; single pass (an input range in the standard's sense).
 */
template <typename R>
class Stream {
    struct Impl;

public:
    using value_type = std::pair<std::size_t, R>;

    /// An input iterator over the stream; the end iterator holds nothing. It refers to the
    /// stream's state, not to the Stream object, so it stays valid when the Stream is moved.
    class iterator {
    public:
        using iterator_category = std::input_iterator_tag;
        using value_type = Stream::value_type;
        using difference_type = std::ptrdiff_t;
        using pointer = value_type*;
        using reference = value_type&;

        iterator() noexcept = default;
        reference operator*() const noexcept { return *impl_->current; }
        pointer operator->() const noexcept { return &*impl_->current; }
        /// Reads the next result (may block, may throw).
        iterator& operator++() {
            if (!impl_->advance()) {
                impl_ = nullptr;
            }
            return *this;
        }
        bool operator==(const iterator& other) const noexcept { return impl_ == other.impl_; }
        bool operator!=(const iterator& other) const noexcept { return impl_ != other.impl_; }

    private:
        friend class Stream;
        explicit iterator(Impl* impl) noexcept : impl_(impl) {}
        Impl* impl_ = nullptr;
    };

    Stream(Stream&&) noexcept = default;
    /// Abandons this stream's unfinished call, then takes over `other`'s.
    Stream& operator=(Stream&&) noexcept = default;
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    /// Abandons the call if it is unfinished (and still the one in flight).
    ~Stream() = default;

    /// Reads the first result on its first use (may block, may throw); later, the current one.
    iterator begin() {
        if (!impl_) {
            return iterator();
        }
        if (!impl_->started) {
            impl_->started = true;
            impl_->advance();
        }
        return impl_->current ? iterator(impl_.get()) : iterator();
    }
    iterator end() noexcept { return iterator(); }

    /// Whether every result has been read (or the call failed or was abandoned, or this stream was
    /// moved from).
    bool done() const noexcept { return !impl_ || impl_->finished; }

private:
    friend class Parallel;

    struct Impl {
        Impl(std::shared_ptr<detail::Core> core_in, std::uint64_t call_in,
             std::unique_ptr<detail::StreamState> state_in) noexcept
            : core(std::move(core_in)), call(call_in), state(std::move(state_in)) {}
        Impl(const Impl&) = delete;
        Impl& operator=(const Impl&) = delete;
        ~Impl() { abandon(); }

        /// Reads the next result into `current`; false at the end.
        bool advance() {
            current.reset();
            if (finished) {
                return false;
            }
            if (core->calls.load() != call) {
                finished = true;
                throw CancelledError(PJ_STATUS_CANCELLED,
                                     "pj::Stream: another call on the same pj::Parallel "
                                     "abandoned this stream's call");
            }
            constexpr std::size_t no_index = static_cast<std::size_t>(-1);
            std::size_t index = no_index;
            const std::uint8_t* data = nullptr;
            std::size_t len = 0;
            detail::ErrorSlot err;
            detail::CallScope scope(core->handle, &core->progress);
            const pj_status status = pj_parallel_next(core->handle, &index, &data, &len, err.out());
            // With on_error=collect, a failed task's turn comes with its index: the call goes on.
            const bool call_goes_on =
                status == PJ_STATUS_OK || (status != PJ_STATUS_DONE && index != no_index);
            if (scope.failed()) {
                // The progress function threw (and cancelled the call): end it, rethrow.
                if (call_goes_on && status != PJ_STATUS_BUSY) {
                    abandon();
                }
                finished = true;
                scope.rethrow_if_failed();
            }
            if (status == PJ_STATUS_DONE) {
                finished = true;
                return false;
            }
            if (status != PJ_STATUS_OK) {
                if (status != PJ_STATUS_BUSY && !call_goes_on) {
                    finished = true;  // pj ended the call
                }
                state->rethrow_if_failed();
                detail::check(status, err);
            }
            current.emplace(index, detail::decode_result<R>(data, len, index));
            return true;
        }

        /// Ends an unfinished call that is still the one in flight. pj has no function for that:
        /// an empty map does it (queued tasks never start, running ones are waited for), so no
        /// worker uses `state` afterwards.
        void abandon() noexcept {
            if (finished) {
                return;
            }
            finished = true;
            if (core->calls.load() != call) {
                return;  // another call already abandoned ours
            }
            pj_results_t* results = nullptr;
            const pj_status status = pj_parallel_map(core->handle, detail::noop_task, nullptr,
                                                     detail::no_inputs, nullptr, &results, nullptr);
            pj_results_free(results);
            if (status != PJ_STATUS_BUSY) {
                core->calls.fetch_add(1);
            }
        }

        std::shared_ptr<detail::Core> core;
        std::uint64_t call;
        std::unique_ptr<detail::StreamState> state;
        std::optional<value_type> current;
        bool started = false;
        bool finished = false;
    };

    Stream(std::shared_ptr<detail::Core> core, std::uint64_t call,
           std::unique_ptr<detail::StreamState> state)
        : impl_(std::make_unique<Impl>(std::move(core), call, std::move(state))) {
        impl_->finished = true;  // no call yet: Parallel::imap starts it
    }

    std::unique_ptr<Impl> impl_;
};

// ------------------------------------------------------------------------------------------------
// Named functions: worker processes started afresh (start_method "spawn") and MPI ranks
// ------------------------------------------------------------------------------------------------

/**
 * Registers the plain function `F` (`R f(const T&)`, or `R f(T)`; T and R encodable by pj::codec)
 * under `name`, so that Parallel::map<F> can run it in processes that are not forks of the caller:
 * workers started afresh from the executable (Options().start_method("spawn")) and the ranks of an
 * MPI job (backend "mpi", after pj_mpi_main from pj_mpi.h). Every process of the program must
 * register the same functions under the same names in the same order, at the start of main,
 * before pj::worker_main_if_requested (or pj_mpi_main). Registering a name again for the same
 * function does nothing. Throws InvalidArgument for an empty name or one already registered for
 * another function. Thread-safe.
 *
 * @code
 *     double root(const double& x) { return std::sqrt(x); }
 *     int main(int argc, char** argv) {
 *         pj::register_function<root>("root");
 *         pj::worker_main_if_requested(argc, argv);  // a spawned worker serves here, never returns
 *         pj::Parallel par(pj::Options().n_jobs(2).start_method("spawn"));
 *         std::vector<double> roots = par.map<root>(std::vector<double>{1, 4, 9});
 *     }
 * @endcode
 */
template <auto F>
void register_function(const std::string& name) {
    detail::ErrorSlot err;
    detail::check(pj_register(name.c_str(), &detail::registered_trampoline<F>, err.out()), err);
}

/**
 * Registers the range function F, `void F(std::size_t begin, std::size_t end)`, under `name` for
 * Parallel::for_each<F>: the named form of a parallel loop, which runs on every backend and start
 * method (spawn and MPI included). Same rules as register_function (every process, same order,
 * before pj::worker_main_if_requested or pj_mpi_main); a name is unique among task and range
 * functions. Throws InvalidArgument as register_function does. Thread-safe.
 */
template <auto F>
void register_range(const std::string& name) {
    detail::ErrorSlot err;
    detail::check(
        pj_register_range(name.c_str(), &detail::registered_range_trampoline<F>, err.out()), err);
    detail::range_name<F>() = name;
}

/// In a process that pj started as a spawned worker, serves tasks and exits without returning;
/// otherwise returns at once. Call it at the start of main, after the register_function calls
/// (see pj_worker_main_if_requested).
inline void worker_main_if_requested(int argc, char** argv) {
    pj_worker_main_if_requested(argc, const_cast<const char* const*>(argv));
}

// Parallel
// ------------------------------------------------------------------------------------------------

/**
 * A configured executor (owns a pj_parallel_t): joblib's Parallel. Its worker pool starts with the
 * first call and is reused by later ones (worker processes are forked afresh for each call unless
 * keep_workers is set). After any error it is ready for the next call. Move-only.
 *
 * @code
 *     pj::Parallel par(pj::Options().n_jobs(4).backend("threads"));
 *     std::vector<int> squares = par.map(std::vector<int>{1, 2, 3}, [](int x) { return x * x; });
 *     std::vector<std::string> names = par.map_indexed(10, [](std::size_t i) { return name(i); });
 * @endcode
 */
class Parallel {
public:
    /// Every default (scoped defaults of this thread included): n_jobs 1, so tasks run on the
    /// caller's thread.
    Parallel() : Parallel(nullptr, nullptr, {}) {}
    /// From options (copied: they may change or die afterwards; a progress function is shared).
    /// Throws InvalidArgument when they are inconsistent (e.g. backend "processes" with require
    /// "sharedmem").
    explicit Parallel(const Options& options)
        : Parallel(options.capi(), options.progress_, options.settings_) {}

    Parallel(Parallel&&) noexcept = default;
    Parallel& operator=(Parallel&&) noexcept = default;
    Parallel(const Parallel&) = delete;
    Parallel& operator=(const Parallel&) = delete;
    /// Frees the executor once no pj::Stream of it is alive (a call in flight is abandoned: its
    /// queued tasks never start, running ones are waited for and see pj::cancelled()).
    ~Parallel() = default;

    /**
     * Applies `f` to every element of `inputs` and returns the results in input order: joblib's
     * `Parallel()(delayed(f)(x) for x in inputs)`. `inputs` is any range (begin/end);
     * f is called as `f(const T&)` for its element type T.
     *
     * A random-access range with a size (std::vector, std::array, std::deque, a braced list, and
     * map_indexed's indices) is cut into chunks of Options::chunk_size elements (by default
     * max(1, n / (32 * workers))), one pj task each; a task reads its elements in place. On
     * threads and sequentially (n_jobs 1) it also moves each result into the vector returned, so
     * neither T nor R needs a pj::codec there: any movable R works (a std::optional holds it
     * meanwhile when R is not default-constructible). On forked processes the task reads the
     * elements in its copy of the caller's memory, but the results must cross back as bytes:
     * R needs a pj::codec, and without one the call throws InvalidArgument once a task has run
     * in a worker process. Why at run time: which backend runs a call is not known to pj.hpp
     * (pj::ScopedConfig and pj's scoped defaults may choose it) and pj's C API does not tell it,
     * so a codec-free R compiles everywhere and a missing codec is reported where it is needed
     * (see pj::has_codec_v). With keep_workers set through pj::Options (or a ScopedConfig) and
     * codecs for T and R, the elements travel as bytes, one task each, since kept workers do not
     * see this call's memory.
     *
     * Any other range (a std::list, an input iterator, a generator) is read lazily, on this
     * thread, as the pre-dispatch window has room, and each element travels to its task as bytes:
     * T and R need a pj::codec (a compile-time error says so).
     *
     * Chunking changes nothing you can see: a failure names the element (task_index() is its
     * index in the input, what() and report() are its own; a timeout or a dead worker names the
     * first element of the chunk that ran), progress counts elements, and map_collect gives each
     * element its own outcome. Under on_error("raise") an element that throws ends its chunk (the
     * rest of the chunk does not run); under "collect" the chunk goes on. pj.hpp learns the policy
     * from pj::Options and ScopedConfig (the C API does not tell it), so set on_error there.
     *
     * Throws TaskError (index and f's what()) when f throws in a task, WorkerDiedError when a worker
     * process dies, the range's own exception when reading the range throws, the progress
     * function's own exception when it throws (see Options::progress), pj::Error otherwise. With
     * on_error("collect") every task runs first, then the first failed task's error (in input
     * order) is thrown; map_collect gives every task's outcome instead.
     */
    template <typename Range, typename F, typename R = detail::map_result_t<Range, F>>
    std::vector<R> map(Range&& inputs, F&& f) {
        return map_impl<R>(inputs, f);
    }

    /**
     * Applies the registered function F (see pj::register_function) to every element of
     * `inputs` and returns the results in input order. The only map that works with
     * start_method "spawn" and backend "mpi", where the workers are not copies of the caller; on
     * other backends it runs like map(inputs, F). Throws as map does; InvalidArgument when F was
     * not registered.
     */
    template <auto F, typename Range,
              typename R = typename detail::function_traits<decltype(F)>::result>
    std::vector<R> map(Range&& inputs) {
        using T = typename detail::function_traits<decltype(F)>::input;
        return decode_or_throw<R>(
            run_map_with<T>(inputs, &detail::registered_trampoline<F>, nullptr));
    }

    /**
     * Runs the registered range function F (see pj::register_range) over [0, n) cut in ranges
     * (about 16 per worker; pj_parallel_for_named), on every backend and start method, and returns
     * when every range is done. Ranges run in workers that may be other processes: what they
     * compute reaches the caller through memory they share with it (a pj_shared_t buffer with fork; on
     * spawn and MPI, only what a range writes to files or other channels). Throws as map does
     * (a range's exception: TaskFailed naming its items); InvalidArgument when F was not
     * registered with register_range.
     */
    template <auto F>
    void for_each(std::size_t n) {
        const std::string& name = detail::range_name<F>();
        if (name.empty()) {
            throw_error(PJ_STATUS_INVALID_ARGUMENT,
                        "for_each<F>: F was not registered with pj::register_range");
        }
        pj_parallel_t* raw = handle();
        detail::ErrorSlot err;
        detail::CallScope scope(raw, &core_->progress);
        const pj_status status = pj_parallel_for_named(raw, name.c_str(), n, nullptr, err.out());
        if (status != PJ_STATUS_BUSY) {
            core_->calls.fetch_add(1);  // this call replaced any call of this thread
        }
        scope.rethrow_if_failed();
        detail::check(status, err);
    }

    /// map<F> over a braced list: par.map<root>({1.0, 4.0}).
    template <auto F, typename T,
              typename R = typename detail::function_traits<decltype(F)>::result>
    std::vector<R> map(std::initializer_list<T> inputs) {
        using In = typename detail::function_traits<decltype(F)>::input;
        return decode_or_throw<R>(
            run_map_with<In>(inputs, &detail::registered_trampoline<F>, nullptr));
    }

    /// imap for a registered function (see map<F>): a pj::Stream of (index, result) pairs.
    template <auto F, typename Range,
              typename R = typename detail::function_traits<decltype(F)>::result>
    Stream<R> imap(Range&& inputs) {
        using T = typename detail::function_traits<decltype(F)>::input;
        using State = detail::ImapState<Range&&, detail::NoFunction, T>;
        auto owned = std::make_unique<State>(std::forward<Range>(inputs), detail::NoFunction{});
        return start_stream<R>(std::move(owned), &detail::registered_trampoline<F>, nullptr);
    }

    /// map_collect for a registered function (see map<F>).
    template <auto F, typename Range,
              typename R = typename detail::function_traits<decltype(F)>::result>
    std::vector<Outcome<R>> map_collect(Range&& inputs) {
        using T = typename detail::function_traits<decltype(F)>::input;
        return outcomes<R>(run_map_with<T>(inputs, &detail::registered_trampoline<F>, nullptr));
    }

    /// map over a braced list: par.map({1.0, 4.0, 9.0}, f).
    template <typename T, typename F,
              typename R = detail::map_result_t<std::initializer_list<T>, F>>
    std::vector<R> map(std::initializer_list<T> inputs, F&& f) {
        return map_impl<R>(inputs, f);
    }

    /// Applies `f` to 0, 1, ..., n-1 (as std::size_t) and returns the results in order.
    template <typename F, typename R = detail::map_result_t<detail::IndexRange, F>>
    std::vector<R> map_indexed(std::size_t n, F&& f) {
        detail::IndexRange indices(n);
        return map_impl<R>(indices, f);
    }

    /**
     * map() that returns every task's outcome, in input order: its value, or the pj::Error it
     * failed with (see pj::Outcome). For options with on_error("collect"), where every task runs
     * whatever fails:
     *
     * @code
     *     pj::Parallel par(pj::Options().n_jobs(4).on_error("collect"));
     *     std::vector<pj::Outcome<double>> out = par.map_collect(inputs, f);
     * @endcode
     *
     * With on_error("raise") (the default) a failure still ends the call and is thrown, as from
     * map(). What does not concern one task is thrown too: the range's or the progress function's
     * exception, a cancellation, BUSY, and a result the codec cannot decode. Over a random-access
     * range, each element has its own outcome, whatever chunks it ran in (see map); an element's
     * error is pj's TaskError for it ("task 12 failed with code 1: ..."), with a shorter report
     * (no worker line) when its chunk went on after it.
     */
    template <typename Range, typename F, typename R = detail::map_result_t<Range, F>>
    std::vector<Outcome<R>> map_collect(Range&& inputs, F&& f) {
        return map_collect_impl<R>(inputs, f);
    }

    /// map_collect over a braced list.
    template <typename T, typename F,
              typename R = detail::map_result_t<std::initializer_list<T>, F>>
    std::vector<Outcome<R>> map_collect(std::initializer_list<T> inputs, F&& f) {
        return map_collect_impl<R>(inputs, f);
    }

    /// map_collect over 0, 1, ..., n-1 (as std::size_t).
    template <typename F, typename R = detail::map_result_t<detail::IndexRange, F>>
    std::vector<Outcome<R>> map_indexed_collect(std::size_t n, F&& f) {
        detail::IndexRange indices(n);
        return map_collect_impl<R>(indices, f);
    }

    /**
     * Starts a streaming call over `inputs` and returns its pj::Stream of (index, result) pairs, in
     * input order or, with return_as("generator_unordered"), in completion order. Results are
     * produced only as fast as they are read (the window is bounded). See pj::Stream for lifetimes.
     * One pj task per element, whatever the range, so T and R need a pj::codec (unlike map).
     */
    template <typename Range, typename F,
              typename R = detail::map_result_t<Range, std::decay_t<F>>>
    Stream<R> imap(Range&& inputs, F&& f) {
        return imap_impl<R, Range, F>(std::forward<Range>(inputs), std::forward<F>(f));
    }

    /// imap over a braced list (copied into the stream).
    template <typename T, typename F,
              typename R = detail::map_result_t<std::vector<T>, std::decay_t<F>>>
    Stream<R> imap(std::initializer_list<T> inputs, F&& f) {
        return imap_impl<R, std::vector<T>, F>(std::vector<T>(inputs), std::forward<F>(f));
    }

    /// The executor, still owned by this object (NULL after a move).
    pj_parallel_t* capi() const noexcept { return core_ ? core_->handle : nullptr; }

private:
    /// `own`: the progress function of the options (its config points at it), or NULL.
    Parallel(const pj_config_t* config, std::shared_ptr<detail::ProgressState> own,
             detail::WrapperSettings settings)
        : settings_(settings) {
        const auto& scoped = detail::scoped_settings();
        for (auto it = scoped.rbegin(); it != scoped.rend(); ++it) {
            settings_.inherit(*it);
        }
        workers_ = std::max<std::size_t>(pj_effective_n_jobs(config), 1);
        // Every progress function the new object may call: its own, or one it inherits from a
        // ScopedConfig of this thread (pj_parallel_new copies the function pointers).
        detail::ProgressStates progress;
        if (own) {
            progress.push_back(std::move(own));
        }
        for (const auto& scoped : detail::scoped_progress()) {
            if (scoped) {
                progress.push_back(scoped);
            }
        }
        pj_parallel_t* raw = nullptr;
        detail::ErrorSlot err;
        detail::check(pj_parallel_new(config, &raw, err.out()), err);
        try {
            core_ = std::make_shared<detail::Core>(raw, std::move(progress));
        } catch (...) {
            pj_parallel_free(raw);
            throw;
        }
    }

    /// Runs f over inputs with pj_parallel_map; throws what does not concern one task (with
    /// on_error=collect, task failures are left in the results).
    template <typename R, typename Range, typename F>
    Results run_map(Range& inputs, F& f) {
        if constexpr (std::is_function_v<F>) {
            F* pointer = &f;  // a plain function: pass a pointer to it
            return run_map<R>(inputs, pointer);
        } else {
            using T = detail::element_t<Range>;
            // f lives on the caller's stack for the whole (synchronous) call, and exists when the
            // workers fork.
            return reworded_for_function_objects([&] {
                return run_map_with<T>(
                    inputs, &detail::task_trampoline<F, T, R>,
                    const_cast<void*>(static_cast<const void*>(std::addressof(f))));
            });
        }
    }

    /// Runs `task` (with `userdata`) over inputs, each encoded as a T, with pj_parallel_map.
    template <typename T, typename Range>
    Results run_map_with(Range& inputs, pj_task_fn task, void* userdata) {
        pj_parallel_t* raw = handle();
        auto producer = detail::make_producer<Range, T>(inputs);
        pj_results_t* out = nullptr;
        detail::ErrorSlot err;
        detail::expect_length(raw, inputs);
        detail::CallScope scope(raw, &core_->progress);
        const pj_status status = pj_parallel_map(raw, task, userdata, &decltype(producer)::call,
                                                 &producer, &out, err.out());
        Results results(out);
        if (status != PJ_STATUS_BUSY) {
            core_->calls.fetch_add(1);  // this call replaced any call of this thread
        }
        scope.rethrow_if_failed();
        if (status != PJ_STATUS_OK) {
            producer.rethrow_if_failed();
            detail::check(status, err);
        }
        return results;
    }

    template <typename R, typename Range, typename F>
    std::vector<R> map_impl(Range& inputs, F& f) {
        return map_any<R, false>(inputs, f);
    }

    /// map (Outcomes false) or map_collect (true) of a function object: chunked over a
    /// random-access range, else one task per element with codecs.
    template <typename R, bool Outcomes, typename Range, typename F>
    auto map_any(Range& inputs, F& f)
        -> std::conditional_t<Outcomes, std::vector<Outcome<R>>, std::vector<R>> {
        using T = detail::element_t<Range>;
        if constexpr (std::is_function_v<F>) {
            F* pointer = &f;  // a plain function: pass a pointer to it
            return map_any<R, Outcomes>(inputs, pointer);
        } else if constexpr (detail::is_chunkable<Range>::value) {
            if constexpr (has_codec_v<T> && has_codec_v<R>) {
                if (settings_.keep_workers.value_or(false)) {
                    // Kept workers have the memory of an earlier call: send the elements.
                    return per_element<R, Outcomes>(run_map<R>(inputs, f));
                }
            }
            return reworded_for_function_objects(
                [&] { return run_chunked<R, Outcomes>(inputs, f); });
        } else {
            static_assert(has_codec_v<T>,
                          "pj::Parallel::map: the input range is not random-access with a size, so "
                          "its elements travel to the tasks as bytes and need a pj::codec (or "
                          "copy them into a std::vector first)");
            static_assert(has_codec_v<R>,
                          "pj::Parallel::map: the input range is not random-access with a size, so "
                          "the results travel as bytes and need a pj::codec (or copy the inputs "
                          "into a std::vector first)");
            return per_element<R, Outcomes>(run_map<R>(inputs, f));
        }
    }

    template <typename R, bool Outcomes>
    static auto per_element(Results results)
        -> std::conditional_t<Outcomes, std::vector<Outcome<R>>, std::vector<R>> {
        if constexpr (Outcomes) {
            return outcomes<R>(results);
        } else {
            return decode_or_throw<R>(std::move(results));
        }
    }

    /// The elements per task for n elements (Options::chunk_size).
    std::size_t chunk_for(std::size_t n) const noexcept {
        const std::size_t fixed = settings_.chunk_size.value_or(0);
        if (fixed > 0) {
            return fixed;
        }
        if (settings_.timeout.value_or(false)) {
            return 1;  // pj's timeout is per task: keep it per element
        }
        return std::max<std::size_t>(n / (32 * workers_), 1);
    }

    /// map or map_collect over a random-access range, in tasks of chunk_for(n) elements (see
    /// detail::ChunkCall); errors, progress and outcomes stay per element.
    template <typename R, bool Outcomes, typename Range, typename F>
    auto run_chunked(Range& inputs, F& f)
        -> std::conditional_t<Outcomes, std::vector<Outcome<R>>, std::vector<R>> {
        using Call = detail::ChunkCall<Range, F, R>;
        using Slot = typename Call::Slot;
        pj_parallel_t* raw = handle();
        const std::size_t n = static_cast<std::size_t>(std::size(inputs));
        const std::size_t chunk = chunk_for(n);
        const bool collect = settings_.collect.value_or(false);
        std::vector<Slot> slots(n);
        std::vector<std::optional<std::string>> errors(collect ? n : 0);
        Call call{&inputs, &f,    slots.data(), collect ? errors.data() : nullptr,
                  n,       chunk, collect,      detail::chunk_tokens.fetch_add(1) + 1,
                  detail::current_process()};
        pj_results_t* out = nullptr;
        detail::ErrorSlot err;
        // Progress counts elements (only the display depends on it; the call reports problems).
        (void)pj_parallel_expect(raw, n, chunk, nullptr);
        detail::CallScope scope(raw, &core_->progress);
        scope.count_elements();
        // `call` lives on this stack for the whole (synchronous) call, and exists when the
        // workers fork.
        const pj_status status =
            pj_parallel_map(raw, &Call::run, &call, &Call::produce, &call, &out, err.out());
        Results results(out);
        if (status != PJ_STATUS_BUSY) {
            core_->calls.fetch_add(1);  // this call replaced any call of this thread
        }
        scope.rethrow_if_failed();
        if (status != PJ_STATUS_OK) {
            ErrorHandle e = err.take();
            if (e && pj_error_task_index(e.capi()) >= 0) {
                const auto k = static_cast<std::size_t>(pj_error_task_index(e.capi()));
                throw_error(detail::chunk_error(e.capi(), status, k * chunk));
            }
            throw_error(status, e);
        }
        const std::size_t chunks = n == 0 ? 0 : (n - 1) / chunk + 1;
        if (results.size() != chunks) {
            throw Error(PJ_STATUS_INVALID_ARGUMENT,
                        "pj::Parallel::map: " + std::to_string(results.size()) +
                            " results for " + std::to_string(chunks) + " chunks");
        }
        std::vector<Outcome<R>> outcomes;
        if constexpr (Outcomes) {
            outcomes.reserve(n);
        }
        // Element j failed with `error`: map throws it (the first in input order), map_collect
        // keeps it.
        auto failed = [&](Error error) {
            if constexpr (Outcomes) {
                outcomes.emplace_back(std::move(error));
            } else {
                throw_error(error);
            }
        };
        // Element j's value is in its slot.
        auto succeeded = [&](std::size_t j) {
            if constexpr (Outcomes) {
                if constexpr (detail::direct_slot_v<R>) {
                    outcomes.emplace_back(std::move(slots[j]));
                } else {
                    outcomes.emplace_back(std::move(*slots[j]));
                }
            }
        };
        for (std::size_t k = 0; k < chunks; ++k) {
            const std::size_t lo = k * chunk;
            const std::size_t hi = lo + std::min(chunk, n - lo);
            const pj_status st = pj_results_status(results.capi(), k);
            if (st != PJ_STATUS_OK) {
                // on_error "collect": a dead worker, a timeout (or, when pj's on_error differs
                // from what pj.hpp was told, an element's failure) is every element's outcome.
                const pj_error_t* e = pj_results_error(results.capi(), k);
                for (std::size_t j = lo; j < hi; ++j) {
                    failed(e != nullptr ? detail::chunk_error(e, st, lo, j)
                                        : Error(st, "task " + std::to_string(j) + " failed: " +
                                                        pj::status_str(st),
                                                {}, static_cast<std::int64_t>(j)));
                }
                continue;
            }
            const ByteView bytes = results.bytes(k);
            if (bytes.size == 0) {  // ran in this process: the slots and errors are written
                for (std::size_t j = lo; j < hi; ++j) {
                    if (collect && errors[j]) {
                        failed(detail::element_error(j, *errors[j]));
                    } else {
                        succeeded(j);
                    }
                }
                continue;
            }
            std::size_t at = 0;  // ran in a worker process: records, one per element
            for (std::size_t j = lo; j < hi; ++j) {
                bool ok = true;
                if (collect) {
                    if (at >= bytes.size) {
                        throw InvalidArgument(PJ_STATUS_INVALID_ARGUMENT,
                                              "pj.hpp: truncated chunk results");
                    }
                    ok = bytes.data[at++] == 0;
                }
                const std::uint64_t len = detail::get_u64(bytes.data, bytes.size, at);
                if (len > bytes.size - at) {
                    throw InvalidArgument(PJ_STATUS_INVALID_ARGUMENT,
                                          "pj.hpp: truncated chunk results");
                }
                const std::uint8_t* data = bytes.data + at;
                at += static_cast<std::size_t>(len);
                if (!ok) {
                    failed(detail::element_error(
                        j, std::string(reinterpret_cast<const char*>(data),
                                       static_cast<std::size_t>(len))));
                    continue;
                }
                if constexpr (has_codec_v<R>) {
                    slots[j] = detail::decode_result<R>(data, static_cast<std::size_t>(len), j);
                }
                succeeded(j);
            }
        }
        if constexpr (Outcomes) {
            return outcomes;
        } else if constexpr (detail::direct_slot_v<R>) {
            return slots;
        } else {
            std::vector<R> values;
            values.reserve(n);
            for (Slot& slot : slots) {
                values.push_back(std::move(*slot));
            }
            return values;
        }
    }

    /// The results, decoded; with on_error=collect, the first failure (in input order) is thrown.
    template <typename R>
    static std::vector<R> decode_or_throw(Results results) {
        if (pj_results_error_count(results.capi()) != 0) {
            // on_error=collect: throw the first failure, now that every task ran.
            const std::size_t n = results.size();
            for (std::size_t i = 0; i < n; ++i) {
                const pj_status status = pj_results_status(results.capi(), i);
                if (status != PJ_STATUS_OK) {
                    throw_error(task_error(results, i, status));
                }
            }
        }
        return results.decode_all<R>();
    }

    template <typename R, typename Range, typename F>
    std::vector<Outcome<R>> map_collect_impl(Range& inputs, F& f) {
        return map_any<R, true>(inputs, f);
    }

    /// Every task's outcome: its decoded value, or its error.
    template <typename R>
    static std::vector<Outcome<R>> outcomes(const Results& results) {
        std::vector<Outcome<R>> out;
        const std::size_t n = results.size();
        out.reserve(n);
        for (std::size_t i = 0; i < n; ++i) {
            const pj_status status = pj_results_status(results.capi(), i);
            if (status == PJ_STATUS_OK) {
                out.emplace_back(results.get<R>(i));
            } else {
                out.emplace_back(task_error(results, i, status));
            }
        }
        return out;
    }

    /// The error of failed task `index` of `results` (on_error=collect).
    static Error task_error(const Results& results, std::size_t index, pj_status status) {
        const pj_error_t* e = pj_results_error(results.capi(), index);
        if (e == nullptr) {
            return Error(status, "task " + std::to_string(index) + " failed: " +
                                     pj::status_str(status),
                         {}, static_cast<std::int64_t>(index));
        }
        return Error(status, pj_error_message(e), pj_error_report(e), pj_error_task_index(e),
                     pj_error_callback_code(e));
    }

    template <typename R, typename Range, typename F>
    Stream<R> imap_impl(Range&& inputs, F&& f) {
        using State = detail::ImapState<Range&&, F&&>;
        using T = detail::element_t<std::remove_reference_t<Range>>;
        using Fn = std::decay_t<F>;
        // On the heap before the call starts, so it exists when the workers fork and stays put
        // while the Stream moves.
        auto owned = std::make_unique<State>(std::forward<Range>(inputs), std::forward<F>(f));
        void* userdata = std::addressof(owned->f);
        return reworded_for_function_objects([&] {
            return start_stream<R>(std::move(owned), &detail::task_trampoline<Fn, T, R>, userdata);
        });
    }

    /// Runs `run` (a call with a lambda, a function object or a function pointer), rewording pj's
    /// refusal of an unregistered task function, which speaks C ("registered with pj_register"),
    /// for C++: where workers do not share the caller's memory (start_method "spawn", backend
    /// "mpi"), only functions registered with pj::register_function can run, through map<f>.
    template <typename Run>
    static auto reworded_for_function_objects(Run&& run) -> decltype(run()) {
        try {
            return run();
        } catch (const InvalidArgument& e) {
            const std::string message = e.what();
            if (message.find("must be registered with pj_register") == std::string::npos) {
                throw;
            }
            // pj's message starts with the setting: "with start_method \"spawn\", ...".
            const std::string setting = message.substr(0, message.find(','));
            throw InvalidArgument(
                PJ_STATUS_INVALID_ARGUMENT,
                setting + ", a lambda, function object or function pointer cannot run in the "
                          "workers: register a plain function with "
                          "pj::register_function<f>(\"name\") in every process (before "
                          "pj::worker_main_if_requested) and call map<f>(inputs), imap<f>(inputs) "
                          "or map_collect<f>(inputs)");
        }
    }

    /// Starts the streaming call of `owned` (inputs and producer) with `task`; the stream owns
    /// the state before pj holds pointers into it.
    template <typename R, typename State>
    Stream<R> start_stream(std::unique_ptr<State> owned, pj_task_fn task, void* userdata) {
        pj_parallel_t* raw = handle();
        State& state = *owned;
        Stream<R> stream(core_, 0, std::move(owned));
        detail::ErrorSlot err;
        detail::expect_length(raw, state.range);
        detail::CallScope scope(raw, &core_->progress);
        const pj_status status = pj_parallel_imap(raw, task, userdata,
                                                  &decltype(state.producer)::call, &state.producer,
                                                  err.out());
        if (status == PJ_STATUS_BUSY) {
            detail::check(status, err);
        }
        const std::uint64_t call = core_->calls.fetch_add(1) + 1;
        detail::check(status, err);
        stream.impl_->call = call;
        stream.impl_->finished = false;
        scope.rethrow_if_failed();  // the stream, destroyed, abandons the call
        return stream;
    }

    pj_parallel_t* handle() const {
        if (!core_) {
            throw Error(PJ_STATUS_NULL_ARGUMENT, "pj::Parallel: used after being moved from");
        }
        return core_->handle;
    }

    std::shared_ptr<detail::Core> core_;
    detail::WrapperSettings settings_;  // its options', then its ScopedConfigs'
    std::size_t workers_ = 1;           // effective n_jobs, for automatic chunk sizes
};

inline std::size_t Options::effective_n_jobs() const {
    const std::size_t n = pj_effective_n_jobs(raw());
    if (n == 0) {
        Parallel explain(*this);  // throws why the options cannot be resolved
        throw Error(PJ_STATUS_INVALID_ARGUMENT, "pj::Options: the options cannot be resolved");
    }
    return n;
}

}  // namespace pj

#endif  // PJ_HPP
