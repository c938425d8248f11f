package metering

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/internal/hotfile"
)

func TestDefaultPricesValid(t *testing.T) {
	p := DefaultPrices()
	if p.Version == "" || p.Date == "" {
		t.Fatalf("version %q date %q", p.Version, p.Date)
	}
	for _, want := range []struct{ provider, model string }{
		{"anthropic", "claude-opus-4-5"}, {"anthropic", "claude-opus-4-1"}, {"anthropic", "claude-sonnet-4-5"},
		{"anthropic", "claude-sonnet-4"}, {"anthropic", "claude-haiku-4-5"},
		{"openai", "gpt-4o"}, {"openai", "gpt-4o-mini"}, {"openai", "gpt-4.1"}, {"openai", "o3"}, {"openai", "o4-mini"},
		{"openai", "gpt-5"}, {"openai", "gpt-5-mini"}, {"openai", "gpt-5-codex"},
		{"gemini", "gemini-2.5-pro"}, {"gemini", "gemini-2.5-flash"}, {"gemini", "gemini-2.5-flash-lite"},
	} {
		if _, ok := p.Lookup(want.provider, want.model); !ok {
			t.Errorf("%s/%s not priced", want.provider, want.model)
		}
	}
}

// TestAnthropicCacheMultipliers pins the table to Anthropic's published
// ratios: 5m write 1.25x input, 1h write 2x, read 0.1x, in every tier of the
// pre-5 rows. The Claude 5.x rows are pinned from their sources instead:
// their reads are not 0.1x (Opus 5.5 0.05x, Fable 5.1 0.025x).
func TestAnthropicCacheMultipliers(t *testing.T) {
	p := DefaultPrices()
	for name, mp := range p.providers["anthropic"].models {
		if strings.Contains(name, "-5") && !strings.HasSuffix(name, "-4-5") {
			continue
		}
		tiers := []*Rates{&mp.Rates}
		if mp.LongContext != nil {
			tiers = append(tiers, &mp.LongContext.Rates)
		}
		for _, r := range tiers {
			if r.CacheWrite5m*4 != r.Input*5 || r.CacheWrite1h != r.Input*2 || r.CacheRead*10 != r.Input {
				t.Errorf("%s: input %d, 5m %d, 1h %d, read %d break the 1.25x/2x/0.1x ratios", name, r.Input, r.CacheWrite5m, r.CacheWrite1h, r.CacheRead)
			}
		}
	}
}

