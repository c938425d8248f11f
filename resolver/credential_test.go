package resolver

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
)

func TestBaseURLRules(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := filepath.Join(t.TempDir(), "t.db")
	strict := mustService(t, dsn, withConfig(func(c *Config) { c.AllowHTTPBaseURL = false })).svc
	for _, tc := range []struct {
		name, url string
		want      error
	}{
		{"HTTPS", "https://llm.example.com/v1/", nil},
		{"None", "", nil},
		{"HTTPRefused", "http://127.0.0.1:8080", ErrHTTPBaseURL},
		{"OtherScheme", "ftp://example.com", ErrInvalidArgument},
		{"Relative", "/v1", ErrInvalidArgument},
		{"UserInfo", "https://user:pass@example.com", ErrInvalidArgument},
		{"Query", "https://example.com/?a=b", ErrInvalidArgument},
		{"Fragment", "https://example.com/#x", ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := strict.CreateCredential(ctx, CredentialSpec{Provider: "anthropic", Secret: NewSecret("sk-base-url-test-0000"), BaseURL: tc.url})
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if err == nil && tc.url != "" && c.BaseURL != "https://llm.example.com/v1" {
				t.Fatalf("base URL stored as %q", c.BaseURL)
			}
		})
	}

	// Accepted with AllowHTTPBaseURL, returned in the Target, and refused
	// again at use by a process without it.
	lax := mustService(t, dsn).svc
	c, err := lax.CreateCredential(ctx, CredentialSpec{Provider: "anthropic", Secret: NewSecret("sk-local-endpoint-000"), BaseURL: "http://127.0.0.1:8080"})
	if err != nil {
		t.Fatal(err)
	}
	mustBind(t, lax, BindingKey{Tier: TierPlatform, Dialect: "anthropic-messages"}, c.ID)
	got, err := lax.Resolve(ctx, ccAnthropic)
	if err != nil || got.BaseURL != "http://127.0.0.1:8080" {
		t.Fatalf("got %q, %v", got.BaseURL, err)
	}
	_, err = strict.Resolve(ctx, ccAnthropic)
	var re *ResolveError
	if !errors.As(err, &re) || re.Reason != ReasonCredentialUnusable || !errors.Is(err, ErrHTTPBaseURL) {
		t.Fatalf("http base URL at use without AllowHTTPBaseURL: got %v, want credential-unusable by ErrHTTPBaseURL", err)
	}
}

func TestSetPlatformKeyReplaces(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := mustService(t, dsn).svc
		first, err := s.SetPlatformKey(ctx, "openai", NewSecret("sk-platform-openai-first"))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.DisableCredential(ctx, first.ID); err != nil {
			t.Fatal(err)
		}
		second, err := s.SetPlatformKey(ctx, "openai", NewSecret("sk-platform-openai-second"))
		if err != nil {
			t.Fatal(err)
		}
		if second.ID != first.ID || second.Disabled || second.Last4 != "cond" {
			t.Fatalf("second run: %+v, want the same credential, enabled, new secret", second)
		}
		creds, _ := s.ListCredentials(ctx)
		binds, _ := s.ListBindings(ctx, BindingFilter{Tier: TierPlatform})
		if len(creds) != 1 || len(binds) != 2 {
			t.Fatalf("%d credentials and %d platform bindings, want 1 and 2 (openai-chat, openai-responses)", len(creds), len(binds))
		}
		for _, d := range []string{"openai-chat", "openai-responses"} {
			wantSecret(t, s, Request{User: "u1", Harness: "codex", Dialect: d}, "sk-platform-openai-second")
		}
		if _, err := s.SetPlatformKey(ctx, "nope", NewSecret("sk-x-000000000000")); err == nil {
			t.Fatal("unknown provider accepted")
		}
	})
}

func TestAdminNotFound(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := mustService(t, filepath.Join(t.TempDir(), "t.db")).svc
	k := BindingKey{Tier: TierUser, ScopeID: "u1", Dialect: "anthropic-messages"}
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"Disable", s.DisableCredential(ctx, "cred_nope"), ErrCredentialNotFound},
		{"Enable", s.EnableCredential(ctx, "cred_nope"), ErrCredentialNotFound},
		{"Delete", s.DeleteCredential(ctx, "cred_nope"), ErrCredentialNotFound},
		{"Unbind", s.Unbind(ctx, k), ErrBindingNotFound},
		{"SetActive", s.SetBindingActive(ctx, k, true), ErrBindingNotFound},
		{"Bind", func() error { _, err := s.Bind(ctx, k, "cred_nope"); return err }(), ErrCredentialNotFound},
		{"Get", func() error { _, err := s.GetCredential(ctx, "cred_nope"); return err }(), ErrCredentialNotFound},
		{"BadTier", func() error {
			_, err := s.Bind(ctx, BindingKey{Tier: "team", ScopeID: "x", Dialect: "anthropic-messages"}, "cred_nope")
			return err
		}(), ErrInvalidArgument},
		{"PlatformWithScope", func() error {
			_, err := s.Bind(ctx, BindingKey{Tier: TierPlatform, ScopeID: "x", Dialect: "anthropic-messages"}, "cred_nope")
			return err
		}(), ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !errors.Is(tc.err, tc.want) {
				t.Fatalf("got %v, want %v", tc.err, tc.want)
			}
		})
	}
}

// Bind with Inactive writes the binding deactivated in one transaction
// (one change-log entry), so no reader anywhere sees it live (defect 7:
// bind, then deactivate, was two commits).
func TestBindInactiveIsOneCommit(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		w := mustService(t, dsn)
		r := mustService(t, dsn, withConfig(func(c *Config) { c.PollInterval = 5 * time.Millisecond; c.PollOnly = true }))
		if err := r.svc.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := w.svc.SetPlatformKey(ctx, "anthropic", NewSecret("sk-platform-anthropic-1")); err != nil {
			t.Fatal(err)
		}
		p := mustCred(t, w.svc, "anthropic", "sk-project-anthropic-1")
		before, err := w.svc.changeSeq(ctx)
		if err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		saw := make(chan string, 1)
		go func() {
			defer close(saw)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if got, err := r.svc.Resolve(ctx, ccAnthropic); err == nil && got.Tier == TierProject {
					saw <- got.CredentialID
					return
				}
			}
		}()
		k := BindingKey{Tier: TierProject, ScopeID: "p1", Dialect: "anthropic-messages"}
		b, err := w.svc.Bind(ctx, k, p.ID, BindOptions{Inactive: true})
		if err != nil {
			t.Fatal(err)
		}
		if b.Active {
			t.Fatal("Bind Inactive returned an active binding")
		}
		after, err := w.svc.changeSeq(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if after-before != 1 {
			t.Fatalf("Bind Inactive wrote %d changes, want 1 (one transaction)", after-before)
		}
		testkit.Eventually(t, 2*time.Second, "the other process to see the inactive project binding halt", func() bool {
			_, err := r.svc.Resolve(ctx, ccAnthropic)
			return errors.Is(err, ErrHalted)
		})
		close(stop)
		if id, ok := <-saw; ok {
			t.Fatalf("a reader saw the inactive binding's credential %s pay", id)
		}
		bs, err := w.svc.ListBindings(ctx, BindingFilter{CredentialID: p.ID})
		if err != nil || len(bs) != 1 || bs[0].Active {
			t.Fatalf("bindings: %+v, %v; want one, inactive", bs, err)
		}
	})
}
