package resolver

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// usageTracker keeps last-used times in memory between flushes, so a
// request never writes to the database (peer-behaviours §12).
type usageTracker struct {
	mu     sync.Mutex
	tokens map[string]time.Time
	creds  map[string]time.Time
}

func (u *usageTracker) init() {
	u.tokens = make(map[string]time.Time)
	u.creds = make(map[string]time.Time)
}

func (u *usageTracker) markToken(id string, t time.Time) {
	u.mu.Lock()
	u.tokens[id] = t
	u.mu.Unlock()
}

func (u *usageTracker) markCred(id string, t time.Time) {
	u.mu.Lock()
	u.creds[id] = t
	u.mu.Unlock()
}

func (u *usageTracker) pendingToken(id string) (time.Time, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	t, ok := u.tokens[id]
	return t, ok
}

func (u *usageTracker) pendingCred(id string) (time.Time, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	t, ok := u.creds[id]
	return t, ok
}

// take swaps out the pending times.
func (u *usageTracker) take() (tokens, creds map[string]time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	tokens, creds = u.tokens, u.creds
	u.tokens, u.creds = make(map[string]time.Time), make(map[string]time.Time)
	return tokens, creds
}

// restore puts back times a failed flush could not write, unless newer
// ones arrived meanwhile.
func (u *usageTracker) restore(tokens, creds map[string]time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for id, t := range tokens {
		if cur, ok := u.tokens[id]; !ok || cur.Before(t) {
			u.tokens[id] = t
		}
	}
	for id, t := range creds {
		if cur, ok := u.creds[id]; !ok || cur.Before(t) {
			u.creds[id] = t
		}
	}
}

// flushBatch bounds one flush transaction, so a burst of distinct tokens
// never holds the SQLite write lock for long.
const flushBatch = 500

// flushUsage writes pending last-used times in transactions of at most
// flushBatch rows. It is not a change: caches are untouched and no
// change-log row is written.
func (s *Service) flushUsage(ctx context.Context) error {
	tokens, creds := s.usage.take()
	if len(tokens) == 0 && len(creds) == 0 {
		return nil
	}
	type upd struct {
		token bool
		id    string
		t     time.Time
	}
	all := make([]upd, 0, len(tokens)+len(creds))
	for id, t := range tokens {
		all = append(all, upd{true, id, t})
	}
	for id, t := range creds {
		all = append(all, upd{false, id, t})
	}
	for len(all) > 0 {
		n := min(flushBatch, len(all))
		batch := all[:n]
		err := func() error {
			tx, err := s.db.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer tx.Rollback()
			for _, u := range batch {
				q := `UPDATE resolver_credentials SET last_used_at = $1 WHERE id = $2`
				if u.token {
					q = `UPDATE resolver_tokens SET last_used_at = $1 WHERE id = $2`
				}
				if _, err := tx.ExecContext(ctx, q, u.t, u.id); err != nil {
					return err
				}
			}
			return tx.Commit()
		}()
		if err != nil {
			rt, rc := make(map[string]time.Time), make(map[string]time.Time)
			for _, u := range all {
				if u.token {
					rt[u.id] = u.t
				} else {
					rc[u.id] = u.t
				}
			}
			s.usage.restore(rt, rc)
			return fmt.Errorf("flush last-used: %w", err)
		}
		all = all[n:]
	}
	return nil
}
