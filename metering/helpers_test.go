package metering

import (
	"bytes"
	"log/slog"
	"sync"
	"time"
)

// usageDay is the fixtures' UTC day.
var usageDay = time.Date(2026, 5, 4, 0, 0, 0, 0, time.UTC)

func costPtr(v int64) *int64 { return &v }

// logBuf collects log output from concurrent goroutines.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func slogTo(l *logBuf) *slog.Logger {
	return slog.New(slog.NewJSONHandler(l, nil))
}

// fixedStats is a StatsReporter with set counters: the durable writer is
// in package ledger, which imports this one (ledger tests RegisterWriter
// with a real Writer).
type fixedStats WriterStats

func (s *fixedStats) Stats() WriterStats { return WriterStats(*s) }
