package resolver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
)

// seededRand is a deterministic randN for the weighted draw.
func seededRand(seed uint64) func(uint64) uint64 {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return func(n uint64) uint64 {
		mu.Lock()
		defer mu.Unlock()
		return r.Uint64N(n)
	}
}

var chatReq = Request{Project: "p1", User: "u1", Dialect: "openai-chat"}

// order is the credential ids a Target says to try, in order.
func order(t Target) []string {
	out := []string{t.CredentialID}
	for _, a := range t.Alternates {
		out = append(out, a.CredentialID)
	}
	return out
}

func mustBindCandidates(tb testing.TB, s *Service, k BindingKey, cands ...BindCandidate) Binding {
	tb.Helper()
	b, err := s.BindCandidates(context.Background(), k, cands)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// wantHalted checks that ccAnthropic halts for reason.
func wantHalted(t *testing.T, s *Service, reason string) {
	t.Helper()
	_, err := s.Resolve(context.Background(), ccAnthropic)
	var re *ResolveError
	if !errors.Is(err, ErrHalted) || !errors.As(err, &re) || re.Reason != reason {
		t.Fatalf("Resolve: got %v, want halted (%s)", err, reason)
	}
}

func viewRow(t *testing.T, s *Service, req Request) Resolution {
	t.Helper()
	rows, err := s.ResolutionView(context.Background(), req.Project, req.User)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if r.Harness == req.Harness && r.Dialect == req.Dialect {
			return r
		}
	}
	t.Fatalf("no view row for %+v", req)
	return Resolution{}
}

