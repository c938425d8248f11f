package governance

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/tollgate/tollgate/metering"
)

func withAllotments(c *LedgerConfig) { c.Allotments = true }

// eachAllotEngine runs f per engine on a ledger with allotments that has
// heartbeat.
func eachAllotEngine(t *testing.T, f func(t *testing.T, r *rig)) {
	for _, engine := range ledgerEngines() {
		t.Run(engine, func(t *testing.T) {
			clk := newClock(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))
			r := openRig(t, ledgerDSN(t, engine), clk, "replica-a", withAllotments)
			if err := r.l.Heartbeat(context.Background()); err != nil {
				t.Fatal(err)
			}
			f(t, r)
		})
	}
}

// take takes holds for one charge, granting first when needed; it fails
// the test unless holds come from an allotment.
func (r *rig) take(t *testing.T, c Charge) []metering.Hold {
	t.Helper()
	for range 3 {
		if holds, ok := r.l.Allotted([]Charge{c}); ok {
			return holds
		}
		r.l.allot.wg.Wait()
	}
	t.Fatalf("no allotment admitted %d against %s", c.Amount, c.Budget.ID)
	return nil
}

// allotRecord is the record of a request that held holds and cost cost.
func allotRecord(id string, cost int64, holds []metering.Hold) *metering.Record {
	r := okRecord(id, cost)
	r.Reserved, r.Allotted = false, holds
	return r
}

// counterSum is the budget's spent + reserved, and the amount its
// allotments hold in the ledger.
func (r *rig) allotted(t *testing.T, b Budget) int64 {
	t.Helper()
	var n int64
	if err := r.db.QueryRowContext(context.Background(), `SELECT COALESCE(SUM(i.amount), 0) FROM gov_reservation_items i
		JOIN gov_reservations r ON r.request_id = i.request_id WHERE r.state = 'held' AND i.budget_id = $1 AND i.request_id LIKE 'allot:%'`, b.ID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestAllotmentLifecycle: a grant reserves ahead in the ledger; requests
// are then admitted in memory; their records move actuals from the
// allotment to spent once (a replay settles nothing); idle, the unused
// part goes back and the allotment is released; a record arriving after
// that charges spent directly.
func TestAllotmentLifecycle(t *testing.T) {
	eachAllotEngine(t, func(t *testing.T, r *rig) {
		ctx := context.Background()
		b := costBudget("b-al", 100_000_000, ModeHard, day)
		c := Charge{b, 10_000}
		if _, ok := r.l.Allotted([]Charge{c}); ok {
			t.Fatal("admitted from an allotment before any was granted")
		}
		r.l.allot.wg.Wait()
		n, amount, _ := r.l.AllotmentStats()
		if n != 1 || amount < allotMinRequests*c.Amount {
			t.Fatalf("after the first request: %d allotments of %d, want 1 of at least %d", n, amount, allotMinRequests*c.Amount)
		}
		r.want(t, b, 0, amount)

		var recs []*metering.Record
		for i := range 20 {
			holds := r.take(t, c)
			rec := allotRecord(fmt.Sprintf("al-%d", i), 4_000, holds)
			r.l.FinishHolds(holds, rec)
			recs = append(recs, rec)
		}
		r.l.allot.wg.Wait()
		granted := r.allotted(t, b)
		r.settle(t, recs...)
		spent, reserved := r.state(t, b)
		if spent != 20*4_000 || reserved != granted-spent {
			t.Errorf("after settling: spent %d reserved %d, want %d and %d", spent, reserved, 20*4_000, granted-spent)
		}
		r.settle(t, recs...) // a replay
		r.want(t, b, spent, reserved)
		if _, amount, held := r.l.AllotmentStats(); amount != reserved || held != 0 {
			t.Errorf("the replica sees %d allotted (%d held), the ledger %d", amount, held, reserved)
		}

		// One request still in flight when the allotment goes idle: only
		// the unused part goes back.
		holds := r.take(t, c)
		// The take may have started a top-up; the tidy skips an
		// allotment while one is in flight (the next tidy gets it).
		r.l.allot.wg.Wait()
		r.clk.Add(allotIdle + time.Second)
		r.l.tidyAllotments(ctx, false)
		r.want(t, b, spent, c.Amount)
		rec := allotRecord("al-late", 3_000, holds)
		r.l.FinishHolds(holds, rec)
		r.l.tidyAllotments(ctx, false) // nothing held: released
		if n, _, _ := r.l.AllotmentStats(); n != 0 {
			t.Errorf("%d allotments left after release", n)
		}
		r.want(t, b, spent, 0)
		r.settle(t, rec) // after the release: charges spent alone
		r.want(t, b, spent+3_000, 0)
		r.settle(t, rec)
		r.want(t, b, spent+3_000, 0)
		if st := r.reservationState(t, holds[0].Allotment); st != stateReleased {
			t.Errorf("allotment state %q, want released", st)
		}
	})
}

// TestAllotmentHardBoundRace: three replicas, allotments on, 300 requests
// at once against $1.00 in hard mode, each admitted from an allotment or
// reserved directly and settled at a random actual ≤ its charge: spend
// never passes the limit, every admitted request is settled, and once the
// replicas give back what they hold nothing stays reserved.
func TestAllotmentHardBoundRace(t *testing.T) {
	for _, engine := range ledgerEngines() {
		t.Run(engine, func(t *testing.T) {
			ctx := context.Background()
			clk := newClock(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))
			dsn := ledgerDSN(t, engine)
			var rigs []*rig
			for i := range 3 {
				r := openRig(t, dsn, clk, fmt.Sprintf("replica-%d", i), withAllotments)
				if err := r.l.Heartbeat(ctx); err != nil {
					t.Fatal(err)
				}
				rigs = append(rigs, r)
			}
			for _, r := range rigs { // every replica counts all three
				if err := r.l.Heartbeat(ctx); err != nil {
					t.Fatal(err)
				}
			}
			const limit = 1_000_000
			b := costBudget("b-race", limit, ModeHard, day)
			var mu sync.Mutex
			var admitted int
			var actual int64
			recs := make([][]*metering.Record, len(rigs))
			var wg sync.WaitGroup
			for i := range 300 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ri := i % len(rigs)
					r := rigs[ri]
					charge := int64(5_000 + rand.IntN(20_000))
					x := rand.Int64N(charge + 1)
					id := fmt.Sprintf("race-%d", i)
					cs := []Charge{{b, charge}}
					var rec *metering.Record
					if holds, ok := r.l.Allotted(cs); ok {
						rec = allotRecord(id, x, holds)
						r.l.FinishHolds(holds, rec)
					} else {
						ref, err := r.l.Reserve(ctx, id, cs)
						if ref != nil && r.l.ReturnUnused(ctx, cs) {
							ref, err = r.l.Reserve(ctx, id, cs)
						}
						if err != nil {
							t.Error(err)
							return
						}
						if ref != nil {
							return
						}
						rec = okRecord(id, x)
					}
					mu.Lock()
					admitted++
					actual += x
					recs[ri] = append(recs[ri], rec)
					mu.Unlock()
				}()
			}
			wg.Wait()
			for i, r := range rigs {
				r.l.allot.wg.Wait()
				if len(recs[i]) > 0 {
					r.settle(t, recs[i]...)
				}
				r.l.ReleaseAllotments(ctx)
			}
			spent, reserved := rigs[0].state(t, b)
			if spent != actual || reserved != 0 {
				t.Errorf("%d admitted: spent %d reserved %d, want %d and 0", admitted, spent, reserved, actual)
			}
			if spent > limit {
				t.Errorf("hard budget overspent: %d > %d", spent, limit)
			}
			if admitted < 20 {
				t.Errorf("only %d of 300 admitted against $1.00 at ≤ $0.025 each", admitted)
			}
		})
	}
}

