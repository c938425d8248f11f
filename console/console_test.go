package console

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/health"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/resolver"
)

func TestSignInAndOut(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	if a := b.get("/ui/connections"); a.status != http.StatusSeeOther || a.location != "/ui/signin" {
		t.Fatalf("signed out, connections: %d %q, want a redirect to sign in", a.status, a.location)
	}
	a := b.get("/ui/signin")
	if a.status != http.StatusOK || !strings.Contains(a.body, `id="signin-token"`) || !strings.Contains(a.body, `type="password"`) {
		t.Fatalf("sign-in page: %d", a.status)
	}
	a = b.signIn(testAdminToken)
	sc := a.header.Get("Set-Cookie")
	for _, want := range []string{CookieName + "=", "Path=/ui/", "HttpOnly", "SameSite=Strict", "Max-Age=43200"} {
		if !strings.Contains(sc, want) {
			t.Errorf("Set-Cookie %q lacks %s", sc, want)
		}
	}
	if strings.Contains(sc, "Secure") {
		t.Errorf("Secure on a plain-HTTP request without an https public URL: %q", sc)
	}
	id := b.cookie().Value
	var n int
	if err := e.db.QueryRow(`SELECT COUNT(*) FROM console_sessions WHERE id_hash = $1 OR admin_fp = $1 OR id_hash = $2`, id, hashID(id)).Scan(&n); err != nil || n != 1 {
		t.Fatalf("session rows by hash: %d, %v", n, err)
	}
	if err := e.db.QueryRow(`SELECT COUNT(*) FROM console_sessions WHERE id_hash = $1 OR admin_fp = $1`, id).Scan(&n); err != nil || n != 0 {
		t.Fatalf("the session id itself is stored: %d, %v", n, err)
	}
	if a := b.get("/ui/"); a.status != http.StatusSeeOther || a.location != "/ui/connections" {
		t.Errorf("/ui/ signed in: %d %q", a.status, a.location)
	}
	old := b.cookie()
	if a := b.post("/ui/signout", nil); a.status != http.StatusSeeOther || a.location != "/ui/signin" {
		t.Fatalf("sign-out: %d %q", a.status, a.location)
	}
	if b.cookie() != nil {
		t.Error("sign-out left the cookie")
	}
	if a := b.get("/ui/connections"); a.status != http.StatusSeeOther {
		t.Errorf("after sign-out: %d", a.status)
	}
	// The old cookie, replayed, names a deleted session.
	replay := e.browser()
	u, _ := url.Parse(e.srv.URL + Prefix)
	replay.hc.Jar.SetCookies(u, []*http.Cookie{old})
	if a := replay.get("/ui/connections"); a.status != http.StatusSeeOther || a.location != "/ui/signin" {
		t.Errorf("replayed cookie after sign-out: %d %q", a.status, a.location)
	}
}

