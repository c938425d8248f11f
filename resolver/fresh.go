package resolver

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/tollgate/tollgate/internal/store"
)

// Fail-closed bounds while Start runs (replicas.md §3). A replica cannot
// tell "I am partitioned" from "the database is down for everyone", so it
// serves from memory for at most MaxStaleness after its last successful
// poll, and then refuses with ErrUnavailable.
const (
	// DefaultMaxStalenessPolls is MaxStaleness's default in poll
	// intervals: five missed polls, not one slow one.
	DefaultMaxStalenessPolls = 5
	// startedCacheTTL is how long a positive entry lives while Start runs.
	// Validity then comes from the change log and the freshness bound; the
	// TTL only bounds memory and edits made behind tollgate's back.
	startedCacheTTL = 10 * time.Minute
	// refreshBudget bounds the synchronous poll a request past the bound
	// makes: a stalled poller then costs one query, not an outage.
	refreshBudget = 250 * time.Millisecond
	// missBudget bounds a cache miss's database read. The report measured
	// 0.5 s per request in connection attempts during an outage.
	missBudget = 500 * time.Millisecond
	// refreshAhead is how long before a positive entry's deadline a hit
	// starts one background refresh, while Start runs: a hot entry is
	// renewed while the database answers, so no request waits on its
	// read, and an outage does not find it expired.
	refreshAhead = time.Minute
)

// UnavailableError is the error of a refused lookup: the replica cannot
// confirm its view is fresh, or a cache miss could not reach the database.
// It wraps ErrUnavailable.
type UnavailableError struct {
	// Staleness is the time since the last successful change-log poll;
	// Bound is Config.MaxStaleness.
	Staleness, Bound time.Duration
	// Cause is the store error, if one was seen; logged, never shown.
	Cause error
}

func (e *UnavailableError) Error() string {
	msg := fmt.Sprintf("%s: last confirmed fresh %.1fs ago (bound %s)", ErrUnavailable, e.Staleness.Seconds(), e.Bound)
	if e.Cause != nil {
		msg += ": " + e.Cause.Error()
	}
	return msg
}

// Unwrap returns ErrUnavailable and the cause.
func (e *UnavailableError) Unwrap() []error {
	if e.Cause != nil {
		return []error{ErrUnavailable, e.Cause}
	}
	return []error{ErrUnavailable}
}

// IsStoreUnavailable reports an error that says the database cannot be
// reached now (connection refused or lost, the server shutting down, a
// login refused, a deadline), as opposed to one it returned while
// answering. It matches types and codes, never message text.
func IsStoreUnavailable(err error) bool {
	return errors.Is(err, ErrUnavailable) || store.Unreachable(err)
}

// Freshness reports how long ago the change log was last read
// successfully, the bound past which lookups are refused, and whether the
// replica is within it. Without Start there is no poller and no bound:
// staleness is 0 and ok is true.
func (s *Service) Freshness() (staleness, bound time.Duration, ok bool) {
	if !s.polling.Load() {
		return 0, s.cfg.MaxStaleness, true
	}
	st := s.staleness(s.cfg.timeNow())
	return st, s.cfg.MaxStaleness, st <= s.cfg.MaxStaleness
}

func (s *Service) staleness(now time.Time) time.Duration {
	return max(0, now.Sub(time.Unix(0, s.freshAt.Load())))
}

func (s *Service) unavailable(now time.Time, cause error) error {
	return &UnavailableError{Staleness: s.staleness(now), Bound: s.cfg.MaxStaleness, Cause: cause}
}

// checkFresh is the first step of every lookup while Start runs: past the
// bound it tries one synchronous poll, shared by every caller waiting at
// that moment, and refuses if that fails too. When the store is already
// known to be down it refuses at once: the poller will notice the store
// is back within PollInterval, and a request must not wait on a dial.
// now is the caller's clock reading, so a lookup reads the clock once.
func (s *Service) checkFresh(ctx context.Context, now time.Time) error {
	if !s.polling.Load() {
		return nil
	}
	if s.staleness(now) <= s.cfg.MaxStaleness {
		return nil
	}
	if s.storeDown.Load() {
		return s.unavailable(now, nil)
	}
	ch := s.flight.DoChan("poll", func() (any, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), refreshBudget)
		defer cancel()
		return nil, s.pollChanges(rctx)
	})
	// The flight may first wait for a background poll in progress; the
	// caller waits no longer than the budget either way.
	wait := time.NewTimer(refreshBudget)
	defer wait.Stop()
	select {
	case r := <-ch:
		if r.Err != nil {
			return s.unavailable(s.cfg.timeNow(), r.Err)
		}
		return nil
	case <-wait.C:
		return s.unavailable(s.cfg.timeNow(), context.DeadlineExceeded)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// miss answers a cache miss from the database through fn, within
// missBudget, shared by every caller of the same key (so N requests for
// one token during an outage make one attempt). A connection-class
// failure marks the store down: further misses are refused at once until
// a poll succeeds.
func (s *Service) miss(ctx context.Context, key string, fn func(ctx context.Context) (any, error)) (any, error) {
	if s.polling.Load() && s.storeDown.Load() {
		return nil, s.unavailable(s.cfg.timeNow(), nil)
	}
	ch := s.flight.DoChan(key, func() (any, error) {
		mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), missBudget)
		defer cancel()
		v, err := fn(mctx)
		if err != nil && IsStoreUnavailable(err) {
			if s.polling.Load() {
				s.storeDown.Store(true)
			}
			return nil, s.unavailable(s.cfg.timeNow(), err)
		}
		return v, err
	})
	select {
	case r := <-ch:
		return r.Val, r.Err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// positiveTTL is how long an accepted answer is cached: the configured
// TTL without a poller; with one, startedCacheTTL with ±10 % jitter, so
// entries filled together do not all expire together.
func (s *Service) positiveTTL(configured time.Duration) time.Duration {
	if !s.polling.Load() {
		return configured
	}
	return startedCacheTTL*9/10 + rand.N(startedCacheTTL/5)
}

// serveStale says whether an entry past its TTL may still be served after
// its refresh failed with err: only while Start runs and the replica is
// within its freshness bound (which checkFresh has just confirmed), and
// only when the store could not be reached (RFC 5861 stale-if-error).
func (s *Service) serveStale(err error) bool {
	return s.polling.Load() && errors.Is(err, ErrUnavailable)
}

// dueForRefresh says whether a hit on an entry valid until until should
// start its background refresh, and claims it: one refresh per entry at a
// time (refreshing is the entry's flag; a failed refresh clears it so a
// later hit tries again).
func (s *Service) dueForRefresh(until, now time.Time, refreshing *atomic.Bool) bool {
	return s.polling.Load() && until.Sub(now) < refreshAhead && refreshing.CompareAndSwap(false, true)
}
