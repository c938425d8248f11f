package governance

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
)

func mustWindow(t testing.TB, s string) Window {
	t.Helper()
	w, err := ParseWindow(s)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// TestLedgerChargesTheLocalMonth: a request at 23:30 UTC on 31 December
// is 00:30 on 1 January in Berlin, so a month@Europe/Berlin budget charges
// it to January (the window that started at 23:00 UTC) while a UTC month
// budget charges December; the refusal and the headroom give the local
// window's reset.
func TestLedgerChargesTheLocalMonth(t *testing.T) {
	eachEngine(t, func(t *testing.T, r *rig) {
		berlin := costBudget("b-berlin", 1_000_000, ModeHard, mustWindow(t, "month@Europe/Berlin"))
		utc := costBudget("b-utc", 1_000_000, ModeHard, Window{Kind: WindowMonth})
		late := time.Date(2026, 12, 31, 23, 30, 0, 0, time.UTC)
		r.clk.Set(late)
		if ref := r.reserve(t, "late", Charge{berlin, 400_000}, Charge{utc, 400_000}); ref != nil {
			t.Fatal(ref)
		}
		rec := okRecord("late", 300_000)
		rec.Start = late
		r.settle(t, rec)

		hs, err := r.l.Headroom(context.Background(), []Budget{berlin, utc})
		if err != nil {
			t.Fatal(err)
		}
		jan := time.Date(2026, 12, 31, 23, 0, 0, 0, time.UTC)
		if h := hs[0]; !h.WindowStart.Equal(jan) || !h.ResetAt.Equal(time.Date(2027, 1, 31, 23, 0, 0, 0, time.UTC)) || h.Spent != 300_000 {
			t.Errorf("Berlin: window %s – %s, spent %d; want January from %s, spent 300000", h.WindowStart, h.ResetAt, h.Spent, jan)
		}
		if got := hs[0].ResetAt.Format(time.RFC3339); got != "2027-02-01T00:00:00+01:00" {
			t.Errorf("Berlin reset shown as %s, want local midnight 2027-02-01T00:00:00+01:00", got)
		}
		// The API answers Headroom as JSON: its times carry the zone's offset.
		if js, err := json.Marshal(hs[0]); err != nil || !strings.Contains(string(js), `"window_start":"2027-01-01T00:00:00+01:00"`) ||
			!strings.Contains(string(js), `"reset_at":"2027-02-01T00:00:00+01:00"`) {
			t.Errorf("headroom JSON %s, %v", js, err)
		}
		if h := hs[1]; !h.WindowStart.Equal(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)) || h.Spent != 300_000 {
			t.Errorf("UTC: window from %s, spent %d; want December, spent 300000", h.WindowStart, h.Spent)
		}

		r.clk.Set(time.Date(2027, 1, 1, 0, 30, 0, 0, time.UTC))
		r.want(t, berlin, 300_000, 0) // still January in Berlin
		r.want(t, utc, 0, 0)          // January in UTC is new
		r.clk.Set(time.Date(2026, 12, 31, 22, 30, 0, 0, time.UTC))
		r.want(t, berlin, 0, 0) // December in Berlin had none of it
		r.want(t, utc, 300_000, 0)

		r.clk.Set(late)
		ref := r.reserve(t, "too-big", Charge{berlin, 900_000})
		if ref == nil {
			t.Fatal("a reservation past the hard limit was admitted")
		}
		if !ref.ResetAt.Equal(time.Date(2027, 1, 31, 23, 0, 0, 0, time.UTC)) || !strings.Contains(ref.Message, "per month@Europe/Berlin") ||
			!strings.Contains(ref.Message, "it resets at 2027-02-01T00:00:00+01:00") {
			t.Errorf("refusal: reset %s, %q", ref.ResetAt, ref.Message)
		}
	})
}

