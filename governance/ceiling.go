package governance

import (
	"bytes"
	"strings"
	"unsafe"

	"github.com/tidwall/gjson"

	"github.com/tollgate/tollgate/metering"
)

// The worst case a request can cost (governance.md §4.1). Every choice here
// errs high: a ceiling that guesses low lets a hard budget pass its limit.

// Ceiling is an upper bound on what a request can use and cost.
type Ceiling struct {
	InputTokens  int64
	OutputTokens int64
	// WebSearches are the server-side searches the bound allows for: their
	// fees in CostMicroUSD and their results in InputTokens.
	WebSearches int64
	// CostMicroUSD is the cost bound; valid only if Priced.
	CostMicroUSD int64
	Priced       bool
}

// Tokens is the token bound (input + output), what a token budget reserves.
func (c Ceiling) Tokens() int64 { return c.InputTokens + c.OutputTokens }

const (
	// defaultMaxOutput bounds output when neither the request, the model's
	// row nor a fallback row says: the largest max_output in prices.yaml.
	defaultMaxOutput = 131072
	// anthropicToolOverhead is the tool-use system prompt Anthropic adds to
	// a request that declares tools, not in the body (§4.1: ≤ ~1k tokens).
	anthropicToolOverhead = 1024
	// defaultToolCalls is how many server-side searches a request declaring
	// a search tool without a max_uses is assumed to make. Nothing in the
	// body bounds it; Anthropic pauses a server-tool loop after about 10
	// iterations (pause_turn), and OpenAI and Gemini publish no bound.
	defaultToolCalls = 10
	// searchInputTokens is the input one server-side search adds (its
	// results), which the body does not show: the fixed 8,000-token block
	// OpenAI bills mini models per call (governance.md §7). An allowance,
	// not a proven bound: result sizes are not published.
	searchInputTokens = 8000
	// maxCopies caps n / candidateCount (OpenAI allows n ≤ 128) so that a
	// hostile value cannot overflow the products.
	maxCopies = 128
)

