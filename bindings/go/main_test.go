package pj

import (
	"os"
	"testing"
)

// TestMain lets pj re-execute the test binary as a worker process (MapNamed on processes): a worker
// runs the init functions (the Register calls of named_test.go and example_test.go), then
// WorkerMainIfRequested serves tasks and exits without reaching m.Run, so the test flags it inherits
// from the caller do not matter.
func TestMain(m *testing.M) {
	WorkerMainIfRequested()
	os.Exit(m.Run())
}
