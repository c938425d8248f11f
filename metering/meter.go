package metering

import (
	"bytes"
	"strings"
	"sync"
	"unsafe"

	"github.com/tidwall/gjson"

	"github.com/tollgate/tollgate/registry"
)

// defaultMaxEventBytes applies when a caller passes no bound.
const defaultMaxEventBytes = registry.DefaultMaxEventBytes

// maxTokenCount clamps any one count read from a provider. It is far above
// any real context window (2^40 ≈ 1.1e12 tokens) and keeps every sum of
// buckets, and every cost product in price.go, clear of int64 overflow.
const maxTokenCount = 1 << 40

// maxReplaceMemo bounds the usage object remembered to skip identical
// replacements; real ones are a few hundred bytes.
const maxReplaceMemo = 2048

// maxIdentBytes bounds the served model and upstream id kept per response;
// real values are under 100 bytes, and a hostile stream must not grow them.
const maxIdentBytes = 512

// includeUsageChoicesPath is the field whose emptiness marks the chunk that
// stream_options.include_usage adds (wire-formats.md §7). It is part of the
// include_usage contract itself, which exists only in OpenAI Chat.
const includeUsageChoicesPath = "choices"

// End says how the byte stream of a response ended, as the proxy saw it.
type End uint8

// Ways a stream ends.
const (
	// EndEOF: the upstream body ended cleanly.
	EndEOF End = iota
	// EndClientGone: writing to the client failed; the upstream was cut.
	EndClientGone
	// EndIdle: the idle timer fired and the upstream was cut.
	EndIdle
	// EndUpstreamError: reading the upstream body failed (connection reset,
	// io.ErrUnexpectedEOF from net/http on a cut chunked body).
	EndUpstreamError
)

// String returns the name used in golden files and logs.
func (e End) String() string {
	switch e {
	case EndEOF:
		return "eof"
	case EndClientGone:
		return "client_gone"
	case EndIdle:
		return "idle"
	case EndUpstreamError:
		return "upstream_error"
	}
	return "unknown"
}

// Settlement is what a Meter concluded about one response: how it ended and
// what usage to record. Usage is nil exactly when Source is SourceMissing,
// never a silent zero (wire-formats.md §8).
type Settlement struct {
	Outcome     string `json:"outcome"`
	Source      string `json:"usage_source"`
	Usage       *Usage `json:"usage"`
	ModelServed string `json:"model_served"`
	UpstreamID  string `json:"upstream_id"`
	// ServiceTier is the tier the provider says served the response
	// ("default", "standard", "priority", "flex"); empty when it says none.
	ServiceTier string `json:"service_tier,omitempty"`
	// Overflow is set when an event exceeded the framing bound and was
	// forwarded unmetered (streaming-on-fiber.md R13).
	Overflow bool `json:"event_overflow"`
}

// Raw usage fields, in the order of registry.UsageFields.
const (
	ufInput = iota
	ufCacheRead
	ufCacheWrite
	ufCacheWrite5m
	ufCacheWrite1h
	ufInputOther
	ufOutput
	ufReasoning
	ufCount
)

// Terminal states, ordered by precedence: a failure is never overwritten by
// a later completion (some Chat backends send an error chunk and then
// [DONE]).
const (
	seenNone = iota
	seenCompleted
	seenIncomplete
	seenFailed
)