// TestAlertsKeyedByTheLocalWindow: 22:30 and 23:30 UTC on 3 December are
// one UTC day but two Berlin days, so a day@Europe/Berlin budget crossing
// 50 % in each sends two alerts, each keyed by its local day's start.
func TestAlertsKeyedByTheLocalWindow(t *testing.T) {
	eachEngine(t, func(t *testing.T, r *rig) {
		rcv, srv := newReceiver(t, "s3cret")
		b := costBudget("b_berlin", 10_000_000, ModeSoft, mustWindow(t, "day@Europe/Berlin"))
		b.Normalize()
		a, err := NewAlerter(context.Background(), r.db, staticPolicies{&Policies{Budgets: []Budget{b}}}, r.l,
			AlertConfig{URL: srv.URL, Secret: []byte("s3cret"), Now: r.clk.Now, Log: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		for i, at := range []time.Time{time.Date(2026, 12, 3, 22, 30, 0, 0, time.UTC), time.Date(2026, 12, 3, 23, 30, 0, 0, time.UTC)} {
			r.clk.Set(at)
			id := "req-" + strconv.Itoa(i)
			if ref := r.reserve(t, id, Charge{Budget: b, Amount: 6_000_000}); ref != nil {
				t.Fatalf("%s refused: %v", id, ref)
			}
			rec := okRecord(id, 6_000_000)
			rec.Start = at
			r.settle(t, rec)
			a.tick(context.Background())
		}
		d, payloads, _, _ := rcv.snapshot()
		dec3 := time.Date(2026, 12, 2, 23, 0, 0, 0, time.UTC).Unix()
		dec4 := time.Date(2026, 12, 3, 23, 0, 0, 0, time.UTC).Unix()
		want := []string{b.ID + ":" + itoa(dec3) + ":50", b.ID + ":" + itoa(dec4) + ":50"}
		if len(d) != 2 || d[0] != want[0] || d[1] != want[1] {
			t.Fatalf("alerts %v, want %v", d, want)
		}
		if p := payloads[1]; p["window_start"] != "2026-12-03T23:00:00Z" || p["reset_at"] != "2026-12-04T23:00:00Z" {
			t.Errorf("payload window %v – %v, want the Berlin day of 4 December", p["window_start"], p["reset_at"])
		}
		if bud, _ := payloads[1]["budget"].(map[string]any); bud["window"] != "day@Europe/Berlin" {
			t.Errorf("payload budget window %v", bud["window"])
		}
	})
}

// TestStoreZonedWindowRoundTrip: a budget's zone is stored in its window
// text and read back as set, is part of its identity (a UTC month budget
// of the same scope is another budget), and an unknown zone is refused
// naming the field and the value.
func TestStoreZonedWindowRoundTrip(t *testing.T) {
	forEachPolicyEngine(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		st := policyStore(t, db)
		acme := Selector{ScopeType: ScopeProject, ScopeID: "acme"}
		w := mustWindow(t, "month@Europe/Berlin")
		b, res, err := st.SetBudget(ctx, Budget{Selector: acme, Metric: MetricCost, Limit: 50_000_000, Window: w})
		if err != nil || res != SetCreated {
			t.Fatalf("set: %v %v", res, err)
		}
		var spec string
		if err := db.QueryRowContext(ctx, `SELECT window_spec FROM gov_budgets WHERE id = $1`, b.ID).Scan(&spec); err != nil || spec != "month@Europe/Berlin" {
			t.Errorf("stored window_spec %q, %v", spec, err)
		}
		got, err := st.Budget(ctx, b.ID)
		if err != nil || got.Window != w {
			t.Fatalf("read back %+v, %v; want %+v", got.Window, err, w)
		}
		if _, res, err := st.SetBudget(ctx, Budget{Selector: acme, Metric: MetricCost, Limit: 50_000_000, Window: w}); err != nil || res != SetUnchanged {
			t.Errorf("same zoned budget again: %v %v, want unchanged", res, err)
		}
		u, res, err := st.SetBudget(ctx, Budget{Selector: acme, Metric: MetricCost, Limit: 50_000_000, Window: Window{Kind: WindowMonth}})
		if err != nil || res != SetCreated || u.ID == b.ID {
			t.Errorf("UTC month beside the Berlin one: %v %v %s, want another budget", res, err, u.ID)
		}
		ny := got
		ny.Window = mustWindow(t, "day@America/New_York")
		if put, err := st.PutBudget(ctx, ny); err != nil || put.Window.String() != "day@America/New_York" {
			t.Errorf("put a new zone: %+v %v", put.Window, err)
		}
		if got, err := st.Budget(ctx, b.ID); err != nil || got.Window.String() != "day@America/New_York" {
			t.Errorf("after the put: %v %v", got.Window, err)
		}
		bad := Budget{Selector: acme, Metric: MetricCost, Limit: 1, Window: Window{Kind: WindowMonth, Zone: "Europe/Atlantis"}}
		if _, _, err := st.SetBudget(ctx, bad); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `window: unknown time zone "Europe/Atlantis"`) {
			t.Errorf("unknown zone: %v", err)
		}
	})
}

// TestAlertCutoffInTheLocalZone: a month@Europe/Berlin budget keeps the
// alert rows of the two local months before its current one, which in
// October started at 22:00 UTC (summer time), not at December's 23:00.
func TestAlertCutoffInTheLocalZone(t *testing.T) {
	b := costBudget("b", 1, ModeSoft, mustWindow(t, "month@Europe/Berlin"))
	cut, ok := alertCutoff(b, time.Date(2026, 12, 15, 12, 0, 0, 0, time.UTC))
	if want := time.Date(2026, 9, 30, 22, 0, 0, 0, time.UTC); !ok || cut != want.Unix() {
		t.Errorf("cutoff %s, want %s, the start of October in Berlin", time.Unix(cut, 0).UTC(), want)
	}
}
