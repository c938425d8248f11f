package governance

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/tollgate/tollgate/metering"
)

func withPrices(p *metering.PriceTable) func(*LedgerConfig) {
	return func(c *LedgerConfig) { c.Prices = func() *metering.PriceTable { return p } }
}

// unpricedRecord is the record the proxy makes of req's answer with usage
// u: priced against prices, which do not know the model, so unpriced.
func unpricedRecord(t *testing.T, prices *metering.PriceTable, req Request, a *Admission, u metering.Usage) *metering.Record {
	t.Helper()
	rec := &metering.Record{RequestID: req.RequestID, Start: time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC), Project: "acme",
		Provider: req.Provider, Dialect: req.Dialect, ModelRequest: req.Model, Outcome: metering.OutcomeOK,
		Source: metering.SourceUpstream, Status: 200, Usage: &u, Reserved: a.Reserved, Allotted: a.Allotted}
	rec.CostMicroUSD, rec.PriceVersion = prices.Cost(rec.Provider, rec.Model(), rec.ServiceTier, u)
	rec.Unpriced = rec.CostMicroUSD == nil
	if !rec.Unpriced {
		t.Fatalf("model %q is priced: the test needs one the table does not know", req.Model)
	}
	return rec
}

// fallbackRequest asks a model the price table does not know for up to
// 4096 output tokens.
func fallbackRequest(id string) Request {
	req := govRequest(id, "acme", "mystery-model-7")
	req.Body = []byte(`{"model":"mystery-model-7","max_tokens":4096,"messages":[{"role":"user","content":"hi"}]}`)
	return req
}

// storedCost is the cost stored on id's usage record; valid false for NULL.
func (r *rig) storedCost(t *testing.T, id string) sql.NullInt64 {
	t.Helper()
	var c sql.NullInt64
	if err := r.db.QueryRowContext(context.Background(), `SELECT cost_micro_usd FROM usage_records WHERE request_id = $1`, id).Scan(&c); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestUnpricedFallbackSettlesAtFallbackRates: under a hard cost budget
// with `unpriced: fallback`, a model the price table does not know
// reserves its ceiling at the fallback rates and settles at its metered
// tokens at those rates, not at the whole ceiling; its usage record stays
// unpriced (no cost). With allotments too, where the hold settles the
// same amount out of the allotment. A replay charges nothing more.
func TestUnpricedFallbackSettlesAtFallbackRates(t *testing.T) {
	prices := metering.DefaultPrices()
	fb, _, ok := prices.Fallback()
	if !ok {
		t.Fatal("the built-in price table has no fallback row")
	}
	// Within the ceiling of fallbackRequest's body, as a real answer is.
	u := metering.Usage{InputUncached: 30, CacheRead: 10, Output: 300}
	want := fb.CostMicroUSD(u)
	for _, allot := range []bool{false, true} {
		for _, engine := range ledgerEngines() {
			t.Run(fmt.Sprintf("%s/allotments=%v", engine, allot), func(t *testing.T) {
				ctx := context.Background()
				clk := newClock(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))
				opts := []func(*LedgerConfig){withPrices(prices)}
				if allot {
					opts = append(opts, withAllotments)
				}
				r := openRig(t, ledgerDSN(t, engine), clk, "replica-fb", opts...)
				if err := r.l.Heartbeat(ctx); err != nil {
					t.Fatal(err)
				}
				b := costBudget("b-fb", 1_000_000_000, ModeHard, day)
				b.Unpriced = UnpricedFallback
				pol := &govPolicies{}
				pol.set(Policies{Budgets: []Budget{b}})
				g := New(Config{Policies: pol, Ledger: r.l, Prices: prices})

				const n = 6
				var recs []*metering.Record
				var ceiling int64
				allotted := 0
				for i := range n {
					req := fallbackRequest(fmt.Sprintf("req_fb_%d", i))
					a, err := g.Admit(ctx, req)
					if err != nil {
						t.Fatalf("admit: %v", err)
					}
					if !a.Reserved && len(a.Allotted) == 0 {
						t.Fatal("admitted without a reservation or a hold")
					}
					if len(a.Allotted) > 0 {
						allotted++
						ceiling = a.Allotted[0].Amount
					} else {
						_, res := r.state(t, b)
						ceiling = max(ceiling, res)
					}
					rec := unpricedRecord(t, prices, req, a, u)
					a.Finish(rec)
					r.l.allot.wg.Wait()
					recs = append(recs, rec)
				}
				if allot && allotted == 0 {
					t.Fatal("no request was admitted from an allotment")
				}
				if ceiling <= want {
					t.Fatalf("ceiling %d is not above the fallback-priced cost %d: the test tells nothing", ceiling, want)
				}
				r.settle(t, recs...)
				r.settle(t, recs...) // a replay
				if allot {
					r.clk.Add(allotIdle + time.Second)
					r.l.tidyAllotments(ctx, false)
				}
				r.want(t, b, n*want, 0)
				for _, rec := range recs {
					if rec.CostMicroUSD != nil || !rec.Unpriced {
						t.Errorf("%s: settling priced the record: cost %v unpriced %v", rec.RequestID, rec.CostMicroUSD, rec.Unpriced)
					}
					if c := r.storedCost(t, rec.RequestID); c.Valid {
						t.Errorf("%s: stored with cost %d, want none (unpriced)", rec.RequestID, c.Int64)
					}
				}
			})
		}
	}
}

