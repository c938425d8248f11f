package governance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/ledger"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock(t time.Time) *clock { return &clock{t: t} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func (c *clock) Add(d time.Duration) { c.Set(c.Now().Add(d)) }

// ledgerEngines are the engines the ledger tests run on: SQLite always,
// PostgreSQL when TOLLGATE_TEST_POSTGRES is set.
func ledgerEngines() []string {
	if os.Getenv("TOLLGATE_TEST_POSTGRES") != "" {
		return []string{store.SQLite, store.Postgres}
	}
	return []string{store.SQLite}
}

// ledgerDSN is a fresh database of engine for one test.
func ledgerDSN(t testing.TB, engine string) string {
	t.Helper()
	if engine == store.Postgres {
		return testkit.PostgresSchema(t, os.Getenv("TOLLGATE_TEST_POSTGRES"), "gov_ledger_")
	}
	return filepath.Join(t.TempDir(), "tollgate.db")
}

// rig is one replica's ledger and the usage store that settles it.
type rig struct {
	db    *store.DB
	l     *Ledger
	usage *ledger.Store
	clk   *clock
}

func openRig(t testing.TB, dsn string, clk *clock, replica string, opts ...func(*LedgerConfig)) *rig {
	t.Helper()
	ctx := context.Background()
	db, err := store.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	cfg := LedgerConfig{ReplicaID: replica, Now: clk.Now, Lease: 30 * time.Second, Heartbeat: 5 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	l, err := OpenLedger(ctx, db, cfg)
	if err != nil {
		t.Fatal(err)
	}
	us, err := ledger.OpenStore(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	us.SetSettler(l)
	return &rig{db: db, l: l, usage: us, clk: clk}
}

// eachEngine runs f once per engine with a fresh database and one replica.
func eachEngine(t *testing.T, f func(t *testing.T, r *rig)) {
	for _, engine := range ledgerEngines() {
		t.Run(engine, func(t *testing.T) {
			clk := newClock(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))
			f(t, openRig(t, ledgerDSN(t, engine), clk, "replica-a"))
		})
	}
}

func costBudget(id string, limit int64, mode Mode, w Window) Budget {
	return Budget{ID: id, Selector: Selector{ScopeType: ScopeProject, ScopeID: "acme"}, Metric: MetricCost, Limit: limit, Window: w, Mode: mode}
}

var day = Window{Kind: WindowDay}

// reserve reserves and fails the test on an error that is not a refusal.
func (r *rig) reserve(t *testing.T, id string, charges ...Charge) *Refusal {
	t.Helper()
	ref, err := r.l.Reserve(context.Background(), id, charges)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// settle stores the usage record of id, which cost cost (nil: unknown), as
// the writer would.
func (r *rig) settle(t *testing.T, recs ...*metering.Record) {
	t.Helper()
	if _, err := r.usage.InsertBatch(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
}

func okRecord(id string, cost int64) *metering.Record {
	return &metering.Record{RequestID: id, Start: time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC), Outcome: metering.OutcomeOK,
		Source: metering.SourceUpstream, Status: 200, Usage: &metering.Usage{InputUncached: 10, Output: 5},
		CostMicroUSD: new(cost), Reserved: true}
}

// state is a budget's spent and reserved now.
func (r *rig) state(t *testing.T, b Budget) (spent, reserved int64) {
	t.Helper()
	hs, err := r.l.Headroom(context.Background(), []Budget{b})
	if err != nil {
		t.Fatal(err)
	}
	return hs[0].Spent, hs[0].Reserved
}

func (r *rig) want(t *testing.T, b Budget, spent, reserved int64) {
	t.Helper()
	if s, res := r.state(t, b); s != spent || res != reserved {
		t.Errorf("budget %s: spent %d reserved %d, want %d and %d", b.ID, s, res, spent, reserved)
	}
}

func (r *rig) reservationState(t *testing.T, id string) string {
	t.Helper()
	var st string
	if err := r.db.QueryRowContext(context.Background(), `SELECT state FROM gov_reservations WHERE request_id = $1`, id).Scan(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestLedgerAlgebra: reserve, settle, release, reclaim, late settle and
// their replays move spent and reserved exactly as the settlement rule
// says, on each engine, settling through the usage store's batch.
func TestLedgerAlgebra(t *testing.T) {
	eachEngine(t, func(t *testing.T, r *rig) {
		b := costBudget("b-alg", 10_000_000, ModeHard, day)
		tb := Budget{ID: "b-tok", Selector: Selector{ScopeType: ScopeProject, ScopeID: "acme"}, Metric: MetricTokens, Limit: 1000, Window: day, Mode: ModeSoft}

		// Reserve then settle: spent is the actual, reserved back to 0.
		if ref := r.reserve(t, "q1", Charge{b, 3_000_000}, Charge{tb, 400}); ref != nil {
			t.Fatal(ref)
		}
		r.want(t, b, 0, 3_000_000)
		r.want(t, tb, 0, 400)
		r.settle(t, okRecord("q1", 20_000))
		r.want(t, b, 20_000, 0)
		r.want(t, tb, 15, 0) // 10 input + 5 output
		if st := r.reservationState(t, "q1"); st != stateSettled {
			t.Errorf("q1 is %s", st)
		}

		// Idempotent: the same record again (a replay) charges nothing.
		r.settle(t, okRecord("q1", 20_000))
		r.want(t, b, 20_000, 0)

		// Release: reserved back, nothing spent; twice is a no-op, and so is
		// a request that reserved nothing.
		r.reserve(t, "q2", Charge{b, 1_000_000})
		for range 2 {
			if err := r.l.Release(context.Background(), "q2"); err != nil {
				t.Fatal(err)
			}
		}
		if err := r.l.Release(context.Background(), "never"); err != nil {
			t.Fatal(err)
		}
		r.want(t, b, 20_000, 0)
		if st := r.reservationState(t, "q2"); st != stateReleased {
			t.Errorf("q2 is %s", st)
		}
		// A released reservation's record settles nothing.
		r.settle(t, okRecord("q2", 5))
		r.want(t, b, 20_000, 0)

		// Unknown cost (unpriced, cut stream): charged the reservation.
		r.reserve(t, "q3", Charge{b, 2_000_000}, Charge{tb, 300})
		cut := okRecord("q3", 0)
		cut.Outcome, cut.Source, cut.Usage, cut.CostMicroUSD = metering.OutcomeTruncated, metering.SourceMissing, nil, nil
		r.settle(t, cut)
		r.want(t, b, 2_020_000, 0)
		r.want(t, tb, 315, 0)

		// Nothing billed: rejected, unreachable, an error status without
		// usage settle at 0.
		for i, o := range []string{metering.OutcomeRejected, metering.OutcomeUnreachable, metering.OutcomeUpstreamError} {
			id := fmt.Sprintf("q4-%d", i)
			r.reserve(t, id, Charge{b, 1_000_000}, Charge{tb, 100})
			rec := okRecord(id, 0)
			rec.Outcome, rec.Source, rec.Usage, rec.CostMicroUSD, rec.Status = o, metering.SourceNone, nil, nil, 502
			r.settle(t, rec)
		}
		r.want(t, b, 2_020_000, 0)
		r.want(t, tb, 315, 0)
		// ...but a stream that failed after a 200 may have been billed.
		r.reserve(t, "q5", Charge{b, 1_000_000})
		mid := okRecord("q5", 0)
		mid.Outcome, mid.Source, mid.Usage, mid.CostMicroUSD = metering.OutcomeUpstreamError, metering.SourceMissing, nil, nil
		r.settle(t, mid)
		r.want(t, b, 3_020_000, 0)

		// Hard: 6.98 left, a 7.00 reservation does not fit and is not cut
		// down to the headroom (N8); 6.98 does.
		ref := r.reserve(t, "q6", Charge{b, 6_980_001})
		if ref == nil || ref.Kind != RefuseBudget {
			t.Fatalf("over-headroom reservation admitted: %v", ref)
		}
		r.want(t, b, 3_020_000, 0)
		if ref := r.reserve(t, "q7", Charge{b, 6_980_000}); ref != nil {
			t.Fatal(ref)
		}
		r.want(t, b, 3_020_000, 6_980_000)
		if err := r.l.Release(context.Background(), "q7"); err != nil {
			t.Fatal(err)
		}
	})
}

// TestLedgerModes: hard needs the whole amount to fit, soft only that
// spent + reserved is under the limit, alert never refuses; and one budget
// refusing refuses the whole reservation (all or nothing).
func TestLedgerModes(t *testing.T) {
	eachEngine(t, func(t *testing.T, r *rig) {
		hard := costBudget("b-hard", 1_000, ModeHard, day)
		soft := costBudget("b-soft", 1_000, ModeSoft, day)
		alert := costBudget("b-alert", 1_000, ModeAlert, day)
		if ref := r.reserve(t, "h1", Charge{hard, 1_001}); ref == nil {
			t.Error("hard admitted more than its limit")
		}
		if ref := r.reserve(t, "s1", Charge{soft, 5_000}); ref != nil {
			t.Errorf("soft refused its first request: %v", ref)
		}
		if ref := r.reserve(t, "s2", Charge{soft, 1}); ref == nil {
			t.Error("soft admitted past its limit")
		}
		for i := range 3 {
			if ref := r.reserve(t, fmt.Sprint("a", i), Charge{alert, 5_000}); ref != nil {
				t.Errorf("alert refused: %v", ref)
			}
		}
		r.want(t, alert, 0, 15_000)

		// All or nothing: soft is full, so hard is not charged either.
		ref := r.reserve(t, "m1", Charge{hard, 100}, Charge{soft, 100}, Charge{alert, 100})
		if ref == nil {
			t.Fatal("a reservation one budget refuses was admitted")
		}
		if !strings.Contains(ref.Message, "project acme") || ref.Policy != "project:acme/budget" || ref.Unit != "micro_usd" ||
			ref.Limit != 1_000 || ref.Remaining != 0 {
			t.Errorf("refusal %+v", ref)
		}
		wantReset := time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)
		if !ref.ResetAt.Equal(wantReset) || ref.RetryAfter != 12*time.Hour {
			t.Errorf("reset %s retry after %s, want %s and 12h", ref.ResetAt, ref.RetryAfter, wantReset)
		}
		if !strings.Contains(ref.Message, "$0.00 spent of $0.001 per day") || !strings.HasPrefix(ref.Message, "tollgate: ") {
			t.Errorf("message %q", ref.Message)
		}
		r.want(t, hard, 0, 0)
		r.want(t, alert, 0, 15_000)
		var items int
		r.db.QueryRowContext(context.Background(), `SELECT COUNT(*) FROM gov_reservation_items WHERE request_id = 'm1'`).Scan(&items)
		if items != 0 {
			t.Errorf("a refused reservation left %d items", items)
		}
	})
}

// TestLedgerN1ConcurrentReservations: 64 goroutines each reserving c
// against B < 64c: hard admits at most ⌊B/c⌋; soft admits while under B,
// so after settling every admitted one at its ceiling spent ≤ B + c.
func TestLedgerN1ConcurrentReservations(t *testing.T) {
	const c, limit = 1_000_000, 10_500_000 // ⌊B/c⌋ = 10
	for _, mode := range []Mode{ModeHard, ModeSoft} {
		t.Run(string(mode), func(t *testing.T) {
			eachEngine(t, func(t *testing.T, r *rig) {
				b := costBudget("b-n1-"+string(mode), limit, mode, day)
				admitted := race(t, 64, func(i int) *rig { return r }, b, c)
				spent := settleAll(t, r, admitted, c)
				if mode == ModeHard && len(admitted) != limit/c {
					t.Errorf("hard admitted %d, want %d", len(admitted), limit/c)
				}
				if mode == ModeSoft && (spent > limit+c || len(admitted) != 11) {
					t.Errorf("soft: %d admitted, spent %d > B + c = %d", len(admitted), spent, limit+c)
				}
			})
		})
	}
}

// race has n goroutines reserve amount against b at once, goroutine i on
// rig(i), and returns the ids admitted.
func race(t *testing.T, n int, rigOf func(int) *rig, b Budget, amount int64) []string {
	t.Helper()
	var mu sync.Mutex
	var admitted []string
	var wg sync.WaitGroup
	start := make(chan struct{})
	var errs atomic.Int64
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			id := fmt.Sprintf("%s-%d", b.ID, i)
			ref, err := rigOf(i).l.Reserve(context.Background(), id, []Charge{{b, amount}})
			if err != nil {
				t.Error(err)
				errs.Add(1)
				return
			}
			if ref == nil {
				mu.Lock()
				admitted = append(admitted, id)
				mu.Unlock()
			}
		}()
	}
	close(start)
	wg.Wait()
	return admitted
}

// settleAll settles ids at cost each and returns the budget's spend.
func settleAll(t *testing.T, r *rig, ids []string, cost int64) int64 {
	t.Helper()
	var recs []*metering.Record
	for _, id := range ids {
		recs = append(recs, okRecord(id, cost))
	}
	if len(recs) > 0 {
		r.settle(t, recs...)
	}
	var spent, reserved int64
	if err := r.db.QueryRowContext(context.Background(), `SELECT COALESCE(SUM(spent), 0), COALESCE(SUM(reserved), 0) FROM gov_counters`).Scan(&spent, &reserved); err != nil {
		t.Fatal(err)
	}
	if reserved != 0 {
		t.Errorf("reserved %d after settling everything", reserved)
	}
	return spent
}

// TestLedgerN12FirstContact: 8 simultaneous first requests of a new
// window against a limit of one ceiling admit exactly one.
func TestLedgerN12FirstContact(t *testing.T) {
	for _, mode := range []Mode{ModeHard, ModeSoft} {
		t.Run(string(mode), func(t *testing.T) {
			eachEngine(t, func(t *testing.T, r *rig) {
				b := costBudget("b-n12-"+string(mode), 2_810_000, mode, day)
				if got := race(t, 8, func(int) *rig { return r }, b, 2_810_000); len(got) != 1 {
					t.Errorf("%d of 8 first requests admitted, want 1", len(got))
				}
			})
		})
	}
}

// TestLedgerN13EditKeepsSpent: the counter is the budget id's, so a raised,
// lowered or re-patterned limit keeps what was spent.
func TestLedgerN13EditKeepsSpent(t *testing.T) {
	eachEngine(t, func(t *testing.T, r *rig) {
		b := costBudget("b-n13", 1_000_000, ModeHard, day)
		r.reserve(t, "e1", Charge{b, 600_000})
		r.settle(t, okRecord("e1", 600_000))
		b.Limit, b.Model = 700_000, "claude-*"
		r.want(t, b, 600_000, 0)
		if ref := r.reserve(t, "e2", Charge{b, 200_000}); ref == nil {
			t.Error("the lowered limit did not count the spend before the edit")
		}
		b.Limit = 2_000_000
		if ref := r.reserve(t, "e3", Charge{b, 1_400_000}); ref != nil {
			t.Errorf("raised limit: %v", ref)
		}
	})
}

// TestLedgerN14WindowEdge: admitted at 23:59:59.9 and settled after
// midnight, a request is charged once, to day D; day D+1 starts at 0.
func TestLedgerN14WindowEdge(t *testing.T) {
	eachEngine(t, func(t *testing.T, r *rig) {
		b := costBudget("b-n14", 5_000_000, ModeSoft, day)
		r.clk.Set(time.Date(2026, 12, 3, 23, 59, 59, 900_000_000, time.UTC))
		r.reserve(t, "late", Charge{b, 1_000_000})
		r.clk.Set(time.Date(2026, 12, 4, 0, 0, 1, 0, time.UTC))
		r.want(t, b, 0, 0) // day D+1
		r.settle(t, okRecord("late", 300_000))
		r.want(t, b, 0, 0)
		r.clk.Set(time.Date(2026, 12, 3, 23, 0, 0, 0, time.UTC))
		r.want(t, b, 300_000, 0) // charged to day D
	})
}

// TestLedgerRollingWindow: spend counts while its bucket is in the window
// and leaves with it.
func TestLedgerRollingWindow(t *testing.T) {
	eachEngine(t, func(t *testing.T, r *rig) {
		w, err := ParseWindow("rolling:5h")
		if err != nil {
			t.Fatal(err)
		}
		b := costBudget("b-roll", 1_000_000, ModeHard, w)
		r.reserve(t, "r1", Charge{b, 600_000})
		r.settle(t, okRecord("r1", 600_000))
		r.clk.Add(2 * time.Hour)
		r.want(t, b, 600_000, 0)
		// The earlier bucket still counts: 600k + 500k > 1M.
		ref := r.reserve(t, "r2", Charge{b, 500_000})
		if ref == nil {
			t.Fatal("a rolling window forgot spend two hours old")
		}
		if ref.ResetAt.IsZero() || ref.RetryAfter <= 0 || ref.RetryAfter > 750*time.Second {
			t.Errorf("rolling refusal resets at %s (retry after %s), want within the next 12.5-minute bucket", ref.ResetAt, ref.RetryAfter)
		}
		r.reserve(t, "r3", Charge{b, 300_000})
		r.clk.Add(3*time.Hour + 13*time.Minute)
		// r1's bucket left the window; r3's (held) did not.
		r.want(t, b, 0, 300_000)
		if ref := r.reserve(t, "r4", Charge{b, 700_000}); ref != nil {
			t.Errorf("expired spend still counted: %v", ref)
		}
		r.settle(t, okRecord("r3", 100_000), okRecord("r4", 100_000))
		r.want(t, b, 200_000, 0)
	})
}

// TestLedgerSweepReclaims: a replica silent for the lease loses its held
// reservations at their ceiling; its late record corrects the charge
// (settled_late), once; a live replica's reservations are left alone.
func TestLedgerSweepReclaims(t *testing.T) {
	for _, engine := range ledgerEngines() {
		t.Run(engine, func(t *testing.T) {
			clk := newClock(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))
			dsn := ledgerDSN(t, engine)
			dead, live := openRig(t, dsn, clk, "dead"), openRig(t, dsn, clk, "live")
			ctx := context.Background()
			b := costBudget("b-sweep", 100_000_000, ModeSoft, day)
			if err := dead.l.Heartbeat(ctx); err != nil {
				t.Fatal(err)
			}
			dead.reserve(t, "d1", Charge{b, 2_000_000})
			dead.reserve(t, "d2", Charge{b, 3_000_000})
			live.reserve(t, "l1", Charge{b, 1_000_000}) // never heartbeat: reclaimable only by age
			clk.Add(20 * time.Second)
			if err := live.l.Heartbeat(ctx); err != nil {
				t.Fatal(err)
			}
			if n, err := live.l.Sweep(ctx); err != nil || n != 0 {
				t.Fatalf("swept %d (%v) within the lease", n, err)
			}
			if live.l.Replicas() != 2 {
				t.Errorf("%d live replicas, want 2", live.l.Replicas())
			}
			clk.Add(15 * time.Second) // dead silent 35 s, live 15 s
			if err := live.l.Heartbeat(ctx); err != nil {
				t.Fatal(err)
			}
			if live.l.Replicas() != 1 {
				t.Errorf("%d live replicas, want 1", live.l.Replicas())
			}
			n, err := live.l.Sweep(ctx)
			if err != nil || n != 2 {
				t.Fatalf("swept %d (%v), want the dead replica's 2", n, err)
			}
			dead.want(t, b, 5_000_000, 1_000_000)
			if st := dead.reservationState(t, "d1"); st != stateReclaimed {
				t.Errorf("d1 is %s", st)
			}
			// The late record: d1 cost 0.5 of its 2.0 ceiling.
			for range 2 {
				live.settle(t, okRecord("d1", 500_000))
			}
			live.want(t, b, 3_500_000, 1_000_000)
			if st := dead.reservationState(t, "d1"); st != stateSettledLate {
				t.Errorf("d1 is %s", st)
			}
			live.settle(t, okRecord("l1", 10))
			live.want(t, b, 3_500_010, 0)
			// d2 was never forwarded after all: released, its ceiling comes
			// back off, once.
			for range 2 {
				if err := dead.l.Release(ctx, "d2"); err != nil {
					t.Fatal(err)
				}
			}
			live.want(t, b, 500_010, 0)
			if st := dead.reservationState(t, "d2"); st != stateSettledLate {
				t.Errorf("d2 is %s", st)
			}
		})
	}
}

