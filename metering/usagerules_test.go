package metering

import (
	"strconv"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/registry"
)

// compatPrices prices one model under two providers at the same rates, so
// that only the usage semantics can tell the costs apart.
const compatPrices = `version: t1
date: "2026-01-02"
unit: usd_per_mtok
providers:
  anthropic:
    claude-sonnet-4-5:
      input_per_mtok: 3
      cache_read_per_mtok: 0.30
      cache_write_5m_per_mtok: 3.75
      cache_write_1h_per_mtok: 6
      output_per_mtok: 15
  compat:
    vendor/claude-sonnet-4.5:
      input_per_mtok: 3
      cache_read_per_mtok: 0.30
      cache_write_5m_per_mtok: 3.75
      cache_write_1h_per_mtok: 6
      output_per_mtok: 15
`

// withCacheInInput is a provider of dialect d that overrides its
// input_includes_cache to v.
func withCacheInInput(d *registry.Dialect, v bool) *registry.Provider {
	return &registry.Provider{Name: "compat", Dialects: []string{d.Name}, Usage: &registry.UsageOverride{InputIncludesCache: &v}}
}

// withReasoningInOutput is a provider of dialect d that overrides its
// output_includes_reasoning to v.
func withReasoningInOutput(d *registry.Dialect, v bool) *registry.Provider {
	return &registry.Provider{Name: "compat", Dialects: []string{d.Name}, Usage: &registry.UsageOverride{OutputIncludesReasoning: &v}}
}

