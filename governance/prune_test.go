package governance

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tollgate/tollgate/metering"
)

// rowCounts is how many reservation and item rows request id has.
func (r *rig) rowCounts(t *testing.T, id string) (res, items int) {
	t.Helper()
	ctx := context.Background()
	if err := r.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM gov_reservations WHERE request_id = $1`, id).Scan(&res); err != nil {
		t.Fatal(err)
	}
	if err := r.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM gov_reservation_items WHERE request_id = $1`, id).Scan(&items); err != nil {
		t.Fatal(err)
	}
	return res, items
}

// wantRows fails unless id's rows are there (kept) or gone.
func (r *rig) wantRows(t *testing.T, when, id string, kept bool) {
	t.Helper()
	res, items := r.rowCounts(t, id)
	if kept && (res != 1 || items == 0) {
		t.Errorf("%s: %s has %d reservation and %d item rows, want them kept", when, id, res, items)
	}
	if !kept && (res != 0 || items != 0) {
		t.Errorf("%s: %s has %d reservation and %d item rows, want them pruned", when, id, res, items)
	}
}

// savedJournal is the in-flight journal files a stopped writer left in
// dir, to be put back for another replay.
func savedJournal(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	saved := map[string][]byte{}
	files, _ := filepath.Glob(filepath.Join(dir, "inflight-*"))
	for _, f := range files {
		saved[f], _ = os.ReadFile(f)
	}
	if len(saved) == 0 {
		t.Fatal("no in-flight journal left")
	}
	return saved
}

