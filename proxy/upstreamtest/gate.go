package upstreamtest

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
)

// Gate holds streams after their first event until the test releases them,
// for tests such as "the upstream flushed headers and one event, then
// blocks". Use it as Config.Hold: gate.Hold.
type Gate struct {
	release     chan struct{}
	releaseOnce sync.Once
	reached     chan struct{}
	reachedOnce sync.Once
	waiting     atomic.Int64
}

// NewGate returns a gate that holds every stream until Release.
func NewGate() *Gate {
	return &Gate{release: make(chan struct{}), reached: make(chan struct{})}
}

// Hold blocks until Release is called or ctx is done.
func (g *Gate) Hold(ctx context.Context, _ *http.Request) {
	g.waiting.Add(1)
	defer g.waiting.Add(-1)
	g.reachedOnce.Do(func() { close(g.reached) })
	select {
	case <-g.release:
	case <-ctx.Done():
	}
}

// Reached is closed when the first stream arrives at the gate, that is once
// its headers and first event have been flushed.
func (g *Gate) Reached() <-chan struct{} { return g.reached }

// Waiting is the number of streams held at the gate now.
func (g *Gate) Waiting() int { return int(g.waiting.Load()) }

// Release opens the gate for every held and future stream. It is safe to
// call more than once.
func (g *Gate) Release() { g.releaseOnce.Do(func() { close(g.release) }) }
