//go:build !unix

package proxy

// RaiseFileLimit has nothing to raise off unix.
func RaiseFileLimit() (soft, hard uint64, err error) { return 0, 0, nil }

// FileLimit is unknown off unix.
func FileLimit() uint64 { return 0 }