// Candidates of different providers speaking one dialect come back in
// priority order, each with its own provider, base URL and secret; the
// view lists them all.
func TestCandidatesInPriorityOrder(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := mustService(t, dsn).svc
		oa := mustCred(t, s, "openai", "sk-openai-primary-0001")
		gq := mustCred(t, s, "groq", "sk-groq-fallback-0002")
		compat, err := s.CreateCredential(ctx, CredentialSpec{Provider: "openai", Secret: NewSecret("sk-compat-last-0003"), BaseURL: "http://127.0.0.1:9/v1"})
		if err != nil {
			t.Fatal(err)
		}
		k := BindingKey{Tier: TierProject, ScopeID: "p1", Dialect: "openai-chat"}
		// Given out of order: the binding keeps priority order.
		b := mustBindCandidates(t, s, k,
			BindCandidate{CredentialID: compat.ID, Priority: 7},
			BindCandidate{CredentialID: oa.ID, Priority: 0},
			BindCandidate{CredentialID: gq.ID, Priority: 3, Weight: 5})
		if b.CredentialID != oa.ID || len(b.Credentials) != 3 || b.Credentials[2].CredentialID != compat.ID || b.Credentials[1].Weight != 5 {
			t.Fatalf("bind returned %+v", b)
		}

		tg, err := s.Resolve(ctx, chatReq)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := strings.Join(order(tg), ","), strings.Join([]string{oa.ID, gq.ID, compat.ID}, ","); got != want {
			t.Fatalf("order %s, want %s", got, want)
		}
		want := []struct{ provider, base, secret string }{
			{"openai", "", "sk-openai-primary-0001"}, {"groq", "", "sk-groq-fallback-0002"}, {"openai", "http://127.0.0.1:9/v1", "sk-compat-last-0003"},
		}
		for i, x := range append([]Target{tg}, tg.Alternates...) {
			if x.Provider != want[i].provider || x.BaseURL != want[i].base || x.Secret.Reveal() != want[i].secret || x.Tier != TierProject {
				t.Errorf("candidate %d: %s %s %s, want %+v", i, x.Provider, x.BaseURL, x.Tier, want[i])
			}
			if i > 0 && len(x.Alternates) != 0 {
				t.Errorf("alternate %d has alternates of its own", i)
			}
		}

		row := viewRow(t, s, chatReq)
		if row.Source != SourceProject || row.CredentialID != oa.ID || len(row.Candidates) != 3 {
			t.Fatalf("view row %+v", row)
		}
		for i, c := range row.Candidates {
			if !c.Usable || c.Reason != "" || c.CredentialID != order(tg)[i] || c.Provider != want[i].provider {
				t.Errorf("view candidate %d: %+v", i, c)
			}
		}
		if row.Candidates[1].Priority != 3 || row.Candidates[1].Weight != 5 || row.Candidates[0].Weight != 1 {
			t.Errorf("view priorities/weights: %+v", row.Candidates)
		}

		bs, err := s.ListBindings(ctx, BindingFilter{CredentialID: gq.ID})
		if err != nil || len(bs) != 1 || len(bs[0].Credentials) != 3 || bs[0].Credentials[0].CredentialID != oa.ID {
			t.Fatalf("list by an alternate's id: %+v, %v", bs, err)
		}

		// Rebinding with one credential drops the others.
		mustBind(t, s, k, gq.ID)
		tg, err = s.Resolve(ctx, chatReq)
		if err != nil || tg.CredentialID != gq.ID || len(tg.Alternates) != 0 {
			t.Fatalf("after rebinding one: %v %v", order(tg), err)
		}
		if err := s.Unbind(ctx, k); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM resolver_binding_candidates`).Scan(&n); err != nil || n != 0 {
			t.Fatalf("candidate rows after unbind: %d %v", n, err)
		}
	})
}

// Within one priority each call draws the order by weight: over 10,000
// calls each candidate comes first in its share of them, and the lower
// priority always comes after the whole group.
func TestCandidatesWeightedDraw(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := mustService(t, t.TempDir()+"/r.db", withConfig(func(c *Config) { c.randN = seededRand(42) }))
	s := e.svc
	a := mustCred(t, s, "openai", "sk-weighted-a-000001")
	b := mustCred(t, s, "groq", "sk-weighted-b-000002")
	c := mustCred(t, s, "openai", "sk-weighted-c-000003")
	last := mustCred(t, s, "groq", "sk-standby-d-0000004")
	mustBindCandidates(t, s, BindingKey{Tier: TierUser, ScopeID: "u1", Dialect: "openai-chat"},
		BindCandidate{CredentialID: a.ID, Weight: 5}, BindCandidate{CredentialID: b.ID, Weight: 3},
		BindCandidate{CredentialID: c.ID, Weight: 2}, BindCandidate{CredentialID: last.ID, Priority: 1})
	const n = 10_000
	first := map[string]int{}
	for range n {
		tg, err := s.Resolve(ctx, chatReq)
		if err != nil {
			t.Fatal(err)
		}
		o := order(tg)
		if len(o) != 4 || o[3] != last.ID {
			t.Fatalf("order %v: want the three weighted first and the standby last", o)
		}
		seen := map[string]bool{}
		for _, id := range o[:3] {
			seen[id] = true
		}
		if len(seen) != 3 {
			t.Fatalf("order %v repeats a candidate", o)
		}
		if tg.Secret.Reveal() == "" || tg.Alternates[0].Secret.IsZero() {
			t.Fatal("a drawn target lost its secret")
		}
		first[o[0]]++
	}
	for id, w := range map[string]float64{a.ID: 0.5, b.ID: 0.3, c.ID: 0.2} {
		if got := float64(first[id]) / n; math.Abs(got-w) > 0.02 {
			t.Errorf("%s first in %.3f of calls, want %.2f ± 0.02", id, got, w)
		}
	}
	// The draw is per call, not per cache entry: one miss served them all.
	if row := viewRow(t, s, chatReq); row.CredentialID != a.ID || len(row.Candidates) != 4 {
		t.Errorf("view row %+v", row)
	}
}

// A binding resolves to its first usable candidate: a disabled primary
// moves the project's traffic to its alternate, not to another tier. Only
// when every candidate is unusable does the project halt (and a user
// binding fall through), with the first candidate's reason.
func TestCandidatesDisabledPrimary(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := mustService(t, dsn).svc
		if _, err := s.SetPlatformKey(ctx, "anthropic", NewSecret("sk-platform-anthropic-1")); err != nil {
			t.Fatal(err)
		}
		p1 := mustCred(t, s, "anthropic", "sk-project-primary-01")
		p2 := mustCred(t, s, "anthropic", "sk-project-backup-002")
		mustBindCandidates(t, s, BindingKey{Tier: TierProject, ScopeID: "p1", Dialect: "anthropic-messages"},
			BindCandidate{CredentialID: p1.ID}, BindCandidate{CredentialID: p2.ID, Priority: 1})
		if err := s.DisableCredential(ctx, p1.ID); err != nil {
			t.Fatal(err)
		}
		tg, err := s.Resolve(ctx, ccAnthropic)
		if err != nil || tg.CredentialID != p2.ID || tg.Tier != TierProject || len(tg.Alternates) != 0 {
			t.Fatalf("disabled primary: %v %v", order(tg), err)
		}
		row := viewRow(t, s, ccAnthropic)
		if row.Source != SourceProject || row.CredentialID != p2.ID || row.Reason != "" ||
			len(row.Candidates) != 2 || row.Candidates[0].Usable || row.Candidates[0].Reason != ReasonCredentialDisabled || !row.Candidates[1].Usable {
			t.Fatalf("view row %+v", row)
		}

		if err := s.DisableCredential(ctx, p2.ID); err != nil {
			t.Fatal(err)
		}
		wantHalted(t, s, ReasonCredentialDisabled)
		if row := viewRow(t, s, ccAnthropic); row.Source != SourceHalted || row.CredentialID != p1.ID || len(row.Candidates) != 2 || row.Candidates[1].Usable {
			t.Fatalf("halted view row %+v", row)
		}

		// The same binding at the user tier falls through to the platform.
		if err := s.Unbind(ctx, BindingKey{Tier: TierProject, ScopeID: "p1", Dialect: "anthropic-messages"}); err != nil {
			t.Fatal(err)
		}
		mustBindCandidates(t, s, BindingKey{Tier: TierUser, ScopeID: "u1", Dialect: "anthropic-messages"},
			BindCandidate{CredentialID: p1.ID}, BindCandidate{CredentialID: p2.ID})
		wantSecret(t, s, ccAnthropic, "sk-platform-anthropic-1")
		row = viewRow(t, s, ccAnthropic)
		if row.Source != SourcePlatform || row.Reason != ReasonCredentialDisabled || len(row.Candidates) != 1 {
			t.Fatalf("fell-through view row %+v (candidates are the paying binding's)", row)
		}
		if err := s.EnableCredential(ctx, p2.ID); err != nil {
			t.Fatal(err)
		}
		wantSecret(t, s, ccAnthropic, "sk-project-backup-002")
	})
}

// Deleting a credential deactivates only the bindings it leaves without
// any credential; the deleted one keeps its place, shown as missing.
func TestCandidatesDeleteCredential(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := mustService(t, dsn).svc
		a := mustCred(t, s, "anthropic", "sk-delete-primary-001")
		b := mustCred(t, s, "anthropic", "sk-delete-backup-0002")
		k := BindingKey{Tier: TierProject, ScopeID: "p1", Dialect: "anthropic-messages"}
		mustBindCandidates(t, s, k, BindCandidate{CredentialID: a.ID}, BindCandidate{CredentialID: b.ID, Priority: 1})
		if err := s.DeleteCredential(ctx, a.ID); err != nil {
			t.Fatal(err)
		}
		wantSecret(t, s, ccAnthropic, "sk-delete-backup-0002")
		bs, err := s.ListBindings(ctx, BindingFilter{})
		if err != nil || len(bs) != 1 || !bs[0].Active || len(bs[0].Credentials) != 2 {
			t.Fatalf("after deleting the primary: %+v %v", bs, err)
		}
		row := viewRow(t, s, ccAnthropic)
		if row.Candidates[0].CredentialID != a.ID || row.Candidates[0].Usable || row.Candidates[0].Reason != ReasonCredentialDisabled {
			t.Fatalf("the deleted candidate is not shown missing: %+v", row.Candidates)
		}

		if err := s.DeleteCredential(ctx, b.ID); err != nil {
			t.Fatal(err)
		}
		wantHalted(t, s, ReasonBindingInactive)
		if err := s.SetBindingActive(ctx, k, true); !errors.Is(err, ErrCredentialNotFound) {
			t.Fatalf("reactivating a binding with no credential left: got %v", err)
		}

		// An alternate's deletion leaves the binding active on its primary,
		// and it can be reactivated while one candidate exists.
		c := mustCred(t, s, "anthropic", "sk-delete-third-00003")
		d := mustCred(t, s, "anthropic", "sk-delete-fourth-0004")
		mustBindCandidates(t, s, k, BindCandidate{CredentialID: c.ID}, BindCandidate{CredentialID: d.ID})
		if err := s.SetBindingActive(ctx, k, false); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteCredential(ctx, c.ID); err != nil {
			t.Fatal(err)
		}
		if err := s.SetBindingActive(ctx, k, true); err != nil {
			t.Fatalf("reactivating with an alternate left: %v", err)
		}
		wantSecret(t, s, ccAnthropic, "sk-delete-fourth-0004")
	})
}

// Bind checks every candidate as it checks one, and writes nothing when
// one fails.
func TestBindCandidatesRefusals(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := mustService(t, dsn).svc
		an := mustCred(t, s, "anthropic", "sk-refusal-anthropic1")
		oa := mustCred(t, s, "openai", "sk-refusal-openai-0002")
		k := BindingKey{Tier: TierUser, ScopeID: "u1", Dialect: "anthropic-messages"}
		mustBind(t, s, k, an.ID)
		for _, tc := range []struct {
			name  string
			cands []BindCandidate
			want  error
			msg   string
		}{
			{"AlternateSpeaksAnotherDialect", []BindCandidate{{CredentialID: an.ID}, {CredentialID: oa.ID, Priority: 1}}, ErrDialectMismatch, `provider "openai" of credential ` + oa.ID + ` does not speak "anthropic-messages"`},
			{"UnknownAlternate", []BindCandidate{{CredentialID: an.ID}, {CredentialID: "cred_nope"}}, ErrCredentialNotFound, "cred_nope"},
			{"Duplicate", []BindCandidate{{CredentialID: an.ID}, {CredentialID: an.ID}}, ErrInvalidArgument, "credentials[1]: credential " + an.ID + " is named twice"},
			{"BadPriorityAndWeight", []BindCandidate{{CredentialID: an.ID, Priority: -1}, {CredentialID: oa.ID, Weight: MaxWeight + 1}}, ErrInvalidArgument,
				"credentials[0]: priority -1 is not between 0 and 1000; credentials[1]: weight 1001 is not between 1 and 1000"},
			{"None", nil, ErrInvalidArgument, "credential_id is required"},
			{"TooMany", make([]BindCandidate, MaxCandidates+1), ErrInvalidArgument, "at most 16 credentials"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := s.BindCandidates(ctx, k, tc.cands)
				if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("got %v, want %v saying %q", err, tc.want, tc.msg)
				}
				bs, err := s.ListBindings(ctx, BindingFilter{})
				if err != nil || len(bs) != 1 || len(bs[0].Credentials) != 1 || bs[0].CredentialID != an.ID {
					t.Fatalf("a refused bind changed the binding: %+v %v", bs, err)
				}
			})
		}
	})
}

// A started Service on PostgreSQL learns of a change to an alternate from
// another Service by NOTIFY alone (its poll interval is an hour): the
// cached Alternates are dropped and recomputed like the primary.
func TestCandidatesInvalidatedByNotify(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	w, r := notifiedPair(t)
	a := mustCred(t, w.svc, "anthropic", "sk-notify-primary-001")
	b := mustCred(t, w.svc, "anthropic", "sk-notify-backup-0002")
	k := BindingKey{Tier: TierUser, ScopeID: "u1", Dialect: "anthropic-messages"}
	mustBind(t, w.svc, k, a.ID)
	resolves := func(want ...string) func() bool {
		return func() bool {
			tg, err := r.svc.Resolve(ctx, ccAnthropic)
			return err == nil && strings.Join(order(tg), ",") == strings.Join(want, ",")
		}
	}
	testkit.Eventually(t, 2*time.Second, "the single binding", resolves(a.ID))
	mustBindCandidates(t, w.svc, k, BindCandidate{CredentialID: a.ID}, BindCandidate{CredentialID: b.ID, Priority: 1})
	testkit.Eventually(t, 2*time.Second, "the alternate to appear", resolves(a.ID, b.ID))
	if err := w.svc.DisableCredential(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 2*time.Second, "the disabled alternate to go", resolves(a.ID))
	if err := w.svc.EnableCredential(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 2*time.Second, "the enabled alternate to come back", resolves(a.ID, b.ID))
	if err := w.svc.DisableCredential(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 2*time.Second, "the alternate to take over", resolves(b.ID))
	if err := w.svc.SetCredentialSecret(ctx, b.ID, NewSecret("sk-notify-backup-rotated")); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 2*time.Second, "the rotated alternate's secret", func() bool {
		tg, err := r.svc.Resolve(ctx, ccAnthropic)
		return err == nil && tg.Secret.Reveal() == "sk-notify-backup-rotated"
	})
}

// An alternate's secret travels like the primary's: resolved, drawn,
// listed, viewed and logged as unusable, it never shows up rendered.
func TestCandidatesCanaryNeverLeaks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := mustService(t, t.TempDir()+"/r.db", withConfig(func(c *Config) { c.randN = seededRand(7) }))
	s := e.svc
	const canary = "sk-ant-CANARY-alternate-4b8d2f6a1c3e5"
	p := mustCred(t, s, "anthropic", "sk-ant-primary-not-secret")
	a1 := mustCred(t, s, "anthropic", canary+"-1")
	a2 := mustCred(t, s, "anthropic", canary+"-2")
	mustBindCandidates(t, s, BindingKey{Tier: TierProject, ScopeID: "p1", Dialect: "anthropic-messages"},
		BindCandidate{CredentialID: p.ID}, BindCandidate{CredentialID: a1.ID, Weight: 2}, BindCandidate{CredentialID: a2.ID, Priority: 1})
	var seen []string
	note := func(vs ...any) {
		for _, v := range vs {
			b, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			seen = append(seen, string(b), fmt.Sprintf("%v|%+v|%#v|%s|%q|%x", v, v, v, v, v, v))
		}
	}
	for range 20 {
		tg, err := s.Resolve(ctx, ccAnthropic)
		if err != nil || len(tg.Alternates) != 2 {
			t.Fatalf("resolve: %v %v", order(tg), err)
		}
		revealed := false
		for _, x := range tg.Alternates {
			revealed = revealed || strings.Contains(x.Secret.Reveal(), "CANARY")
		}
		if !revealed {
			t.Fatal("the alternates do not carry their secrets")
		}
		note(tg, &tg, tg.Alternates)
		s.log.Info("resolved", "target", tg, "alternates", tg.Alternates)
	}
	bs, _ := s.ListBindings(ctx, BindingFilter{})
	view, _ := s.ResolutionView(ctx, "p1", "u1")
	note(bs, view)
	// An alternate that no longer decrypts is logged, never its key.
	if _, err := e.db.ExecContext(ctx, `UPDATE resolver_credentials SET ciphertext = (SELECT ciphertext FROM resolver_credentials WHERE id = $1) WHERE id = $2`, p.ID, a1.ID); err != nil {
		t.Fatal(err)
	}
	s.invalidateResolutions()
	if _, err := s.Resolve(ctx, ccAnthropic); err != nil {
		t.Fatal(err)
	}
	view, _ = s.ResolutionView(ctx, "p1", "u1")
	note(view)
	if !strings.Contains(e.logs.String(), "does not decrypt") {
		t.Fatal("the unusable alternate was not logged")
	}
	all := strings.Join(append(seen, e.logs.String()), "\n")
	if !strings.Contains(all, redacted) || !strings.Contains(all, a2.ID) {
		t.Fatal("nothing was rendered; is the test rendering the targets?")
	}
	if i := strings.Index(all, "CANARY"); i >= 0 {
		t.Fatalf("the canary leaked: …%s…", all[max(0, i-200):min(len(all), i+50)])
	}
}

// A binding written before migration 3 (no priority, no weight, no
// candidates) is one candidate at priority 0, weight 1, untouched.
func TestBindingFromBeforeCandidatesStillResolves(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		db := mustOpenDB(t, dsn)
		if err := db.Migrate(ctx, "resolver", migrations[:2]); err != nil {
			t.Fatal(err)
		}
		at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		if _, err := db.ExecContext(ctx, `INSERT INTO resolver_bindings (tier, scope_id, dialect, harness, credential_id, active, created_at, updated_at)
			VALUES ('user', 'u1', 'anthropic-messages', '', 'cred_old', $1, $2, $2)`, true, at); err != nil {
			t.Fatal(err)
		}
		s := mustService(t, dsn, withDB(db)).svc
		c := mustCred(t, s, "anthropic", "sk-from-before-000001")
		if _, err := db.ExecContext(ctx, `UPDATE resolver_bindings SET credential_id = $1`, c.ID); err != nil {
			t.Fatal(err)
		}
		tg, err := s.Resolve(ctx, ccAnthropic)
		if err != nil || tg.Secret.Reveal() != "sk-from-before-000001" || len(tg.Alternates) != 0 {
			t.Fatalf("old binding: %v %v", order(tg), err)
		}
		bs, err := s.ListBindings(ctx, BindingFilter{})
		if err != nil || len(bs) != 1 || len(bs[0].Credentials) != 1 || bs[0].Credentials[0] != (BindCandidate{CredentialID: c.ID, Priority: 0, Weight: 1}) {
			t.Fatalf("old binding listed as %+v %v", bs, err)
		}
	})
}

// Setting the platform key again (a rotation) keeps the failover an
// administrator added to its binding; another provider's key replaces it.
func TestSetPlatformKeyKeepsCandidates(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := mustService(t, dsn).svc
		pc, err := s.SetPlatformKey(ctx, "openai", NewSecret("sk-platform-openai-0001"))
		if err != nil {
			t.Fatal(err)
		}
		g := mustCred(t, s, "groq", "sk-groq-fallback-00001")
		k := BindingKey{Tier: TierPlatform, Dialect: "openai-chat"}
		mustBindCandidates(t, s, k, BindCandidate{CredentialID: pc.ID}, BindCandidate{CredentialID: g.ID, Priority: 1})
		if _, err := s.SetPlatformKey(ctx, "openai", NewSecret("sk-platform-openai-0002")); err != nil {
			t.Fatal(err)
		}
		tg, err := s.Resolve(ctx, chatReq)
		if err != nil || tg.Secret.Reveal() != "sk-platform-openai-0002" || strings.Join(order(tg), ",") != pc.ID+","+g.ID {
			t.Fatalf("after rotating the platform key: %v %v", order(tg), err)
		}
		if _, err := s.SetPlatformKey(ctx, "groq", NewSecret("sk-platform-groq-00003")); err != nil {
			t.Fatal(err)
		}
		tg, err = s.Resolve(ctx, chatReq)
		if err != nil || tg.Provider != "groq" || tg.CredentialID == g.ID || len(tg.Alternates) != 0 {
			t.Fatalf("after setting another provider's key: %v %s %v", order(tg), tg.Provider, err)
		}
	})
}

// The view's candidates are the caller's to annotate (Health): writing to
// them changes no later answer.
func TestViewCandidatesAreCopies(t *testing.T) {
	t.Parallel()
	s := mustService(t, t.TempDir()+"/r.db").svc
	a := mustCred(t, s, "anthropic", "sk-view-copy-0000001")
	b := mustCred(t, s, "anthropic", "sk-view-copy-0000002")
	mustBindCandidates(t, s, BindingKey{Tier: TierUser, ScopeID: "u1", Dialect: "anthropic-messages"},
		BindCandidate{CredentialID: a.ID}, BindCandidate{CredentialID: b.ID, Priority: 1})
	row := viewRow(t, s, ccAnthropic)
	row.Candidates[1].Health = "down"
	row.Candidates[1].Usable = false
	if again := viewRow(t, s, ccAnthropic); again.Candidates[1].Health != nil || !again.Candidates[1].Usable {
		t.Fatalf("a caller's write reached the cache: %+v", again.Candidates[1])
	}
}
