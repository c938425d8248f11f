//go:build unix

package ledger

import (
	"syscall"
	"time"
)

// processCPU returns the user plus system CPU time of the whole process,
// every goroutine included: the writer's batching goroutine does most of
// the work a benchmark of Record must account for.
func processCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
