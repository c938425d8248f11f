package governance

import (
	"context"
	"log/slog"
	"time"
)

// SKELETON (h4 owns this file, redis.go and local.go): rate limits.

// Limiter admits requests under rate limits.
type Limiter interface {
	// Acquire admits one request under every limit in limits, all or
	// nothing: one request against RPM, tokens (the paced input estimate)
	// against TPM, one slot against Concurrency. When a slot frees within
	// the limiter's max wait it waits (cancelled with ctx) and admits. A
	// refused request gets a *Refusal (RefuseRateLimit, RefuseConcurrency,
	// or RefuseUnavailable for a hard limit the shared limiter cannot
	// check) and a nil Permit; error is for anything else.
	Acquire(ctx context.Context, requestID string, limits []Limit, tokens int64) (Permit, *Refusal, error)
}

// Permit is an admitted request's hold on its limits.
type Permit interface {
	// Release ends the request: its concurrency slot is freed, and its TPM
	// charge corrected from the reserved estimate to actualTokens (input +
	// output; a refund, or debt later requests wait for). Safe to call
	// once; best effort when the shared limiter is unreachable.
	Release(actualTokens int64)
}

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

// NewLocalLimiter returns the in-process limiter (GCRA for RPM and TPM,
// counters for concurrency): the limiter of the embedded default, and the
// fallback of the Redis one.
func NewLocalLimiter(cfg LocalConfig) Limiter { return nil }

// RedisConfig configures the shared limiter.
type RedisConfig struct {
	// URL is TOLLGATE_REDIS_URL (redis://host:port/db).
	URL string
	// Prefix starts every key (default "tg:"); tests use their own.
	Prefix string
	// Timeout bounds each Redis call (default 50 ms): past it Redis counts
	// as down for that request.
	Timeout time.Duration
	MaxWait time.Duration
	// Replicas counts live replicas, for the local fallback's share of a
	// soft limit (limit / replicas); nil means 1.
	Replicas func() int
	Log      *slog.Logger
}

// RedisLimiter shares limits across replicas through Redis: one Lua script
// per request checks every limit all or nothing with Redis's clock.
type RedisLimiter struct{ cfg RedisConfig }

// NewRedisLimiter connects (lazily: an unreachable Redis is not an error
// here, it is reported by Healthy and handled per limit mode).
func NewRedisLimiter(cfg RedisConfig) (*RedisLimiter, error) { return &RedisLimiter{cfg: cfg}, nil }

func (r *RedisLimiter) Acquire(ctx context.Context, requestID string, limits []Limit, tokens int64) (Permit, *Refusal, error) {
	return nil, nil, nil
}

// Healthy reports whether the last call reached Redis (readyz, metrics).
func (r *RedisLimiter) Healthy() bool { return true }

// Close closes the connection pool.
func (r *RedisLimiter) Close() error { return nil }
