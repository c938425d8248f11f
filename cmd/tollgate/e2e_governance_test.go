//go:build e2e

// TestHarnessGovernance runs each real CLI of TestHarness against the three
// governance refusals (governance.md §6, N21): a budget already exhausted,
// a rate limit already used up, and a model the project forbids. It records
// what each CLI shows, its exit, and how many requests tollgate and the
// fake provider saw within 60 s, and checks what §6 says each CLI must do
// with the shape harnesses.yaml gives it: stop after one request and show
// tollgate's message (budget, model), back off and recover (rate limit),
// never reaching the provider on a refusal. `make e2e-harness` runs it
// (-run TestHarness). The summary table is logged, and written to
// $TOLLGATE_E2E_GOV_REPORT when set.
package main_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
)

const (
	govBudget = "budget"
	govRate   = "rate_limit"
	govModel  = "model"
	// govWindow is the span the requests of a run are counted over.
	govWindow = 60 * time.Second
	// govStopTimeout bounds a run that must stop by itself at once; one
	// that loops is killed here, so its count is a 60 s count too.
	govStopTimeout = govWindow
	// govRateTimeout bounds a rate-limited run: the slot frees about 60 s
	// after the priming request, and OpenCode's two requests need two slots.
	govRateTimeout = 170 * time.Second
	// govMaxStopRequests: a budget or model refusal is not retried in a
	// loop (OpenCode sends its title and main requests, one each; Claude
	// Code's 400 recovery would be 6).
	govMaxStopRequests = 2
	// govMinGap: closer than this, consecutive retries are a hot loop
	// (OpenCode's is a request every 50-70 ms).
	govMinGap = 100 * time.Millisecond
)

// govExpect is what governance.md §6.1 and harness-clients.md say a CLI
// does with tollgate's refusal shapes.
type govExpect struct {
	// deny is a model glob that covers every model the CLI sends
	// (side calls included).
	deny string
	// ownBudgetText: the CLI prints its own fixed text for a budget
	// refusal, not tollgate's (Codex's usage-limit text); a regexp.
	ownBudgetText string
	// rateMax bounds the requests tollgate sees within 60 s of the start
	// of a rate-limited run.
	rateMax int
	// rateRecovers: the CLI honours the wait (Retry-After, retry-after-ms,
	// RetryInfo) and succeeds once the window clears. Codex ignores
	// Retry-After and gives up after its quick retries.
	rateRecovers bool
	// concurrent: the CLI sends two requests at once (OpenCode's title and
	// main request), so two refusals may arrive together.
	concurrent bool
}

var govExpects = map[string]govExpect{
	"claude-code": {deny: "claude-*", rateMax: 3, rateRecovers: true},
	// Codex ignores Retry-After (governance.md §6.1), but 0.169.0 waits
	// out the "Please try again in Ns." of tollgate's message (try_again in
	// harnesses.yaml) on an HTTP 429 too: observed, one request, then the
	// answer 60 s later.
	"codex":      {deny: "gpt-*", ownBudgetText: `(?i)usage limit`, rateMax: 6, rateRecovers: true},
	"opencode":   {deny: "gpt-*", rateMax: 6, rateRecovers: true, concurrent: true},
	"gemini-cli": {deny: "gemini-*", rateMax: 3, rateRecovers: true},
}

// govResult is one row of the summary table.
type govResult struct {
	cli, scenario string
	answer        string // tollgate's refusal: status, type, Retry-After
	exit          string
	elapsed       time.Duration
	requests60    int   // requests tollgate saw within 60 s of the start
	requests      int   // requests tollgate saw in the whole run
	upstream      int64 // requests the fake provider got in the run
	refused       int   // of requests, refused by governance
	minGap        time.Duration
	recovered     bool // the CLI printed the fake's text in the end
	shown         string
}

