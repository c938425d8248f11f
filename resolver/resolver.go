// Package resolver answers "who is calling and which key pays". It issues
// and checks workspace-scoped tokens, stores provider credentials encrypted
// at rest, places them at the project, user and platform tiers with
// bindings, and resolves a request to the credential that pays for it.
//
// Consistency: a write made through a Service applies to that Service's
// caches at once. Every write also appends to the resolver_change_log table,
// naming what changed, and (PostgreSQL) notifies "tollgate_changes"; other
// Services on the same database (replicas) whose Start runs drop exactly
// the affected cache entries on the notification, or at the latest within
// Config.PollInterval. Without Start (the CLI), they see it when the cached
// answer expires (Config.TokenCacheTTL, Config.ResolveCacheTTL,
// Config.NegativeTTL).
//
// Fail-closed: while Start runs, cached answers are served only while the
// last successful poll is at most Config.MaxStaleness old. Past that bound,
// a revoked token may have been missed, so lookups return ErrUnavailable:
// a replica cut off from the database accepts a revoked token for at most
// MaxStaleness, then refuses everything.
package resolver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/registry"
)

// Sentinel errors. Every error the package returns wraps one of these (or
// a registry sentinel) so callers can use errors.Is. No error string ever
// contains a secret or a token.
var (
	// ErrTokenMissing is returned by Authenticate when the token is empty.
	ErrTokenMissing = errors.New("token missing")
	// ErrTokenInvalid is returned by Authenticate when the token is not
	// shaped like a tollgate token or is unknown.
	ErrTokenInvalid = errors.New("token invalid")
	// ErrTokenExpired is returned by Authenticate when the token's
	// lifetime has passed.
	ErrTokenExpired = errors.New("token expired")
	// ErrTokenRevoked is returned by Authenticate when the token was
	// revoked.
	ErrTokenRevoked = errors.New("token revoked")
	// ErrTokenNotFound is returned by RevokeToken when no token has the id.
	ErrTokenNotFound = errors.New("token not found")

	// ErrNoCredential is returned by Resolve when no tier has a usable
	// credential for the request.
	ErrNoCredential = errors.New("no credential")
	// ErrHalted is returned by Resolve when the project tier has a binding
	// that cannot be used (inactive, or every credential it names missing,
	// disabled or unreadable): resolution stops there and never falls
	// through to the user or platform tier. A *ResolveError in the chain
	// gives the reason.
	ErrHalted = errors.New("resolution halted by project binding")

	// ErrCredentialNotFound is returned by credential and binding
	// operations when the credential id is unknown.
	ErrCredentialNotFound = errors.New("credential not found")
	// ErrBindingNotFound is returned by Unbind and SetBindingActive when no
	// binding has the key.
	ErrBindingNotFound = errors.New("binding not found")
	// ErrDialectMismatch is returned by Bind when the credential's provider,
	// or the binding's harness, does not speak the binding's dialect.
	ErrDialectMismatch = errors.New("dialect mismatch")
	// ErrInvalidArgument is returned when an argument fails validation (an
	// empty workspace, a bad tier, a base URL that is not https); the
	// message names the offending item.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrHTTPBaseURL is returned, with ErrInvalidArgument, when a
	// credential's base URL is http:// and Config.AllowHTTPBaseURL is off.
	// At use, a *ResolveError with ReasonCredentialUnusable wraps it: the
	// credential was written by a process that allowed http.
	ErrHTTPBaseURL = errors.New("http base URL not allowed")
	// ErrUndecryptable is wrapped by a *ResolveError with
	// ReasonCredentialUnusable when a credential does not decrypt with the
	// configured master keys.
	ErrUndecryptable = errors.New("credential does not decrypt")

	// ErrInvalidMasterKey is returned by ParseMasterKey and New when a
	// master key is not 32 bytes given as base64 or hex.
	ErrInvalidMasterKey = errors.New("invalid master key")
	// ErrWrongMasterKey is returned by New when the database was written
	// with a key that is neither Config.MasterKey nor one of
	// Config.PreviousKeys, and by RotateKey when a credential is encrypted
	// with a key other than the old or the new one.
	ErrWrongMasterKey = errors.New("wrong master key")
	// ErrClosed is returned by Start after Close, or when Start is called
	// twice.
	ErrClosed = errors.New("resolver closed or already started")
	// ErrUnavailable is returned by Authenticate and Resolve while Start
	// runs when this process cannot confirm its view is fresh (no
	// successful change-log poll for Config.MaxStaleness, and a synchronous
	// one failed too), or when a cache miss could not reach the database.
	// An *UnavailableError in the chain says for how long.
	ErrUnavailable = errors.New("credential store unavailable")
)

