package governance

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/tollgate/tollgate/metering"
)

// headroomOneByOne is Headroom as it was, one query per budget: the
// reference the single query must answer exactly like.
func headroomOneByOne(t *testing.T, r *rig, budgets []Budget) []Headroom {
	t.Helper()
	now := r.clk.Now()
	var out []Headroom
	for _, b := range budgets {
		w := windowOf(b, now)
		h := Headroom{Budget: b, WindowStart: w.start, Limit: b.Limit}
		if b.Window.Kind != WindowRolling {
			h.ResetAt = w.reset
		}
		err := r.db.QueryRowContext(context.Background(), `SELECT COALESCE(SUM(spent), 0), COALESCE(SUM(reserved), 0) FROM gov_counters
			WHERE budget_id = $1 AND window_start >= $2 AND window_start <= $3`, b.ID, w.lo, w.cur).Scan(&h.Spent, &h.Reserved)
		if err != nil {
			t.Fatal(err)
		}
		err = r.db.QueryRowContext(context.Background(), `SELECT COALESCE(SUM(i.amount), 0) FROM gov_reservation_items i
			JOIN gov_reservations r ON r.request_id = i.request_id
			WHERE i.budget_id = $1 AND i.window_start >= $2 AND i.window_start <= $3 AND r.state = 'held' AND i.request_id LIKE 'allot:%'`,
			b.ID, w.lo, w.cur).Scan(&h.Allotted)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, h)
	}
	return out
}