// Meter extracts usage from one response, from the same bytes the proxy
// forwards (wire-formats.md §8, QuantumNous/new-api#6144: a separate billing
// copy loses fields). Everything dialect-specific comes from the registry's
// usage rules; the Meter only knows the two merge strategies. A Meter is not
// safe for concurrent use; use one per response and either Observe or Filter,
// not both.
type Meter struct {
	d    *registry.Dialect
	plan *meterPlan
	// inCache and outReasoning are the usage semantics of the provider
	// that answered: the dialect's, unless the provider overrides them
	// (registry.Provider.UsageRules). They are not part of the shared plan,
	// which only locates fields.
	inCache, outReasoning bool
	// Scan results for the current event, one per plan path set.
	typ, top, fields meterDoc

	fr Framer

	raw [ufCount]int64
	// webSearch is the most web searches any event reported: the count is
	// cumulative where a provider repeats it (Anthropic, Gemini), so the
	// largest is the response's.
	webSearch int64
	// lastReplace is the usage object of the last merge when it was a
	// replace, so an identical one can be skipped; nil otherwise.
	lastReplace []byte
	replaceBuf  []byte
	haveUsage   bool
	// usageVer changes whenever a merge set counts, so a caller can tell
	// cheaply that the usage seen so far changed (InFlight).
	usageVer uint32
	final    bool
	term     int
	model    []byte
	id       []byte
	tier     []byte
	overflow bool
	flushed  bool

	// Filter state: the raw bytes of the frame not yet forwarded.
	pend        []byte
	committed   bool // the current frame is over the bound and already forwarded
	lastDropped bool // the last frame was the usage-only chunk, left out
	atBoundary  bool // the last Filter call ended on a frame's final '\r'
}

// meterPlan is a dialect's usage rules compiled for the Meter. It is
// immutable and shared by every Meter of the dialect.
type meterPlan struct {
	rules []meterRule
	done  []byte
	// typ locates the event type; top every other path of the rules, found
	// in one pass per event and only once a rule's type matched; fields the
	// buckets inside a usage object.
	typ, top, fields meterPaths
	typRef           int
	fieldRefs        [ufCount]int
	// webSearch is registry.UsageFields.WebSearch below the object holding
	// the body's usage, "" when the dialect reports none. webSearchNeedle
	// is a member name the count needs: an event without it skips the
	// lookup, which for a gjson query walks the whole event and Gemini
	// makes on every chunk.
	webSearch, webSearchNeedle string
	// Filter's usage-only test, resolved through top; -1 when the dialect
	// has no include_usage path.
	filterUsage, filterChoices int
}

// meterRule is a registry.EventRule with its paths resolved to references.
type meterRule struct {
	typ                         string
	has, usage, model, id, tier int
	assign, final               bool
	end                         int
	// webSearch counts web searches beside the rule's usage object.
	webSearch int
}

// meterPlans caches compiled plans by dialect. Dialects are immutable and a
// registry reload makes new ones, so an entry is never stale; the few left
// behind by reloads are a few hundred bytes each.
var meterPlans sync.Map // *registry.Dialect → *meterPlan

// NewMeter returns a Meter for one response in dialect d, keeping at most
// maxEventBytes of one SSE event (registry Limits.MaxEventBytes; <= 0 means
// the default). A nil d meters nothing and settles with SourceMissing.
func NewMeter(d *registry.Dialect, maxEventBytes int) *Meter {
	return NewMeterFor(d, nil, maxEventBytes)
}

// NewMeterFor is NewMeter for a response from provider p, whose usage
// semantics may differ from its dialect's: an Anthropic-compatible backend
// that counts cache reads inside input_tokens is metered as it counts, so
// they are not billed twice. A nil p takes the dialect's.
func NewMeterFor(d *registry.Dialect, p *registry.Provider, maxEventBytes int) *Meter {
	m := &Meter{d: d}
	m.fr.init(maxEventBytes)
	if d == nil {
		return m
	}
	u := p.UsageRules(d)
	m.inCache, m.outReasoning = u.InputIncludesCache, u.OutputIncludesReasoning
	plan, ok := meterPlans.Load(d)
	if !ok {
		plan, _ = meterPlans.LoadOrStore(d, compilePlan(d))
	}
	m.plan = plan.(*meterPlan)
	n1, n2 := len(m.plan.typ.heads), len(m.plan.top.heads)
	vals := make([]string, n1+n2+len(m.plan.fields.heads))
	m.typ.vals, m.top.vals, m.fields.vals = vals[:n1:n1], vals[n1:n1+n2:n1+n2], vals[n1+n2:]
	return m
}