// TestAllotmentReclaimed: a replica whose heartbeat stopped has its
// allotment reclaimed by a peer at its whole amount; its own records then
// charge nothing more (the reclaim covered them), it admits nothing from
// the allotment while its heartbeat is stale, and once alive again it
// learns the allotment is gone and is granted a new one.
func TestAllotmentReclaimed(t *testing.T) {
	for _, engine := range ledgerEngines() {
		t.Run(engine, func(t *testing.T) {
			ctx := context.Background()
			clk := newClock(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))
			dsn := ledgerDSN(t, engine)
			a := openRig(t, dsn, clk, "replica-a", withAllotments)
			peer := openRig(t, dsn, clk, "replica-b", withAllotments)
			if err := a.l.Heartbeat(ctx); err != nil {
				t.Fatal(err)
			}
			b := costBudget("b-recl", 100_000_000, ModeHard, day)
			c := Charge{b, 10_000}
			holds := a.take(t, c)
			a.l.allot.wg.Wait()
			amount := a.allotted(t, b)

			clk.Add(31 * time.Second)
			if _, ok := a.l.Allotted([]Charge{c}); ok {
				t.Error("a replica with a stale heartbeat admitted from its allotment")
			}
			if err := peer.l.Heartbeat(ctx); err != nil {
				t.Fatal(err)
			}
			if n, err := peer.l.Sweep(ctx); err != nil || n != 1 {
				t.Fatalf("sweep reclaimed %d (%v), want the allotment", n, err)
			}
			a.want(t, b, amount, 0)
			rec := allotRecord("recl-1", 2_000, holds)
			a.l.FinishHolds(holds, rec)
			a.settle(t, rec)
			a.want(t, b, amount, 0)

			if err := a.l.Heartbeat(ctx); err != nil {
				t.Fatal(err)
			}
			// The next grant finds the allotment reclaimed and drops it;
			// a new one follows.
			for range 3 {
				a.l.Allotted([]Charge{c})
				a.l.allot.wg.Wait()
			}
			got := a.take(t, c)
			if got[0].Allotment == holds[0].Allotment {
				t.Errorf("admitted from the reclaimed allotment %s", holds[0].Allotment)
			}
		})
	}
}

