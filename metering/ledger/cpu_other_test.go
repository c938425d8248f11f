//go:build !unix

package ledger

import "time"

// processCPU is unavailable without getrusage; CPU metrics are then omitted.
func processCPU() (time.Duration, bool) { return 0, false }