func compilePlan(d *registry.Dialect) *meterPlan {
	p := &meterPlan{typRef: -1, filterUsage: -1, filterChoices: -1}
	f := d.Usage.Fields
	for i, path := range [ufCount]string{f.Input, f.CacheRead, f.CacheWrite, f.CacheWrite5m, f.CacheWrite1h, f.InputOther, f.Output, f.Reasoning} {
		p.fieldRefs[i] = p.fields.add(path)
	}
	p.typRef = p.typ.add(d.Usage.Stream.TypePath)
	for _, r := range d.Usage.Stream.Events {
		mr := meterRule{
			typ:    r.Type,
			has:    p.top.add(r.Has),
			usage:  p.top.add(r.Usage),
			model:  p.top.add(r.Model),
			id:     p.top.add(r.ID),
			tier:   p.top.add(r.ServiceTier),
			assign: r.Merge == registry.MergeAssign,
			final:  r.Final,
		}
		// The searches are read beside usage, so only a rule that reads
		// usage reads them.
		mr.webSearch = p.top.add(besideUsage(r.Usage, f.WebSearch))
		switch r.End {
		case registry.EndCompleted:
			mr.end = seenCompleted
		case registry.EndIncomplete:
			mr.end = seenIncomplete
		case registry.EndFailed:
			mr.end = seenFailed
		}
		p.rules = append(p.rules, mr)
	}
	p.webSearch = besideUsage(d.Usage.Body.Usage, f.WebSearch)
	p.webSearchNeedle = countNeedle(f.WebSearch)
	if d.Usage.Stream.Done != "" {
		p.done = []byte(d.Usage.Stream.Done)
	}
	for _, path := range d.Paths {
		if path.IncludeUsage && d.Usage.Body.Usage != "" {
			// Only a dialect whose paths take include_usage has a chunk for
			// Filter to hide; elsewhere Filter forwards every frame.
			p.filterUsage = p.top.add(d.Usage.Body.Usage)
			p.filterChoices = p.top.add(includeUsageChoicesPath)
			break
		}
	}
	return p
}

// Observe meters bytes forwarded unchanged to the client. It never fails and
// never alters p; it copies only what it keeps.
func (m *Meter) Observe(p []byte) {
	for len(p) > 0 {
		n, ok := m.fr.Next(p)
		if ok {
			m.event(m.fr.frame)
		}
		p = p[n:]
	}
}

// Body meters a non-streamed JSON response. A JSON array (Gemini's
// streamGenerateContent without alt=sse) is read element by element, the last
// usage winning as in a stream.
func (m *Meter) Body(body []byte) {
	m.flushed = true
	if m.d == nil {
		return
	}
	b := bytes.TrimSpace(body)
	if len(b) == 0 {
		return
	}
	if !gjson.Valid(jsonView(b)) {
		// A 2xx the client cannot parse is the provider's fault, and any
		// counts gjson could pick out of it are not the provider's word.
		m.setTerm(seenFailed)
		return
	}
	loc := m.d.Usage.Body
	doc := gjson.Parse(jsonView(b))
	if b[0] == '[' {
		doc.ForEach(func(_, v gjson.Result) bool {
			m.bodyDoc(v, loc)
			return true
		})
	} else {
		m.bodyDoc(doc, loc)
	}
	if m.haveUsage {
		m.final = true
	}
	m.setTerm(seenCompleted)
}

