package proxy

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/audit"
	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/ledger"
)

func (e *testEnv) admin(method, path, body string) (int, map[string]any) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.AdminURL+"/admin/v1"+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer admin-secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var v map[string]any
	json.NewDecoder(resp.Body).Decode(&v)
	return resp.StatusCode, v
}

// TestAdminIssuesATokenWithItsEnvironment: what an agent manager hands a
// workspace comes back in one call, and the token works at once.
func TestAdminIssuesATokenWithItsEnvironment(t *testing.T) {
	e := newEnv(t, envOptions{})
	code, v := e.admin("POST", "/tokens", `{"workspace":"ws-9","project":"p","user":"u","harness":"codex","ttl":"1h","model":"gpt-5"}`)
	if code != 201 {
		t.Fatalf("issue: %d %v", code, v)
	}
	tok, _ := v["token"].(string)
	setups, _ := v["setups"].([]any)
	if !strings.HasPrefix(tok, "tgw_") || len(setups) != 1 {
		t.Fatalf("answer: %v", v)
	}
	cfg := setups[0].(map[string]any)["config"].(string)
	if !strings.Contains(cfg, `base_url = "`+e.URL+`/openai/v1"`) {
		t.Errorf("codex config does not point at tollgate:\n%s", cfg)
	}
	resp := e.do("POST", "/openai/v1/responses", tok, `{"model":"gpt-5","input":"hi"}`)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("new token refused: %d", resp.StatusCode)
	}
	id := v["info"].(map[string]any)["id"].(string)
	if code, _ := e.admin("DELETE", "/tokens/"+id, ""); code != 200 {
		t.Fatalf("revoke: %d", code)
	}
	resp = e.do("POST", "/openai/v1/responses", tok, `{"model":"gpt-5","input":"hi"}`)
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("revoked token still works: %d", resp.StatusCode)
	}

	// A harness whose config needs a model is refused before any token exists.
	if code, v := e.admin("POST", "/tokens", `{"workspace":"ws-9","project":"p","user":"u","harness":"opencode"}`); code != 400 || !strings.Contains(v["error"].(map[string]any)["message"].(string), "--model") {
		t.Errorf("opencode without model: %d %v", code, v)
	}
	if code, v := e.admin("GET", "/tokens?workspace=ws-9&all=true", ""); code != 200 || len(v["tokens"].([]any)) != 1 {
		t.Errorf("list: %d %v", code, v)
	}
	if code, _ := e.admin("POST", "/tokens", `{"workspace":"x","colour":"red"}`); code != 400 {
		t.Errorf("unknown field accepted: %d", code)
	}
	req, _ := http.NewRequest("GET", e.AdminURL+"/admin/v1/tokens", nil)
	req.Header.Set("Authorization", "Bearer wrong")
	resp, _ = http.DefaultClient.Do(req)
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("wrong admin token: %d", resp.StatusCode)
	}
}

// TestAdminCredentialsBindingsAndResolution drive the tiers over HTTP.
func TestAdminCredentialsBindingsAndResolution(t *testing.T) {
	e := newEnv(t, envOptions{})
	code, cr := e.admin("POST", "/credentials", `{"provider":"openai","name":"acme","key":"sk-proj-ACMEkey-0123456789abcdef"}`)
	if code != 201 {
		t.Fatalf("create: %d %v", code, cr)
	}
	if _, leaked := cr["key"]; leaked || cr["last4"] != "cdef" {
		t.Errorf("credential answer: %v", cr)
	}
	id := cr["id"].(string)
	if code, v := e.admin("POST", "/bindings", `{"tier":"project","scope_id":"acme","dialect":"anthropic-messages","credential_id":"`+id+`"}`); code != 400 {
		t.Errorf("openai key bound to anthropic: %d %v", code, v)
	}
	if code, v := e.admin("POST", "/bindings", `{"tier":"project","scope_id":"acme","dialect":"openai-chat","credential_id":"`+id+`","active":false}`); code != 201 || v["active"] != false {
		t.Fatalf("bind inactive: %d %v", code, v)
	}
	code, v := e.admin("GET", "/resolution?project=acme&user=u", "")
	if code != 200 {
		t.Fatalf("resolution: %d", code)
	}
	found := false
	for _, r := range v["resolutions"].([]any) {
		m := r.(map[string]any)
		if m["dialect"] == "openai-chat" && m["harness"] == "" {
			found = true
			if m["source"] != "halted" || m["reason"] != "binding-inactive" {
				t.Errorf("row = %v", m)
			}
		}
	}
	if !found {
		t.Fatalf("no dialect-wide openai-chat row: %v", v)
	}
	if code, _ := e.admin("POST", "/bindings/activate", `{"tier":"project","scope_id":"acme","dialect":"openai-chat"}`); code != 200 {
		t.Fatalf("activate: %d", code)
	}
	if code, _ := e.admin("DELETE", "/credentials/cred_nope", ""); code != 404 {
		t.Errorf("delete unknown: %d", code)
	}
}

