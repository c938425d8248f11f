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

// TestHarnessCodexCompacts drives Codex 0.169 past its auto-compaction
// limit through tollgate, configured from `tollgate env` alone plus the
// limit: a first turn the provider reports as large, then a resumed turn
// that Codex compacts before it samples. With tollgate's provider block
// Codex compacts inline: the summarising request is an ordinary streamed
// POST /v1/responses (0.169 has no client for /v1/responses/compact), so
// it must be forwarded, metered with the provider's usage and let Codex
// finish its turn on the compacted history.
func TestHarnessCodexCompacts(t *testing.T) {
	prefixes, nodeDir := mustInstallHarnesses(t, pkgCodex)
	r := startCompactRig(t)
	hc := harnessCases[slices.IndexFunc(harnessCases, func(hc harnessCase) bool { return hc.name == "codex" })]
	const workspace = "e2e-compact-codex"
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

	first := r.runCodex(t, run, hc.args...)
	if strings.Contains(first, "context compacted") {
		t.Fatalf("Codex compacted a fresh session: the limit %d is below its own context\n%s", compactLimit, first)
	}
	turn1 := r.fake.Requests()
	if len(turn1) != 1 {
		t.Fatalf("the first turn sent %d requests, want 1", len(turn1))
	}
	r.fake.Reset()
	const again = "say hi again"
	// hc.args without its prompt, as flags of `exec resume`.
	out := r.runCodex(t, run, append(append([]string{"exec", "resume", "--last"}, hc.args[1:len(hc.args)-1]...), again)...)
	if !strings.Contains(out, "context compacted") {
		t.Errorf("Codex did not report compacting\n%s", out)
	}

	reqs := r.fake.Requests()
	if len(reqs) != 2 {
		t.Fatalf("the resumed turn sent %d requests through tollgate, want 2 (the compaction, then the turn)", len(reqs))
	}
	compaction, turn := reqs[0], reqs[1]
	for i, q := range reqs {
		if q.Method != http.MethodPost || q.Path != "/v1/responses" || q.Status != http.StatusOK || !q.Stream {
			t.Errorf("request %d: %s %s status %d stream %v, want a streamed POST /v1/responses answered 200", i, q.Method, q.Path, q.Status, q.Stream)
		}
	}
	// The compaction asks for a summary of the history so far, which
	// holds the first turn's answer; the turn after it carries that
	// summary in place of the history.
	if last := lastInputText(compaction.Body); last == "" || last == again || !hasAssistantText(compaction.Body, pangram) {
		t.Errorf("the first request of the resumed turn is not a compaction of the history: last input %.200q", last)
	}
	if last := lastInputText(turn.Body); last != again || hasAssistantText(turn.Body, pangram) || !strings.Contains(string(turn.Body), pangram) {
		t.Errorf("the turn after compacting does not run on the summary: last input %.200q", last)
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
	r.checkNoSecretsLogged(t)
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

// lastInputText is the text of a Responses request's last input item.
func lastInputText(body []byte) string {
	in := gjson.GetBytes(body, "input").Array()
	if len(in) == 0 {
		return ""
	}
	return in[len(in)-1].Get("content.0.text").String()
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
