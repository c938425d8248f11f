package metering

import (
	"bytes"
	_ "embed"
	"fmt"
	"math/bits"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Price bounds, each with its reason.
const (
	// priceUnit is the only unit a price file may declare. Prices entered in
	// the wrong unit ($/1M read as $/token) are a recurring billing bug
	// (BerriAI/litellm#20615, maximhq/bifrost#5243), so the file states it.
	priceUnit = "usd_per_mtok"
	// minPlausibleNano: a non-zero price under $0.001 per 1M tokens is almost
	// certainly a per-token price typed into a per-1M field.
	minPlausibleNano = 1_000_000
	// maxPlausibleNano: $10,000 per 1M tokens is far above any list price
	// (the dearest are in the hundreds) and keeps cost products in range.
	maxPlausibleNano = 10_000 * 1_000_000_000
	// femtoPerMicro converts the internal sum (tokens × nano-USD per 1M
	// tokens, that is units of 1e-15 USD) to micro-USD.
	femtoPerMicro = 1_000_000_000
)

//go:embed prices.yaml
var defaultPricesYAML []byte

// NanoUSDPerMTok is a price in billionths of a US dollar per one million
// tokens: $3 per 1M tokens is 3_000_000_000. The unit is in the type so it
// cannot be mistaken for a per-token price.
type NanoUSDPerMTok int64

// Rates prices each usage bucket once (wire-formats.md §0): input_other is
// charged at Input, cache reads only at CacheRead (never again as input), and
// reasoning only as part of output unless ReasoningApart.
type Rates struct {
	Input        NanoUSDPerMTok
	CacheRead    NanoUSDPerMTok
	CacheWrite5m NanoUSDPerMTok
	CacheWrite1h NanoUSDPerMTok
	Output       NanoUSDPerMTok
	// Reasoning is the price of reasoning tokens when ReasoningApart is set;
	// they are then taken out of output before output is priced.
	Reasoning      NanoUSDPerMTok
	ReasoningApart bool
}

// LongContext is a price tier that replaces a model's base Rates when total
// input (uncached, cache reads and writes, other) exceeds AboveInputTokens.
type LongContext struct {
	AboveInputTokens int64
	Rates
}

// ModelPrice is one model's prices.
type ModelPrice struct {
	Rates
	// LongContext is nil for models with one tier.
	LongContext *LongContext
	// ServiceTiers prices responses the provider served in a non-standard
	// service tier (flex, priority, …), by the tier's name.
	ServiceTiers map[string]*ModelPrice
	// limits bound a request to the model; set reports whether the file gave them.
	limits    ModelLimits
	hasLimits bool
}

// ModelLimits bound what one request to a model can use, for budget
// ceilings: the context window, the largest output, and the thinking
// budget a model may spend outside MaxOutput (0: thinking is inside it).
type ModelLimits struct {
	Context, MaxOutput int64
	MaxThinking        int64
}

// StandardServiceTier reports whether a provider's service_tier names its
// standard tier, priced by a model's base rates: OpenAI's "default" (and
// "auto", the request-side value some events echo), Anthropic's
// "standard", or none given.
func StandardServiceTier(tier string) bool {
	switch tier {
	case "", "default", "auto", "standard":
		return true
	}
	return false
}

// RatesFor returns the rates that apply to u.
func (p *ModelPrice) RatesFor(u Usage) *Rates {
	if lc := p.LongContext; lc != nil && u.InputTotal() > lc.AboveInputTokens {
		return &lc.Rates
	}
	return &p.Rates
}

// CostMicroUSD prices u in micro-USD, rounded half up. The products are
// summed exactly in 128 bits (units of 1e-15 USD: tokens × nano-USD per 1M)
// and rounded once, so no line item loses a fraction.
//
// It names the buckets rather than looping over Buckets: rates are not one
// per bucket (input_uncached and input_other share Input, reasoning is
// carved out of output only when ReasoningApart), and a new bucket needs a
// price decision (a rate in prices.yaml, a default) that no table can make
// for it.
func (p *ModelPrice) CostMicroUSD(u Usage) int64 {
	acc := p.sum(u)
	acc.add(femtoPerMicro / 2)
	q, _ := bits.Div64(acc.hi, acc.lo, femtoPerMicro)
	return int64(q)
}

// CeilMicroUSD prices u like CostMicroUSD but rounds up: a reservation
// ceiling must never fall a fraction under what the meter can charge.
func (p *ModelPrice) CeilMicroUSD(u Usage) int64 {
	acc := p.sum(u)
	acc.add(femtoPerMicro - 1)
	q, _ := bits.Div64(acc.hi, acc.lo, femtoPerMicro)
	return int64(q)
}

func (p *ModelPrice) sum(u Usage) priceAcc {
	r := p.RatesFor(u)
	c := func(n int64) uint64 { return uint64(min(max(n, 0), maxTokenCount)) }
	out, reasoning := c(u.Output), uint64(0)
	if r.ReasoningApart {
		reasoning = min(c(u.Reasoning), out)
		out -= reasoning
	}
	var acc priceAcc
	acc.addMul(c(u.InputUncached)+c(u.InputOther), r.Input)
	acc.addMul(c(u.CacheRead), r.CacheRead)
	acc.addMul(c(u.CacheWrite5m), r.CacheWrite5m)
	acc.addMul(c(u.CacheWrite1h), r.CacheWrite1h)
	acc.addMul(out, r.Output)
	acc.addMul(reasoning, r.Reasoning)
	return acc
}

// priceAcc is an unsigned 128-bit accumulator. Counts are clamped under 2^41
// and prices to maxPlausibleNano (under 2^44), so each product is under 2^85,
// the sum's high word stays below the divisor (bits.Div64 would panic) and
// the quotient fits an int64.
type priceAcc struct{ hi, lo uint64 }

func (a *priceAcc) addMul(n uint64, price NanoUSDPerMTok) {
	hi, lo := bits.Mul64(n, uint64(min(max(price, 0), maxPlausibleNano)))
	var carry uint64
	a.lo, carry = bits.Add64(a.lo, lo, 0)
	a.hi += hi + carry
}

func (a *priceAcc) add(n uint64) {
	var carry uint64
	a.lo, carry = bits.Add64(a.lo, n, 0)
	a.hi += carry
}

// PriceTable is one loaded price file. It is immutable; a reload builds a
// new one (internal/hotfile), so a request prices with the table it started
// with.
type PriceTable struct {
	// Version names the table in usage records (price_version).
	Version string
	// Date is the day the prices were last checked, YYYY-MM-DD.
	Date      string
	providers map[string]*providerPrices
	fallback  *ModelPrice
	// toolFees is nano-USD per 1,000 calls, by provider then tool.
	toolFees map[string]map[string]int64
}

// Limits finds a model's limits with Lookup's matching (snapshot suffixes).
// ok is false for an unknown model or a row without limits.
func (t *PriceTable) Limits(provider, model string) (ModelLimits, bool) {
	p, ok := t.Lookup(provider, model)
	if !ok || !p.hasLimits {
		return ModelLimits{}, false
	}
	return p.limits, true
}

// Fallback is the row budgets with `unpriced: fallback` price unknown
// models at, with its limits; ok is false when the file has none.
func (t *PriceTable) Fallback() (*ModelPrice, ModelLimits, bool) {
	if t == nil || t.fallback == nil {
		return nil, ModelLimits{}, false
	}
	return t.fallback, t.fallback.limits, true
}

// ToolFeeMicroUSD is what n calls of a provider's server-side tool (for
// now "web_search") cost, in micro-USD rounded up; ok is false when the
// table prices no such tool for the provider.
func (t *PriceTable) ToolFeeMicroUSD(provider, tool string, n int64) (micro int64, ok bool) {
	if t == nil {
		return 0, false
	}
	per1k, ok := t.toolFees[provider][tool]
	if !ok {
		return 0, false
	}
	// nano-USD per 1k calls: n × per1k / 1e6 micro-USD; n is clamped so the
	// product fits (per1k < 2^44 by the price bounds).
	n = min(max(n, 0), 1<<18)
	return (n*per1k + 999_999) / 1_000_000, true
}

type providerPrices struct {
	models map[string]*ModelPrice
	// byLen lists model names longest first, for snapshot-prefix lookup.
	byLen []string
}

// Lookup finds a model's prices: the exact name first, then the longest
// configured name that the served model extends by a snapshot suffix
// ("claude-sonnet-4-5" for "claude-sonnet-4-5-20250929", "gpt-4o" for
// "gpt-4o-2024-08-06", Vertex "@20250929"). A suffix naming another model
// ("-mini", "-pro", "-4-5") never matches: an unknown model is unpriced, never
// priced as a cheaper or dearer sibling. A leading "models/" (Gemini) is
// ignored.
func (t *PriceTable) Lookup(provider, model string) (*ModelPrice, bool) {
	if t == nil {
		return nil, false
	}
	pp, ok := t.providers[provider]
	if !ok {
		return nil, false
	}
	model = strings.TrimPrefix(model, "models/")
	if p, ok := pp.models[model]; ok {
		return p, true
	}
	for _, name := range pp.byLen {
		if len(name) < len(model) && strings.HasPrefix(model, name) && priceSnapshotSuffix(model[len(name):]) {
			return pp.models[name], true
		}
	}
	return nil, false
}

// priceSnapshotSuffix reports whether s dates a snapshot of a model: "-" or "@",
// then a first part of 3+ digits or "preview", then digit parts only.
func priceSnapshotSuffix(s string) bool {
	if len(s) < 2 || (s[0] != '-' && s[0] != '@') {
		return false
	}
	for i, rest := 0, s[1:]; ; i++ {
		part, tail, more := strings.Cut(rest, "-")
		switch {
		case i == 0 && part == "preview":
		case !priceAllDigits(part):
			return false
		case i == 0 && len(part) < 3:
			return false
		}
		if !more {
			return true
		}
		rest = tail
	}
}

func priceAllDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Cost prices u for a model served by provider (the registry provider name)
// in a service tier: its tokens, rounded half up, plus the fee of each
// server-side tool use (ToolFeeMicroUSD, which EstimateCeiling adds too).
// micro is in micro-USD, or nil when the table has no price for the model,
// for a non-standard tier of it, or for a tool the response used: the
// record is then flagged unpriced, never costed at 0 nor at the standard
// rate of a tier that bills differently. version is the table's version,
// for the record's price_version.
func (t *PriceTable) Cost(provider, model, tier string, u Usage) (micro *int64, version string) {
	if t == nil {
		return nil, ""
	}
	p, ok := t.Lookup(provider, model)
	if !ok {
		return nil, t.Version
	}
	return t.costAt(p, provider, tier, u), t.Version
}

// FallbackCost is what u comes to at the fallback row's rates, priced as
// Cost prices a model the table knows; nil without a fallback row, or for
// a tier or tool it has no price for. Budgets with `unpriced: fallback`
// settle an unknown model's requests at it; the record stays unpriced.
func (t *PriceTable) FallbackCost(provider, tier string, u Usage) *int64 {
	if t == nil || t.fallback == nil {
		return nil
	}
	return t.costAt(t.fallback, provider, tier, u)
}

// costAt prices u at p's rates in tier, server-tool fees included.
func (t *PriceTable) costAt(p *ModelPrice, provider, tier string, u Usage) *int64 {
	if !StandardServiceTier(tier) {
		var ok bool
		if p, ok = p.ServiceTiers[tier]; !ok {
			return nil
		}
	}
	c := p.CostMicroUSD(u)
	for _, b := range &Buckets {
		if n := *b.Of(&u); b.Tool != "" && n > 0 {
			fee, ok := t.ToolFeeMicroUSD(provider, b.Tool, n)
			if !ok {
				return nil
			}
			c += fee
		}
	}
	return &c
}

// PriceError lists every problem found in a price file, each naming its item.
type PriceError struct {
	Problems []string
}

func (e *PriceError) Error() string {
	return fmt.Sprintf("%d problem(s) in price table:\n  %s", len(e.Problems), strings.Join(e.Problems, "\n  "))
}

// LoadPrices reads and validates the price file at path. Its signature fits
// internal/hotfile.Load.
func LoadPrices(path string) (*PriceTable, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read price table: %w", err)
	}
	return ParsePrices(b)
}

