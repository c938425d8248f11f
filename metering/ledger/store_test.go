package ledger

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/metering"
)

// usageEngines returns the engines to run against: always a SQLite file, and
// PostgreSQL when TOLLGATE_TEST_POSTGRES names a database.
func usageEngines(tb testing.TB) []string {
	e := []string{store.SQLite}
	if os.Getenv("TOLLGATE_TEST_POSTGRES") != "" {
		e = append(e, store.Postgres)
	}
	return e
}

// mustUsageDB opens an empty database of engine: a SQLite file in a temp dir, or
// a fresh PostgreSQL schema (via search_path) dropped at cleanup, so tests
// run in parallel and leave nothing behind.
func mustUsageDB(tb testing.TB, engine string) *store.DB {
	tb.Helper()
	ctx := context.Background()
	if engine == store.SQLite {
		db, err := store.Open(ctx, filepath.Join(tb.TempDir(), "usage.db"))
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { db.Close() })
		return db
	}
	dsn := testkit.PostgresSchema(tb, os.Getenv("TOLLGATE_TEST_POSTGRES"), "metering_test_")
	db, err := store.Open(ctx, dsn)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

func mustUsageStore(tb testing.TB, engine string) *Store {
	tb.Helper()
	s, err := OpenStore(context.Background(), mustUsageDB(tb, engine))
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

var usageDay = time.Date(2026, 5, 4, 0, 0, 0, 0, time.UTC)

func costPtr(v int64) *int64 { return &v }

// usageRecordN builds a varied but deterministic record: three projects, two
// models, three users, one request in seven without usage, one in five
// priced-less, web searches in most priced ones.
func usageRecordN(id string, i int, start time.Time) *metering.Record {
	r := &metering.Record{
		RequestID: id, Start: start, Duration: time.Duration(100+i%50) * time.Millisecond, TTFB: 30 * time.Millisecond,
		Workspace: "ws" + fmt.Sprint(i%2), Project: "proj" + fmt.Sprint(i%3), User: "user" + fmt.Sprint(i%3),
		TokenID: "tok1", Harness: "claude-code", Dialect: "anthropic", Operation: "chat", Path: "/v1/messages",
		Provider: "anthropic", CredTier: "project", CredentialID: "cred1", Stream: i%2 == 0,
		ModelRequest: "claude-x", ModelServed: "claude-x-" + fmt.Sprint(i%2), UpstreamID: "msg_" + id,
		Status: 200, Outcome: metering.OutcomeOK, Source: metering.SourceUpstream, PriceVersion: "v1", BytesOut: 1000,
	}
	switch {
	case i%7 == 3:
		r.Source = metering.SourceMissing
	case i%5 == 1:
		r.Usage = &metering.Usage{InputUncached: int64(10 + i), Output: int64(5 + i)}
		r.Unpriced = true
	default:
		r.Usage = &metering.Usage{InputUncached: int64(100 + i), CacheRead: int64(i), CacheWrite5m: 3, CacheWrite1h: 1, InputOther: 2, Output: int64(50 + i), Reasoning: int64(i % 10),
			WebSearchRequests: int64(i % 4)}
		r.CostMicroUSD = costPtr(int64(1000 + i))
		if i%11 == 0 {
			r.Source = metering.SourceEstimated
		}
	}
	return r
}

// usageRowCount returns the usage_records rows with request id id.
func usageRowCount(tb testing.TB, s *Store, id string) int {
	tb.Helper()
	var n int
	if err := s.db.QueryRowContext(context.Background(), `SELECT COUNT(*) FROM usage_records WHERE request_id = $1`, id).Scan(&n); err != nil {
		tb.Fatal(err)
	}
	return n
}

// sums compares usage_records with usage_daily over everything.
type usageTotals struct{ requests, input, output, cost int64 }

func usageSums(tb testing.TB, s *Store) (raw, daily usageTotals) {
	tb.Helper()
	ctx := context.Background()
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*), CAST(COALESCE(SUM(input_uncached), 0) AS BIGINT), CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), CAST(COALESCE(SUM(cost_micro_usd), 0) AS BIGINT) FROM usage_records`).
		Scan(&raw.requests, &raw.input, &raw.output, &raw.cost); err != nil {
		tb.Fatal(err)
	}
	if err := s.db.QueryRowContext(ctx, `SELECT CAST(COALESCE(SUM(requests), 0) AS BIGINT), CAST(COALESCE(SUM(input_uncached), 0) AS BIGINT), CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), CAST(COALESCE(SUM(cost_micro_usd), 0) AS BIGINT) FROM usage_daily`).
		Scan(&daily.requests, &daily.input, &daily.output, &daily.cost); err != nil {
		tb.Fatal(err)
	}
	return raw, daily
}

func TestStoreRoundTripsEveryField(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			ctx := context.Background()
			start := time.Date(2026, 5, 4, 13, 14, 15, 123456789, time.FixedZone("CEST", 2*3600))
			r := usageRecordN("rt-1", 2, start)
			r.Session, r.Injected, r.EventOverflow, r.ServiceTier = "sess-1", true, true, "priority"
			if n, err := s.InsertBatch(ctx, []*metering.Record{r}); err != nil || n != 1 {
				t.Fatalf("InsertBatch: %d, %v", n, err)
			}
			var (
				got                 metering.Record
				u                   metering.Usage
				started             time.Time
				day                 string
				durNS, ttfbNS, cost int64
				buckets             [metering.NumBuckets]sql.NullInt64
				unpriced            bool
			)
			dest := []any{&got.RequestID, &started, &day, &durNS, &ttfbNS, &got.Workspace, &got.Project, &got.User, &got.TokenID, &got.Session,
				&got.Harness, &got.Dialect, &got.Operation, &got.Path, &got.Provider, &got.CredTier, &got.CredentialID, &got.Stream,
				&got.ModelRequest, &got.ModelServed, &got.UpstreamID, &got.Status, &got.Outcome, &got.Source, &got.Injected,
				&got.EventOverflow}
			for i := range buckets {
				dest = append(dest, &buckets[i])
			}
			dest = append(dest, &cost, &unpriced, &got.PriceVersion, &got.BytesOut, &got.ServiceTier)
			err := s.db.QueryRowContext(ctx, `SELECT request_id, started_at, day, duration_ns, ttfb_ns, workspace, project, user_id, token_id, session_id,
				harness, dialect, operation, path, provider, credential_tier, credential_id, stream, model_requested, model_served,
				upstream_id, status, outcome, usage_source, usage_injected, event_overflow, `+strings.Join(bucketColumns(), ", ")+`,
				cost_micro_usd, unpriced, price_version, bytes_out, service_tier
				FROM usage_records WHERE request_id = $1`, "rt-1").Scan(dest...)
			if err != nil {
				t.Fatal(err)
			}
			if !started.Equal(start.Truncate(time.Microsecond)) && !started.Equal(start) {
				t.Errorf("started_at: got %v, want %v", started, start)
			}
			if day != "2026-05-04" {
				t.Errorf("day: got %q, want 2026-05-04 (UTC date)", day)
			}
			for i, b := range metering.Buckets {
				if !buckets[i].Valid {
					t.Errorf("%s is NULL", b.Column)
				}
				*b.Of(&u) = buckets[i].Int64
			}
			got.Usage, got.CostMicroUSD = &u, &cost
			got.Duration, got.TTFB = time.Duration(durNS), time.Duration(ttfbNS)
			got.Start, got.Unpriced = r.Start, unpriced
			if fmt.Sprintf("%+v %+v %d", got.Usage, *r.Usage, *got.CostMicroUSD) != fmt.Sprintf("%+v %+v %d", r.Usage, *r.Usage, *r.CostMicroUSD) {
				t.Errorf("usage: got %+v cost %d, want %+v cost %d", *got.Usage, *got.CostMicroUSD, *r.Usage, *r.CostMicroUSD)
			}
			got.Usage, got.CostMicroUSD = r.Usage, r.CostMicroUSD
			if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", *r) {
				t.Errorf("round trip:\n got %+v\nwant %+v", got, *r)
			}
		})
	}
}

func TestStoreNullsStayNull(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			ctx := context.Background()
			r := usageRecordN("null-1", 3, usageDay.Add(time.Hour)) // i%7 == 3: missing usage
			if r.Usage != nil || r.CostMicroUSD != nil {
				t.Fatal("fixture: want a record without usage")
			}
			if _, err := s.InsertBatch(ctx, []*metering.Record{r}); err != nil {
				t.Fatal(err)
			}
			var in, cost sql.NullInt64
			if err := s.db.QueryRowContext(ctx, `SELECT input_uncached, cost_micro_usd FROM usage_records WHERE request_id = $1`, "null-1").Scan(&in, &cost); err != nil {
				t.Fatal(err)
			}
			if in.Valid || cost.Valid {
				t.Errorf("tokens/cost of a missing-usage record: got %v/%v, want NULL/NULL", in, cost)
			}
		})
	}
}

func TestStoreInsertIsIdempotent(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			ctx := context.Background()
			a := usageRecordN("dup-1", 0, usageDay.Add(time.Hour))
			b := usageRecordN("dup-2", 2, usageDay.Add(2*time.Hour))
			// The same id twice in one batch, then again in a later batch.
			if n, err := s.InsertBatch(ctx, []*metering.Record{a, b, a}); err != nil || n != 2 {
				t.Fatalf("first batch: inserted %d, %v; want 2", n, err)
			}
			if n, err := s.InsertBatch(ctx, []*metering.Record{a}); err != nil || n != 0 {
				t.Fatalf("second batch: inserted %d, %v; want 0", n, err)
			}
			if got := usageRowCount(t, s, "dup-1"); got != 1 {
				t.Errorf("rows for dup-1: got %d, want 1", got)
			}
			raw, daily := usageSums(t, s)
			if raw.requests != 2 || daily != raw {
				t.Errorf("sums: raw %+v, daily %+v; want 2 requests and equal sums", raw, daily)
			}
		})
	}
}

// mustUsageFile opens the SQLite file at path, closed at cleanup.
func mustUsageFile(tb testing.TB, path string) *store.DB {
	tb.Helper()
	db, err := store.Open(context.Background(), path)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

// dailyDump returns every usage_daily row as text in key order (with the
// service_tier column when tier), and the sum of each dailySums column.
// Columns added by migrations after 3, which the migration tests' older
// schemas lack.
var (
	laterRecordColumns = slices.Concat(governanceColumns, []string{"web_search_requests"}, failoverColumns)
	laterDailyColumns  = []string{"unmetered_requests", "rejected_requests", "web_search_requests"}
)

// v3Sums are the positions in dailySums of the sums usage_daily had up to
// migration 3, and v2RecordColumns those in recordColumns of the columns
// usage_records had at migration 2.
var v3Sums, v2RecordColumns = columnsWithout(dailySums, laterDailyColumns), columnsWithout(recordColumns, laterRecordColumns)

func columnsWithout(cols, later []string) []int {
	var idx []int
	for i, c := range cols {
		if !slices.Contains(later, c) {
			idx = append(idx, i)
		}
	}
	return idx
}

// pick returns the elements of vs at idx.
func pick[T any](vs []T, idx []int) []T {
	out := make([]T, len(idx))
	for j, i := range idx {
		out[j] = vs[i]
	}
	return out
}

// dailyDump reads usage_daily's v3Sums sums, so it works on every schema
// version since 2.
func dailyDump(tb testing.TB, db *store.DB, tier bool) (rows []string, totals dailyAgg) {
	tb.Helper()
	ctx := context.Background()
	keys := dailyKeyColumns[:len(dailyKeyColumns)-1]
	if tier {
		keys = dailyKeyColumns
	}
	r, err := db.QueryContext(ctx, "SELECT "+strings.Join(append(slices.Clip(keys), pick(dailySums, v3Sums)...), ", ")+
		" FROM usage_daily ORDER BY "+strings.Join(keys, ", "))
	if err != nil {
		tb.Fatal(err)
	}
	defer r.Close()
	for r.Next() {
		k := make([]string, len(keys))
		var v dailyAgg
		dest := make([]any, 0, len(keys)+len(v))
		for i := range k {
			dest = append(dest, &k[i])
		}
		for _, i := range v3Sums {
			dest = append(dest, &v[i])
		}
		if err := r.Scan(dest...); err != nil {
			tb.Fatal(err)
		}
		rows = append(rows, fmt.Sprintf("%q %v", k, v))
	}
	if err := r.Err(); err != nil {
		tb.Fatal(err)
	}
	var sums []string
	for _, c := range pick(dailySums, v3Sums) {
		sums = append(sums, "CAST(COALESCE(SUM("+c+"), 0) AS BIGINT)")
	}
	dest := make([]any, len(v3Sums))
	for j, i := range v3Sums {
		dest[j] = &totals[i]
	}
	if err := db.QueryRowContext(ctx, "SELECT "+strings.Join(sums, ", ")+" FROM usage_daily").Scan(dest...); err != nil {
		tb.Fatal(err)
	}
	return rows, totals
}

// TestStoreMigratesDailyToServiceTier: a database at metering migration 2,
// with daily rows summed without a tier, reaches migration 3 with every
// rollup row and raw record intact under tier "", and then rolls new
// requests up per tier.
func TestStoreMigratesDailyToServiceTier(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			db := mustUsageDB(t, engine)
			ctx := context.Background()
			if err := db.Migrate(ctx, "metering", storeMigrations[:2]); err != nil {
				t.Fatal(err)
			}
			// Records as migration 2 stored them: some with a tier (written
			// after it), some without (before it), over two days.
			v2 := &Store{db: db, now: time.Now}
			now := v2.ts(time.Now())
			var recs []*metering.Record
			for i := range 60 {
				r := usageRecordN(fmt.Sprintf("m2-%d", i), i, usageDay.Add(time.Duration(i)*47*time.Minute))
				r.ServiceTier = []string{"", "flex", "priority"}[i%3]
				recs = append(recs, r)
				// Migration 2's columns: the governance ones, web
				// searches and attempts came later.
				cols := pick(recordColumns, v2RecordColumns)
				q := "INSERT INTO usage_records (" + strings.Join(cols, ", ") + ") VALUES (" + placeholders(len(cols)) + ")"
				if _, err := db.ExecContext(ctx, q, pick(v2.appendRecordArgs(nil, r, now), v2RecordColumns)...); err != nil {
					t.Fatal(err)
				}
			}
			// Their rollup as migration 2's upsert wrote it, without a
			// tier, plus a row whose records are gone.
			agg := map[dailyKey]*dailyAgg{}
			for _, r := range recs {
				k := dailyKeyOf(r)
				k.tier = ""
				if agg[k] == nil {
					agg[k] = new(dailyAgg)
				}
				agg[k].add(r)
			}
			gone := new(dailyAgg)
			// requests, the seven token buckets, cost, priced, unpriced,
			// missing and estimated requests.
			for j, v := range []int64{9, 8, 7, 6, 5, 4, 3, 2, 1_000_001, 9, 0, 0, 1} {
				gone[v3Sums[j]] = v
			}
			agg[dailyKey{day: "2026-04-01", project: "gone", model: "old-model"}] = gone
			v2cols := append(slices.Clip(dailyKeyColumns[:7]), pick(dailySums, v3Sums)...)
			ph := make([]string, len(v2cols))
			for i := range ph {
				ph[i] = "$" + fmt.Sprint(i+1)
			}
			for k, a := range agg {
				args := []any{k.day, k.project, k.user, k.workspace, k.harness, k.provider, k.model}
				for _, v := range pick(a[:], v3Sums) {
					args = append(args, v)
				}
				if _, err := db.ExecContext(ctx, "INSERT INTO usage_daily ("+strings.Join(v2cols, ", ")+") VALUES ("+strings.Join(ph, ", ")+")", args...); err != nil {
					t.Fatal(err)
				}
			}
			rowsBefore, totalsBefore := dailyDump(t, db, false)
			rawBefore, _ := usageSums(t, v2)
			if len(rowsBefore) != len(agg) || totalsBefore[0] != 69 {
				t.Fatalf("fixture: %d daily rows, %d requests", len(rowsBefore), totalsBefore[0])
			}

			s, err := OpenStore(ctx, db)
			if err != nil {
				t.Fatalf("migrate to 3: %v", err)
			}
			var version int
			if err := db.QueryRowContext(ctx, `SELECT MAX(version) FROM schema_migrations WHERE component = $1`, "metering").Scan(&version); err != nil || version != len(storeMigrations) {
				t.Fatalf("metering schema version %d, %v; want %d", version, err, len(storeMigrations))
			}
			rowsAfter, totalsAfter := dailyDump(t, db, false)
			if totalsAfter != totalsBefore {
				t.Errorf("daily totals changed:\nbefore %v\nafter  %v", totalsBefore, totalsAfter)
			}
			if !slices.Equal(rowsAfter, rowsBefore) {
				t.Errorf("daily rows changed:\nbefore %q\nafter  %q", rowsBefore, rowsAfter)
			}
			tiered, _ := dailyDump(t, db, true)
			for _, r := range tiered {
				if !strings.Contains(r, ` ""]`) {
					t.Errorf("migrated row not in tier '': %s", r)
				}
			}
			if rawAfter, _ := usageSums(t, s); rawAfter != rawBefore {
				t.Errorf("usage_records changed: before %+v, after %+v", rawBefore, rawAfter)
			}

			// A new request keyed like a migrated row but in the flex tier
			// gets a row of its own and leaves the migrated one alone.
			r := usageRecordN("m3-1", 1, usageDay.Add(time.Minute))
			r.ServiceTier = "flex"
			if n, err := s.InsertBatch(ctx, []*metering.Record{r}); err != nil || n != 1 {
				t.Fatalf("InsertBatch after migration: %d, %v", n, err)
			}
			rowsNew, totalsNew := dailyDump(t, db, true)
			if len(rowsNew) != len(rowsBefore)+1 || totalsNew[0] != totalsBefore[0]+1 {
				t.Errorf("after one flex request: %d rows (want %d), %d requests", len(rowsNew), len(rowsBefore)+1, totalsNew[0])
			}
			got, err := s.Query(ctx, UsageQuery{From: usageDay, To: usageDay.AddDate(0, 0, 1), GroupBy: []string{GroupServiceTier}})
			if err != nil || len(got) != 2 || got[0].ServiceTier != "" || got[1].ServiceTier != "flex" || got[1].Requests != 1 {
				t.Errorf("by tier after migration: %v %s", err, rowsJSON(got))
			}
		})
	}
}

// placeholders is "$1, $2, …, $n".
func placeholders(n int) string {
	ph := make([]string, n)
	for i := range ph {
		ph[i] = "$" + strconv.Itoa(i+1)
	}
	return strings.Join(ph, ", ")
}
