package ledger

import (
	"cmp"
	"context"
	"database/sql"
	"maps"
	"slices"
	"strconv"
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
	return s.upsertSpans(ctx, tx, keys, agg)
}

// sessionSpan is a usage_session_spans row's change from one batch.
type sessionSpan struct {
	first, last          string
	priced, cost, tokens int64
}

// upsertSpans adds a batch's usage_sessions sums (keys and agg from
// upsertSessions) to usage_session_spans, in session order.
func (s *Store) upsertSpans(ctx context.Context, tx *sql.Tx, keys []sessionKey, agg map[sessionKey]*dailyAgg) error {
	spans := map[string]*sessionSpan{}
	for _, k := range keys {
		a := agg[k]
		sp := spans[k.session]
		if sp == nil {
			sp = &sessionSpan{first: k.day, last: k.day}
			spans[k.session] = sp
		}
		sp.first, sp.last = min(sp.first, k.day), max(sp.last, k.day)
		sp.priced += a[aggCounts] // rollupCounts[0]: priced_requests
		sp.cost += a[aggCost]
		for i, b := range metering.Buckets {
			if rankToken(b) {
				sp.tokens += a[aggTokens+i]
			}
		}
	}
	upsert := tx.StmtContext(ctx, s.spanUpsert)
	for _, id := range slices.Sorted(maps.Keys(spans)) {
		sp := spans[id]
		if _, err := upsert.ExecContext(ctx, id, sp.first, sp.last, sp.priced, sp.cost, sp.tokens); err != nil {
			return err
		}
	}
	return nil
}

// rankToken says whether a bucket is in the tokens a ranking orders by:
// the input buckets and output.
func rankToken(b metering.Bucket) bool { return b.Input || b.Column == "output_tokens" }

// rankTokenColumns are the bucket columns rankToken keeps.
func rankTokenColumns() []string {
	var cols []string
	for _, b := range metering.Buckets {
		if rankToken(b) {
			cols = append(cols, b.Column)
		}
	}
	return cols
}

// spanUpsertSQL (SQLite) adds one session's batch to usage_session_spans.
const spanUpsertSQL = `INSERT INTO usage_session_spans (session_id, first_day, last_day, priced_requests, cost_micro_usd, rank_tokens)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (session_id) DO UPDATE SET
	first_day = min(usage_session_spans.first_day, excluded.first_day),
	last_day = max(usage_session_spans.last_day, excluded.last_day),
	priced_requests = usage_session_spans.priced_requests + excluded.priced_requests,
	cost_micro_usd = usage_session_spans.cost_micro_usd + excluded.cost_micro_usd,
	rank_tokens = usage_session_spans.rank_tokens + excluded.rank_tokens`

