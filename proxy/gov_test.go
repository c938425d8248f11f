package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
	"github.com/tollgate/tollgate/registry"
)

// concretePath fills a registry path pattern's placeholders.
func concretePath(d *registry.Dialect, p registry.Path) string {
	s := strings.ReplaceAll(p.Pattern, "{model}", "gemini-2.5-flash")
	s = strings.ReplaceAll(s, "{id}", "resp_1")
	return "/" + d.Route + s
}

// TestGovEveryMeteredPathIsGoverned (N9): every metered path of every
// dialect in the registry passes the governor: under a platform deny-all
// rule each is refused with no upstream call and a rejected record naming
// model_policy. Iterating the registry makes a new metered path fail here
// until it is governed. Non-metered paths (count_tokens, model lists) are
// not governed and still reach the provider.
func TestGovEveryMeteredPathIsGoverned(t *testing.T) {
	g := newGovRig(t, envOptions{})
	g.pol.set(governance.Policies{Rules: []governance.ModelRule{
		{ID: "deny-all", ScopeType: governance.ScopePlatform, Kind: governance.RuleDeny, Pattern: "*"},
	}})
	tok := g.token("ws-1", "proj-1", "user-1", "")
	metered, unmetered := 0, 0
	for _, d := range g.reg.Current().Dialects() {
		for _, p := range d.Paths {
			for _, method := range p.Methods {
				path := concretePath(d, p)
				body := ""
				if method == http.MethodPost {
					body = `{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}],"input":"hi","contents":[{"role":"user","parts":[{"text":"hi"}]}]}`
				}
				t.Run(d.Name+" "+method+" "+p.Pattern, func(t *testing.T) {
					before := g.fake.Counters().Requests
					resp := g.do(method, path, tok, body, "anthropic-version", "2023-06-01")
					got := readAll(t, resp.Body)
					resp.Body.Close()
					calls := g.fake.Counters().Requests - before
					if !p.Metered {
						unmetered++
						// Stored-object paths may be answered by the owner
						// check (an unknown id); none by governance.
						if rec := g.record(resp); rec.Governance != "" || (calls != 1 && resp.StatusCode != http.StatusNotFound) {
							t.Fatalf("non-metered %s %s was governed (%q): %d upstream calls, status %d %s", method, path, rec.Governance, calls, resp.StatusCode, got)
						}
						return
					}
					metered++
					if calls != 0 || resp.StatusCode < 400 || resp.StatusCode > 499 {
						t.Fatalf("metered %s %s under deny-all: status %d, %d upstream calls: %s", method, path, resp.StatusCode, calls, got)
					}
					rec := g.record(resp)
					if rec.Outcome != metering.OutcomeRejected || rec.Governance != string(governance.RefuseModel) {
						t.Fatalf("record outcome %q governance %q, want rejected/model_policy", rec.Outcome, rec.Governance)
					}
				})
			}
		}
	}
	if metered < 6 || unmetered < 5 {
		t.Fatalf("only %d metered and %d non-metered paths in the registry", metered, unmetered)
	}
}

