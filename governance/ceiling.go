package governance

import (
	"bytes"

	"github.com/tidwall/gjson"

	"github.com/tollgate/tollgate/metering"
)

// The worst case a request can cost (governance.md §4.1). A reservation
// that guesses low lets concurrency overshoot a hard budget, so every
// choice here errs high: input is bounded by the body's bytes (a byte-level
// BPE emits at least one byte per token; Claude's and Gemini's tokenizers
// are unpublished, and bytes/2 or /4 is not safe for CJK, digits or hex),
// priced at the dearest rate input could be billed at (cache writes cost
// more than uncached input); output is the request's own maximum, else the
// model's, priced at the dearest output rate.

// Ceiling is an upper bound on what a request can use and cost.
type Ceiling struct {
	InputTokens  int64
	OutputTokens int64
	// CostMicroUSD is the cost bound; valid only if Priced.
	CostMicroUSD int64
	Priced       bool
}

// Tokens is the token bound (input + output), what a token budget reserves.
func (c Ceiling) Tokens() int64 { return c.InputTokens + c.OutputTokens }

// Bounds used when the price table does not know a model's limits. They
// are high on purpose: a ceiling must never guess low.
const (
	// defaultMaxOutput is the output bound of a request that names no
	// maximum for a model whose maximum is unknown: above every current
	// model's (Claude 128k, GPT-6.x 128k, Gemini 64k plus thinking).
	defaultMaxOutput = 200_000
	// defaultContext caps the input bound of a request that pulls
	// server-side state (previous_response_id, cachedContent) for a model
	// whose context window is unknown.
	defaultContext = 2_000_000
	// serverStateTokens is added when a request pulls server-side state the
	// body does not bound (Responses previous_response_id or conversation,
	// Gemini cachedContent): the context window, else defaultContext.
	serverStateTokens = defaultContext
	// toolOverheadTokens covers the tool-use system prompt providers add
	// (Anthropic documents a few hundred tokens).
	toolOverheadTokens = 1_000
	// maxChoices bounds n / candidateCount as read from the body; providers
	// cap it lower.
	maxChoices = 128
)

// fallbackPrice is the price of a model the table does not know under a
// budget with unpriced: fallback, the Claude apps gateway's convention for
// unknown models ($5 input, $25 output per 1M tokens), with cache writes at
// twice input as Anthropic's 1h write.
var fallbackPrice = &metering.ModelPrice{Rates: metering.Rates{
	Input:        5_000_000_000,
	CacheRead:    5_000_000_000,
	CacheWrite5m: 10_000_000_000,
	CacheWrite1h: 10_000_000_000,
	Output:       25_000_000_000,
}}