// TestLedgerStartHeartbeats: Start registers the replica at once and keeps
// it alive.
func TestLedgerStartHeartbeats(t *testing.T) {
	eachEngine(t, func(t *testing.T, r *rig) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		if err := r.l.Start(ctx); err != nil {
			t.Fatal(err)
		}
		var seen int64
		if err := r.db.QueryRowContext(ctx, `SELECT last_seen FROM gov_replicas WHERE replica_id = $1`, r.l.ReplicaID()).Scan(&seen); err != nil {
			t.Fatal(err)
		}
		if seen != r.clk.Now().UnixMilli() {
			t.Errorf("last_seen %d, want %d", seen, r.clk.Now().UnixMilli())
		}
		// And keeps beating, every Heartbeat.
		fast, err := OpenLedger(ctx, r.db, LedgerConfig{ReplicaID: "fast", Now: r.clk.Now, Heartbeat: 10 * time.Millisecond, Lease: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if err := fast.Start(ctx); err != nil {
			t.Fatal(err)
		}
		r.clk.Add(time.Minute)
		testkit.Eventually(t, 5*time.Second, "a later heartbeat", func() bool {
			var seen int64
			r.db.QueryRowContext(ctx, `SELECT last_seen FROM gov_replicas WHERE replica_id = 'fast'`).Scan(&seen)
			return seen == r.clk.Now().UnixMilli()
		})
	})
}

// TestLedgerN2N3TwoReplicas: two ledgers with their own pools on one
// PostgreSQL share the budget exactly (N2), and a settle on A frees
// headroom B uses at once (N3).
func TestLedgerN2N3TwoReplicas(t *testing.T) {
	if os.Getenv("TOLLGATE_TEST_POSTGRES") == "" {
		t.Skip("TOLLGATE_TEST_POSTGRES not set")
	}
	clk := newClock(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))
	dsn := ledgerDSN(t, store.Postgres)
	a, b := openRig(t, dsn, clk, "a"), openRig(t, dsn, clk, "b")
	const c, limit = 1_000_000, 10_500_000
	hard := costBudget("b-n2", limit, ModeHard, day)
	admitted := race(t, 64, func(i int) *rig { return []*rig{a, b}[i%2] }, hard, c)
	if len(admitted) != limit/c {
		t.Errorf("two replicas admitted %d, want %d", len(admitted), limit/c)
	}
	// N3: the budget is full; A settles one at 0.2 and B fits 1.0 at once.
	if ref := b.reserve(t, "n3-before", Charge{hard, c}); ref == nil {
		t.Fatal("admitted past a full budget")
	}
	a.settle(t, okRecord(admitted[0], 200_000))
	if ref := b.reserve(t, "n3-after", Charge{hard, c}); ref != nil {
		t.Errorf("B did not see A's settlement: %v", ref)
	}
}

