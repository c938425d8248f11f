package metering

import (
	"os"
	"path/filepath"
	"testing"
)

// Web search fees in micro-USD per search, worked by hand from
// prices.yaml's tool_fees (USD per 1,000): Anthropic and OpenAI $10,
// Gemini $14.
var searchFeeMicro = map[string]int64{"anthropic": 10_000, "openai": 10_000, "gemini": 14_000}

// tokenCost is what u's tokens alone cost, without any tool use.
func tokenCost(t *testing.T, provider, model string, u Usage) int64 {
	t.Helper()
	p, ok := DefaultPrices().Lookup(provider, model)
	if !ok {
		t.Fatalf("%s/%s not priced", provider, model)
	}
	u.WebSearchRequests = 0
	return p.CostMicroUSD(u)
}

// checkSearchCost: the settlement counted want searches and its price is
// its tokens' plus want fees, exactly.
func checkSearchCost(t *testing.T, provider string, s Settlement, want int64) {
	t.Helper()
	if s.Usage == nil {
		t.Fatalf("no usage: %+v", s)
	}
	if s.Usage.WebSearchRequests != want {
		t.Errorf("web searches %d, want %d (usage %+v)", s.Usage.WebSearchRequests, want, *s.Usage)
	}
	cost, _ := DefaultPrices().Cost(provider, s.ModelServed, s.ServiceTier, *s.Usage)
	if cost == nil {
		t.Fatalf("%s/%s unpriced", provider, s.ModelServed)
	}
	if w := tokenCost(t, provider, s.ModelServed, *s.Usage) + want*searchFeeMicro[provider]; *cost != w {
		t.Errorf("cost %d µUSD, want tokens + %d × %d = %d", *cost, want, searchFeeMicro[provider], w)
	}
}

// TestWebSearchStreams reads the searches of the three captures with web
// search from their streams, byte by byte as well as in one read
// (TestGolden pins the rest of each settlement): Anthropic's cumulative
// message_delta count, OpenAI's web_search_call items of action search
// (the open_page one is not a search), Gemini's non-empty grounding
// queries.
func TestWebSearchStreams(t *testing.T) {
	for _, tc := range []struct {
		name, dialect string
		want          int64
	}{
		{"anthropic-messages_web_search", "anthropic-messages", 2},
		{"openai-responses_web_search", "openai-responses", 2},
		{"gemini_web_search", "gemini", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(sseDir, tc.name+".txt"))
			if err != nil {
				t.Fatal(err)
			}
			d := mustDialect(t, tc.dialect)
			for _, chunks := range [][][]byte{oneChunk(b), byteChunks(b)} {
				s, _ := meterRun(d, 0, chunks, EndEOF, false)
				checkSettlement(t, s)
				checkSearchCost(t, priceProvider(tc.dialect), s, tc.want)
			}
		})
	}
}

