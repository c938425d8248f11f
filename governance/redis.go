package governance

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// RedisLimiter shares limits across replicas through Redis: one Lua script
// checks every limit of a request all or nothing with Redis's clock, and
// under a big limit a replica leases batches of it instead and admits
// from memory (lease.go).
//
// Keys (prefix "tg:"): {limit:<id>}:rpm and :tpm hold a TAT in Redis-clock
// microseconds, :conc the leased sorted set, :clock the latest Redis time
// the limit has seen (so a clock that steps back cannot refill a bucket).
// The hash tag keeps one limit's keys in one Cluster slot. A request's
// limits are checked in one script, so they must share a node: Redis
// Cluster is not supported (the URL is a single server).
type RedisLimiter struct {
	cfg      RedisConfig
	rdb      *redis.Client
	fallback *localLimiter
	log      *slog.Logger

	healthy atomic.Bool
	// retryAt (unix ns) is when Redis is next tried after a failure:
	// until then requests go straight to the fallback instead of each
	// paying the timeout.
	retryAt atomic.Int64

	// Test seams; the defaults are the constants in ratelimit.go and
	// lease.go.
	period, lease, renew, probe                      time.Duration
	leaseWindow, leaseIdle, leaseFlush, leaseBackoff time.Duration
	now                                              func() time.Time
	sleep                                            func(context.Context, time.Duration) error

	// Leasing state (lease.go), under lmu. round is closed when the sync
	// call in flight ends; roundMu keeps one sync call at a time; kick
	// wakes the sync loop for a refill.
	lmu     sync.Mutex
	entries map[string]*leaseEntry
	round   chan struct{}
	roundMu sync.Mutex
	kick    chan struct{}

	mu       sync.Mutex
	held     map[*redisPermit]struct{} // permits holding concurrency slots
	renewing bool
	syncing  bool // the sync loop runs (lease.go)
	closed   bool
	stop     chan struct{}
	wg       sync.WaitGroup
}

var _ Limiter = (*RedisLimiter)(nil)

// defaultRedisTimeout bounds one Redis call (§5: 25–50 ms).
const defaultRedisTimeout = 50 * time.Millisecond

// redisProbe is how long the limiter trusts a failure before trying Redis
// again.
const redisProbe = time.Second

// NewRedisLimiter connects (lazily: an unreachable Redis is not an error
// here, it is reported by Healthy and handled per limit mode). A URL that
// does not parse is an error.
func NewRedisLimiter(cfg RedisConfig) (*RedisLimiter, error) {
	opt, err := redis.ParseURL(cfg.URL)
	if err != nil {
		// Not wrapped: the parse error quotes the URL, password included.
		return nil, errors.New("TOLLGATE_REDIS_URL is not a Redis URL (redis://[user:password@]host:port/db or rediss://...)")
	}
	cfg.Prefix = cmp.Or(cfg.Prefix, "tg:")
	cfg.Timeout = cmp.Or(cfg.Timeout, defaultRedisTimeout)
	cfg.MaxWait = cmp.Or(cfg.MaxWait, DefaultMaxWait)
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	// Every wait is bounded by Timeout: one dial attempt, one immediate
	// retry (a pooled connection Redis closed on restart), no CLIENT
	// SETINFO or maintenance-notification handshakes per connection.
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout, opt.PoolTimeout = cfg.Timeout, cfg.Timeout, cfg.Timeout, cfg.Timeout
	opt.ContextTimeoutEnabled = true
	opt.DialerRetries = 1
	opt.MaxRetries, opt.MinRetryBackoff = 1, -1
	opt.DisableIdentity = true
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	r := &RedisLimiter{
		cfg:      cfg,
		rdb:      redis.NewClient(opt),
		fallback: newLocal(LocalConfig{MaxWait: cfg.MaxWait}),
		log:      cfg.Log,
		period:   ratePeriod,
		lease:    concurrencyLease,
		renew:    concurrencyRenew,
		probe:    redisProbe,
		now:      time.Now,
		sleep:    sleepCtx,
		held:     map[*redisPermit]struct{}{},
		stop:     make(chan struct{}),

		leaseWindow:  leaseWindow,
		leaseIdle:    leaseIdle,
		leaseFlush:   leaseFlush,
		leaseBackoff: leaseBackoff,
		entries:      map[string]*leaseEntry{},
		kick:         make(chan struct{}, 1),
	}
	quietRedisOnce.Do(func() { redis.SetLogger(debugLogger{}) })
	r.healthy.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	defer cancel()
	if err := r.rdb.Ping(ctx).Err(); err != nil {
		r.down(err)
	}
	return r, nil
}

