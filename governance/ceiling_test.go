package governance

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/metering"
)

// bodyOf pads a JSON object (given without its closing brace) to exactly n
// bytes with a filler string field, so byte-bounded ceilings are exact.
func bodyOf(tb testing.TB, open string, n int) []byte {
	tb.Helper()
	const pad = `,"pad":""}`
	fill := n - len(open) - len(pad)
	if fill < 0 {
		tb.Fatalf("body %q is longer than %d bytes", open, n)
	}
	b := open + `,"pad":"` + strings.Repeat("x", fill) + `"}`
	if len(b) != n {
		tb.Fatalf("body is %d bytes, want %d", len(b), n)
	}
	return []byte(b)
}

// Each want is worked out by hand from metering/prices.yaml; the comments
// show the arithmetic (USD per 1M tokens × tokens = micro-USD), plus the one
// micro-dollar that makes the rounded price a bound.
func TestEstimateCeiling(t *testing.T) {
	prices := metering.DefaultPrices()
	cases := []struct {
		name, dialect, provider, model string
		body                           []byte
		fallback                       bool
		in, out, cost                  int64
		priced                         bool
	}{
		{
			// governance.md §4.1's worked example: Claude Code on Opus 5.5,
			// a 49 KB body with cache_control, max_tokens 128k:
			// 49,000 × $5 (5m write) + 128,000 × $20 = $0.245 + $2.56 = $2.805.
			name: "claude-code-opus-5-5", dialect: "anthropic-messages", provider: "anthropic", model: "claude-opus-5-5",
			body: bodyOf(t, `{"model":"claude-opus-5-5","max_tokens":128000,"stream":true,"system":[{"type":"text","text":"x","cache_control":{"type":"ephemeral"}}]`, 49_000),
			in:   49_000, out: 128_000, cost: 245_000 + 2_560_000 + 1, priced: true,
		},
		{
			// No cache_control: input is billed uncached at most ($4).
			name: "anthropic-without-cache-control", dialect: "anthropic-messages", provider: "anthropic", model: "claude-opus-5-5",
			body: bodyOf(t, `{"model":"claude-opus-5-5","max_tokens":1000`, 10_000),
			in:   10_000, out: 1_000, cost: 40_000 + 20_000 + 1, priced: true,
		},
		{
			// ttl 1h: the 1h write rate ($4 on Sonnet 5.5, 2× input).
			name: "anthropic-1h-ttl", dialect: "anthropic-messages", provider: "anthropic", model: "claude-sonnet-5-5",
			body: bodyOf(t, `{"model":"claude-sonnet-5-5","max_tokens":10,"system":[{"type":"text","text":"x","cache_control":{"type":"ephemeral","ttl":"1h"}}]`, 1_000),
			in:   1_000, out: 10, cost: 4_000 + 100 + 1, priced: true,
		},
		{
			// Tools add the tool-use system prompt the body does not show.
			name: "anthropic-tools", dialect: "anthropic-messages", provider: "anthropic", model: "claude-sonnet-5-5",
			body: bodyOf(t, `{"model":"claude-sonnet-5-5","max_tokens":10,"tools":[{"name":"t","input_schema":{}}]`, 1_000),
			in:   2_000, out: 10, cost: 2_000*2 + 100 + 1, priced: true,
		},
		{
			// Codex sends no max_output_tokens: gpt-6.1-sol's 128k maximum.
			// 10,000 × $2 + 128,000 × $10.
			name: "codex-without-max-output", dialect: "openai-responses", provider: "openai", model: "gpt-6.1-sol",
			body: bodyOf(t, `{"model":"gpt-6.1-sol","stream":true,"tools":[{"type":"web_search"}]`, 10_000),
			in:   10_000, out: 128_000, cost: 20_000 + 1_280_000 + 1, priced: true,
		},
		{
			// Input above 272k tokens: the long-context rates on the whole
			// request, 300,000 × $4 + 1,000 × $15.
			name: "responses-long-context", dialect: "openai-responses", provider: "openai", model: "gpt-6.1-sol",
			body: bodyOf(t, `{"model":"gpt-6.1-sol","max_output_tokens":1000`, 300_000),
			in:   300_000, out: 1_000, cost: 1_200_000 + 15_000 + 1, priced: true,
		},
		{
			// A requested priority tier: its own rates ($4 / $20).
			name: "responses-priority-tier", dialect: "openai-responses", provider: "openai", model: "gpt-6.1-sol",
			body: bodyOf(t, `{"model":"gpt-6.1-sol","max_output_tokens":100,"service_tier":"priority"`, 1_000),
			in:   1_000, out: 100, cost: 4_000 + 2_000 + 1, priced: true,
		},
		{
			// A tier the table does not price: unpriced, never the standard rate.
			name: "responses-unpriced-tier", dialect: "openai-responses", provider: "openai", model: "gpt-6.1-sol",
			body: bodyOf(t, `{"model":"gpt-6.1-sol","max_output_tokens":100,"service_tier":"scale"`, 1_000),
			in:   1_000, out: 100, priced: false,
		},
		{
			// previous_response_id pulls the stored conversation: the whole
			// context window on top of the body.
			name: "responses-previous-response", dialect: "openai-responses", provider: "openai", model: "gpt-6.1-sol",
			body: bodyOf(t, `{"model":"gpt-6.1-sol","max_output_tokens":100,"previous_response_id":"resp_1"`, 1_000),
			in:   1_000 + 1_050_000, out: 100, cost: 1_051_000*4 + 100*15 + 1, priced: true,
		},
		{
			// OpenCode on chat, n=3: three choices of 100 tokens each.
			// 500 × $2.50 + 300 × $15.
			name: "chat-n3", dialect: "openai-chat", provider: "openai", model: "gpt-5.4",
			body: bodyOf(t, `{"model":"gpt-5.4","max_completion_tokens":100,"n":3`, 500),
			in:   500, out: 300, cost: 1_250 + 4_500 + 1, priced: true,
		},
		{
			// max_tokens above the model's maximum: the model's bounds it.
			name: "chat-max-above-model", dialect: "openai-chat", provider: "openai", model: "gpt-5.4",
			body: bodyOf(t, `{"model":"gpt-5.4","max_tokens":9000000`, 500),
			in:   500, out: 128_000, cost: 1_250 + 1_920_000 + 1, priced: true,
		},
		{
			// Gemini CLI sends no maxOutputTokens: the model's 65,536 plus
			// the thinking budget. 2,000 × $0.75 + 66,536 × $3.75.
			name: "gemini-cli-without-max", dialect: "gemini", provider: "gemini", model: "gemini-3.8-flash",
			body: bodyOf(t, `{"contents":[],"generationConfig":{"thinkingConfig":{"thinkingBudget":1000}}`, 2_000),
			in:   2_000, out: 66_536, cost: 1_500 + 249_510 + 1, priced: true,
		},
		{
			name: "gemini-candidates", dialect: "gemini", provider: "gemini", model: "gemini-3.5-flash",
			body: bodyOf(t, `{"contents":[],"generationConfig":{"maxOutputTokens":100,"candidateCount":2}`, 1_000),
			in:   1_000, out: 200, cost: 1_500 + 1_800 + 1, priced: true,
		},
		{
			name: "unpriced-model", dialect: "anthropic-messages", provider: "anthropic", model: "mystery-1",
			body: bodyOf(t, `{"model":"mystery-1","max_tokens":100`, 1_000),
			in:   1_000, out: 100, priced: false,
		},
		{
			// fallback: $5 / $25 per 1M tokens.
			name: "unpriced-model-fallback", dialect: "anthropic-messages", provider: "anthropic", model: "mystery-1",
			body: bodyOf(t, `{"model":"mystery-1","max_tokens":100`, 1_000), fallback: true,
			in: 1_000, out: 100, cost: 5_000 + 2_500 + 1, priced: true,
		},
		{
			// A model without limits and no maximum: the 200k default.
			name: "no-limits-no-max", dialect: "openai-chat", provider: "openai", model: "gpt-4o",
			body: bodyOf(t, `{"model":"gpt-4o"`, 100),
			in:   100, out: defaultMaxOutput, cost: 250 + 2_000_000 + 1, priced: true,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := EstimateCeiling(prices, tc.dialect, tc.provider, tc.model, tc.body, tc.fallback)
			if c.InputTokens != tc.in || c.OutputTokens != tc.out || c.Priced != tc.priced || (tc.priced && c.CostMicroUSD != tc.cost) {
				t.Fatalf("ceiling = %+v, want in %d out %d priced %v cost %d", c, tc.in, tc.out, tc.priced, tc.cost)
			}
		})
	}
}