// Defaults applied by Config.withDefaults, each with its reason.
const (
	// DefaultTokenCacheSize holds the active tokens of a large fleet; an
	// entry is a few hundred bytes.
	DefaultTokenCacheSize = 10_000
	// DefaultResolveCacheSize holds (project, user, harness, dialect)
	// answers of a large fleet.
	DefaultResolveCacheSize = 10_000
	// DefaultTokenCacheTTL bounds how stale a cached token may be when the
	// change-log poller is not running.
	DefaultTokenCacheTTL = time.Minute
	// DefaultResolveCacheTTL bounds how stale a cached resolution may be
	// when the change-log poller is not running.
	DefaultResolveCacheTTL = time.Minute
	// DefaultNegativeTTL keeps floods of bad tokens and unconfigured scopes
	// off the database without making a fix wait long.
	DefaultNegativeTTL = 5 * time.Second
	// DefaultPollInterval is how soon a write by another process is seen.
	DefaultPollInterval = time.Second
	// DefaultUsageFlushInterval batches last-used writes: one transaction
	// per interval instead of one write per request.
	DefaultUsageFlushInterval = 10 * time.Second
)

// negativeTokenCacheSize bounds the cache of refused tokens separately from
// accepted ones, so a flood of made-up tokens evicts only other refusals and
// never a valid token.
const negativeTokenCacheSize = 4096

// closeFlushTimeout bounds the last-used flush Close performs (house rule 14).
const closeFlushTimeout = 5 * time.Second

