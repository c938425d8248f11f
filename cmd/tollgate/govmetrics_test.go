package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/metering"
)

type govPolicies struct{ p *governance.Policies }

func (g govPolicies) Current() *governance.Policies { return g.p }

// countingHeadroom answers spent = 10 × the budget's index and counts its
// calls, so the test can tell a refresh from a scrape.
type countingHeadroom struct {
	mu    sync.Mutex
	calls int
}

func (c *countingHeadroom) Headroom(_ context.Context, bs []governance.Budget) ([]governance.Headroom, error) {
	c.mu.Lock()
	c.calls++
	c.mu.Unlock()
	out := make([]governance.Headroom, len(bs))
	for i, b := range bs {
		out[i] = governance.Headroom{Budget: b, Spent: int64(10 * i), Reserved: 3, Limit: b.Limit}
	}
	return out, nil
}

func (c *countingHeadroom) n() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls
}

type fakeRedis struct{ up atomic.Bool }

type fakeAlerts struct {
	d atomic.Pointer[governance.AlertDeliveries]
}

func (f *fakeAlerts) Deliveries() governance.AlertDeliveries { return *f.d.Load() }

func (f *fakeRedis) Healthy() bool { return f.up.Load() }

func scrape(t *testing.T, tel *telemetry) string {
	t.Helper()
	rec := httptest.NewRecorder()
	tel.handler.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return string(b)
}

// TestGovernanceMetricsOnMetrics: /metrics shows each budget's spent,
// reserved and limit with bounded labels (at most maxBudgetSeries budgets,
// the rest counted), refreshed from the ledger on its own schedule rather
// than per scrape; the Redis gauge follows the limiter; governance refusals
// from records are counted by kind.
func TestGovernanceMetricsOnMetrics(t *testing.T) {
	tel, err := newTelemetry(context.Background(), splitList(""), nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.shutdown(context.Background()) })
	var budgets []governance.Budget
	for i := range maxBudgetSeries + 7 {
		metric := governance.MetricCost
		if i%2 == 1 {
			metric = governance.MetricTokens
		}
		budgets = append(budgets, governance.Budget{ID: fmt.Sprintf("b%04d", i), Metric: metric, Limit: 1000,
			Selector: governance.Selector{ScopeType: governance.ScopeProject, ScopeID: "p"}, Window: governance.Window{Kind: governance.WindowDay}})
	}
	h := &countingHeadroom{}
	redis := &fakeRedis{}
	redis.up.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	alerts := &fakeAlerts{}
	alerts.d.Store(&governance.AlertDeliveries{Delivered: 4, Failed: 2, Dropped: 1})
	unregister, err := registerGovernanceOn(ctx, tel.provider.Meter(meterName), govPolicies{&governance.Policies{Budgets: budgets}}, h, redis, alerts, slog.New(slog.DiscardHandler), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	defer unregister()

	body := scrape(t, tel)
	for _, want := range []string{
		`tollgate_governance_budget_spent{budget_id="b0002",metric="cost",otel_scope_name="github.com/tollgate/tollgate"`,
		`tollgate_governance_budget_limit{budget_id="b0003",metric="tokens",otel_scope_name="github.com/tollgate/tollgate"`,
		`tollgate_governance_budgets_unexported{`,
		`tollgate_governance_redis_up{`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if !regexp.MustCompile(`(?m)^tollgate_governance_budget_spent\{budget_id="b0002",[^}]*scope_type="project"[^}]*\} 20$`).MatchString(body) {
		t.Errorf("spent of b0002 is not 20:\n%s", grepLines(body, `budget_id="b0002"`))
	}
	if !regexp.MustCompile(`(?m)^tollgate_governance_budgets_unexported\{[^}]*\} 7$`).MatchString(body) {
		t.Errorf("unexported budgets: %s", grepLines(body, "unexported"))
	}
	if !regexp.MustCompile(`(?m)^tollgate_governance_redis_up\{[^}]*\} 1$`).MatchString(body) {
		t.Errorf("redis up: %s", grepLines(body, "redis_up"))
	}
	if n := strings.Count(body, "\ntollgate_governance_budget_spent{"); n != maxBudgetSeries {
		t.Errorf("%d spent series, want the bound %d", n, maxBudgetSeries)
	}
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "tollgate_governance_budget_") && (strings.Contains(l, `budget_id="b1000"`) || strings.Contains(l, `budget_id="b1006"`)) {
			t.Errorf("a budget past the bound is exported: %s", l)
		}
	}
	calls := h.n()
	for range 5 {
		scrape(t, tel)
	}
	if h.n() != calls {
		t.Errorf("scrapes read the ledger: %d calls, then %d", calls, h.n())
	}
	redis.up.Store(false)
	if body := scrape(t, tel); !regexp.MustCompile(`(?m)^tollgate_governance_redis_up\{[^}]*\} 0$`).MatchString(body) {
		t.Errorf("redis down: %s", grepLines(body, "redis_up"))
	}
	// Alert deliveries: a counter per outcome, three series, read at scrape.
	alerts.d.Store(&governance.AlertDeliveries{Delivered: 5, Failed: 2, Dropped: 3})
	body = scrape(t, tel)
	for outcome, n := range map[string]int{"delivered": 5, "failed": 2, "dropped": 3} {
		if !regexp.MustCompile(`(?m)^tollgate_governance_alerts_total\{[^}]*outcome="` + outcome + `"[^}]*\} ` + fmt.Sprint(n) + `$`).MatchString(body) {
			t.Errorf("alerts{outcome=%s} != %d: %s", outcome, n, grepLines(body, "governance_alerts"))
		}
	}
	if n := strings.Count(body, "\ntollgate_governance_alerts_total{"); n != 3 {
		t.Errorf("%d alert series, want 3", n)
	}

	for _, kind := range []string{"budget", "budget", "model_policy", "invented"} {
		tel.instruments.Observe(&metering.Record{RequestID: "r", Operation: "chat", Provider: "anthropic", Outcome: metering.OutcomeRejected,
			Source: metering.SourceNone, Governance: kind}, time.Millisecond)
	}
	body = scrape(t, tel)
	for kind, n := range map[string]int{"budget": 2, "model_policy": 1, "other": 1, "rate_limit": 0} {
		re := regexp.MustCompile(`(?m)^tollgate_governance_refusals_total\{kind="` + kind + `"[^}]*\} ` + fmt.Sprint(n) + `$`)
		if !re.MatchString(body) {
			t.Errorf("refusals{kind=%s} != %d: %s", kind, n, grepLines(body, "governance_refusals_total"))
		}
	}
	if n := strings.Count(body, "\ntollgate_governance_refusals_total{"); n != len(metering.GovernanceRefusalKinds)+1 {
		t.Errorf("%d refusal series, want the kinds plus other", n)
	}
}

