//! The forked worker's crash handler, and the parent's reading of what it recorded.
//!
//! A worker that dies of a fatal signal (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP) first
//! runs [`install`]'s handler, which writes the signal, the faulting address, the interrupted
//! instruction and the raw instruction pointers of the crashing thread's stack into a
//! [`CrashRecord`] in the worker's MAP_SHARED page, then lets the signal kill the worker as it
//! would have anyway: the parent still sees a death by that very signal.
//!
//! Symbolization happens in the parent ([`CrashRecord::read`]), after the worker is reaped: the
//! worker is a fork of the parent, so an address means the same code in both (except in a library
//! the task itself loaded after the fork, which is printed as a bare address). The handler does no
//! lookup, allocation, formatting or I/O.
//!
//! Async-signal safety. Between fork and the worker loop, [`install`] only calls sigaltstack and
//! sigaction. The handler only does atomic stores to the shared page and calls sigaction, alarm,
//! sigprocmask, raise and the unwinder's `_Unwind_Backtrace`. The unwinder is not on POSIX's list;
//! it is safe in practice here because (a) it allocates nothing and is initialized in the parent
//! before any fork ([`prepare`]), (b) with glibc >= 2.35 and GCC >= 12 it finds unwind tables
//! through `_dl_find_object`, which is lock-free, and (c) should it still block (an older system
//! where a lock was held by another parent thread at the fork) a one-second alarm ends the walk by
//! killing the worker with the original signal; should it fault, the fault kills the worker with
//! the default action (the handler's signals are blocked while it runs). Either way the worker
//! dies of a crash signal and the parent reports what was recorded up to that point.

use std::ffi::{CStr, c_int, c_void};
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use unwind::{_Unwind_Backtrace, _Unwind_GetIPInfo};

/// The signals whose handler records a backtrace: the ones a crashing task raises itself.
const FATAL: [c_int; 6] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGABRT,
    libc::SIGTRAP,
];

/// Frames recorded at most (the handler's own frames included).
pub const MAX_FRAMES: usize = 64;

/// Bytes of the alternate signal stack: the unwinder needs a few KiB, far more than MINSIGSTKSZ.
const ALT_STACK_SIZE: usize = 64 * 1024;

/// "No frame was an interrupted instruction" in [`CrashRecord::first`].
const NO_SIGNAL_FRAME: u64 = u64::MAX;

/// What a worker's crash handler recorded. It lives in the worker's shared page, zero-filled by
/// mmap (all zeros: nothing recorded), so every field is a plain atomic.
#[derive(Debug)]
#[repr(C)]
pub struct CrashRecord {
    /// 0: nothing recorded; 1: a handler claimed the record; 2: the fields up to `pc` are written.
    state: AtomicU32,
    /// The signal the handler caught.
    signal: AtomicI32,
    /// `si_addr`: for SIGSEGV and SIGBUS, the address whose access faulted.
    fault_address: AtomicU64,
    /// The interrupted instruction, from the signal's ucontext (0 where unsupported).
    pc: AtomicU64,
    /// Frames written so far to `ips` (updated after each one, so a walk cut short keeps them).
    count: AtomicU64,
    /// Index in `ips` of the first frame the unwinder reported as interrupted by the signal: the
    /// frames before it are the handler's own. [`NO_SIGNAL_FRAME`] when none was.
    first: AtomicU64,
    /// Instruction pointers, innermost first: return addresses, except the interrupted frame's.
    ips: [AtomicU64; MAX_FRAMES],
    /// A spawned worker's loaded objects (its addresses differ from the parent's): recorded at
    /// start-up, so that the parent can translate each frame into its own address space before
    /// symbolizing it. Empty for forked workers, whose addresses are the parent's.
    modules: [ModuleSlot; MAX_MODULES],
}

/// Most loaded objects a spawned worker's module table holds.
const MAX_MODULES: usize = 32;

/// One loaded object of a spawned worker: its name's hash, load bias and address range.
#[derive(Debug, Default)]
#[repr(C)]
struct ModuleSlot {
    name_hash: AtomicU64,
    bias: AtomicU64,
    start: AtomicU64,
    end: AtomicU64,
}

