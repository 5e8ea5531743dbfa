package pj

/*
#include "pj_header.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"strings"
)

// Status is pj's status code (pj_status in pj.h). The numbers are stable.
type Status uint32

// The statuses of pj.h; StatusOK and StatusDone never appear in an *Error.
const (
	StatusOK              Status = 0  // PJ_STATUS_OK
	StatusDone            Status = 1  // PJ_STATUS_DONE
	StatusNullArgument    Status = 2  // PJ_STATUS_NULL_ARGUMENT
	StatusInvalidArgument Status = 3  // PJ_STATUS_INVALID_ARGUMENT
	StatusBusy            Status = 4  // PJ_STATUS_BUSY
	StatusUnsupported     Status = 5  // PJ_STATUS_UNSUPPORTED
	StatusTaskFailed      Status = 6  // PJ_STATUS_TASK_FAILED
	StatusTimeout         Status = 7  // PJ_STATUS_TIMEOUT
	StatusWorkerDied      Status = 8  // PJ_STATUS_WORKER_DIED
	StatusCancelled       Status = 9  // PJ_STATUS_CANCELLED
	StatusIO              Status = 10 // PJ_STATUS_IO
	StatusPanic           Status = 11 // PJ_STATUS_PANIC
)

// Compile-time checks that the numbers above are pj.h's: a mismatch is a constant index out of
// range (or a negative constant converted to uint32).
var (
	_ = [1]int{}[uint32(C.PJ_STATUS_OK)-uint32(StatusOK)]
	_ = [1]int{}[uint32(C.PJ_STATUS_DONE)-uint32(StatusDone)]
	_ = [1]int{}[uint32(C.PJ_STATUS_NULL_ARGUMENT)-uint32(StatusNullArgument)]
	_ = [1]int{}[uint32(C.PJ_STATUS_INVALID_ARGUMENT)-uint32(StatusInvalidArgument)]
	_ = [1]int{}[uint32(C.PJ_STATUS_BUSY)-uint32(StatusBusy)]
	_ = [1]int{}[uint32(C.PJ_STATUS_UNSUPPORTED)-uint32(StatusUnsupported)]
	_ = [1]int{}[uint32(C.PJ_STATUS_TASK_FAILED)-uint32(StatusTaskFailed)]
	_ = [1]int{}[uint32(C.PJ_STATUS_TIMEOUT)-uint32(StatusTimeout)]
	_ = [1]int{}[uint32(C.PJ_STATUS_WORKER_DIED)-uint32(StatusWorkerDied)]
	_ = [1]int{}[uint32(C.PJ_STATUS_CANCELLED)-uint32(StatusCancelled)]
	_ = [1]int{}[uint32(C.PJ_STATUS_IO)-uint32(StatusIO)]
	_ = [1]int{}[uint32(C.PJ_STATUS_PANIC)-uint32(StatusPanic)]
)

// String describes the status as pj_status_str does, e.g.
// "PJ_STATUS_TIMEOUT: a task exceeded the timeout".
func (s Status) String() string {
	return C.GoString(C.pj_status_str(C.uint32_t(s)))
}

// Sentinel errors, one per failing status, for errors.Is. Every *Error matches the sentinel of its
// Status:
//
//	if errors.Is(err, pj.ErrTimeout) { ... }
//
// A cancelled or expired context is reported as ctx.Err() itself (context.Canceled or
// context.DeadlineExceeded), not as ErrCancelled, which is for calls pj cancels on its own.
var (
	// ErrNullArgument: pj was handed a NULL pointer (a bug in this package if you ever see it).
	ErrNullArgument = errors.New("pj: null argument")
	// ErrInvalidArgument: an option value was invalid or an option key unknown; the message quotes it.
	ErrInvalidArgument = errors.New("pj: invalid argument")
	// ErrBusy: the executor was running a call on another thread.
	ErrBusy = errors.New("pj: busy")
	// ErrUnsupported: the request is valid but not supported, e.g. Map with a process backend (use
	// MapNamed), or the fork start method.
	ErrUnsupported = errors.New("pj: unsupported")
	// ErrTaskFailed: fn returned an error or panicked (or a task failed in pj).
	ErrTaskFailed = errors.New("pj: task failed")
	// ErrTimeout: a call of fn ran longer than the Timeout option.
	ErrTimeout = errors.New("pj: task timed out")
	// ErrWorkerDied: a worker process died while running an input (MapNamed on processes): it
	// crashed, called os.Exit, or was killed.
	ErrWorkerDied = errors.New("pj: worker died")
	// ErrCancelled: pj cancelled the call itself (a cancelled context gives ctx.Err() instead).
	ErrCancelled = errors.New("pj: cancelled")
	// ErrIO: an operating-system call failed, e.g. the worker threads could not be started.
	ErrIO = errors.New("pj: i/o error")
	// ErrInternal: pj caught a panic of its own (a bug in pj): PJ_STATUS_PANIC.
	ErrInternal = errors.New("pj: internal error")
)

var sentinels = map[Status]error{
	StatusNullArgument:    ErrNullArgument,
	StatusInvalidArgument: ErrInvalidArgument,
	StatusBusy:            ErrBusy,
	StatusUnsupported:     ErrUnsupported,
	StatusTaskFailed:      ErrTaskFailed,
	StatusTimeout:         ErrTimeout,
	StatusWorkerDied:      ErrWorkerDied,
	StatusCancelled:       ErrCancelled,
	StatusIO:              ErrIO,
	StatusPanic:           ErrInternal,
}

// kinds names each status as pj's reports do ("pj error: <kind>").
var kinds = map[Status]string{
	StatusNullArgument:    "null argument",
	StatusInvalidArgument: "invalid argument",
	StatusBusy:            "busy",
	StatusUnsupported:     "unsupported",
	StatusTaskFailed:      "task failed",
	StatusTimeout:         "timeout",
	StatusWorkerDied:      "worker died",
	StatusCancelled:       "cancelled",
	StatusIO:              "i/o error",
	StatusPanic:           "panic",
}

// Error is a failed call or option: pj's error object copied into Go (the C object is freed at once),
// or an error of the Go side (a failing or panicking fn, a timeout, a refused option) in the same
// shape.
type Error struct {
	// Status says what kind of failure this is; errors.Is(err, ErrX) tests it.
	Status Status
	// TaskIndex is the index of the input the error is about (in input order, from 0), or -1 when
	// the error is not about one input. For an error pj itself reports about a task (a chunk of
	// inputs, see ChunkSize), it is the chunk's first input.
	TaskIndex int
	// Message is one line, e.g. "task 537 failed: bad input".
	Message string
	// Report is a multi-line report (each line ends in a newline): the kind of error, the input's
	// index, the backend and the message, and for a panic the goroutine's stack.
	Report string
	// Err is the cause, when there is one: the error fn returned, or a *PanicError. Unwrap returns
	// it, so errors.Is and errors.As see through to it.
	Err error
}

// Error returns "pj: " and the message.
func (e *Error) Error() string { return "pj: " + e.Message }

// Unwrap returns the cause (the error fn returned, a *PanicError), or nil.
func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is the sentinel of e's status (ErrTimeout for StatusTimeout, ...).
func (e *Error) Is(target error) bool {
	s, ok := sentinels[e.Status]
	return ok && target == s
}

// PanicError is the cause of the *Error a panicking fn gives: Map and friends recover every panic of
// fn (it never unwinds into pj) and report it as a failed task.
type PanicError struct {
	// Index is the input whose call of fn panicked.
	Index int
	// Value is the value passed to panic. panic(nil) arrives as a *runtime.PanicNilError (Go 1.21+).
	// With MapNamed it is a string, the value as fmt.Sprint formats it: the value itself stays in
	// the process that ran the function.
	Value any
	// Stack is the panicking goroutine's stack, as runtime/debug.Stack formats it (with MapNamed,
	// in the process that ran the function).
	Stack []byte
}

// Error returns "task <index> panicked: <value>".
func (p *PanicError) Error() string {
	return fmt.Sprintf("task %d panicked: %s", p.Index, describe(p.Value))
}

// Unwrap returns the panic value when it is an error (a runtime.Error, a *runtime.PanicNilError, an
// error passed to panic), so errors.As finds it.
func (p *PanicError) Unwrap() error {
	err, _ := p.Value.(error)
	return err
}

// describe formats a panic value or error without letting a panicking String or Error method escape.
func describe(v any) (s string) {
	defer func() {
		if r := recover(); r != nil {
			s = fmt.Sprintf("%T (its String or Error method panicked)", v)
		}
	}()
	return fmt.Sprint(v)
}

// taskError is the *Error of input index's fn returning err.
func taskError(index int, backend string, err error) *Error {
	msg := fmt.Sprintf("task %d failed: %s", index, describe(err))
	return &Error{
		Status:    StatusTaskFailed,
		TaskIndex: index,
		Message:   msg,
		Report:    report("task failed", index, backend, msg, nil),
		Err:       err,
	}
}

// panicError is the *Error of input index's fn panicking with v.
func panicError(index int, backend string, v any, stack []byte) *Error {
	p := &PanicError{Index: index, Value: v, Stack: stack}
	msg := p.Error()
	return &Error{
		Status:    StatusTaskFailed,
		TaskIndex: index,
		Message:   msg,
		Report:    report("task failed", index, backend, msg, stack),
		Err:       p,
	}
}

// report formats a multi-line report in the shape of pj_error_report.
func report(kind string, index int, backend, msg string, stack []byte) string {
	var b strings.Builder
	fmt.Fprintf(&b, "pj error: %s\n", kind)
	if index >= 0 {
		fmt.Fprintf(&b, "  task index: %d\n", index)
	}
	if backend != "" {
		fmt.Fprintf(&b, "  backend: %s\n", backend)
	}
	writeMessage(&b, msg, stack)
	return b.String()
}

// writeMessage writes the last lines of a report: the message, and the stack if any.
func writeMessage(b *strings.Builder, msg string, stack []byte) {
	fmt.Fprintf(b, "  message: %s\n", msg)
	if len(stack) > 0 {
		b.WriteString("  stack:\n")
		for _, line := range strings.Split(strings.TrimRight(string(stack), "\n"), "\n") {
			fmt.Fprintf(b, "    %s\n", line)
		}
	}
}

// goError is an *Error raised by the Go side before or around a call (an option, a timeout).
func goError(status Status, index int, msg string) *Error {
	return &Error{
		Status:    status,
		TaskIndex: index,
		Message:   msg,
		Report:    report(kinds[status], index, "", msg, nil),
	}
}

// statusError is the *Error of a C function that reports a status without an error object
// (pj_config_new, pj_results_get): its message names the function, so that the error says what
// failed; index is the input it concerns, or -1.
func statusError(status C.pj_status, function string, index int) *Error {
	msg := fmt.Sprintf("%s failed: %v", function, Status(status))
	if index >= 0 {
		msg = fmt.Sprintf("task %d: %s", index, msg)
	}
	return goError(Status(status), index, msg)
}

// takeError copies a pj error into an *Error and frees it. err may be NULL (a status without an error
// object).
func takeError(status C.pj_status, err *C.pj_error_t) *Error {
	defer C.pj_error_free(err)
	return copyError(status, err)
}

// copyError copies a pj error into an *Error without freeing it (an error borrowed from results).
// err may be NULL (a status without an error object).
func copyError(status C.pj_status, err *C.pj_error_t) *Error {
	e := &Error{Status: Status(status), TaskIndex: -1}
	if err == nil {
		e.Message = e.Status.String()
		e.Report = "pj error: " + e.Message + "\n"
		return e
	}
	e.Status = Status(C.pj_error_status(err))
	e.Message = C.GoString(C.pj_error_message(err))
	e.Report = C.GoString(C.pj_error_report(err))
	if index := int64(C.pj_error_task_index(err)); index >= 0 {
		e.TaskIndex = int(index)
	}
	return e
}
