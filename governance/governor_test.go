package governance

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/registry"
)

// govPolicies is a swappable PolicySource (the Watcher is tested with the
// store).
type govPolicies struct{ p atomic.Pointer[Policies] }

func (s *govPolicies) Current() *Policies { return s.p.Load() }

func (s *govPolicies) set(p Policies) {
	for i := range p.Budgets {
		p.Budgets[i].Normalize()
	}
	for i := range p.Limits {
		p.Limits[i].Normalize()
	}
	s.p.Store(&p)
}

func govRequest(id, project, model string) Request {
	return Request{RequestID: id, Scope: Scope{Project: project, User: "u", Workspace: "ws", TokenID: "t"},
		Dialect: "anthropic-messages", Provider: "anthropic", Model: model, Metered: true,
		Body: []byte(`{"model":"` + model + `","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`)}
}

func tokensBudget(id, project string, limit int64, mode Mode) Budget {
	return Budget{ID: id, Selector: Selector{ScopeType: ScopeProject, ScopeID: project}, Metric: MetricTokens,
		Limit: limit, Window: Window{Kind: WindowDay}, Mode: mode}
}

func refusalOf(t *testing.T, err error) *Refusal {
	t.Helper()
	var ref *Refusal
	if !errors.As(err, &ref) {
		t.Fatalf("want a *Refusal, got %v", err)
	}
	return ref
}