// EstimateCeiling bounds a request to model on provider in dialect (the
// registry's dialect name: anthropic-messages, openai-chat,
// openai-responses, gemini; others are bounded by the generic rule) from its
// body: input ≤ body bytes capped by the context window, output from the
// request's maximum (× n / candidateCount) else the model's maximum output,
// priced at the highest input rate that could apply and the output rate,
// long-context tier and server-tool fees included. fallback prices a model
// the table does not know at the table's fallback rates.
func EstimateCeiling(prices *metering.PriceTable, dialect, provider, model string, body []byte, fallback bool) Ceiling {
	price, priced := prices.Lookup(provider, model)
	lim, hasLim := prices.Limits(provider, model)
	fbPrice, fbLim, hasFB := prices.Fallback()
	if !priced && fallback && hasFB {
		price, priced, lim, hasLim = fbPrice, true, fbLim, true
	}
	if !hasLim && hasFB {
		// A priced row without limits is bounded by the fallback's, which
		// are the largest in the built-in table.
		lim, hasLim = fbLim, true
	}
	if !hasLim {
		lim = metering.ModelLimits{Context: int64(len(body)) + anthropicToolOverhead, MaxOutput: defaultMaxOutput}
	}

	// Tokens ≤ bytes is the only safe bound (§4.1 "Bytes per token").
	input := int64(len(body))
	var output, searches int64
	// inputRate picks the synthetic bucket the input ceiling is priced in.
	inputRate := rateMax
	var tier string
	// fileID is whether body names an uploaded file, once read.
	var fileID, fileIDRead bool
	if dialect != "openai-chat" && dialect != "anthropic-messages" {
		tier = gjson.GetBytes(body, "service_tier").String()
	}
	switch dialect {
	case "anthropic-messages":
		// One pass over the top level, as for chat: Claude Code's bodies
		// are tens of KB, with max_tokens after the tools.
		f := anthropicFields(body)
		tier = f.tier.String()
		output = positive(f.maxTokens, lim.MaxOutput)
		inputRate = rateInput
		var cacheControl bool
		cacheControl, fileID = markers(body)
		fileIDRead = true
		if cacheControl {
			inputRate = rate5m
			if hasKeyString(body, "ttl", "1h") {
				inputRate = rate1h
			}
		}
		if nonEmptyArray(f.tools) {
			input += anthropicToolOverhead
		}
		if mayNameWebSearch(f.tools.Raw) {
			f.tools.ForEach(func(_, t gjson.Result) bool {
				if typ := t.Get("type").String(); strings.HasPrefix(typ, "web_search") {
					searches += positive(t.Get("max_uses"), defaultToolCalls)
				}
				return true
			})
		}
		if tier == "standard_only" {
			tier = ""
		}
		if f.speed.String() == "fast" {
			tier = "fast"
		}
	case "openai-chat":
		// Every governed chat request comes here: one pass over the top
		// level instead of a gjson.Get per field (each absent field was a
		// full scan). The first occurrence of a key wins, as with Get.
		f := chatFields(body)
		out := f.maxCompletion
		if !out.Exists() || out.Type == gjson.Null {
			out = f.maxTokens
		}
		tier = f.tier.String()
		output = positive(out, lim.MaxOutput) * copies(f.n)
		if f.webSearch {
			searches += defaultToolCalls
		}
	case "openai-responses":
		output = positive(gjson.GetBytes(body, "max_output_tokens"), lim.MaxOutput)
		if nonEmpty(gjson.GetBytes(body, "previous_response_id")) || nonEmpty(gjson.GetBytes(body, "conversation")) {
			// Server-side state the body does not show: anything up to the window.
			input = lim.Context
		}
		gjson.GetBytes(body, "tools").ForEach(func(_, t gjson.Result) bool {
			if strings.HasPrefix(t.Get("type").String(), "web_search") {
				searches += defaultToolCalls
			}
			return true
		})
	case "gemini":
		gc := gjson.GetBytes(body, "generationConfig")
		output = positive(gc.Get("maxOutputTokens"), lim.MaxOutput)
		// Thinking is added on top of the cap: whether a model counts it
		// inside maxOutputTokens is not documented for every model, so the
		// ceiling assumes it does not. A budget of -1 (dynamic) or none
		// means the model's maximum; 0 turns thinking off.
		switch tb := gc.Get("thinkingConfig.thinkingBudget"); {
		case tb.Type == gjson.Number && tb.Int() >= 0:
			output += min(tb.Int(), maxTokens)
		default:
			output += lim.MaxThinking
		}
		output *= copies(gc.Get("candidateCount"))
		if nonEmpty(gjson.GetBytes(body, "cachedContent")) {
			input = lim.Context
		}
		gjson.GetBytes(body, "tools").ForEach(func(_, t gjson.Result) bool {
			if t.Get("googleSearch").Exists() || t.Get("google_search").Exists() || t.Get("googleSearchRetrieval").Exists() {
				searches += defaultToolCalls
			}
			return true
		})
	default:
		output = lim.MaxOutput
	}
	searches = min(searches, maxTokens/searchInputTokens)
	input += searches * searchInputTokens
	if !fileIDRead {
		fileID = bytes.Contains(body, []byte(`"file_id"`))
	}
	if fileID {
		// An uploaded file is billed at its tokens, not at its id's bytes.
		input = lim.Context
	}
	input = min(input, lim.Context)
	c := Ceiling{InputTokens: input, OutputTokens: output, WebSearches: searches}
	if !priced {
		return c
	}
	if !metering.StandardServiceTier(tier) {
		// A tier the table has no row for is unpriced, as the meter does.
		if price = price.ServiceTiers[tier]; price == nil {
			return c
		}
	}
	cost := price.CeilMicroUSD(ceilingUsage(price, input, output, inputRate))
	if searches > 0 {
		fee, ok := prices.ToolFeeMicroUSD(provider, "web_search", searches)
		if !ok {
			return c
		}
		cost += fee
	}
	c.CostMicroUSD, c.Priced = cost, true
	return c
}

// maxTokens clamps a count read from a body so products stay in range.
const maxTokens = 1 << 30

type inputRateKind int

const (
	rateMax inputRateKind = iota
	rateInput
	rate5m
	rate1h
)