// Non-streamed responses as the providers send them, trimmed of long text.
const (
	anthropicSearchBody = `{"id":"msg_01KqXb7Vz3cP9sWn2Lh5dR8T","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",
"content":[{"type":"text","text":"I'll search for that."},
{"type":"server_tool_use","id":"srvtoolu_01WYG3ziw53XMcoyKL4XcZmE","name":"web_search","input":{"query":"Go 1.26 release date"}},
{"type":"web_search_tool_result","tool_use_id":"srvtoolu_01WYG3ziw53XMcoyKL4XcZmE","content":[{"type":"web_search_result","url":"https://go.dev/doc/go1.26","title":"Go 1.26 Release Notes","encrypted_content":"EqgfCioIARgBIiQ3YTAw...","page_age":"February 11, 2026"}]},
{"type":"server_tool_use","id":"srvtoolu_01Hn8Rw2kQv5xT3mJ7pL9sYc","name":"web_search","input":{"query":"Go 1.26.1"}},
{"type":"web_search_tool_result","tool_use_id":"srvtoolu_01Hn8Rw2kQv5xT3mJ7pL9sYc","content":{"type":"web_search_tool_result_error","error_code":"unavailable"}},
{"type":"server_tool_use","id":"srvtoolu_01Pq4Zt6vB8nM2xK5wR3jL7d","name":"web_search","input":{"query":"Go 1.26.1 release"}},
{"type":"web_search_tool_result","tool_use_id":"srvtoolu_01Pq4Zt6vB8nM2xK5wR3jL7d","content":[{"type":"web_search_result","url":"https://go.dev/doc/devel/release","title":"Release History","encrypted_content":"Eo0KCioIARgBIiRj...","page_age":null}]},
{"type":"text","text":"Go 1.26 was released on February 11, 2026.","citations":[{"type":"web_search_result_location","url":"https://go.dev/doc/go1.26","title":"Go 1.26 Release Notes","encrypted_index":"EpABCioIARgB...","cited_text":"Go 1.26 is released..."}]}],
"stop_reason":"end_turn","stop_sequence":null,
"usage":{"input_tokens":6039,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":931,"server_tool_use":{"web_search_requests":2,"web_fetch_requests":0},"service_tier":"standard"}}`

	responsesSearchBody = `{"id":"resp_08a1b2c3d4e5f60718293a4b5c6d7e8f","object":"response","created_at":1765012399,"status":"completed","model":"gpt-5.1-2025-11-13",
"output":[{"id":"rs_08a1b2c3d4e5f607","type":"reasoning","summary":[]},
{"id":"ws_08a1b2c3d4e5f60718","type":"web_search_call","status":"completed","action":{"type":"search","query":"Go 1.26 release date","sources":[{"type":"url","url":"https://go.dev/doc/go1.26"}]}},
{"id":"ws_08a1b2c3d4e5f60719","type":"web_search_call","status":"completed","action":{"type":"open_page","url":"https://go.dev/doc/go1.26"}},
{"id":"ws_08a1b2c3d4e5f60720","type":"web_search_call","status":"completed","action":{"type":"find_in_page","url":"https://go.dev/doc/go1.26","pattern":"released"}},
{"id":"ws_08a1b2c3d4e5f60721","type":"web_search_call","status":"completed","action":{"type":"search","query":"Go 1.26.1"}},
{"id":"ws_08a1b2c3d4e5f60722","type":"web_search_call","status":"completed","action":{"type":"search","query":"Go 1.26.1 security"}},
{"id":"msg_08a1b2c3d4e5f607","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","annotations":[{"type":"url_citation","start_index":0,"end_index":40,"title":"Go 1.26","url":"https://go.dev/doc/go1.26"}],"text":"Go 1.26 was released in February 2026."}]}],
"service_tier":"default","tools":[{"type":"web_search","search_context_size":"medium"}],
"usage":{"input_tokens":18230,"input_tokens_details":{"cached_tokens":0},"output_tokens":377,"output_tokens_details":{"reasoning_tokens":128},"total_tokens":18607}}`

	geminiSearchBody = `{"candidates":[{"content":{"parts":[{"text":"Go 1.26 was released in February 2026."}],"role":"model"},"finishReason":"STOP","index":0,
"groundingMetadata":{"searchEntryPoint":{"renderedContent":"<div class=\"container\">...</div>"},
"groundingChunks":[{"web":{"uri":"https://vertexaisearch.cloud.google.com/grounding-api-redirect/AUZIYQF1","title":"go.dev"}}],
"groundingSupports":[{"segment":{"endIndex":38,"text":"Go 1.26 was released in February 2026."},"groundingChunkIndices":[0]}],
"webSearchQueries":["Go 1.26 release date","","Go 1.26 release notes","Go 1.26.1"]}}],
"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":19,"totalTokenCount":389,"toolUsePromptTokenCount":280,"thoughtsTokenCount":78},
"modelVersion":"gemini-3.8-flash","responseId":"3k2jaZ_eBt2qkdUPq9fL8Qk"}`
)

