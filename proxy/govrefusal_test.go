package proxy

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/tidwall/gjson"

	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/meteringtest"
	"github.com/tollgate/tollgate/registry"
)

// refusalHeaders are the headers a governance refusal may carry; each
// case states all of them, absent ones as "".
var refusalHeaders = []string{
	"Content-Type", "Retry-After", "Retry-After-Ms", "X-Should-Retry", "X-Tollgate-Limit",
	"X-Ratelimit-Limit", "X-Ratelimit-Remaining", "X-Ratelimit-Reset",
	"Anthropic-Ratelimit-Requests-Limit", "Anthropic-Ratelimit-Requests-Remaining", "Anthropic-Ratelimit-Requests-Reset",
	"Anthropic-Ratelimit-Tokens-Limit", "Anthropic-Ratelimit-Tokens-Remaining", "Anthropic-Ratelimit-Tokens-Reset",
}

// TestGovernanceRefusalShapes: each harness × refusal kind is answered
// with the status, headers and body bytes governance.md §6.2 gives it,
// over real HTTP, and recorded as a rejected request naming the kind.
func TestGovernanceRefusalShapes(t *testing.T) {
	now := time.Date(2026, 12, 2, 18, 0, 0, 0, time.UTC)
	midnight := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	rate := &governance.Refusal{Kind: governance.RefuseRateLimit, Message: "tollgate: project acme is over 60 req/min",
		RetryAfter: 19500 * time.Millisecond, ResetAt: now.Add(20 * time.Second), Policy: "project:acme/rpm", Limit: 60, Remaining: 0, Unit: "requests"}
	tpm := &governance.Refusal{Kind: governance.RefuseRateLimit, Message: "tollgate: workspace ws-42 is over 200000 tokens/min",
		RetryAfter: 3 * time.Second, Policy: "workspace:ws-42/tpm", Limit: 200000, Remaining: 1200, Unit: "tokens"}
	budget := &governance.Refusal{Kind: governance.RefuseBudget, Message: "spend limit reached (daily; resets 2026-12-03 00:00 UTC) · tollgate: project acme spent $50.00 of $50.00",
		RetryAfter: midnight.Sub(now), ResetAt: midnight, Policy: "project:acme/budget", Limit: 50_000_000, Unit: "micro_usd"}
	lifetime := &governance.Refusal{Kind: governance.RefuseBudget, Message: "tollgate: token tok-1 spent its lifetime budget of $5.00",
		Policy: "token:tok-1/budget", Limit: 5_000_000, Unit: "micro_usd"}
	_, model := governance.ResolveModel([]governance.ModelRule{
		{ScopeType: governance.ScopeProject, ScopeID: "acme", Kind: governance.RuleAllow, Pattern: "claude-sonnet-*"},
		{ScopeType: governance.ScopeProject, ScopeID: "acme", Kind: governance.RuleAllow, Pattern: "claude-haiku-*"},
	}, governance.Scope{Project: "acme"}, "claude-opus-5-5")
	unavailable := &governance.Refusal{Kind: governance.RefuseUnavailable, Message: "tollgate cannot reach its budget ledger; retry in 10 s", Policy: "project:acme/budget"}
	conc := &governance.Refusal{Kind: governance.RefuseConcurrency, Message: "tollgate: token tok-1 has 4 requests in flight", RetryAfter: 0, Policy: "token:tok-1/concurrency", Limit: 4, Unit: "requests"}

	const (
		anthropic = "/anthropic/v1/messages"
		chat      = "/openai/v1/chat/completions"
		responses = "/openai/v1/responses"
		gemini    = "/gemini/v1beta/models/gemini-3.5-flash:streamGenerateContent"
	)
	const json = "application/json"
	modelMsg := "tollgate: model claude-opus-5-5 is not allowed for project acme; allowed: claude-sonnet-*, claude-haiku-*"
	budgetMsg := "spend limit reached (daily; resets 2026-12-03 00:00 UTC) · tollgate: project acme spent $50.00 of $50.00"
	resetEpoch := strconv.FormatInt(now.Add(20*time.Second).Unix(), 10)

	type hdr map[string]string
	cases := []struct {
		name, harness, path string
		r                   *governance.Refusal
		status              int
		headers             hdr
		body                string
	}{
		{"ClaudeCodeRate", "claude-code", anthropic, rate, 429,
			hdr{"Content-Type": json, "Retry-After": "20", "X-Should-Retry": "true", "X-Tollgate-Limit": "project:acme/rpm",
				"Anthropic-Ratelimit-Requests-Limit": "60", "Anthropic-Ratelimit-Requests-Remaining": "0", "Anthropic-Ratelimit-Requests-Reset": "2026-12-02T18:00:20Z"},
			`{"error":{"message":"tollgate: project acme is over 60 req/min","type":"rate_limit_error"},"type":"error"}`},
		{"ClaudeCodeTokens", "claude-code", anthropic, tpm, 429,
			hdr{"Content-Type": json, "Retry-After": "3", "X-Should-Retry": "true", "X-Tollgate-Limit": "workspace:ws-42/tpm",
				"Anthropic-Ratelimit-Tokens-Limit": "200000", "Anthropic-Ratelimit-Tokens-Remaining": "1200", "Anthropic-Ratelimit-Tokens-Reset": "2026-12-02T18:00:03Z"},
			`{"error":{"message":"tollgate: workspace ws-42 is over 200000 tokens/min","type":"rate_limit_error"},"type":"error"}`},
		{"ClaudeCodeBudget", "claude-code", anthropic, budget, 429,
			hdr{"Content-Type": json, "Retry-After": "21600", "X-Should-Retry": "false", "X-Tollgate-Limit": "project:acme/budget"},
			`{"error":{"message":"` + budgetMsg + `","type":"billing_error"},"type":"error"}`},
		{"ClaudeCodeModel", "claude-code", anthropic, model, 403,
			hdr{"Content-Type": json, "X-Should-Retry": "false", "X-Tollgate-Limit": "project:acme/model"},
			`{"error":{"message":"` + modelMsg + ` Use /model or --model.","type":"permission_error"},"type":"error"}`},
		{"ClaudeCodeUnavailable", "claude-code", anthropic, unavailable, 429,
			hdr{"Content-Type": json, "Retry-After": "10", "X-Should-Retry": "true", "X-Tollgate-Limit": "project:acme/budget"},
			`{"error":{"message":"tollgate cannot reach its budget ledger; retry in 10 s","type":"rate_limit_error"},"type":"error"}`},
		{"CodexRate", "codex", responses, rate, 429,
			hdr{"Content-Type": json, "Retry-After": "20", "X-Tollgate-Limit": "project:acme/rpm",
				"X-Ratelimit-Limit": "60", "X-Ratelimit-Remaining": "0", "X-Ratelimit-Reset": resetEpoch},
			`{"error":{"code":"rate_limit_exceeded","message":"tollgate: project acme is over 60 req/min Please try again in 20s.","param":null,"type":"requests"}}`},
		{"CodexBudget", "codex", responses, budget, 429,
			hdr{"Content-Type": json, "Retry-After": "21600", "X-Tollgate-Limit": "project:acme/budget"},
			`{"error":{"code":"budget_exceeded","message":"` + budgetMsg + `","param":null,"resets_at":1796256000,"type":"usage_limit_reached"}}`},
		{"CodexLifetimeBudget", "codex", responses, lifetime, 429,
			hdr{"Content-Type": json, "Retry-After": "2678400", "X-Tollgate-Limit": "token:tok-1/budget"},
			`{"error":{"code":"budget_exceeded","message":"tollgate: token tok-1 spent its lifetime budget of $5.00","param":null,"type":"usage_limit_reached"}}`},
		{"CodexModel", "codex", responses, model, 400,
			hdr{"Content-Type": json, "X-Tollgate-Limit": "project:acme/model"},
			`{"error":{"code":"model_not_allowed","message":"` + modelMsg + `","param":"model","type":"invalid_request_error"}}`},
		{"OpenCodeRate", "opencode", chat, rate, 429,
			hdr{"Content-Type": json, "Retry-After": "20", "Retry-After-Ms": "19500", "X-Tollgate-Limit": "project:acme/rpm",
				"X-Ratelimit-Limit": "60", "X-Ratelimit-Remaining": "0", "X-Ratelimit-Reset": resetEpoch},
			`{"error":{"code":"rate_limit_exceeded","message":"tollgate: project acme is over 60 req/min","param":null,"type":"requests"}}`},
		{"OpenCodeConcurrency", "opencode", chat, conc, 429,
			hdr{"Content-Type": json, "Retry-After": "1", "Retry-After-Ms": "1", "X-Tollgate-Limit": "token:tok-1/concurrency",
				"X-Ratelimit-Limit": "4", "X-Ratelimit-Remaining": "0", "X-Ratelimit-Reset": strconv.FormatInt(now.Unix()+1, 10)},
			`{"error":{"code":"rate_limit_exceeded","message":"tollgate: token tok-1 has 4 requests in flight","param":null,"type":"requests"}}`},
		{"OpenCodeBudget", "opencode", chat, budget, 403,
			hdr{"Content-Type": json, "Retry-After": "21600", "X-Tollgate-Limit": "project:acme/budget"},
			`{"error":{"code":"budget_exceeded","message":"` + budgetMsg + `","param":null,"type":"insufficient_quota"}}`},
		{"OpenCodeBudgetOnAnthropic", "opencode", anthropic, budget, 403,
			hdr{"Content-Type": json, "Retry-After": "21600", "X-Should-Retry": "false", "X-Tollgate-Limit": "project:acme/budget"},
			`{"error":{"message":"` + budgetMsg + `","type":"insufficient_quota"},"type":"error"}`},
		{"OpenCodeModel", "opencode", chat, model, 400,
			hdr{"Content-Type": json, "X-Tollgate-Limit": "project:acme/model"},
			`{"error":{"code":"model_not_allowed","message":"` + modelMsg + `","param":"model","type":"invalid_request_error"}}`},
		{"GeminiCLIRate", "gemini-cli", gemini, rate, 429,
			hdr{"Content-Type": json, "Retry-After": "20", "X-Tollgate-Limit": "project:acme/rpm"},
			`{"error":{"code":429,"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"20s"}],"message":"tollgate: project acme is over 60 req/min","status":"RESOURCE_EXHAUSTED"}}`},
		{"GeminiCLIBudget", "gemini-cli", gemini, budget, 429,
			hdr{"Content-Type": json, "Retry-After": "21600", "X-Tollgate-Limit": "project:acme/budget"},
			`{"error":{"code":429,"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"21600s"}],"message":"` + budgetMsg + `","status":"RESOURCE_EXHAUSTED"}}`},
		{"GeminiCLIModel", "gemini-cli", gemini, model, 403,
			hdr{"Content-Type": json, "X-Tollgate-Limit": "project:acme/model"},
			`{"error":{"code":403,"message":"` + modelMsg + `","status":"PERMISSION_DENIED"}}`},
		{"GeminiCLIUnavailable", "gemini-cli", gemini, unavailable, 429,
			hdr{"Content-Type": json, "Retry-After": "10", "X-Tollgate-Limit": "project:acme/budget"},
			`{"error":{"code":429,"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"10s"}],"message":"tollgate cannot reach its budget ledger; retry in 10 s","status":"RESOURCE_EXHAUSTED"}}`},
		// No harness: the dialect's shape.
		{"ChatClientBudget", "", chat, budget, 429,
			hdr{"Content-Type": json, "Retry-After": "21600", "X-Tollgate-Limit": "project:acme/budget"},
			`{"error":{"code":"insufficient_quota","message":"` + budgetMsg + `","param":null,"type":"insufficient_quota"}}`},
		{"AnthropicClientModel", "", anthropic, model, 403,
			hdr{"Content-Type": json, "X-Should-Retry": "false", "X-Tollgate-Limit": "project:acme/model"},
			`{"error":{"message":"` + modelMsg + `","type":"permission_error"},"type":"error"}`},
		// A harness's templates stay off a dialect it does not speak.
		{"CodexTemplatesOffChat", "codex", chat, model, 400,
			hdr{"Content-Type": json, "X-Tollgate-Limit": "project:acme/model"},
			`{"error":{"code":"model_not_allowed","message":"` + modelMsg + `","param":"model","type":"invalid_request_error"}}`},
	}

	reg, err := registry.LoadFile("../harnesses.yaml")
	if err != nil {
		t.Fatal(err)
	}
	sink := &meteringtest.Sink{}
	s := &Server{cfg: Config{Registry: registry.NewStatic(reg), Sink: sink, now: func() time.Time { return now }},
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	app := fiber.New(fiber.Config{ErrorHandler: s.errorHandler, DisableStartupMessage: true})
	app.Post("/*", func(c *fiber.Ctx) error {
		i, _ := strconv.Atoi(c.Get("X-Case"))
		tc := cases[i]
		m, ok := reg.Route(fiber.MethodPost, string(c.Request().URI().PathOriginal()))
		if !ok {
			t.Errorf("%s: %s does not route", tc.name, tc.path)
			return nil
		}
		var h *registry.Harness
		if tc.harness != "" {
			h, _ = reg.Harness(tc.harness)
		}
		cl := &call{s: s, start: now, dialect: m.Dialect, path: m.Path,
			rec: metering.Record{RequestID: "req_" + tc.name, Dialect: m.Dialect.Name, Harness: tc.harness}}
		return cl.governed(c, h, tc.r)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go app.Listener(ln)
	t.Cleanup(func() { app.Shutdown() })
	base := "http://" + ln.Addr().String()

	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, base+tc.path, strings.NewReader(`{"model":"x"}`))
			req.Header.Set("X-Case", strconv.Itoa(i))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Errorf("status = %d, want %d", resp.StatusCode, tc.status)
			}
			for _, name := range refusalHeaders {
				if got := resp.Header.Get(name); got != tc.headers[name] {
					t.Errorf("%s = %q, want %q", name, got, tc.headers[name])
				}
			}
			if string(body) != tc.body {
				t.Errorf("body:\n got %s\nwant %s", body, tc.body)
			}
			rec, ok := sink.ByID("req_" + tc.name)
			if !ok {
				t.Fatal("no usage record")
			}
			if rec.Status != tc.status || rec.Outcome != metering.OutcomeRejected || rec.Source != metering.SourceNone || rec.Governance != string(tc.r.Kind) {
				t.Errorf("record status %d outcome %s source %s governance %q, want %d rejected none %q",
					rec.Status, rec.Outcome, rec.Source, rec.Governance, tc.status, tc.r.Kind)
			}
		})
	}
}

