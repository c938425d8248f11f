package console

import (
	"context"
	"errors"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/audit"
	"github.com/tollgate/tollgate/registry"
	"github.com/tollgate/tollgate/resolver"
)

// audits is the audit log, oldest entry first.
func (e *env) audits() []audit.Entry {
	e.t.Helper()
	p, err := e.audit.Query(context.Background(), audit.Filter{Limit: audit.MaxLimit})
	if err != nil {
		e.t.Fatal(err)
	}
	slices.Reverse(p.Entries)
	return p.Entries
}

// wroteOne checks that the log grew by exactly one entry since it held
// before entries, that the browser's session made it through the
// console, and returns it.
func (e *env) wroteOne(b *browser, before int, action, target string) audit.Entry {
	e.t.Helper()
	all := e.audits()
	if len(all) != before+1 {
		e.t.Fatalf("%s: %d audit entries, want %d: %+v", action, len(all), before+1, all[min(before, len(all)):])
	}
	e.madeBy(b, all[before], action, target)
	return all[before]
}

// madeBy checks that got is action on target by b's session.
func (e *env) madeBy(b *browser, got audit.Entry, action, target string) {
	e.t.Helper()
	want := audit.Actor{Kind: audit.KindConsole, ID: hashID(b.cookie().Value)[:12]}
	if got.Action != action || got.Target != target || got.Actor != want || got.Source != "127.0.0.1" {
		e.t.Fatalf("audit entry %+v, want %s on %s by %+v from 127.0.0.1", got, action, target, want)
	}
}

var (
	onceField = regexp.MustCompile(`name="once" value="([^"]+)"`)
	tokenArea = regexp.MustCompile(`<textarea id="token-secret"[^>]*>([^<]*)</textarea>`)
	envArea   = regexp.MustCompile(`<textarea id="token-env-([^"]+)"[^>]*>([^<]*)</textarea>`)
)

func postIssue(workspace, project, user, harness, ttl, model string) url.Values {
	return url.Values{"workspace": {workspace}, "project": {project}, "user": {user}, "harness": {harness}, "ttl": {ttl}, "model": {model}}
}

// TestTokenIssuedShownOnceThenRevoked issues a token through the page: it
// is on the answer to the post, with the environment "tollgate env"
// prints, and on no page, redirect or log after; it authenticates until
// it is revoked through the confirm step. Each write is one audit entry.
func TestTokenIssuedShownOnceThenRevoked(t *testing.T) {
	testTokenIssuedShownOnce(t, newEnv(t))
}