// TestWebSearchBodies reads the searches of non-streamed responses: an
// Anthropic message with two searches run (the errored one is not in the
// count, which Anthropic does not bill), an OpenAI response with three
// search actions among five web_search_call items, a Gemini response with
// three non-empty grounding queries, and the same as the JSON array of
// streamGenerateContent without alt=sse.
func TestWebSearchBodies(t *testing.T) {
	for _, tc := range []struct {
		name, dialect, body string
		want                int64
	}{
		{"Anthropic", "anthropic-messages", anthropicSearchBody, 2},
		{"Responses", "openai-responses", responsesSearchBody, 3},
		{"Gemini", "gemini", geminiSearchBody, 3},
		{"GeminiArray", "gemini", `[{"candidates":[{"content":{"parts":[{"text":"Go"}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":12,"totalTokenCount":12},"modelVersion":"gemini-3.8-flash"},` + geminiSearchBody + `]`, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMeter(mustDialect(t, tc.dialect), 0)
			m.Body([]byte(tc.body))
			s := m.Settle(EndEOF)
			checkSettlement(t, s)
			if s.Source != SourceUpstream || s.Outcome != OutcomeOK {
				t.Fatalf("settlement %+v", s)
			}
			checkSearchCost(t, priceProvider(tc.dialect), s, tc.want)
		})
	}
}

// TestWebSearchRules: how the counts merge across events.
func TestWebSearchRules(t *testing.T) {
	for _, tc := range []struct {
		name, dialect string
		in            []byte
		want          int64
	}{
		{
			// A message_delta without server_tool_use keeps the count an
			// earlier one gave; counts are cumulative, never added.
			name:    "AnthropicDeltaKeepsCount",
			dialect: "anthropic-messages",
			in: stream(`{"type":"message_start","message":{"id":"msg_1","model":"claude-sonnet-4-5","usage":{"input_tokens":10,"output_tokens":1,"server_tool_use":{"web_search_requests":0}}}}`,
				`{"type":"message_delta","usage":{"output_tokens":5,"server_tool_use":{"web_search_requests":3}}}`,
				`{"type":"message_delta","usage":{"output_tokens":40,"server_tool_use":{"web_search_requests":3}}}`,
				`{"type":"message_delta","usage":{"output_tokens":41}}`,
				`{"type":"message_stop"}`),
			want: 3,
		},
		{
			// Only the terminal event counts: output_item.done items are
			// the same calls again.
			name:    "ResponsesItemsCountedOnce",
			dialect: "openai-responses",
			in: stream(`{"type":"response.output_item.done","output_index":0,"item":{"id":"ws_1","type":"web_search_call","status":"completed","action":{"type":"search","query":"q"}}}`,
				`{"type":"response.completed","response":{"id":"resp_1","model":"gpt-5.1","output":[{"id":"ws_1","type":"web_search_call","status":"completed","action":{"type":"search","query":"q"}}],"usage":{"input_tokens":100,"output_tokens":10}}}`),
			want: 1,
		},
		{
			// A failed response billed its searches too.
			name:    "ResponsesFailedKeepsSearches",
			dialect: "openai-responses",
			in:      stream(`{"type":"response.failed","response":{"id":"resp_2","model":"gpt-5.1","status":"failed","output":[{"id":"ws_2","type":"web_search_call","status":"completed","action":{"type":"search","query":"q"}}],"usage":{"input_tokens":100,"output_tokens":0}}}`),
			want:    1,
		},
		{
			// Gemini repeats its grounding on later chunks: the largest
			// count is the response's, not their sum.
			name:    "GeminiRepeatedGroundingNotSummed",
			dialect: "gemini",
			in: stream(`{"candidates":[{"content":{"parts":[{"text":"a"}]},"index":0,"groundingMetadata":{"webSearchQueries":["x","y"]}}],"usageMetadata":{"promptTokenCount":5,"totalTokenCount":5}}`,
				`{"candidates":[{"content":{"parts":[{"text":"b"}]},"index":0,"finishReason":"STOP","groundingMetadata":{"webSearchQueries":["x","y"]}}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":2,"totalTokenCount":7}}`),
			want: 2,
		},
		{
			// Grounding on an early chunk only, as image models send it.
			name:    "GeminiEarlyGroundingKept",
			dialect: "gemini",
			in: stream(`{"candidates":[{"content":{"parts":[{"text":"a"}]},"index":0,"groundingMetadata":{"webSearchQueries":["x"]}}],"usageMetadata":{"promptTokenCount":5,"totalTokenCount":5}}`,
				`{"candidates":[{"content":{"parts":[{"text":"b"}]},"index":0,"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":5,"totalTokenCount":5}}`),
			want: 1,
		},
		{
			// A later chunk with an empty query list does not undo the
			// searches an earlier one reported.
			name:    "GeminiEmptyLaterGroundingKeepsCount",
			dialect: "gemini",
			in: stream(`{"candidates":[{"content":{"parts":[{"text":"a"}]},"index":0,"groundingMetadata":{"webSearchQueries":["x","y"]}}],"usageMetadata":{"promptTokenCount":5,"totalTokenCount":5}}`,
				`{"candidates":[{"content":{"parts":[{"text":"b"}]},"index":0,"finishReason":"STOP","groundingMetadata":{"webSearchQueries":[]}}],"usageMetadata":{"promptTokenCount":5,"totalTokenCount":5}}`),
			want: 2,
		},
		{
			// An absurd count is clamped like a token count.
			name:    "HostileCountClamped",
			dialect: "anthropic-messages",
			in: stream(`{"type":"message_start","message":{"usage":{"input_tokens":1,"output_tokens":1}}}`,
				`{"type":"message_delta","usage":{"output_tokens":2,"server_tool_use":{"web_search_requests":99999999999999999999}}}`,
				`{"type":"message_stop"}`),
			want: maxTokenCount,
		},
		{
			name:    "NegativeCountIsZero",
			dialect: "anthropic-messages",
			in: stream(`{"type":"message_start","message":{"usage":{"input_tokens":1,"output_tokens":1}}}`,
				`{"type":"message_delta","usage":{"output_tokens":2,"server_tool_use":{"web_search_requests":-4}}}`,
				`{"type":"message_stop"}`),
			want: 0,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, chunks := range [][][]byte{oneChunk(tc.in), byteChunks(tc.in)} {
				s, _ := meterRun(mustDialect(t, tc.dialect), 0, chunks, EndEOF, false)
				checkSettlement(t, s)
				if s.Usage == nil || s.Usage.WebSearchRequests != tc.want {
					t.Fatalf("settlement %s, want %d web searches", settlementJSON(t, s), tc.want)
				}
			}
		})
	}
}