// ceilingUsage is the usage the ceiling prices: all input in the bucket with
// the rate chosen (for rateMax the dearest of input and both writes of the
// tier the input ceiling selects), all output at the dearer of output and
// reasoning. The input total alone picks the long-context tier, so the tier
// is the one the whole input ceiling falls in.
func ceilingUsage(p *metering.ModelPrice, input, output int64, kind inputRateKind) metering.Usage {
	u := metering.Usage{Output: output}
	r := p.RatesFor(metering.Usage{InputUncached: input})
	if kind == rateMax {
		kind = rateInput
		if r.CacheWrite5m > r.Input {
			kind = rate5m
		}
		if r.CacheWrite1h > max(r.Input, r.CacheWrite5m) {
			kind = rate1h
		}
	}
	switch kind {
	case rate5m:
		u.CacheWrite5m = input
	case rate1h:
		u.CacheWrite1h = input
	default:
		u.InputUncached = input
	}
	if r.ReasoningApart && r.Reasoning > r.Output {
		u.Reasoning = output
	}
	return u
}

// positive reads a positive token count, else def (absent, null, zero,
// negative or not a number: the provider then applies the model's maximum).
func positive(r gjson.Result, def int64) int64 {
	if r.Type == gjson.Number {
		if n := r.Int(); n > 0 {
			return min(n, maxTokens)
		}
	}
	return def
}

func copies(r gjson.Result) int64 { return min(positive(r, 1), maxCopies) }

func nonEmpty(r gjson.Result) bool {
	switch r.Type {
	case gjson.Null, gjson.False:
		return false
	case gjson.String:
		return r.Str != ""
	}
	return r.Exists()
}

// hasKeyString reports whether body holds "key" : "val" anywhere, spaces
// allowed around the colon. A match inside a string value only raises the
// ceiling, so a byte scan is safe where a full parse would cost more.
func hasKeyString(body []byte, key, val string) bool {
	k := []byte(`"` + key + `"`)
	for i := 0; ; {
		j := bytes.Index(body[i:], k)
		if j < 0 {
			return false
		}
		rest := bytes.TrimLeft(body[i+j+len(k):], " \t\r\n")
		if len(rest) > 0 && rest[0] == ':' {
			rest = bytes.TrimLeft(rest[1:], " \t\r\n")
			if bytes.HasPrefix(rest, []byte(`"`+val+`"`)) {
				return true
			}
		}
		i += j + len(k)
	}
}

// markers reports whether body contains "cache_control" and "file_id"
// (quotes included), as two bytes.Contains would, in one pass: each has
// one underscore at a fixed offset, and an underscore is rarer in a body
// than the quote both begin with, on which bytes.Index keeps stopping
// (6 and 10 us on a 62 KB Claude Code body). A body dense with
// underscores has the rest searched with bytes.Contains instead, so no
// body costs much more than the two searches.
func markers(body []byte) (cacheControl, fileID bool) {
	const cc, fid = `"cache_control"`, `"file_id"`
	const ccAt, fidAt = 6, 5 // the underscore's offset in each
	budget := len(body)/64 + 16
	i := 0
	for ; !(cacheControl && fileID); i++ {
		j := bytes.IndexByte(body[i:], '_')
		if j < 0 {
			return cacheControl, fileID
		}
		if budget--; budget < 0 {
			break
		}
		i += j
		if !cacheControl && i >= ccAt && i-ccAt+len(cc) <= len(body) && string(body[i-ccAt:i-ccAt+len(cc)]) == cc {
			cacheControl = true
		}
		if !fileID && i >= fidAt && i-fidAt+len(fid) <= len(body) && string(body[i-fidAt:i-fidAt+len(fid)]) == fid {
			fileID = true
		}
	}
	if cacheControl && fileID {
		return true, true
	}
	// Every underscore before i was looked at, and no marker has one before
	// its own, so one not seen yet starts at i or later.
	if !cacheControl {
		cacheControl = bytes.Contains(body[i:], []byte(cc))
	}
	if !fileID {
		fileID = bytes.Contains(body[i:], []byte(fid))
	}
	return cacheControl, fileID
}