func TestHarnessGovernance(t *testing.T) {
	prefixes, nodeDir := mustInstallHarnesses(t)
	s := startStack(t)
	admin := s.restartGoverned(t)
	t.Logf("tollgate on %s (TOLLGATE_RATE_MAX_WAIT=0), admin on %s, fake provider on %s", s.url, admin.url, s.fakeURL)

	var results []govResult
	for _, hc := range harnessCases {
		ex, ok := govExpects[hc.name]
		if !ok {
			t.Fatalf("no governance expectations for %s", hc.name)
		}
		t.Run(hc.name, func(t *testing.T) {
			for _, sc := range []string{govBudget, govRate, govModel} {
				t.Run(sc, func(t *testing.T) {
					r := s.runGoverned(t, admin, hc, ex, sc, prefixes, nodeDir)
					results = append(results, r)
				})
			}
		})
	}
	table := govTable(results)
	t.Log("governance refusals, real CLIs:\n" + table)
	if p := os.Getenv("TOLLGATE_E2E_GOV_REPORT"); p != "" {
		if err := os.WriteFile(p, []byte(table), 0o644); err != nil {
			t.Errorf("write TOLLGATE_E2E_GOV_REPORT: %v", err)
		}
	}
	s.checkNoSecretsLogged(t)
}

// mustInstallHarnesses installs the pinned CLIs as TestHarness does (the
// same cache), or only the packages given, and returns their prefixes and
// node's directory.
func mustInstallHarnesses(t *testing.T, only ...npmPackage) (map[string]string, string) {
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Skip("npm is not on PATH: the harness end-to-end test installs the agent CLIs with npm (Node 20+ and npm 10+)")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not on PATH: Codex and Gemini CLI are Node scripts (Node 20+)")
	}
	pkgs := []npmPackage{pkgOpenCodePlugin}
	for _, hc := range harnessCases {
		pkgs = append(pkgs, hc.pkg)
	}
	if len(only) > 0 {
		pkgs = only
	}
	return mustInstallNPM(t, npm, cacheRoot(t), pkgs), filepath.Dir(node)
}

// adminAPI is the restarted server's admin listener.
type adminAPI struct {
	url, token string
}

// restartGoverned restarts tollgate serve on the same database with
// TOLLGATE_RATE_MAX_WAIT=0 (a rate-limited request is refused at once, so
// the CLI's own reaction is what is measured) and an admin token, so that
// policies are written through the admin API, which refreshes the policy
// watcher before it answers: a policy is in force when the write returns.
func (s *stack) restartGoverned(t *testing.T) adminAPI {
	t.Helper()
	a := adminAPI{token: "adm-" + randHex(t, 16)}
	s.serve.stop(t)
	s.env = append(s.env, "TOLLGATE_RATE_MAX_WAIT=0")
	env := append(append([]string(nil), s.env...), "TOLLGATE_ADMIN_TOKEN="+a.token)
	s.serve = mustStartDaemon(t, "tollgate serve (governed)", s.bin, []string{"serve", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"}, env)
	s.url = s.serve.mustListenURL(t)
	re := regexp.MustCompile(`(?m)^admin API and metrics on (\S+)`)
	testkit.Poll(daemonStartTimeout, 50*time.Millisecond, func() bool {
		if m := re.FindStringSubmatch(s.serve.stdout.String()); m != nil {
			a.url = m[1]
			return true
		}
		return false
	})
	if a.url == "" {
		t.Fatalf("tollgate serve printed no admin address\n%s", s.serve.stdout.String())
	}
	return a
}

// put creates a policy (POST /admin/v1/{kind}) and fails unless it is 201.
func (a adminAPI) put(t *testing.T, kind string, body map[string]any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, a.url+"/admin/v1/"+kind, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST /admin/v1/%s: %v", kind, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /admin/v1/%s %s: %d %s", kind, b, resp.StatusCode, out)
	}
	t.Logf("policy: POST /admin/v1/%s %s", kind, b)
}

