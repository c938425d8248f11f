// Package health tracks each upstream credential's health as the proxy sees
// it: a circuit breaker over consecutive failures, and the headroom the
// provider's rate-limit headers report, so failover skips a credential in
// cooldown or without headroom until it recovers or resets.
//
// The proxy calls Check before each attempt and Observe after it, copying
// Verdict.Probe into Observation.Probe. Views (the resolution view,
// metrics) read State, States or Each: Check may hand out the half-open
// probe, so a view must never call it.
//
// The rules, in one place:
//
//   - FailureThreshold consecutive failures open the circuit for a cooldown:
//     BaseCooldown the first time, doubled at each reopening without a
//     success in between, never more than MaxCooldown, each cooldown
//     jittered by ±20% (then capped at MaxCooldown) so credentials that failed
//     together do not come back together.
//   - After the cooldown the circuit is half-open: one caller gets a Verdict
//     with Probe set, the others are refused until the probe reports. A
//     probe's success closes the circuit and resets the growth; its failure
//     reopens it with the doubled cooldown. A probe that never reports (its
//     caller vanished) frees the slot after ProbeTimeout, and the next
//     caller probes; a probe answered with 429 frees the slot without a
//     verdict on the circuit.
//   - A 429 is the provider saying "not now", not "this key is broken": it
//     never counts towards the breaker (nor resets its count). It makes the
//     credential rate-limited until its Retry-After (or retry-after-ms);
//     without a usable one (absent, malformed, zero or past), for
//     BaseCooldown doubled at each consecutive such 429, up to MaxCooldown. So a credential that keeps answering 429
//     (a spent tier, say) is tried less and less often, without the
//     breaker reading it as an outage.
//   - Every response's rate-limit headers (Anthropic's anthropic-ratelimit-*,
//     OpenAI's x-ratelimit-*) update the credential's headroom. Remaining
//     requests or tokens of 0 with a reset in the future make it
//     rate-limited until that reset. No reset from a header or Retry-After is
//     trusted more than MaxReset ahead; a reset in the past, a negative or
//     malformed value is ignored.
//   - At most MaxTracked credentials are tracked; past it the least recently
//     observed is forgotten, preferring one that is not refused.
package health

