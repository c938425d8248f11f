package console

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/resolver"
)

// leaks reports whether s shows key, or 8 consecutive characters of it
// after its first 8 (the part no key format shares), literally, in any
// case, HTML- or URL-escaped, or base64- or hex-encoded.
func leaks(s, key string) bool {
	un := html.UnescapeString(s)
	views := []string{s, un}
	if u, err := url.QueryUnescape(un); err == nil {
		views = append(views, u)
	}
	lk := strings.ToLower(key)
	for _, v := range views {
		lv := strings.ToLower(v)
		for i := 8; i+8 <= len(lk); i++ {
			if strings.Contains(lv, lk[i:i+8]) {
				return true
			}
		}
	}
	// base64 of the key at each alignment, its last group (padding)
	// dropped; hex of its distinctive part.
	for off := range 3 {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
			b := enc.EncodeToString([]byte(key[off:]))
			if inner := b[:len(b)-4]; strings.Contains(s, inner) || strings.Contains(un, inner) {
				return true
			}
		}
	}
	return strings.Contains(strings.ToLower(un), hex.EncodeToString([]byte(key[8:])))
}

func TestLeaksFindsEveryForm(t *testing.T) {
	const key = "sk-ant-api03-CANARY-7f3a9c1e5b2d4f6a8c0e"
	for name, s := range map[string]string{
		"plain":    "<td>" + key + "</td>",
		"html":     `<input value="sk&#45;ant&#45;api03&#45;CANARY&#45;7f3a9c1e5b2d4f6a8c0e">`,
		"url":      "/ui/x?k=" + url.QueryEscape(strings.ReplaceAll(key, "-", "%2D")),
		"upper":    strings.ToUpper(key),
		"base64":   base64.StdEncoding.EncodeToString([]byte("Bearer " + key)),
		"base64u":  base64.URLEncoding.EncodeToString([]byte(key)),
		"hex":      hex.EncodeToString([]byte(key)),
		"fragment": "…" + key[14:30] + "…",
	} {
		if !leaks(s, key) {
			t.Errorf("%s form not found", name)
		}
	}
	if leaks("<code>…8c0e</code> sk-ant-api03-", key) {
		t.Error("a last-4 mask and the key format count as a leak")
	}
}

