package governance

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/ledger"
)

func crashWriterConfig(dir string) ledger.WriterConfig {
	return ledger.WriterConfig{
		SpoolDir: dir, BatchInterval: 5 * time.Millisecond, SyncInterval: 5 * time.Millisecond,
		RetryMin: time.Millisecond, RetryMax: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// writerOn starts a usage writer over r's store (closed at cleanup).
func writerOn(t *testing.T, r *rig, dir string) *ledger.Writer {
	t.Helper()
	w, err := ledger.NewWriter(crashWriterConfig(dir), r.usage)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		w.Close(ctx)
	})
	return w
}

// TestLedgerN5ReplicaDiesMidRequest: a replica holding two forwarded
// requests stops; after the lease another replica's sweep reclaims both at
// their ceiling; the dead replica's in-flight journal, replayed by its
// successor, corrects the charge (one request had shown partial usage,
// the other none: charged its ceiling) exactly once, replayed twice.
func TestLedgerN5ReplicaDiesMidRequest(t *testing.T) {
	for _, engine := range ledgerEngines() {
		t.Run(engine, func(t *testing.T) {
			ctx := context.Background()
			clk := newClock(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))
			dsn := ledgerDSN(t, engine)
			dead, peer := openRig(t, dsn, clk, "n5-dead"), openRig(t, dsn, clk, "n5-peer")
			b := costBudget("b-n5", 100_000_000, ModeSoft, day)
			dir := t.TempDir()
			w1 := writerOn(t, dead, dir)
			for _, id := range []string{"n5-partial", "n5-silent"} {
				dead.reserve(t, id, Charge{b, 2_000_000})
				rec := &metering.Record{RequestID: id, Start: clk.Now(), Project: "acme", Stream: true,
					ModelRequest: "claude-x", Reserved: true, ReservedMicroUSD: 2_000_000}
				w1.Begin(rec)
				if id == "n5-partial" {
					p := *rec
					p.Status, p.Usage, p.CostMicroUSD = 200, &metering.Usage{InputUncached: 1000, Output: 10}, new(int64(500_000))
					w1.Progress(&p)
				}
			}
			// The replica stops with both requests open: Close keeps their
			// journal lines, as a kill would.
			if err := w1.Close(ctx); err != nil {
				t.Fatal(err)
			}
			saved := savedJournal(t, dir)

			clk.Add(31 * time.Second)
			if err := peer.l.Heartbeat(ctx); err != nil {
				t.Fatal(err)
			}
			if n, err := peer.l.Sweep(ctx); err != nil || n != 2 {
				t.Fatalf("swept %d (%v), want 2", n, err)
			}
			peer.want(t, b, 4_000_000, 0)

			for round := range 2 {
				replayJournal(t, peer, dir, saved) // the second round replays the same files again
				// 0.50 for the partial one, the 2.00 ceiling for the silent one.
				peer.want(t, b, 2_500_000, 0)
				for _, id := range []string{"n5-partial", "n5-silent"} {
					if st := peer.reservationState(t, id); st != stateSettledLate {
						t.Errorf("round %d: %s is %s", round, id, st)
					}
				}
			}
		})
	}
}