// TestUnpricedWithoutUsageSettlesAtCeiling: an unpriced request whose
// usage is unknown (a cut stream) is still charged what it reserved.
func TestUnpricedWithoutUsageSettlesAtCeiling(t *testing.T) {
	prices := metering.DefaultPrices()
	for _, engine := range ledgerEngines() {
		t.Run(engine, func(t *testing.T) {
			ctx := context.Background()
			r := openRig(t, ledgerDSN(t, engine), newClock(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)), "replica-fb", withPrices(prices))
			b := costBudget("b-fb-cut", 1_000_000_000, ModeHard, day)
			b.Unpriced = UnpricedFallback
			pol := &govPolicies{}
			pol.set(Policies{Budgets: []Budget{b}})
			g := New(Config{Policies: pol, Ledger: r.l, Prices: prices})
			req := fallbackRequest("req_fb_cut")
			a, err := g.Admit(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			_, ceiling := r.state(t, b)
			rec := unpricedRecord(t, prices, req, a, metering.Usage{})
			rec.Outcome, rec.Source, rec.Usage = metering.OutcomeTruncated, metering.SourceMissing, nil
			a.Finish(rec)
			r.settle(t, rec)
			r.want(t, b, ceiling, 0)
		})
	}
}

// Finishing a held request of an unpriced model under unpriced: fallback
// moves its fallback-priced cost out of this replica's view of the
// allotment, the amount the database settles, not the whole hold.
func TestUnpricedFallbackFinishMovesItsPrice(t *testing.T) {
	prices := metering.DefaultPrices()
	fb, _, ok := prices.Fallback()
	if !ok {
		t.Fatal("the built-in price table has no fallback row")
	}
	u := metering.Usage{InputUncached: 30, CacheRead: 10, Output: 300}
	want := fb.CostMicroUSD(u)
	clk := newClock(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))
	r := openRig(t, ledgerDSN(t, "sqlite"), clk, "replica-fb-view", withPrices(prices), withAllotments)
	b := costBudget("b-fb-view", 1_000_000_000, ModeHard, day)
	b.Unpriced = UnpricedFallback
	const amount, hold = 1_000_000, 100_000
	a := &allotment{id: "allot:view", budget: b, amount: amount, held: hold}
	r.l.allot.mu.Lock()
	r.l.allot.byID[a.id] = a
	r.l.allot.mu.Unlock()
	holds := []metering.Hold{{Allotment: a.id, Amount: hold}}
	req := fallbackRequest("req_fb_view")
	rec := unpricedRecord(t, prices, req, &Admission{Allotted: holds}, u)
	r.l.finishHolds(holds, rec)
	r.l.allot.mu.Lock()
	defer r.l.allot.mu.Unlock()
	if a.held != 0 || a.amount != amount-want {
		t.Fatalf("after finishing: held %d, amount %d; want 0 and %d (moved the fallback price %d, not the hold %d)", a.held, a.amount, amount-want, want, hold)
	}
}
