package ledger

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/metering"
)

// TestParseUsageQueryToBounds pins the documented semantics: a to date
// includes that whole day, a to time is an exclusive instant, and a bad
// range is reported with the text as typed.
func TestParseUsageQueryToBounds(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	q, err := ParseUsageQuery("2026-05-01", "2026-05-04", "", now)
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Date(2026, 5, 5, 0, 0, 0, 0, time.UTC); !q.To.Equal(want) {
		t.Errorf("to date: To = %v, want %v (the whole of 2026-05-04)", q.To, want)
	}
	q, err = ParseUsageQuery("2026-05-01", "2026-05-04T00:00:00Z", "", now)
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Date(2026, 5, 4, 0, 0, 0, 0, time.UTC); !q.To.Equal(want) {
		t.Errorf("to time: To = %v, want %v", q.To, want)
	}
	_, err = ParseUsageQuery("2026-05-05", "2026-05-04", "", now)
	if !errors.Is(err, ErrInvalidQuery) || !strings.Contains(err.Error(), `to "2026-05-04"`) || !strings.Contains(err.Error(), `from "2026-05-05"`) {
		t.Errorf("inverted range: %v, want the dates as typed", err)
	}
	_, err = ParseUsageQuery("2026-07-01", "", "", now)
	if err == nil || !strings.Contains(err.Error(), `from "2026-07-01"`) || !strings.Contains(err.Error(), "(now)") {
		t.Errorf("from after now: %v", err)
	}
}

// TestQueryGroupsByTokenAndCredential groups by the token and credential
// ids the records carry, from the raw records even over whole days.
func TestQueryGroupsByTokenAndCredential(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			var recs []*metering.Record
			for i, ids := range [][2]string{{"tok-a", "cred-1"}, {"tok-a", "cred-2"}, {"tok-b", "cred-2"}} {
				r := usageRecordN("tc-"+ids[0]+ids[1], i*7+1, usageDay.Add(time.Duration(i)*time.Hour))
				r.TokenID, r.CredentialID = ids[0], ids[1]
				recs = append(recs, r)
			}
			if _, err := s.InsertBatch(context.Background(), recs); err != nil {
				t.Fatal(err)
			}
			for _, by := range []string{"token", "credential", "token,credential"} {
				q, err := ParseUsageQuery("2026-05-04", "2026-05-04", by, usageDay)
				if err != nil {
					t.Fatalf("group_by=%s: %v", by, err)
				}
				got, err := s.Query(context.Background(), q)
				if err != nil {
					t.Fatal(err)
				}
				if want := expectRows(recs, q); rowsJSON(got) != rowsJSON(want) {
					t.Errorf("group_by=%s:\n got %s\nwant %s", by, rowsJSON(got), rowsJSON(want))
				}
			}
			q, _ := ParseUsageQuery("2026-05-04", "2026-05-04", "token", usageDay)
			rows, _ := s.Query(context.Background(), q)
			if len(rows) != 2 || rows[0].Token != "tok-a" || rows[0].Requests != 2 || rows[1].Token != "tok-b" {
				t.Errorf("by token: %s", rowsJSON(rows))
			}
		})
	}
}

