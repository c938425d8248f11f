package ledger

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/metering"
)

// storeMigrations create metering's tables. Append only: a released
// migration is never edited (store.Migrate numbers them by position).
//
// usage_records has one row per request and every Record field. Token and
// cost columns are NULL when unknown (wire-formats.md §8: never a silent
// 0). Times are UTC; day is the UTC date of started_at as YYYY-MM-DD, stored
// because SQLite and PostgreSQL share no date-truncation function.
//
// usage_daily is the rollup the finance queries read, maintained in the
// insert's transaction for newly inserted rows only.
//
// usage_records carries a secondary index on started_at: reports group
// from the rollup, and a raw query is a time-range scan. A partial one on
// upstream_id (migration 5) answers the stored-object owner lookup
// (owner.go); its insert cost was within BenchmarkStoreInsertBatch's noise
// (16-21 cpu-µs a record with and without it). Indexes on
// (project, started_at) and (model_served, started_at) made each insert
// 25-35% dearer (BenchmarkStoreInsertBatch) on the request-rate path; add
// them when raw per-project queries over long ranges matter more.
var storeMigrations = []string{
	`CREATE TABLE usage_records (
	request_id TEXT PRIMARY KEY,
	started_at TIMESTAMP NOT NULL,
	day TEXT NOT NULL,
	duration_ns BIGINT NOT NULL,
	ttfb_ns BIGINT NOT NULL,
	workspace TEXT NOT NULL,
	project TEXT NOT NULL,
	user_id TEXT NOT NULL,
	token_id TEXT NOT NULL,
	session_id TEXT NOT NULL,
	harness TEXT NOT NULL,
	dialect TEXT NOT NULL,
	operation TEXT NOT NULL,
	path TEXT NOT NULL,
	provider TEXT NOT NULL,
	credential_tier TEXT NOT NULL,
	credential_id TEXT NOT NULL,
	stream BOOLEAN NOT NULL,
	model_requested TEXT NOT NULL,
	model_served TEXT NOT NULL,
	upstream_id TEXT NOT NULL,
	status INTEGER NOT NULL,
	outcome TEXT NOT NULL,
	usage_source TEXT NOT NULL,
	usage_injected BOOLEAN NOT NULL,
	event_overflow BOOLEAN NOT NULL,
	input_uncached BIGINT,
	cache_read BIGINT,
	cache_write_5m BIGINT,
	cache_write_1h BIGINT,
	input_other BIGINT,
	output_tokens BIGINT,
	reasoning_tokens BIGINT,
	cost_micro_usd BIGINT,
	unpriced BOOLEAN NOT NULL,
	price_version TEXT NOT NULL,
	bytes_out BIGINT NOT NULL,
	recorded_at TIMESTAMP NOT NULL
);
CREATE INDEX usage_records_started ON usage_records (started_at);
CREATE TABLE usage_daily (
	day TEXT NOT NULL,
	project TEXT NOT NULL,
	user_id TEXT NOT NULL,
	workspace TEXT NOT NULL,
	harness TEXT NOT NULL,
	provider TEXT NOT NULL,
	model TEXT NOT NULL,
	requests BIGINT NOT NULL,
	input_uncached BIGINT NOT NULL,
	cache_read BIGINT NOT NULL,
	cache_write_5m BIGINT NOT NULL,
	cache_write_1h BIGINT NOT NULL,
	input_other BIGINT NOT NULL,
	output_tokens BIGINT NOT NULL,
	reasoning_tokens BIGINT NOT NULL,
	cost_micro_usd BIGINT NOT NULL,
	priced_requests BIGINT NOT NULL,
	unpriced_requests BIGINT NOT NULL,
	missing_usage_requests BIGINT NOT NULL,
	estimated_requests BIGINT NOT NULL,
	PRIMARY KEY (day, project, user_id, workspace, harness, provider, model)
)`,
	// service_tier: the tier the provider says served the request; '' when
	// it says none (records written before this column, too).
	`ALTER TABLE usage_records ADD COLUMN service_tier TEXT NOT NULL DEFAULT ''`,
	// usage_daily gains service_tier in its key, so finance can split cost
	// by tier. SQLite cannot change a primary key in place, so the table
	// is rebuilt (new table, copy, drop, rename), which PostgreSQL runs as
	// well, in one transaction on both. Existing rows were summed without
	// a tier and keep ''.
	// On PostgreSQL the primary key keeps the name usage_daily_v3_pkey;
	// the rollup upsert names its conflict columns, never the constraint.
	`CREATE TABLE usage_daily_v3 (
	day TEXT NOT NULL,
	project TEXT NOT NULL,
	user_id TEXT NOT NULL,
	workspace TEXT NOT NULL,
	harness TEXT NOT NULL,
	provider TEXT NOT NULL,
	model TEXT NOT NULL,
	service_tier TEXT NOT NULL DEFAULT '',
	requests BIGINT NOT NULL,
	input_uncached BIGINT NOT NULL,
	cache_read BIGINT NOT NULL,
	cache_write_5m BIGINT NOT NULL,
	cache_write_1h BIGINT NOT NULL,
	input_other BIGINT NOT NULL,
	output_tokens BIGINT NOT NULL,
	reasoning_tokens BIGINT NOT NULL,
	cost_micro_usd BIGINT NOT NULL,
	priced_requests BIGINT NOT NULL,
	unpriced_requests BIGINT NOT NULL,
	missing_usage_requests BIGINT NOT NULL,
	estimated_requests BIGINT NOT NULL,
	PRIMARY KEY (day, project, user_id, workspace, harness, provider, model, service_tier)
);
INSERT INTO usage_daily_v3 (day, project, user_id, workspace, harness, provider, model, service_tier,
	requests, input_uncached, cache_read, cache_write_5m, cache_write_1h, input_other, output_tokens,
	reasoning_tokens, cost_micro_usd, priced_requests, unpriced_requests, missing_usage_requests, estimated_requests)
SELECT day, project, user_id, workspace, harness, provider, model, '',
	requests, input_uncached, cache_read, cache_write_5m, cache_write_1h, input_other, output_tokens,
	reasoning_tokens, cost_micro_usd, priced_requests, unpriced_requests, missing_usage_requests, estimated_requests
FROM usage_daily;
DROP TABLE usage_daily;
ALTER TABLE usage_daily_v3 RENAME TO usage_daily`,
	// unmetered_requests counts requests that were not metered calls
	// (usage_source none: rejected, failed upstream, count_tokens), and
	// rejected_requests those tollgate refused, so a report can tell them
	// from requests whose usage went missing. Backfilled from the records;
	// rows rolled up before migration 3 kept no tier and match only
	// records without one.
	`ALTER TABLE usage_daily ADD COLUMN unmetered_requests BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_daily ADD COLUMN rejected_requests BIGINT NOT NULL DEFAULT 0;
UPDATE usage_daily SET unmetered_requests = u.unmetered, rejected_requests = u.rejected
FROM (SELECT day, project, user_id, workspace, harness, provider,
		CASE WHEN model_served <> '' THEN model_served ELSE model_requested END AS model, service_tier,
		SUM(CASE WHEN usage_source = 'none' THEN 1 ELSE 0 END) AS unmetered,
		SUM(CASE WHEN outcome = 'rejected' THEN 1 ELSE 0 END) AS rejected
	FROM usage_records GROUP BY 1, 2, 3, 4, 5, 6, 7, 8) AS u
WHERE usage_daily.day = u.day AND usage_daily.project = u.project AND usage_daily.user_id = u.user_id
	AND usage_daily.workspace = u.workspace AND usage_daily.harness = u.harness
	AND usage_daily.provider = u.provider AND usage_daily.model = u.model
	AND usage_daily.service_tier = u.service_tier`,
	// The owner of a stored provider object (a Responses response) is
	// looked up by the upstream id its creating request recorded
	// (owner.go). Partial, so the many records without an id (errors,
	// rejections, count_tokens) cost the insert nothing here.
	`CREATE INDEX usage_records_upstream ON usage_records (upstream_id) WHERE upstream_id <> ''`,
	// refusals counts authentication refusals (no, bad, revoked or expired
	// token, wrong harness, throttled) per UTC minute, client address,
	// token, reason and dialect, instead of a usage record per refusal: a
	// flood of guesses adds a row a minute, not a row a guess. token_id and
	// workspace are '' when the token named none.
	`CREATE TABLE refusals (
	minute TIMESTAMP NOT NULL,
	client TEXT NOT NULL,
	token_id TEXT NOT NULL,
	workspace TEXT NOT NULL,
	reason TEXT NOT NULL,
	dialect TEXT NOT NULL,
	count BIGINT NOT NULL,
	PRIMARY KEY (minute, client, token_id, workspace, reason, dialect)
)`,
	// metering_durable is written, and emptied again, by Durable on
	// PostgreSQL (store_pg.go): a synchronous commit needs a write to flush
	// the writer's asynchronous ones. SQLite creates it and never uses it.
	`CREATE TABLE metering_durable (mark BIGINT NOT NULL)`,
	// Governance: model_sent is the alias target forwarded ('' when the
	// requested model went as is), reserved_micro_usd the cost ceiling
	// reserved before forwarding (0 when none), governance why governance
	// refused the request ('' when it did not).
	`ALTER TABLE usage_records ADD COLUMN model_sent TEXT NOT NULL DEFAULT '';
ALTER TABLE usage_records ADD COLUMN reserved_micro_usd BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN governance TEXT NOT NULL DEFAULT ''`,
	// Server-side tool uses the provider bills per use (metering.Bucket.Tool):
	// web searches. NULL in records written before the column, which did
	// not count them; usage_daily rows rolled up before it keep 0.
	`ALTER TABLE usage_records ADD COLUMN web_search_requests BIGINT;
ALTER TABLE usage_daily ADD COLUMN web_search_requests BIGINT NOT NULL DEFAULT 0`,
	// Failover: attempts lists the upstream attempts of a request that
	// made more than one, as the spool's JSON array of metering.Attempt
	// ('' when it made one), so a failed attempt the provider may have
	// billed stays findable. Never summed: reports need no column per
	// field.
	`ALTER TABLE usage_records ADD COLUMN attempts TEXT NOT NULL DEFAULT ''`,
	// usage_sessions is usage_daily with the session in its key, so cost
	// and cache efficiency per session over weeks are read from a rollup:
	// top sessions over 90 days of a million records took 3-6 s from the
	// raw records (BenchmarkUsageAnalytics). Maintained like usage_daily
	// (sessionUpsertSQL, pgInsertSQL); backfilled from the records, so it
	// also holds the service tiers usage_daily rows rolled up before
	// migration 3 lost. The index on (session_id, day) answers one
	// session's cost, and the cache report's second query (the kept
	// sessions), without scanning the range.
	`CREATE TABLE usage_sessions (
	day TEXT NOT NULL,
	session_id TEXT NOT NULL,
	project TEXT NOT NULL,
	user_id TEXT NOT NULL,
	workspace TEXT NOT NULL,
	harness TEXT NOT NULL,
	provider TEXT NOT NULL,
	model TEXT NOT NULL,
	service_tier TEXT NOT NULL,
	requests BIGINT NOT NULL,
	input_uncached BIGINT NOT NULL,
	cache_read BIGINT NOT NULL,
	cache_write_5m BIGINT NOT NULL,
	cache_write_1h BIGINT NOT NULL,
	input_other BIGINT NOT NULL,
	output_tokens BIGINT NOT NULL,
	reasoning_tokens BIGINT NOT NULL,
	web_search_requests BIGINT NOT NULL,
	cost_micro_usd BIGINT NOT NULL,
	priced_requests BIGINT NOT NULL,
	unpriced_requests BIGINT NOT NULL,
	missing_usage_requests BIGINT NOT NULL,
	estimated_requests BIGINT NOT NULL,
	unmetered_requests BIGINT NOT NULL,
	rejected_requests BIGINT NOT NULL,
	PRIMARY KEY (day, session_id, project, user_id, workspace, harness, provider, model, service_tier)
);
CREATE INDEX usage_sessions_session ON usage_sessions (session_id, day);
INSERT INTO usage_sessions (day, session_id, project, user_id, workspace, harness, provider, model, service_tier,
	requests, input_uncached, cache_read, cache_write_5m, cache_write_1h, input_other, output_tokens,
	reasoning_tokens, web_search_requests, cost_micro_usd, priced_requests, unpriced_requests,
	missing_usage_requests, estimated_requests, unmetered_requests, rejected_requests)
SELECT day, session_id, project, user_id, workspace, harness, provider,
	CASE WHEN model_served <> '' THEN model_served ELSE model_requested END, service_tier,
	COUNT(*), COALESCE(SUM(input_uncached), 0), COALESCE(SUM(cache_read), 0), COALESCE(SUM(cache_write_5m), 0),
	COALESCE(SUM(cache_write_1h), 0), COALESCE(SUM(input_other), 0), COALESCE(SUM(output_tokens), 0),
	COALESCE(SUM(reasoning_tokens), 0), COALESCE(SUM(web_search_requests), 0), COALESCE(SUM(cost_micro_usd), 0),
	SUM(CASE WHEN cost_micro_usd IS NOT NULL THEN 1 ELSE 0 END),
	SUM(CASE WHEN unpriced THEN 1 ELSE 0 END),
	SUM(CASE WHEN usage_source = 'missing' OR outcome = 'interrupted' THEN 1 ELSE 0 END),
	SUM(CASE WHEN usage_source = 'estimated' THEN 1 ELSE 0 END),
	SUM(CASE WHEN usage_source = 'none' THEN 1 ELSE 0 END),
	SUM(CASE WHEN outcome = 'rejected' THEN 1 ELSE 0 END)
FROM usage_records GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9`,
	// usage_session_spans is one row per session over its whole life: the
	// three sums the session ranking orders by (rankOrder: priced requests,
	// cost, input and output tokens) and its first and last day. A ranked
	// list of sessions without filters reads the sessions lying wholly in
	// the range from it, one row each, instead of grouping usage_sessions'
	// rows per session, and sums only the sessions straddling a range edge
	// from usage_sessions (analytics_rollup.go). Maintained by the writer in
	// the same transaction (spanUpsertSQL, pgInsertSQL); backfilled from
	// usage_sessions.
	`CREATE TABLE usage_session_spans (
	session_id TEXT PRIMARY KEY,
	first_day TEXT NOT NULL,
	last_day TEXT NOT NULL,
	priced_requests BIGINT NOT NULL,
	cost_micro_usd BIGINT NOT NULL,
	rank_tokens BIGINT NOT NULL
);
` + sessionSpansBackfillSQL,
	// usage_project_models is usage_daily keyed by day, project and model
	// only (provider, model, service tier): 57,769 rows for
	// BenchmarkUsageAnalytics' 90 days against usage_daily's 176,365, so a
	// total, a series by model or project and the cache report per project
	// or its per-model totals, without a user, workspace, harness or
	// session, group a third of the rows. Maintained like usage_daily
	// (modelUpsertSQL, pgInsertSQL); backfilled from usage_daily, so its
	// tiers are usage_daily's.
	`CREATE TABLE usage_project_models (
	day TEXT NOT NULL,
	project TEXT NOT NULL,
	provider TEXT NOT NULL,
	model TEXT NOT NULL,
	service_tier TEXT NOT NULL,
	requests BIGINT NOT NULL,
	input_uncached BIGINT NOT NULL,
	cache_read BIGINT NOT NULL,
	cache_write_5m BIGINT NOT NULL,
	cache_write_1h BIGINT NOT NULL,
	input_other BIGINT NOT NULL,
	output_tokens BIGINT NOT NULL,
	reasoning_tokens BIGINT NOT NULL,
	web_search_requests BIGINT NOT NULL,
	cost_micro_usd BIGINT NOT NULL,
	priced_requests BIGINT NOT NULL,
	unpriced_requests BIGINT NOT NULL,
	missing_usage_requests BIGINT NOT NULL,
	estimated_requests BIGINT NOT NULL,
	unmetered_requests BIGINT NOT NULL,
	rejected_requests BIGINT NOT NULL,
	PRIMARY KEY (day, project, provider, model, service_tier)
);
` + modelsBackfillSQL,
	// usage_user_workspaces is usage_daily keyed by day, user and
	// workspace only: 32,657 rows for BenchmarkUsageAnalytics' 90 days. A
	// series stacked by user reads it in key order, aggregating as it
	// reads instead of sorting the range's rows, and top workspaces group
	// a fifth of the rows. Maintained like usage_daily (peopleUpsertSQL,
	// pgInsertSQL); backfilled from usage_daily.
	`CREATE TABLE usage_user_workspaces (
	day TEXT NOT NULL,
	user_id TEXT NOT NULL,
	workspace TEXT NOT NULL,
	requests BIGINT NOT NULL,
	input_uncached BIGINT NOT NULL,
	cache_read BIGINT NOT NULL,
	cache_write_5m BIGINT NOT NULL,
	cache_write_1h BIGINT NOT NULL,
	input_other BIGINT NOT NULL,
	output_tokens BIGINT NOT NULL,
	reasoning_tokens BIGINT NOT NULL,
	web_search_requests BIGINT NOT NULL,
	cost_micro_usd BIGINT NOT NULL,
	priced_requests BIGINT NOT NULL,
	unpriced_requests BIGINT NOT NULL,
	missing_usage_requests BIGINT NOT NULL,
	estimated_requests BIGINT NOT NULL,
	unmetered_requests BIGINT NOT NULL,
	rejected_requests BIGINT NOT NULL,
	PRIMARY KEY (day, user_id, workspace)
);
` + peopleBackfillSQL,
}