// TestNoGovernanceRefusalIsAServerError: whatever the harness, dialect and
// kind, a policy refusal is a 4xx whose body never reads as a server
// error, which OpenCode would retry without end and Codex would retry.
func TestNoGovernanceRefusalIsAServerError(t *testing.T) {
	reg, err := registry.LoadFile("../harnesses.yaml")
	if err != nil {
		t.Fatal(err)
	}
	kinds := []governance.RefusalKind{governance.RefuseRateLimit, governance.RefuseConcurrency, governance.RefuseBudget, governance.RefuseModel, governance.RefuseUnavailable}
	n := 0
	check := func(d *registry.Dialect, h *registry.Harness) {
		for _, k := range kinds {
			shape := registry.RefusalFor(d, h, refusalTemplate(k))
			e := &apiError{kind: statusKind(shape.Status), msg: "m", refusal: &shape, retryAfter: 5}
			body := errorBody(d.ErrorShape, e)
			typ := gjson.GetBytes(body, "error.type").String() + gjson.GetBytes(body, "error.status").String()
			if st := e.status(); st < 400 || st > 499 || strings.Contains(typ, "server") || typ == "api_error" || typ == "" {
				t.Errorf("%s on %s, %s: status %d body %s", nameOf(h), d.Name, k, st, body)
			}
			if (k == governance.RefuseRateLimit || k == governance.RefuseUnavailable || k == governance.RefuseConcurrency) && e.status() != 429 {
				t.Errorf("%s on %s, %s: status %d, want 429 so clients retry", nameOf(h), d.Name, k, e.status())
			}
			n++
		}
	}
	for _, d := range reg.Dialects() {
		check(d, nil)
	}
	for _, h := range reg.Harnesses() {
		for _, dn := range h.Dialects {
			d, _ := reg.Dialect(dn)
			check(d, h)
		}
	}
	if n < 40 {
		t.Fatalf("checked %d shapes only", n)
	}
}

func nameOf(h *registry.Harness) string {
	if h == nil {
		return "(no harness)"
	}
	return h.Name
}