// TestGovernorUngovernedAllocatesNothing: with no policy, with policies
// for other scopes, and on non-metered paths, Admit returns nil without an
// allocation: governance off costs the request path nothing.
func TestGovernorUngovernedAllocatesNothing(t *testing.T) {
	pol := &govPolicies{}
	g := New(Config{Policies: pol})
	req := govRequest("req_1", "acme", "claude-sonnet-4-5")
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		p    Policies
		req  Request
	}{
		{"no policy", Policies{}, req},
		{"other scopes' policies", Policies{
			Budgets: []Budget{tokensBudget("b", "other", 10, ModeHard)},
			Limits:  []Limit{{ID: "l", Selector: Selector{ScopeType: ScopeProject, ScopeID: "other"}, RPM: 1}},
			Rules:   []ModelRule{{ID: "r", ScopeType: ScopeProject, ScopeID: "other", Kind: RuleDeny, Pattern: "*"}},
		}, req},
		{"not metered", Policies{Rules: []ModelRule{{ID: "r", ScopeType: ScopePlatform, Kind: RuleDeny, Pattern: "*"}}},
			func() Request { r := req; r.Metered = false; return r }()},
	} {
		pol.set(tc.p)
		allocs := testing.AllocsPerRun(200, func() {
			if a, err := g.Admit(ctx, tc.req); a != nil || err != nil {
				t.Fatalf("%s: admission %+v err %v", tc.name, a, err)
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocations per Admit, want 0", tc.name, allocs)
		}
	}
	var nilGov *Governor
	if a, err := nilGov.Admit(ctx, req); a != nil || err != nil {
		t.Fatalf("nil governor: %v %v", a, err)
	}
}

// TestGovernorModelPolicyComesFirst: a denied model is refused before any
// limit or budget is touched, and an alias's target is what budgets and
// limits select on.
func TestGovernorModelPolicyComesFirst(t *testing.T) {
	r := openRig(t, ledgerDSN(t, "sqlite"), newClock(time.Now()), "a")
	pol := &govPolicies{}
	g := New(Config{Policies: pol, Ledger: r.l, Limiter: NewLocalLimiter(LocalConfig{MaxWait: -1})})
	b := tokensBudget("opus", "acme", 1<<40, ModeSoft)
	b.Model = "claude-opus-*"
	pol.set(Policies{
		Budgets: []Budget{b},
		Limits:  []Limit{{ID: "one", Selector: Selector{ScopeType: ScopeProject, ScopeID: "acme"}, Concurrency: 1}},
		Rules: []ModelRule{
			{ID: "deny", ScopeType: ScopePlatform, Kind: RuleDeny, Pattern: "gpt-*"},
			{ID: "alias", ScopeType: ScopeProject, ScopeID: "acme", Kind: RuleAlias, Pattern: "big", Target: "claude-opus-4-5"},
		},
	})
	ctx := context.Background()
	_, err := g.Admit(ctx, govRequest("req_d", "acme", "gpt-5"))
	if ref := refusalOf(t, err); ref.Kind != RefuseModel {
		t.Fatalf("denied model: %+v", ref)
	}
	a, err := g.Admit(ctx, govRequest("req_a", "acme", "big"))
	if err != nil {
		t.Fatal(err)
	}
	if a.Model != "claude-opus-4-5" || !a.Reserved {
		t.Fatalf("alias admission %+v: want the target, reserved against the opus budget", a)
	}
	// The refused request took no slot; this one holds the only one.
	_, err = g.Admit(ctx, govRequest("req_b", "acme", "claude-opus-4-5"))
	if ref := refusalOf(t, err); ref.Kind != RefuseConcurrency {
		t.Fatalf("second in flight: %+v", ref)
	}
	a.Finish(okRecord("req_a", 0))
	if _, err := g.Admit(ctx, govRequest("req_c", "acme", "claude-opus-4-5")); err != nil {
		t.Fatalf("after Finish the slot is free: %v", err)
	}
}

// TestGovernorBudgetRefusalReleasesThePermit: a request the budget refuses
// gives its rate-limit slot back.
func TestGovernorBudgetRefusalReleasesThePermit(t *testing.T) {
	r := openRig(t, ledgerDSN(t, "sqlite"), newClock(time.Now()), "a")
	pol := &govPolicies{}
	g := New(Config{Policies: pol, Ledger: r.l, Limiter: NewLocalLimiter(LocalConfig{MaxWait: -1})})
	b := tokensBudget("b", "acme", 1, ModeSoft)
	lim := Limit{ID: "one", Selector: Selector{ScopeType: ScopeProject, ScopeID: "acme"}, Concurrency: 1}
	pol.set(Policies{Budgets: []Budget{b}, Limits: []Limit{lim}})
	ctx := context.Background()
	// Spend the budget: 15 tokens settled against a limit of 1.
	a, err := g.Admit(ctx, govRequest("req_1", "acme", "m"))
	if err != nil {
		t.Fatal(err)
	}
	a.Finish(okRecord("req_1", 0))
	r.settle(t, okRecord("req_1", 0))
	for i := range 3 {
		_, err := g.Admit(ctx, govRequest("req_x"+string(rune('a'+i)), "acme", "m"))
		if ref := refusalOf(t, err); ref.Kind != RefuseBudget {
			t.Fatalf("spent budget: %+v", ref)
		}
	}
	pol.set(Policies{Limits: []Limit{lim}})
	if _, err := g.Admit(ctx, govRequest("req_2", "acme", "m")); err != nil {
		t.Fatalf("the budget's refusals kept the concurrency slot: %v", err)
	}
}

// TestGovernorUnpricedUnderCostBudget (N6): a model the price table does
// not know is refused under a cost budget that refuses unpriced models,
// naming the model; an alert budget never refuses.
func TestGovernorUnpricedUnderCostBudget(t *testing.T) {
	r := openRig(t, ledgerDSN(t, "sqlite"), newClock(time.Now()), "a")
	pol := &govPolicies{}
	g := New(Config{Policies: pol, Ledger: r.l})
	b := Budget{ID: "cost", Selector: Selector{ScopeType: ScopeProject, ScopeID: "acme"}, Metric: MetricCost,
		Limit: 50_000_000, Window: Window{Kind: WindowMonth}, Mode: ModeHard}
	pol.set(Policies{Budgets: []Budget{b}})
	_, err := g.Admit(context.Background(), govRequest("req_1", "acme", "model-nobody-prices"))
	ref := refusalOf(t, err)
	if ref.Kind != RefuseBudget || !strings.Contains(ref.Message, "model-nobody-prices") || ref.Policy != "project:acme/budget" {
		t.Fatalf("unpriced: %+v", ref)
	}
	b.Mode = ModeAlert
	pol.set(Policies{Budgets: []Budget{b}})
	if _, err := g.Admit(context.Background(), govRequest("req_2", "acme", "model-nobody-prices")); err != nil {
		t.Fatalf("alert budget refused: %v", err)
	}
}

// TestGovernorWithoutLedgerFailsClosed (N18): budgets with no reachable
// ledger refuse capped requests retryably; alert-only budgets pass.
func TestGovernorWithoutLedgerFailsClosed(t *testing.T) {
	pol := &govPolicies{}
	g := New(Config{Policies: pol})
	pol.set(Policies{Budgets: []Budget{tokensBudget("b", "acme", 100, ModeSoft)}})
	_, err := g.Admit(context.Background(), govRequest("req_1", "acme", "m"))
	if ref := refusalOf(t, err); ref.Kind != RefuseUnavailable || ref.RetryAfter != UnavailableRetryAfter {
		t.Fatalf("no ledger: %+v", ref)
	}
	pol.set(Policies{Budgets: []Budget{tokensBudget("b", "acme", 100, ModeAlert)}})
	if _, err := g.Admit(context.Background(), govRequest("req_2", "acme", "m")); err != nil {
		t.Fatalf("alert-only with no ledger: %v", err)
	}

	r := openRig(t, ledgerDSN(t, "sqlite"), newClock(time.Now()), "a")
	g = New(Config{Policies: pol, Ledger: r.l})
	pol.set(Policies{Budgets: []Budget{tokensBudget("b", "acme", 100, ModeHard)}})
	r.db.Close()
	_, err = g.Admit(context.Background(), govRequest("req_3", "acme", "m"))
	if ref := refusalOf(t, err); ref.Kind != RefuseUnavailable {
		t.Fatalf("ledger down: %+v", ref)
	}
}

// TestGovernorReleaseAndEffective: Release gives the reservation back
// (released, nothing reserved) and counts once; Effective lists every
// policy in force with each budget's headroom.
func TestGovernorReleaseAndEffective(t *testing.T) {
	r := openRig(t, ledgerDSN(t, "sqlite"), newClock(time.Now()), "a")
	pol := &govPolicies{}
	g := New(Config{Policies: pol, Ledger: r.l})
	b := tokensBudget("b", "acme", 100, ModeSoft)
	other := tokensBudget("o", "other", 100, ModeSoft)
	narrow := tokensBudget("n", "acme", 100, ModeSoft)
	narrow.Model = "claude-*"
	pol.set(Policies{
		Budgets: []Budget{b, other, narrow},
		Limits:  []Limit{{ID: "l", Selector: Selector{ScopeType: ScopeProject, ScopeID: "acme"}, RPM: 60}},
		Rules:   []ModelRule{{ID: "r", ScopeType: ScopePlatform, Kind: RuleDeny, Pattern: "gpt-3*"}},
	})
	ctx := context.Background()
	a, err := g.Admit(ctx, govRequest("req_1", "acme", "gemini-2.5-flash"))
	if err != nil || !a.Reserved {
		t.Fatalf("admit: %+v %v", a, err)
	}
	if st := r.reservationState(t, "req_1"); st != "held" {
		t.Fatalf("state %q", st)
	}
	a.Release(ctx)
	a.Release(ctx)
	a.Finish(nil)
	if st := r.reservationState(t, "req_1"); st != "released" {
		t.Fatalf("after Release: state %q", st)
	}
	states, err := g.Effective(ctx, Scope{Project: "acme"}, "")
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, s := range states {
		kinds[s.Kind]++
		if s.Kind == "budget" && (s.Headroom == nil || s.Headroom.Limit != 100 || s.Headroom.Reserved != 0) {
			t.Fatalf("budget state %+v", s)
		}
	}
	if kinds["budget"] != 2 || kinds["limit"] != 1 || kinds["model_rule"] != 1 {
		t.Fatalf("effective for acme: %v", kinds)
	}
	states, err = g.Effective(ctx, Scope{Project: "acme"}, "gemini-2.5-flash")
	if err != nil || len(states) != 3 {
		t.Fatalf("effective for acme and gemini: %d states, %v", len(states), err)
	}
}

// BenchmarkGovernorUngoverned is Admit's cost on every request while no
// policy applies to it.
func BenchmarkGovernorUngoverned(b *testing.B) {
	pol := &govPolicies{}
	pol.set(Policies{Budgets: []Budget{tokensBudget("b", "other", 10, ModeHard)}})
	g := New(Config{Policies: pol})
	req := govRequest("req_1", "acme", "claude-sonnet-4-5")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_, _ = g.Admit(ctx, req)
	}
}