/// A loaded object of this process, as `dl_iterate_phdr` reports it.
#[derive(Clone, Copy, Debug)]
struct Module {
    name_hash: u64,
    bias: u64,
    start: u64,
    end: u64,
}

/// The objects loaded in this process (the executable has the empty name).
fn loaded_modules() -> Vec<Module> {
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _: libc::size_t,
        data: *mut c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid info for the duration of the call; `data` is the Vec
        // given to dl_iterate_phdr below.
        unsafe {
            let info = &*info;
            let modules = &mut *(data as *mut Vec<Module>);
            let name = if info.dlpi_name.is_null() {
                &[][..]
            } else {
                std::ffi::CStr::from_ptr(info.dlpi_name).to_bytes()
            };
            let headers = std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum));
            let (mut start, mut end) = (u64::MAX, 0u64);
            for header in headers.iter().filter(|h| h.p_type == libc::PT_LOAD) {
                start = start.min(header.p_vaddr);
                end = end.max(header.p_vaddr + header.p_memsz);
            }
            if start < end {
                let bias = info.dlpi_addr;
                modules.push(Module {
                    name_hash: name_hash(name),
                    bias,
                    start: bias.wrapping_add(start),
                    end: bias.wrapping_add(end),
                });
            }
        }
        0
    }
    let mut modules: Vec<Module> = Vec::new();
    // SAFETY: the callback only reads what the loader passes and pushes to `modules`.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&raw mut modules).cast()) };
    modules
}

