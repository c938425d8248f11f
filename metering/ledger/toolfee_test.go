package ledger

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/csv"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/metering"
)

// searchRecord is a priced request that ran n web searches.
func searchRecord(id, model string, n int64, start time.Time) *metering.Record {
	r := usageRecordN(id, 2, start)
	r.ModelServed = model
	r.Usage = &metering.Usage{InputUncached: 1000, Output: 100, WebSearchRequests: n}
	r.CostMicroUSD = costPtr(4_500 + n*10_000)
	return r
}

// TestStoreTotalsWebSearches: the usage API sums web searches per group
// from the rollup (whole days) and from the records (any range) alike,
// and the CSV shows them in their column.
func TestStoreTotalsWebSearches(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			ctx := context.Background()
			recs := []*metering.Record{
				searchRecord("ws-1", "claude-a", 3, usageDay.Add(time.Hour)),
				searchRecord("ws-2", "claude-a", 0, usageDay.Add(2*time.Hour)),
				searchRecord("ws-3", "claude-a", 5, usageDay.Add(3*time.Hour)),
				searchRecord("ws-4", "claude-b", 1, usageDay.Add(4*time.Hour)),
			}
			missing := usageRecordN("ws-missing", 3, usageDay.Add(5*time.Hour)) // usage missing: NULL searches
			if missing.Usage != nil {
				t.Fatal("fixture: record 3 should have no usage")
			}
			missing.ModelServed = "claude-a"
			if n, err := s.InsertBatch(ctx, append(recs, missing)); err != nil || n != 5 {
				t.Fatalf("InsertBatch: %d, %v", n, err)
			}
			var null sql.NullInt64
			if err := s.db.QueryRowContext(ctx, `SELECT web_search_requests FROM usage_records WHERE request_id = $1`, "ws-missing").Scan(&null); err != nil || null.Valid {
				t.Errorf("missing usage stored searches %v (%v), want NULL", null, err)
			}
			want := map[string][2]int64{"claude-a": {8, 4_500*3 + 80_000}, "claude-b": {1, 14_500}}
			for _, q := range []struct {
				name     string
				from, to time.Time
			}{
				{"Rollup", usageDay, usageDay.AddDate(0, 0, 1)},
				{"Raw", usageDay.Add(time.Minute), usageDay.Add(23 * time.Hour)},
			} {
				rows, err := s.Query(ctx, UsageQuery{From: q.from, To: q.to, GroupBy: []string{GroupModel}})
				if err != nil || len(rows) != 2 {
					t.Fatalf("%s: %v %s", q.name, err, rowsJSON(rows))
				}
				for _, r := range rows {
					w := want[r.Model]
					if r.Usage.WebSearchRequests != w[0] || r.CostMicroUSD == nil || *r.CostMicroUSD != w[1] {
						t.Errorf("%s: %s; want %s %d searches, cost %d", q.name, rowsJSON(rows), r.Model, w[0], w[1])
					}
				}
				var b bytes.Buffer
				if err := WriteCSV(&b, []string{GroupModel}, rows); err != nil {
					t.Fatal(err)
				}
				lines, err := csv.NewReader(&b).ReadAll()
				if err != nil {
					t.Fatal(err)
				}
				col := slices.Index(lines[0], "web_search_requests")
				if col < 0 || lines[1][col] != "8" || lines[2][col] != "1" {
					t.Errorf("%s CSV: %q", q.name, lines)
				}
			}
		})
	}
}

// TestStoreMigratesWebSearches: records and rollup rows written before the
// web search column read as no searches (the record's column NULL), and
// new requests' searches add up on the same rollup row.
func TestStoreMigratesWebSearches(t *testing.T) {
	at := slices.IndexFunc(storeMigrations, func(m string) bool { return strings.Contains(m, "web_search_requests") })
	if at < 0 {
		t.Fatal("no migration adds web_search_requests")
	}
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			ctx := context.Background()
			db := mustUsageDB(t, engine)
			if err := db.Migrate(ctx, "metering", storeMigrations[:at]); err != nil {
				t.Fatal(err)
			}
			old := searchRecord("old-1", "claude-a", 0, usageDay.Add(time.Hour))
			// What the store wrote before the column: the record row and
			// its rollup row.
			if _, err := db.ExecContext(ctx, `INSERT INTO usage_records (request_id, started_at, day, duration_ns, ttfb_ns,
				workspace, project, user_id, token_id, session_id, harness, dialect, operation, path, provider,
				credential_tier, credential_id, stream, model_requested, model_served, upstream_id, status, outcome,
				usage_source, usage_injected, event_overflow, input_uncached, output_tokens, cost_micro_usd, unpriced, price_version, bytes_out, recorded_at)
				VALUES ($1, $2, $3, 0, 0, $4, $5, $6, '', '', $7, '', '', '', $8, '', '', false, $9, $10, '', 200, 'ok',
				'upstream', false, false, 1000, 100, 4500, false, '', 0, $2)`,
				old.RequestID, old.Start.UTC().Format(sqliteTimeLayout), old.Start.UTC().Format(usageDayLayout), old.Workspace, old.Project, old.User,
				old.Harness, old.Provider, old.ModelRequest, old.ModelServed); err != nil {
				t.Fatal(err)
			}
			k := dailyKeyOf(old)
			if _, err := db.ExecContext(ctx, `INSERT INTO usage_daily (day, project, user_id, workspace, harness, provider, model, service_tier,
				requests, input_uncached, cache_read, cache_write_5m, cache_write_1h, input_other, output_tokens, reasoning_tokens,
				cost_micro_usd, priced_requests, unpriced_requests, missing_usage_requests, estimated_requests)
				VALUES ($1, $2, $3, $4, $5, $6, $7, '', 1, 1000, 0, 0, 0, 0, 100, 0, 4500, 1, 0, 0, 0)`,
				k.day, k.project, k.user, k.workspace, k.harness, k.provider, k.model); err != nil {
				t.Fatal(err)
			}
			s, err := OpenStore(ctx, db)
			if err != nil {
				t.Fatal(err)
			}
			var null sql.NullInt64
			if err := db.QueryRowContext(ctx, `SELECT web_search_requests FROM usage_records WHERE request_id = 'old-1'`).Scan(&null); err != nil || null.Valid {
				t.Errorf("old record's searches %v (%v), want NULL", null, err)
			}
			// The same rollup key, with searches.
			if n, err := s.InsertBatch(ctx, []*metering.Record{searchRecord("new-1", "claude-a", 4, usageDay.Add(2*time.Hour))}); err != nil || n != 1 {
				t.Fatalf("InsertBatch: %d, %v", n, err)
			}
			for _, to := range []time.Time{usageDay.AddDate(0, 0, 1), usageDay.Add(23 * time.Hour)} {
				rows, err := s.Query(ctx, UsageQuery{From: usageDay, To: to})
				if err != nil || len(rows) != 1 {
					t.Fatalf("to %v: %v %s", to, err, rowsJSON(rows))
				}
				if r := rows[0]; r.Requests != 2 || r.Usage.WebSearchRequests != 4 || *r.CostMicroUSD != 4_500*2+40_000 {
					t.Errorf("to %v: %s", to, rowsJSON(rows))
				}
			}
		})
	}
}
