package resolver

import (
	"context"
	"database/sql"
	"fmt"
)

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
