package resolver

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
)

var ccAnthropic = Request{Project: "p1", User: "u1", Harness: "claude-code", Dialect: "anthropic-messages"}

func wantSecret(t *testing.T, s *Service, req Request, want string) {
	t.Helper()
	got, err := s.Resolve(context.Background(), req)
	if err != nil {
		t.Fatalf("Resolve: %v, want the credential %q", err, want)
	}
	if got.Secret.Reveal() != want {
		t.Fatalf("Resolve: got another credential (tier %s), want %q", got.Tier, want)
	}
}

func wantErr(t *testing.T, s *Service, req Request, want error) {
	t.Helper()
	_, err := s.Resolve(context.Background(), req)
	if !errors.Is(err, want) {
		t.Fatalf("Resolve: got %v, want %v", err, want)
	}
}

// Writes by another process are not seen before the cached answer expires
// when no poller runs: positive answers live ResolveCacheTTL, negative
// ones NegativeTTL, both on the injected clock.
func TestCacheServesUntilTTL(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		a := mustService(t, dsn)
		b := mustService(t, dsn)
		c, err := a.svc.SetPlatformKey(ctx, "anthropic", NewSecret("sk-platform-anthropic-1"))
		if err != nil {
			t.Fatal(err)
		}
		wantSecret(t, a.svc, ccAnthropic, "sk-platform-anthropic-1")

		if err := b.svc.DisableCredential(ctx, c.ID); err != nil {
			t.Fatal(err)
		}
		wantSecret(t, a.svc, ccAnthropic, "sk-platform-anthropic-1")
		a.clock.Advance(DefaultResolveCacheTTL - time.Second)
		wantSecret(t, a.svc, ccAnthropic, "sk-platform-anthropic-1")
		a.clock.Advance(time.Second)
		wantErr(t, a.svc, ccAnthropic, ErrNoCredential)

		if err := b.svc.EnableCredential(ctx, c.ID); err != nil {
			t.Fatal(err)
		}
		wantErr(t, a.svc, ccAnthropic, ErrNoCredential)
		a.clock.Advance(DefaultNegativeTTL)
		wantSecret(t, a.svc, ccAnthropic, "sk-platform-anthropic-1")
	})
}

