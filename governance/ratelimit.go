package governance

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"time"
)

// Rate limits (governance.md §5). Both limiters share one model:
//
//   - RPM is GCRA with emission interval T = period/rpm and a burst of
//     rpmBurst(rpm) requests. Proof of the bound: every admission moves the
//     theoretical arrival time (TAT) forward by at least T, and a request is
//     admitted only while TAT − now ≤ (burst−1)·T. If n requests are admitted
//     in a window [s, s+W) the first at a ≥ s, the n-th finds TAT ≥ a+(n−1)T
//     and needs a+(n−1)T ≤ t_n+(burst−1)T < a+W+(burst−1)T, so n < W/T+burst:
//     any 60 s window admits at most rpm + burst − 1 requests (61 for RPM 60;
//     never 2× at a minute edge), and a sustained load gets exactly rpm per
//     minute.
//   - TPM is a continuous token bucket of tpm tokens refilled at tpm per
//     period, kept as a TAT (one value, like GCRA): admission needs the
//     estimate (capped at tpm, so one request larger than the bucket waits
//     for a full bucket instead of forever) and charges all of it; Release
//     refunds or adds debt, and debt pushes the TAT past the bucket so later
//     requests wait for it to refill.
//   - Concurrency is a count of requests in flight: a leased sorted set in
//     Redis (a crashed replica's slots free when the lease ends), a counter
//     in process.
//   - Under a big RPM or TPM limit the Redis limiter leases batches of it
//     and admits from memory; lease.go has the sizing and the bounds it
//     adds to the ones above.

// Limiter admits requests under rate limits.
type Limiter interface {
	// Acquire admits one request under every limit in limits, all or
	// nothing: one request against RPM, tokens (the paced input estimate)
	// against TPM, one slot against Concurrency. When a slot frees within
	// the limiter's max wait it waits (cancelled with ctx) and admits. A
	// refused request gets a *Refusal (RefuseRateLimit, RefuseConcurrency,
	// or RefuseUnavailable for a hard limit the shared limiter cannot
	// check) and a nil Permit; error is for anything else (ctx's error
	// when the caller left while waiting). With no limits it returns
	// NoPermit at once.
	Acquire(ctx context.Context, requestID string, limits []Limit, tokens int64) (Permit, *Refusal, error)
}

// Permit is an admitted request's hold on its limits.
type Permit interface {
	// Release ends the request: its concurrency slot is freed, and its TPM
	// charge corrected from the reserved estimate to actualTokens (input +
	// output; a refund, or debt later requests wait for). A negative
	// actualTokens means unknown: the estimate stands. Safe to call more
	// than once (only the first counts); best effort, bounded by the
	// limiter's timeout, when the shared limiter is unreachable.
	Release(actualTokens int64)
}

// NoPermit is the permit of a request no limit applies to: Release does
// nothing, so the governor can always call it.
var NoPermit Permit = noPermit{}

type noPermit struct{}

func (noPermit) Release(int64) {}

// DefaultMaxWait is how long a rate-limited request may wait inside
// tollgate before it is refused: Codex and Gemini CLI ignore Retry-After,
// so a short wait absorbed here is the only back-off they get
// (governance.md §0.10).
const DefaultMaxWait = 5 * time.Second

// LocalConfig configures the in-process limiter.
type LocalConfig struct {
	MaxWait time.Duration // default DefaultMaxWait; negative: never wait
	Now     func() time.Time
}

// RedisConfig configures the shared limiter.
type RedisConfig struct {
	// URL is TOLLGATE_REDIS_URL (redis://host:port/db).
	URL string
	// Prefix starts every key (default "tg:"); tests use their own.
	Prefix string
	// Timeout bounds each Redis call (default 50 ms): past it Redis counts
	// as down for that request.
	Timeout time.Duration
	MaxWait time.Duration // default DefaultMaxWait; negative: never wait
	// Replicas counts live replicas, for the local fallback's share of a
	// soft limit (limit / replicas) and the size of leased batches; nil
	// means 1.
	Replicas func() int
	Log      *slog.Logger
}

const (
	// ratePeriod is what "per minute" means; tests shrink it to run
	// minutes of traffic in seconds (the arithmetic only scales).
	ratePeriod = time.Minute
	// concurrencyLease is how long a Redis concurrency slot outlives its
	// replica; concurrencyRenew how often a held slot is renewed (streams
	// have idle timeouts, not total ones, so a lease must not cap them).
	concurrencyLease = 2 * time.Minute
	concurrencyRenew = 30 * time.Second
	// concurrencyPoll is how often a request waiting for a concurrency
	// slot checks again: a slot frees when some request ends, which no
	// clock predicts.
	concurrencyPoll = 200 * time.Millisecond
	// concurrencyRetryAfter is the Retry-After of a concurrency refusal,
	// for the same reason.
	concurrencyRetryAfter = time.Second
)

// rpmBurst is how many requests of a scope may arrive at once: two
// seconds' worth, at least one. Small against the minute so a window edge
// cannot double the rate (the bound above: rpm + burst − 1 per 60 s), big
// enough that a CLI's parallel requests rarely wait.
func rpmBurst(rpm int64) int64 { return max(1, (rpm+29)/30) }