// TestAllotmentNearTheLimit: when headroom is a few requests' worth no
// allotment is granted and requests reserve directly, so the last of a
// budget is shared exactly: with a limit of three charges, three are
// admitted and the fourth is refused, allotments on.
func TestAllotmentNearTheLimit(t *testing.T) {
	eachAllotEngine(t, func(t *testing.T, r *rig) {
		ctx := context.Background()
		b := costBudget("b-near", 30_000, ModeHard, day)
		cs := []Charge{{b, 10_000}}
		admitted := 0
		for i := range 4 {
			if _, ok := r.l.Allotted(cs); ok {
				t.Fatal("an allotment was granted for three requests of headroom")
			}
			r.l.allot.wg.Wait()
			ref, err := r.l.Reserve(ctx, fmt.Sprintf("near-%d", i), cs)
			if err != nil {
				t.Fatal(err)
			}
			if ref == nil {
				admitted++
			}
		}
		if admitted != 3 {
			t.Errorf("%d admitted, want 3", admitted)
		}
	})
}

// TestAllotmentOwnHeadroomNotStranded: a single replica whose allotment
// holds the headroom a direct reservation needs gives it back and admits.
func TestAllotmentOwnHeadroomNotStranded(t *testing.T) {
	eachAllotEngine(t, func(t *testing.T, r *rig) {
		ctx := context.Background()
		b := costBudget("b-own", 1_000_000, ModeHard, day)
		small := Charge{b, 10_000}
		r.take(t, small)
		r.l.allot.wg.Wait()
		big := []Charge{{b, 1_000_000 - 10_000}}
		ref, err := r.l.Reserve(ctx, "big", big)
		if err != nil {
			t.Fatal(err)
		}
		if ref == nil {
			t.Fatal("the big request fit while the allotment held headroom")
		}
		if !r.l.ReturnUnused(ctx, big) {
			t.Fatal("nothing to give back")
		}
		if ref, err := r.l.Reserve(ctx, "big", big); err != nil || ref != nil {
			t.Fatalf("after giving back: %v %v", ref, err)
		}
		r.want(t, b, 0, 1_000_000)
	})
}

// TestAllotmentEditedBudget: an edited budget's allotment admits nothing
// more; a new one is granted under the new limit, and the old one's unused
// part goes back once it is idle.
func TestAllotmentEditedBudget(t *testing.T) {
	eachAllotEngine(t, func(t *testing.T, r *rig) {
		ctx := context.Background()
		b := costBudget("b-edit", 100_000_000, ModeHard, day)
		old := r.take(t, Charge{b, 10_000})
		r.l.allot.wg.Wait()
		b.Limit, b.UpdatedAt = 50_000_000, b.UpdatedAt.Add(time.Second)
		if _, ok := r.l.Allotted([]Charge{{b, 10_000}}); ok {
			t.Error("admitted from the allotment of the budget before its edit")
		}
		r.l.allot.wg.Wait()
		holds := r.take(t, Charge{b, 10_000})
		if holds[0].Allotment == old[0].Allotment {
			t.Fatalf("still admitted from %s after the edit", old[0].Allotment)
		}
		r.l.FinishHolds(old, allotRecord("edit-old", 1_000, old))
		r.l.allot.wg.Wait()
		r.l.tidyAllotments(ctx, false) // the retired one: nothing holds it
		if st := r.reservationState(t, old[0].Allotment); st != stateReleased {
			t.Errorf("the old allotment is %q, want released", st)
		}
	})
}

