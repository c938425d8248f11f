package proxy

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/audit"
	"github.com/tollgate/tollgate/internal/testkit"
)

// auditCanary is a credential key that is not shaped like one, so only
// the write naming it as its secret can keep it out of the log.
const auditCanary = "zz-CANARYaudit-5f1e9a7c3b2d4e6f08"

func forEachAuditEngine(t *testing.T, f func(t *testing.T, e *testEnv)) {
	t.Run("sqlite", func(t *testing.T) { f(t, newEnv(t, envOptions{audit: true})) })
	t.Run("postgres", func(t *testing.T) {
		pg := os.Getenv("TOLLGATE_TEST_POSTGRES")
		if pg == "" {
			t.Skip("TOLLGATE_TEST_POSTGRES is not set")
		}
		f(t, newEnv(t, envOptions{audit: true, dbURL: testkit.PostgresSchema(t, pg, "proxy_audit_")}))
	})
}

// auditGet sends GET /admin/v1/audit?query and returns the status and body.
func (e *testEnv) auditGet(query string) (int, string) {
	e.t.Helper()
	return (&policyAdminEnv{testEnv: e}).call("GET", "/audit?"+query, "")
}

func (e *testEnv) auditPage(query string) audit.Page {
	e.t.Helper()
	code, body := e.auditGet(query)
	var p audit.Page
	if err := json.Unmarshal([]byte(body), &p); code != 200 || err != nil {
		e.t.Fatalf("GET /audit?%s: %d %s", query, code, body)
	}
	return p
}

// TestAdminWritesAreAudited: every admin API write makes exactly one
// entry with its action, target and the admin token's fingerprint from
// the client's address; a refused write makes none; the change names what
// was set and no key, in any spelling, reaches the entries, the API's
// answer or the logs.
func TestAdminWritesAreAudited(t *testing.T) {
	forEachAuditEngine(t, func(t *testing.T, e *testEnv) {
		n := 0
		expect := func(what string, code, want int, action, target string) audit.Entry {
			t.Helper()
			if code != want {
				t.Fatalf("%s: %d, want %d", what, code, want)
			}
			p := e.auditPage("")
			if action == "" {
				if len(p.Entries) != n {
					t.Fatalf("%s: refused, yet %d entries (want %d): %+v", what, len(p.Entries), n, p.Entries[0])
				}
				return audit.Entry{}
			}
			n++
			if len(p.Entries) != n {
				t.Fatalf("%s: %d entries, want %d", what, len(p.Entries), n)
			}
			got := p.Entries[0]
			if got.Action != action || got.Target != target || got.Actor != (audit.Actor{Kind: audit.KindAPI, ID: audit.Fingerprint("admin-secret")}) || got.Source != "127.0.0.1" {
				t.Fatalf("%s: entry %+v, want %s on %s by the admin token from 127.0.0.1", what, got, action, target)
			}
			return got
		}
		code, v := e.admin("POST", "/tokens", `{"workspace":"ws-1","project":"p","user":"u","ttl":"1h"}`)
		tokID, _ := v["info"].(map[string]any)["id"].(string)
		tok, _ := v["token"].(string)
		ent := expect("issue", code, 201, "token.issue", tokID)
		if ent.Change["workspace"] != "ws-1" || ent.Change["user"] != "u" || ent.Change["expires_at"] == nil {
			t.Errorf("token.issue change %v", ent.Change)
		}
		code, _ = e.admin("DELETE", "/tokens/"+tokID, "")
		expect("revoke", code, 200, "token.revoke", tokID)

		name := base64.StdEncoding.EncodeToString([]byte(auditCanary)) // an innocent field holding the key
		code, v = e.admin("POST", "/credentials", `{"name":"`+name+`","provider":"anthropic","key":"`+auditCanary+`"}`)
		cred, _ := v["id"].(string)
		ent = expect("create", code, 201, "credential.create", cred)
		if ent.Change["provider"] != "anthropic" || ent.Change["name"] != audit.Redacted {
			t.Errorf("credential.create change %v", ent.Change)
		}
		code, v = e.admin("PUT", "/platform-keys/openai", `{"key":"`+hex.EncodeToString([]byte(auditCanary))+`"}`)
		ent = expect("platform key", code, 200, "platform_key.set", v["id"].(string))
		if ent.Change["provider"] != "openai" {
			t.Errorf("platform_key.set change %v", ent.Change)
		}
		for _, verb := range []string{"disable", "enable"} {
			code, _ = e.admin("POST", "/credentials/"+cred+"/"+verb, "")
			expect(verb, code, 200, "credential."+verb, cred)
		}
		key := `{"tier":"user","scope_id":"u1","dialect":"anthropic-messages"`
		code, _ = e.admin("POST", "/bindings", key+`,"credential_id":"`+cred+`"}`)
		ent = expect("bind", code, 201, "binding.bind", "user:u1/anthropic-messages")
		if cs, _ := ent.Change["credentials"].([]any); len(cs) != 1 || cs[0].(map[string]any)["id"] != cred || ent.Change["active"] != true {
			t.Errorf("binding.bind change %v", ent.Change)
		}
		for _, verb := range []string{"deactivate", "activate", "unbind"} {
			code, _ = e.admin("POST", "/bindings/"+verb, key+"}")
			expect(verb, code, 200, "binding."+verb, "user:u1/anthropic-messages")
		}
		code, _ = e.admin("DELETE", "/credentials/"+cred, "")
		expect("delete", code, 200, "credential.delete", cred)

		for _, r := range []struct{ method, path, body string }{
			{"POST", "/tokens", `{}`},
			{"POST", "/tokens", `{"workspace":"w","project":"p","user":"u","ttl":"soon"}`},
			{"DELETE", "/tokens/tok_nope", ""},
			{"POST", "/credentials", `{"provider":"nope","key":"` + auditCanary + `"}`},
			{"PUT", "/platform-keys/nope", `{"key":"` + auditCanary + `"}`},
			{"POST", "/credentials/cred_nope/disable", ""},
			{"DELETE", "/credentials/" + cred, ""},
			{"POST", "/bindings", key + `,"credential_id":"cred_nope"}`},
			{"POST", "/bindings/unbind", key + "}"},
			{"POST", "/bindings/activate", `{"tier":"galaxy"}`},
		} {
			code, _, _ := e.adminRaw(r.method, adminPrefix+r.path, r.body)
			if code < 400 {
				t.Fatalf("%s %s: %d, want a refusal", r.method, r.path, code)
			}
			expect(r.method+" "+r.path, code, code, "", "")
		}

		_, body := e.auditGet("")
		all := body + e.logs.String()
		for _, f := range []string{auditCanary, name, hex.EncodeToString([]byte(auditCanary)), url.QueryEscape(auditCanary), tok, "admin-secret"} {
			if strings.Contains(all, f) {
				t.Errorf("%q reached the audit log or the server's logs", f)
			}
		}
	})
}

