package governance

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/internal/testkit"
)

// fakeHeadroom stands in for the ledger: the alerter's own table is real
// SQL, the spend it reads is set by the test.
type fakeHeadroom struct {
	mu     sync.Mutex
	spent  map[string]int64
	window time.Time
}

func (f *fakeHeadroom) set(id string, spent int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.spent[id] = spent
}

func (f *fakeHeadroom) setWindow(w time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.window = w
}

func (f *fakeHeadroom) Headroom(_ context.Context, bs []Budget) ([]Headroom, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Headroom
	for _, b := range bs {
		_, next := b.Window.Bounds(f.window)
		out = append(out, Headroom{Budget: b, WindowStart: f.window, ResetAt: next, Spent: f.spent[b.ID], Limit: b.Limit})
	}
	return out, nil
}

type staticPolicies struct{ p *Policies }

func (s staticPolicies) Current() *Policies { return s.p }

var alertDay = time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)

// receiver is a webhook endpoint on 127.0.0.1 that checks each signature
// and keeps what it was sent; fail makes the first N answers a 500.
type receiver struct {
	t      *testing.T
	secret []byte
	fail   atomic.Int64

	mu         sync.Mutex
	payloads   []map[string]any
	deliveries []string
	times      []time.Time
	requests   int
	badSig     int
}