// runGoverned runs one CLI once under one refusal scenario.
func (s *stack) runGoverned(t *testing.T, admin adminAPI, hc harnessCase, ex govExpect, sc string, prefixes map[string]string, nodeDir string) govResult {
	// Each scenario has its own workspace and project, so policies and
	// records of one never touch another.
	id := "gov-" + sc + "-" + hc.name
	workspace, project := id, id
	run := s.prepareHarness(t, hc, workspace, project, prefixes, nodeDir)
	tok := s.tokens[len(s.tokens)-1]
	res := govResult{cli: hc.name, scenario: sc}

	timeout := govStopTimeout
	var probe probeAnswer
	switch sc {
	case govBudget:
		// Hard mode admits only what fits spent + reserved + ceiling ≤ limit:
		// no request's ceiling fits one micro-dollar.
		admin.put(t, "budgets", map[string]any{"scope_type": "project", "scope_id": project,
			"metric": "cost", "limit_usd": "0.000001", "window": "day", "mode": "hard"})
	case govModel:
		admin.put(t, "model-rules", map[string]any{"scope_type": "project", "scope_id": project,
			"kind": "deny", "pattern": ex.deny})
	case govRate:
		admin.put(t, "limits", map[string]any{"scope_type": "workspace", "scope_id": workspace, "rpm": 1})
		// The minute's one request, spent by the workspace beforehand.
		if p := s.probe(t, run.setup, tok, primeModel(hc, run.setup)); p.status != http.StatusOK {
			t.Fatalf("priming request: %d %s, want 200", p.status, p.body)
		}
		// What tollgate now answers this harness.
		probe = s.probe(t, run.setup, tok, primeModel(hc, run.setup))
		if probe.status != http.StatusTooManyRequests || probe.retryAfter == "" {
			t.Errorf("rate-limited probe: %d retry-after %q, want 429 with Retry-After\n%s", probe.status, probe.retryAfter, probe.body)
		}
		timeout = govRateTimeout
	}

	before := s.fakeCounters(t, s.fakeURL)
	start := time.Now()
	out := runCLI(run.home.work, run.env, timeout, run.bin, hc.args...)
	after := s.fakeCounters(t, s.fakeURL)
	res.elapsed = out.elapsed
	res.exit = exitText(out.err)
	res.upstream = after.Requests - before.Requests
	text := out.stdout + "\n" + out.stderr
	show := "stdout:\n" + tail(out.stdout, 3000) + "\nstderr:\n" + tail(out.stderr, 3000)
	t.Logf("%s %s: %s in %v, %d upstream requests", hc.pkg.Bin, strings.Join(hc.args, " "), res.exit, out.elapsed.Round(100*time.Millisecond), res.upstream)

	recs := s.settledGovRecords(t, workspace, start)
	var lastRefused time.Time
	model := ""
	okRecs := 0
	for i, r := range recs {
		t.Logf("record %d: +%v %d %s governance=%q model %s", i, r.started.Sub(start).Round(10*time.Millisecond), r.status, r.outcome, r.governance, r.model)
		res.requests++
		if r.started.Sub(start) < govWindow {
			res.requests60++
		}
		if r.outcome == "ok" {
			okRecs++
		}
		if r.governance != "" {
			res.refused++
			model = r.model
			if !lastRefused.IsZero() {
				if g := r.started.Sub(lastRefused); res.minGap == 0 || g < res.minGap {
					res.minGap = g
				}
			}
			lastRefused = r.started
		}
	}
	if sc != govRate {
		// The refusal this CLI got, asked again from another workspace of
		// the same project with the model the CLI sent, to read its shape.
		probe = s.probeOther(t, hc, project, model)
	}
	res.answer = probe.summary()
	res.recovered = strings.Contains(out.stdout, pangram)
	res.shown = shownLine(text, probe.message, ex, sc)
	t.Logf("tollgate answered %s; %s showed %q", res.answer, hc.pkg.Bin, res.shown)
	if sc == govRate {
		t.Logf("%s's output:\n%s", hc.pkg.Bin, show)
	}

	// No refused request reaches the provider: every upstream call is an
	// admitted one.
	if res.upstream != int64(okRecs) {
		t.Errorf("the fake provider got %d requests, tollgate admitted %d: a refusal reached the provider", res.upstream, okRecs)
	}
	if res.refused == 0 {
		t.Fatalf("tollgate refused none of %s's %d requests\n%s", hc.pkg.Bin, len(recs), show)
	}
	wantKind := map[string]string{govBudget: "budget", govRate: "rate_limit", govModel: "model_policy"}[sc]
	for i, r := range recs {
		if r.governance != "" && (r.governance != wantKind || r.outcome != "rejected") {
			t.Errorf("record %d: governance %q outcome %q, want %q rejected", i, r.governance, r.outcome, wantKind)
		}
	}

	switch sc {
	case govBudget, govModel:
		if res.upstream != 0 {
			t.Errorf("the fake provider got %d requests, want 0", res.upstream)
		}
		if res.requests > govMaxStopRequests {
			t.Errorf("%s sent %d requests on a %s refusal, want at most %d (no retry loop)\n%s", hc.pkg.Bin, res.requests, sc, govMaxStopRequests, show)
		}
		if out.err == nil || out.elapsed >= timeout {
			t.Errorf("%s did not stop with an error by itself: %s after %v\n%s", hc.pkg.Bin, res.exit, out.elapsed, show)
		}
		if sc == govBudget && ex.ownBudgetText != "" {
			if !regexp.MustCompile(ex.ownBudgetText).MatchString(text) {
				t.Errorf("%s did not print its own budget text /%s/\n%s", hc.pkg.Bin, ex.ownBudgetText, show)
			}
		} else if !showsMessage(text, probe.message) {
			t.Errorf("%s did not show tollgate's message %q\n%s", hc.pkg.Bin, probe.message, show)
		}
	case govRate:
		if res.requests60 > ex.rateMax {
			t.Errorf("%s sent %d requests within %v of a rate limit, want at most %d (backing off)\n%s", hc.pkg.Bin, res.requests60, govWindow, ex.rateMax, show)
		}
		if !ex.concurrent && res.refused > 1 && res.minGap < govMinGap {
			t.Errorf("%s retried a rate limit %v after the last refusal, want at least %v apart", hc.pkg.Bin, res.minGap, govMinGap)
		}
		if out.elapsed >= timeout {
			t.Errorf("%s was still running after %v under a 1 rpm limit\n%s", hc.pkg.Bin, timeout, show)
		}
		if ex.rateRecovers && (out.err != nil || !res.recovered || okRecs == 0) {
			t.Errorf("%s did not succeed once the rate-limit window cleared: %s, %d admitted\n%s", hc.pkg.Bin, res.exit, okRecs, show)
		}
	}
	return res
}