import (
	"container/list"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for the zero values of Config.
const (
	DefaultFailureThreshold = 3
	DefaultBaseCooldown     = 5 * time.Second
	DefaultMaxCooldown      = 5 * time.Minute
	DefaultProbeTimeout     = 30 * time.Second
	DefaultMaxReset         = 10 * time.Minute
	DefaultMaxTracked       = 10_000
)

// Circuit states, as State.Circuit reports them.
const (
	CircuitClosed   = "closed"
	CircuitHalfOpen = "half-open"
	CircuitOpen     = "open"
)

// Refusal reasons, as Verdict.Reason and State.Reason report them.
const (
	ReasonCooldown    = "cooldown"
	ReasonRateLimited = "rate-limited"
)

// Config configures a Tracker. Zero values take documented defaults.
type Config struct {
	// FailureThreshold is how many consecutive failures open the circuit
	// (default 3).
	FailureThreshold int
	// BaseCooldown is the first cooldown; each reopening doubles it up to
	// MaxCooldown (defaults 5 s and 5 min).
	BaseCooldown, MaxCooldown time.Duration
	// ProbeTimeout is how long a half-open probe may go unreported before
	// another caller may probe (default 30 s). A probe is a real request,
	// so this also bounds how long a slow one holds the slot: past it, a
	// second probe may run beside it, and the first to report decides.
	ProbeTimeout time.Duration
	// MaxReset bounds how far ahead a provider's reset or Retry-After is
	// believed (default 10 min): past it the credential is tried again,
	// and a fresh answer renews the wait if the provider still means it.
	MaxReset time.Duration
	// MaxTracked bounds the credentials tracked (default 10,000).
	MaxTracked int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Observation is the outcome of one upstream attempt.
type Observation struct {
	CredentialID, Provider string
	// Status is the HTTP status, 0 when none came.
	Status int
	// Failed says the attempt counts as a failure of the credential
	// (connect, TLS, header timeout, 429, 5xx, 529). A 429 is told apart by
	// Status and handled as a rate limit, not a breaker failure.
	Failed bool
	// Probe is Verdict.Probe of the Check that allowed this attempt: only
	// the probe's outcome closes or reopens a half-open circuit, so an
	// attempt that started before the circuit opened and reports late
	// cannot decide it.
	Probe bool
	// Header reads a response header by lower-case name ("" if absent);
	// nil when no response came.
	Header func(name string) string
}

// Verdict says whether a credential may be tried now.
type Verdict struct {
	OK bool
	// Probe is set when the circuit is half-open: this attempt is the
	// probe, and its outcome closes or reopens the circuit.
	Probe bool
	// Until is when a refused credential may be tried again (for a refused
	// half-open credential, when the outstanding probe's slot expires).
	Until time.Time
	// Reason is "cooldown" or "rate-limited" when not OK.
	Reason string
}

// State is one credential's health, for the resolution view and metrics.
type State struct {
	CredentialID string `json:"credential_id"`
	Provider     string `json:"provider"`
	Circuit      string `json:"circuit"` // closed, open, half-open
	Failures     int    `json:"consecutive_failures"`
	// Reason is why Check would refuse it now ("cooldown" or
	// "rate-limited"), "" when it would not; Until is when that ends.
	Reason string    `json:"reason,omitempty"`
	Until  time.Time `json:"until,omitzero"`
	// Remaining request and token headroom the provider last reported,
	// -1 when unknown; Reset when it refills. Tokens are the least of the
	// token dimensions reported (Anthropic's tokens, input-tokens and
	// output-tokens); Reset is the latest reset reported, capped at
	// MaxReset ahead of the response.
	RemainingRequests int64     `json:"remaining_requests"`
	RemainingTokens   int64     `json:"remaining_tokens"`
	Reset             time.Time `json:"reset,omitzero"`
}

type circuit uint8

const (
	closed circuit = iota
	open
	halfOpen
)

func (c circuit) String() string {
	switch c {
	case open:
		return CircuitOpen
	case halfOpen:
		return CircuitHalfOpen
	}
	return CircuitClosed
}

// entry is one credential. blocked is the fast path: false means the
// circuit is closed and nothing rate-limits it, so Check answers without
// the lock or the clock.
type entry struct {
	blocked atomic.Bool
	elem    *list.Element // in Tracker.lru; guarded by Tracker.mu

	mu       sync.Mutex
	id       string
	provider string
	circuit  circuit
	failures int
	// reopens counts openings since the last close: the cooldown is
	// BaseCooldown << reopens.
	reopens  int
	openEnd  time.Time // open: when the cooldown ends
	probing  bool      // half-open: a probe is out
	probeEnd time.Time // half-open: when that probe's slot expires
	// limited429 counts consecutive 429s without a usable Retry-After.
	limited429   int
	limitedUntil time.Time // from 429s
	headroomEnd  time.Time // from remaining 0 in the headers
	remReq       int64
	remTok       int64
	reset        time.Time
}

// Tracker is the health of every credential the proxy has used. A nil
// *Tracker allows every credential and records nothing, so health can be
// switched off without branches at the call sites.
type Tracker struct {
	cfg    Config
	jitter func() float64 // in [0, 1); tests pin it

	// byID is never written once stored: a new credential stores a copy.
	// So Check reads it without a lock, and checks on many cores share no
	// written cache line. The copy costs O(tracked) per credential first
	// seen; credentials come from the registry, not from clients, and
	// MaxTracked bounds it.
	byID atomic.Pointer[map[string]*entry]

	mu  sync.Mutex // serialises writers of byID, and guards lru
	lru list.List  // of *entry, most recently observed at the front
}

// New returns a Tracker, its zero Config fields set to the defaults.
func New(cfg Config) *Tracker {
	if cfg.FailureThreshold <= 0 {
		cfg.FailureThreshold = DefaultFailureThreshold
	}
	if cfg.BaseCooldown <= 0 {
		cfg.BaseCooldown = DefaultBaseCooldown
	}
	if cfg.MaxCooldown <= 0 {
		cfg.MaxCooldown = DefaultMaxCooldown
	}
	cfg.MaxCooldown = max(cfg.MaxCooldown, cfg.BaseCooldown)
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = DefaultProbeTimeout
	}
	if cfg.MaxReset <= 0 {
		cfg.MaxReset = DefaultMaxReset
	}
	if cfg.MaxTracked <= 0 {
		cfg.MaxTracked = DefaultMaxTracked
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	t := &Tracker{cfg: cfg, jitter: rand.Float64}
	t.byID.Store(&map[string]*entry{})
	return t
}

// Check says whether credID may be tried now. An OK Verdict with Probe set
// is the half-open circuit's one probe: the caller must attempt and report
// it (Observation.Probe). A credential never observed is allowed.
func (t *Tracker) Check(credID string) Verdict {
	if t == nil {
		return Verdict{OK: true}
	}
	e := (*t.byID.Load())[credID]
	if e == nil || !e.blocked.Load() {
		return Verdict{OK: true}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	now := t.cfg.Now()
	v := e.verdict(now, true, t.cfg.ProbeTimeout)
	e.settle()
	return v
}

// verdict decides for now; with grant, it moves an open circuit whose
// cooldown is over to half-open, drops expired rate limits and hands out
// the probe for probeTTL. Without grant it only reads, for views. Callers
// hold e.mu.
func (e *entry) verdict(now time.Time, grant bool, probeTTL time.Duration) Verdict {
	limited := later(e.limitedUntil, e.headroomEnd)
	if !limited.IsZero() && !now.Before(limited) {
		limited = time.Time{}
		if grant {
			e.limitedUntil, e.headroomEnd = time.Time{}, time.Time{}
		}
	}
	rateLimited := Verdict{Reason: ReasonRateLimited, Until: limited}
	c := e.circuit
	if c == open && !now.Before(e.openEnd) {
		c = halfOpen
		if grant {
			e.circuit, e.probing = halfOpen, false
		}
	}
	switch c {
	case open:
		if limited.After(e.openEnd) {
			return rateLimited
		}
		return Verdict{Reason: ReasonCooldown, Until: e.openEnd}
	case halfOpen:
		if e.probing && now.Before(e.probeEnd) {
			if limited.After(e.probeEnd) {
				return rateLimited
			}
			return Verdict{Reason: ReasonCooldown, Until: e.probeEnd}
		}
		if !limited.IsZero() {
			return rateLimited
		}
		if grant {
			e.probing, e.probeEnd = true, now.Add(probeTTL)
		}
		return Verdict{OK: true, Probe: true}
	}
	if !limited.IsZero() {
		return rateLimited
	}
	return Verdict{OK: true}
}

// settle recomputes the fast-path flag. Callers hold e.mu.
func (e *entry) settle() {
	e.blocked.Store(e.circuit != closed || !e.limitedUntil.IsZero() || !e.headroomEnd.IsZero())
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Observe records one attempt's outcome. An empty CredentialID is ignored.
func (t *Tracker) Observe(o Observation) {
	if t == nil || o.CredentialID == "" {
		return
	}
	e := t.entry(o.CredentialID)
	e.mu.Lock()
	defer e.mu.Unlock()
	now := t.cfg.Now()
	if o.Provider != "" {
		e.provider = o.Provider
	}
	if o.Header != nil {
		e.readHeaders(o.Header, now, t.cfg.MaxReset)
	}
	switch {
	case o.Status == 429:
		e.rateLimited(o.Header, now, t)
		if o.Probe && e.circuit == halfOpen {
			e.probing = false // no verdict on the circuit: let the next caller probe
		}
	case o.Failed:
		e.failures++
		switch {
		case e.circuit == closed && e.failures >= t.cfg.FailureThreshold:
			e.open(now, t)
		case e.circuit == halfOpen && o.Probe:
			e.reopens++
			e.open(now, t)
		}
	default:
		e.failures, e.limited429 = 0, 0
		if o.Probe && e.circuit == halfOpen {
			e.circuit, e.probing, e.reopens = closed, false, 0
		}
	}
	e.settle()
}

func (e *entry) open(now time.Time, t *Tracker) {
	e.circuit, e.probing = open, false
	e.openEnd = now.Add(t.cooldown(e.reopens))
}

// cooldown is BaseCooldown << n, capped, jittered by ±20%, capped again so
// MaxCooldown is a true bound.
func (t *Tracker) cooldown(n int) time.Duration {
	d := t.cfg.BaseCooldown
	for range n {
		if d >= t.cfg.MaxCooldown {
			break
		}
		d *= 2
	}
	d = min(d, t.cfg.MaxCooldown)
	d = time.Duration(float64(d) * (0.8 + 0.4*t.jitter()))
	return min(d, t.cfg.MaxCooldown)
}

// rateLimited handles a 429: until its Retry-After, else a growing pause.
func (e *entry) rateLimited(h func(string) string, now time.Time, t *Tracker) {
	if d, ok := retryAfter(h, now); ok {
		e.limited429 = 0
		e.limitedUntil = later(e.limitedUntil, now.Add(min(d, t.cfg.MaxReset)))
		return
	}
	d := t.cfg.BaseCooldown
	for range e.limited429 {
		if d >= t.cfg.MaxCooldown {
			break
		}
		d *= 2
	}
	e.limited429++
	e.limitedUntil = later(e.limitedUntil, now.Add(min(d, t.cfg.MaxCooldown)))
}

// entry returns credID's entry, creating it (and evicting past MaxTracked)
// if needed, and marks it most recently observed.
func (t *Tracker) entry(credID string) *entry {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := *t.byID.Load()
	if e := old[credID]; e != nil {
		t.lru.MoveToFront(e.elem)
		return e
	}
	e := &entry{id: strings.Clone(credID), remReq: -1, remTok: -1}
	e.elem = t.lru.PushFront(e)
	m := make(map[string]*entry, len(old)+1)
	maps.Copy(m, old)
	m[e.id] = e
	if len(m) > t.cfg.MaxTracked {
		delete(m, t.evict().id)
	}
	t.byID.Store(&m)
	return e
}

// evictScan is how many of the least recently observed entries eviction
// looks at for one that is not refused: forgetting an open circuit would
// let a broken credential straight back in.
const evictScan = 8

// evict takes one entry off the LRU list and returns it for the caller
// to delete from the map. Callers hold t.mu.
func (t *Tracker) evict() *entry {
	victim := t.lru.Back()
	el := victim
	for range evictScan {
		if el == nil || el == t.lru.Front() {
			break
		}
		if !el.Value.(*entry).blocked.Load() {
			victim = el
			break
		}
		el = el.Prev()
	}
	return t.lru.Remove(victim).(*entry)
}

// State returns credID's health, false when it is not tracked. It reads
// only: it never hands out a probe.
func (t *Tracker) State(credID string) (State, bool) {
	if t == nil {
		return State{}, false
	}
	e := (*t.byID.Load())[credID]
	if e == nil {
		return State{}, false
	}
	return e.state(t.cfg.Now()), true
}

// States lists every tracked credential, by credential id.
func (t *Tracker) States() []State {
	var out []State
	t.Each(func(s State) { out = append(out, s) })
	return out
}

// Each calls fn with every tracked credential's State, by credential id,
// for metrics callbacks. fn runs without any of the tracker's locks held.
func (t *Tracker) Each(fn func(State)) {
	if t == nil {
		return
	}
	es := slices.Collect(maps.Values(*t.byID.Load()))
	slices.SortFunc(es, func(a, b *entry) int { return strings.Compare(a.id, b.id) })
	now := t.cfg.Now()
	for _, e := range es {
		fn(e.state(now))
	}
}

func (e *entry) state(now time.Time) State {
	e.mu.Lock()
	defer e.mu.Unlock()
	v := e.verdict(now, false, 0)
	c := e.circuit
	if c == open && !now.Before(e.openEnd) {
		c = halfOpen
	}
	return State{
		CredentialID: e.id, Provider: e.provider, Circuit: c.String(), Failures: e.failures,
		Reason: v.Reason, Until: v.Until,
		RemainingRequests: e.remReq, RemainingTokens: e.remTok, Reset: e.reset,
	}
}
