package resolver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"
)

// migrations are the resolver's tables, applied by store.Migrate under the
// component "resolver". Append only; never edit a released entry. The SQL
// is portable: it runs unchanged on SQLite and PostgreSQL ("user" is a
// PostgreSQL keyword, hence user_id; ciphertext is base64 TEXT, not a
// BLOB/BYTEA split). There is no foreign key from bindings to credentials:
// DeleteCredential keeps the bindings, deactivated, so an administrator
// sees what lost its key.
var migrations = []string{
	`CREATE TABLE resolver_meta (
		name TEXT PRIMARY KEY,
		value TEXT NOT NULL);
CREATE TABLE resolver_credentials (
		id TEXT PRIMARY KEY,
		name TEXT NOT NULL,
		provider TEXT NOT NULL,
		kind TEXT NOT NULL,
		base_url TEXT NOT NULL,
		key_id TEXT NOT NULL,
		ciphertext TEXT NOT NULL,
		last4 TEXT NOT NULL,
		disabled BOOLEAN NOT NULL,
		created_at TIMESTAMP NOT NULL,
		updated_at TIMESTAMP NOT NULL,
		last_used_at TIMESTAMP);
CREATE TABLE resolver_bindings (
		tier TEXT NOT NULL,
		scope_id TEXT NOT NULL,
		dialect TEXT NOT NULL,
		harness TEXT NOT NULL,
		credential_id TEXT NOT NULL,
		active BOOLEAN NOT NULL,
		created_at TIMESTAMP NOT NULL,
		updated_at TIMESTAMP NOT NULL,
		PRIMARY KEY (tier, scope_id, dialect, harness));
CREATE INDEX resolver_bindings_credential ON resolver_bindings (credential_id);
CREATE TABLE resolver_tokens (
		id TEXT PRIMARY KEY,
		hash TEXT NOT NULL UNIQUE,
		display_prefix TEXT NOT NULL,
		workspace TEXT NOT NULL,
		project TEXT NOT NULL,
		user_id TEXT NOT NULL,
		harness TEXT NOT NULL,
		created_at TIMESTAMP NOT NULL,
		expires_at TIMESTAMP NOT NULL,
		revoked_at TIMESTAMP,
		last_used_at TIMESTAMP);
CREATE INDEX resolver_tokens_workspace ON resolver_tokens (workspace);
CREATE TABLE resolver_change_seq (
		id INTEGER PRIMARY KEY,
		seq BIGINT NOT NULL);
INSERT INTO resolver_change_seq (id, seq) VALUES (1, 0);
CREATE TABLE resolver_change_log (
		seq BIGINT PRIMARY KEY,
		kind TEXT NOT NULL,
		at TIMESTAMP NOT NULL)`,
}

// Kinds of change recorded in resolver_change_log.
const (
	changeToken      = "token"
	changeCredential = "credential"
	changeBinding    = "binding"
	changeKey        = "key"
)

// changeLogKeep bounds resolver_change_log: pollers only compare the
// latest seq, so old rows are kept for operators, not for correctness.
const changeLogKeep = 1000

// changeLogPruneEvery spreads the pruning DELETE over writes.
const changeLogPruneEvery = 100

// write runs fn in a transaction, appends a change-log row of kind in the
// same transaction, commits, and then invalidates this process's caches.
// The sequence comes from a one-row counter bumped with UPDATE … RETURNING:
// portable (no SERIAL vs AUTOINCREMENT split), and the row lock orders
// concurrent writers on PostgreSQL.
func (s *Service) write(ctx context.Context, kind string, fn func(tx *sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return err
	}
	var seq int64
	if err := tx.QueryRowContext(ctx, `UPDATE resolver_change_seq SET seq = seq + 1 WHERE id = 1 RETURNING seq`).Scan(&seq); err != nil {
		return fmt.Errorf("change log: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO resolver_change_log (seq, kind, at) VALUES ($1, $2, $3)`, seq, kind, s.now()); err != nil {
		return fmt.Errorf("change log: %w", err)
	}
	if seq%changeLogPruneEvery == 0 && seq > changeLogKeep {
		if _, err := tx.ExecContext(ctx, `DELETE FROM resolver_change_log WHERE seq <= $1`, seq-changeLogKeep); err != nil {
			return fmt.Errorf("change log: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	switch kind {
	case changeToken:
		s.invalidateTokens()
	case changeCredential, changeBinding:
		s.invalidateResolutions()
	default:
		s.invalidateTokens()
		s.invalidateResolutions()
	}
	return nil
}

func (s *Service) changeSeq(ctx context.Context) (int64, error) {
	var seq int64
	if err := s.db.QueryRowContext(ctx, `SELECT seq FROM resolver_change_seq WHERE id = 1`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("read change log: %w", err)
	}
	return seq, nil
}

// pollChanges purges both caches when the change log moved. Writes from
// this process move it too and purge once more, which is harmless; telling
// them apart would need a process id in every row for no gain.
func (s *Service) pollChanges(ctx context.Context) error {
	seq, err := s.changeSeq(ctx)
	if err != nil {
		return err
	}
	s.mu.Lock()
	changed := seq != s.lastSeq
	s.lastSeq = seq
	s.mu.Unlock()
	if changed {
		s.invalidateTokens()
		s.invalidateResolutions()
	}
	return nil
}

// now is the injectable clock, in UTC and truncated to the microsecond so
// a time read back from PostgreSQL equals the one written.
func (s *Service) now() time.Time {
	return s.cfg.timeNow().UTC().Truncate(time.Microsecond)
}

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

// isNoRows reports a lookup that found nothing, before the caller maps it
// to its own sentinel.
func isNoRows(err error) bool { return errors.Is(err, sql.ErrNoRows) }