func (m *Meter) bodyDoc(doc gjson.Result, loc registry.Locator) {
	if loc.Usage != "" {
		m.merge(doc.Get(loc.Usage).Raw, false)
	}
	if m.plan.webSearch != "" && strings.Contains(doc.Raw, m.plan.webSearchNeedle) {
		m.countWebSearch(doc.Get(m.plan.webSearch).Raw)
	}
	if loc.Model != "" {
		meterSetIdent(&m.model, doc.Get(loc.Model).Raw)
	}
	if loc.ID != "" {
		meterSetIdent(&m.id, doc.Get(loc.ID).Raw)
	}
	if loc.ServiceTier != "" {
		meterSetIdent(&m.tier, doc.Get(loc.ServiceTier).Raw)
	}
}

// Settle concludes the response (wire-formats.md §6 and §8). A terminal
// event seen decides the outcome whatever happened to the connection
// afterwards, since the provider finished and billed the response. Without
// one: EOF or a read error is truncated, and the client leaving or the idle
// timer is recorded as such. Usage is upstream when a terminal or final event
// carried it, partial when only earlier counts were seen, and missing (nil)
// when none was seen.
func (m *Meter) Settle(how End) Settlement {
	m.flush()
	s := Settlement{
		ModelServed: string(m.model),
		UpstreamID:  string(m.id),
		ServiceTier: string(m.tier),
		Overflow:    m.overflow,
	}
	switch m.term {
	case seenCompleted:
		s.Outcome = OutcomeOK
	case seenIncomplete:
		s.Outcome = OutcomeIncomplete
	case seenFailed:
		s.Outcome = OutcomeUpstreamError
	default:
		switch how {
		case EndClientGone:
			s.Outcome = OutcomeClientGone
		case EndIdle:
			s.Outcome = OutcomeUpstreamIdle
		default:
			// With a terminal event missing, a cut connection is truncation
			// whether it surfaced as EOF or as a read error: on fasthttp a cut
			// on a chunk boundary is a plain EOF (streaming-on-fiber.md R10).
			s.Outcome = OutcomeTruncated
		}
	}
	switch {
	case !m.haveUsage:
		s.Source = SourceMissing
	case m.final || m.term == seenCompleted || m.term == seenIncomplete:
		s.Source = SourceUpstream
	default:
		s.Source = SourcePartial
	}
	if m.haveUsage {
		u := m.usage()
		s.Usage = &u
	}
	return s
}

// UsageVersion changes whenever usage counts are seen; it stays 0 until
// the first. Comparing it costs nothing, so a stream can check after every
// read whether InFlight has something new.
func (m *Meter) UsageVersion() uint32 {
	return m.usageVer
}

// InFlight is what the response has shown so far, without concluding it:
// the usage seen (Source partial), the model, id and tier. ok is false
// before any usage was seen, and once the usage is final or a terminal
// event came: the response is settling then. Unlike Settle it leaves the
// meter as it is.
func (m *Meter) InFlight() (s Settlement, ok bool) {
	if !m.haveUsage || m.final || m.term != seenNone {
		return Settlement{}, false
	}
	u := m.usage()
	return Settlement{
		Source: SourcePartial, Usage: &u,
		ModelServed: string(m.model), UpstreamID: string(m.id), ServiceTier: string(m.tier),
	}, true
}

// UpstreamID returns the provider's id seen so far, "" before one, so a
// stream's id is known from its first event rather than at its end.
func (m *Meter) UpstreamID() string {
	return string(m.id)
}

// flush meters a final frame that lacked its blank line, once.
func (m *Meter) flush() (Frame, bool) {
	if m.flushed {
		return Frame{}, false
	}
	m.flushed = true
	fr, ok := m.fr.Flush()
	if ok {
		m.event(fr)
	}
	return fr, ok
}