// primeModel is the model of the request that spends the minute's slot.
func primeModel(hc harnessCase, setup envSetup) string {
	if hc.model != "" {
		return hc.model
	}
	return map[string]string{"anthropic-messages": "claude-sonnet-4-5", "openai-responses": "gpt-5.5",
		"openai-chat": "gpt-5.5", "gemini": "gemini-2.5-flash"}[setup.Dialect]
}

// govRecord is what a governed run's usage records say.
type govRecord struct {
	started                    time.Time
	status                     int
	outcome, governance, model string
}

// settledGovRecords waits until the workspace's records started at or
// after since stop changing (the writer flushes asynchronously), and
// returns them in order.
func (s *stack) settledGovRecords(t *testing.T, workspace string, since time.Time) []govRecord {
	t.Helper()
	var recs []govRecord
	n, stable := -1, time.Time{}
	testkit.Poll(recordWait, 200*time.Millisecond, func() bool {
		recs = s.govRecords(t, workspace, since)
		if len(recs) != n {
			n, stable = len(recs), time.Now()
			return false
		}
		return n > 0 && time.Since(stable) >= 2*time.Second
	})
	return recs
}

func (s *stack) govRecords(t *testing.T, workspace string, since time.Time) []govRecord {
	t.Helper()
	rows, err := s.db.Query(`SELECT started_at, status, outcome, governance, model_requested
		FROM usage_records WHERE workspace = $1 ORDER BY started_at`, workspace)
	if err != nil {
		t.Fatalf("query usage_records: %v", err)
	}
	defer rows.Close()
	var out []govRecord
	for rows.Next() {
		var r govRecord
		if err := rows.Scan(&r.started, &r.status, &r.outcome, &r.governance, &r.model); err != nil {
			t.Fatalf("scan usage_records: %v", err)
		}
		// The priming request and the probe were answered before since.
		if !r.started.Before(since) {
			out = append(out, r)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("usage_records: %v", err)
	}
	return out
}

// probeAnswer is tollgate's answer to one request sent as the harness.
type probeAnswer struct {
	status                  int
	retryAfter, shouldRetry string
	errType, message, body  string
}

func (p probeAnswer) summary() string {
	if p.status == 0 {
		return "-"
	}
	s := fmt.Sprintf("%d %s", p.status, p.errType)
	if p.retryAfter != "" {
		s += ", retry-after " + p.retryAfter
	}
	if p.shouldRetry != "" {
		s += ", x-should-retry " + p.shouldRetry
	}
	return s
}

// harnessUA is a User-Agent each harness's own requests start with.
var harnessUA = map[string]string{
	"claude-code": "claude-cli/2.1.330 (external, sdk-cli)",
	"codex":       "codex_exec/0.169.0",
	"opencode":    "opencode/1.18.33",
	"gemini-cli":  "GeminiCLI/0.61.0/gemini-2.5-flash (linux; x64)",
}

// probe sends one small non-streaming request in setup's dialect with tok,
// as the harness would, and reads tollgate's answer.
func (s *stack) probe(t *testing.T, setup envSetup, tok, model string) probeAnswer {
	t.Helper()
	base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(setup.BaseURL, "/"), "/v1"), "/v1beta")
	var path, body string
	switch setup.Dialect {
	case "anthropic-messages":
		path, body = "/v1/messages", fmt.Sprintf(`{"model":%q,"max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`, model)
	case "openai-responses":
		path, body = "/v1/responses", fmt.Sprintf(`{"model":%q,"input":"hi","max_output_tokens":64}`, model)
	case "openai-chat":
		path, body = "/v1/chat/completions", fmt.Sprintf(`{"model":%q,"max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`, model)
	case "gemini":
		path, body = "/v1beta/models/"+model+":generateContent", `{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}`
	default:
		t.Fatalf("probe: no request for dialect %s", setup.Dialect)
	}
	req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Anthropic-Version", "2023-06-01")
	req.Header.Set("User-Agent", harnessUA[setup.Harness])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("probe %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	p := probeAnswer{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"),
		shouldRetry: resp.Header.Get("X-Should-Retry"), body: string(b)}
	// Every dialect's envelope has error.message; the type is error.type,
	// or error.status for Gemini.
	var e struct {
		Error struct {
			Type, Status, Message string
		}
	}
	if json.Unmarshal(b, &e) == nil {
		p.errType, p.message = cmpOr(e.Error.Type, e.Error.Status), e.Error.Message
	}
	return p
}

