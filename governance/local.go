package governance

import (
	"cmp"
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// localLimiter keeps every limit's state in process: the limiter of a
// single replica, and the Redis limiter's fallback. One mutex guards all
// of it: an attempt is a few integer operations per limit, and checking
// every limit of a request under one lock is what makes it all or nothing.
type localLimiter struct {
	maxWait time.Duration
	now     func() time.Time
	sleep   func(context.Context, time.Duration) error
	period  time.Duration

	mu     sync.Mutex
	states map[string]*localState
	swept  int64 // unix ns of the last sweep of idle states
}

// localState is one limit's state. TATs are unix nanoseconds; a TAT at or
// before now is a full bucket, so an idle state can be forgotten.
type localState struct {
	rpmTAT, tpmTAT int64
	inflight       int64
}

// NewLocalLimiter returns the in-process limiter (GCRA for RPM and TPM,
// counters for concurrency): the limiter of the embedded default, and the
// fallback of the Redis one.
func NewLocalLimiter(cfg LocalConfig) Limiter { return newLocal(cfg) }

func newLocal(cfg LocalConfig) *localLimiter {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	return &localLimiter{
		maxWait: cmp.Or(cfg.MaxWait, DefaultMaxWait),
		now:     now,
		sleep:   sleepCtx,
		period:  ratePeriod,
		states:  map[string]*localState{},
	}
}

func (l *localLimiter) Acquire(ctx context.Context, requestID string, limits []Limit, tokens int64) (Permit, *Refusal, error) {
	if len(limits) == 0 {
		return NoPermit, nil, nil
	}
	return admit(ctx, l.maxWait, l.now, l.sleep, limits, func(context.Context) (Permit, *denial, error) {
		p, d := l.try(limits, tokens)
		return p, d, nil
	})
}

// try checks every limit and consumes from all of them, or from none.
func (l *localLimiter) try(limits []Limit, tokens int64) (Permit, *denial) {
	tokens = max(0, tokens)
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now().UnixNano()
	l.sweep(now)
	period := int64(l.period)
	var worst *denial
	deny := func(d denial) {
		if worst == nil || d.kind != kindConcurrency && (worst.kind == kindConcurrency || d.wait > worst.wait) {
			worst = &d
		}
	}
	for i, lim := range limits {
		s := l.state(limitKey(lim))
		if lim.RPM > 0 {
			step := rpmStep(lim.RPM, period)
			tat := max(s.rpmTAT, now)
			if wait := tat - now - (rpmBurst(lim.RPM)-1)*step; wait > 0 {
				deny(denial{limit: i, kind: kindRPM, wait: time.Duration(wait), reset: time.Duration(tat - now)})
			}
		}
		if lim.TPM > 0 {
			tat := max(s.tpmTAT, now)
			if wait := tat + tokenCost(min(tokens, lim.TPM), lim.TPM, period) - now - period; wait > 0 {
				left := int64(float64(now+period-tat) * float64(lim.TPM) / float64(period))
				deny(denial{limit: i, kind: kindTPM, wait: time.Duration(wait), remaining: left, reset: time.Duration(tat - now)})
			}
		}
		if lim.Concurrency > 0 && s.inflight >= lim.Concurrency {
			deny(denial{limit: i, kind: kindConcurrency})
		}
	}
	if worst != nil {
		return nil, worst
	}
	p := &localPermit{l: l, tokens: tokens}
	// One allocation, not two, for the usual few limits.
	p.holds = p.buf[:0]
	if len(limits) > len(p.buf) {
		p.holds = make([]localHold, 0, len(limits))
	}
	for _, lim := range limits {
		key := limitKey(lim)
		s := l.states[key]
		if lim.RPM > 0 {
			s.rpmTAT = max(s.rpmTAT, now) + rpmStep(lim.RPM, period)
		}
		if lim.TPM > 0 {
			s.tpmTAT = max(s.tpmTAT, now) + tokenCost(tokens, lim.TPM, period)
		}
		if lim.Concurrency > 0 {
			s.inflight++
		}
		if lim.TPM > 0 || lim.Concurrency > 0 {
			p.holds = append(p.holds, localHold{key: key, tpm: lim.TPM, slot: lim.Concurrency > 0})
		}
	}
	return p, nil
}

// rpmStep is GCRA's emission interval, rounded up like tokenCost.
func rpmStep(rpm, period int64) int64 { return (period + rpm - 1) / rpm }

// tokenCost is how far n tokens move a TPM bucket's TAT, rounded up so
// rounding never admits more than the limit.
func tokenCost(n, tpm, period int64) int64 {
	return int64(math.Ceil(float64(n) * float64(period) / float64(tpm)))
}

func (l *localLimiter) state(key string) *localState {
	s := l.states[key]
	if s == nil {
		s = &localState{}
		l.states[key] = s
	}
	return s
}

// sweep forgets, once a period, every state that is back to its initial
// value (full buckets, nothing in flight), so memory follows the limits in
// use rather than every limit ever seen.
func (l *localLimiter) sweep(now int64) {
	if now-l.swept < int64(l.period) {
		return
	}
	l.swept = now
	for k, s := range l.states {
		if s.rpmTAT <= now && s.tpmTAT <= now && s.inflight == 0 {
			delete(l.states, k)
		}
	}
}

// localPermit holds what an admitted request must give back.
type localPermit struct {
	l      *localLimiter
	tokens int64
	holds  []localHold
	buf    [2]localHold
	done   atomic.Bool
}

type localHold struct {
	key  string
	tpm  int64
	slot bool
}

func (p *localPermit) Release(actualTokens int64) {
	if p == nil || p.done.Swap(true) || len(p.holds) == 0 {
		return
	}
	delta := int64(0)
	if actualTokens >= 0 {
		delta = actualTokens - p.tokens
	}
	l := p.l
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now().UnixNano()
	period := int64(l.period)
	for _, h := range p.holds {
		s := l.state(h.key)
		if h.slot && s.inflight > 0 {
			s.inflight--
		}
		switch {
		case h.tpm == 0 || delta == 0:
		case delta < 0: // a refund: at most back to a full bucket
			s.tpmTAT = max(s.tpmTAT-tokenCost(-delta, h.tpm, period), now)
		default: // debt: past the bucket's bottom, later requests wait
			s.tpmTAT = max(s.tpmTAT, now) + tokenCost(delta, h.tpm, period)
		}
	}
}