// TestAdminUsageByServiceTier: finance splits cost by service tier through
// the usage API, in JSON and CSV, from a real metering store. newEnv's
// server has no usage store, so a second server shares its resolver and
// registry and adds one.
func TestAdminUsageByServiceTier(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(t.TempDir(), "usage.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	st, err := ledger.OpenStore(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	day := time.Date(2026, 5, 4, 0, 0, 0, 0, time.UTC)
	rec := func(id, tier string, hour, in, out, cost int64) *metering.Record {
		return &metering.Record{
			RequestID: id, Start: day.Add(time.Duration(hour) * time.Hour), Workspace: "ws", Project: "p", User: "u",
			Harness: "codex", Provider: "openai", ModelServed: "gpt-5", Status: 200, Outcome: metering.OutcomeOK,
			Source: metering.SourceUpstream, ServiceTier: tier, Session: "sess-" + tier,
			Usage: &metering.Usage{InputUncached: in, Output: out}, CostMicroUSD: &cost,
		}
	}
	if _, err := st.InsertBatch(ctx, []*metering.Record{
		rec("a", "", 9, 100, 10, 1000), rec("b", "flex", 10, 200, 20, 1500),
		rec("c", "priority", 11, 300, 30, 9000), rec("d", "flex", 12, 50, 5, 250),
	}); err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Registry: e.reg, Auth: e.svc, Resolver: e.svc, Admin: e.svc, Usage: st, Sink: e.sink,
		AdminToken: "admin-secret", now: func() time.Time { return day.AddDate(0, 0, 1) }})
	if err != nil {
		t.Fatal(err)
	}
	get := func(query string) (int, string) {
		t.Helper()
		req := httptest.NewRequest("GET", "/admin/v1/usage?"+query, nil)
		req.Header.Set("Authorization", "Bearer admin-secret")
		resp, err := srv.admin.Test(req, -1)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	// Whole days come from the rollup, a partial range from the records;
	// both split the same way.
	for _, rng := range []string{"from=2026-05-04&to=2026-05-04", "from=2026-05-04T00:00:00Z&to=2026-05-04T23:00:00Z"} {
		code, body := get(rng + "&group_by=service_tier")
		var rows []map[string]any
		if err := json.Unmarshal([]byte(body), &rows); code != 200 || err != nil {
			t.Fatalf("%s: %d %v %s", rng, code, err, body)
		}
		want := [][3]any{{"", float64(100), "0.001000"}, {"flex", float64(250), "0.001750"}, {"priority", float64(300), "0.009000"}}
		if len(rows) != len(want) {
			t.Fatalf("%s: %d rows, want %d: %s", rng, len(rows), len(want), body)
		}
		for i, w := range want {
			if rows[i]["service_tier"] != w[0] || rows[i]["input_uncached"] != w[1] || rows[i]["cost_usd"] != w[2] {
				t.Errorf("%s row %d: %v, want service_tier %q, input_uncached %v, cost_usd %s", rng, i, rows[i], w[0], w[1], w[2])
			}
		}
	}

	code, body := get("from=2026-05-04&to=2026-05-04&group_by=model,service_tier&format=csv")
	recs, err := csv.NewReader(strings.NewReader(body)).ReadAll()
	if code != 200 || err != nil || len(recs) != 4 {
		t.Fatalf("csv: %d %v %q", code, err, body)
	}
	if !strings.HasPrefix(strings.Join(recs[0], ","), "model,service_tier,requests,") ||
		strings.Join(recs[2][:3], ",") != "gpt-5,flex,2" || recs[2][slices.Index(recs[0], "cost_usd")] != "0.001750" {
		t.Errorf("csv:\n%s", body)
	}

	code, body = get("from=2026-05-04&to=2026-05-04&group_by=service_tier&service_tier=priority")
	if code != 200 || !strings.Contains(body, `"service_tier": "priority"`) || strings.Contains(body, "flex") {
		t.Errorf("filtered by tier: %d %s", code, body)
	}
	// Cost per session ("this task cost $…"): group_by=session and the
	// session= filter pass through to the query.
	code, body = get("from=2026-05-04&to=2026-05-04&group_by=session&session=sess-flex")
	if code != 200 || !strings.Contains(body, `"session": "sess-flex"`) || !strings.Contains(body, `"cost_usd": "0.001750"`) || strings.Contains(body, "sess-priority") {
		t.Errorf("filtered by session: %d %s", code, body)
	}
	if code, body := get("group_by=tier"); code != 400 || !strings.Contains(body, `unknown group_by \"tier\"`) {
		t.Errorf("unknown group_by: %d %s", code, body)
	}
}

