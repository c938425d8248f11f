package resolver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// A canary secret travels every path a secret can take: create, replace,
// resolve, list, view, every refusal and the unusable-credential log. It
// must never show up in a log line, an error string, a listing or the JSON
// or fmt rendering of anything the package returns.
func TestCanaryNeverLeaks(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		e := mustService(t, dsn)
		s := e.svc
		const canary = "sk-ant-CANARY-7f3a9c1e5b2d4f6a8c0e"
		var seen []string // everything rendered, searched at the end
		note := func(vs ...any) {
			for _, v := range vs {
				b, _ := json.Marshal(v)
				seen = append(seen, string(b), fmt.Sprintf("%v|%+v|%#v|%s|%q|%x", v, v, v, v, v, v))
			}
		}
		noteErr := func(err error) {
			if err == nil {
				t.Fatal("expected an error")
			}
			seen = append(seen, err.Error(), fmt.Sprintf("%+v", err))
		}

		c, err := s.CreateCredential(ctx, CredentialSpec{Name: "canary", Provider: "anthropic", Secret: NewSecret(canary)})
		if err != nil {
			t.Fatal(err)
		}
		note(c)
		mustBind(t, s, BindingKey{Tier: TierUser, ScopeID: "u1", Dialect: "anthropic-messages"}, c.ID)
		pc, err := s.SetPlatformKey(ctx, "anthropic", NewSecret(canary+"-platform"))
		if err != nil {
			t.Fatal(err)
		}
		note(pc)
		if err := s.SetCredentialSecret(ctx, c.ID, NewSecret(canary)); err != nil {
			t.Fatal(err)
		}

		target, err := s.Resolve(ctx, ccAnthropic)
		if err != nil || target.Secret.Reveal() != canary {
			t.Fatalf("resolve: %v", err)
		}
		note(target, target.Secret, &target, []Target{target}, map[string]Secret{"k": target.Secret})
		e.svc.log.Info("resolved", "target", target, "secret", target.Secret, "group", slog.GroupValue(slog.Any("s", target.Secret)))

		creds, _ := s.ListCredentials(ctx)
		binds, _ := s.ListBindings(ctx, BindingFilter{})
		view, _ := s.ResolutionView(ctx, "p1", "u1")
		got, _ := s.GetCredential(ctx, c.ID)
		note(creds, binds, view, got)

		for _, spec := range []CredentialSpec{
			{Provider: "anthropic", Secret: NewSecret(canary), BaseURL: "ftp://example.com"},
			{Provider: "anthropic", Secret: NewSecret(canary), BaseURL: "https://u:" + canary + "@example.com"},
			{Provider: "anthropic", Secret: NewSecret(canary), BaseURL: "https://example.com/?k=" + canary},
			{Provider: "nope", Secret: NewSecret(canary)},
			{Provider: "anthropic", Secret: NewSecret(canary + " with a space")},
			{Provider: "anthropic", Secret: NewSecret(canary + "\r\nX-Injected: 1")},
			{Provider: "anthropic", Kind: "oauth", Secret: NewSecret(canary)},
		} {
			_, err := s.CreateCredential(ctx, spec)
			noteErr(err)
		}
		noteErr(s.SetCredentialSecret(ctx, "cred_nope", NewSecret(canary)))
		noteErr(s.SetCredentialSecret(ctx, c.ID, NewSecret(canary+"\x00")))
		_, err = s.SetPlatformKey(ctx, "nope", NewSecret(canary))
		noteErr(err)

		// Make the user credential unreadable: the resolver logs it and the
		// halt/no-credential errors carry a reason, never the key.
		if _, err := e.db.ExecContext(ctx, `UPDATE resolver_credentials SET ciphertext = (SELECT ciphertext FROM resolver_credentials WHERE id = $1) WHERE id = $2`, pc.ID, c.ID); err != nil {
			t.Fatal(err)
		}
		s2 := mustService(t, dsn)
		seen = append(seen, dumpLogs(s2))
		if _, err := s2.svc.Resolve(ctx, ccAnthropic); err != nil {
			t.Fatal(err)
		}
		if err := s2.svc.DisableCredential(ctx, pc.ID); err != nil {
			t.Fatal(err)
		}
		_, err = s2.svc.Resolve(ctx, ccAnthropic)
		if !errors.Is(err, ErrNoCredential) {
			t.Fatalf("got %v", err)
		}
		noteErr(err)
		if !strings.Contains(s2.logs.String(), "does not decrypt") {
			t.Fatal("the unusable credential was not logged")
		}

		seen = append(seen, e.logs.String(), s2.logs.String())
		all := strings.Join(seen, "\n")
		if !strings.Contains(all, redacted) {
			t.Fatal("nothing was rendered redacted; is the test rendering the target?")
		}
		if i := strings.Index(all, "CANARY"); i >= 0 {
			t.Fatalf("the canary leaked: …%s…", all[max(0, i-200):min(len(all), i+50)])
		}
	})
}

func dumpLogs(e *env) string { return e.logs.String() }