// TestAdminAuditQuery: GET /admin/v1/audit filters as the log does and
// pages with next_cursor; an unknown or repeated parameter, or a bad
// value, is a 400 naming it.
func TestAdminAuditQuery(t *testing.T) {
	e := newEnv(t, envOptions{audit: true})
	ctx := audit.WithActor(context.Background(), audit.Actor{Kind: audit.KindCLI, ID: "ops"}, audit.SourceCLI)
	for _, w := range [][2]string{{"credential.create", "cred_a"}, {"credential.disable", "cred_a"}, {"token.issue", "tok_1"}, {"binding.bind", "platform/openai-responses"}} {
		if err := e.audit.Record(ctx, w[0], w[1], nil); err != nil {
			t.Fatal(err)
		}
	}
	mustIssue(t, e)
	for q, want := range map[string]int{
		"":                      5,
		"action=credential":     2,
		"action=credential.dis": 1,
		"target=cred_a":         2,
		"actor_kind=api":        1,
		"actor_kind=cli":        4,
		"actor=ops&action=tok":  1,
		"from=2000-01-01":       5,
		"to=2000-01-01":         0,
		"actor=" + audit.Fingerprint("admin-secret"): 1,
	} {
		if got := len(e.auditPage(q).Entries); got != want {
			t.Errorf("?%s: %d entries, want %d", q, got, want)
		}
	}
	p := e.auditPage("limit=3")
	if len(p.Entries) != 3 || p.Next == "" {
		t.Fatalf("first page: %+v", p)
	}
	rest := e.auditPage("limit=3&cursor=" + url.QueryEscape(p.Next))
	if len(rest.Entries) != 2 || rest.Next != "" || rest.Entries[0].ID == p.Entries[2].ID {
		t.Fatalf("second page: %+v", rest)
	}
	for q, want := range map[string]string{
		"user=u&actr=x":       "unknown parameter actr, user",
		"action=a&action=b":   "parameter action given more than once",
		"limit=100000":        "limit 100000",
		"actor_kind=robot":    `actor_kind "robot"`,
		"cursor=abc":          `cursor "abc"`,
		"from=tomorrow":       `from: "tomorrow"`,
		"to=2026-01-01T00:00": `to: "2026-01-01T00:00"`,
	} {
		code, _, msg := e.adminRaw("GET", adminPrefix+"/audit?"+q, "")
		if code != 400 || !strings.Contains(msg, want) {
			t.Errorf("?%s: %d %q, want 400 naming %q", q, code, msg, want)
		}
	}
}