// TestGovernanceRefusalKindsMatchMetering: metering cannot import
// governance, so its bounded list of kinds is checked here.
func TestGovernanceRefusalKindsMatchMetering(t *testing.T) {
	kinds := []string{string(governance.RefuseRateLimit), string(governance.RefuseConcurrency), string(governance.RefuseBudget),
		string(governance.RefuseModel), string(governance.RefuseUnavailable)}
	if !slices.Equal(slices.Sorted(slices.Values(kinds)), slices.Sorted(slices.Values(metering.GovernanceRefusalKinds))) {
		t.Errorf("metering.GovernanceRefusalKinds %v, governance's kinds %v", metering.GovernanceRefusalKinds, kinds)
	}
}

// TestGovernanceMetricsWithoutRedis: no limiter configured (a nil
// *RedisLimiter too) exports no Redis gauge, and no alerter no alert
// counter.
func TestGovernanceMetricsWithoutRedis(t *testing.T) {
	tel, err := newTelemetry(context.Background(), splitList(""), nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.shutdown(context.Background()) })
	var rl *governance.RedisLimiter
	var al *governance.Alerter
	unregister, err := tel.registerGovernance(t.Context(), govPolicies{&governance.Policies{}}, &countingHeadroom{}, rl, al, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer unregister()
	if body := scrape(t, tel); strings.Contains(body, "redis_up") || strings.Contains(body, "governance_alerts") || !strings.Contains(body, "tollgate_governance_budgets_unexported") {
		t.Errorf("without redis or alerts: %s", grepLines(body, "governance"))
	}
}

func grepLines(body, sub string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