// limitKind is which part of a Limit refused.
type limitKind int

const (
	kindRPM limitKind = iota + 1
	kindTPM
	kindConcurrency
	kindUnavailable
)

// denial is why one attempt did not admit: the limit (index into the
// request's limits) whose wait is longest.
type denial struct {
	limit int
	kind  limitKind
	// wait is how long until the limit would admit this request; zero for
	// concurrency, where it is not known.
	wait time.Duration
	// remaining and reset feed the Refusal's headers: what is left of the
	// limit, and how long until it is whole again.
	remaining int64
	reset     time.Duration
}

// attempt tries once, without waiting.
type attempt func(ctx context.Context) (Permit, *denial, error)

// admit runs try until it admits, the wait it asks for no longer fits
// maxWait (counted from the first try), or ctx ends.
func admit(ctx context.Context, maxWait time.Duration, now func() time.Time, sleep func(context.Context, time.Duration) error,
	limits []Limit, try attempt) (Permit, *Refusal, error) {
	start := now()
	for {
		p, d, err := try(ctx)
		if err != nil || d == nil {
			return p, nil, err
		}
		left := maxWait - now().Sub(start)
		wait := d.wait
		if d.kind == kindConcurrency {
			wait = min(concurrencyPoll, left)
		}
		if d.kind == kindUnavailable || maxWait < 0 || wait <= 0 || wait > left {
			return nil, refusal(limits[d.limit], d, now()), nil
		}
		if err := sleep(ctx, wait); err != nil {
			return nil, nil, err
		}
	}
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// refusal shapes d as the answer for l: the message names the scope and
// the limit as configured (not a fallback's share of it).
func refusal(l Limit, d *denial, now time.Time) *Refusal {
	scope := l.Selector.String()
	policy := string(l.ScopeType)
	if l.ScopeID != "" {
		policy += ":" + l.ScopeID
	}
	r := &Refusal{Kind: RefuseRateLimit, RetryAfter: d.wait, Remaining: max(0, d.remaining), Unit: "requests"}
	switch d.kind {
	case kindRPM:
		r.Policy, r.Limit = policy+"/rpm", l.RPM
		r.Message = fmt.Sprintf("tollgate: %s is over %d requests/min; retry in %d s", scope, l.RPM, seconds(r.RetryAfter))
	case kindTPM:
		r.Policy, r.Limit, r.Unit = policy+"/tpm", l.TPM, "tokens"
		r.Message = fmt.Sprintf("tollgate: %s is over %d tokens/min; retry in %d s", scope, l.TPM, seconds(r.RetryAfter))
	case kindConcurrency:
		r.Kind, r.RetryAfter = RefuseConcurrency, concurrencyRetryAfter
		r.Policy, r.Limit = policy+"/concurrency", l.Concurrency
		r.Message = fmt.Sprintf("tollgate: %s already has %d requests in flight, its limit; retry in %d s", scope, l.Concurrency, seconds(r.RetryAfter))
	case kindUnavailable:
		r.Kind, r.RetryAfter = RefuseUnavailable, UnavailableRetryAfter
		r.Policy, r.Limit, r.Unit = policy+"/"+l.firstKind(), l.firstValue(), l.firstUnit()
		r.Message = fmt.Sprintf("tollgate: the shared rate limiter cannot be reached and %s has a hard limit; retry in %d s", scope, seconds(r.RetryAfter))
	}
	r.ResetAt = now.Add(max(d.reset, r.RetryAfter))
	return r
}

// seconds rounds d up to whole seconds, at least 1, as Retry-After does.
func seconds(d time.Duration) int64 {
	return max(1, int64(math.Ceil(d.Seconds())))
}

func (l Limit) firstKind() string {
	switch {
	case l.RPM > 0:
		return "rpm"
	case l.TPM > 0:
		return "tpm"
	}
	return "concurrency"
}

func (l Limit) firstValue() int64 {
	switch {
	case l.RPM > 0:
		return l.RPM
	case l.TPM > 0:
		return l.TPM
	}
	return l.Concurrency
}

func (l Limit) firstUnit() string {
	if l.RPM == 0 && l.TPM > 0 {
		return "tokens"
	}
	return "requests"
}

// limitKey names a limit's state: its id, or (for a limit never stored)
// its selector.
func limitKey(l Limit) string {
	if l.ID != "" {
		return l.ID
	}
	return string(l.ScopeType) + ":" + l.ScopeID + ":" + l.Model + ":" + l.Harness
}

// share is l cut to one replica's part of it, at least 1 of each value
// set: the local fallback's limit while Redis is down.
func (l Limit) share(replicas int) Limit {
	if replicas <= 1 {
		return l
	}
	cut := func(v int64) int64 {
		if v == 0 {
			return 0
		}
		return max(1, v/int64(replicas))
	}
	l.RPM, l.TPM, l.Concurrency = cut(l.RPM), cut(l.TPM), cut(l.Concurrency)
	return l
}
