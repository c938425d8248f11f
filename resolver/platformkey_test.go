package resolver

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
)

// TestDeletePlatformKey removes a platform key: the platform bindings it
// alone held go (the dialects resolve to nothing), one that names another
// credential too keeps resolving to that one, a project bound to the key
// by hand halts, and a second removal or an unknown provider is refused
// by name.
func TestDeletePlatformKey(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		e := mustService(t, dsn)
		s := e.svc
		codex := Request{User: "u1", Harness: "codex", Dialect: "openai-responses"}
		chat := Request{User: "u1", Harness: "opencode", Dialect: "openai-chat"}
		pc, err := s.SetPlatformKey(ctx, "openai", NewSecret("sk-platform-openai-0001"))
		if err != nil {
			t.Fatal(err)
		}
		wantSecret(t, s, codex, "sk-platform-openai-0001")
		wantSecret(t, s, chat, "sk-platform-openai-0001")
		g := mustCred(t, s, "groq", "sk-groq-standby-000001")
		mustBindCandidates(t, s, BindingKey{Tier: TierPlatform, Dialect: "openai-chat"},
			BindCandidate{CredentialID: pc.ID}, BindCandidate{CredentialID: g.ID, Priority: 1})
		pk := BindingKey{Tier: TierProject, ScopeID: "p9", Dialect: "openai-responses"}
		mustBind(t, s, pk, pc.ID)

		keys, err := s.PlatformKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if o := platformKeyOf(keys, "openai"); len(keys) != 3 || o.Credential == nil || o.Credential.ID != pc.ID ||
			platformKeyOf(keys, "groq").Credential != nil || strings.Join(o.Dialects, ",") != "openai-chat,openai-responses" {
			t.Fatalf("platform keys before: %+v", keys)
		}

		got, err := s.DeletePlatformKey(ctx, "openai")
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != pc.ID || got.Provider != "openai" || got.Last4 != "0001" {
			t.Fatalf("deleted %+v, want %s", got, pc.ID)
		}
		if _, err := s.GetCredential(ctx, pc.ID); !errors.Is(err, ErrCredentialNotFound) {
			t.Fatalf("the credential is still there: %v", err)
		}
		wantErr(t, s, codex, ErrNoCredential)
		wantSecret(t, s, chat, "sk-groq-standby-000001")
		wantErr(t, s, Request{Project: "p9", User: "u1", Harness: "codex", Dialect: "openai-responses"}, ErrHalted)
		plat, err := s.ListBindings(ctx, BindingFilter{Tier: TierPlatform})
		if err != nil || len(plat) != 1 || plat[0].Dialect != "openai-chat" || !plat[0].Active {
			t.Fatalf("platform bindings after: %+v %v, want openai-chat only, active", plat, err)
		}
		view, err := s.ResolutionView(ctx, "", "u1")
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range view {
			if r.Dialect == "openai-responses" && (r.Source != SourceUnresolved || r.Reason != ReasonNone) {
				t.Errorf("view row %s/%s: %s %s, want unresolved, none", r.Harness, r.Dialect, r.Source, r.Reason)
			}
		}
		keys, err = s.PlatformKeys(ctx)
		if err != nil || len(keys) != 3 || platformKeyOf(keys, "openai").Credential != nil {
			t.Fatalf("platform keys after: %+v %v", keys, err)
		}

		_, err = s.DeletePlatformKey(ctx, "openai")
		if !errors.Is(err, ErrCredentialNotFound) || !strings.Contains(err.Error(), `"openai"`) {
			t.Errorf("second removal: %v, want not found naming openai", err)
		}
		_, err = s.DeletePlatformKey(ctx, "nope")
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), `"nope"`) || !strings.Contains(err.Error(), "anthropic, groq, openai") {
			t.Errorf("unknown provider: %v, want invalid naming it and the known ones", err)
		}
	})
}

