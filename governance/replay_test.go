package governance

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/ledger"
)

// TestAllotmentKilledReplicaReplayed: a replica admits five requests from
// its allotment; two finish and are stored, three are in flight (one has
// shown partial usage) when it dies without giving anything back. Its
// successor on the same spool, under a new replica id, replays the three
// as interrupted records; once they are stored, spent is the five records'
// actuals and nothing stays reserved, whether the sweeper reclaimed the
// allotment first (charging it whole) or the restart came within the
// lease, and whether the dead replica noted its id on the spool or only
// its records name it (a spool from before the note). A second replay
// changes nothing, and a record that arrives after the correction charges
// spent directly.
func TestAllotmentKilledReplicaReplayed(t *testing.T) {
	for _, engine := range ledgerEngines() {
		for _, tc := range []struct {
			name                string
			reclaimFirst, noted bool
		}{
			{"AfterTheReclaim", true, true},
			{"WithinTheLease", false, true},
			{"AfterTheReclaimNamedByRecords", true, false},
			{"WithinTheLeaseNamedByRecords", false, false},
		} {
			t.Run(engine+"/"+tc.name, func(t *testing.T) { testKilledReplicaReplayed(t, engine, tc.reclaimFirst, tc.noted) })
		}
	}
}

func testKilledReplicaReplayed(t *testing.T, engine string, reclaimFirst, noted bool) {
	ctx := context.Background()
	clk, dsn, dir, dead, peer := killRigs(t, engine, "kill")
	b := costBudget("b-kill", 100_000_000, ModeHard, day)
	c := Charge{b, 10_000}
	w1 := writerOn(t, dead, dir)
	if noted {
		if err := dead.l.AfterReplay(w1.Replayed(), dir); err != nil {
			t.Fatal(err)
		}
	}
	rec := func(i int, holds []metering.Hold) *metering.Record {
		return &metering.Record{RequestID: fmt.Sprintf("kill-%d", i), Start: clk.Now(), Project: "acme", Stream: true,
			ModelRequest: "claude-x", Allotted: holds}
	}
	holds := make([][]metering.Hold, 6)
	for i := range holds {
		holds[i] = dead.take(t, c)
	}
	dead.l.allot.wg.Wait()
	// Stored before the kill: 0.002 and 0.003.
	for i, cost := range []int64{2_000, 3_000} {
		r := rec(i, holds[i])
		w1.Begin(r)
		f := allotRecord(r.RequestID, cost, holds[i])
		dead.l.FinishHolds(holds[i], f)
		w1.Record(f)
	}
	if err := w1.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// In flight: 2 and 4 without usage (charged their hold, 0.01 each),
	// 3 after 0.0005 of partial usage. 5 holds but was never forwarded:
	// its record comes only at the end, as a quarantined one imported.
	for i := 2; i <= 4; i++ {
		r := rec(i, holds[i])
		w1.Begin(r)
		if i == 3 {
			p := *r
			p.Status, p.Usage, p.CostMicroUSD = 200, &metering.Usage{InputUncached: 100, Output: 5}, new(int64(500))
			w1.Progress(&p)
		}
	}
	const actuals = 2_000 + 3_000 + 10_000 + 500 + 10_000
	amount := dead.allotted(t, b)
	dead.want(t, b, 5_000, amount)
	// The kill: the journal keeps the open requests; the ledger gives
	// nothing back.
	if err := w1.Close(ctx); err != nil {
		t.Fatal(err)
	}
	saved := savedJournal(t, dir)
	allot := holds[2][0].Allotment

	if reclaimFirst {
		if n := sweepAfterLease(t, peer); n != 1 {
			t.Fatalf("sweep reclaimed %d, want the allotment", n)
		}
		peer.want(t, b, 5_000+amount, 0)
	}

	succ := openRig(t, dsn, clk, "kill-succ", withAllotments)
	for round := range 2 {
		// The second round replays the same journal again, as a successor
		// killed before it deleted the files would.
		restoreJournal(t, dir, saved)
		w := replayOn(t, succ, dir)
		select {
		case <-w.Replayed():
		default:
			t.Fatalf("round %d: the writer has replayed the journal but says it has not", round)
		}
		if round == 0 && reclaimFirst {
			// The late records wait for the whole replay: nothing moves yet.
			succ.want(t, b, 5_000+amount, 0)
		}
		if err := succ.l.tick(ctx); err != nil {
			t.Fatal(err)
		}
		succ.want(t, b, actuals, 0)
		want := stateReleased
		if reclaimFirst {
			want = stateSettledLate
		}
		if st := succ.reservationState(t, allot); st != want {
			t.Errorf("round %d: allotment is %s, want %s", round, st, want)
		}
		if err := w.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if !reclaimFirst {
		// Past the lease, the sweeper finds nothing of the dead replica's
		// left to reclaim.
		if n := sweepAfterLease(t, peer); n != 0 {
			t.Errorf("sweep reclaimed %d after the successor settled, want 0", n)
		}
		peer.want(t, b, actuals, 0)
	}
	// A record of the allotment after the correction still charges, once.
	late := allotRecord("kill-5", 4_000, holds[5])
	succ.settle(t, late)
	succ.settle(t, late)
	succ.want(t, b, actuals+4_000, 0)
}

// TestAllotmentReclaimedNotReplayed: a reclaimed allotment's records
// stored by a process that replays nothing (no AfterReplay, as a peer) or
// whose replay is not done charge nothing beyond the reclaim: without the
// whole replay, the correction would go under what was spent.
func TestAllotmentReclaimedNotReplayed(t *testing.T) {
	for _, engine := range ledgerEngines() {
		t.Run(engine, func(t *testing.T) {
			ctx := context.Background()
			_, _, dir, dead, succ := killRigs(t, engine, "nr")
			b := costBudget("b-nr", 100_000_000, ModeHard, day)
			holds := dead.take(t, Charge{b, 10_000})
			dead.l.allot.wg.Wait()
			amount := dead.allotted(t, b)
			if n := sweepAfterLease(t, succ); n != 1 {
				t.Fatalf("sweep reclaimed %d, want the allotment", n)
			}
			succ.settle(t, allotRecord("nr-1", 2_000, holds))
			if err := succ.l.tick(ctx); err != nil {
				t.Fatal(err)
			}
			succ.want(t, b, amount, 0)
			pending := make(chan struct{})
			if err := succ.l.AfterReplay(pending, dir); err != nil {
				t.Fatal(err)
			}
			if err := succ.l.tick(ctx); err != nil {
				t.Fatal(err)
			}
			succ.want(t, b, amount, 0)
			close(pending)
			if err := succ.l.tick(ctx); err != nil {
				t.Fatal(err)
			}
			succ.want(t, b, 2_000, 0)
		})
	}
}

// TestAllotmentUnusedAtTheKill: a replica dies with an allotment nobody
// holds (its one request was not forwarded) and one request in flight that
// reserved directly, so no record names the allotment: the replica's id,
// noted on the spool, is what has its successor give the whole allotment
// back after the reclaim charged it. Spent is then the one record's.
func TestAllotmentUnusedAtTheKill(t *testing.T) {
	for _, engine := range ledgerEngines() {
		t.Run(engine, func(t *testing.T) {
			ctx := context.Background()
			clk, dsn, dir, dead, peer := killRigs(t, engine, "unused")
			w1 := writerOn(t, dead, dir)
			if err := dead.l.AfterReplay(w1.Replayed(), dir); err != nil {
				t.Fatal(err)
			}
			b := costBudget("b-unused", 100_000_000, ModeHard, day)
			dead.l.Unhold(dead.take(t, Charge{b, 10_000}))
			dead.l.allot.wg.Wait()
			amount := dead.allotted(t, b)
			dead.reserve(t, "unused-direct", Charge{b, 10_000})
			r := &metering.Record{RequestID: "unused-direct", Start: clk.Now(), Project: "acme", Stream: true,
				ModelRequest: "claude-x", Reserved: true, ReservedMicroUSD: 10_000}
			w1.Begin(r)
			p := *r
			p.Status, p.Usage, p.CostMicroUSD = 200, &metering.Usage{InputUncached: 100, Output: 5}, new(int64(700))
			w1.Progress(&p)
			if err := w1.Close(ctx); err != nil {
				t.Fatal(err)
			}
			if n := sweepAfterLease(t, peer); n != 2 {
				t.Fatalf("sweep reclaimed %d, want the allotment and the reservation", n)
			}
			peer.want(t, b, amount+10_000, 0)

			succ := openRig(t, dsn, clk, "unused-succ", withAllotments)
			replayOn(t, succ, dir)
			if err := succ.l.tick(ctx); err != nil {
				t.Fatal(err)
			}
			succ.want(t, b, 700, 0)
			// The spool now names the successor alone: its successor has
			// nobody else's allotments to settle.
			if got, err := os.ReadFile(filepath.Join(dir, replicasFile)); err != nil || string(got) != "unused-succ\n" {
				t.Errorf("%s holds %q (%v), want the successor's id alone", replicasFile, got, err)
			}
		})
	}
}

// killRigs opens, on a fresh database of engine, a replica that will die
// (allotments on, heartbeat done) and a live peer, named name-dead and
// name-peer, and the spool directory the dead one writes to.
func killRigs(t *testing.T, engine, name string) (clk *clock, dsn, dir string, dead, peer *rig) {
	t.Helper()
	clk = newClock(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))
	dsn = ledgerDSN(t, engine)
	dead = openRig(t, dsn, clk, name+"-dead", withAllotments)
	peer = openRig(t, dsn, clk, name+"-peer", withAllotments)
	if err := dead.l.Heartbeat(context.Background()); err != nil {
		t.Fatal(err)
	}
	return clk, dsn, t.TempDir(), dead, peer
}

// sweepAfterLease moves past the lease and has peer heartbeat and sweep;
// it returns how many reservations the sweep reclaimed.
func sweepAfterLease(t *testing.T, peer *rig) int {
	t.Helper()
	ctx := context.Background()
	peer.clk.Add(31 * time.Second)
	if err := peer.l.Heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	n, err := peer.l.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// replayOn starts r's usage writer on dir, as a restarted process would,
// tells r's ledger to wait for its replay, and waits for it.
func replayOn(t *testing.T, r *rig, dir string) *ledger.Writer {
	t.Helper()
	w := writerOn(t, r, dir)
	if err := r.l.AfterReplay(w.Replayed(), dir); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	return w
}

// restoreJournal puts the saved in-flight journal files back in dir.
func restoreJournal(t *testing.T, dir string, saved map[string][]byte) {
	t.Helper()
	for f, data := range saved {
		if err := os.WriteFile(f, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