// DefaultPrices returns the price table embedded in the binary
// (metering/prices.yaml). It panics if that file is invalid, which a test
// rules out.
func DefaultPrices() *PriceTable {
	t, err := ParsePrices(defaultPricesYAML)
	if err != nil {
		panic("metering: embedded prices.yaml: " + err.Error())
	}
	return t
}

// priceFile is the YAML document.
type priceFile struct {
	Version   priceScalar                            `yaml:"version"`
	Date      priceScalar                            `yaml:"date"`
	Unit      priceScalar                            `yaml:"unit"`
	Providers map[string]map[string]*priceModelEntry `yaml:"providers"`
	Fallback  *priceModelEntry                       `yaml:"fallback"`
	ToolFees  map[string]*priceToolFees              `yaml:"tool_fees"`
}

type priceToolFees struct {
	WebSearchPer1k priceField `yaml:"web_search_per_1k"`
}

type priceLimitsEntry struct {
	Context     *int64 `yaml:"context"`
	MaxOutput   *int64 `yaml:"max_output"`
	MaxThinking *int64 `yaml:"max_thinking"`
}

// limits checks one limits entry: context and max_output are required and
// positive, max_thinking optional and non-negative.
func (e *priceLimitsEntry) limits(at string, add func(string, ...any)) ModelLimits {
	var l ModelLimits
	for _, f := range []struct {
		name     string
		v        *int64
		dst      *int64
		required bool
	}{
		{"context", e.Context, &l.Context, true},
		{"max_output", e.MaxOutput, &l.MaxOutput, true},
		{"max_thinking", e.MaxThinking, &l.MaxThinking, false},
	} {
		switch {
		case f.v == nil && f.required:
			add("%s.limits.%s: is required (a positive token count)", at, f.name)
		case f.v == nil:
		case *f.v <= 0 && f.required, *f.v < 0, *f.v > maxTokenCount:
			add("%s.limits.%s: %d is not a plausible token count", at, f.name, *f.v)
		default:
			*f.dst = *f.v
		}
	}
	return l
}