// Config configures a Service. The zero value of every field but MasterKey
// means its default.
type Config struct {
	// MasterKey is the 32-byte key that encrypts credentials at rest
	// (AES-256-GCM) and from which the token HMAC secret is derived
	// (HKDF-SHA256), so one TOLLGATE_MASTER_KEY configures everything.
	// Required; ParseMasterKey reads the base64 or hex form.
	MasterKey []byte
	// PreviousKeys are older master keys still accepted for reading:
	// credentials encrypted with them decrypt, and tokens issued under them
	// authenticate (and are re-hashed under MasterKey on first use). New
	// writes always use MasterKey. Set them during a rolling rotation, until
	// RotateKey has run and every token issued before has expired.
	PreviousKeys [][]byte
	// AllowHTTPBaseURL accepts http:// credential base URLs, for local
	// endpoints and tests. Default false: only https is accepted, when a
	// credential is written and again when it is used.
	AllowHTTPBaseURL bool
	// AllowPrivateBaseURL accepts credential base URLs on loopback and
	// private addresses (netguard.Policy.AllowPrivate). Default false.
	// Link-local addresses (cloud metadata) are refused regardless.
	AllowPrivateBaseURL bool
	// TokenCacheSize bounds the number of accepted tokens cached. Default
	// DefaultTokenCacheSize.
	TokenCacheSize int
	// ResolveCacheSize bounds the number of cached resolutions. Default
	// DefaultResolveCacheSize.
	ResolveCacheSize int
	// TokenCacheTTL is how long an accepted token is served from memory
	// before the database is read again, without Start. While Start runs,
	// the change log invalidates entries and MaxStaleness bounds them, and
	// positive entries live about 10 minutes (a memory bound). Expiry is
	// checked on every call regardless. Default DefaultTokenCacheTTL.
	TokenCacheTTL time.Duration
	// NegativeTTL is how long a refused token or a failed resolution is
	// served from memory. Default DefaultNegativeTTL.
	NegativeTTL time.Duration
	// ResolveCacheTTL is how long a successful resolution is served from
	// memory without Start (about 10 minutes while Start runs, as for
	// TokenCacheTTL). Writes through this Service invalidate at once, and
	// writes by other processes within PollInterval while Start runs.
	// Default DefaultResolveCacheTTL.
	ResolveCacheTTL time.Duration
	// PollInterval is how often Start's goroutine reads the change log to
	// see writes made by other processes. Default DefaultPollInterval.
	PollInterval time.Duration
	// UsageFlushInterval is how often Start's goroutine writes the
	// last-used times of tokens and credentials, in one batch. Close
	// flushes once more. Default DefaultUsageFlushInterval.
	UsageFlushInterval time.Duration
	// MaxStaleness bounds, while Start runs, how long after the last
	// successful change-log poll cached answers are still served: past it
	// Authenticate and Resolve return ErrUnavailable. It is both the
	// longest a partitioned process accepts a revoked token and the
	// longest a database outage is ridden out. Default
	// DefaultMaxStalenessPolls × PollInterval; must exceed 2 × PollInterval.
	MaxStaleness time.Duration
	// PollOnly turns LISTEN/NOTIFY off: writes notify nobody and Start
	// only polls (PgBouncer in transaction mode, comparisons). Default
	// false: on PostgreSQL, a write reaches other processes in about a
	// millisecond instead of up to PollInterval.
	PollOnly bool

	// now is the clock for token expiry, cache deadlines and stored
	// times; nil means time.Now (house rule 11).
	now func() time.Time
	// randN returns a uniform number in [0, n) for the weighted draw
	// among a binding's candidates of one priority; nil means
	// math/rand/v2's Uint64N. Tests inject a seeded source.
	randN func(n uint64) uint64
}

