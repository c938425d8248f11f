package metering

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
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
	dsn := os.Getenv("TOLLGATE_TEST_POSTGRES")
	admin, err := store.Open(ctx, dsn)
	if err != nil {
		tb.Fatal(err)
	}
	var b [6]byte
	rand.Read(b[:])
	schema := "metering_test_" + hex.EncodeToString(b[:])
	if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		admin.Close()
		tb.Fatal(err)
	}
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	db, err := store.Open(ctx, dsn+sep+"search_path="+schema)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		db.Close()
		admin.ExecContext(context.Background(), "DROP SCHEMA "+schema+" CASCADE")
		admin.Close()
	})
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
// priced-less.
func usageRecordN(id string, i int, start time.Time) *Record {
	r := &Record{
		RequestID: id, Start: start, Duration: time.Duration(100+i%50) * time.Millisecond, TTFB: 30 * time.Millisecond,
		Workspace: "ws" + fmt.Sprint(i%2), Project: "proj" + fmt.Sprint(i%3), User: "user" + fmt.Sprint(i%3),
		TokenID: "tok1", Harness: "claude-code", Dialect: "anthropic", Operation: "chat", Path: "/v1/messages",
		Provider: "anthropic", CredTier: "project", CredentialID: "cred1", Stream: i%2 == 0,
		ModelRequest: "claude-x", ModelServed: "claude-x-" + fmt.Sprint(i%2), UpstreamID: "msg_" + id,
		Status: 200, Outcome: OutcomeOK, Source: SourceUpstream, PriceVersion: "v1", BytesOut: 1000,
	}
	switch {
	case i%7 == 3:
		r.Source = SourceMissing
	case i%5 == 1:
		r.Usage = &Usage{InputUncached: int64(10 + i), Output: int64(5 + i)}
		r.Unpriced = true
	default:
		r.Usage = &Usage{InputUncached: int64(100 + i), CacheRead: int64(i), CacheWrite5m: 3, CacheWrite1h: 1, InputOther: 2, Output: int64(50 + i), Reasoning: int64(i % 10)}
		r.CostMicroUSD = costPtr(int64(1000 + i))
		if i%11 == 0 {
			r.Source = SourceEstimated
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
			if n, err := s.InsertBatch(ctx, []*Record{r}); err != nil || n != 1 {
				t.Fatalf("InsertBatch: %d, %v", n, err)
			}
			var (
				got                        Record
				u                          Usage
				started                    time.Time
				day                        string
				durNS, ttfbNS, cost        int64
				inUnc, cr, cw5, cw1, io, o sql.NullInt64
				reason                     sql.NullInt64
				unpriced                   bool
			)
			err := s.db.QueryRowContext(ctx, `SELECT request_id, started_at, day, duration_ns, ttfb_ns, workspace, project, user_id, token_id, session_id,
				harness, dialect, operation, path, provider, credential_tier, credential_id, stream, model_requested, model_served,
				upstream_id, status, outcome, usage_source, usage_injected, event_overflow, input_uncached, cache_read, cache_write_5m,
				cache_write_1h, input_other, output_tokens, reasoning_tokens, cost_micro_usd, unpriced, price_version, bytes_out, service_tier
				FROM usage_records WHERE request_id = $1`, "rt-1").Scan(
				&got.RequestID, &started, &day, &durNS, &ttfbNS, &got.Workspace, &got.Project, &got.User, &got.TokenID, &got.Session,
				&got.Harness, &got.Dialect, &got.Operation, &got.Path, &got.Provider, &got.CredTier, &got.CredentialID, &got.Stream,
				&got.ModelRequest, &got.ModelServed, &got.UpstreamID, &got.Status, &got.Outcome, &got.Source, &got.Injected,
				&got.EventOverflow, &inUnc, &cr, &cw5, &cw1, &io, &o, &reason, &cost, &unpriced, &got.PriceVersion, &got.BytesOut, &got.ServiceTier)
			if err != nil {
				t.Fatal(err)
			}
			if !started.Equal(start.Truncate(time.Microsecond)) && !started.Equal(start) {
				t.Errorf("started_at: got %v, want %v", started, start)
			}
			if day != "2026-05-04" {
				t.Errorf("day: got %q, want 2026-05-04 (UTC date)", day)
			}
			u = Usage{inUnc.Int64, cr.Int64, cw5.Int64, cw1.Int64, io.Int64, o.Int64, reason.Int64}
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
			if _, err := s.InsertBatch(ctx, []*Record{r}); err != nil {
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
			if n, err := s.InsertBatch(ctx, []*Record{a, b, a}); err != nil || n != 2 {
				t.Fatalf("first batch: inserted %d, %v; want 2", n, err)
			}
			if n, err := s.InsertBatch(ctx, []*Record{a}); err != nil || n != 0 {
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