func TestCost(t *testing.T) {
	p := DefaultPrices()
	for _, tc := range []struct {
		name            string
		provider, model string
		u               Usage
		want            int64 // micro-USD, computed by hand in the comment
	}{
		{
			// 1000×3 + 2000×3.75 + 4000×6 + 10000×0.30 + 500×15 = 3000+7500+24000+3000+7500
			name: "AnthropicCacheTiers", provider: "anthropic", model: "claude-sonnet-4-5-20250929",
			u:    Usage{InputUncached: 1000, CacheWrite5m: 2000, CacheWrite1h: 4000, CacheRead: 10000, Output: 500},
			want: 45000,
		},
		{
			// Opus 4.5: 100×5 + 1000×6.25 + 1000×10 + 50000×0.5 + 2000×25 (reasoning inside output)
			name: "AnthropicReasoningNotChargedTwice", provider: "anthropic", model: "claude-opus-4-5-20251101",
			u:    Usage{InputUncached: 100, CacheWrite5m: 1000, CacheWrite1h: 1000, CacheRead: 50000, Output: 2000, Reasoning: 1500},
			want: 500 + 6250 + 10000 + 25000 + 50000,
		},
		{
			// 150000 + 60000 = 210000 input > 200k: 150000×6 + 60000×0.60 + 1000×22.50
			name: "AnthropicLongContext", provider: "anthropic", model: "claude-sonnet-4-5",
			u:    Usage{InputUncached: 150000, CacheRead: 60000, Output: 1000},
			want: 900000 + 36000 + 22500,
		},
		{
			// exactly 200000 stays in the base tier: 200000×3 + 1000×15
			name: "AnthropicAtThresholdBaseTier", provider: "anthropic", model: "claude-sonnet-4-5",
			u:    Usage{InputUncached: 200000, Output: 1000},
			want: 600000 + 15000,
		},
		{
			// 86×0.15 + 1920×0.075 + 300×0.60 = 12.9 + 144 + 180 = 336.9 → 337
			name: "OpenAICachedInput", provider: "openai", model: "gpt-4o-mini-2024-07-18",
			u:    Usage{InputUncached: 86, CacheRead: 1920, Output: 300},
			want: 337,
		},
		{
			// 10×0.15 = 1.5 → 2 (half up)
			name: "RoundsHalfUp", provider: "openai", model: "gpt-4o-mini",
			u:    Usage{InputUncached: 10},
			want: 2,
		},
		{
			// 3×0.15 = 0.45 → 0
			name: "RoundsDown", provider: "openai", model: "gpt-4o-mini",
			u:    Usage{InputUncached: 3},
			want: 0,
		},
		{
			// o4-mini: 75×1.10 + 1186×4.40 = 82.5 + 5218.4 = 5300.9 → 5301
			name: "OpenAIReasoningInsideOutput", provider: "openai", model: "o4-mini-2025-04-16",
			u:    Usage{InputUncached: 75, Output: 1186, Reasoning: 1024},
			want: 5301,
		},
		{
			// 240000 + 10000 = 250000 > 200k: 240000×2.50 + 10000×0.25 + 2000×15
			name: "GeminiLongContext", provider: "gemini", model: "gemini-2.5-pro",
			u:    Usage{InputUncached: 240000, CacheRead: 10000, Output: 2000, Reasoning: 500},
			want: 600000 + 2500 + 30000,
		},
		{
			// 100000×1.25 + 1000×10
			name: "GeminiBaseTier", provider: "gemini", model: "models/gemini-2.5-pro",
			u:    Usage{InputUncached: 100000, Output: 1000},
			want: 125000 + 10000,
		},
		{
			// (100 + 50)×0.30 + 10×2.50 = 45 + 25
			name: "GeminiToolUsePromptAsInput", provider: "gemini", model: "gemini-2.5-flash",
			u:    Usage{InputUncached: 100, InputOther: 50, Output: 10},
			want: 70,
		},
		{
			name: "NegativeCountsPriceAsZero", provider: "openai", model: "gpt-4o",
			u:    Usage{InputUncached: -5, Output: -1},
			want: 0,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, version := p.Cost(tc.provider, tc.model, "", tc.u)
			if got == nil {
				t.Fatalf("unpriced")
			}
			if *got != tc.want || version != p.Version {
				t.Errorf("cost %d µUSD (version %q), want %d (%q)", *got, version, tc.want, p.Version)
			}
		})
	}
}

func TestCostHugeUsageNoOverflow(t *testing.T) {
	mp := &ModelPrice{Rates: Rates{Input: maxPlausibleNano, CacheRead: maxPlausibleNano, CacheWrite5m: maxPlausibleNano, CacheWrite1h: maxPlausibleNano, Output: maxPlausibleNano}}
	u := Usage{InputUncached: 1 << 62, CacheRead: 1 << 62, CacheWrite5m: 1 << 62, CacheWrite1h: 1 << 62, InputOther: 1 << 62, Output: 1 << 62}
	got := mp.CostMicroUSD(u)
	// Each count clamps to 2^40; 6×2^40 tokens at $10,000/1M.
	want := int64(6) * (1 << 40) * 10_000
	if got != want {
		t.Errorf("got %d, want %d", got, want)
	}
}

func TestCostReasoningPricedApart(t *testing.T) {
	p, err := ParsePrices([]byte(`version: t1
date: "2026-01-02"
unit: usd_per_mtok
providers:
  acme:
    thinker:
      input_per_mtok: 1
      cache_read_per_mtok: 0.1
      cache_write_5m_per_mtok: 1
      cache_write_1h_per_mtok: 1
      output_per_mtok: 10
      reasoning_per_mtok: 20
`))
	if err != nil {
		t.Fatal(err)
	}
	// 600×10 + 400×20: reasoning leaves output before output is priced.
	got, _ := p.Cost("acme", "thinker", "", Usage{Output: 1000, Reasoning: 400})
	if got == nil || *got != 14000 {
		t.Errorf("got %v, want 14000", got)
	}
}

// tierModel is a price file with one model, up to its service_tiers key.
const tierModel = `version: t1
date: "2026-01-02"
unit: usd_per_mtok
providers:
  openai:
    m:
      input_per_mtok: 2
      cache_read_per_mtok: 0.2
      cache_write_5m_per_mtok: 2
      cache_write_1h_per_mtok: 2
      output_per_mtok: 10
      service_tiers:
`