func (c Config) withDefaults() Config {
	if c.TokenCacheSize == 0 {
		c.TokenCacheSize = DefaultTokenCacheSize
	}
	if c.ResolveCacheSize == 0 {
		c.ResolveCacheSize = DefaultResolveCacheSize
	}
	if c.TokenCacheTTL == 0 {
		c.TokenCacheTTL = DefaultTokenCacheTTL
	}
	if c.NegativeTTL == 0 {
		c.NegativeTTL = DefaultNegativeTTL
	}
	if c.ResolveCacheTTL == 0 {
		c.ResolveCacheTTL = DefaultResolveCacheTTL
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.UsageFlushInterval == 0 {
		c.UsageFlushInterval = DefaultUsageFlushInterval
	}
	if c.MaxStaleness == 0 {
		c.MaxStaleness = DefaultMaxStalenessPolls * c.PollInterval
	}
	if c.randN == nil {
		c.randN = rand.Uint64N
	}
	return c
}

// Validate reports every problem with c, each naming its field.
func (c Config) Validate() error {
	var p []string
	if len(c.MasterKey) != masterKeyLen {
		p = append(p, fmt.Sprintf("MasterKey: must be %d bytes, got %d", masterKeyLen, len(c.MasterKey)))
	}
	for i, k := range c.PreviousKeys {
		if len(k) != masterKeyLen {
			p = append(p, fmt.Sprintf("PreviousKeys[%d]: must be %d bytes, got %d", i, masterKeyLen, len(k)))
		}
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"TokenCacheSize", c.TokenCacheSize}, {"ResolveCacheSize", c.ResolveCacheSize}} {
		if f.v < 0 {
			p = append(p, fmt.Sprintf("%s: must not be negative, got %d", f.name, f.v))
		}
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{
		{"TokenCacheTTL", c.TokenCacheTTL}, {"NegativeTTL", c.NegativeTTL}, {"ResolveCacheTTL", c.ResolveCacheTTL},
		{"PollInterval", c.PollInterval}, {"UsageFlushInterval", c.UsageFlushInterval}, {"MaxStaleness", c.MaxStaleness},
	} {
		if f.v < 0 {
			p = append(p, fmt.Sprintf("%s: must not be negative, got %s", f.name, f.v))
		}
	}
	// One slow poll must not make a healthy process refuse traffic.
	if d := c.withDefaults(); c.MaxStaleness > 0 && d.PollInterval > 0 && d.MaxStaleness <= 2*d.PollInterval {
		p = append(p, fmt.Sprintf("MaxStaleness: must exceed 2 x PollInterval (%s), got %s", 2*d.PollInterval, d.MaxStaleness))
	}
	if len(p) == 0 {
		return nil
	}
	return fmt.Errorf("%w: resolver config: %s", ErrInvalidArgument, strings.Join(p, "; "))
}

func (c *Config) timeNow() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

// Deps are the collaborators a Service uses. DB and Registry are required;
// a nil Log discards.
type Deps struct {
	DB       *store.DB
	Registry *registry.Holder
	Log      *slog.Logger
}

// Service issues and checks tokens, stores credentials and bindings, and
// resolves requests. It is safe for concurrent use.
type Service struct {
	cfg Config
	db  *store.DB
	reg *registry.Holder
	log *slog.Logger

	keys atomic.Pointer[keyring]

	// tokGen and resGen are bumped, under invalMu, by every invalidation
	// of the token and resolution caches, targeted or not (a write here or,
	// seen by the poller, elsewhere); the invalidation removes the affected
	// entries in the same critical section. A cache miss remembers the gen
	// it started under and caches its answer, under invalMu, only if the
	// gen has not moved: a lookup that raced a write can never reinstate a
	// stale answer, and unrelated entries survive a targeted change.
	invalMu   sync.Mutex
	tokGen    atomic.Uint64
	resGen    atomic.Uint64
	tokens    *lru.Cache[[32]byte, *tokenEntry]
	tokensNeg *lru.Cache[[32]byte, *tokenEntry]
	resolved  *lru.Cache[resolveKey, *resolveEntry]

	usage usageTracker

	// The two queries of cache misses are prepared once: parsing them each
	// time costs more than running them.
	stmtResolve *sql.Stmt
	stmtToken   *sql.Stmt

	// hookBeforeCache, when set by a test, runs after a cache miss was
	// answered from the database and before the answer is cached: the
	// window in which a concurrent write must not be undone.
	hookBeforeCache func()

	// unreadable remembers credentials whose decrypt failure was logged,
	// so each is logged once per ciphertext.
	unreadable sync.Map

	// polling is set while Start's goroutine runs: the freshness bound
	// and the long TTLs apply only then. freshAt is the time (injectable
	// clock, Unix ns) of the last successful poll; storeDown is set when a
	// poll or a miss failed to reach the database and cleared by the next
	// successful poll.
	polling   atomic.Bool
	freshAt   atomic.Int64
	storeDown atomic.Bool
	// flight shares synchronous polls and cache misses between concurrent
	// callers.
	flight singleflight.Group
	// wake makes the poller poll now (a notification arrived); one slot
	// coalesces a burst into one poll.
	wake chan struct{}
	// pollMu serialises polls (the ticker's and the synchronous ones) and
	// guards lastSeq.
	pollMu  sync.Mutex
	lastSeq int64

	mu       sync.Mutex
	started  bool
	closed   bool
	cancel   context.CancelFunc
	done     chan struct{}
	closeErr error
}

// New opens a Service: it validates cfg, migrates the resolver tables and
// checks that the master key matches the one the database was written with
// (ErrWrongMasterKey otherwise). It starts no goroutine; see Start.
func New(ctx context.Context, cfg Config, deps Deps) (*Service, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.DB == nil || deps.Registry == nil {
		return nil, fmt.Errorf("%w: resolver needs Deps.DB and Deps.Registry", ErrInvalidArgument)
	}
	log := deps.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	kr, err := newKeyring(cfg.MasterKey, cfg.PreviousKeys)
	if err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, db: deps.DB, reg: deps.Registry, log: log.With("component", "resolver"), wake: make(chan struct{}, 1)}
	s.keys.Store(kr)
	// Plain size-bounded LRUs with a deadline per entry, not golang-lru's
	// expirable LRU: that one starts a cleanup goroutine nothing can stop
	// (hashicorp/golang-lru#159) and reads time.Now itself, so its TTLs
	// could not follow the injectable clock.
	if s.tokens, err = lru.New[[32]byte, *tokenEntry](cfg.TokenCacheSize); err != nil {
		return nil, fmt.Errorf("token cache: %w", err)
	}
	if s.tokensNeg, err = lru.New[[32]byte, *tokenEntry](negativeTokenCacheSize); err != nil {
		return nil, fmt.Errorf("token cache: %w", err)
	}
	if s.resolved, err = lru.New[resolveKey, *resolveEntry](cfg.ResolveCacheSize); err != nil {
		return nil, fmt.Errorf("resolve cache: %w", err)
	}
	s.usage.init()
	if err := s.db.Migrate(ctx, "resolver", migrations); err != nil {
		return nil, err
	}
	if err := s.checkKey(ctx); err != nil {
		return nil, err
	}
	if s.lastSeq, err = s.changeSeq(ctx); err != nil {
		return nil, err
	}
	s.freshAt.Store(cfg.timeNow().UnixNano())
	if s.stmtResolve, err = s.db.PrepareContext(ctx, resolveQuery); err != nil {
		return nil, fmt.Errorf("prepare resolve: %w", err)
	}
	if s.stmtToken, err = s.db.PrepareContext(ctx, tokenQuery); err != nil {
		s.stmtResolve.Close()
		return nil, fmt.Errorf("prepare token lookup: %w", err)
	}
	return s, nil
}

