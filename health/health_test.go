package health

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// clock is the injected Config.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var t0 = time.Date(2026, 12, 3, 15, 0, 0, 0, time.UTC)

// newTracker has a fake clock and jitter pinned to its midpoint (factor
// 1.0), so cooldowns are exact unless a test unpins it.
func newTracker(cfg Config) (*Tracker, *clock) {
	c := &clock{t: t0}
	cfg.Now = c.now
	tr := New(cfg)
	tr.jitter = func() float64 { return 0.5 }
	return tr, c
}

func hdr(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(name string) string { return m[name] }
}

func fail(tr *Tracker, id string) {
	tr.Observe(Observation{CredentialID: id, Provider: "anthropic", Status: 503, Failed: true})
}

func ok(tr *Tracker, id string) {
	tr.Observe(Observation{CredentialID: id, Provider: "anthropic", Status: 200})
}

// near reports a within a millisecond of b (jitter is float arithmetic).
func near(a, b time.Time) bool { d := a.Sub(b); return d > -time.Millisecond && d < time.Millisecond }

func wantRefused(t *testing.T, v Verdict, reason string, until time.Time) {
	t.Helper()
	if v.OK || v.Reason != reason || !near(v.Until, until) {
		t.Fatalf("verdict %+v, want refused %q until %v", v, reason, until)
	}
}

func wantOK(t *testing.T, v Verdict, probe bool) {
	t.Helper()
	if !v.OK || v.Probe != probe || v.Reason != "" {
		t.Fatalf("verdict %+v, want OK probe=%v", v, probe)
	}
}

func TestOpensAfterThreeConsecutiveFailures(t *testing.T) {
	tr, c := newTracker(Config{})
	fail(tr, "k")
	fail(tr, "k")
	wantOK(t, tr.Check("k"), false)
	fail(tr, "k")
	wantRefused(t, tr.Check("k"), ReasonCooldown, t0.Add(DefaultBaseCooldown))
	c.advance(DefaultBaseCooldown - time.Millisecond*2)
	wantRefused(t, tr.Check("k"), ReasonCooldown, t0.Add(DefaultBaseCooldown))
	if s, _ := tr.State("k"); s.Circuit != CircuitOpen || s.Failures != 3 || s.Provider != "anthropic" {
		t.Errorf("state %+v", s)
	}
}

func TestFailureThresholdConfigurable(t *testing.T) {
	tr, _ := newTracker(Config{FailureThreshold: 1})
	fail(tr, "k")
	if v := tr.Check("k"); v.OK {
		t.Fatalf("one failure with threshold 1: %+v", v)
	}
}

func TestSuccessResetsConsecutiveCount(t *testing.T) {
	tr, _ := newTracker(Config{})
	fail(tr, "k")
	fail(tr, "k")
	ok(tr, "k")
	fail(tr, "k")
	fail(tr, "k")
	wantOK(t, tr.Check("k"), false)
	if s, _ := tr.State("k"); s.Failures != 2 || s.Circuit != CircuitClosed {
		t.Errorf("state %+v", s)
	}
}

func openCircuit(tr *Tracker, id string) {
	for range 3 {
		fail(tr, id)
	}
}

func TestHalfOpenGrantsOneProbe(t *testing.T) {
	tr, c := newTracker(Config{})
	openCircuit(tr, "k")
	c.advance(DefaultBaseCooldown)
	if s, _ := tr.State("k"); s.Circuit != CircuitHalfOpen || s.Reason != "" {
		t.Errorf("after the cooldown the view says %+v", s)
	}
	var probes, refused atomic.Int32
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			v := tr.Check("k")
			switch {
			case v.OK && v.Probe:
				probes.Add(1)
			case !v.OK && v.Reason == ReasonCooldown:
				refused.Add(1)
			default:
				t.Errorf("unexpected verdict %+v", v)
			}
		})
	}
	wg.Wait()
	if probes.Load() != 1 || refused.Load() != 31 {
		t.Fatalf("%d probes and %d refusals, want 1 and 31", probes.Load(), refused.Load())
	}
	wantRefused(t, tr.Check("k"), ReasonCooldown, c.now().Add(DefaultProbeTimeout))
}

func TestViewsNeverTakeTheProbe(t *testing.T) {
	tr, c := newTracker(Config{})
	openCircuit(tr, "k")
	c.advance(DefaultBaseCooldown)
	for range 3 {
		tr.States()
		tr.State("k")
		tr.Each(func(State) {})
	}
	wantOK(t, tr.Check("k"), true)
}