// A response served in a non-standard tier is priced from that tier's row,
// and is unpriced where the model has none: never at the standard rate of a
// tier that bills differently.
func TestCostByServiceTier(t *testing.T) {
	p, err := ParsePrices([]byte(tierModel + `        flex: {input_per_mtok: 1, cache_read_per_mtok: 0.1, cache_write_5m_per_mtok: 1, cache_write_1h_per_mtok: 1, output_per_mtok: 5}
`))
	if err != nil {
		t.Fatal(err)
	}
	u := Usage{InputUncached: 1000, Output: 100}
	for _, tc := range []struct {
		tier string
		want int64 // -1: unpriced
	}{{"", 3000}, {"default", 3000}, {"auto", 3000}, {"standard", 3000}, {"flex", 1500}, {"priority", -1}, {"scale", -1}} {
		got, _ := p.Cost("openai", "m-2026-01-01", tc.tier, u)
		switch {
		case tc.want < 0 && got != nil:
			t.Errorf("tier %q: costed %d, want unpriced", tc.tier, *got)
		case tc.want >= 0 && (got == nil || *got != tc.want):
			t.Errorf("tier %q: got %v, want %d", tc.tier, got, tc.want)
		}
	}
	_, err = ParsePrices([]byte(tierModel + `        default: {input_per_mtok: 1, cache_read_per_mtok: 0.1, cache_write_5m_per_mtok: 1, cache_write_1h_per_mtok: 1, output_per_mtok: 5}
        priority: {input_per_mtok: 4}
`))
	var pe *PriceError
	want := []string{
		`providers.openai.m.service_tiers.default: "default" is the standard tier, priced by the model's own rates`,
		"providers.openai.m.service_tiers.priority.cache_read_per_mtok: is required (pin every price; none defaults)",
		"providers.openai.m.service_tiers.priority.cache_write_5m_per_mtok: is required (pin every price; none defaults)",
		"providers.openai.m.service_tiers.priority.cache_write_1h_per_mtok: is required (pin every price; none defaults)",
		"providers.openai.m.service_tiers.priority.output_per_mtok: is required (pin every price; none defaults)",
	}
	if !errors.As(err, &pe) || !reflect.DeepEqual(pe.Problems, want) {
		t.Errorf("problems:\n got %v\nwant %q", err, want)
	}
}

func TestLookup(t *testing.T) {
	p := DefaultPrices()
	for _, tc := range []struct {
		provider, model, want string // want "" means unpriced
	}{
		{"anthropic", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5"},
		{"anthropic", "claude-sonnet-4-5@20250929", "claude-sonnet-4-5"},
		{"anthropic", "claude-opus-4-20250514", "claude-opus-4"},
		{"anthropic", "claude-opus-4-1-20250805", "claude-opus-4-1"},
		{"anthropic", "claude-opus-4-5-20251101", "claude-opus-4-5"},
		{"anthropic", "claude-opus-4-7-20270101", ""},
		{"anthropic", "claude-sonnet-4-5-fast", ""},
		{"openai", "gpt-4o-2024-08-06", "gpt-4o"},
		{"openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini"},
		{"openai", "gpt-4o-audio-preview", ""},
		{"openai", "o3-pro", ""},
		{"openai", "o3-2025-04-16", "o3"},
		{"openai", "gpt-5-pro", ""},
		{"openai", "gpt-5-codex", "gpt-5-codex"},
		{"openai", "gpt-5-2025-08-07", "gpt-5"},
		{"gemini", "gemini-2.5-flash-preview-09-2025", "gemini-2.5-flash"},
		{"gemini", "gemini-2.5-flash-lite-preview-06-17", "gemini-2.5-flash-lite"},
		{"gemini", "gemini-2.5-flash-preview-tts", ""},
		{"gemini", "models/gemini-2.5-pro", "gemini-2.5-pro"},
		{"openrouter", "gpt-4o", ""},
	} {
		mp, ok := p.Lookup(tc.provider, tc.model)
		var got string
		if ok {
			for name, m := range p.providers[tc.provider].models {
				if m == mp {
					got = name
				}
			}
		}
		if got != tc.want {
			t.Errorf("Lookup(%s, %s) = %q, want %q", tc.provider, tc.model, got, tc.want)
		}
	}
	if c, v := p.Cost("openai", "gpt-9-ultra", "", Usage{Output: 1}); c != nil || v != p.Version {
		t.Errorf("unknown model costed %v (version %q); want nil, never 0", c, v)
	}
	var nilTable *PriceTable
	if c, _ := nilTable.Cost("openai", "gpt-4o", "", Usage{}); c != nil {
		t.Error("nil table priced a model")
	}
}

func TestParsePricesListsEveryProblem(t *testing.T) {
	_, err := ParsePrices([]byte(`version: ""
date: 22/11/2026
unit: usd_per_token
providers:
  Bad_Provider:
    m1:
      input_per_mtok: 3
      output_per_mtok: 0.000015
      cache_read_per_mtok: 3e-7
      cache_write_5m_per_mtok: -1
    m2:
      input_per_mtok: 1
      cache_read_per_mtok: 0.1
      cache_write_5m_per_mtok: 1
      cache_write_1h_per_mtok: 1
      output_per_mtok: 99999
      long_context:
        above_input_tokens: 0
        input_per_mtok: 2
        reasoning_per_mtok: 3
`))
	var pe *PriceError
	if !errors.As(err, &pe) {
		t.Fatalf("err = %v, want *PriceError", err)
	}
	for _, want := range []string{
		"version: is required",
		`date: "22/11/2026" is not YYYY-MM-DD`,
		`unit: must be "usd_per_mtok"`,
		"providers.Bad_Provider: provider name",
		"m1.output_per_mtok: line 8: 0.000015 USD per 1M tokens looks like a per-token price",
		`m1.cache_read_per_mtok: line 9: "3e-7" is not a non-negative decimal`,
		`m1.cache_write_5m_per_mtok: line 10: "-1" is not a non-negative decimal`,
		"m1.cache_write_1h_per_mtok: is required",
		"m2.output_per_mtok: line 16: 99999 USD per 1M tokens is implausibly large",
		"m2.long_context.above_input_tokens: must be a positive token count",
		"m2.long_context.cache_read_per_mtok: is required",
		"m2.long_context.output_per_mtok: is required",
		"m2.long_context.reasoning_per_mtok: must be set in both tiers or neither",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing problem %q in:\n%v", want, err)
		}
	}
}