func (r *RedisLimiter) Acquire(ctx context.Context, requestID string, limits []Limit, tokens int64) (Permit, *Refusal, error) {
	if len(limits) == 0 {
		return NoPermit, nil, nil
	}
	tokens = max(0, tokens)
	slots := false
	for _, l := range limits {
		slots = slots || l.Concurrency > 0
	}
	if requestID == "" && slots {
		// The id is the slot's member: requests sharing one would share
		// a slot.
		b := make([]byte, 12)
		rand.Read(b)
		requestID = "anon-" + hex.EncodeToString(b)
	}
	var shares []Limit
	return admit(ctx, r.cfg.MaxWait, r.now, r.sleep, limits, func(ctx context.Context) (Permit, *denial, error) {
		// Leased batches first: a request they serve whole costs no call,
		// even while Redis is down (the batch was taken from the shared
		// bucket); the rest of a request goes to Redis.
		tk, ents := r.takeLocal(limits, tokens, !slots)
		if tk.all && !slots {
			return r.permit("", limits, tokens, ents), nil, nil
		}
		if r.reachable() {
			p, d, err := r.try(ctx, requestID, limits, tokens, tk)
			if err == nil {
				r.up()
				if d != nil {
					r.giveBack(limits, tokens, tk)
				}
				return p, d, nil
			}
			r.giveBack(limits, tokens, tk)
			if ctx.Err() != nil {
				return nil, nil, ctx.Err()
			}
			r.down(err)
		} else {
			r.giveBack(limits, tokens, tk)
		}
		for i, l := range limits {
			if l.Mode == ModeHard {
				return nil, &denial{limit: i, kind: kindUnavailable}, nil
			}
		}
		if shares == nil {
			n := 1
			if r.cfg.Replicas != nil {
				n = max(1, r.cfg.Replicas())
			}
			shares = make([]Limit, len(limits))
			for i, l := range limits {
				shares[i] = l.share(n)
			}
		}
		p, d := r.fallback.try(shares, tokens)
		if p != nil {
			p = r.withSlotCleanup(p, requestID, limits)
		}
		return p, d, nil
	})
}

// withSlotCleanup makes a fallback permit also free the request's Redis
// concurrency slots when it is released: a call that timed out may still
// have run, and its slot would otherwise hold until the lease ends. While
// Redis stays down the extra release is skipped like any other.
func (r *RedisLimiter) withSlotCleanup(p Permit, id string, limits []Limit) Permit {
	rp := &redisPermit{r: r, id: id}
	for _, l := range limits {
		if l.Concurrency > 0 {
			base := r.keyBase(l)
			rp.slots = append(rp.slots, base+"conc")
			rp.keys = append(rp.keys, base+"tpm", base+"conc", base+"clock")
			rp.args = append(rp.args, int64(0), int64(1))
		}
	}
	if len(rp.keys) == 0 {
		return p
	}
	return bothPermits{p, rp}
}

// bothPermits releases two permits; only the first sees the tokens (the
// second holds slots alone).
type bothPermits [2]Permit

func (b bothPermits) Release(actualTokens int64) {
	b[0].Release(actualTokens)
	b[1].Release(-1)
}