// TestAllotmentFirstContact: N12 with allotments on, through the
// Governor: a budget of one ceiling and eight simultaneous first requests
// admit exactly one.
func TestAllotmentFirstContact(t *testing.T) {
	eachAllotEngine(t, func(t *testing.T, r *rig) {
		ctx := context.Background()
		b := costBudget("b-first", 10_000, ModeHard, day)
		var mu sync.Mutex
		admitted := 0
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				cs := []Charge{{b, 10_000}}
				if _, ok := r.l.Allotted(cs); ok {
					mu.Lock()
					admitted++
					mu.Unlock()
					return
				}
				ref, err := r.l.Reserve(ctx, fmt.Sprintf("first-%d", i), cs)
				if ref != nil && r.l.ReturnUnused(ctx, cs) {
					ref, err = r.l.Reserve(ctx, fmt.Sprintf("first-%d", i), cs)
				}
				if err != nil {
					t.Error(err)
				}
				if ref == nil && err == nil {
					mu.Lock()
					admitted++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if admitted != 1 {
			t.Errorf("%d admitted, want 1", admitted)
		}
	})
}

// BenchmarkGovernorAdmitAllotted is a governed request's cost with a cost
// budget admitted from an allotment, a model rule and an in-process rate
// limit: Admit, then Finish with a record, as the proxy does.
func BenchmarkGovernorAdmitAllotted(b *testing.B) {
	ctx := context.Background()
	r := openRig(b, ledgerDSN(b, "sqlite"), newClock(time.Now()), "a", withAllotments)
	if err := r.l.Heartbeat(ctx); err != nil {
		b.Fatal(err)
	}
	pol := &govPolicies{}
	budget := costBudget("b", 1_000_000_000_000, ModeSoft, Window{Kind: WindowMonth})
	pol.set(Policies{
		Budgets: []Budget{budget},
		Limits:  []Limit{{ID: "l", Selector: Selector{ScopeType: ScopeProject, ScopeID: "acme"}, RPM: 1_000_000_000, TPM: 1_000_000_000_000}},
		Rules:   []ModelRule{{ID: "r", ScopeType: ScopeProject, ScopeID: "acme", Kind: RuleAllow, Pattern: "claude-*"}},
	})
	g := New(Config{Policies: pol, Ledger: r.l, Prices: metering.DefaultPrices()})
	req := govRequest("req", "acme", "claude-sonnet-4-5")
	rec := okRecord("req", 100)
	b.ReportAllocs()
	for b.Loop() {
		a, err := g.Admit(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		a.Finish(rec)
		r.l.allot.wg.Wait()
	}
	b.StopTimer()
	if n, _, _ := r.l.AllotmentStats(); n != 1 {
		b.Fatalf("%d allotments", n)
	}
}

// BenchmarkSettleAllotted is the usage batch's cost per record: stored
// with or without an allotment hold to settle (batches of 64, SQLite).
func BenchmarkSettleAllotted(b *testing.B) {
	for _, allotted := range []bool{false, true} {
		b.Run(fmt.Sprintf("allotted=%v", allotted), func(b *testing.B) {
			ctx := context.Background()
			r := openRig(b, ledgerDSN(b, "sqlite"), newClock(time.Now()), "a", withAllotments)
			if err := r.l.Heartbeat(ctx); err != nil {
				b.Fatal(err)
			}
			budget := costBudget("b", 1_000_000_000_000, ModeSoft, Window{Kind: WindowMonth})
			var holds []metering.Hold
			for holds == nil {
				holds, _ = r.l.Allotted([]Charge{{budget, 10}})
				r.l.allot.wg.Wait()
			}
			n := 0
			b.ResetTimer()
			for b.Loop() {
				recs := make([]*metering.Record, 64)
				for i := range recs {
					n++
					recs[i] = okRecord(fmt.Sprintf("req-%d", n), 5)
					recs[i].Reserved = false
					if allotted {
						recs[i].Allotted = holds
					}
				}
				if _, err := r.usage.InsertBatch(ctx, recs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(n), "µs/record")
		})
	}
}

// TestWindowCacheMatchesWindowOf: the window Allotted takes from its cache
// is windowOf's at every instant, across calendar and rolling boundaries,
// with the clock going back, and after a budget's window is edited.
func TestWindowCacheMatchesWindowOf(t *testing.T) {
	var wc windowCache
	month := costBudget("b", 1, ModeSoft, Window{Kind: WindowMonth})
	day, rolling, life := month, month, month
	day.Window = Window{Kind: WindowDay}
	rolling.Window = Window{Kind: WindowRolling, Every: 5 * time.Hour}
	life.Window = Window{Kind: WindowLifetime}
	other := month
	other.ID = "c"
	t0 := time.Date(2026, 1, 31, 23, 59, 59, 0, time.UTC)
	steps := []time.Duration{0, 500 * time.Millisecond, time.Second, -time.Second, 13 * time.Minute, 12*time.Minute + 30*time.Second,
		-24 * time.Hour, 31 * 24 * time.Hour, 29 * 24 * time.Hour, time.Nanosecond, -time.Nanosecond}
	for _, b := range []Budget{month, other, day, rolling, life, month} {
		now := t0
		for _, d := range steps {
			now = now.Add(d)
			if got, want := wc.at(b, now), windowOf(b, now); got != want {
				t.Fatalf("budget %s window %s at %s: cached %+v, windowOf %+v", b.ID, b.Window, now, got, want)
			}
		}
	}
	var none *windowCache
	if got, want := none.at(month, t0), windowOf(month, t0); got != want {
		t.Fatalf("nil cache: %+v, want %+v", got, want)
	}
}