// TestLedgerSettleThroughSpool: a replayed record whose request id is
// already stored settles nothing twice, even in one batch.
func TestLedgerSettleDuplicatesInABatch(t *testing.T) {
	eachEngine(t, func(t *testing.T, r *rig) {
		b := costBudget("b-dup", 10_000_000, ModeSoft, day)
		r.reserve(t, "x1", Charge{b, 1_000_000})
		r.settle(t, okRecord("x1", 100), okRecord("x1", 100))
		r.want(t, b, 100, 0)
		rec := okRecord("x1", 100)
		r.settle(t, rec)
		r.want(t, b, 100, 0)
		// A record without a reservation touches no counter.
		plain := okRecord("x2", 999)
		plain.Reserved = false
		r.settle(t, plain)
		r.want(t, b, 100, 0)
	})
}

func TestActualsRule(t *testing.T) {
	u := &metering.Usage{InputUncached: 3, CacheRead: 4, Output: 5, Reasoning: 2}
	for _, tc := range []struct {
		name            string
		rec             metering.Record
		cost, tokens    int64
		costNil, tokNil bool
	}{
		{"priced", metering.Record{Outcome: metering.OutcomeOK, Usage: u, CostMicroUSD: new(int64(77)), Status: 200}, 77, 12, false, false},
		{"unpriced", metering.Record{Outcome: metering.OutcomeOK, Usage: u, Status: 200}, 0, 12, true, false},
		{"rejected", metering.Record{Outcome: metering.OutcomeRejected}, 0, 0, false, false},
		{"unreachable", metering.Record{Outcome: metering.OutcomeUnreachable}, 0, 0, false, false},
		{"5xx", metering.Record{Outcome: metering.OutcomeUpstreamError, Status: 503}, 0, 0, false, false},
		{"failed mid-stream", metering.Record{Outcome: metering.OutcomeUpstreamError, Status: 200}, 0, 0, true, true},
		{"client gone", metering.Record{Outcome: metering.OutcomeClientGone, Status: 200}, 0, 0, true, true},
		{"interrupted", metering.Record{Outcome: metering.OutcomeInterrupted, Status: 200}, 0, 0, true, true},
	} {
		c, tk := Actuals(&tc.rec)
		if (c == nil) != tc.costNil || (c != nil && *c != tc.cost) || (tk == nil) != tc.tokNil || (tk != nil && *tk != tc.tokens) {
			t.Errorf("%s: cost %v tokens %v", tc.name, c, tk)
		}
	}
}