// peopleBackfillSQL fills usage_user_workspaces from usage_daily: part of
// metering migration 14, so never edited (TestNarrowRollupsBackfill).
const peopleBackfillSQL = `INSERT INTO usage_user_workspaces (day, user_id, workspace,
	requests, input_uncached, cache_read, cache_write_5m, cache_write_1h, input_other, output_tokens,
	reasoning_tokens, web_search_requests, cost_micro_usd, priced_requests, unpriced_requests,
	missing_usage_requests, estimated_requests, unmetered_requests, rejected_requests)
SELECT day, user_id, workspace,
	SUM(requests), SUM(input_uncached), SUM(cache_read), SUM(cache_write_5m), SUM(cache_write_1h), SUM(input_other), SUM(output_tokens),
	SUM(reasoning_tokens), SUM(web_search_requests), SUM(cost_micro_usd), SUM(priced_requests), SUM(unpriced_requests),
	SUM(missing_usage_requests), SUM(estimated_requests), SUM(unmetered_requests), SUM(rejected_requests)
FROM usage_daily GROUP BY day, user_id, workspace`

// modelsBackfillSQL fills usage_project_models from usage_daily: part of
// metering migration 13, so never edited (TestNarrowRollupsBackfill).
const modelsBackfillSQL = `INSERT INTO usage_project_models (day, project, provider, model, service_tier,
	requests, input_uncached, cache_read, cache_write_5m, cache_write_1h, input_other, output_tokens,
	reasoning_tokens, web_search_requests, cost_micro_usd, priced_requests, unpriced_requests,
	missing_usage_requests, estimated_requests, unmetered_requests, rejected_requests)
SELECT day, project, provider, model, service_tier,
	SUM(requests), SUM(input_uncached), SUM(cache_read), SUM(cache_write_5m), SUM(cache_write_1h), SUM(input_other), SUM(output_tokens),
	SUM(reasoning_tokens), SUM(web_search_requests), SUM(cost_micro_usd), SUM(priced_requests), SUM(unpriced_requests),
	SUM(missing_usage_requests), SUM(estimated_requests), SUM(unmetered_requests), SUM(rejected_requests)
FROM usage_daily GROUP BY day, project, provider, model, service_tier`