func mustIssue(t *testing.T, e *testEnv) string {
	t.Helper()
	code, v := e.admin("POST", "/tokens", `{"workspace":"w","project":"p","user":"u"}`)
	if code != 201 {
		t.Fatalf("issue: %d %v", code, v)
	}
	return v["info"].(map[string]any)["id"].(string)
}

// TestAdminPolicyWritesAreAudited: each budget, limit and model rule
// write over the admin API makes one entry naming the policy and what the
// write did (created, updated or unchanged for a POST, replaced for a
// PUT); a refused one makes none.
func TestAdminPolicyWritesAreAudited(t *testing.T) {
	forEachAuditEngine(t, func(t *testing.T, e *testEnv) {
		// The policy store of a policy admin env, served again with the audit log.
		pe := newPolicyAdminEnvOn(t, e, filepath.Join(t.TempDir(), "gov.db"), nil)
		g := serveOn(t, e, Config{Registry: e.reg, Auth: e.svc, Resolver: e.svc, Admin: e.svc, Sink: e.sink,
			AdminToken: "admin-secret", Policies: pe.st, PolicyWatcher: pe.w, Audit: e.audit})
		a := &policyAdminEnv{testEnv: g}
		n := 0
		last := func(what string, want int) audit.Entry {
			t.Helper()
			p := e.auditPage("")
			if len(p.Entries) != want {
				t.Fatalf("%s: %d entries, want %d", what, len(p.Entries), want)
			}
			if want == 0 {
				return audit.Entry{}
			}
			return p.Entries[0]
		}
		for _, tc := range []struct{ path, one, noun, create, bad string }{
			{"/budgets", "budget", "budget", `{"scope_type":"project","scope_id":"acme","metric":"cost","limit_usd":"50","window":"month"}`, `{"scope_type":"project","window":"month"}`},
			{"/limits", "limit", "limit", `{"scope_type":"workspace","scope_id":"ws-42","rpm":60}`, `{"scope_type":"workspace","scope_id":"ws-42","rpm":-1}`},
			{"/model-rules", "rule", "model_rule", `{"scope_type":"project","scope_id":"acme","kind":"deny","pattern":"gpt-4*"}`, `{"kind":"sometimes"}`},
		} {
			code, body := a.call("POST", tc.path, tc.create)
			id, _ := policyAnswer(t, body)[tc.one].(map[string]any)["id"].(string)
			n++
			ent := last("POST "+tc.path, n)
			if code != 201 || ent.Action != tc.noun+".set" || ent.Target != id || ent.Change["result"] != "created" || ent.Change["scope_id"] == nil ||
				ent.Actor.Kind != audit.KindAPI {
				t.Fatalf("POST %s: %d, entry %+v", tc.path, code, ent)
			}
			a.call("POST", tc.path, tc.create)
			n++
			if ent := last("POST again "+tc.path, n); ent.Target != id || ent.Change["result"] != "unchanged" {
				t.Errorf("POST again %s: entry %+v", tc.path, ent)
			}
			a.call("PUT", tc.path+"/"+id, tc.create)
			n++
			if ent := last("PUT "+tc.path, n); ent.Action != tc.noun+".set" || ent.Target != id || ent.Change["result"] != "replaced" {
				t.Errorf("PUT %s: entry %+v", tc.path, ent)
			}
			for _, r := range [][3]string{{"POST", tc.path, tc.bad}, {"PUT", tc.path + "/" + id, tc.bad}, {"DELETE", tc.path + "/nope", ""}} {
				if code, body := a.call(r[0], r[1], r[2]); code < 400 {
					t.Fatalf("%v: %d %s, want a refusal", r, code, body)
				}
				last(r[0]+" "+r[1]+" refused", n)
			}
			if code, _ := a.call("DELETE", tc.path+"/"+id, ""); code != 200 {
				t.Fatalf("DELETE %s: %d", tc.path, code)
			}
			n++
			if ent := last("DELETE "+tc.path, n); ent.Action != tc.noun+".delete" || ent.Target != id {
				t.Errorf("DELETE %s: entry %+v", tc.path, ent)
			}
		}
	})
}
