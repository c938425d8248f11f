package resolver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/registry"
)

// States a layer can be left in after it is bound.
const (
	stOK         = "ok"
	stInactive   = "inactive"   // SetBindingActive(false)
	stDisabled   = "disabled"   // DisableCredential
	stDeleted    = "deleted"    // DeleteCredential: deactivates the binding
	stDangling   = "dangling"   // credential row gone, binding still active (another writer, raw SQL)
	stSwapped    = "swapped"    // ciphertext copied from another credential: AAD refuses it
	stUnknownKey = "unknownkey" // encrypted under a master key this process lacks
)

// layer is one binding a precedence case sets up.
type layer struct {
	tier    string
	scope   string // default p1 / u1 / ""
	harness string // "" dialect-wide; "claude-code" harness-specific
	state   string
	// provider defaults to anthropic; another one exercises Bind's check.
	provider string
	// bindErr is what Bind must return; the layer is then absent.
	bindErr error
}

func (l layer) label() string {
	h := "wide"
	if l.harness != "" {
		h = l.harness
	}
	return fmt.Sprintf("%s/%s/%s", l.tier, l.scopeID(), h)
}

func (l layer) scopeID() string {
	if l.scope != "" {
		return l.scope
	}
	switch l.tier {
	case TierProject:
		return "p1"
	case TierUser:
		return "u1"
	}
	return ""
}

type precedenceCase struct {
	name   string
	layers []layer
	// req defaults to project p1, user u1, claude-code, anthropic-messages.
	req        *Request
	wantSource string
	// wantLabel is the label of the layer whose credential pays or halts.
	wantLabel  string
	wantReason string
}

func defaultRequest() Request {
	return Request{Project: "p1", User: "u1", Harness: "claude-code", Dialect: "anthropic-messages"}
}

func L(tier, harness, state string) layer { return layer{tier: tier, harness: harness, state: state} }