// A body larger than the model's context window is bounded by the window.
func TestEstimateCeilingCapsInputAtTheContext(t *testing.T) {
	prices, err := metering.ParsePrices([]byte(`version: "t"
date: "2026-12-03"
unit: usd_per_mtok
providers:
  openai:
    small:
      input_per_mtok: "1"
      cache_read_per_mtok: "0.1"
      cache_write_5m_per_mtok: "1"
      cache_write_1h_per_mtok: "1"
      output_per_mtok: "2"
      limits: {context: 1000, max_output: 50}
`))
	if err != nil {
		t.Fatal(err)
	}
	c := EstimateCeiling(prices, "openai-chat", "openai", "small", bodyOf(t, `{"model":"small"`, 5_000), false)
	if c.InputTokens != 1_000 || c.OutputTokens != 50 || c.CostMicroUSD != 1_000+100+1 {
		t.Fatalf("ceiling = %+v", c)
	}
	if _, err := metering.ParsePrices([]byte(`version: "t"
date: "2026-12-03"
unit: usd_per_mtok
providers:
  openai:
    small: {input_per_mtok: "1", cache_read_per_mtok: "0.1", cache_write_5m_per_mtok: "1", cache_write_1h_per_mtok: "1", output_per_mtok: "2", limits: {context: 10, max_output: 50}}
`)); err == nil {
		t.Fatal("a max_output above the context window was accepted")
	}
}