// sessionSpansBackfillSQL fills usage_session_spans from usage_sessions: part
// of metering migration 12, so never edited; the bench rebuilds the table
// with it. rank_tokens sums rankTokenColumns (TestSessionSpansBackfillSQL).
const sessionSpansBackfillSQL = `INSERT INTO usage_session_spans (session_id, first_day, last_day, priced_requests, cost_micro_usd, rank_tokens)
SELECT session_id, MIN(day), MAX(day), SUM(priced_requests), SUM(cost_micro_usd),
	SUM(input_uncached + cache_read + cache_write_5m + cache_write_1h + input_other + output_tokens)
FROM usage_sessions GROUP BY session_id`

// recordColumns is the insert column order of usage_records:
// recordHeadColumns, a column per token bucket, recordTailColumns;
// appendRecordArgs follows it.
var recordColumns = slices.Concat(recordHeadColumns, bucketColumns(), recordTailColumns)

var recordHeadColumns = []string{
	"request_id", "started_at", "day", "duration_ns", "ttfb_ns",
	"workspace", "project", "user_id", "token_id", "session_id",
	"harness", "dialect", "operation", "path", "provider",
	"credential_tier", "credential_id", "stream", "model_requested", "model_served",
	"upstream_id", "status", "outcome", "usage_source", "usage_injected",
	"event_overflow",
}