// adminRaw sends one admin request and returns the status, headers and the
// error message of the envelope, if any.
func (e *testEnv) adminRaw(method, path, body string) (int, http.Header, string) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.AdminURL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer admin-secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var v struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 400 {
		if err := json.Unmarshal(b, &v); err != nil {
			e.t.Errorf("%s %s: %d answer is not a JSON error envelope: %q", method, path, resp.StatusCode, b)
		}
	}
	return resp.StatusCode, resp.Header, v.Error.Message
}

// TestAdminClientMistakesNameEveryField: a caller's mistake is a 4xx whose
// message names every field at fault at once (an unknown provider with the
// known ones), never a 500 "internal error".
func TestAdminClientMistakesNameEveryField(t *testing.T) {
	e := newEnv(t, envOptions{})
	for _, tc := range []struct {
		method, path, body string
		want               []string
	}{
		{"POST", "/credentials", `{"provider":"nope","key":"sk-test-0123456789abcdef"}`,
			[]string{`provider "nope"`, "known: anthropic, deepseek, "}},
		{"POST", "/credentials", `{"provider":"nope","base_url":"ftp://x"}`,
			[]string{`provider "nope"`, "key is required", "base_url must be https"}},
		{"POST", "/credentials", `{}`,
			[]string{"provider is required", "key is required"}},
		{"PUT", "/platform-keys/nope", `{"key":"sk-test-0123456789abcdef"}`,
			[]string{`provider "nope"`, "known: anthropic, deepseek, "}},
		{"PUT", "/platform-keys/nope", `{}`,
			[]string{`provider "nope"`, "key is required"}},
		{"POST", "/bindings", `{"dialect":"nope","harness":"nah"}`,
			[]string{"tier is required", `dialect "nope"`, `harness "nah"`, "credential_id is required"}},
		{"POST", "/bindings", `{"tier":"user","dialect":"openai-chat","credential_id":"cred_x"}`,
			[]string{"scope_id is required"}},
		{"POST", "/bindings/unbind", `{}`, []string{"tier is required", "dialect is required"}},
		{"POST", "/bindings/deactivate", ``, []string{"tier is required", "dialect is required"}},
		{"POST", "/credentials", ``, []string{"provider is required", "key is required"}},
		{"POST", "/bindings/activate", `{"tier":"team"}`, []string{`tier "team"`, "dialect is required"}},
		{"POST", "/tokens", `{"harness":"nah","ttl":"soon"}`,
			[]string{"workspace is required", "user is required", `harness "nah"`, `ttl "soon"`}},
	} {
		code, _, msg := e.adminRaw(tc.method, "/admin/v1"+tc.path, tc.body)
		if code != 400 {
			t.Errorf("%s %s %s: %d %q, want 400", tc.method, tc.path, tc.body, code, msg)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s %s %s: message %q does not say %q", tc.method, tc.path, tc.body, msg, w)
			}
		}
	}
}

// TestAdminWrongMethodIs405WithAllow: a known admin path asked with the
// wrong method says which methods it has, instead of the proxy's 404.
func TestAdminWrongMethodIs405WithAllow(t *testing.T) {
	e := newEnv(t, envOptions{})
	for _, tc := range []struct{ method, path, allow string }{
		{"GET", "/admin/v1/credentials/cred_x/disable", "POST"},
		{"PUT", "/admin/v1/tokens", "POST, GET, HEAD"},
		{"POST", "/admin/v1/platform-keys/openai", "PUT, DELETE"},
		{"GET", "/admin/v1/tokens/tok_x", "DELETE"},
		{"DELETE", "/admin/v1/bindings", "POST, GET, HEAD"},
		{"GET", "/admin/v1/bindings/unbind", "POST"},
	} {
		code, h, msg := e.adminRaw(tc.method, tc.path, "")
		if code != 405 || h.Get("Allow") != tc.allow {
			t.Errorf("%s %s: %d Allow %q (%q), want 405 Allow %q", tc.method, tc.path, code, h.Get("Allow"), msg, tc.allow)
		}
	}
	if code, _, msg := e.adminRaw("GET", "/admin/v1/nothing", ""); code != 404 || !strings.Contains(msg, "no admin endpoint") {
		t.Errorf("unknown admin path: %d %q", code, msg)
	}
}

