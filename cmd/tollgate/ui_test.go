//go:build ui

// `make test-ui`: the console driven by a real browser. This test starts
// the fake provider and a real `tollgate serve` (SQLite, loopback), seeds
// credentials, bindings, tokens and usage through the admin API and the
// proxy, then runs ui-tests/console.mjs (playwright-core driving Debian's
// chromium), which reports one line per step; each step is a subtest here.

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/ledger"
)

const (
	uiAdminToken  = "adm" // newCLI's TOLLGATE_ADMIN_TOKEN
	uiPlatformKey = "sk-ant-api03-UIplatform0123456789abcdefghij"
	uiProjectKey  = "sk-ant-api03-UIprojectACME0123456789abcdefgh"
	uiOpenAIKey   = "sk-proj-UIplatformOPENAI0123456789abcdefgh"
	uiUserKey     = "AIzaUIuserALICE0123456789abcdefghijklmn"
	// uiBrowserTimeout bounds the whole browser run: the suite must stay
	// well inside CI's budget.
	uiBrowserTimeout = 100 * time.Second
	// uiHistoryDays of usage before today are written to the store
	// directly, so the usage page's week has a bar on every day.
	uiHistoryDays = 6
)

// uiSteps are the steps console.mjs must report, in order: one missing
// (the script stopped early, or a step was dropped) fails the test.
var uiSteps = []string{"signin", "connections", "usage-totals", "token-issue-use-revoke", "binding-halted", "csrf-refused",
	"rate-limit", "model-rule", "audit-log", "screenshots", "signout", "keyboard"}

// The rate-limit and model-rule steps' own workspace and project: the
// limit and the rule they set on the page reach no other step's requests.
const (
	uiLimitWorkspace = "ws-ui-limit"
	uiRuleProject    = "ui-rules"
)

// uiStep is one line the browser script reports.
type uiStep struct {
	Step   string `json:"step"`
	Status string `json:"status"` // pass, fail or skip
	Detail string `json:"detail"`
}

func TestConsoleUI(t *testing.T) {
	modules := os.Getenv("TOLLGATE_UI_MODULES")
	if modules == "" {
		t.Skip("TOLLGATE_UI_MODULES is not set: run make test-ui, which installs playwright-core and chromium")
	}
	chromium := os.Getenv("TOLLGATE_UI_CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	shots := os.Getenv("TOLLGATE_UI_SHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	started := time.Now()

	fakeCmd := exec.Command(testBinary(t, "TOLLGATE_FAKEPROVIDER_BIN", "../fakeprovider"))
	fakeCmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	fake, err := startListening(t, fakeCmd, false)
	if err == nil {
		err = fake.ready()
	}
	if err != nil {
		t.Fatalf("fakeprovider: %v", err)
	}

	env := os.Environ()
	cliEnv := newCLI(t, fake.base).env
	for k, v := range cliEnv {
		env = append(env, k+"="+v)
	}
	history := seedHistory(t, cliEnv["TOLLGATE_DB"])
	cmd := exec.Command(testBinary(t, "TOLLGATE_UI_BIN", "."), "serve")
	cmd.Env = append(env, "TOLLGATE_LOG_LEVEL=warn")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	srv := mustStartServe(t, cmd)
	t.Cleanup(srv.stop)

	seed := seedConsole(t, srv)
	t.Logf("servers up and seeded in %v", time.Since(started).Round(time.Millisecond))

	ctx, cancel := context.WithTimeout(context.Background(), uiBrowserTimeout)
	defer cancel()
	node := exec.CommandContext(ctx, "node", "../../ui-tests/console.mjs")
	node.Env = append(os.Environ(),
		"UI_MODULES="+modules,
		"UI_CHROMIUM="+chromium,
		"UI_SHOTS="+shots,
		"UI_ADMIN="+srv.adminBase,
		"UI_PROXY="+srv.base,
		"UI_ADMIN_TOKEN="+uiAdminToken,
		"UI_PROJECT=acme",
		"UI_USER=alice",
		"UI_PROJECT_TOKEN="+seed.acmeToken,
		"UI_LIMIT_WORKSPACE="+uiLimitWorkspace,
		"UI_LIMIT_TOKEN="+seed.limitToken,
		"UI_RULE_PROJECT="+uiRuleProject,
		"UI_RULE_TOKEN="+seed.ruleToken,
		fmt.Sprintf("UI_PROJECT_REQUESTS=%d", seed.acmeRequests+history["acme"]),
		fmt.Sprintf("UI_DAYS=%d", uiHistoryDays+1),
	)
	node.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// A timeout ends the script's whole process group: chromium included.
	node.Cancel = func() error { return syscall.Kill(-node.Process.Pid, syscall.SIGKILL) }
	var stderr bytes.Buffer
	node.Stderr = &stderr
	out, err := node.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	browserStart := time.Now()
	if err := node.Start(); err != nil {
		t.Fatalf("node: %v", err)
	}
	var steps []uiStep
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		var s uiStep
		if !strings.HasPrefix(line, "{") || json.Unmarshal([]byte(line), &s) != nil || s.Step == "" {
			t.Logf("console.mjs: %s", line)
			continue
		}
		steps = append(steps, s)
	}
	werr := node.Wait()
	for _, s := range steps {
		t.Run(s.Step, func(t *testing.T) {
			switch s.Status {
			case "pass":
				if s.Detail != "" {
					t.Log(s.Detail)
				}
			case "skip":
				t.Skip(s.Detail)
			default:
				t.Error(s.Detail)
			}
		})
	}
	var got []string
	for _, s := range steps {
		got = append(got, s.Step)
	}
	if !slices.Equal(got, uiSteps) {
		t.Errorf("console.mjs reported steps %q, want %q", got, uiSteps)
	}
	if werr != nil || len(steps) == 0 {
		t.Fatalf("console.mjs: %v (after %v)\n%s\nserver log:\n%s", werr, time.Since(browserStart).Round(time.Millisecond),
			logTail(stderr.String(), 30), logTail(srv.logs.String(), 20))
	}
	srv.alive("the browser run")
	t.Logf("browser run %v, whole suite %v; screenshots in %s", time.Since(browserStart).Round(time.Millisecond),
		time.Since(started).Round(time.Millisecond), shots)
}