var recordTailColumns = slices.Concat([]string{"cost_micro_usd", "unpriced", "price_version", "bytes_out", "recorded_at", "service_tier"},
	governanceColumns, failoverColumns)

// governanceColumns (metering migration 8) follow the service tier.
var governanceColumns = []string{"model_sent", "reserved_micro_usd", "governance"}

// failoverColumns (metering migration 10) end recordTailColumns.
var failoverColumns = []string{"attempts"}

// bucketColumns are the bucket columns (tokens and tool uses) of
// usage_records and usage_daily.
func bucketColumns() []string {
	cols := make([]string, len(metering.Buckets))
	for i, b := range metering.Buckets {
		cols[i] = b.Column
	}
	return cols
}

// dailySums are the additive columns of usage_daily, in dailyAgg order:
// requests, the token buckets, cost, then rollupCounts.
var dailySums = func() []string {
	cols := append([]string{"requests"}, bucketColumns()...)
	cols = append(cols, "cost_micro_usd")
	for _, c := range rollupCounts {
		cols = append(cols, c.column)
	}
	return cols
}()

// Positions in dailyAgg.
const (
	aggRequests = 0
	aggTokens   = 1
	aggCost     = aggTokens + len(metering.Buckets)
	aggCounts   = aggCost + 1
)