// try runs the acquire script once for what tk (the leased batches) did
// not serve, carrying what the request's TPM keys owe.
func (r *RedisLimiter) try(ctx context.Context, id string, limits []Limit, tokens int64, tk taken) (Permit, *denial, error) {
	owes, err := r.takeOwes(ctx, limits)
	if err != nil {
		return nil, nil, err
	}
	keys := make([]string, 0, 4*len(limits))
	args := make([]any, 0, 4+6*len(limits))
	args = append(args, id, tokens, r.period.Microseconds(), r.lease.Microseconds())
	for i, l := range limits {
		base := r.keyBase(l)
		keys = append(keys, base+"rpm", base+"tpm", base+"conc", base+"clock")
		rpm, burst := l.RPM, int64(0)
		if tk.has(tk.rpm, i) {
			rpm = 0
		}
		if rpm > 0 {
			burst = rpmBurst(rpm)
		}
		check, owe := int64(0), int64(0)
		if l.TPM > 0 && !tk.has(tk.tpm, i) {
			check = 1
		}
		if owes != nil {
			owe = owes[i]
		}
		args = append(args, rpm, burst, l.TPM, l.Concurrency, check, owe)
	}
	cctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	res, err := acquireScript.Run(cctx, r.rdb, keys, args...).Int64Slice()
	if err != nil {
		r.restoreOwes(limits, owes)
		return nil, nil, err
	}
	if len(res) == 1 && res[0] == 1 {
		return r.permit(id, limits, tokens, r.admitted(limits, tokens)), nil, nil
	}
	if len(res) != 6 || res[1] < 0 || int(res[1]) >= len(limits) {
		return nil, nil, errors.New("rate limit script: unexpected answer " + strconv.Itoa(len(res)))
	}
	return nil, &denial{
		limit:     int(res[1]),
		kind:      limitKind(res[2]),
		wait:      time.Duration(res[3]) * time.Microsecond,
		remaining: res[4],
		reset:     time.Duration(res[5]) * time.Microsecond,
	}, nil
}

func (r *RedisLimiter) keyBase(l Limit) string {
	return r.cfg.Prefix + "{limit:" + limitKey(l) + "}:"
}

// permit records what the request must give back: TPM corrections (to
// its limits' entries, ents) and concurrency slots. RPM takes nothing
// back, so an RPM-only request gets NoPermit and its Release costs
// nothing.
func (r *RedisLimiter) permit(id string, limits []Limit, tokens int64, ents []*leaseEntry) Permit {
	p := &redisPermit{r: r, id: id, tokens: tokens, ents: ents}
	for _, l := range limits {
		if l.Concurrency > 0 {
			base := r.keyBase(l)
			p.slots = append(p.slots, base+"conc")
			p.keys = append(p.keys, base+"tpm", base+"conc", base+"clock")
			p.args = append(p.args, int64(0), int64(1))
		}
	}
	if len(p.keys) == 0 && len(ents) == 0 {
		return NoPermit
	}
	if len(p.slots) > 0 {
		r.hold(p)
	}
	return p
}

// reachable says whether to try Redis: always while healthy, and once per
// probe interval while not.
func (r *RedisLimiter) reachable() bool {
	return r.healthy.Load() || time.Now().UnixNano() >= r.retryAt.Load()
}

// down notes a failed call, logging once per outage rather than per
// request.
func (r *RedisLimiter) down(err error) {
	r.retryAt.Store(time.Now().Add(r.probe).UnixNano())
	if r.healthy.Swap(false) {
		r.log.Warn("redis unreachable: soft rate limits fall back to this replica's share, hard ones refuse", "err", err)
	}
}

func (r *RedisLimiter) up() {
	if !r.healthy.Swap(true) {
		r.log.Info("redis reachable again: rate limits are shared")
	}
}

// Healthy reports whether the last call reached Redis (readyz, metrics).
func (r *RedisLimiter) Healthy() bool { return r.healthy.Load() }