func TestCookieSecureBehindHTTPS(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	a := b.post("/ui/signin", url.Values{"token": {testAdminToken}}, "X-Forwarded-Proto", "https")
	if sc := a.header.Get("Set-Cookie"); a.status != http.StatusSeeOther || !strings.Contains(sc, "Secure") {
		t.Errorf("over https at a proxy: %d %q, want Secure", a.status, sc)
	}
	c, err := New(context.Background(), Config{AdminToken: testAdminToken, DB: e.db, Registry: e.reg, Resolver: e.svc, PublicURL: "https://tollgate.example.com", FailDelay: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptestPost(t, c, "/ui/signin", url.Values{"token": {testAdminToken}})
	if sc := rec.Header().Get("Set-Cookie"); !strings.Contains(sc, "Secure") {
		t.Errorf("https public URL: %q, want Secure", sc)
	}
	get := httptest.NewRecorder()
	c.ServeHTTP(get, httptest.NewRequest(http.MethodGet, "http://127.0.0.1/ui/signin", nil))
	if !strings.Contains(get.Body.String(), `id="signin-note"`) {
		t.Error("the sign-in page over plain HTTP does not warn that the Secure cookie will not stick")
	}
	if a := e.browser().get("/ui/signin"); a.status != http.StatusOK || strings.Contains(a.body, `id="signin-note"`) {
		t.Error("warned without an https public URL")
	}
}

func TestWrongTokenRefusedThrottledAndLoggedWithoutIt(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	const wrong = "tg-admin-WRONG-9f8e7d6c5b4a"
	for i := range failBurst {
		a := b.post("/ui/signin", url.Values{"token": {wrong}})
		if a.status != http.StatusUnauthorized || a.header.Get("Set-Cookie") != "" || !strings.Contains(a.body, `id="form-error"`) {
			t.Fatalf("wrong token #%d: %d cookie %q", i, a.status, a.header.Get("Set-Cookie"))
		}
		if strings.Contains(a.body, wrong) {
			t.Fatal("the refused token is echoed on the page")
		}
	}
	// Out of tries: even the right token waits.
	if a := b.post("/ui/signin", url.Values{"token": {testAdminToken}}); a.status != http.StatusTooManyRequests || a.header.Get("Retry-After") == "" {
		t.Fatalf("after %d failures: %d, want 429 with Retry-After", failBurst, a.status)
	}
	e.clock.add(failRefill)
	b.signIn(testAdminToken)
	logs := e.logs.String()
	if !strings.Contains(logs, "console sign-in refused") || !strings.Contains(logs, "console sign-in throttled") {
		t.Errorf("refusals not logged:\n%s", logs)
	}
	if strings.Contains(logs, wrong) || strings.Contains(logs, testAdminToken) {
		t.Error("a token reached the log")
	}
}

func TestFailedSignInIsDelayed(t *testing.T) {
	e := newEnv(t)
	c, err := New(context.Background(), Config{AdminToken: testAdminToken, DB: e.db, Registry: e.reg, Resolver: e.svc, FailDelay: 150 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if rec := httptestPost(t, c, "/ui/signin", url.Values{"token": {"nope"}}); rec.Code != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d", rec.Code)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("a failed sign-in answered after %s, want at least the delay", d)
	}
}

func TestSessionExpires(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	b.signIn(testAdminToken)
	e.clock.add(DefaultIdleTimeout - time.Minute)
	if a := b.get("/ui/connections"); a.status != http.StatusOK {
		t.Fatalf("used within the idle timeout: %d", a.status)
	}
	e.clock.add(DefaultIdleTimeout + time.Minute)
	if a := b.get("/ui/connections"); a.status != http.StatusSeeOther || a.location != "/ui/signin" {
		t.Fatalf("idle past the timeout: %d %q", a.status, a.location)
	}

	// Kept busy, a session still ends at its maximum age.
	b.signIn(testAdminToken)
	for range 11 {
		e.clock.add(time.Hour)
		if a := b.get("/ui/connections"); a.status != http.StatusOK {
			t.Fatalf("busy session before its maximum age: %d", a.status)
		}
	}
	e.clock.add(time.Hour + time.Minute)
	if a := b.get("/ui/connections"); a.status != http.StatusSeeOther {
		t.Fatalf("busy session past its maximum age: %d", a.status)
	}
	var n int
	if err := e.db.QueryRow(`SELECT COUNT(*) FROM console_sessions`).Scan(&n); err != nil || n != 0 {
		t.Errorf("expired sessions left in the table: %d, %v", n, err)
	}
}

// A load balancer may send each request to another replica: the session
// is the database's, so sign-in on one and sign-out on another hold on
// both, and a replica started with another admin token accepts none.
func TestSessionAcrossReplicas(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { testSessionAcrossReplicas(t, newEnv(t)) })
	t.Run("postgres", func(t *testing.T) {
		url := os.Getenv("TOLLGATE_TEST_POSTGRES")
		if url == "" {
			t.Skip("TOLLGATE_TEST_POSTGRES is not set")
		}
		testSessionAcrossReplicas(t, newEnvOn(t, testkit.PostgresSchema(t, url, "console_")))
	})
}

func testSessionAcrossReplicas(t *testing.T, e *env) {
	_, srvB := e.console(testAdminToken)
	_, srvRotated := e.console("tg-admin-rotated-0123456789")
	a := e.browser()
	a.signIn(testAdminToken)
	b := a.at(srvB.URL)
	if r := b.get("/ui/connections"); r.status != http.StatusOK {
		t.Fatalf("replica B with A's session: %d", r.status)
	}
	if r := a.at(srvRotated.URL).get("/ui/connections"); r.status != http.StatusSeeOther {
		t.Fatalf("a replica with a rotated admin token accepted the session: %d", r.status)
	}
	// The rotated replica deleted the session: it is gone everywhere.
	if r := a.get("/ui/connections"); r.status != http.StatusSeeOther {
		t.Fatalf("after the rotated replica refused it: %d", r.status)
	}
	a.signIn(testAdminToken)
	kept := a.cookie()
	b = a.at(srvB.URL)
	if r := b.post("/ui/signout", nil); r.status != http.StatusSeeOther {
		t.Fatalf("sign-out on B: %d", r.status)
	}
	// A fresh jar holding the cookie, as a browser that missed the
	// sign-out answer would.
	again := e.browser()
	u, _ := url.Parse(e.srv.URL + Prefix)
	again.hc.Jar.SetCookies(u, []*http.Cookie{kept})
	if r := again.get("/ui/connections"); r.status != http.StatusSeeOther {
		t.Errorf("A after sign-out on B: %d", r.status)
	}
}

func TestCSRFRefused(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	cr := mustCred(t, e.svc, "anthropic", "p-key", "sk-ant-api03-aaaaaaaaaaaaaaaaaaaaaaaa")
	k := resolver.BindingKey{Tier: resolver.TierProject, ScopeID: "p1", Dialect: "anthropic-messages"}
	if _, err := e.svc.Bind(ctx, k, cr.ID); err != nil {
		t.Fatal(err)
	}
	b := e.browser()
	b.signIn(testAdminToken)
	other := e.browser()
	other.signIn(testAdminToken)
	deactivate := func() url.Values {
		return url.Values{"tier": {k.Tier}, "scope_id": {k.ScopeID}, "dialect": {k.Dialect}, "active": {"false"}}
	}
	withCSRF := func(tok string) url.Values { v := deactivate(); v.Set("csrf", tok); return v }
	cases := []struct {
		name string
		form url.Values
		hdr  []string
	}{
		{"no token", withCSRF(""), nil},
		{"wrong token", withCSRF("not-the-token"), nil},
		{"another session's token", withCSRF(other.csrf), nil},
		{"cross-site fetch", deactivate(), []string{"Sec-Fetch-Site", "cross-site", "Origin", "https://evil.example"}},
		{"foreign origin", deactivate(), []string{"Origin", "https://evil.example"}},
		{"foreign referer", deactivate(), []string{"Origin", "", "Referer", "https://evil.example/page"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := b.post("/ui/bindings/active", tc.form, tc.hdr...)
			if a.status != http.StatusForbidden || !strings.Contains(a.body, `id="message"`) {
				t.Fatalf("%d, want the 403 page", a.status)
			}
			bs, err := e.svc.ListBindings(ctx, resolver.BindingFilter{Tier: k.Tier, ScopeID: k.ScopeID})
			if err != nil || len(bs) != 1 || !bs[0].Active {
				t.Fatalf("the refused post changed the binding: %+v %v", bs, err)
			}
		})
	}
	if a := b.post("/ui/signout", url.Values{"csrf": {""}}); a.status != http.StatusForbidden {
		t.Errorf("sign-out without the token: %d", a.status)
	}
	if a := b.get("/ui/connections"); a.status != http.StatusOK {
		t.Errorf("a refused sign-out ended the session: %d", a.status)
	}
	// The same form with the session's token, from this origin, applies.
	if a := b.post("/ui/bindings/active", deactivate()); a.status != http.StatusSeeOther {
		t.Fatalf("valid post: %d %s", a.status, a.body)
	}
	bs, _ := e.svc.ListBindings(ctx, resolver.BindingFilter{Tier: k.Tier, ScopeID: k.ScopeID})
	if len(bs) != 1 || bs[0].Active {
		t.Fatalf("valid post did not deactivate: %+v", bs)
	}
	// GET never changes state: there is no GET form of a write.
	if a := b.get("/ui/bindings/active?" + withCSRF(b.csrf).Encode()); a.status == http.StatusSeeOther || a.status == http.StatusOK {
		t.Errorf("GET of a write route: %d", a.status)
	}
	if a := b.post("/ui/signin", url.Values{"token": {testAdminToken}}, "Origin", "https://evil.example"); a.status != http.StatusForbidden {
		t.Errorf("cross-origin sign-in: %d", a.status)
	}
}

func mustCred(t *testing.T, svc *resolver.Service, provider, name, key string, baseURL ...string) resolver.Credential {
	t.Helper()
	spec := resolver.CredentialSpec{Provider: provider, Name: name, Secret: resolver.NewSecret(key)}
	if len(baseURL) > 0 {
		spec.BaseURL = baseURL[0]
	}
	c, err := svc.CreateCredential(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustBind(t *testing.T, svc *resolver.Service, k resolver.BindingKey, credID string, inactive bool) {
	t.Helper()
	if _, err := svc.BindCandidates(context.Background(), k, []resolver.BindCandidate{{CredentialID: credID}}, resolver.BindOptions{Inactive: inactive}); err != nil {
		t.Fatal(err)
	}
}

var (
	gridRow   = regexp.MustCompile(`<tr id="(conn-[^"]+)" data-harness="[^"]*" data-dialect="[^"]*" data-source="([^"]+)"`)
	gridBadge = regexp.MustCompile(`id="(conn-[^"]+)-badge" class="badge badge-([a-z]+)">([^<]+)<`)
	gridWhy   = regexp.MustCompile(`id="(conn-[^"]+)-reason">(?:<code>([^<]*)</code>)?</td>`)
)

type gridCell struct{ source, badge, label, reason string }

func parseGrid(t *testing.T, body string) map[string]gridCell {
	t.Helper()
	g := map[string]gridCell{}
	for _, m := range gridRow.FindAllStringSubmatch(body, -1) {
		g[m[1]] = gridCell{source: m[2]}
	}
	for _, m := range gridBadge.FindAllStringSubmatch(body, -1) {
		c := g[m[1]]
		c.badge, c.label = m[2], m[3]
		g[m[1]] = c
	}
	for _, m := range gridWhy.FindAllStringSubmatch(body, -1) {
		c := g[m[1]]
		c.reason = m[2]
		g[m[1]] = c
	}
	return g
}

// seedEveryState binds, for project p1 and user u1, one harness × dialect
// in each state the grid shows.
func seedEveryState(t *testing.T, e *env) map[string]gridCell {
	t.Helper()
	ctx := context.Background()
	proj := mustCred(t, e.svc, "anthropic", "team-anthropic", "sk-ant-api03-projectkey-000000001234")
	off := mustCred(t, e.svc, "openai", "codex-off", "sk-proj-codexoff-00000000000000005678")
	mine := mustCred(t, e.svc, "gemini", "my-gemini", "AIzaSyMYGEMINIKEY0000000000000000009")
	plat := mustCred(t, e.svc, "openai", "platform-openai", "sk-proj-platform-000000000000000004321")
	gone := mustCred(t, e.svc, "openai", "retired", "sk-proj-retired-00000000000000000000aa")
	// Written by a process that allowed http: this one refuses it at use.
	httpCred := mustCred(t, e.resolver(true), "anthropic", "local-http", "sk-ant-api03-httpkey-000000000000bb", "http://llm.internal.example")
	p := func(d, h string) resolver.BindingKey {
		return resolver.BindingKey{Tier: resolver.TierProject, ScopeID: "p1", Dialect: d, Harness: h}
	}
	mustBind(t, e.svc, p("anthropic-messages", "claude-code"), proj.ID, false)
	mustBind(t, e.svc, p("openai-responses", "codex"), off.ID, true)
	mustBind(t, e.svc, p("anthropic-messages", "opencode"), httpCred.ID, false)
	mustBind(t, e.svc, resolver.BindingKey{Tier: resolver.TierUser, ScopeID: "u1", Dialect: "gemini"}, mine.ID, false)
	mustBind(t, e.svc, resolver.BindingKey{Tier: resolver.TierUser, ScopeID: "u1", Dialect: "openai-responses", Harness: "opencode"}, gone.ID, false)
	mustBind(t, e.svc, resolver.BindingKey{Tier: resolver.TierPlatform, Dialect: "openai-chat"}, plat.ID, false)
	if err := e.svc.DisableCredential(ctx, gone.ID); err != nil {
		t.Fatal(err)
	}
	return map[string]gridCell{
		"conn-claude-code-anthropic-messages": {source: "project", label: "Project override"},
		"conn-codex-openai-responses":         {source: "halted", label: "Halted", reason: resolver.ReasonBindingInactive},
		"conn-opencode-anthropic-messages":    {source: "halted", label: "Halted", reason: resolver.ReasonCredentialUnusable},
		"conn-gemini-cli-gemini":              {source: "user", label: "User default"},
		"conn-any-gemini":                     {source: "user", label: "User default"},
		"conn-opencode-openai-chat":           {source: "platform", label: "Platform"},
		"conn-any-openai-chat":                {source: "platform", label: "Platform"},
		"conn-opencode-openai-responses":      {source: "unresolved", label: "Unresolved", reason: resolver.ReasonCredentialDisabled},
		"conn-any-anthropic-messages":         {source: "unresolved", label: "Unresolved", reason: resolver.ReasonNone},
	}
}

func TestConnectionsBadgeForEachState(t *testing.T) {
	e := newEnv(t)
	want := seedEveryState(t, e)
	b := e.browser()
	b.signIn(testAdminToken)
	a := b.get("/ui/connections?project=p1&user=u1")
	if a.status != http.StatusOK {
		t.Fatalf("connections: %d", a.status)
	}
	got := parseGrid(t, a.body)
	view, err := e.svc.ResolutionView(context.Background(), "p1", "u1")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(view) {
		t.Errorf("grid has %d rows, the resolution view %d", len(got), len(view))
	}
	for id, w := range want {
		g, ok := got[id]
		if !ok {
			t.Errorf("%s: no row", id)
			continue
		}
		if g.source != w.source || g.badge != w.source || g.label != w.label || g.reason != w.reason {
			t.Errorf("%s: source %q badge %q %q reason %q; want %q %q reason %q", id, g.source, g.badge, g.label, g.reason, w.source, w.label, w.reason)
		}
	}
	// The paying credential is named with its provider and last four.
	row := rowHTML(t, a.body, "conn-claude-code-anthropic-messages")
	for _, s := range []string{"team-anthropic", "anthropic", "…1234", "never"} {
		if !strings.Contains(row, s) {
			t.Errorf("project row lacks %q:\n%s", s, row)
		}
	}
	if !strings.Contains(a.body, `<option value="p1">`) || !strings.Contains(a.body, `<option value="u1">`) {
		t.Error("the chooser does not offer the bound project and user")
	}
	// Another project sees none of p1's overrides.
	other := parseGrid(t, b.get("/ui/connections?project=p2&user=u1").body)
	if c := other["conn-claude-code-anthropic-messages"]; c.source != "unresolved" {
		t.Errorf("project p2, claude-code: %q, want unresolved", c.source)
	}
}

func rowHTML(t *testing.T, body, id string) string {
	t.Helper()
	i := strings.Index(body, `<tr id="`+id+`"`)
	if i < 0 {
		t.Fatalf("no row %s", id)
	}
	j := strings.Index(body[i:], "</tr>")
	return body[i : i+j]
}

func TestAdvancedDeactivateHaltsTheGrid(t *testing.T) {
	e := newEnv(t)
	seedEveryState(t, e)
	b := e.browser()
	b.signIn(testAdminToken)
	adv := b.get("/ui/connections/advanced?project=p1&user=u1")
	const id = "binding-project-p1-anthropic-messages-claude-code"
	if adv.status != http.StatusOK || !strings.Contains(adv.body, `id="`+id+`-deactivate"`) || !strings.Contains(adv.body, `id="credentials-table"`) {
		t.Fatalf("advanced: %d", adv.status)
	}
	a := b.post("/ui/bindings/active", url.Values{"tier": {"project"}, "scope_id": {"p1"}, "dialect": {"anthropic-messages"}, "harness": {"claude-code"},
		"active": {"false"}, "return": {"/ui/connections/advanced?project=p1&user=u1"}})
	if a.status != http.StatusSeeOther || a.location != "/ui/connections/advanced?project=p1&user=u1" {
		t.Fatalf("deactivate: %d %q", a.status, a.location)
	}
	g := parseGrid(t, b.get("/ui/connections?project=p1&user=u1").body)["conn-claude-code-anthropic-messages"]
	if g.source != "halted" || g.reason != resolver.ReasonBindingInactive {
		t.Errorf("after deactivation: %+v, want halted binding-inactive", g)
	}
	if a := b.post("/ui/bindings/active", url.Values{"tier": {"project"}, "scope_id": {"p1"}, "dialect": {"anthropic-messages"}, "harness": {"claude-code"},
		"active": {"true"}, "return": {"https://evil.example/"}}); a.status != http.StatusSeeOther || a.location != "/ui/connections/advanced" {
		t.Errorf("a foreign return address: %d %q", a.status, a.location)
	}
}

// The templates are parsed on first use: every one must parse, and each
// page the handlers render must exist.
func TestTemplatesParse(t *testing.T) {
	pages, err := parsePages()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"signin", "message", "connections", "connect", "advanced"} {
		if pages[name] == nil || pages[name].Lookup("content") == nil {
			t.Errorf("page %s missing", name)
		}
	}
}

// A binding of several credentials lists them in order under its row,
// an unusable one with its reason; the row names the one that pays.
func TestConnectionsShowFailoverCandidates(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	first := mustCred(t, e.svc, "gemini", "first-gemini", "AIzaSyFIRSTKEY00000000000000000000001")
	second := mustCred(t, e.svc, "gemini", "second-gemini", "AIzaSySECONDKEY0000000000000000000002")
	k := resolver.BindingKey{Tier: resolver.TierPlatform, Dialect: "gemini"}
	if _, err := e.svc.BindCandidates(ctx, k, []resolver.BindCandidate{{CredentialID: first.ID}, {CredentialID: second.ID, Priority: 1}}); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.DisableCredential(ctx, first.ID); err != nil {
		t.Fatal(err)
	}
	// This replica saw the second credential fail three times: its
	// circuit is open.
	tracker := health.New(health.Config{Now: e.clock.now})
	for range 3 {
		tracker.Observe(health.Observation{CredentialID: second.ID, Provider: "gemini", Status: 503, Failed: true})
	}
	e.con.cfg.Health = tracker
	b := e.browser()
	b.signIn(testAdminToken)
	body := b.get("/ui/connections").body
	row := rowHTML(t, body, "conn-gemini-cli-gemini")
	if !strings.Contains(row, "health: open, cooldown until") {
		t.Errorf("the row does not show the paying credential's open circuit:\n%s", row)
	}
	if !strings.Contains(row, "second-gemini") || strings.Contains(row, "first-gemini") {
		t.Errorf("the row does not name the usable candidate:\n%s", row)
	}
	i := strings.Index(body, `<tr id="conn-gemini-cli-gemini"`)
	next := body[i+len(row):]
	next = next[:strings.Index(next, `<tr id="conn-`)]
	if !strings.Contains(next, `class="unusable"><code>`+first.ID) || !strings.Contains(next, resolver.ReasonCredentialDisabled) || !strings.Contains(next, second.ID) {
		t.Errorf("failover list:\n%s", next)
	}
}