// event applies the dialect's stream rules to one frame.
func (m *Meter) event(fr Frame) {
	// The framer reuses its buffer, so a new event may sit at the same
	// address with the same length as the last one.
	m.top.doc = ""
	if fr.Overflow {
		m.overflow = true
		return
	}
	if !fr.HasData || m.d == nil {
		return
	}
	data := bytes.TrimSpace(fr.Data)
	if len(data) == 0 {
		return
	}
	p := m.plan
	if p.done != nil && bytes.Equal(data, p.done) {
		m.setTerm(seenCompleted)
		return
	}
	if data[0] != '{' {
		return
	}
	s := jsonView(data)
	var typ string
	if p.typRef >= 0 {
		p.typ.scan(&m.typ, s)
		typ = jsonStr(p.typ.get(&m.typ, p.typRef))
	}
	carried, ended := false, false
	for i := range p.rules {
		r := &p.rules[i]
		if r.typ != "" && r.typ != typ {
			continue
		}
		m.scanTop(s)
		if r.has >= 0 {
			if h := p.top.get(&m.top, r.has); h == "" || h == "null" {
				continue
			}
		}
		if r.webSearch >= 0 && strings.Contains(s, p.webSearchNeedle) {
			m.countWebSearch(p.top.get(&m.top, r.webSearch))
		}
		if r.usage >= 0 && m.merge(p.top.get(&m.top, r.usage), r.assign) {
			carried = true
			if r.final {
				m.final = true
			}
		}
		if r.model >= 0 {
			meterSetIdent(&m.model, p.top.get(&m.top, r.model))
		}
		if r.id >= 0 {
			meterSetIdent(&m.id, p.top.get(&m.top, r.id))
		}
		if r.tier >= 0 {
			meterSetIdent(&m.tier, p.top.get(&m.top, r.tier))
		}
		if r.end != seenNone {
			m.setTerm(r.end)
			ended = true
		}
	}
	if ended && carried {
		// Usage on the terminal event itself is the provider's final count,
		// including on response.failed (QuantumNous/new-api#7241).
		m.final = true
	}
}

// scanTop locates the rules' paths in s, once per event.
func (m *Meter) scanTop(s string) {
	if len(m.top.doc) == len(s) && unsafe.StringData(m.top.doc) == unsafe.StringData(s) {
		return
	}
	m.plan.top.scan(&m.top, s)
}

func (m *Meter) setTerm(t int) {
	if t > m.term {
		m.term = t
	}
}

// merge folds a usage object into the raw counts and reports whether it
// carried any known field. replace (Gemini's last usageMetadata, Chat's last
// non-null usage) resets every bucket first; assign (Anthropic message_delta)
// overwrites only the fields present, so cumulative counts are assigned and
// never added (wire-formats.md §4: summing message_start and message_delta
// output double-counts). A usage object with no known field is ignored rather
// than allowed to replace real counts with zeros.
func (m *Meter) merge(u string, assign bool) bool {
	if u == "" || u[0] != '{' {
		return false
	}
	if !assign && m.lastReplace != nil && string(m.lastReplace) == u {
		// Gemini repeats the same usageMetadata on most chunks; replacing
		// with identical counts changes nothing.
		return true
	}
	p := m.plan
	p.fields.scan(&m.fields, u)
	var vals [ufCount]int64
	var set [ufCount]bool
	found := false
	for f, ref := range p.fieldRefs {
		if ref < 0 {
			continue
		}
		if n, ok := meterTokenCount(p.fields.get(&m.fields, ref)); ok {
			vals[f], set[f], found = n, true, true
		}
	}
	if !found {
		return false
	}
	for f := range vals {
		if set[f] {
			m.raw[f] = vals[f]
		} else if !assign {
			m.raw[f] = 0
		}
	}
	m.haveUsage = true
	m.usageVer++
	m.lastReplace = nil
	if !assign && len(u) <= maxReplaceMemo {
		m.lastReplace = append(m.replaceBuf[:0], u...)
		m.replaceBuf = m.lastReplace
	}
	return true
}

// countWebSearch keeps a web search count read from raw JSON if it is the
// largest yet. Searches are part of the usage: they change UsageVersion
// once there is usage to show.
func (m *Meter) countWebSearch(raw string) {
	if n, ok := meterTokenCount(raw); ok && n > m.webSearch {
		m.webSearch = n
		if m.haveUsage {
			m.usageVer++
		}
	}
}