// Close stops renewing leases, gives leased batches back and sends what
// is owed (one call, best effort), and closes the connection pool.
func (r *RedisLimiter) Close() error {
	r.mu.Lock()
	first := !r.closed
	if first {
		r.closed = true
		close(r.stop)
	}
	r.mu.Unlock()
	r.wg.Wait()
	if first {
		r.syncRound(true)
	}
	return r.rdb.Close()
}

// go-redis logs every failed dial on its own; the limiter already says
// once per outage that Redis is unreachable, so the client's lines go to
// debug. (The logger is process-wide; tollgate has no other Redis client.)
var quietRedisOnce sync.Once

type debugLogger struct{}

func (debugLogger) Printf(ctx context.Context, format string, v ...any) {
	slog.Default().DebugContext(ctx, fmt.Sprintf("redis client: "+format, v...))
}

// redisPermit is an admitted request's hold: TPM it settles against its
// limits' entries, slots it holds in Redis.
type redisPermit struct {
	r      *RedisLimiter
	id     string
	tokens int64
	ents   []*leaseEntry // the entries of the request's TPM limits
	keys   []string      // per slot: tpm, conc, clock (release script)
	args   []any         // per slot: 0 (no TPM here), 1 (a slot)
	slots  []string      // concurrency keys, for renewal
	done   atomic.Bool
}

func (p *redisPermit) Release(actualTokens int64) {
	if p == nil || p.done.Swap(true) {
		return
	}
	r := p.r
	if len(p.slots) > 0 {
		r.unhold(p)
	}
	delta := int64(0)
	if actualTokens >= 0 {
		delta = actualTokens - p.tokens
	}
	if len(p.ents) > 0 {
		// No call: the correction settles against a leased batch or is
		// owed, sent with the next call for the key or the next flush.
		r.settle(p.ents, delta)
	}
	if len(p.slots) == 0 || !r.reachable() {
		// No slot, or no one to free it with: the lease frees it.
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.Timeout)
	defer cancel()
	args := append([]any{p.id, int64(0), r.period.Microseconds()}, p.args...)
	if err := releaseScript.Run(ctx, r.rdb, p.keys, args...).Err(); err != nil {
		r.down(err)
		return
	}
	r.up()
}

// hold registers p for lease renewal, starting the renewer with the first
// slot held.
func (r *RedisLimiter) hold(p *redisPermit) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.held[p] = struct{}{}
	if !r.renewing && !r.closed {
		r.renewing = true
		r.wg.Add(1)
		// Every held slot's lease is extended in a few calls per interval.
		go r.loop(r.renew, nil, r.renewHeld)
	}
}

func (r *RedisLimiter) unhold(p *redisPermit) {
	r.mu.Lock()
	delete(r.held, p)
	r.mu.Unlock()
}

// loop runs f every d and whenever wake fires (nil: never) until Close:
// one goroutine per limiter and job, not per request.
func (r *RedisLimiter) loop(d time.Duration, wake <-chan struct{}, f func()) {
	defer r.wg.Done()
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		case <-wake:
		}
		f()
	}
}

// renewBatch bounds one renewal call.
const renewBatch = 512

func (r *RedisLimiter) renewHeld() {
	r.mu.Lock()
	var keys []string
	var members []any
	for p := range r.held {
		for _, k := range p.slots {
			keys = append(keys, k)
			members = append(members, p.id)
		}
	}
	r.mu.Unlock()
	if len(keys) == 0 || !r.reachable() {
		return
	}
	for i := 0; i < len(keys); i += renewBatch {
		j := min(i+renewBatch, len(keys))
		args := append([]any{r.lease.Microseconds()}, members[i:j]...)
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.Timeout)
		err := renewScript.Run(ctx, r.rdb, keys[i:j], args...).Err()
		cancel()
		if err != nil {
			r.down(err)
			return
		}
	}
	r.up()
}