// TestProviderUsageSemanticsOnTheSameBytes: one answer's bytes, metered as
// the dialect counts and as a provider that overrides it counts, body and
// stream. An Anthropic-compatible backend that counts cache reads inside
// input_tokens (maximhq/bifrost#5510) reports 1000 input with 800 read from
// cache: 200 are uncached, and billing all 1000 as input on top of the 800
// cache reads is the overcharge the override exists to stop.
func TestProviderUsageSemanticsOnTheSameBytes(t *testing.T) {
	prices, err := ParsePrices([]byte(compatPrices))
	if err != nil {
		t.Fatal(err)
	}
	anth := mustDialect(t, "anthropic-messages")
	chat := mustDialect(t, "openai-chat")
	for _, tc := range []struct {
		name     string
		d        *registry.Dialect
		p        *registry.Provider
		body     string
		stream   []byte
		want     Usage
		provider string // price row
		cost     int64  // micro-USD, from the rates above
	}{
		{
			name: "AnthropicNative", d: anth, p: nil,
			body:   `{"id":"msg_1","model":"claude-sonnet-4-5","usage":{"input_tokens":1000,"cache_read_input_tokens":800,"output_tokens":50}}`,
			stream: anthropicStream(1000, 800, 0, 50, "claude-sonnet-4-5"),
			want:   Usage{InputUncached: 1000, CacheRead: 800, Output: 50},
			// 1000×3 + 800×0.30 + 50×15
			provider: "anthropic", cost: 3000 + 240 + 750,
		},
		{
			// A provider without an override keeps the dialect's rules.
			name: "AnthropicProviderWithoutOverride", d: anth, p: &registry.Provider{Name: "anthropic"},
			body:     `{"id":"msg_1","model":"claude-sonnet-4-5","usage":{"input_tokens":1000,"cache_read_input_tokens":800,"output_tokens":50}}`,
			stream:   anthropicStream(1000, 800, 0, 50, "claude-sonnet-4-5"),
			want:     Usage{InputUncached: 1000, CacheRead: 800, Output: 50},
			provider: "anthropic", cost: 3000 + 240 + 750,
		},
		{
			name: "CompatCountsCacheInInput", d: anth, p: withCacheInInput(anth, true),
			body:   `{"id":"msg_1","model":"vendor/claude-sonnet-4.5","usage":{"input_tokens":1000,"cache_read_input_tokens":800,"output_tokens":50}}`,
			stream: anthropicStream(1000, 800, 0, 50, "vendor/claude-sonnet-4.5"),
			want:   Usage{InputUncached: 200, CacheRead: 800, Output: 50},
			// 200×3 + 800×0.30 + 50×15
			provider: "compat", cost: 600 + 240 + 750,
		},
		{
			// Cache writes are inside the count too: 1000 − 500 read − 300 written.
			name: "CompatCountsCacheWritesInInput", d: anth, p: withCacheInInput(anth, true),
			body:   `{"id":"msg_1","model":"vendor/claude-sonnet-4.5","usage":{"input_tokens":1000,"cache_read_input_tokens":500,"cache_creation_input_tokens":300,"output_tokens":50}}`,
			stream: anthropicStream(1000, 500, 300, 50, "vendor/claude-sonnet-4.5"),
			want:   Usage{InputUncached: 200, CacheRead: 500, CacheWrite5m: 300, Output: 50},
			// 200×3 + 500×0.30 + 300×3.75 + 50×15
			provider: "compat", cost: 600 + 150 + 1125 + 750,
		},
		{
			// The other way round: an OpenAI-compatible backend whose
			// prompt_tokens leave cached tokens out.
			name: "ChatNative", d: chat, p: nil,
			body:   `{"id":"c1","model":"m","usage":{"prompt_tokens":1000,"prompt_tokens_details":{"cached_tokens":800},"completion_tokens":50}}`,
			stream: stream(`{"id":"c1","model":"m","choices":[{"delta":{}}]}`, `{"id":"c1","model":"m","choices":[],"usage":{"prompt_tokens":1000,"prompt_tokens_details":{"cached_tokens":800},"completion_tokens":50}}`, `[DONE]`),
			want:   Usage{InputUncached: 200, CacheRead: 800, Output: 50},
		},
		{
			name: "ChatCompatLeavesCacheOut", d: chat, p: withCacheInInput(chat, false),
			body:   `{"id":"c1","model":"m","usage":{"prompt_tokens":1000,"prompt_tokens_details":{"cached_tokens":800},"completion_tokens":50}}`,
			stream: stream(`{"id":"c1","model":"m","choices":[{"delta":{}}]}`, `{"id":"c1","model":"m","choices":[],"usage":{"prompt_tokens":1000,"prompt_tokens_details":{"cached_tokens":800},"completion_tokens":50}}`, `[DONE]`),
			want:   Usage{InputUncached: 1000, CacheRead: 800, Output: 50},
		},
		{
			// A translator of Gemini that leaves reasoning out of
			// completion_tokens (router-for-me/CLIProxyAPI#5733): by OpenAI's
			// rule the 60 thinking tokens vanish.
			name: "ChatNativeReasoning", d: chat, p: nil,
			body:   `{"id":"c1","model":"m","usage":{"prompt_tokens":21,"completion_tokens":0,"completion_tokens_details":{"reasoning_tokens":60}}}`,
			stream: stream(`{"id":"c1","model":"m","choices":[],"usage":{"prompt_tokens":21,"completion_tokens":0,"completion_tokens_details":{"reasoning_tokens":60}}}`, `[DONE]`),
			want:   Usage{InputUncached: 21, Output: 0, Reasoning: 0},
		},
		{
			name: "ChatCompatLeavesReasoningOut", d: chat, p: withReasoningInOutput(chat, false),
			body:   `{"id":"c1","model":"m","usage":{"prompt_tokens":21,"completion_tokens":0,"completion_tokens_details":{"reasoning_tokens":60}}}`,
			stream: stream(`{"id":"c1","model":"m","choices":[],"usage":{"prompt_tokens":21,"completion_tokens":0,"completion_tokens_details":{"reasoning_tokens":60}}}`, `[DONE]`),
			want:   Usage{InputUncached: 21, Output: 60, Reasoning: 60},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMeterFor(tc.d, tc.p, 0)
			m.Body([]byte(tc.body))
			body := m.Settle(EndEOF)
			m = NewMeterFor(tc.d, tc.p, 0)
			for _, c := range splitChunks(tc.stream, 7) {
				m.Observe(c)
			}
			streamed := m.Settle(EndEOF)
			for what, s := range map[string]Settlement{"body": body, "stream": streamed} {
				checkSettlement(t, s)
				if s.Outcome != OutcomeOK || s.Source != SourceUpstream || s.Usage == nil || *s.Usage != tc.want {
					t.Errorf("%s: settled %s, want ok/upstream %+v", what, settlementJSON(t, s), tc.want)
					continue
				}
				if tc.provider == "" {
					continue
				}
				got, _ := prices.Cost(tc.provider, s.ModelServed, s.ServiceTier, *s.Usage)
				if got == nil || *got != tc.cost {
					t.Errorf("%s: cost of %s at %s/%s = %v, want %d", what, settlementJSON(t, s), tc.provider, s.ModelServed, got, tc.cost)
				}
			}
		})
	}
}