// TestWebSearchNeedsUsage: searches are recorded with usage; a stream cut
// before any usage has neither (usage missing, never a silent zero).
func TestWebSearchNeedsUsage(t *testing.T) {
	s := settle(t, "openai-responses", stream(`{"type":"response.output_item.done","output_index":0,"item":{"id":"ws_1","type":"web_search_call","status":"completed","action":{"type":"search","query":"q"}}}`), EndUpstreamError)
	if s.Source != SourceMissing || s.Usage != nil {
		t.Errorf("settlement %s", settlementJSON(t, s))
	}
}

// TestCostToolFees: Cost adds each tool bucket's fee; a provider whose fee
// the table does not know leaves the request unpriced rather than free of
// its searches.
func TestCostToolFees(t *testing.T) {
	p := DefaultPrices()
	u := Usage{InputUncached: 100_000, Output: 100_000}
	if base, _ := p.Cost("anthropic", "claude-sonnet-4-5", "", u); base == nil || *base != 1_800_000 {
		t.Fatalf("base cost %v, want $0.30 + $1.50", base)
	}
	u.WebSearchRequests = 7
	if c, _ := p.Cost("anthropic", "claude-sonnet-4-5", "", u); c == nil || *c != 1_870_000 {
		t.Errorf("7 searches: %v µUSD, want 1,870,000", c)
	}
	if c, _ := p.Cost("gemini", "gemini-3.8-flash", "", Usage{WebSearchRequests: 1000}); c == nil || *c != 14_000_000 {
		t.Errorf("1,000 grounding queries: %v µUSD, want $14", c)
	}
	custom, err := ParsePrices([]byte(`version: "t"
date: "2026-12-03"
unit: usd_per_mtok
providers:
  acme:
    m: {input_per_mtok: "1", cache_read_per_mtok: "1", cache_write_5m_per_mtok: "1", cache_write_1h_per_mtok: "1", output_per_mtok: "1"}
`))
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := custom.Cost("acme", "m", "", Usage{InputUncached: 10, WebSearchRequests: 1}); c != nil {
		t.Errorf("search without a fee priced at %d", *c)
	}
	if c, _ := custom.Cost("acme", "m", "", Usage{InputUncached: 1_000_000}); c == nil || *c != 1_000_000 {
		t.Errorf("no searches: %v", c)
	}
}