// TestLedgerReserveErrors: a closed database is an error, not a refusal
// and not an admission.
func TestLedgerReserveErrors(t *testing.T) {
	eachEngine(t, func(t *testing.T, r *rig) {
		gone, cancel := context.WithCancel(context.Background())
		cancel()
		if ref, err := r.l.Reserve(gone, "z0", []Charge{{costBudget("b", 1, ModeSoft, day), 1}}); !errors.Is(err, context.Canceled) || ref != nil {
			t.Errorf("cancelled request: refusal %v error %v", ref, err)
		}
		r.db.Close()
		ref, err := r.l.Reserve(context.Background(), "z", []Charge{{costBudget("b", 1, ModeSoft, day), 1}})
		if err == nil || ref != nil {
			t.Errorf("closed ledger: refusal %v error %v", ref, err)
		}
		var refusal *Refusal
		if errors.As(err, &refusal) {
			t.Error("an unreachable ledger returned a refusal")
		}
	})
}

// BenchmarkLedgerReserveSettle: one request's reserve against a project
// and a platform budget, and its settlement in a batch of one.
func BenchmarkLedgerReserveSettle(b *testing.B) {
	for _, engine := range ledgerEngines() {
		b.Run(engine, func(b *testing.B) {
			r := openRig(b, ledgerDSN(b, engine), newClock(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)), "bench")
			l, us, ctx := r.l, r.usage, context.Background()
			p := costBudget("bench-p", 1<<50, ModeSoft, day)
			plat := Budget{ID: "bench-platform", Selector: Selector{ScopeType: ScopePlatform}, Metric: MetricCost, Limit: 1 << 50, Window: Window{Kind: WindowMonth}, Mode: ModeHard}
			var reserving time.Duration
			b.ResetTimer()
			for i := range b.N {
				id := fmt.Sprint("bench-", i)
				t0 := time.Now()
				if ref, err := l.Reserve(ctx, id, []Charge{{p, 2_810_000}, {plat, 2_810_000}}); err != nil || ref != nil {
					b.Fatal(ref, err)
				}
				reserving += time.Since(t0)
				if _, err := us.InsertBatch(ctx, []*metering.Record{okRecord(id, 20_000)}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(reserving.Microseconds())/float64(b.N), "reserve-µs/op")
		})
	}
}