// rollupCount is one request counter of usage_daily: which records it
// counts, the same test in SQL over usage_records, and its UsageRow field.
type rollupCount struct {
	column string
	raw    string
	counts func(*metering.Record) bool
	row    func(*UsageRow) *int64
}

var rollupCounts = [...]rollupCount{
	{"priced_requests", "cost_micro_usd IS NOT NULL",
		func(r *metering.Record) bool { return r.CostMicroUSD != nil }, func(u *UsageRow) *int64 { return &u.PricedRequests }},
	{"unpriced_requests", "unpriced",
		(*metering.Record).CostUnknown, func(u *UsageRow) *int64 { return &u.UnpricedRequests }},
	// An interrupted request's usage is at best partial: it counts as
	// missing usage whatever its source (replicas.md §4).
	{"missing_usage_requests", "(usage_source = '" + metering.SourceMissing + "' OR outcome = '" + metering.OutcomeInterrupted + "')",
		func(r *metering.Record) bool {
			return r.Source == metering.SourceMissing || r.Outcome == metering.OutcomeInterrupted
		}, func(u *UsageRow) *int64 { return &u.MissingUsageRequests }},
	{"estimated_requests", "usage_source = '" + metering.SourceEstimated + "'",
		func(r *metering.Record) bool { return r.Source == metering.SourceEstimated }, func(u *UsageRow) *int64 { return &u.EstimatedRequests }},
	{"unmetered_requests", "usage_source = '" + metering.SourceNone + "'",
		func(r *metering.Record) bool { return r.Source == metering.SourceNone }, func(u *UsageRow) *int64 { return &u.UnmeteredRequests }},
	{"rejected_requests", "outcome = '" + metering.OutcomeRejected + "'",
		func(r *metering.Record) bool { return r.Outcome == metering.OutcomeRejected }, func(u *UsageRow) *int64 { return &u.RejectedRequests }},
}

// usageDayLayout is the usage_daily day format; ISO dates sort as text.
const usageDayLayout = "2006-01-02"

// sqliteTimeLayout is a fixed-width UTC layout: SQLite compares timestamps
// as text, and the driver's default (time.Time.String) varies in width.
const sqliteTimeLayout = "2006-01-02 15:04:05.000000000"

// Store is metering's part of the SQL database: the usage_records table and
// its daily rollup. It implements Inserter and answers usage queries.
type Store struct {
	db *store.DB
	// insertRow and upsert (SQLite only) are prepared once on the pool;
	// database/sql keeps each connection's prepared copy, so a batch parses
	// no SQL.
	insertRow *sql.Stmt
	upsert    *sql.Stmt
	// sessionUpsert, spanUpsert, modelUpsert and peopleUpsert (SQLite
	// only) add to usage_sessions, usage_session_spans,
	// usage_project_models and usage_user_workspaces.
	sessionUpsert, spanUpsert, modelUpsert, peopleUpsert *sql.Stmt
	now                                                  func() time.Time
	// path is the SQLite database file, for Durable; "" on PostgreSQL.
	path string
	// settler, if set, settles budget reservations in each batch's
	// transaction (settle.go).
	settler Settler
}

