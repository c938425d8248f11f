package metering

import (
	"log/slog"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
)

// usageDay is the fixtures' UTC day.
var usageDay = time.Date(2026, 5, 4, 0, 0, 0, 0, time.UTC)

func costPtr(v int64) *int64 { return &v }

func slogTo(l *testkit.LogBuffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(l, nil))
}

// fixedStats is a StatsReporter with set counters: the durable writer is
// in package ledger, which imports this one (ledger tests RegisterWriter
// with a real Writer).
type fixedStats WriterStats

func (s *fixedStats) Stats() WriterStats { return WriterStats(*s) }
