package console

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tollgate/tollgate"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/proxy"
	"github.com/tollgate/tollgate/registry"
	"github.com/tollgate/tollgate/resolver"
)

func postAdd(provider, name, key, baseURL string) url.Values {
	return url.Values{"provider": {provider}, "name": {name}, "key": {key}, "base_url": {baseURL}}
}

// TestCredentialAddDisableEnableDelete drives a credential through the
// page: added (and refused as the CLI refuses), listed masked, disabled,
// enabled, deleted after a confirm step; one audit entry per write.
func TestCredentialAddDisableEnableDelete(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	b := e.browser()
	b.signIn(testAdminToken)
	p := b.get("/ui/credentials")
	for _, s := range []string{`id="cred-add-form"`, `id="cred-add-key" name="key" type="password"`, `id="bind-form"`, `aria-current="page">Credentials`, `id="cred-advanced-link"`} {
		if !strings.Contains(p.body, s) {
			t.Errorf("credentials page lacks %s", s)
		}
	}
	const key = "sk-ant-api03-credpage-000000000000004321"
	for name, f := range map[string]url.Values{
		"http":     postAdd("anthropic", "n", key, "http://anthropic.example.com"),
		"provider": postAdd("nope", "n", key, ""),
		"no key":   postAdd("anthropic", "n", "", ""),
	} {
		a := b.post("/ui/credentials/add", f)
		if a.status != http.StatusUnprocessableEntity || !strings.Contains(a.body, `id="form-error"`) || leaks(a.body, key) {
			t.Errorf("%s: %d, leaks %v", name, a.status, leaks(a.body, key))
		}
	}
	if crs, _ := e.svc.ListCredentials(ctx); len(crs) != 0 || len(e.audits()) != 0 {
		t.Fatalf("refused adds wrote %d credentials, %d entries", len(crs), len(e.audits()))
	}

	a := b.post("/ui/credentials/add", postAdd("anthropic", "team", key, "https://anthropic.example.com"))
	if a.status != http.StatusSeeOther {
		t.Fatalf("add: %d\n%s", a.status, a.body)
	}
	crs, err := e.svc.ListCredentials(ctx)
	if err != nil || len(crs) != 1 || crs[0].Name != "team" || crs[0].Provider != "anthropic" || crs[0].Last4 != "4321" {
		t.Fatalf("after add: %+v %v", crs, err)
	}
	id := crs[0].ID
	if ch := e.wroteOne(b, 0, "credential.create", id).Change; ch["provider"] != "anthropic" || ch["name"] != "team" {
		t.Errorf("credential.create change %+v", ch)
	}
	list := b.get(a.location)
	row := `id="cred-` + id + `" data-state="enabled"`
	if !strings.Contains(list.body, `id="flash"`) || !strings.Contains(list.body, row) || !strings.Contains(list.body, "…4321") || leaks(list.body, key) {
		t.Fatalf("list after add:\n%s", list.body)
	}

	if p := b.get("/ui/credentials?what=add&done=" + url.QueryEscape("Call +1 555 0100 now")); strings.Contains(p.body, `id="flash"`) {
		t.Error("a crafted link's words are shown as a confirmation")
	}
	if a := b.post("/ui/credentials/"+id+"/disable", nil); a.status != http.StatusSeeOther {
		t.Fatalf("disable: %d", a.status)
	}
	if cr, _ := e.svc.GetCredential(ctx, id); !cr.Disabled {
		t.Fatal("not disabled")
	}
	e.wroteOne(b, 1, "credential.disable", id)
	if l := b.get("/ui/credentials"); !strings.Contains(l.body, `id="cred-`+id+`" data-state="disabled"`) || !strings.Contains(l.body, `id="cred-`+id+`-enable"`) {
		t.Error("the list does not show it disabled, with an enable button")
	}
	if a := b.post("/ui/credentials/"+id+"/enable", nil); a.status != http.StatusSeeOther {
		t.Fatalf("enable: %d", a.status)
	}
	if cr, _ := e.svc.GetCredential(ctx, id); cr.Disabled {
		t.Fatal("not enabled")
	}
	e.wroteOne(b, 2, "credential.enable", id)

	// Delete asks first, naming the bindings it affects.
	mustBind(t, e.svc, resolver.BindingKey{Tier: resolver.TierProject, ScopeID: "p1", Dialect: "anthropic-messages"}, id, false)
	confirm := b.get("/ui/credentials/" + id + "/delete")
	if confirm.status != http.StatusOK || !strings.Contains(confirm.body, `id="cred-delete-form"`) || !strings.Contains(confirm.body, `id="cred-delete-binding-project-p1-anthropic-messages-any"`) {
		t.Fatalf("delete confirm: %d\n%s", confirm.status, confirm.body)
	}
	if _, err := e.svc.GetCredential(ctx, id); err != nil {
		t.Fatal("the confirm page deleted it")
	}
	if a := b.post("/ui/credentials/"+id+"/delete", nil); a.status != http.StatusSeeOther {
		t.Fatalf("delete: %d", a.status)
	}
	if _, err := e.svc.GetCredential(ctx, id); !errors.Is(err, resolver.ErrCredentialNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	e.wroteOne(b, 3, "credential.delete", id)
	for _, path := range []string{"/ui/credentials/" + id + "/disable", "/ui/credentials/" + id + "/delete"} {
		if a := b.post(path, nil); a.status != http.StatusUnprocessableEntity || !strings.Contains(a.body, "credential not found") {
			t.Errorf("%s of a deleted credential: %d", path, a.status)
		}
	}
	if a := b.get("/ui/credentials/" + id + "/delete"); a.status != http.StatusNotFound {
		t.Errorf("confirm page of a deleted credential: %d", a.status)
	}
	if len(e.audits()) != 4 {
		t.Error("a refused write was audited")
	}
}

// TestBindWithCandidatesUnbindActivate binds two credentials as a
// failover chain from the page, deactivates and activates the binding
// from its row, and unbinds it; the resolver sees each change.
func TestBindWithCandidatesUnbindActivate(t *testing.T) {
	testBindWithCandidates(t, newEnv(t))
}

// TestTokensAndBindingsOnPostgres runs the issue-revoke, bind and
// platform key flows on PostgreSQL, where the audit log and the resolver hold other types.
func TestTokensAndBindingsOnPostgres(t *testing.T) {
	dsn := os.Getenv("TOLLGATE_TEST_POSTGRES")
	if dsn == "" {
		t.Skip("TOLLGATE_TEST_POSTGRES is not set")
	}
	t.Run("tokens", func(t *testing.T) {
		testTokenIssuedShownOnce(t, newEnvOn(t, testkit.PostgresSchema(t, dsn, "console_")))
	})
	t.Run("bindings", func(t *testing.T) { testBindWithCandidates(t, newEnvOn(t, testkit.PostgresSchema(t, dsn, "console_"))) })
	t.Run("platform keys", func(t *testing.T) { testPlatformKeyPage(t, newEnvOn(t, testkit.PostgresSchema(t, dsn, "console_"))) })
}

func testBindWithCandidates(t *testing.T, e *env) {
	ctx := context.Background()
	first := mustCred(t, e.svc, "anthropic", "first", "sk-ant-api03-first-0000000000000000000001")
	second := mustCred(t, e.svc, "anthropic", "second", "sk-ant-api03-second-000000000000000000002")
	b := e.browser()
	b.signIn(testAdminToken)
	p := b.get("/ui/credentials")
	if !strings.Contains(p.body, `id="bind-cand-1"`) || !strings.Contains(p.body, `<option value="`+second.ID+`">second · anthropic`) {
		t.Fatalf("bind form:\n%s", p.body)
	}
	form := url.Values{"tier": {"project"}, "scope_id": {"p1"}, "dialect": {"anthropic-messages"}, "harness": {"claude-code"},
		"cand_0": {first.ID}, "cand_1": {second.ID}, "cand_1_weight": {"3"}}
	a := b.post("/ui/bindings/bind", form)
	if a.status != http.StatusSeeOther {
		t.Fatalf("bind: %d\n%s", a.status, a.body)
	}
	k := resolver.BindingKey{Tier: resolver.TierProject, ScopeID: "p1", Dialect: "anthropic-messages", Harness: "claude-code"}
	bs, err := e.svc.ListBindings(ctx, resolver.BindingFilter{Tier: k.Tier, ScopeID: "p1"})
	want := []resolver.BindCandidate{{CredentialID: first.ID, Priority: 0, Weight: 1}, {CredentialID: second.ID, Priority: 1, Weight: 3}}
	if err != nil || len(bs) != 1 || bs[0].BindingKey != k || !bs[0].Active || len(bs[0].Credentials) != 2 || bs[0].Credentials[0] != want[0] || bs[0].Credentials[1] != want[1] {
		t.Fatalf("bound: %+v %v", bs, err)
	}
	entry := e.wroteOne(b, 0, "binding.bind", "project:p1/anthropic-messages/claude-code")
	if cs, _ := entry.Change["credentials"].([]any); len(cs) != 2 {
		t.Errorf("binding.bind change %+v", entry.Change)
	}
	res, err := e.svc.Resolve(ctx, resolver.Request{Project: "p1", Harness: "claude-code", Dialect: "anthropic-messages"})
	if err != nil || res.CredentialID != first.ID || len(res.Alternates) != 1 || res.Alternates[0].CredentialID != second.ID {
		t.Fatalf("resolve: %+v %v", res, err)
	}

	row := "binding-project-p1-anthropic-messages-claude-code"
	p = b.get(a.location)
	if !strings.Contains(p.body, `id="flash"`) || !strings.Contains(p.body, "Bound project:p1/anthropic-messages/claude-code.") || !strings.Contains(p.body, `id="`+row+`" data-active="true"`) || !strings.Contains(p.body, `id="`+row+`-unbind"`) {
		t.Fatalf("bindings table:\n%s", p.body)
	}
	// Deactivate from the row: the Advanced view's handler, returning here.
	a = b.post("/ui/bindings/active", url.Values{"tier": {"project"}, "scope_id": {"p1"}, "dialect": {"anthropic-messages"}, "harness": {"claude-code"},
		"active": {"false"}, "return": {"/ui/credentials"}})
	if a.status != http.StatusSeeOther || a.location != "/ui/credentials" {
		t.Fatalf("deactivate: %d %q", a.status, a.location)
	}
	if _, err := e.svc.Resolve(ctx, resolver.Request{Project: "p1", Harness: "claude-code", Dialect: "anthropic-messages"}); !errors.Is(err, resolver.ErrHalted) {
		t.Fatalf("after deactivate: %v", err)
	}
	e.wroteOne(b, 1, "binding.deactivate", "project:p1/anthropic-messages/claude-code")
	if p := b.get("/ui/credentials"); !strings.Contains(p.body, `id="`+row+`" data-active="false"`) || !strings.Contains(p.body, `id="`+row+`-activate"`) {
		t.Error("the row does not show the binding inactive")
	}
	b.post("/ui/bindings/active", url.Values{"tier": {"project"}, "scope_id": {"p1"}, "dialect": {"anthropic-messages"}, "harness": {"claude-code"}, "active": {"true"}})
	e.wroteOne(b, 2, "binding.activate", "project:p1/anthropic-messages/claude-code")

	a = b.post("/ui/bindings/unbind", url.Values{"tier": {"project"}, "scope_id": {"p1"}, "dialect": {"anthropic-messages"}, "harness": {"claude-code"}})
	if a.status != http.StatusSeeOther {
		t.Fatalf("unbind: %d", a.status)
	}
	if bs, _ := e.svc.ListBindings(ctx, resolver.BindingFilter{Tier: k.Tier}); len(bs) != 0 {
		t.Fatalf("after unbind: %+v", bs)
	}
	e.wroteOne(b, 3, "binding.unbind", "project:p1/anthropic-messages/claude-code")

	// Refusals come back on the page with the form as typed.
	for name, f := range map[string]url.Values{
		"none":      {"tier": {"project"}, "scope_id": {"p1"}, "dialect": {"anthropic-messages"}},
		"weight":    {"tier": {"project"}, "scope_id": {"p1"}, "dialect": {"anthropic-messages"}, "cand_0": {first.ID}, "cand_0_weight": {"0"}},
		"duplicate": {"tier": {"project"}, "scope_id": {"p1"}, "dialect": {"anthropic-messages"}, "cand_0": {first.ID}, "cand_2": {first.ID}},
		"dialect":   {"tier": {"project"}, "scope_id": {"p1"}, "dialect": {"openai-chat"}, "cand_0": {first.ID}},
		"unknown":   {"tier": {"project"}, "scope_id": {"p1"}, "dialect": {"anthropic-messages"}, "cand_0": {"cred_nope"}},
		"scope":     {"tier": {"project"}, "scope_id": {""}, "dialect": {"anthropic-messages"}, "cand_0": {first.ID}},
	} {
		a := b.post("/ui/bindings/bind", f)
		if a.status != http.StatusUnprocessableEntity || !strings.Contains(a.body, `id="form-error"`) {
			t.Errorf("%s: %d", name, a.status)
		}
	}
	a = b.post("/ui/bindings/bind", url.Values{"tier": {"user"}, "scope_id": {"u9"}, "dialect": {"anthropic-messages"}, "cand_0": {first.ID}, "cand_0_weight": {"0"}})
	if !strings.Contains(a.body, `id="bind-scope" name="scope_id" value="u9"`) || !strings.Contains(html.UnescapeString(a.body), `<option value="user" selected>`) {
		t.Error("a refused bind does not keep the form")
	}
	if a := b.post("/ui/bindings/unbind", url.Values{"tier": {"project"}, "scope_id": {"p1"}, "dialect": {"anthropic-messages"}}); a.status != http.StatusUnprocessableEntity {
		t.Errorf("unbind of no binding: %d", a.status)
	}
	if len(e.audits()) != 4 {
		t.Errorf("refused writes were audited: %d entries", len(e.audits()))
	}
}

// TestNewFormsRefuseWithoutCSRF posts each form of the Tokens and
// Credentials pages without its token, and with another session's: every
// one gets the 403 page and writes nothing.
func TestNewFormsRefuseWithoutCSRF(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	cr := mustCred(t, e.svc, "anthropic", "kept", "sk-ant-api03-csrf-00000000000000000000009")
	mustBind(t, e.svc, resolver.BindingKey{Tier: resolver.TierProject, ScopeID: "p1", Dialect: "anthropic-messages"}, cr.ID, false)
	_, tok, err := e.svc.IssueToken(ctx, resolver.TokenSpec{Workspace: "ws", Project: "p1", User: "u1"})
	if err != nil {
		t.Fatal(err)
	}
	b := e.browser()
	b.signIn(testAdminToken)
	other := e.browser()
	other.signIn(testAdminToken)
	forms := map[string]url.Values{
		"/ui/tokens/issue":                      postIssue("ws2", "p1", "u1", "", "", ""),
		"/ui/tokens/" + tok.ID + "/revoke":      {},
		"/ui/credentials/add":                   postAdd("anthropic", "n", "sk-ant-api03-csrf-new-0000000000000000001", ""),
		"/ui/credentials/" + cr.ID + "/disable": {},
		"/ui/credentials/" + cr.ID + "/enable":  {},
		"/ui/credentials/" + cr.ID + "/delete":  {},
		"/ui/bindings/bind":                     {"tier": {"user"}, "scope_id": {"u1"}, "dialect": {"anthropic-messages"}, "cand_0": {cr.ID}},
		"/ui/bindings/unbind":                   {"tier": {"project"}, "scope_id": {"p1"}, "dialect": {"anthropic-messages"}},
	}
	for path, f := range forms {
		for name, csrf := range map[string]string{"without": "", "another session's": other.csrf} {
			g := url.Values{}
			for k, v := range f {
				g[k] = v
			}
			g.Set("csrf", csrf)
			a := b.post(path, g)
			if a.status != http.StatusForbidden || !strings.Contains(a.body, `id="message"`) {
				t.Errorf("%s %s the CSRF token: %d", path, name, a.status)
			}
		}
		// From another origin, with the right token.
		if a := b.post(path, f, "Origin", "http://evil.example", "Sec-Fetch-Site", "cross-site"); a.status != http.StatusForbidden {
			t.Errorf("%s from another origin: %d", path, a.status)
		}
	}
	toks, _ := e.svc.ListTokens(ctx, resolver.TokenFilter{IncludeRevoked: true})
	crs, _ := e.svc.ListCredentials(ctx)
	bs, _ := e.svc.ListBindings(ctx, resolver.BindingFilter{})
	if len(toks) != 1 || !toks[0].RevokedAt.IsZero() || len(crs) != 1 || crs[0].Disabled || len(bs) != 1 || len(e.audits()) != 0 {
		t.Fatalf("refused forms wrote: %d tokens, %d credentials, %d bindings, %d audit entries", len(toks), len(crs), len(bs), len(e.audits()))
	}
}

// TestConnectionsWritesAreAudited: the connect flow and the Advanced
// view's activate button record their writes as the console's session.
func TestConnectionsWritesAreAudited(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	b.signIn(testAdminToken)
	a := b.post("/ui/connections/connect", postConnect("project", "p1", "u1", "anthropic-messages", "", "anthropic", "team", "sk-ant-api03-connaudit-0000000000000042", ""))
	if a.status != http.StatusSeeOther {
		t.Fatalf("connect: %d", a.status)
	}
	loc, _ := url.Parse(a.location)
	id := loc.Query().Get("connected")
	all := e.audits()
	if len(all) != 2 {
		t.Fatalf("connect made %d entries: %+v", len(all), all)
	}
	e.madeBy(b, all[0], "credential.create", id)
	e.madeBy(b, all[1], "binding.bind", "project:p1/anthropic-messages")
	// A new key whose binding is refused is deleted again: both writes show.
	if a := b.post("/ui/connections/connect", postConnect("project", "p1", "", "openai-chat", "", "anthropic", "n", "sk-ant-api03-connaudit-0000000000000043", "")); a.status != http.StatusUnprocessableEntity {
		t.Fatalf("refused connect: %d", a.status)
	}
	all = e.audits()
	if len(all) != 4 {
		t.Fatalf("refused connect: %d entries", len(all))
	}
	e.madeBy(b, all[2], "credential.create", all[2].Target)
	e.madeBy(b, all[3], "credential.delete", all[2].Target)
	b.get("/ui/connections/advanced")
	if a := b.post("/ui/bindings/active", url.Values{"tier": {"project"}, "scope_id": {"p1"}, "dialect": {"anthropic-messages"}, "active": {"false"}}); a.status != http.StatusSeeOther {
		t.Fatalf("deactivate: %d", a.status)
	}
	e.wroteOne(b, 4, "binding.deactivate", "project:p1/anthropic-messages")
}

// TestPlatformKeySetReplaceRemove sets a provider's platform key from the
// Credentials page, sees a request through a real proxy reach the provider
// with it for a user with no default, replaces it, and removes it behind
// a confirm page: the grid shows platform, then unresolved, and the proxy
// answers the dialect's own error. Forms without the CSRF token are
// refused; each write is one audit entry; the key never shows.
func TestPlatformKeySetReplaceRemove(t *testing.T) {
	testPlatformKeyPage(t, newEnv(t))
}

// withOpenAIFake points e's registry, resolver and console at a fake
// OpenAI on 127.0.0.1 behind a real proxy; it returns the proxy's URL and
// the key the fake last saw.
func withOpenAIFake(t *testing.T, e *env) (proxyURL string, lastKey func() string) {
	t.Helper()
	ctx := context.Background()
	var seen atomic.Value
	seen.Store("")
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`)
	}))
	t.Cleanup(fake.Close)
	r, err := registry.Parse(bytes.ReplaceAll(tollgate.DefaultHarnesses, []byte("base_url: https://api.openai.com\n"), []byte("base_url: "+fake.URL+"\n")))
	if err != nil {
		t.Fatal(err)
	}
	e.reg = registry.NewStatic(r)
	e.svc, err = resolver.New(ctx, resolver.Config{MasterKey: e.key, AllowPrivateBaseURL: true},
		resolver.Deps{DB: e.db, Registry: e.reg, Log: slog.New(slog.NewTextHandler(e.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.svc.Close() })
	e.con, e.srv = e.console(testAdminToken)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := proxy.New(proxy.Config{Registry: e.reg, Auth: e.svc, Resolver: e.svc, Sink: discardSink{}, PublicURL: "http://" + ln.Addr().String(),
		AllowPrivateBaseURL: true, Logger: slog.New(slog.NewTextHandler(e.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	return "http://" + ln.Addr().String(), func() string { return seen.Load().(string) }
}

func testPlatformKeyPage(t *testing.T, e *env) {
	ctx := context.Background()
	proxyURL, lastKey := withOpenAIFake(t, e)
	const key1 = "sk-proj-Q7xCANARYk2-v8m3n4b5c6z1q9w8a1b2"
	const key2 = "sk-proj-W4zCANARYj5-h6g7f8d9s0p2o3i4c3d4"
	tok, _, err := e.svc.IssueToken(ctx, resolver.TokenSpec{Workspace: "ws-pk", Project: "p1", User: "u1"})
	if err != nil {
		t.Fatal(err)
	}
	chat := func() (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, proxyURL+"/openai/v1/chat/completions", strings.NewReader(`{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	codex := resolver.Request{Project: "p1", User: "u1", Harness: "codex", Dialect: "openai-responses"}
	grid := func(b *browser) map[string]gridCell {
		t.Helper()
		return parseGrid(t, b.get("/ui/connections?project=p1&user=u1").body)
	}
	var seen []string
	keep := func(a answer) answer { seen = append(seen, a.body, a.location); return a }

	b := e.browser()
	b.signIn(testAdminToken)
	if g := grid(b)["conn-codex-openai-responses"]; g.source != "unresolved" {
		t.Fatalf("codex before: %+v, want unresolved", g)
	}
	p := keep(b.get("/ui/credentials"))
	for _, s := range []string{`id="pk-table"`, `id="pk-openai" data-state="none"`, `id="pk-set-form"`, `id="pk-set-key" name="key" type="password"`} {
		if !strings.Contains(p.body, s) {
			t.Errorf("credentials page lacks %s", s)
		}
	}
	set := func(provider, key string) url.Values { return url.Values{"provider": {provider}, "key": {key}} }
	noCSRF := set("openai", key1)
	noCSRF.Set("csrf", "")
	if a := keep(b.post("/ui/platform-keys/set", noCSRF)); a.status != http.StatusForbidden {
		t.Fatalf("set without the CSRF token: %d", a.status)
	}
	for name, f := range map[string]url.Values{"provider": set("nope", key1), "no key": set("openai", ""), "space": set("openai", key1+" x")} {
		if a := keep(b.post("/ui/platform-keys/set", f)); a.status != http.StatusUnprocessableEntity || !strings.Contains(a.body, `id="form-error"`) {
			t.Errorf("%s: %d", name, a.status)
		}
	}
	if pks, _ := e.svc.PlatformKeys(ctx); len(e.audits()) != 0 || anySet(pks) {
		t.Fatalf("refused sets wrote %d entries or a key: %+v", len(e.audits()), pks)
	}

	a := keep(b.post("/ui/platform-keys/set", set("openai", key1)))
	if a.status != http.StatusSeeOther {
		t.Fatalf("set: %d\n%s", a.status, a.body)
	}
	res, err := e.svc.Resolve(ctx, codex)
	if err != nil || res.Tier != resolver.TierPlatform || res.Secret.Reveal() != key1 {
		t.Fatalf("resolve after set: tier %q, %v", res.Tier, err)
	}
	id := res.CredentialID
	if ch := e.wroteOne(b, 0, "platform_key.set", id).Change; ch["provider"] != "openai" {
		t.Errorf("platform_key.set change %+v", ch)
	}
	list := keep(b.get(a.location))
	if !strings.Contains(list.body, "Set the platform key of openai.") || !strings.Contains(list.body, `id="pk-openai" data-state="set"`) ||
		!strings.Contains(list.body, "…a1b2") || !strings.Contains(list.body, `id="pk-openai-delete"`) {
		t.Fatalf("list after set:\n%s", list.body)
	}
	if g := grid(b)["conn-codex-openai-responses"]; g.source != "platform" {
		t.Errorf("codex after set: %+v, want platform", g)
	}
	if code, body := chat(); code != http.StatusOK || lastKey() != key1 {
		t.Fatalf("through the proxy: %d %s, the provider got the key: %t", code, body, lastKey() == key1)
	}

	if a := keep(b.post("/ui/platform-keys/set", set("openai", key2))); a.status != http.StatusSeeOther {
		t.Fatalf("replace: %d", a.status)
	}
	e.wroteOne(b, 1, "platform_key.set", id)
	if res, err := e.svc.Resolve(ctx, codex); err != nil || res.CredentialID != id || res.Secret.Reveal() != key2 {
		t.Fatalf("resolve after replace: %s, %v; want %s with the new key", res.CredentialID, err, id)
	}
	if code, _ := chat(); code != http.StatusOK || lastKey() != key2 {
		t.Fatalf("through the proxy after replace: %d", code)
	}

	// Removal asks first, naming the platform bindings that go with it.
	confirm := keep(b.get("/ui/platform-keys/openai/delete"))
	if confirm.status != http.StatusOK || !strings.Contains(confirm.body, `id="pk-delete-form"`) || !strings.Contains(confirm.body, "…c3d4") ||
		!strings.Contains(confirm.body, `id="pk-delete-binding-platform-all-openai-responses-any"`) {
		t.Fatalf("remove confirm: %d\n%s", confirm.status, confirm.body)
	}
	if a := keep(b.post("/ui/platform-keys/openai/delete", url.Values{"csrf": {""}})); a.status != http.StatusForbidden {
		t.Fatalf("remove without the CSRF token: %d", a.status)
	}
	if _, err := e.svc.Resolve(ctx, codex); err != nil {
		t.Fatalf("the confirm page or a refused post removed it: %v", err)
	}
	a = keep(b.post("/ui/platform-keys/openai/delete", nil))
	if a.status != http.StatusSeeOther {
		t.Fatalf("remove: %d\n%s", a.status, a.body)
	}
	if ch := e.wroteOne(b, 2, "platform_key.delete", id).Change; ch["provider"] != "openai" {
		t.Errorf("platform_key.delete change %+v", ch)
	}
	if _, err := e.svc.Resolve(ctx, codex); !errors.Is(err, resolver.ErrNoCredential) {
		t.Fatalf("resolve after removal: %v, want no credential", err)
	}
	list = keep(b.get(a.location))
	if !strings.Contains(list.body, "Removed the platform key of openai.") || !strings.Contains(list.body, `id="pk-openai" data-state="none"`) {
		t.Fatalf("list after removal:\n%s", list.body)
	}
	if g := grid(b)["conn-codex-openai-responses"]; g.source != "unresolved" {
		t.Errorf("codex after removal: %+v, want unresolved", g)
	}
	code, body := chat()
	var envl struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &envl); code != http.StatusUnauthorized || err != nil || !strings.Contains(envl.Error.Message, "no credential is configured") {
		t.Errorf("through the proxy after removal: %d %s, want 401 in OpenAI's envelope", code, body)
	}
	if a := keep(b.post("/ui/platform-keys/openai/delete", nil)); a.status != http.StatusUnprocessableEntity || !strings.Contains(a.body, "has no platform key") {
		t.Errorf("second removal: %d", a.status)
	}
	if a := keep(b.get("/ui/platform-keys/openai/delete")); a.status != http.StatusNotFound {
		t.Errorf("confirm page without a key: %d", a.status)
	}
	if len(e.audits()) != 3 {
		t.Errorf("%d audit entries, want 3: a refused write was audited", len(e.audits()))
	}
	seen = append(seen, e.logs.String(), b.get("/ui/audit").body)
	for _, en := range e.audits() {
		seen = append(seen, fmt.Sprintf("%+v", en))
	}
	for _, key := range []string{key1, key2} {
		for i, s := range seen {
			if leaks(s, key) {
				t.Errorf("key %s… shown (item %d):\n%s", key[:8], i, s)
			}
		}
	}
}

func anySet(pks []resolver.PlatformKey) bool {
	for _, pk := range pks {
		if pk.Credential != nil {
			return true
		}
	}
	return false
}
