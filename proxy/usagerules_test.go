package proxy

import (
	"strings"
	"testing"

	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// TestProviderUsageOverrideMetersThroughTheProxy: the same provider bytes,
// input_tokens 1000 with 800 cache reads, are metered and priced as the
// dialect counts (Anthropic: input excludes cache) and, on a provider whose
// harnesses.yaml entry says input_includes_cache, as that backend counts:
// 200 uncached at the input rate, 800 at the cache-read rate.
func TestProviderUsageOverrideMetersThroughTheProxy(t *testing.T) {
	prices, err := metering.ParsePrices([]byte(`version: t1
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
`))
	if err != nil {
		t.Fatal(err)
	}
	// What the fake writes into the dialect's fields, whatever they mean.
	sent := upstreamtest.Usage{InputUncached: 1000, CacheRead: 800, Output: 50}
	override := func(y string) string {
		// The first x-api-key provider is anthropic's.
		if !strings.Contains(y, "    auth: x-api-key\n") {
			t.Fatal("harnesses.yaml has no x-api-key provider")
		}
		return strings.Replace(y, "    auth: x-api-key\n", "    auth: x-api-key\n    usage: {input_includes_cache: true}\n", 1)
	}
	for _, tc := range []struct {
		name string
		edit func(string) string
		want metering.Usage
		cost int64 // micro-USD at the rates above
	}{
		{"DialectSemantics", nil, metering.Usage{InputUncached: 1000, CacheRead: 800, Output: 50}, 1000*3 + 240 + 50*15},
		{"ProviderOverride", override, metering.Usage{InputUncached: 200, CacheRead: 800, Output: 50}, 200*3 + 240 + 50*15},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{fake: upstreamtest.Config{Usage: sent}, registryEdit: tc.edit, pricer: prices})
			tok := e.token("ws-1", "proj-1", "user-1", "")
			for _, stream := range []bool{false, true} {
				body := `{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`
				if stream {
					body = `{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}`
				}
				resp := e.do("POST", "/anthropic/v1/messages", tok, body, "anthropic-version", "2023-06-01")
				got := readAll(t, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Fatalf("stream=%v: status %d: %s", stream, resp.StatusCode, got)
				}
				if !strings.Contains(string(got), `"input_tokens":1000`) {
					t.Fatalf("stream=%v: the provider did not send input_tokens 1000: %s", stream, got)
				}
				rec := e.record(resp)
				if rec.Provider != "anthropic" || rec.Usage == nil || *rec.Usage != tc.want {
					t.Errorf("stream=%v: record provider %s usage %+v, want anthropic %+v", stream, rec.Provider, rec.Usage, tc.want)
				}
				if rec.CostMicroUSD == nil {
					t.Errorf("stream=%v: unpriced, want %d micro-USD", stream, tc.cost)
				} else if *rec.CostMicroUSD != tc.cost {
					t.Errorf("stream=%v: cost %d micro-USD, want %d", stream, *rec.CostMicroUSD, tc.cost)
				}
			}
		})
	}
}
