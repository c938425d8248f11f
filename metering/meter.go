package metering

import (
	"bytes"
	"math/bits"
	"strconv"
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
	// Scan results for the current event, one per plan path set.
	typ, top, fields meterDoc

	fr Framer

	raw [ufCount]int64
	// lastReplace is the usage object of the last merge when it was a
	// replace, so an identical one can be skipped; nil otherwise.
	lastReplace []byte
	replaceBuf  []byte
	haveUsage   bool
	final       bool
	term        int
	model       []byte
	id          []byte
	tier        []byte
	overflow    bool
	flushed     bool

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
}

// meterPlans caches compiled plans by dialect. Dialects are immutable and a
// registry reload makes new ones, so an entry is never stale; the few left
// behind by reloads are a few hundred bytes each.
var meterPlans sync.Map // *registry.Dialect → *meterPlan

// NewMeter returns a Meter for one response in dialect d, keeping at most
// maxEventBytes of one SSE event (registry Limits.MaxEventBytes; <= 0 means
// the default). A nil d meters nothing and settles with SourceMissing.
func NewMeter(d *registry.Dialect, maxEventBytes int) *Meter {
	m := &Meter{d: d}
	m.fr.init(maxEventBytes)
	if d == nil {
		return m
	}
	p, ok := meterPlans.Load(d)
	if !ok {
		p, _ = meterPlans.LoadOrStore(d, compilePlan(d))
	}
	m.plan = p.(*meterPlan)
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

// Filter meters p and appends to dst the bytes to forward, for OpenAI Chat
// when tollgate injected stream_options.include_usage (wire-formats.md §7).
// It forwards whole frames only, holding back a trailing partial frame until
// its blank line, and leaves out exactly the usage-only chunk: usage non-null
// and choices empty or absent. Unrequested usage-only chunks crash clients
// that index choices[0] (TheR1D/shell_gpt#741, BerriAI/litellm#30761). Chunks
// with choices, [DONE], comments and oversized frames are forwarded as they
// came. Whatever the reads' sizes, the concatenated output is the same.
func (m *Meter) Filter(dst, p []byte) []byte {
	if len(p) == 0 {
		return dst
	}
	off := 0
	if m.atBoundary && m.fr.cr && p[0] == '\n' {
		// The '\n' of a "\r\n" that ended the previous frame belongs to it.
		if !m.lastDropped {
			dst = append(dst, '\n')
		}
		m.fr.cr = false
		off = 1
	}
	m.atBoundary = false
	start := off
	for off < len(p) {
		n, ok := m.fr.Next(p[off:])
		off += n
		if !ok {
			break
		}
		fr := m.fr.frame
		m.event(fr)
		// A frame longer than the bound cannot be the small usage chunk, and
		// must be decided the same way whether or not it arrived in one read.
		keep := m.committed || len(m.pend)+off-start > m.fr.max || !m.usageOnly(fr)
		if keep {
			dst = append(dst, m.pend...)
			dst = append(dst, p[start:off]...)
		}
		m.pend = m.pend[:0]
		if cap(m.pend) > maxIdleBufferBytes {
			m.pend = nil
		}
		m.committed = false
		m.lastDropped = !keep
		start = off
		m.atBoundary = off == len(p) && p[off-1] == '\r'
	}
	if start < len(p) {
		switch {
		case m.committed:
			dst = append(dst, p[start:]...)
		case len(m.pend)+len(p)-start > m.fr.max:
			dst = append(dst, m.pend...)
			dst = append(dst, p[start:]...)
			m.pend = m.pend[:0]
			m.committed = true
		default:
			m.pend = append(m.pend, p[start:]...)
		}
	}
	return dst
}

// FilterFlush ends a filtered stream: it meters a final frame that lacked
// its blank line and appends it to dst unless it is the usage-only chunk.
func (m *Meter) FilterFlush(dst []byte) []byte {
	fr, ok := m.flush()
	if len(m.pend) > 0 && !(ok && m.usageOnly(fr)) {
		dst = append(dst, m.pend...)
	}
	m.pend = nil
	m.committed = false
	return dst
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
	m.lastReplace = nil
	if !assign && len(u) <= maxReplaceMemo {
		m.lastReplace = append(m.replaceBuf[:0], u...)
		m.replaceBuf = m.lastReplace
	}
	return true
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
	if m.d.Usage.InputIncludesCache {
		// Cached tokens billed again as input is a known overcharge
		// (maximhq/bifrost#904, BerriAI/litellm#11364).
		u.InputUncached = max(u.InputUncached-u.CacheRead-c5-c1, 0)
	}
	if !m.d.Usage.OutputIncludesReasoning {
		// Gemini's candidatesTokenCount excludes thinking; reading it alone
		// under-counts 30-60x (langchain-ai/langchainjs#11423).
		u.Output += u.Reasoning
	}
	u.Reasoning = min(u.Reasoning, u.Output)
	return u
}

// usageOnly reports whether a frame is the chunk include_usage adds: usage
// non-null and choices empty or absent (wire-formats.md §7; absent choices
// per ROCm/ATOM#1711).
func (m *Meter) usageOnly(fr Frame) bool {
	if !fr.HasData || fr.Overflow || m.plan == nil || m.plan.filterUsage < 0 {
		return false
	}
	data := bytes.TrimSpace(fr.Data)
	if len(data) == 0 || data[0] != '{' {
		return false
	}
	m.scanTop(jsonView(data))
	if u := m.plan.top.get(&m.top, m.plan.filterUsage); u == "" || u[0] != '{' {
		return false
	}
	switch c := m.plan.top.get(&m.top, m.plan.filterChoices); {
	case c == "" || c == "null":
		return true
	case len(c) >= 2 && c[0] == '[' && c[len(c)-1] == ']':
		return strings.TrimSpace(c[1:len(c)-1]) == ""
	}
	return false
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

// jsonStr returns the contents of a raw JSON string, or "" for any other
// value. Strings without escapes are sliced, not copied.
func jsonStr(raw string) string {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return ""
	}
	if strings.IndexByte(raw, '\\') < 0 {
		return raw[1 : len(raw)-1]
	}
	return gjson.Parse(raw).Str
}

// jsonView views b as a string without copying. gjson reads it in place; no
// result outlives the event buffer, and values kept are copied (meterSetIdent).
func jsonView(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// meterPaths resolves a fixed set of gjson paths against one JSON object at
// a time. Each gjson.Get walks the document again, and a Gemini chunk needs
// half a dozen lookups, several microseconds per event; instead one pass over
// the members finds every path's first member, jumping over strings with
// IndexByte, and the rest of each path (a few members or an array index) is
// resolved inside that member's value. Paths using gjson syntax beyond dotted
// names go to gjson whole.
type meterPaths struct {
	heads []string    // distinct first members
	refs  []meterPath // one per added path
}

// meterDoc holds one Meter's scan of the current document for a meterPaths.
type meterDoc struct {
	doc  string
	vals []string // raw value per head, "" when absent
}

type meterPath struct {
	head int      // index into heads; -1 resolves the full path with gjson
	rest []string // members or array indexes below the head
	full string
	// needle is the quoted last member name of a nested path: a head value
	// that does not contain it cannot hold the path, and a substring search
	// is far cheaper than walking the value (Gemini's finishReason sits in
	// candidates on one chunk in many).
	needle string
}

// add registers path and returns its reference, or -1 for an empty path.
func (ps *meterPaths) add(path string) int {
	if path == "" {
		return -1
	}
	ref := meterPath{head: -1, full: path}
	// gjson syntax beyond plain dotted names (escapes, wildcards, queries,
	// modifiers) goes through gjson whole.
	if !strings.ContainsAny(path, `\*?#@|!()=<>[]{}`) {
		parts := strings.Split(path, ".")
		ref.rest = parts[1:]
		if last := parts[len(parts)-1]; len(parts) > 1 {
			if _, err := strconv.Atoi(last); err != nil {
				ref.needle = `"` + last + `"`
			}
		}
		ref.head = len(ps.heads)
		for i, h := range ps.heads {
			if h == parts[0] {
				ref.head = i
			}
		}
		if ref.head == len(ps.heads) {
			ps.heads = append(ps.heads, parts[0])
		}
	}
	ps.refs = append(ps.refs, ref)
	return len(ps.refs) - 1
}

// scan locates every head member in doc, into d.
func (ps *meterPaths) scan(d *meterDoc, doc string) {
	d.doc = doc
	jsonMembers(doc, ps.heads, d.vals)
}

// get returns the raw JSON of a reference's value in the document last
// scanned into d, or "" when absent.
func (ps *meterPaths) get(d *meterDoc, ref int) string {
	r := &ps.refs[ref]
	if r.head < 0 {
		return gjson.Get(d.doc, r.full).Raw
	}
	raw := d.vals[r.head]
	if r.needle != "" && !strings.Contains(raw, r.needle) {
		return ""
	}
	for _, name := range r.rest {
		if raw == "" {
			break
		}
		raw = jsonChild(raw, name)
	}
	return raw
}

// jsonChild returns the raw value of member name of an object, or of
// element name (a decimal index) of an array, or "".
func jsonChild(raw, name string) string {
	if raw[0] == '{' {
		var v [1]string
		jsonMembers(raw, []string{name}, v[:])
		return v[0]
	}
	n, err := strconv.Atoi(name)
	if raw[0] != '[' || err != nil || n < 0 {
		return ""
	}
	i := jsonSkipSpace(raw, 1)
	for k := 0; i < len(raw) && raw[i] != ']'; k++ {
		e := jsonValueEnd(raw, i)
		if e < 0 {
			return ""
		}
		if k == n {
			return raw[i:e]
		}
		i = jsonSkipSpace(raw, e)
		if i >= len(raw) || raw[i] != ',' {
			return ""
		}
		i = jsonSkipSpace(raw, i+1)
	}
	return ""
}

// jsonMembers sets vals[i] to the raw value of the member named heads[i] in
// the JSON object doc, or "" when absent. The first of duplicate members
// wins, as in gjson. It stops at the first malformed byte, keeping what it
// found; keys written with escapes never match (providers do not escape
// member names).
func jsonMembers(doc string, heads []string, vals []string) {
	for i := range vals {
		vals[i] = ""
	}
	i := jsonSkipSpace(doc, 0)
	if i >= len(doc) || doc[i] != '{' {
		return
	}
	i++
	left := len(heads)
	for left > 0 {
		i = jsonSkipSpace(doc, i)
		if i >= len(doc) || doc[i] != '"' {
			return
		}
		ke := jsonStringEnd(doc, i+1)
		if ke < 0 {
			return
		}
		key := doc[i+1 : ke]
		i = jsonSkipSpace(doc, ke+1)
		if i >= len(doc) || doc[i] != ':' {
			return
		}
		i = jsonSkipSpace(doc, i+1)
		ve := jsonValueEnd(doc, i)
		if ve < 0 {
			return
		}
		for h, name := range heads {
			if key == name {
				if vals[h] == "" {
					vals[h] = doc[i:ve]
					left--
				}
				break
			}
		}
		i = jsonSkipSpace(doc, ve)
		if i >= len(doc) || doc[i] != ',' {
			return
		}
		i++
	}
}

func jsonSkipSpace(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
		i++
	}
	return i
}

// jsonStringEnd returns the index of the quote closing a string whose
// contents start at i, or -1. It tests eight bytes at a time for '"' or '\\'
// (SWAR): strings are most of what the scan passes over.
func jsonStringEnd(s string, i int) int {
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	for i+8 <= len(s) {
		w := uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
			uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
		q, b := w^(lo*'"'), w^(lo*'\\')
		// The lowest flagged byte is the first '"' or '\\' in the word.
		if m := ((q-lo)&^q | (b-lo)&^b) & hi; m != 0 {
			k := i + bits.TrailingZeros64(m)/8
			if s[k] == '"' {
				return k
			}
			i = k + 2
			continue
		}
		i += 8
	}
	for i < len(s) {
		switch s[i] {
		case '"':
			return i
		case '\\':
			i += 2
		default:
			i++
		}
	}
	return -1
}

// jsonStructural marks the bytes jsonValueEnd must look at inside an
// object or array; a table lookup skips the rest faster than a switch.
var jsonStructural = [256]bool{'"': true, '{': true, '[': true, '}': true, ']': true}

// jsonValueEnd returns the index just after the value starting at i, or -1
// when it is missing or unterminated.
func jsonValueEnd(s string, i int) int {
	if i >= len(s) {
		return -1
	}
	switch s[i] {
	case '"':
		e := jsonStringEnd(s, i+1)
		if e < 0 {
			return -1
		}
		return e + 1
	case '{', '[':
		depth := 0
		for i < len(s) {
			for i < len(s) && !jsonStructural[s[i]] {
				i++
			}
			if i >= len(s) {
				break
			}
			switch s[i] {
			case '"':
				e := jsonStringEnd(s, i+1)
				if e < 0 {
					return -1
				}
				i = e + 1
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return -1
	}
	j := i
	for j < len(s) {
		switch s[j] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			if j == i {
				return -1
			}
			return j
		}
		j++
	}
	return j
}