// Every kind of write through a Service drops the cached resolutions it
// can affect, and only those. Each case first hides a change from the
// cache (raw SQL disables the paying platform credential of p1/u1), proves
// the cache still serves the old answer, then makes the write: if the
// write can affect p1/u1's resolution the hidden change shows at once;
// otherwise the cached answer must survive, so a write elsewhere sends no
// one back to the database.
func TestWritesInvalidateOnlyWhatTheyAffect(t *testing.T) {
	t.Parallel()
	other := BindingKey{Tier: TierUser, ScopeID: "u9", Dialect: "openai-chat"}
	for _, tc := range []struct {
		name  string
		drops bool
		write func(ctx context.Context, s *Service, otherCred string) error
	}{
		{"CreateCredential", false, func(ctx context.Context, s *Service, _ string) error {
			_, err := s.CreateCredential(ctx, CredentialSpec{Provider: "openai", Secret: NewSecret("sk-new-openai-key")})
			return err
		}},
		{"DisableCredential", false, func(ctx context.Context, s *Service, o string) error { return s.DisableCredential(ctx, o) }},
		{"EnableCredential", false, func(ctx context.Context, s *Service, o string) error { return s.EnableCredential(ctx, o) }},
		{"DeleteCredential", false, func(ctx context.Context, s *Service, o string) error { return s.DeleteCredential(ctx, o) }},
		{"SetCredentialSecret", false, func(ctx context.Context, s *Service, o string) error {
			return s.SetCredentialSecret(ctx, o, NewSecret("sk-rotated-openai-key"))
		}},
		{"BindOtherUser", false, func(ctx context.Context, s *Service, o string) error {
			_, err := s.Bind(ctx, BindingKey{Tier: TierUser, ScopeID: "u8", Dialect: "openai-chat"}, o)
			return err
		}},
		{"BindSameUser", true, func(ctx context.Context, s *Service, o string) error {
			_, err := s.Bind(ctx, BindingKey{Tier: TierUser, ScopeID: "u1", Dialect: "openai-chat"}, o)
			return err
		}},
		{"BindSameProject", true, func(ctx context.Context, s *Service, o string) error {
			_, err := s.Bind(ctx, BindingKey{Tier: TierProject, ScopeID: "p1", Dialect: "openai-chat"}, o)
			return err
		}},
		{"Unbind", false, func(ctx context.Context, s *Service, _ string) error { return s.Unbind(ctx, other) }},
		{"Deactivate", false, func(ctx context.Context, s *Service, _ string) error { return s.SetBindingActive(ctx, other, false) }},
		{"Activate", false, func(ctx context.Context, s *Service, _ string) error { return s.SetBindingActive(ctx, other, true) }},
		{"RevokeWorkspaceTokens", false, func(ctx context.Context, s *Service, _ string) error {
			_, err := s.RevokeWorkspaceTokens(ctx, "w1")
			return err
		}},
		{"SetPlatformKey", true, func(ctx context.Context, s *Service, _ string) error {
			_, err := s.SetPlatformKey(ctx, "openai", NewSecret("sk-platform-openai-key"))
			return err
		}},
		{"RotateKey", true, func(ctx context.Context, s *Service, _ string) error { return s.RotateKey(ctx, testKey1, testKey2) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			forEachEngine(t, func(t *testing.T, dsn string) {
				ctx := context.Background()
				e := mustService(t, dsn)
				s := e.svc
				pay, err := s.SetPlatformKey(ctx, "anthropic", NewSecret("sk-platform-anthropic-1"))
				if err != nil {
					t.Fatal(err)
				}
				o := mustCred(t, s, "openai", "sk-other-openai-key")
				mustBind(t, s, other, o.ID)
				wantSecret(t, s, ccAnthropic, "sk-platform-anthropic-1")

				if _, err := e.db.ExecContext(ctx, `UPDATE resolver_credentials SET disabled = $1 WHERE id = $2`, true, pay.ID); err != nil {
					t.Fatal(err)
				}
				wantSecret(t, s, ccAnthropic, "sk-platform-anthropic-1") // served from the cache

				if err := tc.write(ctx, s, o.ID); err != nil {
					t.Fatal(err)
				}
				if tc.drops {
					wantErr(t, s, ccAnthropic, ErrNoCredential)
				} else {
					wantSecret(t, s, ccAnthropic, "sk-platform-anthropic-1")
				}
			})
		})
	}
}

