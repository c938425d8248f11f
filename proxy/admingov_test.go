package proxy

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/resolver"
)

// policyAdminEnv is a server with the policy admin API on a real SQLite store, its
// watcher refreshed by each write, in front of newEnv's resolver.
type policyAdminEnv struct {
	*testEnv
	st *governance.Store
	w  *governance.Watcher
}

func newPolicyAdminEnv(t *testing.T) *policyAdminEnv {
	t.Helper()
	return newPolicyAdminEnvOn(t, newEnv(t, envOptions{}), filepath.Join(t.TempDir(), "gov.db"), nil)
}

// newPolicyAdminEnvOn serves e's resolver with a policy store on dsn; with
// cfg, its watcher runs (Start) until the test ends.
func newPolicyAdminEnvOn(t *testing.T, e *testEnv, dsn string, cfg *governance.WatchConfig) *policyAdminEnv {
	t.Helper()
	ctx := context.Background()
	db, err := store.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	st, err := governance.OpenStore(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	w := governance.NewWatcher(st, governance.WatchConfig{})
	if cfg != nil {
		w = governance.NewWatcher(st, *cfg)
		wctx, cancel := context.WithCancel(ctx)
		if err := w.Start(wctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cancel(); <-w.Done() })
	} else if err := w.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	g := serveOn(t, e, Config{Registry: e.reg, Auth: e.svc, Resolver: e.svc, Admin: e.svc, Sink: e.sink,
		AdminToken: "admin-secret", Policies: st, PolicyWatcher: w})
	g.svc = e.svc
	return &policyAdminEnv{testEnv: g, st: st, w: w}
}

// call sends one admin request and returns the status and the raw body.
func (e *policyAdminEnv) call(method, path, body string) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.AdminURL+"/admin/v1"+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer admin-secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func policyAnswer(t *testing.T, body string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("answer is not JSON: %q", body)
	}
	return v
}

