package resolver

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
)

// Kinds of change recorded in resolver_change_log.
const (
	changeToken      = "token"      // scope: the token id
	changeWorkspace  = "workspace"  // scope: the workspace whose tokens were revoked
	changeCredential = "credential" // scope: the credential id
	changeBinding    = "binding"    // scope: bindingScope of the binding's tier and scope id
	changeKey        = "key"        // scope: none; everything
)

// change is what one write changed: its kind and the item it names. An
// empty scope means every item of the kind (rows written before migration
// 2 have none).
type change struct {
	kind, scope string
}

// bindingScope names the resolutions a binding can affect: those of one
// project or one user, or (platform) all.
func bindingScope(k BindingKey) string {
	if k.Tier == TierPlatform {
		return ""
	}
	return k.Tier + ":" + k.ScopeID
}

// changeLogKeep bounds resolver_change_log: a poller more than this many
// writes behind drops every cache instead of reading what changed.
const changeLogKeep = 1000

// changeLogPruneEvery spreads the pruning DELETE over writes.
const changeLogPruneEvery = 100

// write runs fn in a transaction, appends a change-log row naming c in the
// same transaction, notifies other processes (PostgreSQL; delivered only
// if the transaction commits), commits, and then drops what c affects
// from this process's caches. The sequence comes from a one-row counter
// bumped with UPDATE … RETURNING: portable (no SERIAL vs AUTOINCREMENT
// split), and the row lock orders concurrent writers on PostgreSQL, so
// sequences commit in order and without holes.
func (s *Service) write(ctx context.Context, c change, fn func(tx *sql.Tx) error) error {
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
	if _, err := tx.ExecContext(ctx, `INSERT INTO resolver_change_log (seq, kind, scope, at) VALUES ($1, $2, $3, $4)`, seq, c.kind, c.scope, s.now()); err != nil {
		return fmt.Errorf("change log: %w", err)
	}
	if seq%changeLogPruneEvery == 0 && seq > changeLogKeep {
		if _, err := tx.ExecContext(ctx, `DELETE FROM resolver_change_log WHERE seq <= $1`, seq-changeLogKeep); err != nil {
			return fmt.Errorf("change log: %w", err)
		}
	}
	if !s.cfg.PollOnly {
		if err := s.db.Notify(ctx, tx, notifyChannel, strconv.FormatInt(seq, 10)); err != nil {
			return fmt.Errorf("change log: notify: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	s.invalidate(c)
	// Applied here already: the next poll need not apply it again (for a
	// platform binding that would drop every resolution twice). Only when
	// nothing is in between, or the poll would skip another's change.
	if s.pollMu.TryLock() {
		if s.lastSeq == seq-1 {
			s.lastSeq = seq
		}
		s.pollMu.Unlock()
	}
	return nil
}

// invalidate drops the cache entries c can have made wrong, and only
// those: a revocation a second must not send every other token and every
// resolution back to the database on every replica.
func (s *Service) invalidate(c change) {
	switch {
	case c.kind == changeToken && c.scope != "":
		s.dropTokens(func(e *tokenEntry) bool { return e.id.TokenID == c.scope })
	case c.kind == changeWorkspace && c.scope != "":
		s.dropTokens(func(e *tokenEntry) bool { return e.id.Workspace == c.scope })
	case c.kind == changeToken, c.kind == changeWorkspace:
		s.invalidateTokens()
	case c.kind == changeCredential && c.scope != "":
		// A resolution depends on every credential it considered, the
		// skipped ones included; a refusal names at most one, so all go.
		s.dropResolutions(func(_ resolveKey, e *resolveEntry) bool { return e.err != nil || e.considered(c.scope) })
	case c.kind == changeBinding && strings.HasPrefix(c.scope, TierProject+":"):
		p := strings.TrimPrefix(c.scope, TierProject+":")
		s.dropResolutions(func(k resolveKey, _ *resolveEntry) bool { return k.project == p })
	case c.kind == changeBinding && strings.HasPrefix(c.scope, TierUser+":"):
		u := strings.TrimPrefix(c.scope, TierUser+":")
		s.dropResolutions(func(k resolveKey, _ *resolveEntry) bool { return k.user == u })
	case c.kind == changeCredential, c.kind == changeBinding:
		s.invalidateResolutions()
	default: // a key rotation, or a kind this version does not know
		s.invalidateAll()
	}
}

func (s *Service) invalidateAll() {
	s.invalidateTokens()
	s.invalidateResolutions()
}

func (s *Service) changeSeq(ctx context.Context) (int64, error) {
	var seq int64
	if err := s.db.QueryRowContext(ctx, `SELECT seq FROM resolver_change_seq WHERE id = 1`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("read change log: %w", err)
	}
	return seq, nil
}

// pollChanges reads the change log's sequence, the heartbeat, and when it
// moved the rows since the last poll, and applies each. A hole in the range
// (rows pruned) or a sequence that went back drops everything. Writes from
// this process are applied once more, which is harmless. Success records
// the time the poll began as the last proof of freshness.
func (s *Service) pollChanges(ctx context.Context) error {
	s.pollMu.Lock()
	defer s.pollMu.Unlock()
	began := s.cfg.timeNow()
	seq, err := s.changeSeq(ctx)
	if err != nil {
		s.noteStoreErr(err)
		return err
	}
	if seq != s.lastSeq {
		if err := s.applyChanges(ctx, s.lastSeq, seq); err != nil {
			s.noteStoreErr(err)
			return err
		}
		s.lastSeq = seq
	}
	s.freshAt.Store(began.UnixNano())
	s.storeDown.Store(false)
	return nil
}

func (s *Service) noteStoreErr(err error) {
	if IsStoreUnavailable(err) {
		s.storeDown.Store(true)
	}
}

// applyChanges applies the changes in (from, to].
func (s *Service) applyChanges(ctx context.Context, from, to int64) error {
	if to < from || to-from > changeLogKeep {
		s.invalidateAll()
		return nil
	}
	rows, err := s.db.QueryContext(ctx, `SELECT seq, kind, scope FROM resolver_change_log WHERE seq > $1 AND seq <= $2 ORDER BY seq`, from, to)
	if err != nil {
		return fmt.Errorf("read change log: %w", err)
	}
	defer rows.Close()
	var cs []change
	next := from + 1
	gap := false
	for rows.Next() {
		var seq int64
		var c change
		if err := rows.Scan(&seq, &c.kind, &c.scope); err != nil {
			return fmt.Errorf("read change log: %w", err)
		}
		gap = gap || seq != next
		next = seq + 1
		cs = append(cs, c)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read change log: %w", err)
	}
	if gap || next != to+1 {
		s.invalidateAll()
		return nil
	}
	for _, c := range cs {
		s.invalidate(c)
	}
	return nil
}