// TestQuerySeparatesUnmeteredRequests: rejected requests and calls that are
// not metered (count_tokens) are counted apart, the same from the rollup
// and the raw records, and the table names them instead of "(none)".
func TestQuerySeparatesUnmeteredRequests(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			ok := usageRecordN("ok", 1, usageDay.Add(time.Hour))
			rej := usageRecordN("rej", 1, usageDay.Add(2*time.Hour))
			rej.ModelRequest, rej.ModelServed, rej.Outcome, rej.Source = "", "", metering.OutcomeRejected, metering.SourceNone
			rej.Usage, rej.CostMicroUSD, rej.Unpriced = nil, nil, false
			ct := usageRecordN("count", 1, usageDay.Add(3*time.Hour))
			ct.ModelRequest, ct.ModelServed, ct.Operation, ct.Source = "", "", "count_tokens", metering.SourceNone
			ct.Usage, ct.CostMicroUSD, ct.Unpriced = nil, nil, false
			if _, err := s.InsertBatch(context.Background(), []*metering.Record{ok, rej, ct}); err != nil {
				t.Fatal(err)
			}
			for _, by := range []string{"", "model", "harness,model"} {
				q, err := ParseUsageQuery("2026-05-04", "2026-05-04", by, usageDay)
				if err != nil {
					t.Fatal(err)
				}
				assertRollupMatchesRaw(t, s, q)
			}
			q, _ := ParseUsageQuery("2026-05-04", "2026-05-04", "", usageDay)
			rows, err := s.Query(context.Background(), q)
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) != 1 || rows[0].Requests != 3 || rows[0].UnmeteredRequests != 2 || rows[0].RejectedRequests != 1 {
				t.Fatalf("totals: %s", rowsJSON(rows))
			}
			// Each in its own row: by hour, as the raw query reads it.
			var table bytes.Buffer
			for _, r := range []*metering.Record{rej, ct} {
				q := UsageQuery{From: r.Start, To: r.Start.Add(time.Minute), GroupBy: []string{GroupModel}}
				rows, err := s.Query(context.Background(), q)
				if err != nil {
					t.Fatal(err)
				}
				if err := WriteTable(&table, q.GroupBy, rows); err != nil {
					t.Fatal(err)
				}
			}
			out := table.String()
			for _, want := range []string{"(rejected)", "(unmetered)", "unmetered"} {
				if !strings.Contains(out, want) {
					t.Errorf("table lacks %s:\n%s", want, out)
				}
			}
			if strings.Contains(out, "(none)") {
				t.Errorf("table still shows (none) for unmetered requests:\n%s", out)
			}
		})
	}
}

// TestStoreMigrationBackfillsUnmetered: rollup rows written before the
// unmetered counters get them from the records, so old days read the same
// from the rollup as from the records.
func TestStoreMigrationBackfillsUnmetered(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			ctx := context.Background()
			db := mustUsageDB(t, engine)
			if err := db.Migrate(ctx, "metering", storeMigrations[:3]); err != nil {
				t.Fatal(err)
			}
			rej := usageRecordN("old-rej", 1, usageDay.Add(time.Hour))
			rej.Outcome, rej.Source, rej.Usage, rej.CostMicroUSD, rej.Unpriced = metering.OutcomeRejected, metering.SourceNone, nil, nil, false
			recs := []*metering.Record{usageRecordN("old-ok", 1, usageDay.Add(time.Hour)), rej}
			// What a migration-3 store wrote: the record row and the rollup
			// row without the new counters.
			for _, r := range recs {
				if _, err := db.ExecContext(ctx, `INSERT INTO usage_records (request_id, started_at, day, duration_ns, ttfb_ns,
					workspace, project, user_id, token_id, session_id, harness, dialect, operation, path, provider,
					credential_tier, credential_id, stream, model_requested, model_served, upstream_id, status, outcome,
					usage_source, usage_injected, event_overflow, unpriced, price_version, bytes_out, recorded_at)
					VALUES ($1, $2, $3, 0, 0, $4, $5, $6, '', '', $7, '', '', '', $8, '', '', false, $9, $10, '', 200, $11,
					$12, false, false, false, '', 0, $2)`,
					r.RequestID, r.Start.UTC().Format(sqliteTimeLayout), r.Start.UTC().Format(usageDayLayout), r.Workspace, r.Project, r.User,
					r.Harness, r.Provider, r.ModelRequest, r.ModelServed, r.Outcome, r.Source); err != nil {
					t.Fatal(err)
				}
			}
			k := dailyKeyOf(recs[0])
			if _, err := db.ExecContext(ctx, `INSERT INTO usage_daily (day, project, user_id, workspace, harness, provider, model, service_tier,
				requests, input_uncached, cache_read, cache_write_5m, cache_write_1h, input_other, output_tokens, reasoning_tokens,
				cost_micro_usd, priced_requests, unpriced_requests, missing_usage_requests, estimated_requests)
				VALUES ($1, $2, $3, $4, $5, $6, $7, '', 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)`,
				k.day, k.project, k.user, k.workspace, k.harness, k.provider, k.model); err != nil {
				t.Fatal(err)
			}
			s, err := OpenStore(ctx, db)
			if err != nil {
				t.Fatal(err)
			}
			rows, err := s.Query(ctx, UsageQuery{From: usageDay, To: usageDay.AddDate(0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) != 1 || rows[0].UnmeteredRequests != 1 || rows[0].RejectedRequests != 1 {
				t.Errorf("backfilled rollup: %s", rowsJSON(rows))
			}
		})
	}
}