// replayJournal puts saved back in dir and has a new writer over r's
// store replay it, as a restarted replica would; nothing may fail or be
// quarantined.
func replayJournal(t *testing.T, r *rig, dir string, saved map[string][]byte) {
	t.Helper()
	ctx := context.Background()
	for f, data := range saved {
		if err := os.WriteFile(f, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	w := writerOn(t, r, dir)
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := w.Flush(fctx)
	cancel()
	if err != nil {
		t.Fatalf("replaying the journal: %v", err)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); st.Quarantined != 0 {
		t.Errorf("%d records quarantined", st.Quarantined)
	}
}

func (r *rig) prune(t *testing.T) int {
	t.Helper()
	n, err := r.l.Prune(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestLedgerPruneFinishedReservations: rows no record can move go after
// pruneFinalAfter, a reclaimed reservation (a late record may still correct
// it) after pruneLateAfter, a held one never; and a record replayed after
// its row is gone, through the store or a replica's in-flight journal,
// neither charges again nor fails.
func TestLedgerPruneFinishedReservations(t *testing.T) {
	for _, engine := range ledgerEngines() {
		t.Run(engine, func(t *testing.T) {
			ctx := context.Background()
			clk := newClock(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))
			dsn := ledgerDSN(t, engine)
			dead, live := openRig(t, dsn, clk, "prune-dead"), openRig(t, dsn, clk, "prune-live")
			b := costBudget("b-prune", 100_000_000, ModeSoft, Window{Kind: WindowLifetime})

			// A request the replica had open when it stopped: its journal
			// holds a start line, replayed later as an interrupted record.
			dir := t.TempDir()
			w1 := writerOn(t, live, dir)
			live.reserve(t, "p-journal", Charge{b, 1_000_000})
			w1.Begin(&metering.Record{RequestID: "p-journal", Start: clk.Now(), Project: "acme", Stream: true,
				ModelRequest: "claude-x", Reserved: true, ReservedMicroUSD: 1_000_000})
			if err := w1.Close(ctx); err != nil {
				t.Fatal(err)
			}
			saved := savedJournal(t, dir)
			// ...whose final record made it after all.
			live.settle(t, okRecord("p-journal", 300_000))

			live.reserve(t, "p-settled", Charge{b, 2_000_000})
			live.settle(t, okRecord("p-settled", 400_000))
			live.reserve(t, "p-released", Charge{b, 2_000_000})
			if err := live.l.Release(ctx, "p-released"); err != nil {
				t.Fatal(err)
			}
			live.reserve(t, "p-held", Charge{b, 500_000})
			if err := dead.l.Heartbeat(ctx); err != nil {
				t.Fatal(err)
			}
			dead.reserve(t, "p-reclaimed", Charge{b, 3_000_000})
			dead.reserve(t, "p-late", Charge{b, 3_000_000})
			clk.Add(DefaultLease + time.Second)
			if err := live.l.Heartbeat(ctx); err != nil {
				t.Fatal(err)
			}
			// p-held is live's (it heartbeats): only dead's two go.
			if n, err := live.l.Sweep(ctx); err != nil || n != 2 {
				t.Fatalf("swept %d (%v), want 2", n, err)
			}
			live.settle(t, okRecord("p-late", 1_000_000)) // settled_late
			const spent = 300_000 + 400_000 + 3_000_000 + 1_000_000
			live.want(t, b, spent, 500_000)

			if n := live.prune(t); n != 0 {
				t.Fatalf("pruned %d rows younger than %s", n, pruneFinalAfter)
			}
			clk.Add(pruneFinalAfter + time.Minute)
			if n := live.prune(t); n != 4 {
				t.Errorf("pruned %d, want the 4 final ones", n)
			}
			for _, id := range []string{"p-journal", "p-settled", "p-released", "p-late"} {
				live.wantRows(t, "after an hour", id, false)
			}
			live.wantRows(t, "after an hour", "p-held", true)
			live.wantRows(t, "after an hour", "p-reclaimed", true)
			live.want(t, b, spent, 500_000)

			// Replays of what was pruned: the store's batch again (a spool
			// replay), a released request's record, and the in-flight
			// journal's interrupted record through a new writer.
			live.settle(t, okRecord("p-settled", 400_000), okRecord("p-late", 1_000_000), okRecord("p-released", 7))
			live.want(t, b, spent, 500_000)
			replayJournal(t, live, dir, saved)
			live.want(t, b, spent, 500_000)

			// A month on: the reclaimed reservation goes too (its late
			// record then leaves it at its ceiling), the held one stays, and
			// the dead replica's row is gone.
			clk.Add(pruneLateAfter)
			if err := live.l.Heartbeat(ctx); err != nil {
				t.Fatal(err)
			}
			if n := live.prune(t); n != 1 {
				t.Errorf("pruned %d, want the reclaimed one", n)
			}
			live.wantRows(t, "after a month", "p-reclaimed", false)
			live.wantRows(t, "after a month", "p-held", true)
			live.settle(t, okRecord("p-reclaimed", 10))
			live.want(t, b, spent, 500_000)
			var replicas int
			if err := live.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM gov_replicas WHERE replica_id = 'prune-dead'`).Scan(&replicas); err != nil {
				t.Fatal(err)
			}
			if replicas != 0 {
				t.Errorf("the replica silent for a month is still listed")
			}
			// The held reservation still settles.
			live.settle(t, okRecord("p-held", 200_000))
			live.want(t, b, spent+200_000, 0)
		})
	}
}

// TestLedgerPruneAllotments: a released allotment, whose records still on
// their way charge spent through it, is kept for pruneLateAfter and still
// charges them; a held one stays.
func TestLedgerPruneAllotments(t *testing.T) {
	eachAllotEngine(t, func(t *testing.T, r *rig) {
		ctx := context.Background()
		b := costBudget("b-prune-al", 100_000_000, ModeHard, Window{Kind: WindowLifetime})
		c := Charge{b, 10_000}
		holds := r.take(t, c)
		rec := allotRecord("pa-1", 4_000, holds)
		r.l.FinishHolds(holds, rec)
		r.l.allot.wg.Wait()
		r.clk.Add(allotIdle + time.Second)
		r.l.tidyAllotments(ctx, false) // nothing held: released
		released := holds[0].Allotment
		if st := r.reservationState(t, released); st != stateReleased {
			t.Fatalf("allotment is %s, want released", st)
		}
		r.want(t, b, 0, 0)

		r.clk.Add(pruneFinalAfter + time.Minute)
		if n := r.prune(t); n != 0 {
			t.Errorf("pruned %d after an hour, want the released allotment kept", n)
		}
		// Its record arrives late: it still charges spent.
		r.settle(t, rec)
		r.want(t, b, 4_000, 0)

		r.clk.Add(pruneLateAfter)
		if n := r.prune(t); n != 1 {
			t.Errorf("pruned %d after a month, want the released allotment", n)
		}
		r.wantRows(t, "after a month", released, false)
		r.settle(t, rec) // a replay after the prune
		r.want(t, b, 4_000, 0)
	})
}

// TestLedgerPruneIsBatched: a backlog larger than one pass is pruned over
// several, every row once.
func TestLedgerPruneIsBatched(t *testing.T) {
	eachEngine(t, func(t *testing.T, r *rig) {
		ctx := context.Background()
		b := costBudget("b-prune-n", 1_000_000_000_000, ModeAlert, Window{Kind: WindowLifetime})
		total := prunePass*pruneBatch + 7
		ids := make([]string, 0, total)
		for i := range total {
			ids = append(ids, fmt.Sprintf("pn-%05d", i))
		}
		// Reserved and released in bulk: the rows, not the path, matter.
		ms := r.clk.Now().UnixMilli()
		for i := 0; i < len(ids); i += 500 {
			tx, err := r.db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range ids[i:min(i+500, len(ids))] {
				if _, err := tx.ExecContext(ctx, `INSERT INTO gov_reservations (request_id, replica_id, created_at, updated_at, state) VALUES ($1, 'x', $2, $2, 'released')`, id, ms); err != nil {
					t.Fatal(err)
				}
				if _, err := tx.ExecContext(ctx, `INSERT INTO gov_reservation_items (request_id, budget_id, window_start, metric, amount) VALUES ($1, $2, 0, 'cost', 1)`, id, b.ID); err != nil {
					t.Fatal(err)
				}
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		}
		r.clk.Add(pruneFinalAfter + time.Minute)
		if n := r.prune(t); n != prunePass*pruneBatch {
			t.Errorf("first pass pruned %d, want one pass of %d", n, prunePass*pruneBatch)
		}
		if n := r.prune(t); n != 7 {
			t.Errorf("second pass pruned %d, want the 7 left", n)
		}
		var left int
		if err := r.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM gov_reservation_items`).Scan(&left); err != nil {
			t.Fatal(err)
		}
		if left != 0 {
			t.Errorf("%d item rows left", left)
		}
	})
}