func TestProbeSuccessClosesAndResetsGrowth(t *testing.T) {
	tr, c := newTracker(Config{})
	openCircuit(tr, "k")
	c.advance(DefaultBaseCooldown)
	wantOK(t, tr.Check("k"), true)
	fail(tr, "k") // a late, unmarked failure: counted, decides nothing
	tr.Observe(Observation{CredentialID: "k", Status: 200, Probe: true})
	wantOK(t, tr.Check("k"), false)
	if s, _ := tr.State("k"); s.Circuit != CircuitClosed || s.Failures != 0 {
		t.Errorf("state %+v", s)
	}
	openCircuit(tr, "k")
	wantRefused(t, tr.Check("k"), ReasonCooldown, c.now().Add(DefaultBaseCooldown))
}

func TestProbeFailureDoublesCooldown(t *testing.T) {
	tr, c := newTracker(Config{})
	openCircuit(tr, "k")
	want := DefaultBaseCooldown
	for range 4 {
		wantRefused(t, tr.Check("k"), ReasonCooldown, c.now().Add(want))
		c.advance(want)
		wantOK(t, tr.Check("k"), true)
		tr.Observe(Observation{CredentialID: "k", Status: 529, Failed: true, Probe: true})
		want *= 2
	}
}

func TestLateObservationsDoNotDecideHalfOpen(t *testing.T) {
	tr, c := newTracker(Config{})
	openCircuit(tr, "k")
	c.advance(DefaultBaseCooldown)
	wantOK(t, tr.Check("k"), true)
	ok(tr, "k")
	fail(tr, "k")
	if s, _ := tr.State("k"); s.Circuit != CircuitHalfOpen {
		t.Fatalf("unmarked observations moved the half-open circuit: %+v", s)
	}
}

func TestCooldownCapped(t *testing.T) {
	tr, c := newTracker(Config{BaseCooldown: time.Second, MaxCooldown: 10 * time.Second})
	tr.jitter = func() float64 { return 0.999999 } // +20%: the cap must still hold
	openCircuit(tr, "k")
	var last time.Duration
	for range 12 {
		v := tr.Check("k")
		last = v.Until.Sub(c.now())
		if last > 10*time.Second {
			t.Fatalf("cooldown %v past MaxCooldown", last)
		}
		c.advance(last)
		wantOK(t, tr.Check("k"), true)
		tr.Observe(Observation{CredentialID: "k", Failed: true, Probe: true})
	}
	if last != 10*time.Second {
		t.Errorf("grown cooldown %v, want the cap", last)
	}
}

func TestJitterBounded(t *testing.T) {
	c := &clock{t: t0}
	tr := New(Config{Now: c.now}) // the real jitter
	seen := map[time.Duration]bool{}
	for i := range 300 {
		id := fmt.Sprint("k", i)
		openCircuit(tr, id)
		d := tr.Check(id).Until.Sub(c.now())
		if d < DefaultBaseCooldown*8/10 || d > DefaultBaseCooldown*12/10 {
			t.Fatalf("cooldown %v outside base ±20%%", d)
		}
		seen[d] = true
	}
	if len(seen) < 100 {
		t.Errorf("only %d distinct cooldowns in 300: no jitter", len(seen))
	}
}

func TestProbeSlotExpires(t *testing.T) {
	tr, c := newTracker(Config{})
	openCircuit(tr, "k")
	c.advance(DefaultBaseCooldown)
	wantOK(t, tr.Check("k"), true) // and its caller vanishes
	c.advance(DefaultProbeTimeout - time.Second)
	wantRefused(t, tr.Check("k"), ReasonCooldown, c.now().Add(time.Second))
	c.advance(time.Second)
	wantOK(t, tr.Check("k"), true)
}