// Writes that change the answer change it at once, positive and negative
// cache entries alike.
func TestWritesApplyAtOnce(t *testing.T) {
	t.Parallel()
	pKey := BindingKey{Tier: TierProject, ScopeID: "p1", Dialect: "anthropic-messages"}
	uKey := BindingKey{Tier: TierUser, ScopeID: "u1", Dialect: "anthropic-messages"}
	fKey := BindingKey{Tier: TierPlatform, Dialect: "anthropic-messages"}
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := mustService(t, dsn).svc
		wantErr(t, s, ccAnthropic, ErrNoCredential) // negative entry cached

		f := mustCred(t, s, "anthropic", "sk-platform-key-0001")
		mustBind(t, s, fKey, f.ID)
		wantSecret(t, s, ccAnthropic, "sk-platform-key-0001")

		u := mustCred(t, s, "anthropic", "sk-user-key-0000001")
		mustBind(t, s, uKey, u.ID)
		wantSecret(t, s, ccAnthropic, "sk-user-key-0000001")

		if err := s.SetCredentialSecret(ctx, u.ID, NewSecret("sk-user-key-0000002")); err != nil {
			t.Fatal(err)
		}
		wantSecret(t, s, ccAnthropic, "sk-user-key-0000002")

		if err := s.SetBindingActive(ctx, uKey, false); err != nil {
			t.Fatal(err)
		}
		wantSecret(t, s, ccAnthropic, "sk-platform-key-0001")
		if err := s.SetBindingActive(ctx, uKey, true); err != nil {
			t.Fatal(err)
		}
		wantSecret(t, s, ccAnthropic, "sk-user-key-0000002")

		p := mustCred(t, s, "anthropic", "sk-project-key-00001")
		mustBind(t, s, pKey, p.ID)
		wantSecret(t, s, ccAnthropic, "sk-project-key-00001")
		if err := s.DisableCredential(ctx, p.ID); err != nil {
			t.Fatal(err)
		}
		wantErr(t, s, ccAnthropic, ErrHalted)
		if err := s.EnableCredential(ctx, p.ID); err != nil {
			t.Fatal(err)
		}
		wantSecret(t, s, ccAnthropic, "sk-project-key-00001")
		if err := s.SetBindingActive(ctx, pKey, false); err != nil {
			t.Fatal(err)
		}
		wantErr(t, s, ccAnthropic, ErrHalted)
		if err := s.Unbind(ctx, pKey); err != nil {
			t.Fatal(err)
		}
		wantSecret(t, s, ccAnthropic, "sk-user-key-0000002")

		if err := s.DeleteCredential(ctx, u.ID); err != nil {
			t.Fatal(err)
		}
		wantSecret(t, s, ccAnthropic, "sk-platform-key-0001")
		if err := s.SetBindingActive(ctx, uKey, true); !errors.Is(err, ErrCredentialNotFound) {
			t.Fatalf("reactivating a binding whose credential is gone: got %v, want ErrCredentialNotFound", err)
		}
		bs, err := s.ListBindings(ctx, BindingFilter{CredentialID: u.ID})
		if err != nil || len(bs) != 1 || bs[0].Active {
			t.Fatalf("bindings of a deleted credential: got %+v, %v; want one, inactive", bs, err)
		}

		if _, err := s.SetPlatformKey(ctx, "anthropic", NewSecret("sk-platform-key-0002")); err != nil {
			t.Fatal(err)
		}
		wantSecret(t, s, ccAnthropic, "sk-platform-key-0002")
	})
}

// A write by another process reaches a started Service within its poll
// interval: resolutions and token revocations alike.
func TestChangeLogReachesOtherProcess(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		a := mustService(t, dsn)
		b := mustService(t, dsn, withConfig(func(c *Config) { c.PollInterval = 10 * time.Millisecond }))
		if err := b.svc.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := b.svc.Start(ctx); !errors.Is(err, ErrClosed) {
			t.Fatalf("second Start: got %v, want ErrClosed", err)
		}
		c, err := a.svc.SetPlatformKey(ctx, "anthropic", NewSecret("sk-platform-anthropic-1"))
		if err != nil {
			t.Fatal(err)
		}
		token, _, err := a.svc.IssueToken(ctx, TokenSpec{Workspace: "w1", Project: "p1", User: "u1"})
		if err != nil {
			t.Fatal(err)
		}
		wantSecret(t, b.svc, ccAnthropic, "sk-platform-anthropic-1")
		id, err := b.svc.Authenticate(ctx, token)
		if err != nil {
			t.Fatal(err)
		}

		if err := a.svc.DisableCredential(ctx, c.ID); err != nil {
			t.Fatal(err)
		}
		testkit.Eventually(t, 2*time.Second, "the disabled credential to be refused on the other process", func() bool {
			_, err := b.svc.Resolve(ctx, ccAnthropic)
			return errors.Is(err, ErrNoCredential)
		})
		if err := a.svc.EnableCredential(ctx, c.ID); err != nil {
			t.Fatal(err)
		}
		testkit.Eventually(t, 2*time.Second, "the enabled credential to resolve again on the other process", func() bool {
			_, err := b.svc.Resolve(ctx, ccAnthropic)
			return err == nil
		})

		if err := a.svc.RevokeToken(ctx, id.TokenID); err != nil {
			t.Fatal(err)
		}
		testkit.Eventually(t, 2*time.Second, "the revoked token to be refused on the other process", func() bool {
			_, err := b.svc.Authenticate(ctx, token)
			return errors.Is(err, ErrTokenRevoked)
		})
		if err := b.svc.Close(); err != nil {
			t.Fatal(err)
		}
		if err := b.svc.Start(ctx); !errors.Is(err, ErrClosed) {
			t.Fatalf("Start after Close: got %v, want ErrClosed", err)
		}
	})
}
