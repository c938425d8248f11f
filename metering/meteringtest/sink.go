// Package meteringtest provides test doubles for metering: an in-memory
// Sink that other packages' tests (proxy, cmd) hand to the code under test
// and then inspect.
package meteringtest

import (
	"sync"
	"testing"
	"time"

	"github.com/tollgate/tollgate/metering"
)

// pollInterval is how often WaitFor re-checks; short enough that tests are
// not slowed, long enough not to spin.
const pollInterval = 2 * time.Millisecond

// Sink is a metering.Sink that keeps every record in memory. The zero
// value is ready to use and safe for concurrent use.
type Sink struct {
	mu   sync.Mutex
	recs []metering.Record
}

var _ metering.Sink = (*Sink)(nil)

// Record stores a copy of r (the Usage and cost pointers are shared).
func (s *Sink) Record(r *metering.Record) {
	if r == nil {
		return
	}
	s.mu.Lock()
	s.recs = append(s.recs, *r)
	s.mu.Unlock()
}

// Records returns a copy of the records received so far, in order.
func (s *Sink) Records() []metering.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]metering.Record(nil), s.recs...)
}

// Len returns the number of records received so far.
func (s *Sink) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.recs)
}

// Reset forgets every record.
func (s *Sink) Reset() {
	s.mu.Lock()
	s.recs = nil
	s.mu.Unlock()
}

// ByID returns the record with the given request id.
func (s *Sink) ByID(requestID string) (metering.Record, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.recs {
		if r.RequestID == requestID {
			return r, true
		}
	}
	return metering.Record{}, false
}

// WaitFor polls until at least n records arrived and returns them, or fails
// tb after timeout. Records are written when a request ends, which may be
// after the client saw its last byte, so tests wait here instead of
// sleeping.
func (s *Sink) WaitFor(tb testing.TB, n int, timeout time.Duration) []metering.Record {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if got := s.Records(); len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			tb.Fatalf("meteringtest: got %d records after %v, want %d", s.Len(), timeout, n)
			return nil
		}
		time.Sleep(pollInterval)
	}
}