// TestHeadroomOneQueryForAllBudgets: several budgets (calendar, rolling,
// lifetime, tokens, one with no counter yet, one listed twice) with spend
// and reservations in current and past windows and rolling buckets: the
// one statement answers what a query per budget answers, in input order.
func TestHeadroomOneQueryForAllBudgets(t *testing.T) {
	eachEngine(t, func(t *testing.T, r *rig) {
		ctx := context.Background()
		roll, err := ParseWindow("rolling:5h")
		if err != nil {
			t.Fatal(err)
		}
		dayB := costBudget("b-day", 10_000_000, ModeSoft, day)
		rollB := costBudget("b-roll", 10_000_000, ModeSoft, roll)
		lifeB := costBudget("b-life", 10_000_000, ModeSoft, Window{Kind: WindowLifetime})
		monthB := costBudget("b-month", 10_000_000, ModeSoft, Window{Kind: WindowMonth})
		tokB := Budget{ID: "b-tok", Selector: Selector{ScopeType: ScopeProject, ScopeID: "acme"}, Metric: MetricTokens,
			Limit: 1_000_000, Window: Window{Kind: WindowWeek}, Mode: ModeSoft}
		empty := costBudget("b-empty", 5_000_000, ModeSoft, day)

		// Yesterday: spend that only the rolling, lifetime, month and week
		// budgets still count (the rolling one only for its last 5 h).
		r.clk.Set(time.Date(2026, 12, 2, 21, 0, 0, 0, time.UTC))
		charge := func(id string, cost int64, held bool) {
			t.Helper()
			cs := []Charge{{dayB, cost}, {rollB, cost}, {lifeB, cost}, {monthB, cost}, {tokB, cost / 1000}}
			if ref := r.reserve(t, id, cs...); ref != nil {
				t.Fatalf("%s refused: %v", id, ref)
			}
			if !held {
				rec := okRecord(id, cost)
				rec.Usage = &metering.Usage{InputUncached: cost / 2000, Output: cost / 2000}
				r.settle(t, rec)
			}
		}
		charge("y1", 1_000_000, false)
		r.clk.Set(time.Date(2026, 12, 2, 23, 30, 0, 0, time.UTC))
		charge("y2", 700_000, false)
		// Today: settled and held.
		r.clk.Set(time.Date(2026, 12, 3, 1, 10, 0, 0, time.UTC))
		charge("t1", 300_000, false)
		r.clk.Set(time.Date(2026, 12, 3, 2, 40, 0, 0, time.UTC))
		charge("t2", 250_000, true)

		// Allotments: one held today against the day and rolling budgets,
		// one held yesterday evening against the rolling one, and one
		// given back.
		allot := func(id, state string, items ...Charge) {
			t.Helper()
			if _, err := r.db.ExecContext(ctx, `INSERT INTO gov_reservations (request_id, replica_id, created_at, updated_at, state) VALUES ($1, 'replica-a', 0, 0, $2)`, id, state); err != nil {
				t.Fatal(err)
			}
			for _, c := range items {
				w := windowOf(c.Budget, r.clk.Now())
				if _, err := r.db.ExecContext(ctx, `INSERT INTO gov_reservation_items (request_id, budget_id, window_start, metric, amount) VALUES ($1, $2, $3, $4, $5)`,
					id, c.Budget.ID, w.cur, string(c.Budget.Metric), c.Amount); err != nil {
					t.Fatal(err)
				}
			}
		}
		allot("allot:a1", "held", Charge{dayB, 40_000}, Charge{rollB, 40_000})
		allot("allot:a0", "released", Charge{dayB, 7})
		r.clk.Set(time.Date(2026, 12, 2, 22, 0, 0, 0, time.UTC))
		allot("allot:a2", "held", Charge{rollB, 5_000})

		budgets := []Budget{dayB, rollB, empty, lifeB, monthB, tokB, dayB}
		for _, at := range []time.Time{
			time.Date(2026, 12, 3, 2, 45, 0, 0, time.UTC), // y1 out of the rolling window, y2 in
			time.Date(2026, 12, 3, 4, 50, 0, 0, time.UTC), // y2 left the rolling window too
			time.Date(2027, 1, 1, 0, 0, 1, 0, time.UTC),   // a new day, month and rolling window
		} {
			r.clk.Set(at)
			got, err := r.l.Headroom(ctx, budgets)
			if err != nil {
				t.Fatal(err)
			}
			want := headroomOneByOne(t, r, budgets)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("at %s:\n got %s\nwant %s", at, show(got), show(want))
			}
		}
		// The values themselves, at the first instant, so the reference
		// cannot be wrong in the same way.
		r.clk.Set(time.Date(2026, 12, 3, 2, 45, 0, 0, time.UTC))
		got, err := r.l.Headroom(ctx, budgets)
		if err != nil {
			t.Fatal(err)
		}
		wantSR := [][2]int64{{300_000, 250_000}, {1_000_000, 250_000}, {0, 0}, {2_000_000, 250_000}, {2_000_000, 250_000}, {2_000, 250}, {300_000, 250_000}}
		wantAllotted := []int64{40_000, 45_000, 0, 0, 0, 0, 40_000} // the rolling window still holds a2
		for i, h := range got {
			if h.Budget.ID != budgets[i].ID || h.Spent != wantSR[i][0] || h.Reserved != wantSR[i][1] || h.Allotted != wantAllotted[i] {
				t.Errorf("budget %d (%s): spent %d reserved %d allotted %d, want %v and %d", i, h.Budget.ID, h.Spent, h.Reserved, h.Allotted, wantSR[i], wantAllotted[i])
			}
		}
		if got[1].ResetAt != (time.Time{}) || got[0].ResetAt != time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC) {
			t.Errorf("resets: rolling %s, day %s", got[1].ResetAt, got[0].ResetAt)
		}
		if hs, err := r.l.Headroom(ctx, nil); err != nil || len(hs) != 0 {
			t.Errorf("no budgets: %v %v", hs, err)
		}
	})
}

func show(hs []Headroom) string {
	s := ""
	for _, h := range hs {
		s += fmt.Sprintf("[%s %s %s %d/%d/%d] ", h.Budget.ID, h.WindowStart.Format(time.RFC3339), h.ResetAt.Format(time.RFC3339), h.Spent, h.Reserved, h.Allotted)
	}
	return s
}