func testTokenIssuedShownOnce(t *testing.T, e *env) {
	ctx := context.Background()
	b := e.browser()
	b.signIn(testAdminToken)
	if p := b.get("/ui/tokens"); p.status != http.StatusOK || !strings.Contains(p.body, `id="token-issue-form"`) || !strings.Contains(p.body, `aria-current="page">Tokens`) {
		t.Fatalf("tokens page: %d", p.status)
	}
	once := onceField.FindStringSubmatch(b.get("/ui/tokens").body)
	if once == nil {
		t.Fatal("the issue form has no one-use value")
	}
	form := postIssue("ws-1", "p1", "u1", "claude-code", "2h", "")
	form.Set("once", once[1])
	n := len(e.audits())
	a := b.post("/ui/tokens/issue", form)
	if a.status != http.StatusOK || a.location != "" {
		t.Fatalf("issue: %d %q\n%s", a.status, a.location, a.body)
	}
	m := tokenArea.FindStringSubmatch(a.body)
	if m == nil {
		t.Fatalf("no #token-secret on the result:\n%s", a.body)
	}
	tok := html.UnescapeString(m[1])
	id, err := e.svc.Authenticate(ctx, tok)
	if err != nil || id.Workspace != "ws-1" || id.Project != "p1" || id.User != "u1" || id.Harness != "claude-code" {
		t.Fatalf("the shown token: %+v %v", id, err)
	}
	// The environment is what "tollgate env" prints for it.
	want, err := e.reg.Current().Setup("claude-code", registry.EnvOptions{ProxyURL: testProxyURL, Token: tok})
	if err != nil {
		t.Fatal(err)
	}
	envs := envArea.FindAllStringSubmatch(a.body, -1)
	if len(envs) != 1 || envs[0][1] != "claude-code" || html.UnescapeString(envs[0][2]) != want.Shell() || !strings.Contains(want.Shell(), tok) {
		t.Fatalf("environment %q, want %q", envs, want.Shell())
	}
	for _, s := range []string{`id="token-secret-copy"`, `data-copy="token-secret"`, `hidden`, `<script src="/ui/static/console.js">`, `readonly`,
		`data-reload-to="/ui/tokens?issued=` + id.TokenID + `"`} {
		if !strings.Contains(a.body, s) {
			t.Errorf("result page lacks %s", s)
		}
	}
	if cc, csp := a.header.Get("Cache-Control"), a.header.Get("Content-Security-Policy"); cc != "no-store" || !strings.Contains(csp, "script-src 'self';") {
		t.Errorf("Cache-Control %q, CSP %q", cc, csp)
	}
	if js := b.get("/ui/static/console.js"); js.status != http.StatusOK || !strings.HasPrefix(js.header.Get("Content-Type"), "text/javascript") || !strings.Contains(js.body, "data-copy") {
		t.Errorf("console.js: %d %q", js.status, js.header.Get("Content-Type"))
	}
	entry := e.wroteOne(b, n, "token.issue", id.TokenID)
	if entry.Change["workspace"] != "ws-1" || entry.Change["harness"] != "claude-code" {
		t.Errorf("token.issue change %+v", entry.Change)
	}
	if js := e.audits(); leaks(js[len(js)-1].Target+js[len(js)-1].ID, tok) {
		t.Error("the audit entry names the token")
	}
	// The form sent again (a reload of this page without its script, a
	// double click) issues nothing and shows no token.
	if again := b.post("/ui/tokens/issue", form); again.status != http.StatusConflict || tokenArea.MatchString(again.body) || !strings.Contains(again.body, `id="message"`) {
		t.Errorf("the form sent twice: %d", again.status)
	}
	if toks, _ := e.svc.ListTokens(ctx, resolver.TokenFilter{Workspace: "ws-1"}); len(toks) != 1 || len(e.audits()) != n+1 {
		t.Fatalf("the form sent twice issued %d tokens", len(toks))
	}
	if other := tokenArea.FindStringSubmatch(b.post("/ui/tokens/issue", postIssue("ws-1", "p1", "u1", "claude-code", "2h", "")).body); other == nil || other[1] == m[1] {
		t.Fatal("a new form does not issue a new token")
	}
	n++ // the second token's entry
	// Shown once: no later page has it.
	var later []answer
	for _, p := range []string{"/ui/tokens", "/ui/tokens?issued=" + id.TokenID, "/ui/tokens?state=all", "/ui/tokens/" + id.TokenID + "/revoke"} {
		later = append(later, b.get(p))
	}
	for i, l := range later {
		if l.status != http.StatusOK || leaks(l.body, tok) {
			t.Errorf("page %d after issue: %d, shows the token: %v", i, l.status, leaks(l.body, tok))
		}
	}
	if !strings.Contains(later[1].body, `id="flash"`) || !strings.Contains(later[0].body, `id="token-revoke-`+id.TokenID+`"`) {
		t.Error("no confirmation, or no revoke link in the list")
	}
	if leaks(e.logs.String(), tok) {
		t.Error("a log line holds the token")
	}

	// Revoke: the list links to a confirm page, whose form revokes.
	confirm := later[3]
	if !strings.Contains(confirm.body, `id="token-revoke-form"`) || !strings.Contains(confirm.body, `action="/ui/tokens/`+id.TokenID+`/revoke"`) {
		t.Fatalf("confirm page:\n%s", confirm.body)
	}
	if _, err := e.svc.Authenticate(ctx, tok); err != nil {
		t.Fatal("the confirm page revoked the token")
	}
	a = b.post("/ui/tokens/"+id.TokenID+"/revoke", nil)
	if a.status != http.StatusSeeOther || !strings.HasPrefix(a.location, "/ui/tokens?") {
		t.Fatalf("revoke: %d %q", a.status, a.location)
	}
	if _, err := e.svc.Authenticate(ctx, tok); !errors.Is(err, resolver.ErrTokenRevoked) {
		t.Fatalf("after revoke: %v", err)
	}
	e.wroteOne(b, n+1, "token.revoke", id.TokenID)
	list := b.get(a.location)
	if !strings.Contains(list.body, `id="flash"`) || !strings.Contains(list.body, `id="token-`+id.TokenID+`" data-state="revoked"`) ||
		strings.Contains(list.body, `id="token-revoke-`+id.TokenID+`"`) {
		t.Errorf("list after revoke:\n%s", list.body)
	}
	if a := b.post("/ui/tokens/tok_nope/revoke", nil); a.status != http.StatusNotFound {
		t.Errorf("revoke of an unknown token: %d", a.status)
	}
	if len(e.audits()) != n+2 {
		t.Error("a refused revoke was audited")
	}
}