func Test429RetryAfter(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    func(string) string
		want time.Duration
	}{
		{"seconds", hdr("retry-after", "7"), 7 * time.Second},
		{"http date", hdr("retry-after", t0.Add(90*time.Second).Format("Mon, 02 Jan 2006 15:04:05 GMT")), 90 * time.Second},
		{"rfc 850 date", hdr("retry-after", t0.Add(20*time.Second).Format("Monday, 02-Jan-06 15:04:05 GMT")), 20 * time.Second},
		{"ansi c date", hdr("retry-after", t0.Add(30*time.Second).Format(time.ANSIC)), 30 * time.Second},
		{"retry-after-ms first", hdr("retry-after-ms", "1500", "retry-after", "2"), 1500 * time.Millisecond},
		{"seconds capped", hdr("retry-after", "86400"), DefaultMaxReset},
		{"overflowing seconds: default pause", hdr("retry-after", "99999999999999999999"), DefaultBaseCooldown},
		{"past date: default pause", hdr("retry-after", t0.Add(-time.Hour).Format("Mon, 02 Jan 2006 15:04:05 GMT")), DefaultBaseCooldown},
		{"zero: default pause", hdr("retry-after", "0"), DefaultBaseCooldown},
		{"malformed: default pause", hdr("retry-after", "soon"), DefaultBaseCooldown},
		{"absent: default pause", nil, DefaultBaseCooldown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, c := newTracker(Config{})
			tr.Observe(Observation{CredentialID: "k", Status: 429, Failed: true, Header: tc.h})
			wantRefused(t, tr.Check("k"), ReasonRateLimited, t0.Add(tc.want))
			if s, _ := tr.State("k"); s.Circuit != CircuitClosed || s.Failures != 0 || s.Reason != ReasonRateLimited {
				t.Errorf("a 429 touched the breaker: %+v", s)
			}
			c.advance(tc.want)
			wantOK(t, tr.Check("k"), false)
		})
	}
}

func TestRepeated429sNeverOpenTheCircuitButPauseLonger(t *testing.T) {
	tr, c := newTracker(Config{})
	want := DefaultBaseCooldown
	for range 12 {
		tr.Observe(Observation{CredentialID: "k", Status: 429, Failed: true})
		v := tr.Check("k")
		wantRefused(t, v, ReasonRateLimited, c.now().Add(want))
		c.advance(want)
		want = min(want*2, DefaultMaxCooldown)
	}
	if s, _ := tr.State("k"); s.Circuit != CircuitClosed {
		t.Errorf("429s opened the circuit: %+v", s)
	}
	ok(tr, "k")
	tr.Observe(Observation{CredentialID: "k", Status: 429})
	wantRefused(t, tr.Check("k"), ReasonRateLimited, c.now().Add(DefaultBaseCooldown))
}

func Test429OnProbeFreesTheSlot(t *testing.T) {
	tr, c := newTracker(Config{})
	openCircuit(tr, "k")
	c.advance(DefaultBaseCooldown)
	wantOK(t, tr.Check("k"), true)
	tr.Observe(Observation{CredentialID: "k", Status: 429, Failed: true, Probe: true, Header: hdr("retry-after", "2")})
	wantRefused(t, tr.Check("k"), ReasonRateLimited, c.now().Add(2*time.Second))
	c.advance(2 * time.Second)
	wantOK(t, tr.Check("k"), true)
}

func TestHeadroomZeroSkipsUntilReset(t *testing.T) {
	in := func(d time.Duration) string { return t0.Add(d).Format(time.RFC3339) }
	for _, tc := range []struct {
		name      string
		h         func(string) string
		want      time.Duration
		req, toks int64
	}{
		{"anthropic requests", hdr("anthropic-ratelimit-requests-remaining", "0", "anthropic-ratelimit-requests-reset", in(20*time.Second),
			"anthropic-ratelimit-tokens-remaining", "80000", "anthropic-ratelimit-tokens-reset", in(time.Second)), 20 * time.Second, 0, 80000},
		{"anthropic tokens", hdr("anthropic-ratelimit-requests-remaining", "49", "anthropic-ratelimit-requests-reset", in(time.Second),
			"anthropic-ratelimit-tokens-remaining", "0", "anthropic-ratelimit-tokens-reset", in(40*time.Second)), 40 * time.Second, 49, 0},
		{"anthropic input tokens", hdr("anthropic-ratelimit-input-tokens-remaining", "0", "anthropic-ratelimit-input-tokens-reset", in(15*time.Second),
			"anthropic-ratelimit-output-tokens-remaining", "9000", "anthropic-ratelimit-output-tokens-reset", in(3*time.Second)), 15 * time.Second, -1, 0},
		{"anthropic output tokens, fractional seconds", hdr("anthropic-ratelimit-output-tokens-remaining", "0",
			"anthropic-ratelimit-output-tokens-reset", t0.Add(12500*time.Millisecond).Format(time.RFC3339Nano)), 12500 * time.Millisecond, -1, 0},
		{"openai requests", hdr("x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "6m0s",
			"x-ratelimit-remaining-tokens", "1000", "x-ratelimit-reset-tokens", "20ms"), 6 * time.Minute, 0, 1000},
		{"openai tokens", hdr("x-ratelimit-remaining-requests", "10", "x-ratelimit-reset-requests", "1s",
			"x-ratelimit-remaining-tokens", "0", "x-ratelimit-reset-tokens", "20ms"), 20 * time.Millisecond, 10, 0},
		{"far-future reset capped", hdr("anthropic-ratelimit-requests-remaining", "0", "anthropic-ratelimit-requests-reset", in(3*time.Hour)),
			DefaultMaxReset, 0, -1},
		{"far-future duration capped", hdr("x-ratelimit-remaining-tokens", "0", "x-ratelimit-reset-tokens", "24h0m0s"), DefaultMaxReset, -1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, c := newTracker(Config{})
			ok(tr, "k")
			tr.Observe(Observation{CredentialID: "k", Status: 200, Header: tc.h})
			wantRefused(t, tr.Check("k"), ReasonRateLimited, t0.Add(tc.want))
			s, _ := tr.State("k")
			if s.RemainingRequests != tc.req || s.RemainingTokens != tc.toks || s.Circuit != CircuitClosed {
				t.Errorf("state %+v, want remaining %d requests, %d tokens", s, tc.req, tc.toks)
			}
			c.advance(tc.want - time.Millisecond*2)
			if v := tr.Check("k"); v.OK {
				t.Fatalf("allowed before the reset: %+v", v)
			}
			c.advance(time.Millisecond * 2)
			wantOK(t, tr.Check("k"), false)
			if s, _ := tr.State("k"); s.Reason != "" {
				t.Errorf("after the reset the view says %+v", s)
			}
		})
	}
}

