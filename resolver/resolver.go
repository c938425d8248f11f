// Package resolver answers "who is calling and which key pays". It issues
// and checks workspace-scoped tokens, stores provider credentials encrypted
// at rest, places them at the project, user and platform tiers with
// bindings, and resolves a request to the credential that pays for it.
//
// Consistency: a write made through a Service applies to that Service's
// caches at once. Every write also appends to the resolver_change_log table;
// other Services on the same database (replicas, the CLI) see it within
// Config.PollInterval once their Start has been called. Without Start, they
// see it when the cached answer expires (Config.TokenCacheTTL,
// Config.ResolveCacheTTL, Config.NegativeTTL).
package resolver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

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
	// that cannot be used (inactive, or its credential missing, disabled or
	// unreadable): resolution stops there and never falls through to the
	// user or platform tier. A *ResolveError in the chain gives the reason.
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
	// before the database is read again. Expiry is checked on every call
	// regardless. Default DefaultTokenCacheTTL.
	TokenCacheTTL time.Duration
	// NegativeTTL is how long a refused token or a failed resolution is
	// served from memory. Default DefaultNegativeTTL.
	NegativeTTL time.Duration
	// ResolveCacheTTL is how long a successful resolution is served from
	// memory. Writes through this Service invalidate at once, and writes by
	// other processes within PollInterval while Start runs. Default
	// DefaultResolveCacheTTL.
	ResolveCacheTTL time.Duration
	// PollInterval is how often Start's goroutine reads the change log to
	// see writes made by other processes. Default DefaultPollInterval.
	PollInterval time.Duration
	// UsageFlushInterval is how often Start's goroutine writes the
	// last-used times of tokens and credentials, in one batch. Close
	// flushes once more. Default DefaultUsageFlushInterval.
	UsageFlushInterval time.Duration

	// now is the clock for token expiry, cache deadlines and stored
	// times; nil means time.Now (house rule 11).
	now func() time.Time
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
		{"PollInterval", c.PollInterval}, {"UsageFlushInterval", c.UsageFlushInterval},
	} {
		if f.v < 0 {
			p = append(p, fmt.Sprintf("%s: must not be negative, got %s", f.name, f.v))
		}
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

	// tokGen and resGen are bumped after every committed write to tokens
	// and to credentials or bindings respectively (here or, seen by the
	// poller, elsewhere). A cache entry remembers the gen it was computed
	// under and is ignored once the gen moves on, so a lookup that raced a
	// write can never reinstate a stale answer.
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

	mu       sync.Mutex
	started  bool
	closed   bool
	cancel   context.CancelFunc
	done     chan struct{}
	lastSeq  int64
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
	s := &Service{cfg: cfg, db: deps.DB, reg: deps.Registry, log: log.With("component", "resolver")}
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
	if s.stmtResolve, err = s.db.PrepareContext(ctx, resolveQuery); err != nil {
		return nil, fmt.Errorf("prepare resolve: %w", err)
	}
	if s.stmtToken, err = s.db.PrepareContext(ctx, tokenQuery); err != nil {
		s.stmtResolve.Close()
		return nil, fmt.Errorf("prepare token lookup: %w", err)
	}
	return s, nil
}

// Start runs the Service's one background goroutine until ctx ends or Close
// is called: it polls the change log every Config.PollInterval, purging the
// caches when another process wrote, and flushes last-used times every
// Config.UsageFlushInterval. Close stops it.
func (s *Service) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started || s.closed {
		return ErrClosed
	}
	s.started = true
	ctx, s.cancel = context.WithCancel(ctx)
	s.done = make(chan struct{})
	go s.run(ctx)
	return nil
}

func (s *Service) run(ctx context.Context) {
	defer close(s.done)
	poll := time.NewTicker(s.cfg.PollInterval)
	defer poll.Stop()
	flush := time.NewTicker(s.cfg.UsageFlushInterval)
	defer flush.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-poll.C:
			if err := s.pollChanges(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("change log poll failed", "err", err)
			}
		case <-flush.C:
			if err := s.flushUsage(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("last-used flush failed", "err", err)
			}
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

// invalidateTokens makes every cached token answer stale, after a write
// committed. The gen bump comes first: entries are checked against it, and
// Purge only frees memory.
func (s *Service) invalidateTokens() {
	s.tokGen.Add(1)
	s.tokens.Purge()
	s.tokensNeg.Purge()
}

// invalidateResolutions makes every cached resolution stale. Purging all
// of them on any credential or binding write is deliberate: writes are
// rare, and working out which (project, user, harness, dialect) keys a
// write affects would duplicate the precedence rules.
func (s *Service) invalidateResolutions() {
	s.resGen.Add(1)
	s.resolved.Purge()
}