// TestTokenIssueRefusals: a refused form issues nothing, says every
// problem at once and keeps what was typed.
func TestTokenIssueRefusals(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	b := e.browser()
	b.signIn(testAdminToken)
	b.get("/ui/tokens")
	for name, c := range map[string]struct {
		form url.Values
		want []string
	}{
		"missing":       {postIssue("", "p1", "", "", "24h", ""), []string{"workspace is required", "user is required"}},
		"ttl":           {postIssue("ws", "p1", "u1", "", "forever", ""), []string{`lifetime "forever" is not a duration`}},
		"too long":      {postIssue("ws", "p1", "u1", "", "800h", ""), []string{"ttl 800h0m0s is not in"}},
		"harness":       {postIssue("ws", "p1", "u1", "nope", "", ""), []string{"nope"}},
		"needs a model": {postIssue("ws-keep", "p1", "u1", modelHarness(t, e), "", ""), []string{"needs a model"}},
	} {
		a := b.post("/ui/tokens/issue", c.form)
		if a.status != http.StatusUnprocessableEntity || !strings.Contains(a.body, `id="form-error"`) {
			t.Errorf("%s: %d", name, a.status)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(html.UnescapeString(a.body), w) {
				t.Errorf("%s: error lacks %q", name, w)
			}
		}
		if strings.Contains(a.body, resolver.TokenPrefix) && tokenArea.MatchString(a.body) {
			t.Errorf("%s: a token is shown", name)
		}
	}
	if a := b.post("/ui/tokens/issue", postIssue("ws-keep", "p1", "u1", modelHarness(t, e), "3h", "")); !strings.Contains(a.body, `value="ws-keep"`) || !strings.Contains(a.body, `value="3h"`) {
		t.Error("a refused form does not keep what was typed")
	}
	toks, err := e.svc.ListTokens(ctx, resolver.TokenFilter{IncludeRevoked: true})
	if err != nil || len(toks) != 0 || len(e.audits()) != 0 {
		t.Fatalf("refused forms issued %d tokens, %d audit entries (%v)", len(toks), len(e.audits()), err)
	}
}

// modelHarness is a shipped harness whose environment must name a model.
func modelHarness(t *testing.T, e *env) string {
	for _, h := range e.reg.Current().Harnesses() {
		if h.RequiresModel {
			return h.Name
		}
	}
	t.Skip("the shipped registry has no harness that requires a model")
	return ""
}

// TestTokenListFilters lists tokens by project, user, workspace, harness
// and state (active, revoked, expired), as the resolver holds them.
func TestTokenListFilters(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.clock.t = time.Now() // the resolver stamps tokens with the real clock
	issue := func(ws, project, user, harness string, ttl time.Duration) string {
		_, info, err := e.svc.IssueToken(ctx, resolver.TokenSpec{Workspace: ws, Project: project, User: user, Harness: harness, TTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		return info.ID
	}
	a := issue("ws-a", "p1", "u1", "claude-code", 0)
	bb := issue("ws-b", "p1", "u2", "codex", 0)
	c := issue("ws-c", "p2", "u1", "", 0)
	d := issue("ws-d", "p2", "u2", "", time.Second)
	r := issue("ws-r", "p1", "u1", "", 0)
	if err := e.svc.RevokeToken(ctx, r); err != nil {
		t.Fatal(err)
	}
	e.clock.add(2 * time.Second) // d has expired, to the console's clock
	b := e.browser()
	b.signIn(testAdminToken)
	rowID := regexp.MustCompile(`<tr id="token-(tok_[^"]+)" data-state="([a-z]+)"`)
	list := func(q string) []string {
		t.Helper()
		p := b.get("/ui/tokens?" + q)
		if p.status != http.StatusOK {
			t.Fatalf("%s: %d", q, p.status)
		}
		var ids []string
		for _, m := range rowID.FindAllStringSubmatch(p.body, -1) {
			ids = append(ids, m[1]+":"+m[2])
		}
		slices.Sort(ids)
		return ids
	}
	sorted := func(s ...string) []string { slices.Sort(s); return s }
	for q, want := range map[string][]string{
		"":                            sorted(a+":active", bb+":active", c+":active"),
		"state=active":                sorted(a+":active", bb+":active", c+":active"),
		"state=revoked":               {r + ":revoked"},
		"state=expired":               {d + ":expired"},
		"state=all":                   sorted(a+":active", bb+":active", c+":active", d+":expired", r+":revoked"),
		"project=p1":                  sorted(a+":active", bb+":active"),
		"project=p1&state=all":        sorted(a+":active", bb+":active", r+":revoked"),
		"user=u1":                     sorted(a+":active", c+":active"),
		"workspace=ws-c":              {c + ":active"},
		"harness=codex":               {bb + ":active"},
		"harness=claude-code&user=u2": nil,
		"project=p2&state=expired":    {d + ":expired"},
	} {
		if got := list(q); !slices.Equal(got, want) {
			t.Errorf("?%s: %v, want %v", q, got, want)
		}
	}
	p := b.get("/ui/tokens?project=p1&harness=codex&state=revoked")
	for _, s := range []string{`id="token-filter-project" name="project" value="p1"`, `<option value="codex" selected>`, `<option value="revoked" selected>`} {
		if !strings.Contains(p.body, s) {
			t.Errorf("the filter form does not keep %s", s)
		}
	}
}
