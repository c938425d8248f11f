package governance

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/internal/testkit"
)

// policyDB opens a SQLite file in t.TempDir(), or a fresh schema on
// TOLLGATE_TEST_POSTGRES when pg is set (skipping without it).
func policyDB(t *testing.T, pg bool) *store.DB {
	t.Helper()
	dsn := filepath.Join(t.TempDir(), "gov.db")
	if pg {
		url := os.Getenv("TOLLGATE_TEST_POSTGRES")
		if url == "" {
			t.Skip("TOLLGATE_TEST_POSTGRES is not set")
		}
		dsn = testkit.PostgresSchema(t, url, "gov_store_")
	}
	db, err := store.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func policyStore(t *testing.T, db *store.DB) *Store {
	t.Helper()
	st, err := OpenStore(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func forEachPolicyEngine(t *testing.T, f func(t *testing.T, db *store.DB)) {
	t.Run("sqlite", func(t *testing.T) { f(t, policyDB(t, false)) })
	t.Run("postgres", func(t *testing.T) { f(t, policyDB(t, true)) })
}

var policyIDForm = regexp.MustCompile(`^(bud|lim|rule)_[a-z2-7]{16}$`)

// TestStoreBudgetCRUD: create, read, list, edit and delete a budget; the
// edit keeps the id and created_at (the ledger's spend is keyed by the id,
// N13), and every write moves the version.
func TestStoreBudgetCRUD(t *testing.T) {
	forEachPolicyEngine(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		st := policyStore(t, db)
		clock := time.Date(2026, 12, 3, 10, 0, 0, 123456789, time.UTC)
		st.now = func() time.Time { return clock }
		v0, _ := st.Version(ctx)

		b, err := st.PutBudget(ctx, Budget{Selector: Selector{ScopeType: ScopeProject, ScopeID: "acme", Model: "claude-*"},
			Metric: MetricCost, Limit: 50_000_000, Window: Window{Kind: WindowMonth}})
		if err != nil {
			t.Fatal(err)
		}
		if !policyIDForm.MatchString(b.ID) || !strings.HasPrefix(b.ID, "bud_") {
			t.Errorf("id %q", b.ID)
		}
		if b.Mode != ModeSoft || b.Unpriced != UnpricedRefuse || len(b.Alerts) != 3 {
			t.Errorf("defaults not filled: %+v", b)
		}
		got, err := st.Budget(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Window != b.Window || got.Limit != b.Limit || got.Model != "claude-*" || formatAlerts(got.Alerts) != "50,80,100" ||
			!got.CreatedAt.Equal(clock.Truncate(time.Microsecond)) || got.CreatedAt.Location() != time.UTC {
			t.Errorf("read back %+v, want %+v", got, b)
		}
		v1, _ := st.Version(ctx)
		if v1 != v0+1 {
			t.Errorf("version %d after one write from %d", v1, v0)
		}

		clock = clock.Add(time.Hour)
		b.Limit, b.Mode, b.Model, b.Window = 80_000_000, ModeHard, "", Window{Kind: WindowRolling, Every: 5 * time.Hour}
		b.Alerts = []int{}
		e, err := st.PutBudget(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		got, _ = st.Budget(ctx, b.ID)
		if e.ID != b.ID || got.Limit != 80_000_000 || got.Mode != ModeHard || got.Window.String() != "rolling:5h" || len(got.Alerts) != 0 || got.Alerts == nil {
			t.Errorf("edit: %+v", got)
		}
		if !got.CreatedAt.Before(got.UpdatedAt) || !e.CreatedAt.Equal(got.CreatedAt) {
			t.Errorf("edit changed created_at or not updated_at: %+v", got)
		}
		// Read back and put again: no alerts stays no alerts.
		if again, _ := st.PutBudget(ctx, got); len(again.Alerts) != 0 {
			t.Errorf("re-put of a budget without alerts gained %v", again.Alerts)
		}

		other, err := st.PutBudget(ctx, Budget{Selector: Selector{ScopeType: ScopeUser, ScopeID: "u1"}, Metric: MetricTokens, Limit: 1000, Window: Window{Kind: WindowDay}})
		if err != nil {
			t.Fatal(err)
		}
		if all, _ := st.ListBudgets(ctx, Filter{}); len(all) != 2 {
			t.Errorf("list all: %d", len(all))
		}
		if ps, _ := st.ListBudgets(ctx, Filter{ScopeType: ScopeProject, ScopeID: "acme"}); len(ps) != 1 || ps[0].ID != b.ID {
			t.Errorf("list project acme: %+v", ps)
		}
		if us, _ := st.ListBudgets(ctx, Filter{ScopeType: ScopeUser}); len(us) != 1 || us[0].ID != other.ID {
			t.Errorf("list users: %+v", us)
		}

		if err := st.DeleteBudget(ctx, b.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Budget(ctx, b.ID); !errors.Is(err, ErrNotFound) {
			t.Errorf("deleted budget: %v", err)
		}
		if err := st.DeleteBudget(ctx, b.ID); !errors.Is(err, ErrNotFound) {
			t.Errorf("delete twice: %v", err)
		}
		if _, err := st.PutBudget(ctx, Budget{ID: "bud_nope", Selector: Selector{ScopeType: ScopePlatform}, Metric: MetricTokens, Limit: 1, Window: Window{Kind: WindowDay}}); !errors.Is(err, ErrNotFound) {
			t.Errorf("put of an unknown id: %v", err)
		}
		if all, _ := st.ListBudgets(ctx, Filter{}); len(all) != 1 {
			t.Errorf("a put of an unknown id created a budget: %d", len(all))
		}
	})
}

// TestStoreLimitsAndRules: the same for rate limits and model rules.
func TestStoreLimitsAndRules(t *testing.T) {
	forEachPolicyEngine(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		st := policyStore(t, db)
		l, err := st.PutLimit(ctx, Limit{Selector: Selector{ScopeType: ScopeWorkspace, ScopeID: "ws-42"}, RPM: 60, TPM: 200_000})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(l.ID, "lim_") || !policyIDForm.MatchString(l.ID) || l.Mode != ModeSoft {
			t.Errorf("limit %+v", l)
		}
		l.Concurrency = 4
		if _, err := st.PutLimit(ctx, l); err != nil {
			t.Fatal(err)
		}
		if got, _ := st.Limit(ctx, l.ID); got.Concurrency != 4 || got.RPM != 60 || got.ScopeID != "ws-42" {
			t.Errorf("limit read back %+v", got)
		}
		r, err := st.PutRule(ctx, ModelRule{ScopeType: ScopeProject, ScopeID: "acme", Kind: RuleAlias, Pattern: "fast", Target: "gpt-5-mini"})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(r.ID, "rule_") || !policyIDForm.MatchString(r.ID) {
			t.Errorf("rule id %q", r.ID)
		}
		if rs, _ := st.ListRules(ctx, Filter{ScopeType: ScopeProject, ScopeID: "acme"}); len(rs) != 1 || rs[0].Target != "gpt-5-mini" {
			t.Errorf("rules %+v", rs)
		}
		p, err := st.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Limits) != 1 || len(p.Rules) != 1 || len(p.Budgets) != 0 || p.Version != 3 {
			t.Errorf("snapshot %+v", p)
		}
		if err := st.DeleteLimit(ctx, l.ID); err != nil {
			t.Fatal(err)
		}
		if err := st.DeleteRule(ctx, r.ID); err != nil {
			t.Fatal(err)
		}
		for _, err := range []error{st.DeleteLimit(ctx, l.ID), st.DeleteRule(ctx, r.ID)} {
			if !errors.Is(err, ErrNotFound) {
				t.Errorf("delete twice: %v", err)
			}
		}
		if _, err := st.Rule(ctx, r.ID); !errors.Is(err, ErrNotFound) {
			t.Errorf("deleted rule: %v", err)
		}
		if v, _ := st.Version(ctx); v != 5 {
			t.Errorf("version %d after five writes", v)
		}
	})
}

// TestStoreRefusesInvalidPolicies: a bad policy is ErrInvalid naming every
// field at fault, and nothing is written (the version stays).
func TestStoreRefusesInvalidPolicies(t *testing.T) {
	ctx := context.Background()
	st := policyStore(t, policyDB(t, false))
	_, err := st.PutBudget(ctx, Budget{Selector: Selector{ScopeType: "team", Model: "[bad"}, Metric: "dollars", Limit: -1, Mode: "strict"})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("err = %v", err)
	}
	for _, want := range []string{`scope_type "team"`, `model "[bad"`, `metric "dollars"`, "limit must be", "window is required", `mode "strict"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not say %q", err, want)
		}
	}
	_, err = st.PutLimit(ctx, Limit{Selector: Selector{ScopeType: ScopeProject}, RPM: -1, Mode: ModeAlert})
	for _, want := range []string{"scope_id is required", "must not be negative", `mode "alert"`} {
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("limit: %v does not say %q", err, want)
		}
	}
	_, err = st.PutRule(ctx, ModelRule{ScopeType: ScopeUser, ScopeID: "u", Kind: RuleAlias, Pattern: "f*"})
	for _, want := range []string{"aliases are platform or project", "exact model name", "target is required"} {
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("rule: %v does not say %q", err, want)
		}
	}
	if v, _ := st.Version(ctx); v != 0 {
		t.Errorf("refused writes moved the version to %d", v)
	}
}

// TestStoreOpenTwice: a second OpenStore (a CLI beside a server) finds the
// schema current and shares the rows.
func TestStoreOpenTwice(t *testing.T) {
	ctx := context.Background()
	db := policyDB(t, false)
	a := policyStore(t, db)
	if _, err := a.PutLimit(ctx, Limit{Selector: Selector{ScopeType: ScopePlatform}, RPM: 1}); err != nil {
		t.Fatal(err)
	}
	b := policyStore(t, db)
	if ls, err := b.ListLimits(ctx, Filter{}); err != nil || len(ls) != 1 {
		t.Fatalf("second store: %v %v", ls, err)
	}
}

// TestInForce: the effective view lists the policies of every level of a
// scope, narrowed by model and harness only when they are given.
func TestInForce(t *testing.T) {
	p := &Policies{
		Budgets: []Budget{
			{ID: "b1", Selector: Selector{ScopeType: ScopeProject, ScopeID: "acme", Model: "claude-*"}},
			{ID: "b2", Selector: Selector{ScopeType: ScopePlatform}},
			{ID: "b3", Selector: Selector{ScopeType: ScopeProject, ScopeID: "other"}},
			{ID: "b4", Selector: Selector{ScopeType: ScopeUser, ScopeID: "u", Harness: "codex"}},
		},
		Limits: []Limit{{ID: "l1", Selector: Selector{ScopeType: ScopeWorkspace, ScopeID: "ws"}}},
		Rules:  []ModelRule{{ID: "r1", ScopeType: ScopeProject, ScopeID: "acme"}, {ID: "r2", ScopeType: ScopeUser, ScopeID: "v"}},
	}
	ids := func(ss []PolicyState) string {
		var out []string
		for _, s := range ss {
			switch {
			case s.Budget != nil:
				out = append(out, s.Budget.ID)
			case s.Limit != nil:
				out = append(out, s.Limit.ID)
			case s.Rule != nil:
				out = append(out, s.Rule.ID)
			}
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		sc    Scope
		model string
		want  string
	}{
		{Scope{Project: "acme", User: "u"}, "", "r1,b2,b1,b4"},
		{Scope{Project: "acme", User: "u"}, "gpt-5", "r1,b2,b4"},
		{Scope{Project: "acme", User: "u", Harness: "claude-code"}, "claude-sonnet-4-5", "r1,b2,b1"},
		{Scope{Project: "x", Workspace: "ws"}, "", "l1,b2"},
	} {
		if got := ids(p.InForce(tc.sc, tc.model)); got != tc.want {
			t.Errorf("InForce(%+v, %q) = %s, want %s", tc.sc, tc.model, got, tc.want)
		}
	}
	if (*Policies)(nil).InForce(Scope{}, "") != nil {
		t.Error("nil policies")
	}
}

// TestStoreSetIsIdempotent: setting the same budget, limit or rule again
// updates it in place (same id, so the ledger's spend stays with it)
// instead of adding a second policy that would count the same requests
// twice; an identical set writes nothing; fields left empty keep their
// values; another identity is another policy; concurrent sets of one new
// budget make one; and a database holding duplicates from before updates
// the oldest.
func TestStoreSetIsIdempotent(t *testing.T) {
	forEachPolicyEngine(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		st := policyStore(t, db)
		l, err := OpenLedger(ctx, db, LedgerConfig{ReplicaID: "r1"})
		if err != nil {
			t.Fatal(err)
		}
		acme := Selector{ScopeType: ScopeProject, ScopeID: "acme", Harness: "claude-code"}
		b1, res, err := st.SetBudget(ctx, Budget{Selector: acme, Metric: MetricCost, Limit: 50_000_000, Window: Window{Kind: WindowMonth}, Mode: ModeHard, Alerts: []int{90}})
		if err != nil || res != SetCreated {
			t.Fatalf("first set: %v %v", res, err)
		}
		if ref, err := l.Reserve(ctx, "req-1", []Charge{{Budget: b1, Amount: 2_000_000}}); err != nil || ref != nil {
			t.Fatalf("reserve: %v %v", ref, err)
		}
		v1, _ := st.Version(ctx)
		// The same budget again, with a new limit and no mode or alerts:
		// updated in place, keeping hard, [90] and the reservation.
		b2, res, err := st.SetBudget(ctx, Budget{Selector: acme, Metric: MetricCost, Limit: 75_000_000, Window: Window{Kind: WindowMonth}})
		if err != nil || res != SetUpdated || b2.ID != b1.ID || !b2.CreatedAt.Equal(b1.CreatedAt) {
			t.Fatalf("second set: %v %v %+v, want updated %s", res, err, b2, b1.ID)
		}
		if b2.Mode != ModeHard || !slices.Equal(b2.Alerts, []int{90}) || b2.Unpriced != UnpricedRefuse || b2.Limit != 75_000_000 {
			t.Errorf("update did not keep what it was not given: %+v", b2)
		}
		if hs, err := l.Headroom(ctx, []Budget{b2}); err != nil || hs[0].Reserved != 2_000_000 {
			t.Errorf("the updated budget lost its reservation: %+v %v", hs, err)
		}
		// Identical: nothing written, the version stays.
		b3, res, err := st.SetBudget(ctx, Budget{Selector: acme, Metric: MetricCost, Limit: 75_000_000, Window: Window{Kind: WindowMonth}, Mode: ModeHard})
		if v, _ := st.Version(ctx); err != nil || res != SetUnchanged || b3.ID != b1.ID || !b3.UpdatedAt.Equal(b2.UpdatedAt) || v != v1+1 {
			t.Errorf("identical set: %v %v %+v, version %d (was %d)", res, err, b3, v, v1)
		}
		// Another window, metric or harness is another budget.
		for _, other := range []Budget{
			{Selector: acme, Metric: MetricCost, Limit: 1, Window: Window{Kind: WindowDay}},
			{Selector: acme, Metric: MetricTokens, Limit: 1, Window: Window{Kind: WindowMonth}},
			{Selector: Selector{ScopeType: ScopeProject, ScopeID: "acme"}, Metric: MetricCost, Limit: 1, Window: Window{Kind: WindowMonth}},
		} {
			if o, res, err := st.SetBudget(ctx, other); err != nil || res != SetCreated || o.ID == b1.ID {
				t.Errorf("set of %+v: %v %v %s", other, res, err, o.ID)
			}
		}
		if bs, _ := st.ListBudgets(ctx, Filter{}); len(bs) != 4 {
			t.Errorf("%d budgets, want 4", len(bs))
		}
		if _, _, err := st.SetBudget(ctx, Budget{ID: "bud_missing", Selector: acme, Metric: MetricCost, Limit: 1, Window: Window{Kind: WindowDay}}); !errors.Is(err, ErrNotFound) {
			t.Errorf("set of an unknown id: %v", err)
		}
		if _, _, err := st.SetBudget(ctx, Budget{Selector: acme, Metric: MetricCost, Window: Window{Kind: WindowDay}}); !errors.Is(err, ErrInvalid) {
			t.Errorf("set without a limit: %v", err)
		}

		// Concurrent first sets of one budget (two CLIs, a retried POST)
		// make exactly one.
		ws := Selector{ScopeType: ScopeWorkspace, ScopeID: "ws-race"}
		const n = 8
		ids, results := make([]string, n), make([]SetResult, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				b, res, err := st.SetBudget(ctx, Budget{Selector: ws, Metric: MetricTokens, Limit: int64(1000 + i), Window: Window{Kind: WindowDay}})
				if err != nil {
					t.Error(err)
				}
				ids[i], results[i] = b.ID, res
			})
		}
		wg.Wait()
		if bs, _ := st.ListBudgets(ctx, Filter{ScopeType: ScopeWorkspace, ScopeID: "ws-race"}); len(bs) != 1 {
			t.Errorf("concurrent sets made %d budgets", len(bs))
		}
		if created := slices.Index(results, SetCreated); created < 0 || slices.Index(results[created+1:], SetCreated) >= 0 {
			t.Errorf("results %v, want exactly one created", results)
		}
		for _, id := range ids {
			if id != ids[0] {
				t.Errorf("ids %v differ", ids)
				break
			}
		}

		// Limits: a rate left at KeepRate keeps its value; none at all on a
		// create.
		lim, res, err := st.SetLimit(ctx, Limit{Selector: ws, RPM: 60, TPM: KeepRate, Concurrency: KeepRate})
		if err != nil || res != SetCreated || lim.RPM != 60 || lim.TPM != 0 || lim.Concurrency != 0 || lim.Mode != ModeSoft {
			t.Fatalf("limit create: %v %v %+v", res, err, lim)
		}
		lim2, res, err := st.SetLimit(ctx, Limit{Selector: ws, RPM: KeepRate, TPM: 9000, Concurrency: KeepRate, Mode: ModeHard})
		if err != nil || res != SetUpdated || lim2.ID != lim.ID || lim2.RPM != 60 || lim2.TPM != 9000 || lim2.Mode != ModeHard {
			t.Errorf("limit update: %v %v %+v", res, err, lim2)
		}
		if _, res, err := st.SetLimit(ctx, Limit{Selector: ws, RPM: 60, TPM: KeepRate, Concurrency: 0}); err != nil || res != SetUnchanged {
			t.Errorf("identical limit: %v %v", res, err)
		}
		if _, _, err := st.SetLimit(ctx, Limit{Selector: ws, RPM: KeepRate, TPM: KeepRate, Concurrency: KeepRate}); err != nil {
			// An update that gives no rate keeps them all: unchanged.
			t.Errorf("limit set keeping every rate: %v", err)
		}
		if _, _, err := st.SetLimit(ctx, Limit{Selector: Selector{ScopeType: ScopeUser, ScopeID: "u"}, RPM: KeepRate, TPM: KeepRate, Concurrency: KeepRate}); !errors.Is(err, ErrInvalid) {
			t.Errorf("a new limit with no rate: %v", err)
		}
		if _, _, err := st.SetLimit(ctx, Limit{Selector: ws, RPM: -5, TPM: KeepRate, Concurrency: KeepRate}); !errors.Is(err, ErrInvalid) {
			t.Errorf("a negative rate: %v", err)
		}
		if ls, _ := st.ListLimits(ctx, Filter{}); len(ls) != 1 {
			t.Errorf("%d limits, want 1", len(ls))
		}

		// Rules: an allow rule twice is one; an alias retargets in place.
		allow := ModelRule{ScopeType: ScopeProject, ScopeID: "acme", Kind: RuleAllow, Pattern: "claude-*"}
		r1, res1, err1 := st.SetRule(ctx, allow)
		r2, res2, err2 := st.SetRule(ctx, allow)
		if err1 != nil || err2 != nil || res1 != SetCreated || res2 != SetUnchanged || r2.ID != r1.ID {
			t.Errorf("allow twice: %v %v / %v %v", res1, err1, res2, err2)
		}
		deny := allow
		deny.Kind = RuleDeny
		if d, res, err := st.SetRule(ctx, deny); err != nil || res != SetCreated || d.ID == r1.ID {
			t.Errorf("a deny of the same pattern is its own rule: %v %v", res, err)
		}
		alias := ModelRule{ScopeType: ScopeProject, ScopeID: "acme", Kind: RuleAlias, Pattern: "fast", Target: "gpt-5-mini"}
		a1, _, _ := st.SetRule(ctx, alias)
		alias.Target = "gpt-5"
		a2, res, err := st.SetRule(ctx, alias)
		if err != nil || res != SetUpdated || a2.ID != a1.ID || a2.Target != "gpt-5" {
			t.Errorf("alias retarget: %v %v %+v", res, err, a2)
		}
		if rs, _ := st.ListRules(ctx, Filter{}); len(rs) != 3 {
			t.Errorf("%d rules, want 3", len(rs))
		}

		// Duplicates written before Set existed (two POSTs): Set updates
		// the oldest and leaves the other.
		clock := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
		st.now = func() time.Time { return clock }
		dup := Budget{Selector: Selector{ScopeType: ScopeUser, ScopeID: "ann"}, Metric: MetricCost, Limit: 1_000_000, Window: Window{Kind: WindowDay}}
		old, _ := st.PutBudget(ctx, dup)
		clock = clock.Add(time.Minute)
		newer, _ := st.PutBudget(ctx, dup)
		dup.Limit = 2_000_000
		got, res, err := st.SetBudget(ctx, dup)
		if err != nil || res != SetUpdated || got.ID != old.ID {
			t.Errorf("set over duplicates: %v %v %s, want the oldest %s (not %s)", res, err, got.ID, old.ID, newer.ID)
		}

		// A replacement by id cannot take another policy's identity: the
		// day budget of acme/claude-code exists, so b1 (its month budget)
		// cannot become a day budget; its own identity it may keep.
		moved := b2
		moved.Window = Window{Kind: WindowDay}
		if _, err := st.PutBudget(ctx, moved); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "already has this scope, model, harness, metric and window") {
			t.Errorf("PUT onto another budget's identity: %v", err)
		}
		if _, err := st.PutBudget(ctx, b2); err != nil {
			t.Errorf("PUT keeping its own identity: %v", err)
		}
		if _, err := st.PutRule(ctx, ModelRule{ID: r1.ID, ScopeType: ScopeProject, ScopeID: "acme", Kind: RuleDeny, Pattern: "claude-*"}); !errors.Is(err, ErrInvalid) {
			t.Errorf("PUT of an allow rule onto the deny rule's identity: %v", err)
		}
		if _, err := st.PutLimit(ctx, Limit{ID: lim.ID, Selector: ws, RPM: 1}); err != nil {
			t.Errorf("PUT of a limit in its own identity: %v", err)
		}
		// Nor can a set by id (budget set --id).
		if _, _, err := st.SetBudget(ctx, moved); !errors.Is(err, ErrInvalid) {
			t.Errorf("set by id onto another budget's identity: %v", err)
		}
		// A duplicate from before keeps its own identity when edited.
		newer.Limit = 3_000_000
		if _, err := st.PutBudget(ctx, newer); err != nil {
			t.Errorf("PUT of the newer duplicate in its identity: %v", err)
		}
		newer.Limit = 4_000_000
		if got, res, err := st.SetBudget(ctx, newer); err != nil || res != SetUpdated || got.ID != newer.ID {
			t.Errorf("set by id of the newer duplicate: %v %v %s", res, err, got.ID)
		}
	})
}