/// FNV-1a of an object's name.
fn name_hash(name: &[u8]) -> u64 {
    name.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What the parent makes of a crash record.
#[derive(Debug)]
pub struct Crash {
    /// For SIGSEGV and SIGBUS: the address whose access faulted.
    pub fault_address: Option<u64>,
    /// One line per frame ("#0 0x55d1c0a4b1c9 crash_here at examples/crash.c:20"), innermost
    /// first, joined by newlines.
    pub backtrace: Option<String>,
}

impl CrashRecord {
    /// In a spawned worker, at start-up (not in a forked child, where the loader's lock may be
    /// held by a thread that does not exist there): records the loaded objects.
    pub fn record_modules(&self) {
        for (slot, module) in self.modules.iter().zip(loaded_modules()) {
            slot.name_hash.store(module.name_hash, Ordering::Relaxed);
            slot.bias.store(module.bias, Ordering::Relaxed);
            slot.start.store(module.start, Ordering::Relaxed);
            slot.end.store(module.end, Ordering::Release);
        }
    }

    /// Moves each frame of a spawned worker to the same place in this process's copy of its
    /// object (same name, this process's load bias), so that this process can symbolize it.
    /// Frames of forked workers (no module table) stay as they are.
    fn moved_to_parent_addresses(&self, frames: Vec<(u64, bool)>) -> Vec<(u64, bool)> {
        let theirs: Vec<Module> = self
            .modules
            .iter()
            .map(|slot| Module {
                name_hash: slot.name_hash.load(Ordering::Relaxed),
                bias: slot.bias.load(Ordering::Relaxed),
                start: slot.start.load(Ordering::Relaxed),
                end: slot.end.load(Ordering::Acquire),
            })
            .filter(|m| m.end > m.start)
            .collect();
        if theirs.is_empty() {
            return frames;
        }
        let ours = loaded_modules();
        frames
            .into_iter()
            .map(|(ip, exact)| {
                let moved = theirs
                    .iter()
                    .find(|m| (m.start..m.end).contains(&ip))
                    .and_then(|m| {
                        let mine = ours.iter().find(|o| o.name_hash == m.name_hash)?;
                        Some(ip.wrapping_sub(m.bias).wrapping_add(mine.bias))
                    });
                (moved.unwrap_or(ip), exact)
            })
            .collect()
    }

    /// What the worker recorded when it caught `signal`, symbolized. Call it only after the worker
    /// was reaped (so nothing writes any more). `None` when the handler did not record that signal.
    pub fn read(&self, signal: i32) -> Option<Crash> {
        if self.state.load(Ordering::Acquire) < 2 || self.signal.load(Ordering::Relaxed) != signal {
            return None;
        }
        let fault_address = matches!(signal, libc::SIGSEGV | libc::SIGBUS)
            .then(|| self.fault_address.load(Ordering::Relaxed));
        let count = (self.count.load(Ordering::Acquire) as usize).min(MAX_FRAMES);
        let ips: Vec<u64> = self.ips[..count]
            .iter()
            .map(|ip| ip.load(Ordering::Relaxed))
            .collect();
        let pc = self.pc.load(Ordering::Relaxed);
        let first = self.first.load(Ordering::Relaxed);
        // Where the crashing code's frames start: the frame the unwinder flagged as interrupted
        // by the signal or, failing that, the frame at the interrupted instruction.
        // (NO_SIGNAL_FRAME is never below the count.)
        let start = usize::try_from(first)
            .ok()
            .filter(|&at| at < ips.len())
            .or_else(|| ips.iter().position(|&ip| pc != 0 && ip == pc));
        // (ip, exact): exact for the interrupted instruction, otherwise a return address.
        let frames: Vec<(u64, bool)> = match start {
            Some(at) => ips[at..]
                .iter()
                .enumerate()
                .map(|(n, &ip)| (ip, n == 0))
                .collect(),
            // Nothing tells the handler's frames apart: show the interrupted instruction, then
            // whatever was walked.
            None => std::iter::once((pc, true))
                .chain(ips.iter().map(|&ip| (ip, false)))
                .collect(),
        };
        let frames: Vec<(u64, bool)> = frames.into_iter().filter(|&(ip, _)| ip != 0).collect();
        let frames = self.moved_to_parent_addresses(frames);
        let backtrace = (!frames.is_empty()).then(|| symbolize(&frames));
        Some(Crash {
            fault_address,
            backtrace,
        })
    }
}

/// The function that calls task callbacks: the frames below it are the worker loop's, the same
/// for every crash, and are summed up in one line.
const RUN_BATCH: &str = "pj::task::run_batch";

/// One line per frame: number, address, and function, file and line when symbols say so. Stops
/// after [`RUN_BATCH`]'s frame.
fn symbolize(frames: &[(u64, bool)]) -> String {
    let mut out = String::new();
    for (n, &(ip, exact)) in frames.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        let _ = write!(out, "#{n} 0x{ip:x}");
        // `resolve` looks up the byte before the address it is given, which is right for a return
        // address (it may be the start of the next line, or function); the interrupted
        // instruction itself is looked up as is.
        let lookup = if exact { ip.wrapping_add(1) } else { ip };
        let mut symbols = 0;
        let mut in_run_batch = false;
        backtrace::resolve(lookup as usize as *mut c_void, |symbol| {
            let Some(name) = symbol.name() else { return };
            if symbols > 0 {
                // Innermost first: the functions this one was inlined into follow.
                out.push_str("\n   inlined into");
            }
            // `{:#}`: demangled without the hash suffix.
            let name = format!("{name:#}");
            in_run_batch |= name == RUN_BATCH;
            let _ = write!(out, " {name}");
            match (symbol.filename(), symbol.lineno()) {
                (Some(file), Some(line)) => {
                    let _ = write!(out, " at {}:{line}", file.display());
                }
                (Some(file), None) => {
                    let _ = write!(out, " at {}", file.display());
                }
                _ => {
                    if let Some(object) = shared_object(ip) {
                        let _ = write!(out, " in {}", object.file);
                    }
                }
            }
            symbols += 1;
        });
        if symbols == 0
            && let Some(object) = shared_object(ip)
        {
            match object.symbol {
                Some((name, offset)) => {
                    let _ = write!(out, " {name}+0x{offset:x} in {}", object.file);
                }
                None => {
                    let offset = ip.wrapping_sub(object.base);
                    let _ = write!(out, " in {} (+0x{offset:x})", object.file);
                }
            }
        }
        let below = frames.len() - n - 1;
        if in_run_batch && below > 0 {
            let _ = write!(out, "\n... {below} frames of pj's worker loop");
            break;
        }
    }
    out
}

