package pj

// The Go functions pj calls, through the C trampolines of shim.c. This file's preamble holds
// declarations only, as cgo requires of a file with //export.

/*
#include <stdint.h>
#include <stdlib.h>
#include "pj.h"
*/
import "C"

import (
	"fmt"
	"runtime/cgo"
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
