package pj

// The Go functions pj calls, through the C trampolines of shim.c. This file's preamble holds
// declarations only, as cgo requires of a file with //export.

/*
#include <stdint.h>
#include <stdlib.h>
#include "pj_header.h"
*/
import "C"

import (
	"fmt"
	"runtime/cgo"
	"strings"
	"unsafe"
)

// pjgoTask runs the inputs [lo, hi) of the call behind handle. pj calls it on its worker threads (or
// on the thread driving the call, for the sequential backend), several at once.
//
//export pjgoTask
func pjgoTask(handle C.uintptr_t, lo, hi C.uint64_t, out *C.pj_out_t) C.int32_t {
	code, msg := runTask(uintptr(handle), uint64(lo), uint64(hi))
	if msg != "" {
		cmsg := C.CString(msg)
		defer C.free(unsafe.Pointer(cmsg))
		C.pj_out_error(out, cmsg)
	}
	return C.int32_t(code)
}

// pjgoProduce hands pj the next input range of the call behind handle: 1 with [*lo, *hi), 0 at the
// end, -1 once the call is stopped. pj calls it on the thread driving the call.
//
//export pjgoProduce
func pjgoProduce(handle C.uintptr_t, lo, hi *C.uint64_t) C.int32_t {
	first, end, more := runProduce(uintptr(handle))
	*lo, *hi = C.uint64_t(first), C.uint64_t(end)
	return C.int32_t(more)
}

// runTask is pjgoTask's body. No panic leaves it: fn's panics are recovered per input by runChunk,
// and anything else (a stale handle, a panic while recovering) is recovered here and reported as a
// failed task, with a message for pj.
func runTask(handle uintptr, lo, hi uint64) (code int32, msg string) {
	var c *call
	returned := false
	defer func() {
		if returned {
			return
		}
		v := recover()
		msg = fmt.Sprintf("pj (Go): the task trampoline failed on inputs [%d, %d): %s", lo, hi, describe(v))
		if c != nil {
			c.halt(goError(StatusTaskFailed, int(lo), msg))
		}
		code = codeBroken
	}()
	c = cgo.Handle(handle).Value().(*call)
	code = c.runChunk(int(lo), int(hi))
	returned = true
	return code, ""
}

// runProduce is pjgoProduce's body; no panic leaves it either.
func runProduce(handle uintptr) (lo, hi uint64, more int32) {
	var c *call
	returned := false
	defer func() {
		if returned {
			return
		}
		v := recover()
		if c != nil {
			c.halt(goError(StatusTaskFailed, -1, "pj (Go): the producer failed: "+describe(v)))
		}
		more = -1
	}()
	c = cgo.Handle(handle).Value().(*call)
	first, end, m := c.produce()
	returned = true
	return uint64(first), uint64(end), m
}

// pjgoNamedTask runs one task of a named call: the function named at the start of arg on the input
// encoded after it (see runNamedTask), and writes the encoded result to out. pj calls it in spawned
// worker processes (first is non-zero for the first task of such a worker), or on its threads, or on
// the thread driving the call.
//
//export pjgoNamedTask
func pjgoNamedTask(arg *C.uint8_t, length C.size_t, out *C.pj_out_t, first C.int) C.int32_t {
	if first != 0 {
		forgetWorkerVariables()
	}
	var in []byte
	if length > 0 {
		in = unsafe.Slice((*byte)(unsafe.Pointer(arg)), int(length))
	}
	result, code, msg := runNamedTask(in, out)
	if code == codeOK {
		var data *C.uint8_t
		if len(result) > 0 {
			data = (*C.uint8_t)(unsafe.Pointer(&result[0])) // pj copies the bytes
		}
		if status := C.pj_out_set(out, data, C.size_t(len(result))); status != C.PJ_STATUS_OK {
			code, msg = codeNamedBroken, "pj (Go): pj_out_set failed: "+Status(status).String()
		}
	}
	if code != codeOK {
		cmsg := C.CString(strings.ReplaceAll(msg, "\x00", `\x00`))
		defer C.free(unsafe.Pointer(cmsg))
		C.pj_out_error(out, cmsg)
	}
	return C.int32_t(code)
}

// pjgoNamedProduce hands pj the next argument of the named call behind handle: 1 with *arg and
// *length (a C buffer valid until the next call), 0 at the end, -1 once the call is stopped. pj calls
// it on the thread driving the call.
//
//export pjgoNamedProduce
func pjgoNamedProduce(handle C.uintptr_t, arg **C.uint8_t, length *C.size_t) (more C.int32_t) {
	var nc *namedCall
	returned := false
	defer func() {
		if returned {
			return
		}
		v := recover()
		if nc != nil {
			nc.c.halt(goError(StatusTaskFailed, -1, "pj (Go): the producer failed: "+describe(v)))
		}
		more = -1
	}()
	nc = cgo.Handle(handle).Value().(*namedCall)
	data, n, m := nc.produce()
	*arg, *length = data, n
	returned = true
	return C.int32_t(m)
}

// pjgoNamedProgress reports pj's progress (tasks completed, i.e. inputs) to the named call behind
// handle. pj calls it on the thread driving the call.
//
//export pjgoNamedProgress
func pjgoNamedProgress(handle C.uintptr_t, completed C.uint64_t) {
	defer func() { _ = recover() }() // never unwind into pj: a lost progress report is harmless
	cgo.Handle(handle).Value().(*namedCall).c.progressed(uint64(completed))
}