func newReceiver(t *testing.T, secret string) (*receiver, *httptest.Server) {
	r := &receiver{t: t, secret: []byte(secret)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		r.requests++
		r.times = append(r.times, time.Now())
		if !hmac.Equal([]byte(req.Header.Get("X-Tollgate-Signature")), []byte(Sign(r.secret, body))) ||
			req.Header.Get("Content-Type") != "application/json" || req.Method != http.MethodPost ||
			req.Header.Get("X-Tollgate-Timestamp") == "" {
			r.badSig++
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if r.fail.Add(-1) >= 0 {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		var p map[string]any
		if err := json.Unmarshal(body, &p); err != nil {
			r.t.Errorf("body is not JSON: %q", body)
		}
		r.payloads = append(r.payloads, p)
		r.deliveries = append(r.deliveries, req.Header.Get("X-Tollgate-Delivery"))
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	return r, srv
}

func (r *receiver) snapshot() (deliveries []string, payloads []map[string]any, requests, bad int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.deliveries...), append([]map[string]any(nil), r.payloads...), r.requests, r.badSig
}

func alertEngines() []string {
	e := []string{store.SQLite}
	if os.Getenv("TOLLGATE_TEST_POSTGRES") != "" {
		e = append(e, store.Postgres)
	}
	return e
}

// alertDSN is one database that several replicas may open.
func alertDSN(t *testing.T, engine string) string {
	if engine == store.SQLite {
		return filepath.Join(t.TempDir(), "tollgate.db")
	}
	return testkit.PostgresSchema(t, os.Getenv("TOLLGATE_TEST_POSTGRES"), "gov_alerts_")
}

func openAlertDB(t *testing.T, dsn string) *store.DB {
	db, err := store.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func alertCostBudget(id string, limit int64) Budget {
	b := Budget{ID: id, Selector: Selector{ScopeType: ScopeProject, ScopeID: "acme"}, Metric: MetricCost, Limit: limit,
		Window: Window{Kind: WindowDay}}
	b.Normalize()
	return b
}

func newTestAlerter(t *testing.T, db *store.DB, pol *Policies, h headroomReader, url string, mod func(*AlertConfig)) *Alerter {
	cfg := AlertConfig{URL: url, Secret: []byte("s3cret"), Backoff: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond,
		Log: testLogger(t)}
	if mod != nil {
		mod(&cfg)
	}
	a, err := newAlerter(context.Background(), db, staticPolicies{pol}, h, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func testLogger(t *testing.T) *slog.Logger { return slog.New(slog.NewTextHandler(t.Output(), nil)) }

func TestAlertsCrossingThresholdsSendsEachOnce(t *testing.T) {
	for _, engine := range alertEngines() {
		t.Run(engine, func(t *testing.T) {
			rcv, srv := newReceiver(t, "s3cret")
			db := openAlertDB(t, alertDSN(t, engine))
			b := alertCostBudget("b_acme", 10_000_000) // $10
			h := &fakeHeadroom{spent: map[string]int64{}, window: alertDay}
			a := newTestAlerter(t, db, &Policies{Budgets: []Budget{b}}, h, srv.URL+"/hook", nil)
			ctx := context.Background()
			for _, step := range []struct {
				spent int64
				want  int
			}{{4_999_999, 0}, {5_000_000, 1}, {7_000_000, 1}, {8_500_000, 2}, {9_999_999, 2}, {10_000_000, 3}, {25_000_000, 3}} {
				h.set(b.ID, step.spent)
				a.tick(ctx)
				a.tick(ctx)
				if got, _, _, _ := rcv.snapshot(); len(got) != step.want {
					t.Fatalf("spent %d: %d alerts %v, want %d", step.spent, len(got), got, step.want)
				}
			}
			deliveries, payloads, requests, bad := rcv.snapshot()
			if requests != 3 || bad != 0 {
				t.Errorf("%d requests (%d badly signed), want 3 well signed", requests, bad)
			}
			ws := alertDay.Unix()
			for i, th := range []int{50, 80, 100} {
				want := b.ID + ":" + itoa(ws) + ":" + itoa(int64(th))
				if deliveries[i] != want {
					t.Errorf("delivery %d: %q, want %q", i, deliveries[i], want)
				}
				p := payloads[i]
				if p["threshold_percent"] != float64(th) || p["limit"] != float64(10_000_000) || p["limit_usd"] != "10.00" ||
					p["window_start"] != "2026-12-03T00:00:00Z" || p["reset_at"] != "2026-12-04T00:00:00Z" || p["sent_at"] == nil {
					t.Errorf("payload %d: %v", i, p)
				}
				bud, _ := p["budget"].(map[string]any)
				if bud["id"] != b.ID || bud["scope_type"] != "project" || bud["scope_id"] != "acme" || bud["metric"] != "cost" ||
					bud["window"] != "day" || bud["mode"] != "soft" || bud["limit"] != float64(10_000_000) {
					t.Errorf("payload %d budget: %v", i, bud)
				}
			}
			if payloads[0]["spent_usd"] != "5.00" || payloads[1]["spent_usd"] != "8.50" || payloads[2]["spent_usd"] != "10.00" {
				t.Errorf("spent_usd: %v %v %v", payloads[0]["spent_usd"], payloads[1]["spent_usd"], payloads[2]["spent_usd"])
			}
			var sent int
			if err := db.QueryRow(`SELECT COUNT(*) FROM gov_alerts WHERE state = 'sent' AND sent_at IS NOT NULL`).Scan(&sent); err != nil || sent != 3 {
				t.Errorf("sent rows: %d %v", sent, err)
			}

			// A new window alerts again, from its own rows.
			next := alertDay.AddDate(0, 0, 1)
			h.setWindow(next)
			h.set(b.ID, 9_000_000)
			a.tick(ctx)
			a.tick(ctx)
			deliveries, _, _, _ = rcv.snapshot()
			// Both thresholds crossed in one check arrive in order.
			if len(deliveries) != 5 || !slices.Equal(deliveries[3:], []string{b.ID + ":" + itoa(next.Unix()) + ":50", b.ID + ":" + itoa(next.Unix()) + ":80"}) {
				t.Errorf("new window: %v, want 50 and 80 again", deliveries)
			}
		})
	}
}

// TestAlertsTwoReplicasSendEachOnce: two Alerters on one database, both
// seeing every threshold crossed at once and checking concurrently, send
// each alert exactly once between them.
func TestAlertsTwoReplicasSendEachOnce(t *testing.T) {
	for _, engine := range alertEngines() {
		t.Run(engine, func(t *testing.T) {
			rcv, srv := newReceiver(t, "s3cret")
			dsn := alertDSN(t, engine)
			var budgets []Budget
			h := &fakeHeadroom{spent: map[string]int64{}, window: alertDay}
			for _, id := range []string{"b1", "b2", "b3", "b4"} {
				budgets = append(budgets, alertCostBudget(id, 1_000_000))
				h.set(id, 2_000_000)
			}
			pol := &Policies{Budgets: budgets}
			var as []*Alerter
			for range 2 {
				as = append(as, newTestAlerter(t, openAlertDB(t, dsn), pol, h, srv.URL, nil))
			}
			ctx := context.Background()
			var wg sync.WaitGroup
			for _, a := range as {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range 5 {
						a.tick(ctx)
					}
				}()
			}
			wg.Wait()
			deliveries, _, requests, bad := rcv.snapshot()
			seen := map[string]int{}
			for _, d := range deliveries {
				seen[d]++
			}
			if len(deliveries) != 12 || len(seen) != 12 || requests != 12 || bad != 0 {
				t.Errorf("%d deliveries (%d distinct, %d requests, %d bad): %v; want 4 budgets × 3 thresholds, each once", len(deliveries), len(seen), requests, bad, seen)
			}
		})
	}
}

// TestAlertsRetryWithBackoff: a receiver that fails twice gets the alert
// on the third attempt, not before the backoff, and once.
func TestAlertsRetryWithBackoff(t *testing.T) {
	for _, engine := range alertEngines() {
		t.Run(engine, func(t *testing.T) {
			rcv, srv := newReceiver(t, "s3cret")
			rcv.fail.Store(2)
			db := openAlertDB(t, alertDSN(t, engine))
			b := alertCostBudget("b_retry", 1_000_000)
			b.Alerts = []int{100}
			h := &fakeHeadroom{spent: map[string]int64{"b_retry": 1_000_000}, window: alertDay}
			a := newTestAlerter(t, db, &Policies{Budgets: []Budget{b}}, h, srv.URL, func(c *AlertConfig) {
				c.Interval = 5 * time.Millisecond
				c.Backoff, c.MaxBackoff = 60*time.Millisecond, 200*time.Millisecond
			})
			ctx, cancel := context.WithCancel(context.Background())
			if err := a.Start(ctx); err != nil {
				t.Fatal(err)
			}
			testkit.Eventually(t, 5*time.Second, "the alert delivered", func() bool {
				d, _, _, _ := rcv.snapshot()
				return len(d) == 1
			})
			time.Sleep(100 * time.Millisecond) // room for a wrong extra delivery
			cancel()
			a.Wait()
			deliveries, _, requests, _ := rcv.snapshot()
			if len(deliveries) != 1 || requests != 3 {
				t.Errorf("%d deliveries over %d requests, want 1 over 3", len(deliveries), requests)
			}
			rcv.mu.Lock()
			times := append([]time.Time(nil), rcv.times...)
			rcv.mu.Unlock()
			// Jitter takes at most half off: 30 ms, then 60 ms.
			if g := times[1].Sub(times[0]); g < 30*time.Millisecond {
				t.Errorf("first retry after %v, want at least 30ms", g)
			}
			if g := times[2].Sub(times[1]); g < 60*time.Millisecond {
				t.Errorf("second retry after %v, want at least 60ms", g)
			}
			var state string
			var attempts int
			var lastErr string
			if err := db.QueryRow(`SELECT state, attempts, last_error FROM gov_alerts`).Scan(&state, &attempts, &lastErr); err != nil {
				t.Fatal(err)
			}
			if state != "sent" || attempts != 3 || lastErr != "" {
				t.Errorf("row: %s after %d attempts, last_error %q", state, attempts, lastErr)
			}
			if d := a.Deliveries(); d != (AlertDeliveries{Delivered: 1, Failed: 2}) {
				t.Errorf("deliveries %+v, want 1 delivered after 2 failed", d)
			}
		})
	}
}

// TestAlertsGiveUpAndNeverStoreTheSecret: a receiver that always fails
// gets MaxAttempts tries, then the row is failed; its error names the
// status and the URL without its query.
func TestAlertsGiveUpAndNeverStoreTheSecret(t *testing.T) {
	rcv, srv := newReceiver(t, "s3cret")
	rcv.fail.Store(1 << 30)
	db := openAlertDB(t, alertDSN(t, store.SQLite))
	b := alertCostBudget("b_fail", 1_000_000)
	b.Alerts = []int{50}
	h := &fakeHeadroom{spent: map[string]int64{"b_fail": 1_000_000}, window: alertDay}
	now := alertDay.Add(time.Hour)
	var mu sync.Mutex
	a := newTestAlerter(t, db, &Policies{Budgets: []Budget{b}}, h, srv.URL+"/hook?token=query-secret", func(c *AlertConfig) {
		c.MaxAttempts = 3
		c.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	})
	for range 6 {
		a.tick(context.Background())
		mu.Lock()
		now = now.Add(time.Second) // past any test backoff
		mu.Unlock()
	}
	_, _, requests, _ := rcv.snapshot()
	var state, lastErr string
	if err := db.QueryRow(`SELECT state, last_error FROM gov_alerts`).Scan(&state, &lastErr); err != nil {
		t.Fatal(err)
	}
	if requests != 3 || state != "failed" {
		t.Errorf("%d requests, state %s; want 3 and failed", requests, state)
	}
	if d := a.Deliveries(); d != (AlertDeliveries{Failed: 3, Dropped: 1}) {
		t.Errorf("deliveries %+v, want 3 failed and the alert dropped", d)
	}
	if !strings.Contains(lastErr, "500") || !strings.Contains(lastErr, "/hook") || strings.Contains(lastErr, "query-secret") || strings.Contains(lastErr, "s3cret") {
		t.Errorf("last_error %q: want the status and path, never the query or secret", lastErr)
	}
}

// TestAlertsPendingRowOfACrashedReplicaIsTakenOver: the replica that won
// the insert dies before sending; once its claim lapses another replica
// sends the alert, once.
func TestAlertsPendingRowOfACrashedReplicaIsTakenOver(t *testing.T) {
	for _, engine := range alertEngines() {
		t.Run(engine, func(t *testing.T) {
			rcv, srv := newReceiver(t, "s3cret")
			dsn := alertDSN(t, engine)
			b := alertCostBudget("b_crash", 1_000_000)
			b.Alerts = []int{80}
			h := &fakeHeadroom{spent: map[string]int64{"b_crash": 900_000}, window: alertDay}
			pol := &Policies{Budgets: []Budget{b}}
			var mu sync.Mutex
			now := alertDay.Add(time.Hour)
			clock := func(c *AlertConfig) { c.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now } }
			dead := newTestAlerter(t, openAlertDB(t, dsn), pol, h, srv.URL, clock)
			if owned := dead.check(context.Background()); len(owned) != 1 {
				t.Fatalf("the first replica owns %d alerts, want 1", len(owned))
			}
			// It "crashes" here, holding the claim.
			live := newTestAlerter(t, openAlertDB(t, dsn), pol, h, srv.URL, clock)
			live.tick(context.Background())
			if d, _, _, _ := rcv.snapshot(); len(d) != 0 {
				t.Fatalf("sent %v while the first replica's claim held", d)
			}
			mu.Lock()
			now = now.Add(alertClaim + time.Second)
			mu.Unlock()
			live.tick(context.Background())
			live.tick(context.Background())
			if d, _, _, _ := rcv.snapshot(); len(d) != 1 || d[0] != "b_crash:"+itoa(alertDay.Unix())+":80" {
				t.Errorf("after the claim lapsed: %v, want the one alert", d)
			}
		})
	}
}

func TestAlerterRefusesBadConfig(t *testing.T) {
	db := openAlertDB(t, alertDSN(t, store.SQLite))
	h := &fakeHeadroom{spent: map[string]int64{}}
	for _, tc := range []struct {
		name string
		cfg  AlertConfig
		want string
	}{
		{"Scheme", AlertConfig{URL: "file:///etc/passwd", Secret: []byte("x")}, "http:// or https://"},
		{"NoHost", AlertConfig{URL: "http:///hook", Secret: []byte("x")}, "no host"},
		{"NoSecret", AlertConfig{URL: "https://example.test/hook"}, "SECRET is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := newAlerter(context.Background(), db, staticPolicies{&Policies{}}, h, tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error saying %q", err, tc.want)
			}
		})
	}
	if _, err := NewAlerter(context.Background(), db, staticPolicies{&Policies{}}, nil, AlertConfig{URL: "https://example.test", Secret: []byte("x")}); err == nil {
		t.Error("alerts without a ledger: no error")
	}
	if _, err := NewAlerter(context.Background(), db, staticPolicies{&Policies{}}, nil, AlertConfig{}); err != nil {
		t.Errorf("disabled alerts without a ledger: %v", err)
	}
}