// TestAdminPolicyCRUD: create, list, get, replace and delete each kind of
// policy over HTTP; each write is in this replica's snapshot before the
// answer returns, and a budget's edit keeps its id.
func TestAdminPolicyCRUD(t *testing.T) {
	e := newPolicyAdminEnv(t)
	for _, tc := range []struct {
		path, one, many, create, replace string
		check                            func(t *testing.T, created, replaced map[string]any)
	}{
		{"/budgets", "budget", "budgets",
			`{"scope_type":"project","scope_id":"acme","metric":"cost","limit_usd":"50","window":"month","model":"claude-*"}`,
			`{"scope_type":"project","scope_id":"acme","metric":"cost","limit":80500000,"window":"month","mode":"hard","alert_thresholds":[90]}`,
			func(t *testing.T, c, r map[string]any) {
				if c["limit"] != float64(50_000_000) || c["limit_usd"] != "50.00" || c["mode"] != "soft" || c["unpriced"] != "refuse" || c["window"] != "month" {
					t.Errorf("created budget: %v", c)
				}
				if r["limit"] != float64(80_500_000) || r["limit_usd"] != "80.50" || r["mode"] != "hard" || r["model"] != nil {
					t.Errorf("replaced budget: %v", r)
				}
				if b := e.w.Current().Budgets; len(b) != 1 || b[0].Limit != 80_500_000 {
					t.Errorf("snapshot after the replace: %+v", b)
				}
			}},
		{"/limits", "limit", "limits",
			`{"scope_type":"workspace","scope_id":"ws-42","rpm":60,"tpm":200000}`,
			`{"scope_type":"workspace","scope_id":"ws-42","concurrency":2,"mode":"hard"}`,
			func(t *testing.T, c, r map[string]any) {
				if c["rpm"] != float64(60) || c["mode"] != "soft" || r["rpm"] != nil || r["concurrency"] != float64(2) {
					t.Errorf("limit: %v then %v", c, r)
				}
				if l := e.w.Current().Limits; len(l) != 1 || l[0].Concurrency != 2 {
					t.Errorf("snapshot after the replace: %+v", l)
				}
			}},
		{"/model-rules", "rule", "rules",
			`{"scope_type":"project","scope_id":"acme","kind":"alias","pattern":"fast","target":"gpt-5-mini"}`,
			`{"scope_type":"project","scope_id":"acme","kind":"alias","pattern":"fast","target":"gpt-5"}`,
			func(t *testing.T, c, r map[string]any) {
				if c["target"] != "gpt-5-mini" || r["target"] != "gpt-5" {
					t.Errorf("rule: %v then %v", c, r)
				}
				if rs := e.w.Current().Rules; len(rs) != 1 || rs[0].Target != "gpt-5" {
					t.Errorf("snapshot after the replace: %+v", rs)
				}
			}},
	} {
		code, body := e.call("POST", tc.path, tc.create)
		if code != 201 {
			t.Fatalf("POST %s: %d %s", tc.path, code, body)
		}
		created := policyAnswer(t, body)[tc.one].(map[string]any)
		id := created["id"].(string)
		code, body = e.call("GET", tc.path, "")
		if list := policyAnswer(t, body)[tc.many].([]any); code != 200 || len(list) != 1 || list[0].(map[string]any)["id"] != id {
			t.Errorf("GET %s: %d %s", tc.path, code, body)
		}
		code, body = e.call("GET", tc.path+"?scope_type=user", "")
		if list := policyAnswer(t, body)[tc.many].([]any); code != 200 || len(list) != 0 {
			t.Errorf("GET %s?scope_type=user: %d %s", tc.path, code, body)
		}
		if code, body := e.call("GET", tc.path+"/"+id, ""); code != 200 || policyAnswer(t, body)[tc.one].(map[string]any)["id"] != id {
			t.Errorf("GET %s/%s: %d %s", tc.path, id, code, body)
		}
		code, body = e.call("PUT", tc.path+"/"+id, tc.replace)
		if code != 200 {
			t.Fatalf("PUT %s/%s: %d %s", tc.path, id, code, body)
		}
		replaced := policyAnswer(t, body)[tc.one].(map[string]any)
		if replaced["id"] != id || replaced["created_at"] != created["created_at"] {
			t.Errorf("PUT changed the id or created_at: %v, was %v", replaced, created)
		}
		tc.check(t, created, replaced)
		if code, body := e.call("DELETE", tc.path+"/"+id, ""); code != 200 || !strings.Contains(body, id) {
			t.Errorf("DELETE: %d %s", code, body)
		}
		for _, m := range []string{"GET", "DELETE"} {
			if code, body := e.call(m, tc.path+"/"+id, ""); code != 404 || !strings.Contains(body, id) {
				t.Errorf("%s of a deleted id: %d %s", m, code, body)
			}
		}
		if code, body := e.call("PUT", tc.path+"/"+id, tc.create); code != 404 {
			t.Errorf("PUT of a deleted id: %d %s", code, body)
		}
	}
	if p := e.w.Current(); !p.Empty() {
		t.Errorf("snapshot after every delete: %+v", p)
	}
}