// Start runs the Service's background goroutines until ctx ends or Close
// is called: one polls the change log every Config.PollInterval (and at
// once when a notification arrives), dropping the cache entries another
// process's writes affect, and flushes last-used times every
// Config.UsageFlushInterval; on PostgreSQL, unless Config.PollOnly, a
// second listens for those notifications. From Start on, lookups honour
// Config.MaxStaleness. Close stops them.
func (s *Service) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started || s.closed {
		return ErrClosed
	}
	s.started = true
	ctx, s.cancel = context.WithCancel(ctx)
	s.done = make(chan struct{})
	// The view is as fresh as the last read: New's, or an earlier poll's.
	s.polling.Store(true)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.run(ctx) }()
	if !s.cfg.PollOnly && s.db.Engine == store.Postgres {
		wg.Add(1)
		go func() { defer wg.Done(); s.listen(ctx) }()
	}
	go func() { wg.Wait(); close(s.done) }()
	return nil
}

// notifyChannel is the channel writes notify and Start listens on.
const notifyChannel = "tollgate_changes"

// listen wakes the poller on every notification and after every
// (re)connect, when notifications sent meanwhile are lost and the poll
// catches up. The poll, not the notification, proves freshness.
func (s *Service) listen(ctx context.Context) {
	err := s.db.Listen(ctx, notifyChannel, store.ListenHandler{
		OnNotify:  func(string) { s.wakePoll() },
		OnConnect: s.wakePoll,
		OnDown: func(err error) {
			s.log.Warn("change notifications lost; polling every interval until the listener reconnects", "err", err)
		},
	})
	switch {
	case errors.Is(err, store.ErrListenUnsupported):
		s.log.Info("change notifications unsupported here; polling only", "poll_interval", s.cfg.PollInterval.String(), "err", err)
	case err != nil && ctx.Err() == nil:
		s.log.Warn("change listener stopped; polling only", "err", err)
	}
}