// TestGovAliasRewritesOnlyTheModel (N22): an alias is sent as its target
// on all four dialects, whole and streamed, and the body the provider
// receives is the client's byte for byte except the model (Gemini: the
// body unchanged, the path's model segment replaced).
func TestGovAliasRewritesOnlyTheModel(t *testing.T) {
	g := newGovRig(t, envOptions{})
	targets := map[string]string{"claude-sonnet-4-5": "fast-claude", "gpt-4o": "fast-chat", "gpt-5": "fast-resp", "gemini-2.5-flash": "fast-gemini"}
	var rules []governance.ModelRule
	for target, alias := range targets {
		rules = append(rules, governance.ModelRule{ID: alias, ScopeType: governance.ScopeProject, ScopeID: "proj-1",
			Kind: governance.RuleAlias, Pattern: alias, Target: target})
	}
	g.pol.set(governance.Policies{Rules: rules})
	tok := g.token("ws-1", "proj-1", "user-1", "")
	for _, tc := range dialectCases() {
		t.Run(tc.name, func(t *testing.T) {
			path, body := tc.path, tc.body
			var target string
			for tg, alias := range targets {
				if strings.Contains(path, tg) {
					path, target = strings.Replace(path, tg, alias, 1), tg
				}
				if strings.Contains(body, `"`+tg+`"`) {
					body, target = strings.Replace(body, `"`+tg+`"`, `"`+alias+`"`, 1), tg
				}
			}
			resp := g.do("POST", path, tok, body, tc.hdr...)
			got := readAll(t, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, got)
			}
			up := g.lastFake()
			if up.Model != target {
				t.Fatalf("provider served %q, want the alias target %q", up.Model, target)
			}
			want := []byte(body)
			if tc.dialect != upstreamtest.Gemini {
				want = []byte(strings.Replace(body, `"`+targets[target]+`"`, `"`+target+`"`, 1))
			} else if !strings.Contains(up.Path, "/models/"+target+":") {
				t.Fatalf("gemini path %q does not name %s", up.Path, target)
			}
			if !bytes.Equal(up.Body, want) {
				t.Fatalf("upstream body differs beyond the model:\nclient %s\nsent   %s", body, up.Body)
			}
			rec := g.record(resp)
			if rec.ModelSent != target || rec.ModelRequest != targets[target] {
				t.Fatalf("record model request %q sent %q", rec.ModelRequest, rec.ModelSent)
			}
		})
	}
}

// TestGovReservationsNeverLeak (N4): a client that leaves mid-stream, a
// 5xx before any header, a cut stream and a 401 from the provider each
// leave the budget with nothing reserved once the record is stored: the
// reservation settled in the record's transaction.
func TestGovReservationsNeverLeak(t *testing.T) {
	g := newGovRig(t, envOptions{})
	b := tokenBudget("proj-day", projectSel("proj-1"), 1<<40, governance.ModeHard)
	g.pol.set(governance.Policies{Budgets: []governance.Budget{b}})
	tok := g.token("ws-1", "proj-1", "user-1", "")
	stream := `{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}`
	whole := `{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`
	cases := []struct {
		name, body, fault string
		leave             bool
	}{
		{"client gone", stream, "silence", true},
		{"5xx before headers", whole, "status=503", false},
		{"cut stream", stream, "cut=2", false},
		{"provider 401", whole, "status=401", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var id string
			if tc.leave {
				id = g.leaveMidStream(tok, tc.body, tc.fault, 200*time.Millisecond)
			} else {
				resp := g.do("POST", "/anthropic/v1/messages", tok, tc.body, "anthropic-version", "2023-06-01", upstreamtest.HeaderFault, tc.fault)
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				id = resp.Header.Get(RequestIDHeader)
			}
			rec := g.waitRecord(id)
			if !rec.Reserved {
				t.Fatalf("record of %s carries no reservation (outcome %s)", tc.name, rec.Outcome)
			}
			g.settled()
			if state, _ := g.reservation(id); state != "settled" {
				t.Fatalf("reservation state %q after the record was stored, want settled (outcome %s)", state, rec.Outcome)
			}
			if _, reserved := g.headroom(b); reserved != 0 {
				t.Fatalf("budget still has %d reserved", reserved)
			}
		})
	}
}

// leaveMidStream opens a stream, reads its headers and first bytes, waits
// d, and goes away; it returns the request id.
func (g *govRig) leaveMidStream(tok, body, fault string, d time.Duration) string {
	g.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", g.URL+"/anthropic/v1/messages", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("anthropic-version", "2023-06-01")
	if fault != "" {
		req.Header.Set(upstreamtest.HeaderFault, fault)
	}
	req.Header.Set(upstreamtest.HeaderGap, "100ms")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		g.t.Fatal(err)
	}
	buf := make([]byte, 64)
	_, _ = resp.Body.Read(buf)
	time.Sleep(d)
	cancel()
	resp.Body.Close()
	return resp.Header.Get(RequestIDHeader)
}

