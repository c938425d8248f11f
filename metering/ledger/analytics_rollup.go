package ledger

import (
	"cmp"
	"context"
	"database/sql"
	"slices"
	"strings"

	"github.com/tollgate/tollgate/metering"
)

// usage_sessions (metering migration 11) is usage_daily with the session
// in its key; the writer maintains it in the same transaction.

// sessionKeyColumns are the primary key of usage_sessions, in sessionKey
// order.
var sessionKeyColumns = slices.Insert(slices.Clone(dailyKeyColumns), 1, "session_id")

func sessionUpsertSQL() string { return rollupUpsertSQL("usage_sessions", sessionKeyColumns) }

type sessionKey struct {
	dailyKey
	session string
}

func (a sessionKey) compare(b sessionKey) int {
	return cmp.Or(cmp.Compare(a.day, b.day), cmp.Compare(a.session, b.session), a.dailyKey.compare(b.dailyKey))
}

// upsertSessions adds the newly inserted records to usage_sessions (SQLite;
// PostgreSQL does it in pgInsertSQL), in key order.
func (s *Store) upsertSessions(ctx context.Context, tx *sql.Tx, fresh []*metering.Record) error {
	keys, agg := rollUp(fresh, func(r *metering.Record) sessionKey { return sessionKey{dailyKeyOf(r), r.Session} }, sessionKey.compare)
	upsert := tx.StmtContext(ctx, s.sessionUpsert)
	args := make([]any, 0, len(sessionKeyColumns)+len(dailySums))
	for _, k := range keys {
		args = append(args[:0], k.day, k.session, k.project, k.user, k.workspace, k.harness, k.provider, k.model, k.tier)
		for _, v := range agg[k] {
			args = append(args, v)
		}
		if _, err := upsert.ExecContext(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// pgRollupCTE is the part of pgInsertSQL that rolls the inserted rows
// (CTE ins) up into table, keyed by keys, locking its rows in byte order of
// the key so concurrent writers cannot deadlock.
func pgRollupCTE(name, table string, keys []string) string {
	var b strings.Builder
	b.WriteString(name + " AS (INSERT INTO " + table + " (")
	b.WriteString(strings.Join(keys, ", ") + ", " + strings.Join(dailySums, ", "))
	b.WriteString(") SELECT " + strings.Join(keys, ", ") + ", COUNT(*)")
	for _, c := range bucketColumns() {
		b.WriteString(", COALESCE(SUM(" + c + "), 0)")
	}
	b.WriteString(", COALESCE(SUM(cost_micro_usd), 0)")
	for _, c := range rollupCounts {
		b.WriteString(", COUNT(*) FILTER (WHERE " + c.raw + ")")
	}
	b.WriteString(" FROM ins GROUP BY " + strings.Join(keys, ", ") + " ORDER BY ")
	for i, c := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(c + ` COLLATE "C"`)
	}
	b.WriteString(" ON CONFLICT (" + strings.Join(keys, ", ") + ") DO UPDATE SET ")
	for i, c := range dailySums {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(c + " = " + table + "." + c + " + excluded." + c)
	}
	b.WriteString(")")
	return b.String()
}