// precedenceTable is the whole precedence contract: hand-written cases for
// harness-specific vs dialect-wide bindings, each kind of breakage and
// bind-time checks, then every combination of absent / ok / inactive /
// disabled / deleted across the three tiers, whose expectations follow the
// rule in peer-behaviours §2 (project halts, user and platform fall
// through).
func precedenceTable() []precedenceCase {
	const cc = "claude-code"
	P, U, F := TierProject, TierUser, TierPlatform
	cases := []precedenceCase{
		{name: "NothingConfigured", wantSource: SourceUnresolved, wantReason: ReasonNone},
		{name: "PlatformOnly", layers: []layer{L(F, "", stOK)}, wantSource: SourcePlatform, wantLabel: "platform//wide"},
		{name: "UserBeatsPlatform", layers: []layer{L(U, "", stOK), L(F, "", stOK)}, wantSource: SourceUser, wantLabel: "user/u1/wide"},
		{name: "ProjectBeatsUser", layers: []layer{L(P, "", stOK), L(U, "", stOK), L(F, "", stOK)}, wantSource: SourceProject, wantLabel: "project/p1/wide"},
		{name: "ProjectInactiveHaltsDespiteUser", layers: []layer{L(P, "", stInactive), L(U, "", stOK), L(F, "", stOK)},
			wantSource: SourceHalted, wantLabel: "project/p1/wide", wantReason: ReasonBindingInactive},
		{name: "ProjectDisabledHalts", layers: []layer{L(P, "", stDisabled), L(U, "", stOK)},
			wantSource: SourceHalted, wantLabel: "project/p1/wide", wantReason: ReasonCredentialDisabled},
		{name: "ProjectDeletedHalts", layers: []layer{L(P, "", stDeleted), L(U, "", stOK)},
			wantSource: SourceHalted, wantLabel: "project/p1/wide", wantReason: ReasonBindingInactive},
		{name: "ProjectDanglingHalts", layers: []layer{L(P, "", stDangling), L(U, "", stOK)},
			wantSource: SourceHalted, wantLabel: "project/p1/wide", wantReason: ReasonCredentialDisabled},
		{name: "ProjectUndecryptableHalts", layers: []layer{L(P, "", stSwapped), L(U, "", stOK), L(F, "", stOK)},
			wantSource: SourceHalted, wantLabel: "project/p1/wide", wantReason: ReasonCredentialUnusable},
		{name: "ProjectUnknownKeyHalts", layers: []layer{L(P, "", stUnknownKey), L(F, "", stOK)},
			wantSource: SourceHalted, wantLabel: "project/p1/wide", wantReason: ReasonCredentialUnusable},
		{name: "UserInactiveFallsToPlatform", layers: []layer{L(U, "", stInactive), L(F, "", stOK)},
			wantSource: SourcePlatform, wantLabel: "platform//wide", wantReason: ReasonBindingInactive},
		{name: "UserDisabledFallsToPlatform", layers: []layer{L(U, "", stDisabled), L(F, "", stOK)},
			wantSource: SourcePlatform, wantLabel: "platform//wide", wantReason: ReasonCredentialDisabled},
		{name: "UserDeletedFallsToPlatform", layers: []layer{L(U, "", stDeleted), L(F, "", stOK)},
			wantSource: SourcePlatform, wantLabel: "platform//wide", wantReason: ReasonBindingInactive},
		{name: "UserDanglingFallsToPlatform", layers: []layer{L(U, "", stDangling), L(F, "", stOK)},
			wantSource: SourcePlatform, wantLabel: "platform//wide", wantReason: ReasonCredentialDisabled},
		{name: "UserUndecryptableFallsToPlatform", layers: []layer{L(U, "", stSwapped), L(F, "", stOK)},
			wantSource: SourcePlatform, wantLabel: "platform//wide", wantReason: ReasonCredentialUnusable},
		{name: "UserBrokenNoPlatformUnresolved", layers: []layer{L(U, "", stInactive)},
			wantSource: SourceUnresolved, wantReason: ReasonBindingInactive},
		{name: "PlatformInactiveUnresolved", layers: []layer{L(F, "", stInactive)},
			wantSource: SourceUnresolved, wantReason: ReasonBindingInactive},
		{name: "PlatformDisabledUnresolved", layers: []layer{L(F, "", stDisabled)},
			wantSource: SourceUnresolved, wantReason: ReasonCredentialDisabled},
		{name: "PlatformUndecryptableUnresolved", layers: []layer{L(F, "", stSwapped)},
			wantSource: SourceUnresolved, wantReason: ReasonCredentialUnusable},

		{name: "ProjectHarnessBeatsProjectWide", layers: []layer{L(P, "", stOK), L(P, cc, stOK)},
			wantSource: SourceProject, wantLabel: "project/p1/claude-code"},
		{name: "UserHarnessBeatsUserWide", layers: []layer{L(U, "", stOK), L(U, cc, stOK)},
			wantSource: SourceUser, wantLabel: "user/u1/claude-code"},
		{name: "PlatformHarnessBeatsPlatformWide", layers: []layer{L(F, "", stOK), L(F, cc, stOK)},
			wantSource: SourcePlatform, wantLabel: "platform//claude-code"},
		{name: "ProjectWideBeatsUserHarness", layers: []layer{L(P, "", stOK), L(U, cc, stOK)},
			wantSource: SourceProject, wantLabel: "project/p1/wide"},
		{name: "ProjectHarnessInactiveHaltsDespiteProjectWide", layers: []layer{L(P, cc, stInactive), L(P, "", stOK)},
			wantSource: SourceHalted, wantLabel: "project/p1/claude-code", wantReason: ReasonBindingInactive},
		{name: "ProjectHarnessDisabledHaltsDespiteProjectWide", layers: []layer{L(P, cc, stDisabled), L(P, "", stOK), L(F, "", stOK)},
			wantSource: SourceHalted, wantLabel: "project/p1/claude-code", wantReason: ReasonCredentialDisabled},
		{name: "UserHarnessBrokenFallsToUserWide", layers: []layer{L(U, cc, stDisabled), L(U, "", stOK), L(F, "", stOK)},
			wantSource: SourceUser, wantLabel: "user/u1/wide", wantReason: ReasonCredentialDisabled},
		{name: "PlatformHarnessBrokenFallsToPlatformWide", layers: []layer{L(F, cc, stInactive), L(F, "", stOK)},
			wantSource: SourcePlatform, wantLabel: "platform//wide", wantReason: ReasonBindingInactive},
		{name: "UserBothBrokenFallsToPlatformWithFirstReason", layers: []layer{L(U, cc, stSwapped), L(U, "", stInactive), L(F, "", stOK)},
			wantSource: SourcePlatform, wantLabel: "platform//wide", wantReason: ReasonCredentialUnusable},

		{name: "OtherHarnessBindingIgnored", layers: []layer{L(U, "opencode", stOK), L(F, "", stOK)},
			wantSource: SourcePlatform, wantLabel: "platform//wide"},
		{name: "OtherProjectIgnored", layers: []layer{{tier: P, scope: "p2", state: stInactive}, L(F, "", stOK)},
			wantSource: SourcePlatform, wantLabel: "platform//wide"},
		{name: "OtherUserIgnored", layers: []layer{{tier: U, scope: "u2", state: stOK}},
			wantSource: SourceUnresolved, wantReason: ReasonNone},
		{name: "NoProjectSkipsProjectTier", layers: []layer{L(P, "", stInactive), L(U, "", stOK)},
			req:        &Request{User: "u1", Harness: cc, Dialect: "anthropic-messages"},
			wantSource: SourceUser, wantLabel: "user/u1/wide"},
		{name: "NoUserSkipsUserTier", layers: []layer{L(U, "", stOK), L(F, "", stOK)},
			req:        &Request{Project: "p1", Harness: cc, Dialect: "anthropic-messages"},
			wantSource: SourcePlatform, wantLabel: "platform//wide"},
		{name: "NoHarnessIgnoresHarnessBindings", layers: []layer{L(P, cc, stInactive), L(U, cc, stOK), L(F, "", stOK)},
			req:        &Request{Project: "p1", User: "u1", Dialect: "anthropic-messages"},
			wantSource: SourcePlatform, wantLabel: "platform//wide"},
		{name: "OtherDialectIgnored", layers: []layer{{tier: U, state: stOK, provider: "openai"}, L(F, "", stOK)},
			wantSource: SourcePlatform, wantLabel: "platform//wide"},

		{name: "BindRefusesProviderDialectMismatch", layers: []layer{
			{tier: P, state: stOK, provider: "openai", bindErr: ErrDialectMismatch}, L(F, "", stOK)},
			wantSource: SourcePlatform, wantLabel: "platform//wide"},
		{name: "BindRefusesHarnessDialectMismatch", layers: []layer{
			{tier: U, harness: "codex", state: stOK, bindErr: ErrDialectMismatch}, L(F, "", stOK)},
			wantSource: SourcePlatform, wantLabel: "platform//wide"},
		{name: "BindRefusesUnknownHarness", layers: []layer{
			{tier: U, harness: "nope", state: stOK, bindErr: registry.ErrUnknownHarness}},
			wantSource: SourceUnresolved, wantReason: ReasonNone},
		{name: "BindRefusesProjectWithoutScope", layers: []layer{
			{tier: P, scope: "-", state: stOK, bindErr: ErrInvalidArgument}},
			wantSource: SourceUnresolved, wantReason: ReasonNone},
	}

	// Every combination across tiers, expectations from the rule itself.
	states := []string{"absent", stOK, stInactive, stDisabled, stDeleted}
	for _, p := range states {
		for _, u := range states {
			for _, f := range states {
				c := precedenceCase{name: fmt.Sprintf("Combo/project=%s/user=%s/platform=%s", p, u, f)}
				for _, l := range []layer{L(P, "", p), L(U, "", u), L(F, "", f)} {
					if l.state != "absent" {
						c.layers = append(c.layers, l)
					}
				}
				c.wantSource, c.wantLabel, c.wantReason = expectByRule(p, u, f)
				cases = append(cases, c)
			}
		}
	}
	return cases
}