// uiSeed is what the browser script is handed.
type uiSeed struct {
	acmeToken    string
	acmeRequests int
	// limitToken (workspace uiLimitWorkspace) and ruleToken (project
	// uiRuleProject) are paid for by the platform key.
	limitToken, ruleToken string
}

// seedConsole gives every page something to show: a platform Anthropic
// and an OpenAI key, a project override for project acme (the binding the
// script deactivates), alice's own Gemini key, two budgets and a rate
// limit, two tokens, and today's usage on two models, projects and users;
// and the tokens the rate-limit and model-rule steps send with.
func seedConsole(t *testing.T, srv *serveProc) uiSeed {
	t.Helper()
	uiAdmin(t, srv, "PUT", "/platform-keys/anthropic", map[string]string{"key": uiPlatformKey}, nil)
	uiAdmin(t, srv, "PUT", "/platform-keys/openai", map[string]string{"key": uiOpenAIKey}, nil)
	var own struct {
		ID string `json:"id"`
	}
	uiAdmin(t, srv, "POST", "/credentials", map[string]string{"name": "alice-gemini", "provider": "gemini", "key": uiUserKey}, &own)
	uiAdmin(t, srv, "POST", "/bindings", map[string]string{"tier": "user", "scope_id": "alice", "dialect": "gemini", "credential_id": own.ID}, nil)
	var cred struct {
		ID string `json:"id"`
	}
	uiAdmin(t, srv, "POST", "/credentials", map[string]string{"name": "acme-anthropic", "provider": "anthropic", "key": uiProjectKey}, &cred)
	uiAdmin(t, srv, "POST", "/bindings", map[string]string{"tier": "project", "scope_id": "acme", "dialect": "anthropic-messages", "credential_id": cred.ID}, nil)

	// Policies for the Budgets page, loose enough never to refuse a request
	// of the suite: what it shows is their spend.
	uiAdmin(t, srv, "POST", "/budgets", map[string]any{"scope_type": "project", "scope_id": "acme", "metric": "cost", "limit_usd": "5", "window": "month", "mode": "soft"}, nil)
	uiAdmin(t, srv, "POST", "/budgets", map[string]any{"scope_type": "workspace", "scope_id": "ws-bob-ci", "metric": "tokens", "limit": 2000000, "window": "day", "mode": "hard"}, nil)
	uiAdmin(t, srv, "POST", "/limits", map[string]any{"scope_type": "project", "scope_id": "beta", "rpm": 600, "tpm": 2000000}, nil)

	issue := func(workspace, project, user string) string {
		var tok struct {
			Token string `json:"token"`
		}
		uiAdmin(t, srv, "POST", "/tokens", map[string]string{"workspace": workspace, "project": project, "user": user, "harness": "claude-code"}, &tok)
		return tok.Token
	}
	acme := issue("ws-alice-laptop", "acme", "alice")
	beta := issue("ws-bob-ci", "beta", "bob")
	sent, acmeSent := 0, 0
	for _, r := range []struct {
		tok, model string
		n          int
	}{{acme, "claude-sonnet-4-5", 3}, {acme, "claude-haiku-4-5", 1}, {beta, "claude-haiku-4-5", 2}} {
		for range r.n {
			if status, body := uiInfer(t, srv.base, r.tok, r.model); status != http.StatusOK {
				t.Fatalf("seed request %s: %d %s", r.model, status, body)
			}
			sent++
			if r.tok == acme {
				acmeSent++
			}
		}
	}
	// The usage writer batches: wait until every request is in the store,
	// so the page and the API read the same records.
	deadline := time.Now().Add(15 * time.Second)
	for {
		var rows []struct {
			Requests int `json:"requests"`
		}
		uiAdmin(t, srv, "GET", "/usage?group_by=project", nil, &rows)
		got := 0
		for _, r := range rows {
			got += r.Requests
		}
		if got >= sent {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("usage shows %d of the %d seeded requests after 15 s", got, sent)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return uiSeed{acmeToken: acme, acmeRequests: acmeSent,
		limitToken: issue(uiLimitWorkspace, "ui-limit", "dave"), ruleToken: issue("ws-ui-rules", uiRuleProject, "dave")}
}

// uiAdmin calls the admin API, decoding a 2xx answer into out; anything
// else fails the test.
func uiAdmin(t *testing.T, srv *serveProc, method, path string, in, out any) {
	t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, srv.adminBase+"/admin/v1"+path, body)
	req.Header.Set("Authorization", "Bearer "+uiAdminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("admin %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("admin %s %s: %d %s", method, path, resp.StatusCode, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("admin %s %s: %v: %s", method, path, err, b)
		}
	}
}

// uiInfer sends one Anthropic Messages request through the proxy.
func uiInfer(t *testing.T, base, tok, model string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", base+"/anthropic/v1/messages",
		strings.NewReader(fmt.Sprintf(`{"model":%q,"max_tokens":16,"messages":[{"role":"user","content":"hi"}]}`, model)))
	req.Header.Set("x-api-key", tok)
	req.Header.Set("anthropic-version", "2023-06-01")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("proxy request: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// seedHistory writes uiHistoryDays of usage records before today into the
// store at dsn, as the proxy's writer would have, before the server
// starts: several projects, users, sessions and models, cache reads, and
// an unpriced model, so each chart and table of the usage page has
// something to add up. It returns the requests written per project.
func seedHistory(t *testing.T, dsn string) map[string]int {
	t.Helper()
	ctx := context.Background()
	db, err := store.Open(ctx, dsn)
	if err != nil {
		t.Fatalf("open %s: %v", dsn, err)
	}
	defer db.Close()
	st, err := ledger.OpenStore(ctx, db)
	if err != nil {
		t.Fatalf("metering store: %v", err)
	}
	type who struct {
		project, user, workspace, model string
		// perInput and perOutput are micro-USD per token; 0 is unpriced.
		perInput, perOutput int64
	}
	mix := []who{
		{"acme", "alice", "ws-alice-laptop", "claude-sonnet-4-5", 3, 15},
		{"acme", "carol", "ws-carol-ci", "claude-haiku-4-5", 1, 5},
		{"acme", "carol", "ws-carol-ci", "claude-experimental", 0, 0},
		{"beta", "bob", "ws-bob-ci", "claude-haiku-4-5", 1, 5},
	}
	today := time.Now().UTC().Truncate(24 * time.Hour)
	perProject := map[string]int{}
	var recs []*metering.Record
	for d := 1; d <= uiHistoryDays; d++ {
		for i, w := range mix {
			for k := range (d+i)%3 + 1 {
				in, out := int64(2000+300*d+100*k), int64(200+40*i)
				r := &metering.Record{
					RequestID: fmt.Sprintf("ui-history-%d-%d-%d", d, i, k), Start: today.Add(time.Duration(-d)*24*time.Hour + time.Duration(9+i+k)*time.Hour),
					Duration: 2 * time.Second, TTFB: 300 * time.Millisecond,
					Workspace: w.workspace, Project: w.project, User: w.user, TokenID: "tok_history", Session: fmt.Sprintf("%s-day%d", w.user, d),
					Harness: "claude-code", Dialect: "anthropic-messages", Operation: "chat", Path: "/v1/messages", Provider: "anthropic",
					CredTier: "platform", ModelRequest: w.model, ModelServed: w.model, UpstreamID: fmt.Sprintf("msg_h%d%d%d", d, i, k),
					Status: 200, Outcome: metering.OutcomeOK, Source: metering.SourceUpstream, PriceVersion: "ui", BytesOut: 2000,
					Usage: &metering.Usage{InputUncached: in / 2, CacheRead: in / 2, Output: out},
				}
				if w.perInput == 0 {
					r.Unpriced = true
				} else {
					c := (in/2+in/20)*w.perInput + out*w.perOutput // cache reads at a tenth
					r.CostMicroUSD = &c
				}
				recs = append(recs, r)
				perProject[w.project]++
			}
		}
	}
	if n, err := st.InsertBatch(ctx, recs); err != nil || n != len(recs) {
		t.Fatalf("seed usage history: %d of %d records, %v", n, len(recs), err)
	}
	return perProject
}