/// dladdr's answer for an address.
struct SharedObject {
    /// The loaded object's file name.
    file: String,
    /// The nearest exported symbol below the address, and the offset from it.
    symbol: Option<(String, u64)>,
    /// The object's load address.
    base: u64,
}

/// What dladdr knows about `ip`: for frames the symbolizer found nothing for.
fn shared_object(ip: u64) -> Option<SharedObject> {
    // SAFETY: a zeroed Dl_info is a valid out-buffer.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the loader's tables; `info` is a valid out-pointer.
    if unsafe { libc::dladdr(ip as usize as *const c_void, &mut info) } == 0 {
        return None;
    }
    let text = |p: *const libc::c_char| {
        // SAFETY: dladdr's strings are NUL-terminated and live as long as the object is loaded.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    };
    Some(SharedObject {
        file: text(info.dli_fname).unwrap_or_else(|| "?".to_owned()),
        symbol: text(info.dli_sname)
            .map(|name| (demangled(&name), ip.wrapping_sub(info.dli_saddr as u64))),
        base: info.dli_fbase as u64,
    })
}

/// A symbol name as its language writes it: Rust (without the hash suffix) or C++; other names
/// (C) unchanged.
fn demangled(name: &str) -> String {
    format!("{:#}", backtrace::SymbolName::new(name.as_bytes()))
}

/// The alternate signal stack (address, size), mapped once in the parent before the first fork:
/// every worker inherits a private copy-on-write copy, so the child maps nothing.
static ALT_STACK: OnceLock<Option<(usize, usize)>> = OnceLock::new();

/// In the parent, before forking a worker: maps the alternate signal stack and runs the unwinder
/// once, so that whatever it initializes lazily is in place before any handler needs it.
pub fn prepare() {
    ALT_STACK.get_or_init(|| {
        extern "C" fn ignore(_: *mut c_void, _: *mut c_void) -> c_int {
            URC_NO_REASON
        }
        // SAFETY: walks this thread's stack with a callback that does nothing.
        unsafe { _Unwind_Backtrace(ignore, std::ptr::null_mut()) };
        let guard = rustix::param::page_size();
        // SAFETY: a fresh private anonymous mapping, checked for MAP_FAILED below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                guard + ALT_STACK_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            // Crashes are still recorded, on the crashing stack; only a stack overflow is not.
            return None;
        }
        // A guard page below the stack (stacks grow down): a handler that overran it faults
        // instead of writing over whatever lies below. Best effort.
        // SAFETY: the first page of the mapping made just above.
        unsafe { libc::mprotect(base, guard, libc::PROT_NONE) };
        Some((base as usize + guard, ALT_STACK_SIZE))
    });
}

/// Where the handler writes. Set in the worker only (the parent's copy stays null).
static RECORD: AtomicPtr<CrashRecord> = AtomicPtr::new(std::ptr::null_mut());

/// The signal being handled, for the watchdog.
static HANDLING: AtomicI32 = AtomicI32::new(0);

