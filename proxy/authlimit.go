package proxy

import (
	"hash/maphash"
	"math"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Authentication-failure limits. Each failed token check of an unknown,
// well-formed token costs an HMAC and a store query per master key; a
// guesser reusing one keep-alive ran 7,612 a second (hostile-clients.md §4).
const (
	// DefaultAuthFailureBurst is the failures a client address may have
	// before it is throttled: a harness with a stale token retries a
	// handful of times, never twenty.
	DefaultAuthFailureBurst = 20
	// DefaultAuthFailuresPerMinute refills a client address's budget: one
	// failure a second, sustained.
	DefaultAuthFailuresPerMinute = 60
	// DefaultAuthFailuresGlobal bounds failed checks per second over every
	// address together, which protects the store from a spray across many
	// addresses. High on purpose: when it is spent, every client without a
	// recently accepted token is refused, so it must sit far above any
	// legitimate failure rate and near what the store can answer.
	DefaultAuthFailuresGlobal = 1000
	// authLimitAddresses caps the client addresses tracked; the least
	// recently seen is forgotten first: at about 100 B an entry, 64k
	// addresses hold under 7 MiB.
	authLimitAddresses = 1 << 16
	// authPassTokens caps the recently accepted tokens that skip the
	// limiter, and authPassTTL how long one is remembered.
	authPassTokens = 4096
	authPassTTL    = time.Minute
)

// AuthLimitConfig configures the failure limiter. Zero fields take the
// defaults; a negative field turns that limit off.
type AuthLimitConfig struct {
	// Burst and PerMinute are each client address's token bucket (an IPv4
	// address, an IPv6 /64, as the listener keys clients).
	Burst, PerMinute int
	// GlobalPerSecond is the bucket all addresses share; its burst is one
	// second's worth.
	GlobalPerSecond int
}

// bucket is a token bucket: tokens at last, refilled at rate per second up
// to burst.
type bucket struct {
	tokens float64
	last   time.Time
}

// refill brings b up to now, returning the current tokens.
func (b *bucket) refill(now time.Time, rate, burst float64) float64 {
	if d := now.Sub(b.last).Seconds(); d > 0 {
		b.tokens = math.Min(burst, b.tokens+d*rate)
	}
	b.last = now
	return b.tokens
}

// wait is how long until b holds one token.
func (b *bucket) wait(rate float64) time.Duration {
	if rate <= 0 {
		return time.Hour
	}
	return time.Duration((1 - b.tokens) / rate * float64(time.Second))
}

// authLimiter throttles authentication failures per client address and
// globally. A request takes a token before its token is checked and gives
// it back when the check succeeds, so only failures spend the budget, and
// concurrent guesses cannot overrun it; a success does not refill what
// earlier failures spent. Tokens accepted in the last authPassTTL pass
// without a bucket: a guesser behind the same NAT, or a spray spending the
// global budget, does not lock out clients already known good. The pass
// list holds a keyed hash of each token, never the token.
type authLimiter struct {
	burst, rate   float64 // per address; rate in tokens per second
	gburst, grate float64
	perIP, global bool
	mu            sync.Mutex
	addrs         *simplelru.LRU[netip.Prefix, *bucket]
	globalBucket  bucket
	seed          maphash.Seed
	passes        *simplelru.LRU[uint64, time.Time]
}

// newAuthLimiter returns nil when both limits are off.
func newAuthLimiter(cfg AuthLimitConfig, now time.Time) *authLimiter {
	if cfg.Burst == 0 {
		cfg.Burst = DefaultAuthFailureBurst
	}
	if cfg.PerMinute == 0 {
		cfg.PerMinute = DefaultAuthFailuresPerMinute
	}
	if cfg.GlobalPerSecond == 0 {
		cfg.GlobalPerSecond = DefaultAuthFailuresGlobal
	}
	l := &authLimiter{
		perIP:  cfg.Burst > 0 && cfg.PerMinute > 0,
		global: cfg.GlobalPerSecond > 0,
		seed:   maphash.MakeSeed(),
	}
	if !l.perIP && !l.global {
		return nil
	}
	l.burst, l.rate = float64(cfg.Burst), float64(cfg.PerMinute)/60
	l.gburst, l.grate = float64(cfg.GlobalPerSecond), float64(cfg.GlobalPerSecond)
	l.globalBucket = bucket{tokens: l.gburst, last: now}
	// Sizes are positive constants: New cannot fail.
	l.addrs, _ = simplelru.NewLRU[netip.Prefix, *bucket](authLimitAddresses, nil)
	l.passes, _ = simplelru.NewLRU[uint64, time.Time](authPassTokens, nil)
	return l
}

// limitDecision is the answer to take: ok, or refused with the wait until a
// retry can pass and which limit refused.
type limitDecision struct {
	ok     bool
	global bool
	wait   time.Duration
	key    netip.Prefix
	keyed  bool
	passed bool
}

// take admits one token check from addr, spending a token of its address
// and of the global bucket, unless token was accepted recently. A nil
// limiter (both limits off) admits everything, as do its other methods.
func (l *authLimiter) take(addr net.Addr, token string, now time.Time) limitDecision {
	if l == nil {
		return limitDecision{ok: true}
	}
	key, keyed := clientPrefix(addr)
	d := limitDecision{ok: true, key: key, keyed: keyed}
	h := maphash.String(l.seed, token)
	l.mu.Lock()
	defer l.mu.Unlock()
	if until, ok := l.passes.Get(h); ok && now.Before(until) {
		d.passed = true
		return d
	}
	var b *bucket
	if l.perIP && keyed {
		var ok bool
		if b, ok = l.addrs.Get(key); !ok {
			b = &bucket{tokens: l.burst, last: now}
			l.addrs.Add(key, b)
		}
		if b.refill(now, l.rate, l.burst) < 1 {
			return limitDecision{wait: b.wait(l.rate), key: key, keyed: keyed}
		}
	}
	if l.global {
		if l.globalBucket.refill(now, l.grate, l.gburst) < 1 {
			return limitDecision{global: true, wait: l.globalBucket.wait(l.grate), key: key, keyed: keyed}
		}
		l.globalBucket.tokens--
	}
	if b != nil {
		b.tokens--
	}
	return d
}

// accepted gives back what take spent for a token that authenticated, and
// lets the token pass the buckets for authPassTTL. An empty token only
// gives back: the check failed on tollgate's side, not the caller's.
func (l *authLimiter) accepted(d limitDecision, token string, now time.Time) {
	if l == nil {
		return
	}
	h := maphash.String(l.seed, token)
	l.mu.Lock()
	defer l.mu.Unlock()
	if token != "" {
		l.passes.Add(h, now.Add(authPassTTL))
	}
	if d.passed {
		return
	}
	if l.global {
		l.globalBucket.tokens = math.Min(l.gburst, l.globalBucket.tokens+1)
	}
	if l.perIP && d.keyed {
		if b, ok := l.addrs.Peek(d.key); ok {
			b.tokens = math.Min(l.burst, b.tokens+1)
		}
	}
}

// failed forgets a token that passed as recently accepted and was then
// refused (revoked, expired since).
func (l *authLimiter) failed(d limitDecision, token string) {
	if l == nil || !d.passed {
		return
	}
	l.mu.Lock()
	l.passes.Remove(maphash.String(l.seed, token))
	l.mu.Unlock()
}

// retryAfterSeconds is a Retry-After value: whole seconds, at least 1.
func retryAfterSeconds(wait time.Duration) int {
	return max(1, int(math.Ceil(wait.Seconds())))
}