// The ceiling bounds what the meter charges: any usage within its token
// bounds, split across buckets in any way the request allows, costs no
// more than the reservation.
func TestCeilingBoundsMeteredCost(t *testing.T) {
	prices := metering.DefaultPrices()
	cases := []struct {
		dialect, provider, model, open string
		// writes: the request may write the cache; only5m: only for 5 min.
		writes, only5m bool
	}{
		{"anthropic-messages", "anthropic", "claude-opus-5-5", `{"model":"claude-opus-5-5","max_tokens":4000,"system":[{"cache_control":{"type":"ephemeral","ttl":"1h"}}]`, true, false},
		{"anthropic-messages", "anthropic", "claude-haiku-5-5", `{"model":"claude-haiku-5-5","max_tokens":4000,"system":[{"cache_control":{"type":"ephemeral"}}]`, true, true},
		{"openai-responses", "openai", "gpt-6-sol", `{"model":"gpt-6-sol"`, true, false},
		{"openai-chat", "openai", "gpt-6.1-sol", `{"model":"gpt-6.1-sol","max_completion_tokens":5000`, true, false},
		{"gemini", "gemini", "gemini-3.1-pro-preview", `{"contents":[]`, true, false},
	}
	r := rand.New(rand.NewPCG(1, 2))
	for _, tc := range cases {
		for _, size := range []int{500, 50_000, 150_000, 250_000, 400_000} {
			c := EstimateCeiling(prices, tc.dialect, tc.provider, tc.model, bodyOf(t, tc.open, size), false)
			if !c.Priced {
				t.Fatalf("%s: unpriced", tc.model)
			}
			for range 200 {
				in := r.Int64N(c.InputTokens + 1)
				u := metering.Usage{Output: r.Int64N(c.OutputTokens + 1)}
				// Split input across uncached, cache read and writes.
				a, b := r.Int64N(in+1), r.Int64N(in+1)
				lo, hi := min(a, b), max(a, b)
				u.InputUncached, u.CacheRead = lo, hi-lo
				switch w := in - hi; {
				case tc.writes && tc.only5m:
					u.CacheWrite5m = w
				case tc.writes:
					u.CacheWrite5m = w / 2
					u.CacheWrite1h = w - w/2
				default:
					u.InputUncached += in - hi
				}
				got, _ := prices.Cost(tc.provider, tc.model, "", u)
				if got == nil || *got > c.CostMicroUSD {
					t.Fatalf("%s %d bytes: usage %+v costs %v, above the ceiling %d", tc.model, size, u, fmtCost(got), c.CostMicroUSD)
				}
			}
		}
	}
}

func fmtCost(p *int64) string {
	if p == nil {
		return "nil"
	}
	return fmt.Sprint(*p)
}