// waitRecord waits for the record of request id.
func (g *govRig) waitRecord(id string) metering.Record {
	g.t.Helper()
	var rec metering.Record
	deadline := time.Now().Add(5 * time.Second)
	for {
		var ok bool
		if rec, ok = g.sink.ByID(id); ok {
			return rec
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("no record of %s", id)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestGovAbortIsChargedPartialUsage (N19): a client that aborts a stream
// after about a second is charged the usage metered until then, never 0.
func TestGovAbortIsChargedPartialUsage(t *testing.T) {
	g := newGovRig(t, envOptions{})
	b := tokenBudget("proj-day", projectSel("proj-1"), 1<<40, governance.ModeSoft)
	g.pol.set(governance.Policies{Budgets: []governance.Budget{b}})
	tok := g.token("ws-1", "proj-1", "user-1", "")
	id := g.leaveMidStream(tok, `{"model":"claude-sonnet-4-5","max_tokens":4096,"stream":true,"messages":[{"role":"user","content":"hi"}]}`, "trickle", time.Second)
	rec := g.waitRecord(id)
	if rec.Outcome != metering.OutcomeClientGone || rec.Usage == nil {
		t.Fatalf("aborted stream: outcome %s usage %+v", rec.Outcome, rec.Usage)
	}
	g.settled()
	state, items := g.reservation(id)
	want := rec.Usage.InputTotal() + rec.Usage.Output
	if state != "settled" || items[b.ID] != want || want <= 0 {
		t.Fatalf("abort settled %q at %v, want %d tokens (the metered partial usage)", state, items, want)
	}
	if spent, _ := g.headroom(b); spent != want {
		t.Fatalf("budget spent %d, want %d", spent, want)
	}
}

// TestGovEveryTokenMeetsEveryBudget (N11): platform-tier credentials and
// every token shape (with or without a harness, any workspace of the
// project) are reserved against every budget that matches: a platform
// pool and a narrower project budget both apply to each request.
func TestGovEveryTokenMeetsEveryBudget(t *testing.T) {
	g := newGovRig(t, envOptions{})
	pool := tokenBudget("pool", governance.Selector{ScopeType: governance.ScopePlatform}, 1<<40, governance.ModeSoft)
	proj := tokenBudget("proj", projectSel("proj-1"), 1<<40, governance.ModeHard)
	ws := tokenBudget("ws", governance.Selector{ScopeType: governance.ScopeWorkspace, ScopeID: "ws-2"}, 1<<40, governance.ModeSoft)
	g.pol.set(governance.Policies{Budgets: []governance.Budget{pool, proj, ws}})
	body := `{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`
	for _, tc := range []struct {
		name, ws, harness string
		want              []string
	}{
		{"no harness", "ws-1", "", []string{"pool", "proj"}},
		{"claude-code token", "ws-1", "claude-code", []string{"pool", "proj"}},
		{"another workspace", "ws-2", "", []string{"pool", "proj", "ws"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := g.token(tc.ws, "proj-1", "user-1", tc.harness)
			resp := g.do("POST", "/anthropic/v1/messages", tok, body, "anthropic-version", "2023-06-01")
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			rec := g.record(resp)
			if resp.StatusCode != 200 || rec.CredTier != "platform" {
				t.Fatalf("status %d tier %q", resp.StatusCode, rec.CredTier)
			}
			g.settled()
			_, items := g.reservation(rec.RequestID)
			if len(items) != len(tc.want) {
				t.Fatalf("reserved against %v, want %v", items, tc.want)
			}
			for _, id := range tc.want {
				if _, ok := items[id]; !ok {
					t.Fatalf("reserved against %v, want %v", items, tc.want)
				}
			}
		})
	}
}

// TestGovLedgerDownFailsClosed (N18): with the budget ledger unreachable a
// capped scope is refused retryably with no upstream call, and a scope no
// budget applies to passes.
func TestGovLedgerDownFailsClosed(t *testing.T) {
	g := newGovRig(t, envOptions{})
	b := tokenBudget("proj-day", projectSel("proj-1"), 1<<40, governance.ModeSoft)
	g.pol.set(governance.Policies{Budgets: []governance.Budget{b}})
	capped := g.token("ws-1", "proj-1", "user-1", "claude-code")
	free := g.token("ws-9", "proj-9", "user-9", "claude-code")
	// The ledger's database goes away (the writer's store with it: this
	// test looks at admission only).
	g.db.Close()
	body := `{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`
	before := g.fake.Counters().Requests
	resp := g.do("POST", "/anthropic/v1/messages", capped, body, "anthropic-version", "2023-06-01")
	got := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || g.fake.Counters().Requests != before {
		t.Fatalf("capped scope with the ledger down: status %d retry-after %q, %d upstream calls: %s",
			resp.StatusCode, resp.Header.Get("Retry-After"), g.fake.Counters().Requests-before, got)
	}
	if rec := g.record(resp); rec.Governance != string(governance.RefuseUnavailable) || rec.Outcome != metering.OutcomeRejected {
		t.Fatalf("record governance %q outcome %q", rec.Governance, rec.Outcome)
	}
	resp = g.do("POST", "/anthropic/v1/messages", free, body, "anthropic-version", "2023-06-01")
	got = readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("uncapped scope with the ledger down: status %d %s", resp.StatusCode, got)
	}
}

// TestGovHardBudgetRefusesOnEveryDialect: once a hard budget is spent,
// each dialect's request is refused before any upstream call, with the
// budget shape its harness reads as "stop".
func TestGovHardBudgetRefusesOnEveryDialect(t *testing.T) {
	g := newGovRig(t, envOptions{})
	b := tokenBudget("proj-day", projectSel("proj-1"), 1, governance.ModeHard)
	// A first request under a roomy limit spends more than 1 token.
	roomy := b
	roomy.Limit = 1 << 40
	g.pol.set(governance.Policies{Budgets: []governance.Budget{roomy}})
	tok := g.token("ws-1", "proj-1", "user-1", "")
	resp := g.do("POST", "/openai/v1/chat/completions", tok, `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	g.record(resp)
	g.settled()
	g.pol.set(governance.Policies{Budgets: []governance.Budget{b}})
	reg := g.reg.Current()
	for _, tc := range []struct{ harness, path, body string }{
		{"claude-code", "/anthropic/v1/messages", `{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`},
		{"opencode", "/openai/v1/chat/completions", `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`},
		{"codex", "/openai/v1/responses", `{"model":"gpt-5","input":"hi","stream":true}`},
		{"gemini-cli", "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", `{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}`},
	} {
		t.Run(tc.harness, func(t *testing.T) {
			h, err := reg.Harness(tc.harness)
			if err != nil {
				t.Fatal(err)
			}
			tok := g.token("ws-1", "proj-1", "user-1", tc.harness)
			before := g.fake.Counters().Requests
			resp := g.do("POST", tc.path, tok, tc.body, "anthropic-version", "2023-06-01")
			got := readAll(t, resp.Body)
			resp.Body.Close()
			m, _ := reg.Route("POST", strings.SplitN(tc.path, "?", 2)[0])
			want := registry.RefusalFor(m.Dialect, h, registry.RefusalBudget)
			if resp.StatusCode != want.Status || g.fake.Counters().Requests != before || !strings.Contains(string(got), "budget exhausted") {
				t.Fatalf("status %d (want %d), %d upstream calls: %s", resp.StatusCode, want.Status, g.fake.Counters().Requests-before, got)
			}
			if rec := g.record(resp); rec.Governance != string(governance.RefuseBudget) || rec.Reserved {
				t.Fatalf("record governance %q reserved %v", rec.Governance, rec.Reserved)
			}
		})
	}
}

// TestGovReadyzShowsWhereRateLimitsAreCounted: /readyz names the rate
// limits' state, local by configuration or local-fallback while Redis is
// unreachable, without failing readiness (the fallback still enforces).
func TestGovReadyzShowsWhereRateLimitsAreCounted(t *testing.T) {
	down, err := governance.NewRedisLimiter(governance.RedisConfig{URL: "redis://127.0.0.1:1/0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { down.Close() })
	cases := []struct {
		limiter governance.Limiter
		want    string
	}{
		{governance.NewLocalLimiter(governance.LocalConfig{}), `"rate_limits":"local"`},
		{down, `"rate_limits":"local-fallback"`},
	}
	if u := os.Getenv("TOLLGATE_TEST_REDIS"); u != "" {
		up, err := governance.NewRedisLimiter(governance.RedisConfig{URL: u, Prefix: "tg-readyz-test:"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { up.Close() })
		cases = append(cases, struct {
			limiter governance.Limiter
			want    string
		}{up, `"rate_limits":"shared"`})
	}
	for _, tc := range cases {
		e := newEnv(t, envOptions{governor: governance.New(governance.Config{Limiter: tc.limiter})})
		code, body, _ := get(t, e.URL+"/readyz", "")
		if code != 200 || !strings.Contains(body, tc.want) {
			t.Fatalf("/readyz: %d %s, want 200 with %s", code, body, tc.want)
		}
	}
}

// TestGovRateLimitRefusesBeforeTheProvider: over a project's RPM the next
// request is refused with the rate-limit shape (429, Retry-After) and no
// upstream call; a request of another project passes.
func TestGovRateLimitRefusesBeforeTheProvider(t *testing.T) {
	g := newGovRig(t, envOptions{})
	g.pol.set(governance.Policies{Limits: []governance.Limit{
		{ID: "rpm", Selector: projectSel("proj-1"), RPM: 1},
	}})
	tok := g.token("ws-1", "proj-1", "user-1", "")
	body := `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`
	send := func(tok string) (*http.Response, []byte) {
		resp := g.do("POST", "/openai/v1/chat/completions", tok, body)
		b := readAll(t, resp.Body)
		resp.Body.Close()
		return resp, b
	}
	if resp, b := send(tok); resp.StatusCode != 200 {
		t.Fatalf("first request: %d %s", resp.StatusCode, b)
	}
	before := g.fake.Counters().Requests
	resp, b := send(tok)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || g.fake.Counters().Requests != before {
		t.Fatalf("over RPM: %d retry-after %q, %d upstream calls: %s", resp.StatusCode, resp.Header.Get("Retry-After"), g.fake.Counters().Requests-before, b)
	}
	if rec := g.record(resp); rec.Governance != string(governance.RefuseRateLimit) {
		t.Fatalf("record governance %q", rec.Governance)
	}
	if resp, b := send(g.token("ws-2", "proj-2", "user-2", "")); resp.StatusCode != 200 {
		t.Fatalf("another project: %d %s", resp.StatusCode, b)
	}
}

// TestGovRefusedAfterAdmitIsReleased: the one refusal after admission, a
// body with two "model" keys (the policy judged one, the provider might
// serve the other), answers 400 with no upstream call and releases the
// reservation at once.
func TestGovRefusedAfterAdmitIsReleased(t *testing.T) {
	g := newGovRig(t, envOptions{})
	b := tokenBudget("proj-day", projectSel("proj-1"), 1<<40, governance.ModeHard)
	g.pol.set(governance.Policies{Budgets: []governance.Budget{b}})
	tok := g.token("ws-1", "proj-1", "user-1", "")
	before := g.fake.Counters().Requests
	resp := g.do("POST", "/openai/v1/chat/completions", tok, `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"model":"gpt-5"}`)
	got := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || g.fake.Counters().Requests != before || !strings.Contains(string(got), "more than one") {
		t.Fatalf("duplicate model keys: %d, %d upstream calls: %s", resp.StatusCode, g.fake.Counters().Requests-before, got)
	}
	rec := g.record(resp)
	if state, _ := g.reservation(rec.RequestID); state != "released" {
		t.Fatalf("reservation %q, want released", state)
	}
	if _, reserved := g.headroom(b); reserved != 0 {
		t.Fatalf("%d still reserved", reserved)
	}
	// No policy applies to another project: its body is forwarded as it
	// always was.
	resp = g.do("POST", "/openai/v1/chat/completions", g.token("ws-2", "proj-2", "user-2", ""), `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"model":"gpt-5"}`)
	got = readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("duplicate model keys with no policy: %d %s", resp.StatusCode, got)
	}
}

// TestReadTopMatchesGet: the handler's one pass over a body's top level
// reads the model and stream gjson.Get reads, and counts the "model" keys
// governance.BodyModel refuses more than one of.
func TestReadTopMatchesGet(t *testing.T) {
	for _, body := range []string{
		`{"model":"gpt-5","messages":[],"stream":true}`,
		`{"messages":[{"model":"x","stream":false}],"stream":false,"model":"claude-opus-5-5"}`,
		`{"model":"a","stream":true,"model":"b","stream":false}`,
		`{"\u006dodel":"esc","str\u0065am":true}`,
		`{"model":5,"stream":"true"}`, `{"model":null}`, `{}`, `[{"model":"a"}]`, `"model"`, ``,
	} {
		top := readTop([]byte(body))
		if want := gjson.Get(body, "model"); top.model.Raw != want.Raw || top.model.Type != want.Type {
			t.Errorf("%s: model %q, gjson.Get %q", body, top.model.Raw, want.Raw)
		}
		if want := gjson.Get(body, "stream"); top.stream.Raw != want.Raw || top.stream.Type != want.Type {
			t.Errorf("%s: stream %q, gjson.Get %q", body, top.stream.Raw, want.Raw)
		}
		_, err := governance.BodyModel([]byte(body))
		if dup := errors.Is(err, governance.ErrDuplicateModel); dup != (top.models > 1) {
			t.Errorf("%s: %d model keys, BodyModel %v", body, top.models, err)
		}
	}
}

// TestGovStoredPolicyIsEnforced: a budget written to the policy store is
// enforced once the watcher has it (the admin API refreshes it before it
// answers), through the same Governor serve builds.
func TestGovStoredPolicyIsEnforced(t *testing.T) {
	g := newGovRig(t, envOptions{})
	ctx := context.Background()
	st, err := governance.OpenStore(ctx, g.db)
	if err != nil {
		t.Fatal(err)
	}
	w := governance.NewWatcher(st, governance.WatchConfig{Poll: time.Hour, PollOnly: true})
	wctx, stop := context.WithCancel(ctx)
	t.Cleanup(stop)
	if err := w.Start(wctx); err != nil {
		t.Fatal(err)
	}
	srvGov := governance.New(governance.Config{Policies: w, Ledger: g.ledger})
	e := newEnv(t, envOptions{governor: srvGov})
	if _, err := st.PutRule(ctx, governance.ModelRule{ScopeType: governance.ScopeProject, ScopeID: "proj-1", Kind: governance.RuleDeny, Pattern: "gpt-*"}); err != nil {
		t.Fatal(err)
	}
	tok := e.token("ws-1", "proj-1", "user-1", "")
	body := `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`
	if err := w.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	resp := e.do("POST", "/openai/v1/chat/completions", tok, body)
	got := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode < 400 || resp.StatusCode > 499 || e.fake.Counters().Requests != 0 {
		t.Fatalf("stored deny rule not enforced: %d %s", resp.StatusCode, got)
	}
}

// TestGovCostBudgetHoldsTheCeilingInFlight: while a stream runs, a cost
// budget holds the request's ceiling (the record's reserved_micro_usd, far
// above what the request costs); once the record is stored, the budget
// holds nothing and has spent exactly the record's cost.
func TestGovCostBudgetHoldsTheCeilingInFlight(t *testing.T) {
	g := newGovRig(t, envOptions{pricer: metering.DefaultPrices()})
	b := governance.Budget{ID: "proj-cost", Selector: projectSel("proj-1"), Metric: governance.MetricCost, Limit: 1 << 40,
		Window: governance.Window{Kind: governance.WindowDay}, Mode: governance.ModeSoft}
	g.pol.set(governance.Policies{Budgets: []governance.Budget{b}})
	tok := g.token("ws-1", "proj-1", "user-1", "")
	req, _ := http.NewRequest("POST", g.URL+"/anthropic/v1/messages",
		strings.NewReader(`{"model":"claude-sonnet-4-5","max_tokens":4096,"stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("anthropic-version", "2023-06-01")
	req.Header.Set(upstreamtest.HeaderGap, "50ms")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	buf := make([]byte, 64)
	_, _ = resp.Body.Read(buf)
	_, reserved := g.headroom(b)
	// 4096 output tokens at Sonnet 4.5's $15 alone are 61,440 micro-USD.
	if reserved < 61_440 {
		t.Fatalf("a stream in flight holds %d micro-USD, want at least its output ceiling 61440", reserved)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	rec := g.waitRecord(resp.Header.Get(RequestIDHeader))
	if rec.ReservedMicroUSD != reserved || rec.CostMicroUSD == nil || *rec.CostMicroUSD >= reserved {
		t.Fatalf("record reserved %d (budget held %d), cost %v", rec.ReservedMicroUSD, reserved, rec.CostMicroUSD)
	}
	g.settled()
	spent, left := g.headroom(b)
	if left != 0 || spent != *rec.CostMicroUSD {
		t.Fatalf("after settlement: spent %d reserved %d, want spent %d reserved 0", spent, left, *rec.CostMicroUSD)
	}
}