// TestAdminOffSaysHowToTurnItOn: without an admin token, /admin answers
// that the API is off and which setting turns it on, not "no route".
func TestAdminOffSaysHowToTurnItOn(t *testing.T) {
	e := newEnv(t, envOptions{})
	off := serveOn(t, e, Config{Registry: e.reg, Auth: e.svc, Resolver: e.svc, Admin: e.svc, Sink: e.sink})
	for _, p := range []string{"/admin/v1/tokens", "/admin/v1/credentials", "/admin"} {
		code, _, msg := off.adminRaw("GET", p, "")
		if code != 404 || !strings.Contains(msg, "admin API is off") || !strings.Contains(msg, "TOLLGATE_ADMIN_TOKEN") {
			t.Errorf("GET %s with the admin API off: %d %q", p, code, msg)
		}
	}
	// Inference is untouched.
	resp := off.do("POST", "/openai/v1/chat/completions", e.token("ws", "p", "u", ""), `{"model":"gpt-5","messages":[]}`)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("inference with the admin API off: %d", resp.StatusCode)
	}
}

// TestAdminDeletesPlatformKey: DELETE /platform-keys/{provider} removes the
// key the proxy was using for a user with no default, the dialect then
// answers its own error envelope, the resolution view says unresolved, one
// audit entry names the credential and provider and never the key, and a
// second removal (404) or an unknown provider (400, with the known ones)
// is refused by name and recorded nowhere.
func TestAdminDeletesPlatformKey(t *testing.T) {
	forEachAuditEngine(t, func(t *testing.T, e *testEnv) {
		ctx := context.Background()
		tok := e.token("ws-1", "p", "u", "")
		chat := func() (int, string) {
			t.Helper()
			resp := e.do("POST", "/openai/v1/chat/completions", tok, `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`)
			defer resp.Body.Close()
			return resp.StatusCode, string(readAll(t, resp.Body))
		}
		if code, body := chat(); code != 200 {
			t.Fatalf("with the platform key: %d %s", code, body)
		}
		keys, err := e.svc.PlatformKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var id string
		for _, k := range keys {
			if k.Provider == "openai" && k.Credential != nil {
				id = k.Credential.ID
			}
		}
		if id == "" {
			t.Fatalf("no openai platform key: %+v", keys)
		}

		code, _, msg := e.adminRaw("DELETE", adminPrefix+"/platform-keys/openai", "")
		if code != 204 || msg != "" {
			t.Fatalf("delete: %d %q, want 204", code, msg)
		}
		p := e.auditPage("")
		if len(p.Entries) != 1 {
			t.Fatalf("%d audit entries, want 1", len(p.Entries))
		}
		got := p.Entries[0]
		if got.Action != "platform_key.delete" || got.Target != id || got.Change["provider"] != "openai" ||
			got.Actor != (audit.Actor{Kind: audit.KindAPI, ID: audit.Fingerprint("admin-secret")}) || got.Source != "127.0.0.1" {
			t.Errorf("audit entry %+v, want platform_key.delete on %s by the admin token", got, id)
		}
		code, body := chat()
		var env struct {
			Error struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(body), &env); code != 401 || err != nil || !strings.Contains(env.Error.Message, "no credential is configured") {
			t.Errorf("after removal: %d %s, want 401 in OpenAI's envelope", code, body)
		}
		_, res := e.admin("GET", "/resolution?project=p&user=u", "")
		for _, r := range res["resolutions"].([]any) {
			if m := r.(map[string]any); m["dialect"] == "openai-chat" && m["source"] != "unresolved" {
				t.Errorf("resolution row after removal: %v", m)
			}
		}

		for _, tc := range []struct {
			provider string
			want     int
			words    []string
		}{
			{"openai", 404, []string{`provider "openai" has no platform key`}},
			{"nope", 400, []string{`provider "nope"`, "known: anthropic, deepseek, "}},
		} {
			code, _, msg := e.adminRaw("DELETE", adminPrefix+"/platform-keys/"+tc.provider, "")
			if code != tc.want {
				t.Errorf("delete %s: %d %q, want %d", tc.provider, code, msg, tc.want)
			}
			for _, w := range tc.words {
				if !strings.Contains(msg, w) {
					t.Errorf("delete %s: %q lacks %q", tc.provider, msg, w)
				}
			}
		}
		if _, body := e.auditGet(""); strings.Contains(body, canaryOpenAI) || len(e.auditPage("").Entries) != 1 {
			t.Errorf("refused removals were audited, or the key is in the log: %s", body)
		}
		e.assertNoCanary()
	})
}