type priceModelEntry struct {
	Rates       priceRateEntry  `yaml:",inline"`
	LongContext *priceLongEntry `yaml:"long_context"`
	// ServiceTiers are flat rates for non-standard service tiers.
	ServiceTiers map[string]*priceRateEntry `yaml:"service_tiers"`
	// Note is free text for the reader (source, caveats).
	Note   string            `yaml:"note"`
	Limits *priceLimitsEntry `yaml:"limits"`
}

type priceLongEntry struct {
	AboveInputTokens int64          `yaml:"above_input_tokens"`
	Rates            priceRateEntry `yaml:",inline"`
}

type priceRateEntry struct {
	Input        priceField `yaml:"input_per_mtok"`
	CacheRead    priceField `yaml:"cache_read_per_mtok"`
	CacheWrite5m priceField `yaml:"cache_write_5m_per_mtok"`
	CacheWrite1h priceField `yaml:"cache_write_1h_per_mtok"`
	Output       priceField `yaml:"output_per_mtok"`
	Reasoning    priceField `yaml:"reasoning_per_mtok"`
}

// priceScalar keeps a scalar's text as written, so "2026-11-22" stays a
// string whatever YAML would resolve it to.
type priceScalar struct {
	text string
	kind yaml.Kind
}

func (s *priceScalar) UnmarshalYAML(n *yaml.Node) error {
	s.text, s.kind = n.Value, n.Kind
	return nil
}