// TestLedgerConcurrentMix: replicas reserving against shared, private and
// rolling budgets at once, settling in batches, releasing, and sweeping
// all the while, never deadlock or fail, and end with nothing reserved
// and exactly what was settled spent.
func TestLedgerConcurrentMix(t *testing.T) {
	for _, engine := range ledgerEngines() {
		t.Run(engine, func(t *testing.T) {
			clk := newClock(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))
			dsn := ledgerDSN(t, engine)
			rigs := []*rig{openRig(t, dsn, clk, "mix-a"), openRig(t, dsn, clk, "mix-b")}
			roll, _ := ParseWindow("rolling:1h")
			shared := costBudget("mix-shared", 1<<50, ModeHard, day)
			rolling := costBudget("mix-rolling", 1<<50, ModeSoft, roll)
			// A dead replica's reservations, reclaimed while the others run.
			dead := openRig(t, dsn, clk, "mix-dead")
			for i := range 20 {
				dead.reserve(t, fmt.Sprint("mix-dead-", i), Charge{shared, 500}, Charge{rolling, 500})
			}
			clk.Add(time.Minute)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			sweeping := make(chan struct{})
			var reclaimed atomic.Int64
			busy := make(chan struct{})
			var busyOnce sync.Once
			go func() {
				defer close(sweeping)
				select { // reclaim while the live replicas are at work
				case <-busy:
				case <-ctx.Done():
				}
				for ctx.Err() == nil {
					for _, r := range rigs {
						n, err := r.l.Sweep(ctx)
						if err != nil && ctx.Err() == nil {
							t.Error(err)
						}
						reclaimed.Add(int64(n))
					}
					time.Sleep(time.Millisecond)
				}
			}()
			var settled atomic.Int64
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rigs[g%2]
					own := costBudget(fmt.Sprint("mix-own-", g), 1<<50, ModeSoft, day)
					var batch []*metering.Record
					for i := range 25 {
						id := fmt.Sprintf("mix-%d-%d", g, i)
						ref, err := r.l.Reserve(ctx, id, []Charge{{own, 1000}, {rolling, 1000}, {shared, 1000}})
						if err != nil || ref != nil {
							t.Error(ref, err)
							return
						}
						if i == 2 {
							busyOnce.Do(func() { close(busy) })
						}
						if i%5 == 4 {
							if err := r.l.Release(ctx, id); err != nil {
								t.Error(err)
							}
							continue
						}
						batch = append(batch, okRecord(id, int64(i)))
						settled.Add(int64(i))
						if len(batch) == 4 {
							if _, err := r.usage.InsertBatch(ctx, batch); err != nil {
								t.Error(err)
							}
							batch = nil
						}
					}
					if len(batch) > 0 {
						if _, err := r.usage.InsertBatch(ctx, batch); err != nil {
							t.Error(err)
						}
					}
				}()
			}
			wg.Wait()
			testkit.Eventually(t, 5*time.Second, "the dead replica's reservations reclaimed", func() bool { return reclaimed.Load() == 20 })
			cancel()
			<-sweeping
			for _, b := range []Budget{shared, rolling} {
				rigs[0].want(t, b, settled.Load()+20*500, 0)
			}
		})
	}
}

// TestLedgerCounterRowGone: a counter row this process remembers as
// existing but that is gone (a database restored from a backup) is
// inserted again rather than refusing with nothing spent.
func TestLedgerCounterRowGone(t *testing.T) {
	eachEngine(t, func(t *testing.T, r *rig) {
		b := costBudget("b-gone", 1_000_000, ModeSoft, day)
		r.reserve(t, "g1", Charge{b, 100})
		if _, err := r.db.ExecContext(context.Background(), `DELETE FROM gov_counters`); err != nil {
			t.Fatal(err)
		}
		if ref := r.reserve(t, "g2", Charge{b, 100}); ref != nil {
			t.Fatalf("refused after the row vanished: %v", ref)
		}
		r.want(t, b, 0, 100)
	})
}