// EstimateCeiling bounds a request to model on provider in dialect (the
// registry's dialect name: anthropic-messages, openai-chat,
// openai-responses, gemini; others are bounded by the generic rule) from its
// body: input ≤ body bytes capped by the context window, output from the
// request's maximum (× n / candidateCount) else the model's maximum output,
// priced at the highest input rate that could apply and the output rate,
// long-context tier included. fallback prices a model the table does not
// know at fallback rates.
func EstimateCeiling(prices *metering.PriceTable, dialect, provider, model string, body []byte, fallback bool) Ceiling {
	lim := modelLimits(prices, provider, model)
	input := int64(len(body))
	if lim.Context > 0 {
		input = min(input, lim.Context)
	}
	var out, choices int64 = 0, 1
	tier := ""
	serverState := false
	// writes are the cache-write rates input may be billed at: both,
	// except where the body shows which (Anthropic writes only at
	// cache_control breakpoints, for 1 h only when asked).
	writes := write5m | write1h
	switch dialect {
	case "anthropic-messages":
		writes = 0
		if bytes.Contains(body, []byte(`"cache_control"`)) {
			writes = write5m
			if bytes.Contains(body, []byte(`"1h"`)) {
				writes |= write1h
			}
		}
		out = positive(gjson.GetBytes(body, "max_tokens"))
		if gjson.GetBytes(body, "tools").IsArray() {
			input += toolOverheadTokens
		}
		tier = gjson.GetBytes(body, "service_tier").Str
		if tier == "auto" || tier == "standard_only" {
			tier = ""
		}
	case "openai-chat":
		out = positive(gjson.GetBytes(body, "max_completion_tokens"))
		if out == 0 {
			out = positive(gjson.GetBytes(body, "max_tokens"))
		}
		choices = max(1, min(positive(gjson.GetBytes(body, "n")), maxChoices))
		tier = gjson.GetBytes(body, "service_tier").Str
	case "openai-responses":
		out = positive(gjson.GetBytes(body, "max_output_tokens"))
		tier = gjson.GetBytes(body, "service_tier").Str
		serverState = gjson.GetBytes(body, "previous_response_id").Str != "" || gjson.GetBytes(body, "conversation").Exists()
	case "gemini":
		gc := gjson.GetBytes(body, "generationConfig")
		out = positive(gc.Get("maxOutputTokens"))
		choices = max(1, min(positive(gc.Get("candidateCount")), maxChoices))
		if out == 0 {
			// Gemini CLI sends no maximum; thinking is billed as output on
			// top of the visible answer.
			out = lim.MaxOutput + positive(gc.Get("thinkingConfig.thinkingBudget"))
		}
		serverState = gjson.GetBytes(body, "cachedContent").Str != ""
	}
	switch {
	case out == 0:
		out = lim.MaxOutput
	case lim.known && dialect != "gemini" && out > lim.MaxOutput:
		// A maximum above what the model can produce: the model's bounds it.
		out = lim.MaxOutput
	}
	if serverState {
		input += cmpPositive(lim.Context, serverStateTokens)
	}
	c := Ceiling{InputTokens: input, OutputTokens: out * choices}

	p, ok := prices.Lookup(provider, model)
	if !ok {
		if !fallback {
			return c
		}
		p = fallbackPrice
	}
	if !metering.StandardServiceTier(tier) {
		tp, ok := p.ServiceTiers[tier]
		if !ok {
			return c // billed in a tier the table does not price
		}
		p = tp
	}
	c.CostMicroUSD, c.Priced = ceilingCost(p, c.InputTokens, c.OutputTokens, writes), true
	return c
}

// ceilingCost prices input tokens at the dearest input rate of the tier
// they select (long-context when the input bound crosses its threshold) and
// output at the dearest output rate, with the price table's own exact
// arithmetic, rounded up.
func ceilingCost(p *metering.ModelPrice, input, output int64, writes cacheWrites) int64 {
	u := metering.Usage{InputUncached: input}
	r := p.RatesFor(u)
	best := r.Input
	if writes&write5m != 0 && r.CacheWrite5m > best {
		best, u = r.CacheWrite5m, metering.Usage{CacheWrite5m: input}
	}
	if writes&write1h != 0 && r.CacheWrite1h > best {
		u = metering.Usage{CacheWrite1h: input}
	}
	u.Output = output
	if r.ReasoningApart && r.Reasoning > r.Output {
		u.Reasoning = output
	}
	// CostMicroUSD rounds half up; one micro-dollar more makes it a bound.
	return p.CostMicroUSD(u) + 1
}

// cacheWrites says which cache-write rates a request's input may be
// billed at.
type cacheWrites uint8

const (
	write5m cacheWrites = 1 << iota
	write1h
)

// limits is what the price table says of a model's context and output,
// with the defaults when it says nothing.
type limits struct {
	Context, MaxOutput int64
	known              bool
}

func modelLimits(prices *metering.PriceTable, provider, model string) limits {
	if p, ok := prices.Lookup(provider, model); ok && p.Limits.MaxOutput > 0 {
		return limits{Context: p.Limits.Context, MaxOutput: p.Limits.MaxOutput, known: true}
	}
	return limits{MaxOutput: defaultMaxOutput}
}

// positive reads a JSON number as a non-negative whole number (0 when
// absent, negative or not a number).
func positive(r gjson.Result) int64 {
	if r.Type != gjson.Number || r.Num <= 0 {
		return 0
	}
	if r.Num > 1e12 {
		return 1e12
	}
	return int64(r.Num)
}

func cmpPositive(a, b int64) int64 {
	if a > 0 {
		return a
	}
	return b
}

// PacingTokens is the input estimate a TPM limit reserves (about 3.5 bytes
// a token), corrected to the actual count when the request ends.
func PacingTokens(body []byte) int64 { return int64(len(body)*2/7) + 1 }