// priceField keeps a price's text; it is parsed during validation so that
// every bad price is reported, not only the first.
type priceField struct {
	set  bool
	text string
	kind yaml.Kind
	line int
}

func (p *priceField) UnmarshalYAML(n *yaml.Node) error {
	p.set, p.text, p.kind, p.line = true, n.Value, n.Kind, n.Line
	return nil
}

var (
	priceDecimalRE = regexp.MustCompile(`^[0-9]+(\.[0-9]{1,9})?$`)
	// A "/" joins segments: compatible backends serve vendor-prefixed names
	// ("anthropic/claude-sonnet-4.5" at OpenRouter), priced under their own
	// provider.
	priceModelRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$`)
)

// ParsePrices validates a price file and builds a PriceTable. On failure the
// error is a *PriceError listing every problem.
func ParsePrices(src []byte) (*PriceTable, error) {
	var f priceFile
	dec := yaml.NewDecoder(bytes.NewReader(src))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, &PriceError{Problems: priceYAMLProblems(err)}
	}
	var probs []string
	add := func(format string, args ...any) { probs = append(probs, fmt.Sprintf(format, args...)) }

	if f.Version.kind != yaml.ScalarNode || strings.TrimSpace(f.Version.text) == "" {
		add("version: is required")
	}
	if f.Date.kind != yaml.ScalarNode {
		add("date: is required (YYYY-MM-DD)")
	} else if _, err := time.Parse(time.DateOnly, f.Date.text); err != nil {
		add("date: %q is not YYYY-MM-DD", f.Date.text)
	}
	if f.Unit.text != priceUnit {
		add("unit: must be %q (USD per 1M tokens), got %q", priceUnit, f.Unit.text)
	}
	if len(f.Providers) == 0 {
		add("providers: at least one provider is required")
	}
	t := &PriceTable{Version: f.Version.text, Date: f.Date.text, providers: map[string]*providerPrices{}}
	for _, prov := range priceSortedKeys(f.Providers) {
		models := f.Providers[prov]
		at := "providers." + prov
		if !priceProviderRE.MatchString(prov) {
			add("%s: provider name must be lowercase letters, digits and dashes", at)
		}
		if len(models) == 0 {
			add("%s: at least one model is required", at)
		}
		pp := &providerPrices{models: map[string]*ModelPrice{}}
		for _, name := range priceSortedKeys(models) {
			e := models[name]
			mat := at + "." + name
			if !priceModelRE.MatchString(name) {
				add("%s: model name must be lowercase letters, digits, '.', '_' and '-', in segments joined by '/'", mat)
			}
			if e == nil {
				add("%s: prices are required", mat)
				continue
			}
			mp := e.model(mat, add)
			pp.models[name] = mp
			pp.byLen = append(pp.byLen, name)
		}
		sort.SliceStable(pp.byLen, func(i, j int) bool { return len(pp.byLen[i]) > len(pp.byLen[j]) })
		t.providers[prov] = pp
	}
	if e := f.Fallback; e != nil {
		t.fallback = e.model("fallback", add)
		if e.Limits == nil {
			add("fallback.limits: is required (a ceiling needs context and max_output)")
		}
	}
	for _, prov := range priceSortedKeys(f.ToolFees) {
		at := "tool_fees." + prov
		e := f.ToolFees[prov]
		if e == nil || !e.WebSearchPer1k.set {
			add("%s.web_search_per_1k: is required", at)
			continue
		}
		n, err := priceParseUSD(e.WebSearchPer1k)
		if err != nil {
			add("%s.web_search_per_1k: %v", at, err)
			continue
		}
		if t.toolFees == nil {
			t.toolFees = map[string]map[string]int64{}
		}
		t.toolFees[prov] = map[string]int64{"web_search": int64(n)}
	}
	if len(probs) > 0 {
		return nil, &PriceError{Problems: probs}
	}
	return t, nil
}

// model converts and checks one model row (or the fallback row).
func (e *priceModelEntry) model(mat string, add func(string, ...any)) *ModelPrice {
	mp := &ModelPrice{Rates: e.Rates.rates(mat, add)}
	if lc := e.LongContext; lc != nil {
		lat := mat + ".long_context"
		if lc.AboveInputTokens <= 0 {
			add("%s.above_input_tokens: must be a positive token count", lat)
		}
		mp.LongContext = &LongContext{AboveInputTokens: lc.AboveInputTokens, Rates: lc.Rates.rates(lat, add)}
		if lc.Rates.Reasoning.set != e.Rates.Reasoning.set {
			add("%s.reasoning_per_mtok: must be set in both tiers or neither", lat)
		}
	}
	for _, tier := range priceSortedKeys(e.ServiceTiers) {
		tat := mat + ".service_tiers." + tier
		switch {
		case StandardServiceTier(tier):
			add("%s: %q is the standard tier, priced by the model's own rates", tat, tier)
		case e.ServiceTiers[tier] == nil:
			add("%s: prices are required", tat)
		default:
			if mp.ServiceTiers == nil {
				mp.ServiceTiers = map[string]*ModelPrice{}
			}
			mp.ServiceTiers[tier] = &ModelPrice{Rates: e.ServiceTiers[tier].rates(tat, add)}
		}
	}
	if e.Limits != nil {
		mp.limits, mp.hasLimits = e.Limits.limits(mat, add), true
	}
	return mp
}

var priceProviderRE = regexp.MustCompile(`^[a-z][a-z0-9-]*$`)

// rates converts and checks one tier. Every price but reasoning is required:
// a row that silently inherits a default cache price is a known billing bug
// (wire-formats.md §9), so the file pins each one.
func (e priceRateEntry) rates(at string, add func(string, ...any)) Rates {
	var r Rates
	for _, f := range []struct {
		name     string
		p        priceField
		dst      *NanoUSDPerMTok
		required bool
	}{
		{"input_per_mtok", e.Input, &r.Input, true},
		{"cache_read_per_mtok", e.CacheRead, &r.CacheRead, true},
		{"cache_write_5m_per_mtok", e.CacheWrite5m, &r.CacheWrite5m, true},
		{"cache_write_1h_per_mtok", e.CacheWrite1h, &r.CacheWrite1h, true},
		{"output_per_mtok", e.Output, &r.Output, true},
		{"reasoning_per_mtok", e.Reasoning, &r.Reasoning, false},
	} {
		if !f.p.set {
			if f.required {
				add("%s.%s: is required (pin every price; none defaults)", at, f.name)
			}
			continue
		}
		n, err := priceParseUSD(f.p)
		if err != nil {
			add("%s.%s: %v", at, f.name, err)
			continue
		}
		*f.dst = n
	}
	r.ReasoningApart = e.Reasoning.set
	return r
}

// priceParseUSD reads a decimal USD amount per 1M tokens exactly (no float) into
// nano-USD per 1M tokens.
func priceParseUSD(p priceField) (NanoUSDPerMTok, error) {
	if p.kind != yaml.ScalarNode || !priceDecimalRE.MatchString(p.text) {
		return 0, fmt.Errorf("line %d: %q is not a non-negative decimal USD amount with at most 9 decimals", p.line, p.text)
	}
	whole, frac, _ := strings.Cut(p.text, ".")
	if len(whole) > 6 {
		return 0, fmt.Errorf("line %d: %s USD per 1M tokens is implausibly large", p.line, p.text)
	}
	var n int64
	for _, c := range whole {
		n = n*10 + int64(c-'0')
	}
	frac += strings.Repeat("0", 9-len(frac))
	for _, c := range frac {
		n = n*10 + int64(c-'0')
	}
	switch {
	case n > 0 && n < minPlausibleNano:
		return 0, fmt.Errorf("line %d: %s USD per 1M tokens looks like a per-token price", p.line, p.text)
	case n > maxPlausibleNano:
		return 0, fmt.Errorf("line %d: %s USD per 1M tokens is implausibly large", p.line, p.text)
	}
	return NanoUSDPerMTok(n), nil
}

func priceYAMLProblems(err error) []string {
	var out []string
	for _, line := range strings.Split(err.Error(), "\n") {
		if line = strings.TrimSpace(line); line != "" && line != "yaml: unmarshal errors:" {
			out = append(out, strings.TrimPrefix(line, "yaml: "))
		}
	}
	return out
}

func priceSortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