// TestAdminPolicyMistakes: unknown fields, missing fields, bad windows,
// modes and metrics are 400s naming every field at once (N10); nothing is
// stored.
func TestAdminPolicyMistakes(t *testing.T) {
	e := newPolicyAdminEnv(t)
	for _, tc := range []struct {
		method, path, body string
		want               []string
	}{
		{"POST", "/budgets", `{"scope_type":"project","scope_id":"acme","metric":"cost","limit":1,"window":"month","budget_duration":"30d"}`,
			[]string{`unknown field "budget_duration"`}},
		{"POST", "/budgets", `{}`, []string{"scope_type is required", "metric is required", "limit is required", "window is required"}},
		{"POST", "/budgets", ``, []string{"scope_type is required", "metric is required"}},
		{"POST", "/budgets", `{"scope_type":"team","metric":"dollars","limit":-5,"window":"fortnight","mode":"strict","unpriced":"wave"}`,
			[]string{`scope_type "team"`, `metric "dollars"`, "limit must be a positive", `window "fortnight"`, `mode "strict"`, `unpriced "wave"`}},
		{"POST", "/budgets", `{"scope_type":"platform","metric":"cost","limit":5,"limit_usd":"5","window":"day"}`,
			[]string{"not both"}},
		{"POST", "/budgets", `{"scope_type":"platform","metric":"cost","limit_usd":"-5","window":"rolling:10s"}`,
			[]string{`limit_usd: "-5"`, `window "rolling:10s"`}},
		{"POST", "/budgets", `{"scope_type":"platform","metric":"tokens","limit_usd":"5","window":"day"}`,
			[]string{"limit_usd is for cost budgets"}},
		{"POST", "/budgets", `{"scope_type":"platform","metric":"cost","limit":"50","window":"day"}`,
			[]string{"limit"}},
		{"POST", "/limits", `{"scope_type":"workspace","rpm":-1,"mode":"alert","rpd":5}`, []string{`unknown field "rpd"`}},
		{"POST", "/limits", `{"scope_type":"workspace","rpm":-1,"mode":"alert"}`,
			[]string{"scope_id is required", "must not be negative", `mode "alert"`}},
		{"POST", "/limits", `{"scope_type":"platform"}`, []string{"set at least one of rpm, tpm, concurrency"}},
		{"POST", "/model-rules", `{"scope_type":"user","scope_id":"u","kind":"alias","pattern":"f*"}`,
			[]string{"aliases are platform or project", "exact model name", "target is required"}},
		{"POST", "/model-rules", `{"scope_type":"project","scope_id":"p","kind":"block","pattern":"x"}`, []string{`kind "block"`}},
		{"GET", "/budgets?scope_type=team", ``, []string{`scope_type "team"`}},
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
	if v, _ := e.st.Version(context.Background()); v != 0 {
		t.Errorf("refused requests wrote: version %d", v)
	}
}

// TestAdminPolicyMethods: wrong methods are 405 with the path's methods.
func TestAdminPolicyMethods(t *testing.T) {
	e := newPolicyAdminEnv(t)
	for _, tc := range []struct{ method, path, allow string }{
		{"PUT", "/admin/v1/budgets", "POST, GET, HEAD"},
		{"DELETE", "/admin/v1/limits", "POST, GET, HEAD"},
		{"POST", "/admin/v1/model-rules/rule_x", "GET, HEAD, PUT, DELETE"},
		{"PATCH", "/admin/v1/budgets/bud_x", "GET, HEAD, PUT, DELETE"},
	} {
		code, h, msg := e.adminRaw(tc.method, tc.path, "")
		if code != 405 || h.Get("Allow") != tc.allow {
			t.Errorf("%s %s: %d Allow %q (%q), want 405 Allow %q", tc.method, tc.path, code, h.Get("Allow"), msg, tc.allow)
		}
	}
	// Without a store the routes are not there at all.
	if code, _, _ := e.testEnv.adminRaw("GET", "/admin/v1/budgets", ""); code != 200 {
		t.Errorf("with a store: %d", code)
	}
	plain := newEnv(t, envOptions{})
	if code, _, msg := plain.adminRaw("GET", "/admin/v1/budgets", ""); code != 404 || !strings.Contains(msg, "no admin endpoint") {
		t.Errorf("without a store: %d %q", code, msg)
	}
}

// TestAdminEffectiveAndResolution: /budgets/effective and /resolution list
// the policies in force for a scope (from the snapshot when no Governor
// runs), and nothing of the credential tables: no key, no credential id.
func TestAdminEffectiveAndResolution(t *testing.T) {
	e := newPolicyAdminEnv(t)
	ctx := context.Background()
	cr, err := e.svc.CreateCredential(ctx, resolver.CredentialSpec{Name: "acme", Provider: "openai", Secret: resolver.NewSecret(canaryOpenAI)})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct{ path, body string }{
		{"/budgets", `{"scope_type":"project","scope_id":"acme","metric":"cost","limit_usd":"1.234567","window":"day"}`},
		{"/budgets", `{"scope_type":"project","scope_id":"other","metric":"tokens","limit":100,"window":"day"}`},
		{"/budgets", `{"scope_type":"user","scope_id":"ann","metric":"tokens","limit":100,"window":"week","model":"gpt-*"}`},
		{"/limits", `{"scope_type":"platform","rpm":100}`},
		{"/model-rules", `{"scope_type":"project","scope_id":"acme","kind":"deny","pattern":"gpt-4*"}`},
	} {
		if code, body := e.call("POST", p.path, p.body); code != 201 {
			t.Fatalf("POST %s: %d %s", p.path, code, body)
		}
	}
	kinds := func(body string) string {
		var v struct {
			Policies []struct {
				Kind   string `json:"kind"`
				Budget *struct {
					ScopeID  string `json:"scope_id"`
					LimitUSD string `json:"limit_usd"`
				} `json:"budget"`
			} `json:"policies"`
		}
		if err := json.Unmarshal([]byte(body), &v); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		var out []string
		for _, p := range v.Policies {
			k := p.Kind
			if p.Budget != nil {
				k += ":" + p.Budget.ScopeID + p.Budget.LimitUSD
			}
			out = append(out, k)
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct{ query, want string }{
		{"project=acme&user=ann", "model_rule,limit,budget:acme1.234567,budget:ann"},
		{"project=acme&user=ann&model=claude-opus-4-5", "model_rule,limit,budget:acme1.234567"},
		{"project=other", "limit,budget:other"},
	} {
		code, body := e.call("GET", "/budgets/effective?"+tc.query, "")
		if code != 200 || kinds(body) != tc.want {
			t.Errorf("effective?%s: %d %s, want %s", tc.query, code, kinds(body), tc.want)
		}
	}
	code, body := e.call("GET", "/resolution?project=acme&user=ann", "")
	if code != 200 || kinds(body) != "model_rule,limit,budget:acme1.234567,budget:ann" || !strings.Contains(body, `"resolutions"`) {
		t.Errorf("resolution: %d %s", code, body)
	}
	// No answer of the policy API carries another table's data.
	for _, path := range []string{"/budgets", "/limits", "/model-rules", "/budgets/effective?project=acme&user=ann"} {
		_, body := e.call("GET", path, "")
		for _, c := range append([]string{cr.ID, "last4"}, canaries...) {
			if strings.Contains(body, c) {
				t.Errorf("GET %s carries %q: %s", path, c, body)
			}
		}
	}
}

// TestAdminPolicyReachesEveryReplica: two servers, each with its own store
// and watcher on one PostgreSQL schema. A budget created through one
// server's admin API is enforced by the other within 100 ms (NOTIFY, as
// token revocation), and so is its deletion.
func TestAdminPolicyReachesEveryReplica(t *testing.T) {
	pg := os.Getenv("TOLLGATE_TEST_POSTGRES")
	if pg == "" {
		t.Skip("TOLLGATE_TEST_POSTGRES is not set")
	}
	dsn := testkit.PostgresSchema(t, pg, "gov_admin_")
	e := newEnv(t, envOptions{})
	cfg := &governance.WatchConfig{Poll: time.Minute} // only a notification can be in time
	a := newPolicyAdminEnvOn(t, e, dsn, cfg)
	b := newPolicyAdminEnvOn(t, e, dsn, cfg)
	time.Sleep(300 * time.Millisecond) // the listeners' connect and self-test
	has := func(id string) bool {
		for _, x := range b.w.Current().Budgets {
			if x.ID == id {
				return true
			}
		}
		return false
	}
	code, body := a.call("POST", "/budgets", `{"scope_type":"workspace","scope_id":"ws-1","metric":"tokens","limit":1000,"window":"day"}`)
	if code != 201 {
		t.Fatalf("POST on replica a: %d %s", code, body)
	}
	id := policyAnswer(t, body)["budget"].(map[string]any)["id"].(string)
	start := time.Now()
	if !testkit.Poll(100*time.Millisecond, time.Millisecond, func() bool { return has(id) }) {
		t.Fatalf("replica b has not seen %s after 100 ms", id)
	}
	t.Logf("create seen by replica b after %s", time.Since(start))
	if code, body := b.call("GET", "/budgets/effective?workspace=ws-1", ""); code != 200 || !strings.Contains(body, id) {
		t.Errorf("effective on replica b: %d %s", code, body)
	}
	if code, body := a.call("DELETE", "/budgets/"+id, ""); code != 200 {
		t.Fatalf("DELETE on replica a: %d %s", code, body)
	}
	start = time.Now()
	if !testkit.Poll(100*time.Millisecond, time.Millisecond, func() bool { return !has(id) }) {
		t.Fatalf("replica b still enforces %s 100 ms after its deletion", id)
	}
	t.Logf("delete seen by replica b after %s", time.Since(start))
}

// TestAdminPolicyPostIsIdempotent: POSTing a policy whose identity exists
// (scope, model, harness and, for budgets, metric and window; a rule's kind
// and pattern) updates it in place: 200 and X-Tollgate-Result: updated (or
// unchanged), the same id, one policy; a new one is 201 created. A
// limit POST that leaves a rate out keeps it.
func TestAdminPolicyPostIsIdempotent(t *testing.T) {
	e := newPolicyAdminEnv(t)
	post := func(path, body string, wantCode int, wantResult string) map[string]any {
		t.Helper()
		req, _ := http.NewRequest("POST", e.AdminURL+"/admin/v1"+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer admin-secret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != wantCode || resp.Header.Get("X-Tollgate-Result") != wantResult {
			t.Fatalf("POST %s %s: %d %q %s, want %d %s", path, body, resp.StatusCode, resp.Header.Get("X-Tollgate-Result"), out, wantCode, wantResult)
		}
		// One key, as every answer about one policy.
		ans := policyAnswer(t, string(out))
		if len(ans) != 1 {
			t.Fatalf("answer %s has %d keys", out, len(ans))
		}
		for _, v := range ans {
			return v.(map[string]any)
		}
		return nil
	}
	b1 := post("/budgets", `{"scope_type":"project","scope_id":"acme","metric":"cost","limit_usd":"50","window":"month","mode":"hard"}`, 201, "created")
	b2 := post("/budgets", `{"scope_type":"project","scope_id":"acme","metric":"cost","limit_usd":"60","window":"month"}`, 200, "updated")
	if b2["id"] != b1["id"] || b2["limit_usd"] != "60.00" || b2["mode"] != "hard" || b2["created_at"] != b1["created_at"] {
		t.Errorf("budget update: %v, was %v", b2, b1)
	}
	post("/budgets", `{"scope_type":"project","scope_id":"acme","metric":"cost","limit":60000000,"window":"month"}`, 200, "unchanged")
	post("/budgets", `{"scope_type":"project","scope_id":"acme","metric":"cost","limit_usd":"5","window":"day"}`, 201, "created")
	if bs := e.w.Current().Budgets; len(bs) != 2 {
		t.Errorf("%d budgets in the snapshot, want 2: %+v", len(bs), bs)
	}
	// A PUT cannot make the month budget a second day budget.
	if code, out := e.call("PUT", "/budgets/"+b1["id"].(string), `{"scope_type":"project","scope_id":"acme","metric":"cost","limit_usd":"60","window":"day"}`); code != 400 || !strings.Contains(out, "already has this") {
		t.Errorf("PUT onto another budget's identity: %d %s", code, out)
	}

	l1 := post("/limits", `{"scope_type":"workspace","scope_id":"ws-42","rpm":60}`, 201, "created")
	l2 := post("/limits", `{"scope_type":"workspace","scope_id":"ws-42","tpm":200000}`, 200, "updated")
	if l2["id"] != l1["id"] || l2["rpm"] != float64(60) || l2["tpm"] != float64(200000) {
		t.Errorf("limit update: %v, was %v", l2, l1)
	}
	if code, out := e.call("POST", "/limits", `{"scope_type":"workspace","scope_id":"ws-42","rpm":-1}`); code != 400 || !strings.Contains(out, "negative") {
		t.Errorf("a negative rate: %d %s", code, out)
	}
	if ls := e.w.Current().Limits; len(ls) != 1 || ls[0].RPM != 60 || ls[0].TPM != 200000 {
		t.Errorf("limits in the snapshot: %+v", ls)
	}

	r1 := post("/model-rules", `{"scope_type":"project","scope_id":"acme","kind":"deny","pattern":"claude-opus-*"}`, 201, "created")
	r2 := post("/model-rules", `{"scope_type":"project","scope_id":"acme","kind":"deny","pattern":"claude-opus-*"}`, 200, "unchanged")
	if r2["id"] != r1["id"] {
		t.Errorf("deny twice: %v then %v", r1, r2)
	}
	if rs := e.w.Current().Rules; len(rs) != 1 {
		t.Errorf("%d rules, want 1", len(rs))
	}
}

// TestAdminBudgetTimeZone: a budget's zone is set by tz or inside window
// ("month@Europe/Berlin"), is answered inside window and survives a
// read, a replace and a repeated POST; an unknown zone, a zone on a
// rolling window and two different zones are 400s naming the field and
// the value.
func TestAdminBudgetTimeZone(t *testing.T) {
	e := newPolicyAdminEnv(t)
	budget := func(code int, body string) map[string]any {
		t.Helper()
		b, _ := policyAnswer(t, body)["budget"].(map[string]any)
		if b == nil {
			t.Fatalf("%d %s: no budget", code, body)
		}
		return b
	}
	code, body := e.call("POST", "/budgets", `{"scope_type":"project","scope_id":"acme","metric":"cost","limit_usd":"50","window":"month","tz":"Europe/Berlin"}`)
	created := budget(code, body)
	if code != 201 || created["window"] != "month@Europe/Berlin" {
		t.Fatalf("POST with tz: %d %s", code, body)
	}
	id, _ := created["id"].(string)
	if b := e.w.Current().Budgets; len(b) != 1 || b[0].Window.Zone != "Europe/Berlin" {
		t.Errorf("snapshot: %+v", b)
	}
	if code, body := e.call("GET", "/budgets/"+id, ""); code != 200 || budget(code, body)["window"] != "month@Europe/Berlin" {
		t.Errorf("GET: %d %s", code, body)
	}
	code, body = e.call("POST", "/budgets", `{"scope_type":"project","scope_id":"acme","metric":"cost","limit_usd":"50","window":"month@Europe/Berlin"}`)
	if b := budget(code, body); code != 200 || b["id"] != id {
		t.Errorf("the same budget, zone in window: %d %s, want 200 for %s", code, body, id)
	}
	code, body = e.call("PUT", "/budgets/"+id, `{"scope_type":"project","scope_id":"acme","metric":"cost","limit_usd":"50","window":"day","tz":"America/New_York"}`)
	if b := budget(code, body); code != 200 || b["window"] != "day@America/New_York" {
		t.Errorf("PUT with another zone: %d %s", code, body)
	}
	if got, err := e.st.Budget(context.Background(), id); err != nil || got.Window.String() != "day@America/New_York" {
		t.Errorf("stored: %v %v", got.Window, err)
	}
	v, _ := e.st.Version(context.Background())
	for _, tc := range []struct{ body, want string }{
		{`{"scope_type":"platform","metric":"cost","limit":1,"window":"month","tz":"Mars/Olympus_Mons"}`, `tz: unknown time zone "Mars/Olympus_Mons"`},
		{`{"scope_type":"platform","metric":"cost","limit":1,"window":"month@Mars/Olympus_Mons"}`, `window "month@Mars/Olympus_Mons": unknown time zone "Mars/Olympus_Mons"`},
		{`{"scope_type":"platform","metric":"cost","limit":1,"window":"rolling:5h","tz":"Europe/Berlin"}`, `tz: time zone "Europe/Berlin" applies to day, week and month windows only: a rolling window`},
		{`{"scope_type":"platform","metric":"cost","limit":1,"window":"lifetime","tz":"Europe/Berlin"}`, `a lifetime window never resets`},
		{`{"scope_type":"platform","metric":"cost","limit":1,"window":"month@Asia/Tokyo","tz":"Europe/Berlin"}`, `tz: time zone "Europe/Berlin" differs from the window's own, Asia/Tokyo`},
		{`{"scope_type":"platform","metric":"cost","limit":1,"tz":"Europe/Berlin"}`, `window is required`},
	} {
		code, _, msg := e.adminRaw("POST", "/admin/v1/budgets", tc.body)
		if code != 400 || !strings.Contains(msg, tc.want) {
			t.Errorf("POST %s: %d %q, want 400 saying %q", tc.body, code, msg, tc.want)
		}
	}
	if after, _ := e.st.Version(context.Background()); after != v {
		t.Errorf("refused requests wrote: version %d, was %d", after, v)
	}
}