// expectByRule restates peer-behaviours §2 for dialect-wide layers.
func expectByRule(p, u, f string) (source, label, reason string) {
	reasonOf := map[string]string{stInactive: ReasonBindingInactive, stDeleted: ReasonBindingInactive, stDisabled: ReasonCredentialDisabled}
	switch p {
	case stOK:
		return SourceProject, "project/p1/wide", ""
	case "absent":
	default:
		return SourceHalted, "project/p1/wide", reasonOf[p]
	}
	skipped := ""
	for _, x := range []struct{ st, src, label string }{{u, SourceUser, "user/u1/wide"}, {f, SourcePlatform, "platform//wide"}} {
		switch x.st {
		case stOK:
			return x.src, x.label, skipped
		case "absent":
		default:
			if skipped == "" {
				skipped = reasonOf[x.st]
			}
		}
	}
	if skipped == "" {
		skipped = ReasonNone
	}
	return SourceUnresolved, "", skipped
}

func TestPrecedence(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		e := mustService(t, dsn)
		s := e.svc
		for _, tc := range precedenceTable() {
			t.Run(tc.name, func(t *testing.T) {
				for _, tbl := range []string{"resolver_bindings", "resolver_credentials"} {
					if _, err := e.db.ExecContext(ctx, "DELETE FROM "+tbl); err != nil {
						t.Fatal(err)
					}
				}
				credOf := map[string]string{} // label → credential id
				labelOf := map[string]string{}
				var spare Credential
				for _, l := range tc.layers {
					provider := l.provider
					if provider == "" {
						provider = "anthropic"
					}
					dialect := "anthropic-messages"
					if provider == "openai" && l.bindErr == nil {
						dialect = "openai-chat"
					}
					cred := mustCred(t, s, provider, "sk-"+l.label())
					scope := l.scopeID()
					if scope == "-" {
						scope = ""
					}
					_, err := s.Bind(ctx, BindingKey{Tier: l.tier, ScopeID: scope, Dialect: dialect, Harness: l.harness}, cred.ID)
					if l.bindErr != nil {
						if !errors.Is(err, l.bindErr) {
							t.Fatalf("bind %s: got %v, want %v", l.label(), err, l.bindErr)
						}
						continue
					}
					if err != nil {
						t.Fatalf("bind %s: %v", l.label(), err)
					}
					credOf[l.label()], labelOf[cred.ID] = cred.ID, l.label()
					key := BindingKey{Tier: l.tier, ScopeID: scope, Dialect: dialect, Harness: l.harness}
					switch l.state {
					case stOK:
					case stInactive:
						err = s.SetBindingActive(ctx, key, false)
					case stDisabled:
						err = s.DisableCredential(ctx, cred.ID)
					case stDeleted:
						err = s.DeleteCredential(ctx, cred.ID)
					case stDangling:
						_, err = e.db.ExecContext(ctx, `DELETE FROM resolver_credentials WHERE id = $1`, cred.ID)
					case stSwapped:
						if spare.ID == "" {
							spare = mustCred(t, s, "anthropic", "sk-spare-credential")
						}
						_, err = e.db.ExecContext(ctx, `UPDATE resolver_credentials SET ciphertext = (SELECT ciphertext FROM resolver_credentials WHERE id = $1) WHERE id = $2`, spare.ID, cred.ID)
					case stUnknownKey:
						_, err = e.db.ExecContext(ctx, `UPDATE resolver_credentials SET key_id = 'deadbeef' WHERE id = $1`, cred.ID)
					default:
						t.Fatalf("unknown state %q", l.state)
					}
					if err != nil {
						t.Fatalf("set %s %s: %v", l.label(), l.state, err)
					}
				}
				// The raw SQL above bypassed the Service's invalidation.
				s.invalidateResolutions()

				req := defaultRequest()
				if tc.req != nil {
					req = *tc.req
				}
				target, err := s.Resolve(ctx, req)
				var got Resolution
				switch tc.wantSource {
				case SourceHalted, SourceUnresolved:
					want := ErrNoCredential
					if tc.wantSource == SourceHalted {
						want = ErrHalted
					}
					if !errors.Is(err, want) {
						t.Fatalf("Resolve: got %v, want %v", err, want)
					}
					var re *ResolveError
					if !errors.As(err, &re) || re.Reason != tc.wantReason || re.Source != tc.wantSource {
						t.Fatalf("Resolve error %v: want source %s reason %s", err, tc.wantSource, tc.wantReason)
					}
				default:
					if err != nil {
						t.Fatalf("Resolve: %v", err)
					}
					if got := labelOf[target.CredentialID]; got != tc.wantLabel {
						t.Errorf("paid by %q, want %q", got, tc.wantLabel)
					}
					if target.Tier != tc.wantSource {
						t.Errorf("tier %q, want %q", target.Tier, tc.wantSource)
					}
					if want := "sk-" + tc.wantLabel; target.Secret.Reveal() != want {
						t.Errorf("secret is not the paying credential's")
					}
					if target.Provider != "anthropic" {
						t.Errorf("provider %q, want anthropic", target.Provider)
					}
				}

				// The status view must say exactly what the request got.
				view, err := s.ResolutionView(ctx, req.Project, req.User)
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range view {
					if r.Harness == req.Harness && r.Dialect == req.Dialect {
						got = r
					}
				}
				want := Resolution{Harness: req.Harness, Dialect: req.Dialect, Source: tc.wantSource, Reason: tc.wantReason, CredentialID: credOf[tc.wantLabel]}
				if want.CredentialID != "" && credExists(s, want.CredentialID) {
					want.Provider = "anthropic"
				}
				got.Candidates = nil // candidates have tests of their own
				if !reflect.DeepEqual(got, want) {
					t.Errorf("view row:\n got %+v\nwant %+v", got, want)
				}
			})
		}
	})
}

