//go:build !linux

package proxy

import (
	"context"
	"syscall"
)

// polledWatch exists on Linux only (departure_linux.go).
type polledWatch struct{}

func (*polledWatch) stop() {}

func watchPolled(syscall.RawConn, context.CancelCauseFunc) *polledWatch { return nil }