// pgSpanCTE is the part of pgInsertSQL that adds the inserted rows (CTE
// ins) to usage_session_spans, locking its rows in byte order of the
// session as pgRollupCTE does.
func pgSpanCTE() string {
	var tokens []string
	for _, c := range rankTokenColumns() {
		tokens = append(tokens, "COALESCE(SUM("+c+"), 0)")
	}
	return "upspan AS (INSERT INTO usage_session_spans (session_id, first_day, last_day, priced_requests, cost_micro_usd, rank_tokens)" +
		" SELECT session_id, MIN(day), MAX(day), COUNT(*) FILTER (WHERE " + rollupCounts[0].raw + "), COALESCE(SUM(cost_micro_usd), 0), " +
		strings.Join(tokens, " + ") + " FROM ins GROUP BY session_id ORDER BY session_id COLLATE \"C\"" +
		" ON CONFLICT (session_id) DO UPDATE SET first_day = LEAST(usage_session_spans.first_day, excluded.first_day)," +
		" last_day = GREATEST(usage_session_spans.last_day, excluded.last_day)," +
		" priced_requests = usage_session_spans.priced_requests + excluded.priced_requests," +
		" cost_micro_usd = usage_session_spans.cost_micro_usd + excluded.cost_micro_usd," +
		" rank_tokens = usage_session_spans.rank_tokens + excluded.rank_tokens)"
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

// spanRankCTE is queryOpt's ranked CTE for sessions without filters, read
// from usage_session_spans: a session whose first and last day are in the
// range brings its row as is, and one straddling a range edge its sums
// over the in-range days of usage_sessions (where, the day bounds), so
// each session ranks on exactly what the range holds of it, as grouping
// usage_sessions would give (TestSessionRankSQLMatchesGo). from and to
// are the day bounds' placeholders.
func spanRankCTE(where, from, to string, n int, engine string) string {
	return "WITH span AS (SELECT session_id AS k, priced_requests AS p, cost_micro_usd AS c, rank_tokens AS t FROM usage_session_spans" +
		" WHERE first_day >= " + from + " AND last_day < " + to +
		" UNION ALL SELECT session_id, CAST(SUM(priced_requests) AS BIGINT), CAST(SUM(cost_micro_usd) AS BIGINT), CAST(SUM(" +
		strings.Join(rankTokenColumns(), " + ") + ") AS BIGINT) FROM usage_sessions WHERE " + where +
		" AND session_id IN (SELECT session_id FROM usage_session_spans WHERE first_day < " + to + " AND last_day >= " + from +
		" AND (first_day < " + from + " OR last_day >= " + to + ")) GROUP BY 1)," +
		" ranked AS (SELECT k, COUNT(*) OVER () AS n FROM span ORDER BY " + rankOrderOf("p", "c", "t", "k", engine) +
		" LIMIT " + strconv.Itoa(n) + ") "
}

// modelKeyColumns are the primary key of usage_project_models, in
// modelKey order.
var modelKeyColumns = []string{"day", "project", "provider", "model", "service_tier"}

func modelUpsertSQL() string { return rollupUpsertSQL("usage_project_models", modelKeyColumns) }

type modelKey struct{ day, project, provider, model, tier string }

func (a modelKey) compare(b modelKey) int {
	return cmp.Or(cmp.Compare(a.day, b.day), cmp.Compare(a.project, b.project), cmp.Compare(a.provider, b.provider),
		cmp.Compare(a.model, b.model), cmp.Compare(a.tier, b.tier))
}

// upsertNarrow adds the newly inserted records to usage_project_models
// and usage_user_workspaces (SQLite; PostgreSQL does it in pgInsertSQL).
func (s *Store) upsertNarrow(ctx context.Context, tx *sql.Tx, fresh []*metering.Record) error {
	err := upsertRollup(ctx, tx.StmtContext(ctx, s.modelUpsert), fresh, func(r *metering.Record) modelKey {
		return modelKey{r.Start.UTC().Format(usageDayLayout), r.Project, r.Provider, r.Model(), r.ServiceTier}
	}, modelKey.compare, func(k modelKey) []any { return []any{k.day, k.project, k.provider, k.model, k.tier} })
	if err != nil {
		return err
	}
	return upsertRollup(ctx, tx.StmtContext(ctx, s.peopleUpsert), fresh, func(r *metering.Record) peopleKey {
		return peopleKey{r.Start.UTC().Format(usageDayLayout), r.User, r.Workspace}
	}, peopleKey.compare, func(k peopleKey) []any { return []any{k.day, k.user, k.workspace} })
}

// upsertRollup adds recs to a rollup through its upsert statement (the key
// columns, then dailySums), one row per key in key order.
func upsertRollup[K comparable](ctx context.Context, upsert *sql.Stmt, recs []*metering.Record, keyOf func(*metering.Record) K, cmp func(K, K) int, keyArgs func(K) []any) error {
	keys, agg := rollUp(recs, keyOf, cmp)
	for _, k := range keys {
		args := keyArgs(k)
		for _, v := range agg[k] {
			args = append(args, v)
		}
		if _, err := upsert.ExecContext(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// peopleKeyColumns are the primary key of usage_user_workspaces, in
// peopleKey order.
var peopleKeyColumns = []string{"day", "user_id", "workspace"}

func peopleUpsertSQL() string { return rollupUpsertSQL("usage_user_workspaces", peopleKeyColumns) }

type peopleKey struct{ day, user, workspace string }

func (a peopleKey) compare(b peopleKey) int {
	return cmp.Or(cmp.Compare(a.day, b.day), cmp.Compare(a.user, b.user), cmp.Compare(a.workspace, b.workspace))
}

// peopleDims are the group-bys usage_user_workspaces can answer;
// fitsPeople says whether q needs no other column.
var peopleDims = []string{GroupDay, GroupUser, GroupWorkspace}

func (q UsageQuery) fitsPeople() bool {
	for _, g := range q.GroupBy {
		if !slices.Contains(peopleDims, g) {
			return false
		}
	}
	return q.Project == "" && q.Harness == "" && q.Model == "" && q.ServiceTier == "" && q.Session == ""
}

// modelDims are the group-bys usage_project_models can answer; fitsModels
// says whether q needs no other column (its filters included).
var modelDims = []string{GroupDay, GroupProject, GroupProvider, GroupModel, GroupServiceTier}

func (q UsageQuery) fitsModels() bool {
	for _, g := range q.GroupBy {
		if !slices.Contains(modelDims, g) {
			return false
		}
	}
	return q.User == "" && q.Workspace == "" && q.Harness == "" && q.Session == ""
}
