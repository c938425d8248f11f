package proxy

import (
	"io"
	"net/http"
	"testing"

	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/metering"
)

// claudeCodeUA is what Claude Code 2.1.330 sends (harness-clients.md).
const claudeCodeUA = "claude-cli/2.1.330 (external, sdk-cli)"

// TestGovHarnessNarrowedPolicyCannotBeLeftByUserAgent: a budget and a rate
// limit narrowed to claude-code hold for a token bound to claude-code
// whatever its User-Agent, and for a token bound to no harness whenever
// its harness is unknown (curl, the Go client, no User-Agent) as well as
// when its User-Agent claims claude-code: dropping the claim does not
// leave the policy. A token bound to another harness, or an unbound one
// claiming another harness, meets that harness's policies instead.
func TestGovHarnessNarrowedPolicyCannotBeLeftByUserAgent(t *testing.T) {
	cc := governance.Selector{ScopeType: governance.ScopeProject, ScopeID: "proj-1", Harness: "claude-code"}
	g := newGovRig(t, envOptions{})
	// Hard and 1 token: any request's ceiling is over it, so a request the
	// budget applies to is refused before the provider sees it.
	g.pol.set(governance.Policies{Budgets: []governance.Budget{tokenBudget("cc-day", cc, 1, governance.ModeHard)}})
	unbound := g.token("ws-1", "proj-1", "user-1", "")
	boundCC := g.token("ws-1", "proj-1", "user-1", "claude-code")
	boundOC := g.token("ws-1", "proj-1", "user-1", "opencode")
	body := `{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`
	for _, tc := range []struct {
		name, token, ua string
		refused         bool
		harness         string // the record's
	}{
		{"unbound claiming claude-code", unbound, claudeCodeUA, true, "claude-code"},
		{"unbound as curl", unbound, "curl/8.5.0", true, ""},
		{"unbound as the Go client", unbound, "", true, ""},
		{"unbound with an empty User-Agent", unbound, "-", true, ""},
		{"bound to claude-code as curl", boundCC, "curl/8.5.0", true, "claude-code"},
		{"unbound claiming opencode", unbound, "opencode/1.18.33", false, "opencode"},
		{"bound to opencode claiming claude-code", boundOC, claudeCodeUA, false, "opencode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := []string{"anthropic-version", "2023-06-01"}
			switch tc.ua {
			case "":
			case "-":
				hdr = append(hdr, "User-Agent", "")
			default:
				hdr = append(hdr, "User-Agent", tc.ua)
			}
			before := g.fake.Counters().Requests
			resp := g.do("POST", "/anthropic/v1/messages", tc.token, body, hdr...)
			got := readAll(t, resp.Body)
			resp.Body.Close()
			calls := g.fake.Counters().Requests - before
			rec := g.record(resp)
			if rec.Harness != tc.harness {
				t.Errorf("record harness %q, want %q", rec.Harness, tc.harness)
			}
			if !tc.refused {
				if resp.StatusCode != 200 || calls != 1 || rec.Governance != "" {
					t.Fatalf("status %d, %d upstream calls, governance %q: %s", resp.StatusCode, calls, rec.Governance, got)
				}
				return
			}
			if resp.StatusCode != http.StatusTooManyRequests || calls != 0 || rec.Outcome != metering.OutcomeRejected ||
				rec.Governance != string(governance.RefuseBudget) {
				t.Fatalf("escaped the claude-code budget: status %d, %d upstream calls, outcome %q governance %q: %s",
					resp.StatusCode, calls, rec.Outcome, rec.Governance, got)
			}
		})
	}

	// The same for a rate limit: one request a minute for claude-code; a
	// second one as curl is over it too.
	g.pol.set(governance.Policies{Limits: []governance.Limit{{ID: "cc-rpm", Selector: cc, RPM: 1}}})
	for i, ua := range []string{claudeCodeUA, "curl/8.5.0"} {
		resp := g.do("POST", "/anthropic/v1/messages", unbound, body, "anthropic-version", "2023-06-01", "User-Agent", ua)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if want := []int{200, http.StatusTooManyRequests}[i]; resp.StatusCode != want {
			t.Errorf("request %d as %q: status %d, want %d", i+1, ua, resp.StatusCode, want)
		}
	}
}

// countTokensBody is a count_tokens request as Claude Code sends one.
const countTokensBody = `{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi"}]}`

// TestGovUnmeteredPathsHaveALightRPMBucket: count_tokens and model lists
// are held to a workspace's RPM limit in a bucket of their own. Past it a
// client is refused with the rate-limit shape (429, Retry-After, a
// rate_limit record) and no upstream call, so it cannot hammer them; the
// inference request that follows still has its own slot, which a flood
// of count_tokens never takes.
func TestGovUnmeteredPathsHaveALightRPMBucket(t *testing.T) {
	g := newGovRig(t, envOptions{})
	// RPM 1: one request at once, then one a minute, per bucket.
	g.pol.set(governance.Policies{Limits: []governance.Limit{
		{ID: "ws-rpm", Selector: governance.Selector{ScopeType: governance.ScopeWorkspace, ScopeID: "ws-1"}, RPM: 1},
	}})
	tok := g.token("ws-1", "proj-1", "user-1", "claude-code")
	other := g.token("ws-2", "proj-1", "user-1", "claude-code")
	hdr := []string{"anthropic-version", "2023-06-01", "User-Agent", claudeCodeUA}
	call := func(method, path, token, body string) (*http.Response, int64) {
		t.Helper()
		before := g.fake.Counters().Requests
		resp := g.do(method, path, token, body, hdr...)
		readAll(t, resp.Body)
		resp.Body.Close()
		return resp, g.fake.Counters().Requests - before
	}
	if resp, calls := call("POST", "/anthropic/v1/messages/count_tokens", tok, countTokensBody); resp.StatusCode != 200 || calls != 1 {
		t.Fatalf("first count_tokens: status %d, %d upstream calls", resp.StatusCode, calls)
	}
	for _, r := range []struct{ method, path, body string }{
		{"POST", "/anthropic/v1/messages/count_tokens", countTokensBody},
		{"GET", "/anthropic/v1/models", ""},
	} {
		resp, calls := call(r.method, r.path, tok, r.body)
		rec := g.record(resp)
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || calls != 0 ||
			rec.Outcome != metering.OutcomeRejected || rec.Governance != string(governance.RefuseRateLimit) {
			t.Errorf("%s %s over the bucket: status %d retry-after %q, %d upstream calls, record %q/%q",
				r.method, r.path, resp.StatusCode, resp.Header.Get("Retry-After"), calls, rec.Outcome, rec.Governance)
		}
	}
	msg := `{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`
	if resp, calls := call("POST", "/anthropic/v1/messages", tok, msg); resp.StatusCode != 200 || calls != 1 {
		t.Errorf("the turn after the count_tokens flood: status %d, %d upstream calls", resp.StatusCode, calls)
	}
	if resp, _ := call("POST", "/anthropic/v1/messages", tok, msg); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("a second turn within the minute: status %d, want 429", resp.StatusCode)
	}
	// Another workspace has no limit.
	if resp, calls := call("POST", "/anthropic/v1/messages/count_tokens", other, countTokensBody); resp.StatusCode != 200 || calls != 1 {
		t.Errorf("count_tokens of an unlimited workspace: status %d, %d upstream calls", resp.StatusCode, calls)
	}
}