func TestHeadroomNotBlocking(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    func(string) string
	}{
		{"reset in the past ignored", hdr("anthropic-ratelimit-requests-remaining", "0", "anthropic-ratelimit-requests-reset", t0.Add(-time.Minute).Format(time.RFC3339))},
		{"no reset", hdr("x-ratelimit-remaining-requests", "0")},
		{"malformed reset", hdr("anthropic-ratelimit-requests-remaining", "0", "anthropic-ratelimit-requests-reset", "6m0s")},
		{"malformed duration", hdr("x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "2026-12-03T15:01:00Z")},
		{"negative duration", hdr("x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "-5s")},
		{"negative remaining", hdr("x-ratelimit-remaining-requests", "-1", "x-ratelimit-reset-requests", "5s")},
		{"malformed remaining", hdr("x-ratelimit-remaining-requests", "none", "x-ratelimit-reset-requests", "5s")},
		{"headroom left", hdr("x-ratelimit-remaining-requests", "1", "x-ratelimit-reset-requests", "5s")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, _ := newTracker(Config{})
			tr.Observe(Observation{CredentialID: "k", Status: 200, Header: tc.h})
			wantOK(t, tr.Check("k"), false)
		})
	}
}

func TestRefilledHeadroomLiftsTheBlock(t *testing.T) {
	tr, c := newTracker(Config{})
	tr.Observe(Observation{CredentialID: "k", Status: 200, Header: hdr("x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "1m0s")})
	if tr.Check("k").OK {
		t.Fatal("no headroom, yet allowed")
	}
	c.advance(time.Second)
	// A response from an attempt in flight reports a refilled bucket.
	tr.Observe(Observation{CredentialID: "k", Status: 200, Header: hdr("x-ratelimit-remaining-requests", "59", "x-ratelimit-reset-requests", "1s")})
	wantOK(t, tr.Check("k"), false)
	// A response without rate-limit headers leaves the last report.
	tr.Observe(Observation{CredentialID: "k", Status: 200, Header: hdr()})
	if s, _ := tr.State("k"); s.RemainingRequests != 59 || !s.Reset.Equal(c.now().Add(time.Second)) {
		t.Errorf("state %+v", s)
	}
}

func TestLRUBound(t *testing.T) {
	tr, _ := newTracker(Config{MaxTracked: 4})
	openCircuit(tr, "broken") // oldest, but refused: kept over a healthy one
	for i := range 6 {
		ok(tr, fmt.Sprint("k", i))
	}
	ok(tr, "k2") // k2 becomes the most recent
	ok(tr, "k6")
	var ids []string
	tr.Each(func(s State) { ids = append(ids, s.CredentialID) })
	if fmt.Sprint(ids) != "[broken k2 k5 k6]" {
		t.Errorf("tracked %v, want [broken k2 k5 k6]", ids)
	}
	if v := tr.Check("broken"); v.OK {
		t.Errorf("eviction let the open circuit go: %+v", v)
	}
	for i := range 2000 {
		fail(tr, fmt.Sprint("x", i))
	}
	if n := len(tr.States()); n != 4 {
		t.Errorf("%d tracked, bound 4", n)
	}
}

func TestNilTrackerAllowsAll(t *testing.T) {
	var tr *Tracker
	wantOK(t, tr.Check("k"), false)
	tr.Observe(Observation{CredentialID: "k", Failed: true})
	if tr.States() != nil {
		t.Error("nil tracker has states")
	}
	if _, ok := tr.State("k"); ok {
		t.Error("nil tracker tracks")
	}
}

func TestCheckHealthyAllocatesNothing(t *testing.T) {
	tr, _ := newTracker(Config{})
	ok(tr, "k")
	tr.Observe(Observation{CredentialID: "k", Status: 200, Header: hdr("x-ratelimit-remaining-requests", "5", "x-ratelimit-reset-requests", "1s")})
	if n := testing.AllocsPerRun(100, func() {
		if !tr.Check("k").OK {
			t.Fatal("refused")
		}
		tr.Check("unknown")
	}); n != 0 {
		t.Errorf("Check allocates %v times", n)
	}
}

func BenchmarkCheckHealthy(b *testing.B) {
	tr := New(Config{})
	for i := range 1000 {
		ok(tr, fmt.Sprint("cred-", i))
	}
	b.ReportAllocs()
	for b.Loop() {
		if !tr.Check("cred-500").OK {
			b.Fatal("refused")
		}
	}
}

func BenchmarkCheckHealthyParallel(b *testing.B) {
	tr := New(Config{})
	for i := range 1000 {
		ok(tr, fmt.Sprint("cred-", i))
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !tr.Check("cred-500").OK {
				b.Fatal("refused")
			}
		}
	})
}

// FuzzObserveHeaders: whatever the headers, Observe and the views never
// panic, a refusal never lasts past the bounds, and headroom is -1 or a
// count.
func FuzzObserveHeaders(f *testing.F) {
	f.Add(200, "0", "2026-12-03T15:00:20Z", "0", "6m0s", "7", "")
	f.Add(429, "", "", "", "", "Thu, 03 Dec 2026 15:01:00 GMT", "250")
	f.Add(429, "-1", "garbage", "99999999999999999999", "-3s", "1e9", "NaN")
	f.Add(200, "5", "2026-12-03T15:00:20.123456789+01:00", "18446744073709551615", "1h2m3.5s", "", "1e300")
	f.Fuzz(func(t *testing.T, status int, anthRem, anthReset, oaRem, oaReset, retry, retryMs string) {
		tr, c := newTracker(Config{})
		h := hdr("anthropic-ratelimit-requests-remaining", anthRem, "anthropic-ratelimit-requests-reset", anthReset,
			"anthropic-ratelimit-output-tokens-remaining", anthRem, "anthropic-ratelimit-output-tokens-reset", anthReset,
			"x-ratelimit-remaining-tokens", oaRem, "x-ratelimit-reset-tokens", oaReset,
			"retry-after", retry, "retry-after-ms", retryMs)
		for range 2 {
			tr.Observe(Observation{CredentialID: "k", Status: status, Failed: status >= 500 || status == 429, Header: h})
		}
		v := tr.Check("k")
		if !v.OK && (v.Until.After(c.now().Add(DefaultMaxReset)) || !v.Until.After(c.now())) {
			t.Fatalf("refused until %v, now %v", v.Until, c.now())
		}
		s, _ := tr.State("k")
		if s.RemainingRequests < -1 || s.RemainingTokens < -1 {
			t.Fatalf("state %+v", s)
		}
		c.advance(DefaultMaxReset)
		wantOK(t, tr.Check("k"), false)
	})
}

// TestConcurrentUse is for the race detector: checks, observations,
// evictions and views at once.
func TestConcurrentUse(t *testing.T) {
	tr, c := newTracker(Config{MaxTracked: 8, BaseCooldown: time.Millisecond})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 500 {
				id := fmt.Sprint("k", (g+i)%12)
				if v := tr.Check(id); v.OK {
					status := 200
					if i%2 == 0 {
						status = 500
					}
					tr.Observe(Observation{CredentialID: id, Status: status, Failed: status == 500, Probe: v.Probe,
						Header: hdr("x-ratelimit-remaining-requests", fmt.Sprint(i%3), "x-ratelimit-reset-requests", "1ms")})
				}
				if i%50 == 0 {
					tr.States()
					c.advance(time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
	if n := len(tr.States()); n > 8 {
		t.Errorf("%d tracked, bound 8", n)
	}
}
