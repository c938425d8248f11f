package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// Retention bounds (TOLLGATE_AUDIT_RETENTION).
const (
	// MinRetention is the shortest retention accepted: a log kept for
	// less than a day cannot answer "who changed this yesterday".
	MinRetention = 24 * time.Hour
	// pruneBatch bounds the entries one statement deletes, so SQLite's
	// writer (and PostgreSQL's row locks) are held briefly; prunePass the
	// batches of one pass, a backlog being worked off over passes.
	pruneBatch = 1000
	prunePass  = 100
	// pruneEvery is how often Keep prunes.
	pruneEvery = time.Hour
)

// ParseRetention reads a retention: a duration with a unit (720h) or whole
// days (90d), at least MinRetention. A bare number is refused with the
// likely reading, as every TOLLGATE_* duration is.
func ParseRetention(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n <= 0 || n > 100*366 {
			return 0, errors.New("not a number of days: use e.g. 90d, or a duration such as 2160h")
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		if _, err := strconv.ParseFloat(s, 64); err == nil {
			return 0, fmt.Errorf("a retention needs a unit: did you mean %sd? (use e.g. 90d or 2160h; unset keeps entries forever)", s)
		}
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, errors.New("not a retention: use e.g. 90d or 2160h; unset keeps entries forever")
		}
	}
	if d < MinRetention {
		return 0, fmt.Errorf("must be at least %s (1d); unset keeps entries forever", MinRetention)
	}
	return d, nil
}

// Prune deletes the entries older than before, pruneBatch at a time and
// at most prunePass batches; it returns how many it deleted. Deleting is
// idempotent, so replicas may prune at once.
func (l *Log) Prune(ctx context.Context, before time.Time) (int, error) {
	batch, pass := l.pruneSizes()
	total := 0
	for range pass {
		res, err := l.db.ExecContext(ctx, `DELETE FROM audit_log WHERE id IN
			(SELECT id FROM audit_log WHERE at_us < $1 ORDER BY at_us LIMIT `+strconv.Itoa(batch)+`)`, before.UnixMicro())
		if err != nil {
			return total, fmt.Errorf("audit: prune: %w", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, fmt.Errorf("audit: prune: %w", err)
		}
		total += int(n)
		if int(n) < batch {
			break
		}
	}
	return total, nil
}

// pruneSizes are the batch and pass sizes: the constants, unless a test
// set smaller ones.
func (l *Log) pruneSizes() (batch, pass int) {
	if l.batch > 0 {
		return l.batch, l.pass
	}
	return pruneBatch, prunePass
}

// Keep prunes the entries older than keep at once and then every
// pruneEvery (at once again while a pass was full), logging each count,
// until ctx ends. keep 0 keeps everything and returns at once.
func (l *Log) Keep(ctx context.Context, keep time.Duration, log *slog.Logger) {
	if keep <= 0 {
		return
	}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := l.Prune(ctx, l.now().Add(-keep))
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("audit log prune failed; retried later", "err", err)
		case n > 0:
			log.Info("audit log pruned", "entries", n, "retention", keep.String())
		}
		next := pruneEvery
		if batch, pass := l.pruneSizes(); err == nil && n == batch*pass {
			next = 0
		}
		t.Reset(next)
	}
}