func TestParsePricesRejectsUnknownFields(t *testing.T) {
	_, err := ParsePrices([]byte("version: v\ndate: \"2026-01-01\"\nunit: usd_per_mtok\nproviders:\n  a:\n    m:\n      input_per_token: 1\n"))
	if err == nil || !strings.Contains(err.Error(), "input_per_token") {
		t.Errorf("err = %v, want the unknown field named", err)
	}
}

func TestLoadPricesWithHotfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prices.yaml")
	if err := os.WriteFile(path, defaultPricesYAML, 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := hotfile.Load("prices", path, LoadPrices, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if v.Current().Version != DefaultPrices().Version {
		t.Errorf("version %q", v.Current().Version)
	}
	if _, err := LoadPrices(filepath.Join(t.TempDir(), "absent.yaml")); err == nil {
		t.Error("missing file loaded")
	}
}

func BenchmarkCost(b *testing.B) {
	p := DefaultPrices()
	u := Usage{InputUncached: 1200, CacheRead: 30000, CacheWrite5m: 2000, Output: 800}
	b.ReportAllocs()
	for b.Loop() {
		p.Cost("anthropic", "claude-sonnet-4-5-20250929", "", u)
	}
}

func TestCostClampsHandBuiltPrices(t *testing.T) {
	mp := &ModelPrice{Rates: Rates{Input: 1 << 62, Output: -1}}
	if got, want := mp.CostMicroUSD(Usage{InputUncached: 1 << 62, Output: 5}), int64(1<<40)*10_000; got != want {
		t.Errorf("got %d, want %d", got, want)
	}
}

// TestDefaultPricesCurrentModels: the models the four CLIs send by default
// today are priced and bounded, so a cost budget does not refuse them all
// (governance.md §0 item 12).
func TestDefaultPricesCurrentModels(t *testing.T) {
	p := DefaultPrices()
	for _, want := range []struct{ provider, model string }{
		{"anthropic", "claude-opus-5-5"}, {"anthropic", "claude-sonnet-5-5"}, {"anthropic", "claude-haiku-5-5"},
		{"anthropic", "claude-fable-5-1"}, {"anthropic", "claude-opus-5"}, {"anthropic", "claude-sonnet-5"},
		{"anthropic", "claude-opus-5-5-20260922"},
		{"openai", "gpt-6.1-sol"}, {"openai", "gpt-6-sol"}, {"openai", "gpt-6-luna"}, {"openai", "gpt-6-astra"},
		{"openai", "gpt-5.6-sol"}, {"openai", "gpt-5.6-terra"}, {"openai", "gpt-5.6-luna"},
		{"openai", "gpt-5.5"}, {"openai", "gpt-5.4"}, {"openai", "gpt-5.4-mini"}, {"openai", "gpt-5.4-nano"},
		{"gemini", "gemini-3.8-flash"}, {"gemini", "gemini-3.5-flash"}, {"gemini", "gemini-3.5-flash-lite"},
		{"gemini", "gemini-3.1-pro-preview"}, {"gemini", "gemini-3-flash-preview"}, {"gemini", "models/gemini-3.8-flash"},
	} {
		if _, ok := p.Lookup(want.provider, want.model); !ok {
			t.Errorf("%s/%s not priced", want.provider, want.model)
		}
		if l, ok := p.Limits(want.provider, want.model); !ok || l.Context <= 0 || l.MaxOutput <= 0 {
			t.Errorf("%s/%s limits %+v ok=%v", want.provider, want.model, l, ok)
		}
	}
	// Every built-in row carries limits: a ceiling never falls back to a guess.
	for prov, pp := range p.providers {
		for name, mp := range pp.models {
			if !mp.hasLimits {
				t.Errorf("%s/%s has no limits", prov, name)
			}
		}
	}
	if l, _ := p.Limits("openai", "gpt-6.1-sol"); l.MaxOutput != 128000 {
		t.Errorf("gpt-6.1-sol max_output %d, want 128000 (governance.md §4.1)", l.MaxOutput)
	}
	if _, ok := p.Limits("openai", "gpt-6.1-sol-mini"); ok {
		t.Error("a sibling model borrowed gpt-6.1-sol's limits")
	}
	fb, fl, ok := p.Fallback()
	if !ok || fb.Input != 5_000_000_000 || fb.Output != 25_000_000_000 || fl.MaxOutput < 128000 {
		t.Errorf("fallback %+v %+v %v, want $5/$25 and max_output >= 128k", fb, fl, ok)
	}
	for _, tc := range []struct {
		provider string
		n, want  int64
	}{{"anthropic", 3, 30_000}, {"openai", 1, 10_000}, {"gemini", 10, 140_000}} {
		if got, ok := p.ToolFeeMicroUSD(tc.provider, "web_search", tc.n); !ok || got != tc.want {
			t.Errorf("%s web_search ×%d = %d µUSD (%v), want %d", tc.provider, tc.n, got, ok, tc.want)
		}
	}
	if _, ok := p.ToolFeeMicroUSD("mistral", "web_search", 1); ok {
		t.Error("unknown provider has a tool fee")
	}
}

func TestParsePricesLimitsStrict(t *testing.T) {
	const base = "version: v\ndate: \"2026-12-03\"\nunit: usd_per_mtok\nproviders:\n  p:\n    m:\n      input_per_mtok: \"1\"\n      cache_read_per_mtok: \"1\"\n      cache_write_5m_per_mtok: \"1\"\n      cache_write_1h_per_mtok: \"1\"\n      output_per_mtok: \"1\"\n"
	for name, tc := range map[string]struct{ extra, want string }{
		"zero context":     {"      limits: {context: 0, max_output: 10}\n", "providers.p.m.limits.context"},
		"missing output":   {"      limits: {context: 10}\n", "providers.p.m.limits.max_output: is required"},
		"negative think":   {"      limits: {context: 10, max_output: 10, max_thinking: -1}\n", "max_thinking"},
		"unknown field":    {"      limits: {context: 10, max_output: 10, max_input: 3}\n", "max_input"},
		"fallback limits":  {"fallback: {input_per_mtok: \"1\", cache_read_per_mtok: \"1\", cache_write_5m_per_mtok: \"1\", cache_write_1h_per_mtok: \"1\", output_per_mtok: \"1\"}\n", "fallback.limits: is required"},
		"fallback rates":   {"fallback: {input_per_mtok: \"1\", limits: {context: 1, max_output: 1}}\n", "fallback.output_per_mtok: is required"},
		"tool fee unknown": {"tool_fees: {p: {web_fetch_per_1k: \"1\"}}\n", "web_fetch_per_1k"},
		"tool fee bad":     {"tool_fees: {p: {web_search_per_1k: \"ten\"}}\n", "tool_fees.p.web_search_per_1k"},
	} {
		_, err := ParsePrices([]byte(base + tc.extra))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to name %q", name, err, tc.want)
		}
	}
	p, err := ParsePrices([]byte(base + "      limits: {context: 10, max_output: 5}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if l, ok := p.Limits("p", "m"); !ok || l != (ModelLimits{Context: 10, MaxOutput: 5}) {
		t.Errorf("limits %+v %v", l, ok)
	}
	if _, _, ok := p.Fallback(); ok {
		t.Error("fallback without a fallback row")
	}
}