// besideUsage is the path of field (registry.UsageFields.WebSearch) from
// the document a usage path is in: field lives in the object that holds
// the usage object ("response.usage" → "response." + field). "" when
// either is empty. Usage paths are plain dotted names in every dialect.
func besideUsage(usage, field string) string {
	if usage == "" || field == "" {
		return ""
	}
	if i := strings.LastIndexByte(usage, '.'); i >= 0 {
		return usage[:i+1] + field
	}
	return field
}

// countNeedle is the longest member name, quoted, that a count path names
// outside gjson syntax (queries, modifiers, wildcards) in its first pipe
// component: a document without it holds nothing to count. Like the
// nested-path needles of meterPaths it assumes member names are not
// written with escapes, which no provider does.
func countNeedle(path string) string {
	first, _, _ := strings.Cut(path, "|")
	best := ""
	for _, part := range strings.Split(first, ".") {
		if len(part) > len(best) && !strings.ContainsAny(part, `\*?#@|!()=<>[]{}"`) && !priceAllDigits(part) {
			best = part
		}
	}
	if best == "" {
		return ""
	}
	return `"` + best + `"`
}

// meterTokenCount reads one count from its raw JSON, clamped to [0,
// maxTokenCount]; ok is false when the field is absent, null or not a
// number. Plain integers, nearly every count, skip gjson's float parse.
func meterTokenCount(raw string) (int64, bool) {
	if raw == "" {
		return 0, false
	}
	if len(raw) <= 18 {
		var n int64
		plain := true
		for i := 0; i < len(raw); i++ {
			if raw[i] < '0' || raw[i] > '9' {
				plain = false
				break
			}
			n = n*10 + int64(raw[i]-'0')
		}
		if plain {
			return min(n, maxTokenCount), true
		}
	}
	v := gjson.Parse(raw)
	var n int64
	switch v.Type {
	case gjson.Number:
		if v.Num >= maxTokenCount {
			return maxTokenCount, true
		}
		n = v.Int()
	case gjson.String:
		n = v.Int()
	default:
		return 0, false
	}
	return min(max(n, 0), maxTokenCount), true
}

// usage maps the raw counts to the disjoint buckets (wire-formats.md §0).
func (m *Meter) usage() Usage {
	r := &m.raw
	c5, c1 := r[ufCacheWrite5m], r[ufCacheWrite1h]
	if w := r[ufCacheWrite]; w > c5+c1 {
		// Without a TTL split, all cache creation counts as 5m (wire-formats.md
		// §4); a split that covers less than the total leaves the rest at 5m.
		c5 += w - (c5 + c1)
	}
	u := Usage{
		InputUncached: r[ufInput],
		CacheRead:     r[ufCacheRead],
		CacheWrite5m:  c5,
		CacheWrite1h:  c1,
		InputOther:    r[ufInputOther],
		Output:        r[ufOutput],
		Reasoning:     r[ufReasoning],
	}
	if m.inCache {
		// Cached tokens billed again as input is a known overcharge
		// (maximhq/bifrost#904, BerriAI/litellm#11364).
		u.InputUncached = max(u.InputUncached-u.CacheRead-c5-c1, 0)
	}
	if !m.outReasoning {
		// Gemini's candidatesTokenCount excludes thinking; reading it alone
		// under-counts 30-60x (langchain-ai/langchainjs#11423).
		u.Output += u.Reasoning
	}
	u.Reasoning = min(u.Reasoning, u.Output)
	u.WebSearchRequests = m.webSearch
	return u
}

// meterSetIdent keeps a model or id string, copying only when it changed so the
// hot path does not allocate.
func meterSetIdent(dst *[]byte, raw string) {
	v := jsonStr(raw)
	if v == "" || len(v) > maxIdentBytes {
		return
	}
	if string(*dst) != v {
		*dst = append((*dst)[:0], v...)
	}
}