/// In a freshly forked worker: installs the crash handler for [`FATAL`] signals, writing to
/// `record` (which must outlive the process: the worker's shared page does), on the alternate
/// stack [`prepare`] mapped. Async-signal-safe (sigaltstack and sigaction only).
pub fn install(record: &CrashRecord) {
    RECORD.store(std::ptr::from_ref(record).cast_mut(), Ordering::Release);
    // SA_RESETHAND: the signal's default action is back as soon as the handler starts, so that
    // whatever happens next (the handler returning and raising, or faulting) kills the worker.
    let mut flags = libc::SA_SIGINFO | libc::SA_RESETHAND;
    if let Some(&Some((base, size))) = ALT_STACK.get() {
        let stack = libc::stack_t {
            ss_sp: base as *mut c_void,
            ss_flags: 0,
            ss_size: size,
        };
        // SAFETY: the stack is a mapping of ours that this process never unmaps.
        if unsafe { libc::sigaltstack(&stack, std::ptr::null_mut()) } == 0 {
            // On the alternate stack, the handler also runs after a stack overflow.
            flags |= libc::SA_ONSTACK;
        }
    }
    // SAFETY: a zeroed sigaction is valid; its fields are set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_fatal_signal as *const () as libc::sighandler_t;
    action.sa_flags = flags;
    // SAFETY: sigemptyset/sigaddset on a sigset_t we own; sigaction with a valid action.
    // Blocking every fatal signal while the handler runs makes a fault inside it fatal at once
    // (the kernel forces the default action of a blocked synchronous signal).
    unsafe {
        libc::sigemptyset(&mut action.sa_mask);
        for signal in FATAL {
            libc::sigaddset(&mut action.sa_mask, signal);
        }
        for signal in FATAL {
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// The crash handler: records, then lets the signal kill the worker. Async-signal-safe (see the
/// module docs): atomic stores, the unwinder, and signal-related system calls.
extern "C" fn on_fatal_signal(signal: c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: RECORD is null or points into the worker's shared page, mapped for its lifetime.
    let record = unsafe { RECORD.load(Ordering::Acquire).as_ref() };
    // Only the first crash is recorded (two threads may crash at once, or the handler of one
    // signal may fault with another).
    if let Some(record) = record
        && record
            .state
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    {
        // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
        let address = unsafe { info.as_ref() }.map_or(0, |info| {
            // SAFETY: si_addr is the field for the signals this handler is installed for.
            unsafe { info.si_addr() as u64 }
        });
        record.signal.store(signal, Ordering::Relaxed);
        record.fault_address.store(address, Ordering::Relaxed);
        record.pc.store(interrupted_pc(context), Ordering::Relaxed);
        record.first.store(NO_SIGNAL_FRAME, Ordering::Relaxed);
        record.state.store(2, Ordering::Release);
        arm_watchdog(signal);
        let mut walk = Walk { record, count: 0 };
        // SAFETY: walks this thread's stack; `record_frame` gets `walk` back as its argument, and
        // `walk` outlives the call.
        unsafe { _Unwind_Backtrace(record_frame, (&raw mut walk).cast()) };
        // SAFETY: alarm is async-signal-safe; 0 cancels the watchdog.
        unsafe { libc::alarm(0) };
    }
    // Die of this signal. SA_RESETHAND restored its default action, and it stays blocked until
    // the handler returns: raised now, it is delivered (and kills) right at the return, whatever
    // its origin. (Returning alone would do for a fault, which the interrupted instruction raises
    // again, but not for kill(), raise() or a breakpoint.)
    // SAFETY: raise is async-signal-safe.
    unsafe { libc::raise(signal) };
}

/// The handler's walk over the crashing stack.
struct Walk<'a> {
    record: &'a CrashRecord,
    count: usize,
}

/// `_Unwind_Backtrace`'s callback: records one frame.
extern "C" fn record_frame(context: *mut c_void, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Walk` that `on_fatal_signal` passed, alive for the whole walk.
    let walk = unsafe { &mut *arg.cast::<Walk<'_>>() };
    let Some(slot) = walk.record.ips.get(walk.count) else {
        return URC_END_OF_STACK;
    };
    let mut before_insn: c_int = 0;
    // SAFETY: `context` is the live unwind context the unwinder passed to this callback.
    let ip = unsafe { _Unwind_GetIPInfo(context, &mut before_insn) };
    if ip == 0 {
        return URC_END_OF_STACK;
    }
    slot.store(ip as u64, Ordering::Relaxed);
    // The unwinder flags the frame a signal interrupted: its ip is the faulting instruction, not
    // a return address. The first one is where the crash happened; the frames above it are this
    // handler and the signal trampoline.
    if before_insn != 0 && walk.record.first.load(Ordering::Relaxed) == NO_SIGNAL_FRAME {
        walk.record
            .first
            .store(walk.count as u64, Ordering::Relaxed);
    }
    walk.count += 1;
    walk.record
        .count
        .store(walk.count as u64, Ordering::Release);
    URC_NO_REASON
}

/// The interrupted instruction, from the handler's ucontext.
fn interrupted_pc(context: *mut c_void) -> u64 {
    let context = context.cast::<libc::ucontext_t>();
    if context.is_null() {
        return 0;
    }
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        // SAFETY: the kernel passes a valid ucontext_t to an SA_SIGINFO handler.
        unsafe { (*context).uc_mcontext.gregs[libc::REG_RIP as usize] as u64 }
    }
    #[cfg(all(target_os = "linux", target_arch = "aarch64"))]
    {
        // SAFETY: the kernel passes a valid ucontext_t to an SA_SIGINFO handler.
        unsafe { (*context).uc_mcontext.pc }
    }
    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    {
        0
    }
}

/// Bounds the walk: should the unwinder block, SIGALRM after one second kills the worker with
/// the signal being handled.
fn arm_watchdog(signal: c_int) {
    HANDLING.store(signal, Ordering::Relaxed);
    // SAFETY: a zeroed sigaction is valid; the fields that matter are set below. sigaction and
    // alarm are async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_watchdog as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut());
        libc::alarm(1);
    }
}

/// SIGALRM during the walk: unblocks the crash signal (its action is the default by now) and
/// raises it, so that the worker dies of the crash, not of the alarm.
extern "C" fn on_watchdog(_: c_int) {
    let signal = HANDLING.load(Ordering::Relaxed);
    // SAFETY: sigemptyset/sigaddset on a local set; sigprocmask and raise are async-signal-safe.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
}

/// `_Unwind_Reason_Code` values the callback returns.
const URC_NO_REASON: c_int = 0;
const URC_END_OF_STACK: c_int = 5;

/// The unwinder's C ABI (libgcc_s, or LLVM's libunwind), which the Rust standard library already
/// links for panics. Called directly rather than through glibc's backtrace(), whose first call
/// loads libgcc with dlopen, and which musl lacks. Its per-frame context is opaque (`c_void`).
///
/// In a module of its own so that cbindgen, which would otherwise copy these declarations into
/// pj.h, skips it:
/// cbindgen:ignore
mod unwind {
    use std::ffi::{c_int, c_void};

    unsafe extern "C" {
        pub fn _Unwind_Backtrace(
            trace: extern "C" fn(*mut c_void, *mut c_void) -> c_int,
            arg: *mut c_void,
        ) -> c_int;
        pub fn _Unwind_GetIPInfo(context: *mut c_void, ip_before_insn: *mut c_int) -> usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zeroed() -> Box<CrashRecord> {
        // SAFETY: all-zero bytes are a valid CrashRecord (atomics only), as in the shared page.
        unsafe { Box::new(std::mem::zeroed()) }
    }

    #[test]
    fn an_empty_record_reads_as_nothing() {
        assert!(zeroed().read(libc::SIGSEGV).is_none());
    }

    #[test]
    fn a_record_of_another_signal_reads_as_nothing() {
        let record = zeroed();
        record.state.store(2, Ordering::Relaxed);
        record.signal.store(libc::SIGABRT, Ordering::Relaxed);
        assert!(record.read(libc::SIGSEGV).is_none());
    }

    #[inline(never)]
    fn here() -> u64 {
        here as *const () as u64
    }

    #[test]
    fn frames_from_the_signal_frame_on_are_symbolized() {
        let record = zeroed();
        record.state.store(2, Ordering::Relaxed);
        record.signal.store(libc::SIGSEGV, Ordering::Relaxed);
        record.fault_address.store(0x10, Ordering::Relaxed);
        // Frame 0 stands for the handler: skipped, since frame 1 is the interrupted one.
        record.ips[0].store(1, Ordering::Relaxed);
        record.ips[1].store(here(), Ordering::Relaxed);
        record.count.store(2, Ordering::Relaxed);
        record.first.store(1, Ordering::Relaxed);
        let crash = record.read(libc::SIGSEGV).unwrap();
        assert_eq!(crash.fault_address, Some(0x10));
        let backtrace = crash.backtrace.unwrap();
        assert!(backtrace.starts_with("#0 0x"), "{backtrace}");
        assert!(backtrace.contains("crash::tests::here"), "{backtrace}");
        assert!(!backtrace.contains("#1"), "{backtrace}");
    }
}