func credExists(s *Service, id string) bool {
	_, err := s.GetCredential(context.Background(), id)
	return err == nil
}

func TestDialectMismatchAfterRegistryReload(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		path := t.TempDir() + "/harnesses.yaml"
		writeFile(t, path, testRegistryYAML)
		h, err := registry.NewHolder(path, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		e := mustService(t, dsn, withRegistry(h))
		c := mustCred(t, e.svc, "openai", "sk-openai-test-key")
		mustBind(t, e.svc, BindingKey{Tier: TierPlatform, Dialect: "openai-responses"}, c.ID)
		req := Request{User: "u1", Harness: "codex", Dialect: "openai-responses"}
		if _, err := e.svc.Resolve(ctx, req); err != nil {
			t.Fatal(err)
		}
		// openai stops speaking openai-responses; codex moves to groq.
		writeFile(t, path, replaceAll(t, testRegistryYAML,
			`openai: {base_url: "https://api.openai.com", dialects: [openai-chat, openai-responses]`,
			`openai: {base_url: "https://api.openai.com", dialects: [openai-chat]`,
			`codex: {dialects: [openai-responses], provider: openai`,
			`codex: {dialects: [openai-responses], provider: groq`))
		if err := h.Reload(); err != nil {
			t.Fatal(err)
		}
		_, err = e.svc.Resolve(ctx, req)
		var re *ResolveError
		if !errors.Is(err, ErrNoCredential) || !errors.As(err, &re) || re.Reason != ReasonDialectMismatch {
			t.Fatalf("after reload: got %v, want no credential (dialect-mismatch)", err)
		}
	})
}

func writeFile(tb testing.TB, path, content string) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		tb.Fatal(err)
	}
}

// replaceAll applies old/new pairs, failing if an old string is absent.
func replaceAll(tb testing.TB, s string, pairs ...string) string {
	tb.Helper()
	for i := 0; i+1 < len(pairs); i += 2 {
		if !strings.Contains(s, pairs[i]) {
			tb.Fatalf("fixture lacks %q", pairs[i])
		}
		s = strings.ReplaceAll(s, pairs[i], pairs[i+1])
	}
	return s
}