func platformKeyOf(keys []PlatformKey, provider string) PlatformKey {
	for _, k := range keys {
		if k.Provider == provider {
			return k
		}
	}
	return PlatformKey{}
}

// A platform key whose provider the registry dropped is still listed,
// after the registry's, and can still be removed.
func TestDeletePlatformKeyOfDroppedProvider(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		e := mustService(t, dsn)
		s := e.svc
		pc, err := s.SetPlatformKey(ctx, "groq", NewSecret("sk-platform-groq-00001"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.db.ExecContext(ctx, `UPDATE resolver_credentials SET provider = $1, name = $2 WHERE id = $3`, "gone", "platform-gone", pc.ID); err != nil {
			t.Fatal(err)
		}
		keys, err := s.PlatformKeys(ctx)
		if err != nil || len(keys) != 4 || keys[3].Provider != "gone" || keys[3].Credential == nil || keys[3].Credential.ID != pc.ID {
			t.Fatalf("platform keys: %+v %v", keys, err)
		}
		if _, err := s.DeletePlatformKey(ctx, "gone"); err != nil {
			t.Fatal(err)
		}
		if bs, _ := s.ListBindings(ctx, BindingFilter{Tier: TierPlatform}); len(bs) != 0 {
			t.Fatalf("platform bindings left: %+v", bs)
		}
	})
}

// Another replica learns of the removal from the change log at its next
// poll, and on PostgreSQL from NOTIFY alone (its poll interval an hour).
func TestDeletePlatformKeyReachesReplicas(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		w := mustService(t, dsn)
		r := startedService(t, dsn)
		if _, err := w.svc.SetPlatformKey(ctx, "anthropic", NewSecret("sk-platform-anthropic-1")); err != nil {
			t.Fatal(err)
		}
		if err := r.svc.pollChanges(ctx); err != nil {
			t.Fatal(err)
		}
		wantSecret(t, r.svc, ccAnthropic, "sk-platform-anthropic-1")
		if _, err := w.svc.DeletePlatformKey(ctx, "anthropic"); err != nil {
			t.Fatal(err)
		}
		wantSecret(t, r.svc, ccAnthropic, "sk-platform-anthropic-1") // cached until the poll
		if err := r.svc.pollChanges(ctx); err != nil {
			t.Fatal(err)
		}
		wantErr(t, r.svc, ccAnthropic, ErrNoCredential)
	})
	t.Run("Notify", func(t *testing.T) {
		ctx := context.Background()
		w, r := notifiedPair(t)
		if _, err := w.svc.SetPlatformKey(ctx, "anthropic", NewSecret("sk-platform-anthropic-1")); err != nil {
			t.Fatal(err)
		}
		testkit.Eventually(t, 2*time.Second, "the platform key", func() bool {
			tg, err := r.svc.Resolve(ctx, ccAnthropic)
			return err == nil && tg.Secret.Reveal() == "sk-platform-anthropic-1"
		})
		if _, err := w.svc.DeletePlatformKey(ctx, "anthropic"); err != nil {
			t.Fatal(err)
		}
		testkit.Eventually(t, 2*time.Second, "the removal", func() bool {
			_, err := r.svc.Resolve(ctx, ccAnthropic)
			return errors.Is(err, ErrNoCredential)
		})
	})
}

// notifiedPair is a writer and a started reader on one PostgreSQL schema,
// the reader polling once an hour, so it learns of writes by NOTIFY alone.
// It skips the test without TOLLGATE_TEST_POSTGRES.
func notifiedPair(t *testing.T) (w, r *env) {
	t.Helper()
	pg := os.Getenv("TOLLGATE_TEST_POSTGRES")
	if pg == "" {
		t.Skip("TOLLGATE_TEST_POSTGRES not set")
	}
	dsn := pgSchemaDSN(t, pg)
	w = mustService(t, dsn)
	r = mustService(t, dsn, withConfig(func(c *Config) { c.PollInterval = time.Hour }))
	if err := r.svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return w, r
}