// probeOther asks tollgate, as harness hc in another workspace of project,
// for model: the same project policy answers it as it answered the CLI.
func (s *stack) probeOther(t *testing.T, hc harnessCase, project, model string) probeAnswer {
	t.Helper()
	if model == "" {
		return probeAnswer{}
	}
	tok := strings.TrimSpace(s.tollgate(t, "", "token", "issue",
		"--workspace", project+"-probe", "--project", project, "--user", "e2e-user", "--harness", hc.name))
	s.tokens = append(s.tokens, tok)
	var setup envSetup
	envArgs := []string{"env", "--harness", hc.name, "--token", tok, "--url", s.url, "--format", "json"}
	if hc.model != "" {
		envArgs = append(envArgs, "--model", hc.model)
	}
	if err := json.Unmarshal([]byte(s.tollgate(t, "", envArgs...)), &setup); err != nil {
		t.Fatalf("tollgate env --format json: %v", err)
	}
	return s.probe(t, setup, tok, model)
}

// messageKey is the part of tollgate's message that does not depend on
// the request (a budget message goes on with the request's ceiling), with
// quotes and backslashes dropped: a CLI that prints the JSON body escapes
// them.
func messageKey(msg string) string {
	k, _, _ := strings.Cut(msg, ";")
	if len(k) > 80 {
		k = k[:80]
	}
	return unquote(k)
}

