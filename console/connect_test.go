package console

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/resolver"
)

// postConnect is the connect form as a browser sends it.
func postConnect(tier, project, user, dialect, harness, provider, name, key, baseURL string) url.Values {
	return url.Values{"tier": {tier}, "project": {project}, "user": {user}, "dialect": {dialect}, "harness": {harness},
		"provider": {provider}, "name": {name}, "key": {key}, "base_url": {baseURL}}
}

func TestConnectAddsAndBinds(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	b := e.browser()
	b.signIn(testAdminToken)
	page := b.get("/ui/connections/connect?project=p1&user=u1&dialect=anthropic-messages&harness=claude-code")
	for _, s := range []string{`id="connect-key"`, `name="key" type="password"`, `<option value="anthropic-messages" selected>`, `<option value="claude-code" selected>`,
		`id="connect-tier-project" name="tier" value="project" checked`, `anthropic — speaks anthropic-messages`} {
		if !strings.Contains(page.body, s) {
			t.Errorf("connect page lacks %s", s)
		}
	}
	const key = "sk-ant-api03-connectflow-00000000009876"
	a := b.post("/ui/connections/connect", postConnect("project", "p1", "u1", "anthropic-messages", "claude-code", "anthropic", "team key", key, "https://anthropic.example.com"))
	if a.status != http.StatusSeeOther {
		t.Fatalf("connect: %d\n%s", a.status, a.body)
	}
	loc, _ := url.Parse(a.location)
	id := loc.Query().Get("connected")
	if loc.Path != "/ui/connections" || loc.Query().Get("project") != "p1" || !strings.HasPrefix(id, "cred_") {
		t.Fatalf("redirect %q", a.location)
	}
	cr, err := e.svc.GetCredential(ctx, id)
	if err != nil || cr.Provider != "anthropic" || cr.Name != "team key" || cr.BaseURL != "https://anthropic.example.com" {
		t.Fatalf("stored credential: %+v %v", cr, err)
	}
	tgt, err := e.svc.Resolve(ctx, resolver.Request{Project: "p1", Harness: "claude-code", Dialect: "anthropic-messages"})
	if err != nil || tgt.CredentialID != id || tgt.Tier != resolver.TierProject || tgt.Secret.Reveal() != key {
		t.Fatalf("resolve after connect: %+v %v", tgt, err)
	}
	if !strings.Contains(e.logs.String(), "msg=\"console connect\" session="+hashID(b.cookie().Value)[:12]+" credential_id="+id) {
		t.Errorf("the write is not logged with its session:\n%s", e.logs.String())
	}
	grid := b.get(a.location)
	if !strings.Contains(grid.body, `id="flash"`) || !strings.Contains(grid.body, "team key") {
		t.Error("no confirmation after connect")
	}
	if c := parseGrid(t, grid.body)["conn-claude-code-anthropic-messages"]; c.source != "project" {
		t.Errorf("grid after connect: %+v", c)
	}

	// An existing credential, bound at the user tier for a whole dialect.
	form := postConnect("user", "p1", "u1", "anthropic-messages", "", "", "", "", "")
	form.Set("existing", id)
	if a := b.post("/ui/connections/connect", form); a.status != http.StatusSeeOther {
		t.Fatalf("bind existing: %d\n%s", a.status, a.body)
	}
	bs, err := e.svc.ListBindings(ctx, resolver.BindingFilter{Tier: resolver.TierUser, ScopeID: "u1"})
	if err != nil || len(bs) != 1 || bs[0].CredentialID != id || bs[0].Harness != "" || !bs[0].Active {
		t.Fatalf("user binding: %+v %v", bs, err)
	}
	creds, _ := e.svc.ListCredentials(ctx)
	if len(creds) != 1 {
		t.Errorf("binding an existing credential created another: %d credentials", len(creds))
	}

	// Platform tier, inactive.
	form = postConnect("platform", "", "", "openai-chat", "", "openai", "plat", "sk-proj-platformconnect-0000000000", "")
	form.Set("inactive", "1")
	if a := b.post("/ui/connections/connect", form); a.status != http.StatusSeeOther {
		t.Fatalf("platform connect: %d\n%s", a.status, a.body)
	}
	bs, _ = e.svc.ListBindings(ctx, resolver.BindingFilter{Tier: resolver.TierPlatform})
	if len(bs) != 1 || bs[0].Dialect != "openai-chat" || bs[0].Active {
		t.Fatalf("platform binding: %+v", bs)
	}
}

// Refusals come from the resolver functions the CLI calls, shown on the
// form again without the key; nothing is left behind.
func TestConnectValidationErrors(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	b := e.browser()
	b.signIn(testAdminToken)
	const key = "sk-ant-api03-refusedkey-000000004444"
	cases := []struct {
		name string
		form url.Values
		want string
	}{
		{"http base URL", postConnect("project", "p1", "", "anthropic-messages", "", "anthropic", "n", key, "http://anthropic.example.com"), "https"},
		{"provider does not speak the dialect", postConnect("project", "p1", "", "openai-chat", "", "anthropic", "n", key, ""), "does not speak"},
		{"harness does not speak the dialect", postConnect("project", "p1", "", "gemini", "claude-code", "gemini", "n", key, ""), "does not speak"},
		{"unknown provider", postConnect("project", "p1", "", "anthropic-messages", "", "nope", "n", key, ""), "provider"},
		{"project tier without a project", postConnect("project", "", "", "anthropic-messages", "", "anthropic", "n", key, ""), "scope_id is required"},
		{"no key", postConnect("user", "", "u1", "anthropic-messages", "", "anthropic", "n", "", ""), "enter the provider key"},
		{"existing credential and a key", func() url.Values {
			f := postConnect("user", "", "u1", "anthropic-messages", "", "anthropic", "n", key, "")
			f.Set("existing", "cred_any")
			return f
		}(), "not both"},
		{"unknown existing credential", func() url.Values {
			f := postConnect("user", "", "u1", "anthropic-messages", "", "", "", "", "")
			f.Set("existing", "cred_nope")
			return f
		}(), "not found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := b.post("/ui/connections/connect", tc.form)
			if a.status != http.StatusUnprocessableEntity {
				t.Fatalf("%d, want 422", a.status)
			}
			i := strings.Index(a.body, `id="form-error"`)
			if i < 0 || !strings.Contains(a.body[i:i+400], tc.want) {
				t.Fatalf("error does not say %q:\n%s", tc.want, a.body)
			}
			if strings.Contains(a.body, key[12:]) || a.location != "" {
				t.Fatal("the key came back")
			}
			if !strings.Contains(a.body, `id="connect-form"`) || !strings.Contains(a.body, `value="`+tc.form.Get("dialect")+`" selected`) {
				t.Error("the form is not shown again with its choices")
			}
			creds, _ := e.svc.ListCredentials(ctx)
			bs, _ := e.svc.ListBindings(ctx, resolver.BindingFilter{})
			if len(creds) != 0 || len(bs) != 0 {
				t.Fatalf("a refused connect left %d credentials, %d bindings", len(creds), len(bs))
			}
		})
	}
}