// TestGovernorReservesTheDearestCandidate: a request whose binding can
// fail over reserves the largest ceiling over its candidates, each at the
// model its model_map sends. A hard budget that fits the first
// candidate's ceiling but not a dearer alternate's refuses before any
// upstream byte; with one candidate the same budget admits.
func TestGovernorReservesTheDearestCandidate(t *testing.T) {
	r := openRig(t, ledgerDSN(t, "sqlite"), newClock(time.Now()), "a")
	pol := &govPolicies{}
	prices := metering.DefaultPrices()
	g := New(Config{Policies: pol, Ledger: r.l, Prices: prices})
	const cheap, dear = "claude-haiku-5-5", "claude-opus-5-5"
	req := govRequest("req_1", "acme", cheap)
	cheapCeil := EstimateCeiling(prices, req.Dialect, "anthropic", cheap, req.Body, false)
	dearCeil := EstimateCeiling(prices, req.Dialect, "anthropic", dear, req.Body, false)
	if !cheapCeil.Priced || !dearCeil.Priced || dearCeil.CostMicroUSD <= cheapCeil.CostMicroUSD {
		t.Fatalf("test needs two priced ceilings, the second dearer: %+v %+v", cheapCeil, dearCeil)
	}
	b := Budget{ID: "cost", Selector: Selector{ScopeType: ScopeProject, ScopeID: "acme"}, Metric: MetricCost,
		Limit: cheapCeil.CostMicroUSD + 1, Window: Window{Kind: WindowMonth}, Mode: ModeHard}
	pol.set(Policies{Budgets: []Budget{b}})
	primary := &registry.Provider{Name: "anthropic"}
	mapped := &registry.Provider{Name: "anthropic", ModelMap: map[string]string{cheap: dear}}

	req.Candidates = []*registry.Provider{primary, mapped}
	_, err := g.Admit(context.Background(), req)
	if ref := refusalOf(t, err); ref.Kind != RefuseBudget || strings.Contains(ref.Message, "no price") {
		t.Fatalf("failover to the dearer model fits no reservation: want a budget refusal, got %+v", ref)
	}

	req.RequestID, req.Candidates = "req_2", nil
	a, err := g.Admit(context.Background(), req)
	if err != nil {
		t.Fatalf("one candidate: %v", err)
	}
	if a.ReservedMicroUSD != cheapCeil.CostMicroUSD {
		t.Fatalf("one candidate reserved %d, want its ceiling %d", a.ReservedMicroUSD, cheapCeil.CostMicroUSD)
	}
	a.Release(context.Background())

	b.Limit = 10 * dearCeil.CostMicroUSD
	pol.set(Policies{Budgets: []Budget{b}})
	req.RequestID, req.Candidates = "req_3", []*registry.Provider{primary, mapped}
	if a, err = g.Admit(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if a.ReservedMicroUSD != dearCeil.CostMicroUSD {
		t.Fatalf("two candidates reserved %d, want the dearer ceiling %d", a.ReservedMicroUSD, dearCeil.CostMicroUSD)
	}
	a.Release(context.Background())
}

// TestGovernorSeesPolicyChangeOnNextRequest: Admit remembers what each
// snapshot says of a scope and model (matchFor), and a change written to
// the store and reloaded, as the admin API does after its write, is
// enforced by the very next request of that scope and model on this
// replica: a deny added and removed, an alias retargeted, a limit added.
// The poll is a minute, so only the reload can deliver the change.
func TestGovernorSeesPolicyChangeOnNextRequest(t *testing.T) {
	forEachPolicyEngine(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		st := policyStore(t, db)
		w := startPolicyWatcher(t, st, WatchConfig{Poll: time.Minute, PollOnly: true})
		g := New(Config{Policies: w, Limiter: NewLocalLimiter(LocalConfig{MaxWait: -1})})
		req := govRequest("req", "acme", "claude-opus-5-5")
		change := func(write func() error) {
			t.Helper()
			if err := write(); err != nil {
				t.Fatal(err)
			}
			if err := w.Refresh(ctx); err != nil {
				t.Fatal(err)
			}
		}
		admit := func(model string) (*Admission, *Refusal) {
			t.Helper()
			r := req
			r.Model = model
			a, err := g.Admit(ctx, r)
			var ref *Refusal
			if err != nil && !errors.As(err, &ref) {
				t.Fatal(err)
			}
			return a, ref
		}
		rule := func(kind RuleKind, pattern, target string) ModelRule {
			return ModelRule{ScopeType: ScopeProject, ScopeID: "acme", Kind: kind, Pattern: pattern, Target: target}
		}

		change(func() error { _, err := st.PutRule(ctx, rule(RuleAllow, "claude-*", "")); return err })
		for range 3 { // remembered from the second request on
			if _, ref := admit("claude-opus-5-5"); ref != nil {
				t.Fatalf("allowed model refused: %+v", ref)
			}
		}
		var deny ModelRule
		change(func() (err error) { deny, err = st.PutRule(ctx, rule(RuleDeny, "claude-opus-*", "")); return err })
		if _, ref := admit("claude-opus-5-5"); ref == nil || ref.Kind != RefuseModel {
			t.Fatalf("the request after a deny was added: refusal %+v, want model_policy", ref)
		}
		change(func() error { return st.DeleteRule(ctx, deny.ID) })
		if _, ref := admit("claude-opus-5-5"); ref != nil {
			t.Fatalf("the request after the deny was deleted: refused %+v", ref)
		}

		var alias ModelRule
		change(func() (err error) {
			alias, err = st.PutRule(ctx, rule(RuleAlias, "fast", "claude-haiku-5-5"))
			return err
		})
		if a, ref := admit("fast"); ref != nil || a == nil || a.Model != "claude-haiku-5-5" {
			t.Fatalf("alias fast: admission %+v, refusal %+v; want claude-haiku-5-5", a, ref)
		}
		alias.Target = "claude-sonnet-5-5"
		change(func() error { _, err := st.PutRule(ctx, alias); return err })
		if a, ref := admit("fast"); ref != nil || a == nil || a.Model != "claude-sonnet-5-5" {
			t.Fatalf("the request after the alias was retargeted: admission %+v, refusal %+v; want claude-sonnet-5-5", a, ref)
		}

		change(func() error {
			_, err := st.PutLimit(ctx, Limit{Selector: Selector{ScopeType: ScopeProject, ScopeID: "acme"}, Concurrency: 1})
			return err
		})
		first, ref := admit("claude-opus-5-5")
		if ref != nil || first == nil {
			t.Fatalf("first request under a concurrency limit of 1: admission %+v, refusal %+v", first, ref)
		}
		defer first.Release(ctx)
		if _, ref := admit("claude-opus-5-5"); ref == nil || ref.Kind != RefuseConcurrency {
			t.Fatalf("second request in flight under a concurrency limit of 1: refusal %+v, want concurrency", ref)
		}
	})
}