// TestAlertsDoNotFollowRedirectsElsewhere: a receiver redirecting to
// another host does not get the signed body forwarded there.
func TestAlertsDoNotFollowRedirectsElsewhere(t *testing.T) {
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { elsewhere.Add(1) }))
	defer other.Close()
	otherURL := strings.Replace(other.URL, "127.0.0.1", "localhost", 1) // another host name, still loopback
	redir := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, otherURL+"/steal", http.StatusTemporaryRedirect)
	}))
	defer redir.Close()
	db := openAlertDB(t, alertDSN(t, store.SQLite))
	b := alertCostBudget("b_redir", 1_000_000)
	b.Alerts = []int{50}
	h := &fakeHeadroom{spent: map[string]int64{"b_redir": 1_000_000}, window: alertDay}
	a := newTestAlerter(t, db, &Policies{Budgets: []Budget{b}}, h, redir.URL, nil)
	a.tick(context.Background())
	var state, lastErr string
	if err := db.QueryRow(`SELECT state, last_error FROM gov_alerts`).Scan(&state, &lastErr); err != nil {
		t.Fatal(err)
	}
	if elsewhere.Load() != 0 || state != "pending" || !strings.Contains(lastErr, "307") {
		t.Errorf("redirect: %d requests elsewhere, state %s, last_error %q", elsewhere.Load(), state, lastErr)
	}
}