// OpenStore applies metering's migrations to db and returns the Store.
func OpenStore(ctx context.Context, db *store.DB) (*Store, error) {
	if err := db.Migrate(ctx, "metering", storeMigrations); err != nil {
		return nil, err
	}
	s := &Store{db: db, now: time.Now}
	var err error
	if db.Engine == store.SQLite {
		if s.upsert, err = db.PrepareContext(ctx, dailyUpsertSQL()); err != nil {
			return nil, fmt.Errorf("metering prepare: %w", err)
		}
		if s.sessionUpsert, err = db.PrepareContext(ctx, sessionUpsertSQL()); err != nil {
			s.upsert.Close()
			return nil, fmt.Errorf("metering prepare: %w", err)
		}
		if s.spanUpsert, err = db.PrepareContext(ctx, spanUpsertSQL); err != nil {
			s.upsert.Close()
			s.sessionUpsert.Close()
			return nil, fmt.Errorf("metering prepare: %w", err)
		}
		if s.modelUpsert, err = db.PrepareContext(ctx, modelUpsertSQL()); err != nil {
			s.upsert.Close()
			s.sessionUpsert.Close()
			s.spanUpsert.Close()
			return nil, fmt.Errorf("metering prepare: %w", err)
		}
		if s.peopleUpsert, err = db.PrepareContext(ctx, peopleUpsertSQL()); err != nil {
			s.upsert.Close()
			s.sessionUpsert.Close()
			s.spanUpsert.Close()
			s.modelUpsert.Close()
			return nil, fmt.Errorf("metering prepare: %w", err)
		}
		if s.insertRow, err = db.PrepareContext(ctx, insertRowSQL); err != nil {
			s.upsert.Close()
			s.sessionUpsert.Close()
			s.spanUpsert.Close()
			s.modelUpsert.Close()
			s.peopleUpsert.Close()
			return nil, fmt.Errorf("metering prepare: %w", err)
		}
		var seq int
		var name string
		if err := db.QueryRowContext(ctx, "PRAGMA database_list").Scan(&seq, &name, &s.path); err != nil {
			return nil, fmt.Errorf("metering: locate the database file: %w", err)
		}
	}
	return s, nil
}

