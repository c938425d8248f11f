package governance

import (
	"context"
	"testing"
	"time"
)

// TestUnmeteredRequestsHaveTheirOwnRPMBucket: a non-metered request
// (count_tokens, a model list) is held to each RPM limit of its scope in
// a bucket of its own: it neither takes a metered request's place nor
// gets one's; TPM, concurrency, budgets and model rules never apply to it,
// nor do limits narrowed to a model it does not name; with nothing that
// applies, it costs no allocation.
func TestUnmeteredRequestsHaveTheirOwnRPMBucket(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	pol := &govPolicies{}
	g := New(Config{Policies: pol, Limiter: NewLocalLimiter(LocalConfig{MaxWait: -1, Now: func() time.Time { return now }})})
	acme := Selector{ScopeType: ScopeProject, ScopeID: "acme"}
	pol.set(Policies{
		// RPM 2 admits one at once (a burst of one), then one per 30 s.
		Limits:  []Limit{{ID: "rpm", Selector: acme, RPM: 2}, {ID: "conc", Selector: acme, Concurrency: 1, TPM: 1}},
		Budgets: []Budget{tokensBudget("b", "acme", 1, ModeHard)},
		Rules:   []ModelRule{{ID: "r", ScopeType: ScopePlatform, Kind: RuleDeny, Pattern: "*"}},
	})
	unmetered := func(id string) Request {
		r := govRequest(id, "acme", "")
		r.Metered, r.Body = false, nil
		return r
	}
	admit := func(req Request) *Refusal {
		t.Helper()
		a, err := g.Admit(ctx, req)
		if a != nil {
			t.Fatalf("%s: an admission %+v for a non-metered request", req.RequestID, a)
		}
		if err == nil {
			return nil
		}
		return refusalOf(t, err)
	}
	if ref := admit(unmetered("u1")); ref != nil {
		t.Fatalf("first non-metered request refused: %+v (a TPM, concurrency, budget or deny rule applied?)", ref)
	}
	ref := admit(unmetered("u2"))
	if ref == nil || ref.Kind != RefuseRateLimit || ref.Policy != "project:acme/rpm" || ref.Limit != 2 || ref.RetryAfter <= 0 {
		t.Fatalf("second non-metered request: %+v, want the RPM refusal", ref)
	}

	// The metered requests' bucket is untouched by the two above.
	pol.set(Policies{Limits: []Limit{{ID: "rpm", Selector: acme, RPM: 2}}})
	a, err := g.Admit(ctx, govRequest("m1", "acme", "claude-sonnet-4-5"))
	if err != nil || a == nil {
		t.Fatalf("metered request after the non-metered ones: %v %v", a, err)
	}
	a.Release(ctx)
	if _, err := g.Admit(ctx, govRequest("m2", "acme", "claude-sonnet-4-5")); err == nil {
		t.Fatal("second metered request admitted: the RPM limit does not hold")
	}
	// Half a minute later one of each fits again.
	now = now.Add(30 * time.Second)
	if ref := admit(unmetered("u3")); ref != nil {
		t.Fatalf("non-metered request after its bucket refilled: %+v", ref)
	}
	if a, err := g.Admit(ctx, govRequest("m3", "acme", "claude-sonnet-4-5")); err != nil || a == nil {
		t.Fatalf("metered request after its bucket refilled: %v %v", a, err)
	}

	// A limit narrowed to a model the request does not name, another
	// scope's limit, or a limit without RPM: nothing applies, nothing is
	// allocated.
	for _, p := range []Policies{
		{Limits: []Limit{{ID: "m", Selector: Selector{ScopeType: ScopeProject, ScopeID: "acme", Model: "claude-*"}, RPM: 1}}},
		{Limits: []Limit{{ID: "o", Selector: Selector{ScopeType: ScopeProject, ScopeID: "other"}, RPM: 1}}},
		{Limits: []Limit{{ID: "t", Selector: acme, TPM: 1, Concurrency: 1}}},
		{},
	} {
		pol.set(p)
		req := unmetered("u")
		if allocs := testing.AllocsPerRun(100, func() {
			if ref := admit(req); ref != nil {
				t.Fatalf("%+v: refused %+v", p.Limits, ref)
			}
		}); allocs != 0 {
			t.Errorf("%+v: %v allocations per Admit, want 0", p.Limits, allocs)
		}
	}
	// A model-narrowed limit does apply to a count_tokens that names its
	// model (Gemini's path carries it).
	pol.set(Policies{Limits: []Limit{{ID: "m", Selector: Selector{ScopeType: ScopeProject, ScopeID: "acme", Model: "gemini-*"}, RPM: 2}}})
	req := unmetered("g1")
	req.Model = "gemini-2.5-flash"
	if ref := admit(req); ref != nil {
		t.Fatalf("first gemini countTokens: %+v", ref)
	}
	req.RequestID = "g2"
	if ref := admit(req); ref == nil {
		t.Fatal("second gemini countTokens admitted under its model's RPM limit")
	}
}