// TestMatchForAgreesWithScan: past fewPolicies, where the memo is used,
// every match it returns, from its dirty map or its published one, is what
// the scan computes, from concurrent requests over many scopes.
func TestMatchForAgreesWithScan(t *testing.T) {
	var p Policies
	for i := range fewPolicies + 4 {
		p.Budgets = append(p.Budgets, tokensBudget(fmt.Sprintf("b%d", i), fmt.Sprintf("p%d", i%7), 1000, ModeSoft))
	}
	p.Limits = []Limit{{ID: "l", Selector: Selector{ScopeType: ScopeWorkspace, ScopeID: "w3", Model: "claude-*"}, RPM: 5}}
	p.Rules = []ModelRule{
		{ID: "a", ScopeType: ScopeProject, ScopeID: "p2", Kind: RuleAlias, Pattern: "fast", Target: "claude-haiku-5-5"},
		{ID: "d", ScopeType: ScopeProject, ScopeID: "p4", Kind: RuleDeny, Pattern: "gpt-*"},
	}
	pol := &govPolicies{}
	pol.set(p)
	g := New(Config{Policies: pol})
	snap := pol.Current()
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			for pass := range 3 {
				for i := range 300 {
					sc := Scope{Project: fmt.Sprintf("p%d", i%9), User: "u", Workspace: fmt.Sprintf("w%d", i%5), TokenID: fmt.Sprintf("t%d", (i+w)%150)}
					model := []string{"claude-opus-5-5", "fast", "gpt-5"}[i%3]
					got, want := g.matchFor(snap, sc, model), computeMatch(snap, sc, model)
					if got == nil || !reflect.DeepEqual(*got, *want) {
						t.Errorf("pass %d %+v %s: memo %+v, scan %+v", pass, sc, model, got, want)
						return
					}
				}
			}
		})
	}
	wg.Wait()
}