// PacingTokens is the input estimate a TPM limit reserves (about 3.5 bytes
// a token), corrected to the actual count when the request ends.
func PacingTokens(body []byte) int64 { return int64(len(body)*2/7) + 1 }

// topFields reads the first occurrence (gjson.Get's rule) of each of keys
// at the top level of body into out, in one pass that stops once every key
// is seen: a gjson.Get per field was a walk of the whole top level for each
// field absent or late (Claude Code sends max_tokens after its tools). The
// results are views of body, not copies (GetBytes clones each, 34 KB for a
// Claude Code tools array): nothing read from them may outlive the
// caller's use of body. A key's unescaped name is matched, as Get does.
// (chatFields keeps its own switch: on a 70-byte chat body this loop
// measured 12 ns slower, on the path of every governed chat request.)
func topFields(body []byte, keys []string, out []gjson.Result) {
	root := gjson.Parse(unsafe.String(unsafe.SliceData(body), len(body)))
	if !root.IsObject() {
		return
	}
	var seen uint
	all := uint(1)<<len(keys) - 1
	root.ForEach(func(k, v gjson.Result) bool {
		for i, key := range keys {
			if seen&(1<<i) == 0 && k.Str == key {
				out[i], seen = v, seen|1<<i
				break
			}
		}
		return seen != all
	})
}

// chatOpts are the top-level fields of an OpenAI chat body the ceiling
// reads.
type chatOpts struct {
	tier, maxCompletion, maxTokens, n gjson.Result
	webSearch                         bool
	seen                              uint8
}

// chatFields reads chatOpts in one pass, keeping each key's first
// occurrence (gjson.Get's rule) and stopping once all are seen.
func chatFields(body []byte) (f chatOpts) {
	const all = 1<<5 - 1
	// A view, not ParseBytes's copy of the body (a copy per request,
	// as large as the body): the body is not written during the call, and
	// what is kept is cloned below, as gjson.GetBytes does.
	root := gjson.Parse(unsafe.String(unsafe.SliceData(body), len(body)))
	if !root.IsObject() {
		return f
	}
	root.ForEach(func(k, v gjson.Result) bool {
		var bit uint8
		var dst *gjson.Result
		switch k.String() {
		case "service_tier":
			bit, dst = 1, &f.tier
		case "max_completion_tokens":
			bit, dst = 2, &f.maxCompletion
		case "max_tokens":
			bit, dst = 4, &f.maxTokens
		case "n":
			bit, dst = 8, &f.n
		case "web_search_options":
			bit, f.webSearch = 16, true
		}
		if dst != nil && f.seen&bit == 0 {
			v.Raw, v.Str = strings.Clone(v.Raw), strings.Clone(v.Str)
			*dst = v
		}
		f.seen |= bit
		return f.seen != all
	})
	return f
}

// anthropicOpts are the top-level fields of an Anthropic Messages body the
// ceiling reads: the rest of what it needs (cache_control, a 1h ttl,
// file_id) is a substring anywhere in the body.
type anthropicOpts struct {
	tier, maxTokens, tools, speed gjson.Result
}

var anthropicKeys = []string{"service_tier", "max_tokens", "tools", "speed"}

// anthropicFields reads anthropicOpts in one pass (topFields).
func anthropicFields(body []byte) anthropicOpts {
	var r [4]gjson.Result
	topFields(body, anthropicKeys, r[:])
	return anthropicOpts{tier: r[0], maxTokens: r[1], tools: r[2], speed: r[3]}
}

// nonEmptyArray reports whether r is an array with an element, as
// len(r.Array()) > 0 does for an array, without building the slice.
func nonEmptyArray(r gjson.Result) bool {
	if !r.IsArray() {
		return false
	}
	found := false
	r.ForEach(func(_, _ gjson.Result) bool {
		found = true
		return false
	})
	return found
}

// mayNameWebSearch reports whether a tools value can hold a tool whose
// unescaped "type" starts with web_search: only if its raw text has that
// text, or a \u escape that could spell it. Claude Code's tools are 30 KB
// of custom tools without a type, which a Get per tool would walk.
func mayNameWebSearch(raw string) bool {
	return strings.Contains(raw, "web_search") || strings.Contains(raw, `\u`)
}
