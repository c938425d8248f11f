//go:build e2e

package main_test

import (
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// compactUsage is what the compacting fake reports for every answer: far
// over the auto-compaction limit below, as a long session would be.
var compactUsage = upstreamtest.Usage{InputUncached: 150000, CacheRead: 50000, Output: 500, Reasoning: 100}

// compactLimit is Codex's model_auto_compact_token_limit in these runs:
// above a fresh session's own context, below compactUsage.
const compactLimit = 50000

// compactRig is the stack plus a fake provider reporting compactUsage,
// reached by the project compactProject through a project credential.
type compactRig struct {
	*stack
	fake *upstreamtest.Server
}

const compactProject = "e2e-compact"

func startCompactRig(t *testing.T) *compactRig {
	s := startStack(t)
	key := "sk-proj-e2e-COMPACT-" + randHex(t, 8)
	s.canaries["openai-compact"] = key
	fake, err := upstreamtest.New(upstreamtest.Config{Keys: []string{key}, Usage: compactUsage})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: fake, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	id := strings.TrimSpace(s.tollgate(t, key, "credential", "add", "--provider", "openai",
		"--name", "compact-openai", "--base-url", "http://"+ln.Addr().String(), "--key-stdin"))
	s.tollgate(t, "", "credential", "bind", "--credential", id, "--dialect", "openai-responses", "--project", compactProject)
	return &compactRig{stack: s, fake: fake}
}

// compactWay is one way Codex compacts, by the provider it is set to.
type compactWay struct {
	name string
	// args select the provider and env adds what it needs, if set.
	args, env func(run harnessRun) []string
	// compacts says a request is the compaction of a history that holds
	// the first turn's answer; onSummary that the turn after it runs on
	// the compacted history instead.
	compacts, onSummary func(body []byte) bool
}

const again = "say hi again"

var compactWays = []compactWay{
	{
		// tollgate env's provider block: Codex compacts inline, asking for
		// a summary (its prompt as the last user message) and carrying the
		// summary text, the fake's pangram, in place of the history.
		name: "inline",
		compacts: func(b []byte) bool {
			last := lastInputText(b)
			return last != "" && last != again && hasAssistantText(b, pangram)
		},
		onSummary: func(b []byte) bool {
			return lastInputText(b) == again && !hasAssistantText(b, pangram) && strings.Contains(string(b), pangram)
		},
	},
	{
		// The built-in provider pointed at tollgate: remote compaction v2,
		// the history plus a compaction_trigger item, answered with one
		// compaction item that the next turn carries.
		name: "remote",
		args: func(run harnessRun) []string {
			return []string{"-c", "model_provider=openai", "-c", "openai_base_url=" + run.setup.BaseURL}
		},
		env: func(run harnessRun) []string {
			return []string{"CODEX_API_KEY=" + runToken(run)}
		},
		compacts: func(b []byte) bool {
			return gjson.GetBytes(b, "input.@reverse.0.type").Str == "compaction_trigger" && hasAssistantText(b, pangram)
		},
		onSummary: func(b []byte) bool {
			return lastInputText(b) == again && !hasAssistantText(b, pangram) && gjson.GetBytes(b, `input.#(type=="compaction")`).Exists()
		},
	},
}

// TestHarnessCodexCompacts drives Codex 0.169 past its auto-compaction
// limit through tollgate: a first turn the provider reports as large, then
// a resumed turn that Codex compacts before it samples, either way it
// compacts (compactWays). Both are an ordinary streamed POST
// /v1/responses (0.169 has no client for /v1/responses/compact), which
// must be forwarded, metered with the provider's usage, and let Codex
// finish its turn on the compacted history.
func TestHarnessCodexCompacts(t *testing.T) {
	prefixes, nodeDir := mustInstallHarnesses(t, pkgCodex)
	r := startCompactRig(t)
	hc := harnessCases[slices.IndexFunc(harnessCases, func(hc harnessCase) bool { return hc.name == "codex" })]
	for _, way := range compactWays {
		t.Run(way.name, func(t *testing.T) {
			r.fake.Reset()
			r.compactOnce(t, hc, way, prefixes, nodeDir)
		})
	}
	r.checkNoSecretsLogged(t)
}

func (r *compactRig) compactOnce(t *testing.T, hc harnessCase, way compactWay, prefixes map[string]string, nodeDir string) {
	workspace := "e2e-compact-" + way.name
	run := r.prepareHarness(t, hc, workspace, compactProject, prefixes, nodeDir)
	cfg := run.home.path(run.setup.ConfigFile)
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// A top-level key: before the [model_providers.tollgate] table.
	if err := os.WriteFile(cfg, append([]byte("model_auto_compact_token_limit = "+itoa(compactLimit)+"\n"), b...), 0o600); err != nil {
		t.Fatal(err)
	}
	if way.env != nil {
		run.env = append(slices.Clone(run.env), way.env(run)...)
	}
	// hc.args is exec, its flags, then the prompt.
	flags := slices.Clone(hc.args[1 : len(hc.args)-1])
	if way.args != nil {
		flags = append(flags, way.args(run)...)
	}

	first := r.runCodex(t, run, append(append([]string{"exec"}, flags...), prompt)...)
	if strings.Contains(first, "context compacted") {
		t.Fatalf("Codex compacted a fresh session: the limit %d is below its own context\n%s", compactLimit, first)
	}
	if n := len(r.fake.Requests()); n != 1 {
		t.Fatalf("the first turn sent %d requests, want 1", n)
	}
	r.fake.Reset()
	out := r.runCodex(t, run, append(append([]string{"exec", "resume", "--last"}, flags...), again)...)
	if !strings.Contains(out, "context compacted") {
		t.Errorf("Codex did not report compacting\n%s", out)
	}

	reqs := r.fake.Requests()
	if len(reqs) != 2 {
		t.Fatalf("the resumed turn sent %d requests through tollgate, want 2 (the compaction, then the turn)", len(reqs))
	}
	for i, q := range reqs {
		if q.Method != http.MethodPost || q.Path != "/v1/responses" || q.Status != http.StatusOK || !q.Stream {
			t.Errorf("request %d: %s %s status %d stream %v, want a streamed POST /v1/responses answered 200", i, q.Method, q.Path, q.Status, q.Stream)
		}
	}
	if !way.compacts(reqs[0].Body) {
		t.Errorf("the first request of the resumed turn is not a compaction of the history: last input %.300s", lastInput(reqs[0].Body))
	}
	if !way.onSummary(reqs[1].Body) {
		t.Errorf("the turn after compacting does not run on the compacted history: last input %.300s", lastInput(reqs[1].Body))
	}

	var recs []usageRecord
	testkit.Poll(recordWait, 100*time.Millisecond, func() bool {
		recs = r.records(t, workspace)
		return len(recs) >= 3
	})
	if len(recs) != 3 {
		t.Fatalf("tollgate recorded %d requests for %s, want 3 (first turn, compaction, turn)", len(recs), workspace)
	}
	want := compactUsage.Normalised(upstreamtest.OpenAIResponses)
	wantTokens := [7]int64{want.InputUncached, want.CacheRead, want.CacheWrite5m, want.CacheWrite1h, 0, want.Output, want.Reasoning}
	for i, rec := range recs {
		t.Logf("record %d: %d %s %s via %s, usage %s", i, rec.status, rec.outcome, rec.path, rec.tier, fmtTokens(rec.tokens))
		if rec.status != http.StatusOK || rec.outcome != "ok" || rec.source != "upstream" || rec.tier != "project" || rec.harness != "codex" {
			t.Errorf("record %d: status %d outcome %q source %q tier %q harness %q, want 200 ok upstream via the project credential from codex",
				i, rec.status, rec.outcome, rec.source, rec.tier, rec.harness)
		}
		for j, col := range tokenColumns {
			if v := rec.tokens[j]; !v.Valid || v.Int64 != wantTokens[j] {
				t.Errorf("record %d: %s = %v (valid %v), want %d", i, col, v.Int64, v.Valid, wantTokens[j])
			}
		}
	}
}

// runToken is the workspace token `tollgate env` exported for a run.
func runToken(run harnessRun) string {
	for _, e := range run.setup.Env {
		if e.Name == "TOLLGATE_TOKEN" {
			return e.Value
		}
	}
	return ""
}

// runCodex runs Codex once and returns its output; it must exit 0 having
// printed the fake's answer, without reaching outside.
func (r *compactRig) runCodex(t *testing.T, run harnessRun, args ...string) string {
	t.Helper()
	res := runCLI(run.home.work, run.env, cliTimeout, run.bin, args...)
	out := "stdout:\n" + tail(res.stdout, 3000) + "\nstderr:\n" + tail(res.stderr, 3000)
	t.Logf("codex %s: %v in %v", strings.Join(args, " "), errOr(res.err, "exit 0"), res.elapsed.Round(100*time.Millisecond))
	if res.err != nil {
		t.Fatalf("codex failed: %v\n%s", res.err, out)
	}
	if !strings.Contains(res.stdout, pangram) {
		t.Errorf("codex's output lacks the fake provider's text\n%s", out)
	}
	if hits := run.sink.Hits(); len(hits) > 0 {
		t.Errorf("codex tried to reach the outside world: %q", hits)
	}
	return res.stdout + res.stderr
}

// lastInput is a Responses request's last input item.
func lastInput(body []byte) string {
	return gjson.GetBytes(body, "input.@reverse.0").Raw
}

// lastInputText is the text of a Responses request's last input item.
func lastInputText(body []byte) string {
	return gjson.Get(lastInput(body), "content.0.text").String()
}

// hasAssistantText reports whether a Responses request's input holds an
// assistant message containing text.
func hasAssistantText(body []byte, text string) bool {
	for _, it := range gjson.GetBytes(body, "input").Array() {
		if it.Get("role").String() == "assistant" && strings.Contains(it.Get("content").Raw, text) {
			return true
		}
	}
	return false
}