// TestProviderUsageSemanticsLeaveTheDialectAlone: metering one provider's
// answer with its override does not change how the next answer on the
// same dialect, from a provider without one, is metered (the compiled plan
// is shared per dialect; the semantics are not in it).
func TestProviderUsageSemanticsLeaveTheDialectAlone(t *testing.T) {
	d := mustDialect(t, "anthropic-messages")
	body := []byte(`{"usage":{"input_tokens":1000,"cache_read_input_tokens":800,"output_tokens":50}}`)
	run := func(p *registry.Provider) int64 {
		m := NewMeterFor(d, p, 0)
		m.Body(body)
		return m.Settle(EndEOF).Usage.InputUncached
	}
	if got := run(withCacheInInput(d, true)); got != 200 {
		t.Fatalf("with the override: uncached input %d, want 200", got)
	}
	if got := run(nil); got != 1000 {
		t.Errorf("after an overriding provider, the dialect's own rules give uncached input %d, want 1000", got)
	}
	if d.Usage.InputIncludesCache {
		t.Errorf("metering with an override changed the dialect's rules")
	}
}

// anthropicStream is a Messages stream whose message_start carries the
// input counts and whose message_delta carries the final output.
func anthropicStream(input, cacheRead, cacheWrite, output int64, model string) []byte {
	return stream(
		`{"type":"message_start","message":{"id":"msg_1","model":"`+model+`","usage":{"input_tokens":`+strconv.FormatInt(input, 10)+`,"cache_read_input_tokens":`+strconv.FormatInt(cacheRead, 10)+`,"cache_creation_input_tokens":`+strconv.FormatInt(cacheWrite, 10)+`,"output_tokens":1}}}`,
		`{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}`,
		`{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":`+strconv.FormatInt(output, 10)+`}}`,
		`{"type":"message_stop"}`)
}

// TestPriceRowsForVendorPrefixedModels: a compatible backend serves
// vendor-prefixed names ("anthropic/claude-sonnet-4.5"), so a failover to it
// is priced only if its rows can carry them; a "/" that does not join two
// segments is still refused.
func TestPriceRowsForVendorPrefixedModels(t *testing.T) {
	prices, err := ParsePrices([]byte(compatPrices))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		provider, model string
		ok              bool
	}{
		{"compat", "vendor/claude-sonnet-4.5", true},
		{"compat", "vendor/claude-sonnet-4.5-20250929", true}, // a snapshot of it
		{"compat", "claude-sonnet-4.5", false},                // the prefix is part of the name
		{"compat", "other/claude-sonnet-4.5", false},
		{"anthropic", "vendor/claude-sonnet-4.5", false}, // rows are per provider
	} {
		if _, ok := prices.Lookup(tc.provider, tc.model); ok != tc.ok {
			t.Errorf("Lookup(%s, %s) found=%v, want %v", tc.provider, tc.model, ok, tc.ok)
		}
	}
	for _, bad := range []string{"/claude", "vendor/", "vendor//claude", "Vendor/claude"} {
		src := strings.Replace(compatPrices, "vendor/claude-sonnet-4.5:", `"`+bad+`":`, 1)
		_, err := ParsePrices([]byte(src))
		if err == nil || !strings.Contains(err.Error(), "segments joined by '/'") {
			t.Errorf("model name %q: got %v, want it refused", bad, err)
		}
	}
}