// TestCanaryNeverOnAPage creates canary keys at every tier, through the
// connect flow, the Platform keys form and the resolver, sends refused
// forms carrying them, and renders every page of the console (the Usage
// page and its CSVs over seeded usage too): no page, redirect, log or
// audit entry (as the page and as the API's JSON) shows one.
// The pages call no JSON endpoint; were one added, it belongs in pages.
func TestCanaryNeverOnAPage(t *testing.T) {
	ge := newGovEnv(t)
	e := ge.env
	seedUsage(t, ge.usage) // the Usage page and its CSVs are pages too
	ctx := context.Background()
	canaries := []string{
		"sk-ant-api03-CANARY-7f3a9c1e5b2d4f6a8c0e",
		"sk-proj-CANARY-q9w8e7r6-1b2c3d4e5f60718293",
		"AIzaSyCANARY-z7x6c5v4b3-a1b2c3d4e5f6a7b8",
	}
	b := e.browser()
	b.signIn(testAdminToken)
	var seen []string
	keep := func(a answer) {
		seen = append(seen, a.body, a.location)
		for k, vs := range a.header {
			seen = append(seen, k+": "+strings.Join(vs, ", "))
		}
	}
	a := b.post("/ui/connections/connect", postConnect("project", "p1", "u1", "anthropic-messages", "claude-code", "anthropic", "canary", canaries[0], ""))
	if a.status != http.StatusSeeOther {
		t.Fatalf("connect: %d", a.status)
	}
	keep(a)
	if _, err := e.svc.SetPlatformKey(ctx, "openai", resolver.NewSecret(canaries[1])); err != nil {
		t.Fatal(err)
	}
	g := mustCred(t, e.svc, "gemini", "user-gemini", canaries[2])
	mustBind(t, e.svc, resolver.BindingKey{Tier: resolver.TierUser, ScopeID: "u1", Dialect: "gemini"}, g.ID, false)
	if err := e.svc.DisableCredential(ctx, g.ID); err != nil {
		t.Fatal(err)
	}
	// Refused forms: the key must not come back in the form, the error or
	// the base URL shown again.
	for _, f := range []url.Values{
		postConnect("project", "p1", "", "anthropic-messages", "", "anthropic", "n", canaries[0], "http://x.example"),
		postConnect("project", "p1", "", "anthropic-messages", "", "anthropic", "n", canaries[0], "https://u:"+canaries[0]+"@x.example"),
		postConnect("project", "p1", "", "anthropic-messages", "", "anthropic", "n", canaries[0], "https://x.example/?k="+canaries[0]),
		postConnect("project", "p1", "", "anthropic-messages", "", "anthropic", "n", canaries[0]+" with a space", ""),
		postConnect("project", "p1", "", "openai-chat", "", "anthropic", "n", canaries[0], ""),
		postConnect("user", "", "u1", "gemini", "", "nope", "n", canaries[2], ""),
	} {
		a := b.post("/ui/connections/connect", f)
		if a.status != http.StatusUnprocessableEntity {
			t.Fatalf("refused connect: %d", a.status)
		}
		keep(a)
	}
	// The Tokens and Credentials pages: a canary added there, refused
	// adds carrying one, an issued token's page, a delete confirm page.
	const pageKey = "sk-ant-api03-CANARY-credpage-5e4d3c2b1a09"
	canaries = append(canaries, pageKey)
	if a := b.post("/ui/credentials/add", postAdd("anthropic", "page", pageKey, "")); a.status != http.StatusSeeOther {
		t.Fatalf("add: %d", a.status)
	} else {
		keep(a)
	}
	for _, f := range []url.Values{
		postAdd("anthropic", "n", pageKey, "http://x.example"),
		postAdd("anthropic", "n", pageKey, "https://u:"+pageKey+"@x.example"),
		postAdd("anthropic", "n", pageKey, "https://x.example/?k="+pageKey),
		postAdd("nope", "n", canaries[1], ""),
		postAdd("anthropic", "n", pageKey+" with a space", ""),
	} {
		a := b.post("/ui/credentials/add", f)
		if a.status != http.StatusUnprocessableEntity {
			t.Fatalf("refused add: %d", a.status)
		}
		keep(a)
	}
	// The Platform keys section: a canary set there, refused sets carrying
	// one, the remove confirm page, a removal and a refused second one,
	// and the key set again so the later pages list it.
	const platformKey = "AIzaSyCANARY-pk9r8t7y6-u5i4o3p2l1k0j9h8"
	canaries = append(canaries, platformKey)
	setPK := func(provider, key string, want int) {
		t.Helper()
		a := b.post("/ui/platform-keys/set", url.Values{"provider": {provider}, "key": {key}})
		if a.status != want {
			t.Fatalf("platform key set %q: %d, want %d", provider, a.status, want)
		}
		keep(a)
	}
	setPK("gemini", platformKey, http.StatusSeeOther)
	setPK("nope", platformKey, http.StatusUnprocessableEntity)
	setPK("gemini", platformKey+" with a space", http.StatusUnprocessableEntity)
	setPK("", platformKey, http.StatusUnprocessableEntity)
	keep(b.get("/ui/credentials"))
	keep(b.get("/ui/platform-keys/gemini/delete"))
	if a := b.post("/ui/platform-keys/gemini/delete", nil); a.status != http.StatusSeeOther {
		t.Fatalf("platform key remove: %d", a.status)
	} else {
		keep(a)
	}
	keep(b.post("/ui/platform-keys/gemini/delete", nil))
	setPK("gemini", platformKey, http.StatusSeeOther)
	keep(b.post("/ui/bindings/bind", url.Values{"tier": {"user"}, "scope_id": {"u1"}, "dialect": {"anthropic-messages"}, "cand_0": {g.ID}}))
	keep(b.post("/ui/tokens/issue", postIssue("ws-canary", "p1", "u1", "", "", "")))
	keep(b.post("/ui/tokens/issue", postIssue("", "p1", "u1", "claude-code", "", "")))
	pages := []string{"/ui/tokens", "/ui/tokens?state=all", "/ui/credentials", "/ui/credentials/" + g.ID + "/delete", "/ui/static/console.js",
		"/ui/platform-keys/gemini/delete", "/ui/platform-keys/openai/delete"}
	toks, err := e.svc.ListTokens(ctx, resolver.TokenFilter{})
	if err != nil || len(toks) != 1 {
		t.Fatalf("tokens: %d %v", len(toks), err)
	}
	pages = append(pages, "/ui/tokens/"+toks[0].ID+"/revoke")
	keep(b.post("/ui/credentials/"+g.ID+"/enable", nil))
	keep(b.post("/ui/tokens/"+toks[0].ID+"/revoke", nil))
	pages = append(pages, "/ui/", "/ui/signin", "/ui/connections", "/ui/connections?project=p1&user=u1", "/ui/connections?project=p1&user=u1&connected="+g.ID,
		"/ui/connections/connect?project=p1&user=u1", "/ui/connections/advanced?project=p1&user=u1", "/ui/nope", "/ui/static/console.css")
	// The writes as the admin API and the CLI record them (the key named
	// as the write's secret), and a budget set here: the Budgets and Audit
	// pages show them.
	creds, err := e.svc.ListCredentials(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, cr := range creds {
		var secret string
		for _, k := range canaries {
			if strings.HasSuffix(k, cr.Last4) {
				secret = k
			}
		}
		if err := ge.trail.CredentialCreated(ctx, cr, secret); err != nil {
			t.Fatal(err)
		}
		// A careless caller's change holding the key: the log redacts it.
		if err := ge.log.Record(ctx, "credential.note", cr.ID, map[string]any{"note": "was " + secret}, secret); err != nil {
			t.Fatal(err)
		}
	}
	if a := b.post("/ui/budgets/set", url.Values{"scope_type": {"project"}, "scope_id": {"p1"}, "metric": {"cost"}, "limit": {"5"}, "window": {"day"}}); a.status != http.StatusSeeOther {
		t.Fatalf("budget set: %d", a.status)
	}
	pages = append(pages, "/ui/usage", "/ui/usage?from=2026-11-27&to=2026-11-30&stack_by=user&bucket=hour&project=pa",
		"/ui/usage?projet=x", "/ui/usage/series.csv?from=2026-11-27&to=2026-11-30", "/ui/usage/top.csv?by=session", "/ui/usage/cache.csv?by=session")
	pages = append(pages, "/ui/budgets", "/ui/budgets?scope_type=project&scope_id=p1", "/ui/budgets/"+ge.listBudgets()[0].ID+"/delete", "/ui/audit", "/ui/audit?action=credential")
	for _, p := range pages {
		a := b.get(p)
		if a.status >= 500 {
			t.Fatalf("%s: %d", p, a.status)
		}
		keep(a)
	}
	// The pages do show the credentials, masked: the test is not vacuous.
	if all := strings.Join(seen, "\n"); !strings.Contains(all, "…8c0e") || !strings.Contains(all, "platform-openai") || !strings.Contains(all, "…1a09") ||
		!strings.Contains(all, `id="pk-gemini" data-state="set"`) || !strings.Contains(all, "…j9h8") || !strings.Contains(all, `data-action="platform_key.delete"`) ||
		!strings.Contains(all, `data-action="credential.create"`) {
		t.Fatal("the pages do not list the canary credentials at all")
	}
	seen = append(seen, e.logs.String())
	for _, en := range e.audits() {
		j, err := json.Marshal(en) // as GET /admin/v1/audit answers it
		if err != nil {
			t.Fatal(err)
		}
		seen = append(seen, fmt.Sprintf("%+v", en), string(j))
	}
	for _, key := range canaries {
		for i, s := range seen {
			if leaks(s, key) {
				t.Errorf("canary %s… shown (item %d):\n%s", key[:8], i, s)
			}
		}
	}
}
