package ledger

import (
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/metering"
)

// TestWriterReplayedOnceTheEarlierProcessIsStored: Replayed stays open
// while what a killed process left (a request open in its journal, or a
// final record in its spool only) is not in the store (it is down), and
// closes once it is; a writer on a directory nobody left anything in is
// replayed at once.
func TestWriterReplayedOnceTheEarlierProcessIsStored(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spool bool
	}{{"OpenInTheJournal", false}, {"FinalInTheSpool", true}} {
		t.Run(tc.name, func(t *testing.T) {
			s := mustUsageStore(t, store.SQLite)
			dir := t.TempDir()
			cfg := fastWriterConfig(dir)
			cfg.SyncInterval = time.Hour // end lines only where the test writes them
			w1 := mustWriter(t, cfg, s)
			if !isClosed(w1.Replayed(), 5*time.Second) {
				t.Fatal("a writer on an empty spool directory never reports it has replayed it")
			}
			r := startRecord("rp-" + tc.name)
			w1.Begin(r)
			if tc.spool {
				// Spooled, its journal line ended: only the spool has it.
				w1.Record(finalRecord(r))
				if err := w1.jr.writeEnds(w1.jr.takeEnds()); err != nil {
					t.Fatal(err)
				}
			}
			crash(w1)

			f := &flakyInserter{next: s}
			f.down.Store(true)
			w2 := mustWriter(t, fastWriterConfig(dir), f)
			writerEventually(t, 5*time.Second, func() bool { return f.fails.Load() >= 3 })
			if isClosed(w2.Replayed(), 0) {
				t.Fatal("replayed while the store refused the earlier process's record")
			}
			f.down.Store(false)
			if !isClosed(w2.Replayed(), 10*time.Second) {
				t.Fatalf("not replayed 10 s after the store came back (stats %+v)", w2.Stats())
			}
			want := metering.OutcomeInterrupted
			if tc.spool {
				want = metering.OutcomeOK
			}
			if v := rowOf(t, s, r.RequestID); v.outcome != want {
				t.Errorf("record %+v, want outcome %s", v, want)
			}
		})
	}
}

// isClosed reports whether ch is closed within d.
func isClosed(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}