func TestCrossedAndRollingWindowKey(t *testing.T) {
	for _, tc := range []struct {
		spent, limit int64
		t            int
		want         bool
	}{
		{49, 100, 50, false}, {50, 100, 50, true}, {3, 5, 50, true}, {2, 5, 50, false},
		{1, 3, 34, false}, {2, 3, 34, true}, {1, 3, 33, true}, {0, 0, 50, false}, {1 << 62, 1 << 61, 150, true}, {1<<61 + 1<<60 - 1, 1 << 61, 150, false},
	} {
		if got := crossed(tc.spent, tc.limit, tc.t); got != tc.want {
			t.Errorf("crossed(%d, %d, %d) = %v", tc.spent, tc.limit, tc.t, got)
		}
	}
	b := alertCostBudget("r", 1)
	b.Window = Window{Kind: WindowRolling, Every: 5 * time.Hour}
	k1 := windowKey(Headroom{Budget: b, WindowStart: alertDay.Add(time.Hour)})
	k2 := windowKey(Headroom{Budget: b, WindowStart: alertDay.Add(4 * time.Hour)})
	k3 := windowKey(Headroom{Budget: b, WindowStart: alertDay.Add(6 * time.Hour)})
	if k1 != k2 || k2 == k3 {
		t.Errorf("rolling keys %d %d %d: want one key per 5h slot", k1, k2, k3)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// TestAlertsFromTheRealLedger: spend settled through the budget ledger by
// usage records crosses 50, 80 and 100 % and sends three alerts; the next
// day's window sends its own.
func TestAlertsFromTheRealLedger(t *testing.T) {
	eachEngine(t, func(t *testing.T, r *rig) {
		rcv, srv := newReceiver(t, "s3cret")
		b := costBudget("b_real", 10_000_000, ModeSoft, day)
		b.Normalize()
		a, err := NewAlerter(context.Background(), r.db, staticPolicies{&Policies{Budgets: []Budget{b}}}, r.l,
			AlertConfig{URL: srv.URL, Secret: []byte("s3cret"), Now: r.clk.Now, Log: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		for i, step := range []struct {
			cost int64
			want int
		}{{4_000_000, 0}, {1_000_000, 1}, {3_500_000, 2}, {1_500_000, 3}} {
			id := "req-" + strconv.Itoa(i)
			if ref := r.reserve(t, id, Charge{Budget: b, Amount: 2_810_000}); ref != nil {
				t.Fatalf("%s refused: %v", id, ref)
			}
			rec := okRecord(id, step.cost)
			rec.Start = r.clk.Now()
			r.settle(t, rec)
			a.tick(context.Background())
			if d, _, _, _ := rcv.snapshot(); len(d) != step.want {
				t.Fatalf("after %s: %d alerts %v, want %d", id, len(d), d, step.want)
			}
		}
		_, payloads, _, bad := rcv.snapshot()
		if bad != 0 || payloads[2]["threshold_percent"] != float64(100) || payloads[2]["spent_usd"] != "10.00" {
			t.Errorf("100%% alert: %v (%d badly signed)", payloads[2], bad)
		}
		r.clk.Add(24 * time.Hour)
		if ref := r.reserve(t, "next-day", Charge{Budget: b, Amount: 2_810_000}); ref != nil {
			t.Fatal(ref)
		}
		rec := okRecord("next-day", 6_000_000)
		rec.Start = r.clk.Now()
		r.settle(t, rec)
		a.tick(context.Background())
		if d, _, _, _ := rcv.snapshot(); len(d) != 4 || !strings.HasSuffix(d[3], ":50") {
			t.Errorf("next day: %v, want one more alert at 50%%", d)
		}
	})
}

// TestAlertsPruneOldWindows: the rows of windows that started more than
// 35 days (or two windows) before the budget's current one are deleted,
// and those of budgets deleted more than 35 days ago; the current and
// recent windows, a lifetime budget's row and a new budget's rows not yet
// in this replica's snapshot stay; a pending row pruned counts as
// dropped; a pass deletes at most alertPruneBatch rows and the next check
// goes on with the rest; a snapshot never loaded prunes nothing.
func TestAlertsPruneOldWindows(t *testing.T) {
	for _, engine := range alertEngines() {
		t.Run(engine, func(t *testing.T) {
			ctx := context.Background()
			db := openAlertDB(t, alertDSN(t, engine))
			now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
			dayB := alertCostBudget("b_day", 1_000_000)
			monthB := alertCostBudget("b_month", 1_000_000)
			monthB.Window = Window{Kind: WindowMonth}
			lifeB := alertCostBudget("b_life", 1_000_000)
			lifeB.Window = Window{Kind: WindowLifetime}
			rollB := alertCostBudget("b_roll", 1_000_000)
			rollB.Window = Window{Kind: WindowRolling, Every: 5 * time.Hour}
			bulkB := alertCostBudget("b_bulk", 1_000_000)
			pol := &Policies{Budgets: []Budget{dayB, monthB, lifeB, rollB, bulkB}}
			a := newTestAlerter(t, db, pol, &fakeHeadroom{spent: map[string]int64{}, window: alertDay}, "", func(c *AlertConfig) {
				c.Now = func() time.Time { return now }
			})
			rollNow := windowKey(Headroom{Budget: rollB, WindowStart: windowOf(rollB, now).start})
			d := func(n int) int64 { return now.AddDate(0, 0, -n).Truncate(24 * time.Hour).Unix() }
			month := func(n int) int64 { return time.Date(2026, time.Month(12-n), 1, 0, 0, 0, 0, time.UTC).Unix() }
			type row struct {
				budget  string
				window  int64
				state   string
				created time.Time
				kept    bool
			}
			rows := []row{
				{"b_day", d(0), alertSent, now, true},
				{"b_day", d(34), alertSent, now.AddDate(0, 0, -34), true},
				{"b_day", d(36), alertPending, now.AddDate(0, 0, -36), false},
				{"b_day", d(60), alertFailed, now.AddDate(0, 0, -60), false},
				{"b_month", month(0), alertSent, now, true},
				{"b_month", month(2), alertSent, now.AddDate(0, -2, 0), true}, // 63 days, but only two windows back
				{"b_month", month(3), alertSent, now.AddDate(0, -3, 0), false},
				{"b_life", 0, alertSent, now.AddDate(-1, 0, 0), true},
				{"b_roll", rollNow, alertSent, now, true},
				{"b_roll", rollNow - 36*24*3600, alertSent, now.AddDate(0, 0, -36), false},
				{"b_gone", d(40), alertSent, now.AddDate(0, 0, -40), false},
				{"b_new", d(0), alertSent, now.AddDate(0, 0, -1), true}, // not in the snapshot yet
			}
			insert := func(r row, threshold int) {
				t.Helper()
				if _, err := db.ExecContext(ctx, `INSERT INTO gov_alerts
	(budget_id, window_start, threshold, state, attempts, next_attempt_at, last_error, payload, created_at)
	VALUES ($1, $2, $3, $4, 1, 0, '', '{}', $5)`, r.budget, r.window, threshold, r.state, r.created.UnixMilli()); err != nil {
					t.Fatal(err)
				}
			}
			for _, r := range rows {
				insert(r, 50)
			}
			// A backlog past one pass: old windows of one budget.
			const bulk = alertPruneBatch + 5
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			for i := range bulk {
				if _, err := tx.ExecContext(ctx, `INSERT INTO gov_alerts
	(budget_id, window_start, threshold, state, attempts, next_attempt_at, last_error, payload, created_at)
	VALUES ('b_bulk', $1, 50, 'sent', 1, 0, '', '{}', 0)`, d(40+i)); err != nil {
					t.Fatal(err)
				}
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			count := func(q string, args ...any) int {
				t.Helper()
				var n int
				if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM gov_alerts `+q, args...).Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n
			}

			// Version 0: the snapshot was never loaded; every budget would
			// look deleted.
			if n, err := a.prune(ctx, now); err != nil || n != 0 {
				t.Fatalf("prune with an unloaded snapshot: %d %v", n, err)
			}
			pol.Version = 7
			a.tick(ctx)
			if got := count(""); got != len(rows)+bulk-alertPruneBatch {
				t.Fatalf("after one check: %d rows, want %d (one batch of %d pruned)", got, len(rows)+bulk-alertPruneBatch, alertPruneBatch)
			}
			a.tick(ctx) // the batch was full: the next check goes on
			for _, r := range rows {
				if got := count(`WHERE budget_id = $1 AND window_start = $2`, r.budget, r.window); got != map[bool]int{true: 1, false: 0}[r.kept] {
					t.Errorf("%s window %s: %d rows, kept should be %v", r.budget, time.Unix(r.window, 0).UTC().Format(time.DateOnly), got, r.kept)
				}
			}
			if got := count(`WHERE budget_id = 'b_bulk'`); got != 0 {
				t.Errorf("%d bulk rows left", got)
			}
			if d := a.Deliveries(); d.Dropped != 1 || d.Delivered != 0 || d.Failed != 0 {
				t.Errorf("deliveries %+v, want the one pending row dropped", d)
			}
			// Nothing is due until alertPruneEvery has passed.
			insert(row{"b_day", d(50), alertSent, now, false}, 80)
			a.tick(ctx)
			if got := count(`WHERE threshold = 80`); got != 1 {
				t.Errorf("pruned again before alertPruneEvery: %d", got)
			}
			now = now.Add(alertPruneEvery)
			a.tick(ctx)
			if got := count(`WHERE threshold = 80`); got != 0 {
				t.Errorf("not pruned after alertPruneEvery: %d", got)
			}
		})
	}
}
