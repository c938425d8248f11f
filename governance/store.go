package governance

import (
	"context"
	"log/slog"
	"time"

	"github.com/tollgate/tollgate/internal/store"
)

// SKELETON (h1 owns this file): policy storage. Replace the bodies; keep
// the exported names, or say in your report what changed and why.

// NotifyChannel is the PostgreSQL channel a policy write notifies, so every
// replica reloads at once (the same propagation as token revocation).
const NotifyChannel = "tollgate_governance"

// Store keeps budgets, limits and model rules in the SQL database, shared by
// the admin API and the CLI (one implementation behind both).
type Store struct {
	db *store.DB
}

// OpenStore applies governance's policy migrations to db.
func OpenStore(ctx context.Context, db *store.DB) (*Store, error) {
	return &Store{db: db}, nil
}

// PutBudget creates b (empty ID: a new id is assigned) or replaces the
// budget with b.ID. It validates b and returns it as stored. Editing a
// budget's limit, mode or selector never resets its spend.
func (s *Store) PutBudget(ctx context.Context, b Budget) (Budget, error) { return b, nil }

// Budget returns one budget, or ErrNotFound.
func (s *Store) Budget(ctx context.Context, id string) (Budget, error) { return Budget{}, ErrNotFound }

// ListBudgets returns budgets matching f (zero value: all), sorted by id.
func (s *Store) ListBudgets(ctx context.Context, f Filter) ([]Budget, error) { return nil, nil }

// DeleteBudget deletes a budget, or returns ErrNotFound.
func (s *Store) DeleteBudget(ctx context.Context, id string) error { return ErrNotFound }

// PutLimit, Limit, ListLimits and DeleteLimit are the same for rate limits.
func (s *Store) PutLimit(ctx context.Context, l Limit) (Limit, error)        { return l, nil }
func (s *Store) Limit(ctx context.Context, id string) (Limit, error)         { return Limit{}, ErrNotFound }
func (s *Store) ListLimits(ctx context.Context, f Filter) ([]Limit, error)   { return nil, nil }
func (s *Store) DeleteLimit(ctx context.Context, id string) error            { return ErrNotFound }
func (s *Store) PutRule(ctx context.Context, r ModelRule) (ModelRule, error) { return r, nil }
func (s *Store) Rule(ctx context.Context, id string) (ModelRule, error) {
	return ModelRule{}, ErrNotFound
}
func (s *Store) ListRules(ctx context.Context, f Filter) ([]ModelRule, error) { return nil, nil }
func (s *Store) DeleteRule(ctx context.Context, id string) error              { return ErrNotFound }

// Filter narrows a list: empty fields match everything.
type Filter struct {
	ScopeType ScopeType
	ScopeID   string
}

// Load reads every policy as one consistent snapshot.
func (s *Store) Load(ctx context.Context) (*Policies, error) { return &Policies{}, nil }

// WatchConfig configures a Watcher.
type WatchConfig struct {
	// Poll is how often the policy version is checked when no notification
	// arrives (default 1 s, TOLLGATE_POLL_INTERVAL like the resolver's).
	Poll time.Duration
	// PollOnly skips LISTEN (TOLLGATE_PG_NOTIFY=off).
	PollOnly bool
	Log      *slog.Logger
}

// Watcher holds the current Policies of this replica and reloads them when
// the store changes: on a NOTIFY on NotifyChannel (PostgreSQL), else when a
// poll sees a new version.
type Watcher struct {
	st  *Store
	cfg WatchConfig
	cur *Policies
}

// NewWatcher returns a watcher over st; Start loads the first snapshot.
func NewWatcher(st *Store, cfg WatchConfig) *Watcher {
	return &Watcher{st: st, cfg: cfg, cur: &Policies{}}
}

// Start loads the policies (an error if the store cannot be read) and
// keeps them current until ctx ends.
func (w *Watcher) Start(ctx context.Context) error { return nil }

// Current returns the latest snapshot; never nil.
func (w *Watcher) Current() *Policies { return w.cur }

// Refresh reloads now (tests, and the admin API after its own write, so a
// write is enforced on this replica before the answer returns).
func (w *Watcher) Refresh(ctx context.Context) error { return nil }