// Durable makes every committed batch survive a power loss. SQLite commits
// with synchronous=NORMAL, which in WAL mode skips the fsync per commit: an
// fsync per batch cost CPU and, on a single-P process, held up requests
// while it blocked (make bench, S2 p99). The writer calls this once before
// it deletes spool segments, the only moment it relies on the store alone.
// An fsync of the WAL covers every commit not yet checkpointed, and SQLite
// syncs the database file after each completed checkpoint; syncing both
// files here does not depend on that. PostgreSQL commits the writer's
// batches asynchronously too (store_pg.go) and flushes them here with one
// synchronous commit.
func (s *Store) Durable(ctx context.Context) error {
	if s.db.Engine == store.Postgres {
		return s.durablePG(ctx)
	}
	if s.path == "" {
		return nil
	}
	for _, p := range []string{s.path + "-wal", s.path} {
		f, err := os.Open(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// dailyKeyColumns are the primary key of usage_daily, in dailyKey order.
var dailyKeyColumns = []string{"day", "project", "user_id", "workspace", "harness", "provider", "model", "service_tier"}

// dailyUpsertSQL adds one aggregate to its usage_daily row.
func dailyUpsertSQL() string { return rollupUpsertSQL("usage_daily", dailyKeyColumns) }

// rollupUpsertSQL adds one aggregate to its row of a rollup table keyed by
// keys.
func rollupUpsertSQL(table string, keys []string) string {
	cols := append(slices.Clip(keys), dailySums...)
	var b strings.Builder
	b.WriteString("INSERT INTO " + table + " (")
	b.WriteString(strings.Join(cols, ", "))
	b.WriteString(") VALUES (")
	for i := range cols {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("$" + strconv.Itoa(i+1))
	}
	b.WriteString(") ON CONFLICT (" + strings.Join(keys, ", ") + ") DO UPDATE SET ")
	for i, c := range dailySums {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s = %s.%s + excluded.%s", c, table, c, c)
	}
	return b.String()
}

// insertSQL inserts n records, skipping request ids already stored. With
// returning it returns the ids actually inserted (RETURNING skips DO
// NOTHING rows on both SQLite ≥ 3.35 and PostgreSQL), so the rollup counts
// each request once.
//
// SQLite gets anonymous "?" parameters: it resolves "$N" names through a
// linear list, which made a 128-row statement (4864 names) spend 70% of a
// batch in the parser.
func insertSQL(engine string, n int, returning bool) string {
	var b strings.Builder
	b.Grow(n * len(recordColumns) * 6)
	b.WriteString("INSERT INTO usage_records (")
	b.WriteString(strings.Join(recordColumns, ", "))
	b.WriteString(") VALUES ")
	p := 1
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		for j := range recordColumns {
			if j > 0 {
				b.WriteString(", ")
			}
			if engine == store.SQLite {
				b.WriteByte('?')
			} else {
				b.WriteByte('$')
				b.WriteString(strconv.Itoa(p))
				p++
			}
		}
		b.WriteByte(')')
	}
	b.WriteString(" ON CONFLICT (request_id) DO NOTHING")
	if returning {
		b.WriteString(" RETURNING request_id")
	}
	return b.String()
}

// insertRowSQL is SQLite's statement: one row per execution, new when it
// changed a row. A multi-row VALUES list is compiled as a subquery, which
// made SQLite parse it per batch and keep a statement journal that spilled
// to a temporary file past 64 KiB; a prepared single row does neither.
var insertRowSQL = insertSQL(store.SQLite, 1, false)

// yieldEvery is the rows a SQLite batch inserts between yields of the
// processor. With GOMAXPROCS=1 a batch (10-20 µs of CPU a row) otherwise
// holds the only P until the runtime preempts it after 10 ms. Yielding every
// 8 rows cut the wake-up delay of a goroutine sleeping 50 µs in a loop
// beside back-to-back batches from 1-3 ms to under 50 µs (median) and from
// 3-20 ms to about 1 ms (p99).
const yieldEvery = 8

// ts converts t to the engine's TIMESTAMP parameter, always in UTC.
func (s *Store) ts(t time.Time) any {
	if s.db.Engine == store.SQLite {
		return t.UTC().Format(sqliteTimeLayout)
	}
	return t.UTC()
}

// Ping checks that the database answers; the writer uses it to tell a
// store outage from a record the store rejects.
func (s *Store) Ping(ctx context.Context) error {
	return s.db.PingContext(ctx)
}

// InsertBatch inserts recs in one transaction, ignoring request ids already
// stored, and adds the newly inserted ones to usage_daily in the same
// transaction. It returns how many were new.
func (s *Store) InsertBatch(ctx context.Context, recs []*metering.Record) (int, error) {
	if len(recs) == 0 {
		return 0, nil
	}
	recs = storeCleanAll(recs)
	if s.db.Engine == store.Postgres {
		return s.insertBatchPG(ctx, recs)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("metering insert: %w", err)
	}
	defer tx.Rollback()
	var settle []Statement
	if s.settler != nil {
		settle = s.settler.SettleStatements(s.db.Engine, recs)
	}
	for _, st := range settle {
		if !st.BeforeInsert {
			continue
		}
		if _, err := tx.ExecContext(ctx, st.SQL, st.Args...); err != nil {
			return 0, fmt.Errorf("metering settle: %w", err)
		}
	}
	fresh, err := s.insertEach(ctx, tx, recs)
	if err != nil {
		return 0, fmt.Errorf("metering insert: %w", err)
	}
	if fs, ok := s.settler.(FreshSettler); ok {
		settle = append(settle, fs.SettleFresh(s.db.Engine, fresh)...)
	}
	// Upsert in key order, as PostgreSQL's pgInsertSQL does.
	keys, agg := rollUp(fresh, dailyKeyOf, dailyKey.compare)
	upsert := tx.StmtContext(ctx, s.upsert)
	for _, k := range keys {
		a := agg[k]
		args := []any{k.day, k.project, k.user, k.workspace, k.harness, k.provider, k.model, k.tier}
		for _, v := range a {
			args = append(args, v)
		}
		if _, err := upsert.ExecContext(ctx, args...); err != nil {
			return 0, fmt.Errorf("metering rollup: %w", err)
		}
	}
	if err := s.upsertSessions(ctx, tx, fresh); err != nil {
		return 0, fmt.Errorf("metering rollup: %w", err)
	}
	if err := s.upsertNarrow(ctx, tx, fresh); err != nil {
		return 0, fmt.Errorf("metering rollup: %w", err)
	}
	for _, st := range settle {
		if st.BeforeInsert {
			continue
		}
		if _, err := tx.ExecContext(ctx, st.SQL, st.Args...); err != nil {
			return 0, fmt.Errorf("metering settle: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("metering commit: %w", err)
	}
	return len(fresh), nil
}

// rollUp sums recs per key, and returns the keys in the order cmp gives
// (the order rollup rows are locked in).
func rollUp[K comparable](recs []*metering.Record, keyOf func(*metering.Record) K, cmp func(K, K) int) ([]K, map[K]*dailyAgg) {
	agg := map[K]*dailyAgg{}
	for _, r := range recs {
		k := keyOf(r)
		a := agg[k]
		if a == nil {
			a = new(dailyAgg)
			agg[k] = a
		}
		a.add(r)
	}
	keys := slices.SortedFunc(maps.Keys(agg), cmp)
	return keys, agg
}

// insertEach inserts recs one prepared row at a time and returns the ones
// that were new; a request id already stored, or repeated in recs, changes
// no row.
func (s *Store) insertEach(ctx context.Context, tx *sql.Tx, recs []*metering.Record) ([]*metering.Record, error) {
	ins := tx.StmtContext(ctx, s.insertRow)
	now := s.ts(s.now())
	args := make([]any, 0, len(recordColumns))
	fresh := make([]*metering.Record, 0, len(recs))
	for i, r := range recs {
		if i > 0 && i%yieldEvery == 0 {
			runtime.Gosched()
		}
		res, err := ins.ExecContext(ctx, s.appendRecordArgs(args[:0], r, now)...)
		if err != nil {
			return nil, err
		}
		if n, err := res.RowsAffected(); err != nil {
			return nil, err
		} else if n == 1 {
			fresh = append(fresh, r)
		}
	}
	return fresh, nil
}

// appendRecordArgs appends r's recordColumns values; now is the recorded_at
// parameter, converted once per batch.
func (s *Store) appendRecordArgs(args []any, r *metering.Record, now any) []any {
	var cost any
	if r.CostMicroUSD != nil {
		cost = *r.CostMicroUSD
	}
	args = append(args,
		r.RequestID, s.ts(r.Start), r.Start.UTC().Format(usageDayLayout), int64(r.Duration), int64(r.TTFB),
		r.Workspace, r.Project, r.User, r.TokenID, r.Session,
		r.Harness, r.Dialect, r.Operation, r.Path, r.Provider,
		r.CredTier, r.CredentialID, r.Stream, r.ModelRequest, r.ModelServed,
		r.UpstreamID, r.Status, r.Outcome, r.Source, r.Injected,
		r.EventOverflow,
	)
	for _, b := range metering.Buckets {
		if r.Usage == nil {
			args = append(args, nil)
		} else {
			args = append(args, *b.Of(r.Usage))
		}
	}
	return append(args,
		cost, r.CostUnknown(),
		r.PriceVersion, r.BytesOut, now, r.ServiceTier,
		r.ModelSent, r.ReservedMicroUSD, r.Governance,
		attemptsText(r.Attempts),
	)
}

// attemptsText is the attempts column: the spool's JSON array, or empty.
func attemptsText(as []metering.Attempt) string {
	if len(as) == 0 {
		return ""
	}
	return string(appendAttemptsJSON(nil, as))
}

// storeCleanAll returns recs with every text field valid UTF-8 without NUL
// bytes, copying only the records that need it. PostgreSQL rejects both in
// TEXT columns, and one such record would otherwise fail its batch forever.
func storeCleanAll(recs []*metering.Record) []*metering.Record {
	var out []*metering.Record
	for i, r := range recs {
		c := storeClean(r)
		if c != r && out == nil {
			out = append(make([]*metering.Record, 0, len(recs)), recs[:i]...)
		}
		if out != nil {
			out = append(out, c)
		}
	}
	if out == nil {
		return recs
	}
	return out
}

func storeClean(r *metering.Record) *metering.Record {
	fields := func(r *metering.Record) []*string {
		return []*string{&r.RequestID, &r.Workspace, &r.Project, &r.User, &r.TokenID, &r.Session,
			&r.Harness, &r.Dialect, &r.Operation, &r.Path, &r.Provider, &r.CredTier, &r.CredentialID,
			&r.ModelRequest, &r.ModelSent, &r.ModelServed, &r.UpstreamID, &r.ServiceTier, &r.Outcome, &r.Source, &r.PriceVersion, &r.Governance}
	}
	dirty := false
	for _, f := range fields(r) {
		if !utf8.ValidString(*f) || strings.IndexByte(*f, 0) >= 0 {
			dirty = true
			break
		}
	}
	if !dirty {
		return r
	}
	c := *r
	for _, f := range fields(&c) {
		*f = strings.ReplaceAll(strings.ToValidUTF8(*f, "\uFFFD"), "\x00", "\uFFFD")
	}
	return &c
}

// rawModelExpr is metering.Record.Model in SQL, for queries over
// usage_records.
const rawModelExpr = "CASE WHEN model_served <> '' THEN model_served ELSE model_requested END"

// dailyKey is a usage_daily primary key, in dailyKeyColumns order.
type dailyKey struct {
	day, project, user, workspace, harness, provider, model, tier string
}

func dailyKeyOf(r *metering.Record) dailyKey {
	return dailyKey{
		day: r.Start.UTC().Format(usageDayLayout), project: r.Project, user: r.User,
		workspace: r.Workspace, harness: r.Harness, provider: r.Provider, model: r.Model(),
		tier: r.ServiceTier,
	}
}

func (a dailyKey) compare(b dailyKey) int {
	return cmp.Or(
		cmp.Compare(a.day, b.day), cmp.Compare(a.project, b.project), cmp.Compare(a.user, b.user),
		cmp.Compare(a.workspace, b.workspace), cmp.Compare(a.harness, b.harness),
		cmp.Compare(a.provider, b.provider), cmp.Compare(a.model, b.model), cmp.Compare(a.tier, b.tier),
	)
}

// dailyAgg holds the dailySums of one rollup row, in that order.
type dailyAgg [aggCounts + len(rollupCounts)]int64

func (a *dailyAgg) add(r *metering.Record) {
	a[aggRequests]++
	if u := r.Usage; u != nil {
		for i, b := range metering.Buckets {
			a[aggTokens+i] += *b.Of(u)
		}
	}
	if r.CostMicroUSD != nil {
		a[aggCost] += *r.CostMicroUSD
	}
	for i, c := range rollupCounts {
		if c.counts(r) {
			a[aggCounts+i]++
		}
	}
}