func (s *Service) wakePoll() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Service) run(ctx context.Context) {
	defer s.polling.Store(false)
	poll := time.NewTicker(s.cfg.PollInterval)
	defer poll.Stop()
	flush := time.NewTicker(s.cfg.UsageFlushInterval)
	defer flush.Stop()
	warned := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-poll.C:
		case <-s.wake:
		case <-flush.C:
			if err := s.flushUsage(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("last-used flush failed", "err", err)
			}
			continue
		}
		// Bounded, so that a hung connection cannot hold pollMu (and the
		// synchronous refreshes behind it) past the next tick. One line
		// when the store goes away and one when it is back, not one a
		// second.
		pctx, cancel := context.WithTimeout(ctx, max(s.cfg.PollInterval, time.Second))
		err := s.pollChanges(pctx)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil && !warned:
			warned = true
			s.log.Warn("change log poll failed; serving from memory until the freshness bound, then refusing",
				"max_staleness", s.cfg.MaxStaleness.String(), "err", err)
		case err == nil && warned:
			warned = false
			s.log.Info("change log poll succeeded again")
		}
	}
}

// Close stops the goroutine Start began, waits for it, flushes pending
// last-used times within a bounded time and releases prepared statements.
// It does not close the database. The Service must not be used afterwards.
// Close is safe to call more than once.
func (s *Service) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return s.closeErr
	}
	s.closed = true
	cancel, done := s.cancel, s.done
	s.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	ctx, stop := context.WithTimeout(context.Background(), closeFlushTimeout)
	defer stop()
	err := errors.Join(s.flushUsage(ctx), s.stmtResolve.Close(), s.stmtToken.Close())
	s.mu.Lock()
	s.closeErr = err
	s.mu.Unlock()
	return err
}

// invalidateTokens drops every cached token answer.
func (s *Service) invalidateTokens() {
	s.invalMu.Lock()
	defer s.invalMu.Unlock()
	s.tokGen.Add(1)
	s.tokens.Purge()
	s.tokensNeg.Purge()
}

// invalidateResolutions drops every cached resolution.
func (s *Service) invalidateResolutions() {
	s.invalMu.Lock()
	defer s.invalMu.Unlock()
	s.resGen.Add(1)
	s.resolved.Purge()
}

// dropTokens drops the cached token answers match selects.
func (s *Service) dropTokens(match func(*tokenEntry) bool) {
	s.invalMu.Lock()
	defer s.invalMu.Unlock()
	s.tokGen.Add(1)
	for _, c := range []*lru.Cache[[32]byte, *tokenEntry]{s.tokens, s.tokensNeg} {
		for _, k := range c.Keys() {
			if e, ok := c.Peek(k); ok && match(e) {
				c.Remove(k)
			}
		}
	}
}

// dropResolutions drops the cached resolutions match selects.
func (s *Service) dropResolutions(match func(resolveKey, *resolveEntry) bool) {
	s.invalMu.Lock()
	defer s.invalMu.Unlock()
	s.resGen.Add(1)
	for _, k := range s.resolved.Keys() {
		if e, ok := s.resolved.Peek(k); ok && match(k, e) {
			s.resolved.Remove(k)
		}
	}
}

// cacheToken caches e unless an invalidation ran since its lookup began.
func (s *Service) cacheToken(c *lru.Cache[[32]byte, *tokenEntry], mac [32]byte, e *tokenEntry) {
	s.invalMu.Lock()
	defer s.invalMu.Unlock()
	if s.tokGen.Load() == e.gen {
		c.Add(mac, e)
	}
}

// cacheResolution caches e unless an invalidation ran since its lookup began.
func (s *Service) cacheResolution(k resolveKey, e *resolveEntry) {
	s.invalMu.Lock()
	defer s.invalMu.Unlock()
	if s.resGen.Load() == e.gen {
		s.resolved.Add(k, e)
	}
}
