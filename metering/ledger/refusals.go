package ledger

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Refusal is one refused authentication, counted instead of recorded: a
// usage record per refusal let a guesser fill the disk (38k rows in 5 s).
// TokenID and Workspace are set when the token named them (revoked,
// expired, wrong harness), so a refusal stays traceable to its owner.
type Refusal struct {
	// Client is the client address key (IPv4 address or IPv6 /64).
	Client    string `json:"client"`
	TokenID   string `json:"token_id,omitempty"`
	Workspace string `json:"workspace,omitempty"`
	// Reason is missing, invalid, expired, revoked, wrong_harness or
	// throttled.
	Reason  string `json:"reason"`
	Dialect string `json:"dialect"`
}

type refusalKey struct {
	minute time.Time
	Refusal
}

const (
	// refusalFlushEvery is how often counts reach the store; a crash loses
	// at most this much of them, which a counter may.
	refusalFlushEvery = 5 * time.Second
	// maxPendingRefusals bounds the distinct rows held between flushes;
	// past it, refusals are counted under refusalOverflowClient, so a spray
	// from many addresses costs neither memory nor rows.
	maxPendingRefusals = 10_000
	// refusalOverflowClient stands for every client of a flush interval
	// after the first maxPendingRefusals rows.
	refusalOverflowClient = "_OTHER"
)

// RefusalCounter aggregates refusals per UTC minute in memory and adds
// them to the refusals table every refusalFlushEvery, and at Close.
type RefusalCounter struct {
	store *Store
	log   *slog.Logger
	now   func() time.Time

	mu      sync.Mutex
	pending map[refusalKey]int64

	started atomic.Bool
	stop    chan struct{}
	done    chan struct{}
}

// NewRefusalCounter returns a counter flushing to s; Start runs it.
func NewRefusalCounter(s *Store, log *slog.Logger) *RefusalCounter {
	if log == nil {
		log = slog.Default()
	}
	return &RefusalCounter{store: s, log: log, now: time.Now, pending: map[refusalKey]int64{},
		stop: make(chan struct{}), done: make(chan struct{})}
}

// Add counts r in the current minute. It never blocks on the store.
func (c *RefusalCounter) Add(r Refusal) {
	k := refusalKey{minute: c.now().UTC().Truncate(time.Minute), Refusal: r}
	c.mu.Lock()
	if _, ok := c.pending[k]; !ok && len(c.pending) >= maxPendingRefusals {
		k.Refusal = Refusal{Client: refusalOverflowClient, Reason: r.Reason, Dialect: r.Dialect}
	}
	c.pending[k]++
	c.mu.Unlock()
}

// Start flushes every refusalFlushEvery until Close. Call it once.
func (c *RefusalCounter) Start() {
	c.started.Store(true)
	go func() {
		defer close(c.done)
		t := time.NewTicker(refusalFlushEvery)
		defer t.Stop()
		for {
			select {
			case <-c.stop:
				return
			case <-t.C:
				ctx, cancel := context.WithTimeout(context.Background(), refusalFlushEvery)
				if err := c.Flush(ctx); err != nil {
					c.log.Warn("refusal counts not stored; kept for the next flush", "err", err)
				}
				cancel()
			}
		}
	}()
}

// Close stops the flushes and writes what is pending, within ctx.
func (c *RefusalCounter) Close(ctx context.Context) error {
	select {
	case <-c.stop:
	default:
		close(c.stop)
		if c.started.Load() {
			select {
			case <-c.done:
			case <-ctx.Done():
			}
		}
	}
	return c.Flush(ctx)
}

// Flush adds the pending counts to the store in one transaction. On
// failure they are put back, merged with any counted meanwhile.
func (c *RefusalCounter) Flush(ctx context.Context) error {
	c.mu.Lock()
	batch := c.pending
	c.pending = map[refusalKey]int64{}
	c.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	err := c.store.addRefusals(ctx, batch)
	if err != nil {
		c.mu.Lock()
		for k, n := range batch {
			if _, ok := c.pending[k]; !ok && len(c.pending) >= maxPendingRefusals {
				k.Refusal = Refusal{Client: refusalOverflowClient, Reason: k.Reason, Dialect: k.Dialect}
			}
			c.pending[k] += n
		}
		c.mu.Unlock()
		return err
	}
	// The sampled log of refusals: one line per flush, not one per request.
	var total int64
	for _, n := range batch {
		total += n
	}
	c.log.Info("authentication refusals", "count", total, "rows", len(batch))
	return nil
}

const refusalUpsertSQL = `INSERT INTO refusals (minute, client, token_id, workspace, reason, dialect, count)
	VALUES ($1, $2, $3, $4, $5, $6, $7)
	ON CONFLICT (minute, client, token_id, workspace, reason, dialect) DO UPDATE SET count = refusals.count + excluded.count`

func (s *Store) addRefusals(ctx context.Context, batch map[refusalKey]int64) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("refusals: %w", err)
	}
	defer tx.Rollback()
	st, err := tx.PrepareContext(ctx, refusalUpsertSQL)
	if err != nil {
		return fmt.Errorf("refusals: %w", err)
	}
	defer st.Close()
	for k, n := range batch {
		if _, err := st.ExecContext(ctx, s.ts(k.minute), k.Client, k.TokenID, k.Workspace, k.Reason, k.Dialect, n); err != nil {
			return fmt.Errorf("refusals: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("refusals: %w", err)
	}
	return nil
}

// RefusalRow is one row of the refusals table.
type RefusalRow struct {
	Minute time.Time `json:"minute"`
	Refusal
	Count int64 `json:"count"`
}

// Refusals returns the refusal counts of minutes in [from, to), of one
// workspace if workspace is not empty, newest first, at most limit rows.
func (s *Store) Refusals(ctx context.Context, from, to time.Time, workspace string, limit int) ([]RefusalRow, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT minute, client, token_id, workspace, reason, dialect, count
		FROM refusals WHERE minute >= $1 AND minute < $2 AND ($3 = '' OR workspace = $3)
		ORDER BY minute DESC, count DESC LIMIT $4`, s.ts(from), s.ts(to), workspace, limit)
	if err != nil {
		return nil, fmt.Errorf("refusals: %w", err)
	}
	defer rows.Close()
	var out []RefusalRow
	for rows.Next() {
		var r RefusalRow
		var minute any
		if err := rows.Scan(&minute, &r.Client, &r.TokenID, &r.Workspace, &r.Reason, &r.Dialect, &r.Count); err != nil {
			return nil, fmt.Errorf("refusals: %w", err)
		}
		if r.Minute, err = scanTime(minute); err != nil {
			return nil, fmt.Errorf("refusals: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// scanTime reads a TIMESTAMP: PostgreSQL and the SQLite driver give a
// time.Time; SQLite text that the driver did not parse is in
// sqliteTimeLayout.
func scanTime(v any) (time.Time, error) {
	switch t := v.(type) {
	case time.Time:
		return t.UTC(), nil
	case string:
		return time.Parse(sqliteTimeLayout, t)
	case []byte:
		return time.Parse(sqliteTimeLayout, string(t))
	}
	return time.Time{}, fmt.Errorf("timestamp of type %T", v)
}