func unquote(s string) string { return strings.NewReplacer(`\`, "", `"`, "").Replace(s) }

func showsMessage(text, msg string) bool {
	k := messageKey(msg)
	return k != "" && strings.Contains(unquote(text), k)
}

// shownLine is the line of the CLI's output that carries the refusal:
// tollgate's message, else the CLI's own budget text, else its last
// non-empty line.
func shownLine(text, msg string, ex govExpect, sc string) string {
	lines := strings.Split(ansiEscape.ReplaceAllString(text, ""), "\n")
	pick := func(match func(string) bool) string {
		for _, l := range lines {
			if match(l) {
				return clip(strings.TrimSpace(l), 220)
			}
		}
		return ""
	}
	k := messageKey(msg)
	if k != "" {
		for _, l := range lines {
			// From just before the message: Gemini CLI puts a report path
			// in front of it on the same line.
			if u := unquote(strings.TrimSpace(l)); strings.Contains(u, k) {
				if i := strings.Index(u, k); i > 40 {
					u = "…" + u[i-40:]
				}
				return clip(u, 260)
			}
		}
	}
	if sc == govBudget && ex.ownBudgetText != "" {
		re := regexp.MustCompile(ex.ownBudgetText)
		if l := pick(re.MatchString); l != "" {
			return l
		}
	}
	if l := pick(func(l string) bool {
		return strings.Contains(l, "tollgate") && !strings.Contains(l, "provider: tollgate")
	}); l != "" {
		return l
	}
	if sc == govRate && strings.Contains(text, pangram) {
		return "(no refusal text) then the answer: " + pangram
	}
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			return clip(l, 220)
		}
	}
	return ""
}

// ansiEscape is a terminal colour sequence (OpenCode colours "Error:").
var ansiEscape = regexp.MustCompile(`\x1b\[[0-9;]*m`)

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func exitText(err error) string {
	if err == nil {
		return "0"
	}
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		return fmt.Sprint(ee.ExitCode())
	}
	return err.Error()
}

// govTable is the summary as a Markdown table, for the README.
func govTable(rs []govResult) string {
	var b strings.Builder
	b.WriteString("| CLI | refusal | tollgate answers | exit | requests in 60 s (refused) | upstream | time | shows |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		req := fmt.Sprintf("%d (%d)", r.requests60, r.refused)
		if r.requests != r.requests60 {
			req += fmt.Sprintf(", %d in all", r.requests)
		}
		if r.scenario == govRate {
			if r.minGap > 0 {
				req += fmt.Sprintf(", ≥ %v apart", r.minGap.Round(10*time.Millisecond))
			}
			if r.recovered {
				req += ", then succeeded"
			} else {
				req += ", gave up"
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %d | %v | %s |\n", r.cli, r.scenario, r.answer, r.exit, req,
			r.upstream, r.elapsed.Round(100*time.Millisecond), strings.ReplaceAll(r.shown, "|", `\|`))
	}
	return b.String()
}
