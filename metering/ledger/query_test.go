package ledger

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/metering"
)

// assertRollupMatchesRaw checks that q gives the same rows from its rollup
// (usage_daily or usage_sessions) and from usage_records.
func assertRollupMatchesRaw(tb testing.TB, s *Store, q UsageQuery) {
	tb.Helper()
	ctx := context.Background()
	daily, err := s.query(ctx, q, q.rollupTable())
	if err != nil {
		tb.Fatal(err)
	}
	raw, err := s.query(ctx, q, "")
	if err != nil {
		tb.Fatal(err)
	}
	if !reflect.DeepEqual(daily, raw) {
		tb.Errorf("group by %v: rollup and raw differ:\nrollup %s\nraw    %s", q.GroupBy, rowsJSON(daily), rowsJSON(raw))
	}
}

func rowsJSON(rows []UsageRow) string {
	b, _ := json.Marshal(rows)
	return string(b)
}

// expectRows aggregates recs like Query should, as the reference.
func expectRows(recs []*metering.Record, q UsageQuery) []UsageRow {
	m := map[string]*UsageRow{}
	var keys []string
	for _, r := range recs {
		if r.Start.Before(q.From) || !r.Start.Before(q.To) ||
			(q.Project != "" && r.Project != q.Project) || (q.User != "" && r.User != q.User) ||
			(q.Workspace != "" && r.Workspace != q.Workspace) || (q.ServiceTier != "" && r.ServiceTier != q.ServiceTier) ||
			(q.Session != "" && r.Session != q.Session) ||
			(q.Harness != "" && r.Harness != q.Harness) || (q.Model != "" && r.Model() != q.Model) {
			continue
		}
		full := UsageRow{Day: r.Start.UTC().Format(usageDayLayout), Hour: r.Start.UTC().Format("2006-01-02T15:00:00Z"), Model: r.Model(), Project: r.Project,
			User: r.User, Workspace: r.Workspace, Harness: r.Harness, Provider: r.Provider, ServiceTier: r.ServiceTier,
			Token: r.TokenID, Credential: r.CredentialID, Session: r.Session}
		var row UsageRow
		var key []string
		for _, g := range q.GroupBy {
			*row.dim(g) = *full.dim(g)
			key = append(key, *full.dim(g))
		}
		k := strings.Join(key, "\x00")
		if m[k] == nil {
			m[k] = &row
			keys = append(keys, k)
		}
		a := m[k]
		var d dailyAgg
		d.add(r)
		one := UsageRow{Requests: d[aggRequests]}
		for i, b := range metering.Buckets {
			*b.Of(&one.Usage) = d[aggTokens+i]
		}
		for i, c := range rollupCounts {
			*c.row(&one) = d[aggCounts+i]
		}
		a.add(&one)
		if r.CostMicroUSD != nil {
			if a.CostMicroUSD == nil {
				a.CostMicroUSD = new(int64)
			}
			*a.CostMicroUSD += *r.CostMicroUSD
		}
	}
	slices.Sort(keys)
	var out []UsageRow
	for _, k := range keys {
		out = append(out, *m[k])
	}
	return out
}

// queryFixture stores records over three days, with a fourth day outside
// the queried ranges, plus one group (model "no-price") never priced. Every
// day has requests in the "", flex and priority service tiers.
func queryFixture(tb testing.TB, s *Store) []*metering.Record {
	tb.Helper()
	var recs []*metering.Record
	for i := range 300 {
		start := usageDay.Add(time.Duration(i) * 17 * time.Minute) // spans ~3.5 days
		r := usageRecordN(fmt.Sprintf("q-%d", i), i, start)
		r.ServiceTier = []string{"", "flex", "priority", ""}[i%4]
		r.Session = []string{"sess-a", "sess-b", "", "sess-c", "sess-a"}[i%5]
		recs = append(recs, r)
	}
	for i := range 5 {
		r := usageRecordN(fmt.Sprintf("np-%d", i), 0, usageDay.Add(time.Duration(i)*time.Hour))
		r.ModelServed, r.CostMicroUSD, r.Unpriced, r.Project = "no-price", nil, true, "proj-np"
		recs = append(recs, r)
	}
	rej := usageRecordN("rejected", 1, usageDay.Add(time.Hour))
	rej.ModelServed, rej.Outcome, rej.Source, rej.Usage, rej.CostMicroUSD, rej.Unpriced = "", metering.OutcomeRejected, metering.SourceNone, nil, nil, false
	recs = append(recs, rej)
	if _, err := s.InsertBatch(context.Background(), recs); err != nil {
		tb.Fatal(err)
	}
	return recs
}

func TestQueryGroupsLikeTheRecords(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			recs := queryFixture(t, s)
			ctx := context.Background()
			whole := UsageQuery{From: usageDay, To: usageDay.AddDate(0, 0, 3)}
			partial := UsageQuery{From: usageDay.Add(6*time.Hour + 30*time.Minute), To: usageDay.Add(50 * time.Hour)}
			for _, tc := range []struct {
				name string
				q    UsageQuery
			}{
				{"Total", whole},
				{"ByDay", grouped(whole, GroupDay)},
				{"ByModel", grouped(whole, GroupModel)},
				{"ByProjectAndDay", grouped(whole, GroupProject, GroupDay)},
				{"ByUserWorkspace", grouped(whole, GroupUser, GroupWorkspace)},
				{"ByHarnessProvider", grouped(whole, GroupHarness, GroupProvider)},
				{"ByServiceTier", grouped(whole, GroupServiceTier)},
				{"ByServiceTierAndModel", grouped(whole, GroupServiceTier, GroupModel)},
				{"ByEverything", grouped(whole, GroupByNames...)},
				{"FilteredProject", func() UsageQuery { q := grouped(whole, GroupModel); q.Project = "proj1"; return q }()},
				{"FilteredUserWorkspace", func() UsageQuery { q := grouped(whole, GroupDay); q.User, q.Workspace = "user2", "ws0"; return q }()},
				{"FilteredServiceTier", func() UsageQuery { q := grouped(whole, GroupDay); q.ServiceTier = "flex"; return q }()},
				{"BySession", grouped(whole, GroupSession)},
				{"BySessionAndModel", grouped(whole, GroupSession, GroupModel)},
				{"FilteredSessionWholeDays", func() UsageQuery { q := grouped(whole, GroupDay); q.Session = "sess-b"; return q }()},
				{"FilteredSessionTotal", func() UsageQuery { q := whole; q.Session = "sess-a"; return q }()},
				{"PartialDaysBySession", grouped(partial, GroupSession)},
				{"PartialDaysFromRaw", grouped(partial, GroupDay, GroupModel)},
				{"PartialDaysByServiceTier", grouped(partial, GroupDay, GroupServiceTier)},
				{"PartialDaysTotal", partial},
			} {
				t.Run(tc.name, func(t *testing.T) {
					got, err := s.Query(ctx, tc.q)
					if err != nil {
						t.Fatal(err)
					}
					want := expectRows(recs, tc.q)
					if len(want) == 0 {
						t.Fatal("fixture selects nothing")
					}
					if !reflect.DeepEqual(got, want) {
						t.Errorf("rows:\n got %s\nwant %s", rowsJSON(got), rowsJSON(want))
					}
					if tc.q.rollupTable() != "" {
						assertRollupMatchesRaw(t, s, tc.q)
					}
				})
			}
		})
	}
}

func grouped(q UsageQuery, groupBy ...string) UsageQuery {
	q.GroupBy = groupBy
	return q
}

func TestQueryShowsUnpricedAsUnknown(t *testing.T) {
	s := mustUsageStore(t, "sqlite")
	queryFixture(t, s)
	rows, err := s.Query(context.Background(), UsageQuery{From: usageDay, To: usageDay.AddDate(0, 0, 1), GroupBy: []string{GroupModel}})
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(rows, func(r UsageRow) bool { return r.Model == "no-price" })
	if i < 0 {
		t.Fatalf("no row for the unpriced model in %s", rowsJSON(rows))
	}
	np := rows[i]
	if np.CostMicroUSD != nil || np.UnpricedRequests != 5 || np.PricedRequests != 0 || np.Output == 0 {
		t.Errorf("unpriced model: %s; want cost null, 5 unpriced, tokens counted", rowsJSON([]UsageRow{np}))
	}
	var out bytes.Buffer
	if err := WriteCSV(&out, []string{GroupModel}, rows[i:i+1]); err != nil {
		t.Fatal(err)
	}
	recs, _ := csv.NewReader(&out).ReadAll()
	head, row := recs[0], recs[1]
	for _, col := range []string{"cost_micro_usd", "cost_usd"} {
		if j := slices.Index(head, col); j < 0 || row[j] != "" {
			t.Errorf("CSV %s of an unpriced row: %q, want empty (not 0)", col, row[j])
		}
	}
	out.Reset()
	WriteJSON(&out, []string{GroupModel}, rows[i:i+1])
	if !strings.Contains(out.String(), `"cost_micro_usd": null`) || !strings.Contains(out.String(), `"unpriced_requests": 5`) {
		t.Errorf("JSON of an unpriced row: %s", out.String())
	}
	// The rejected request has no model served: it is reported under the
	// requested one, with no tokens and no cost.
	j := slices.IndexFunc(rows, func(r UsageRow) bool { return r.Model == "claude-x" })
	if j < 0 || rows[j].Requests != 1 || rows[j].CostMicroUSD != nil || rows[j].UnpricedRequests != 0 {
		t.Errorf("rejected request row: %v", j)
	}
}

func TestQueryRejectsBadInput(t *testing.T) {
	s := mustUsageStore(t, "sqlite")
	for _, tc := range []struct {
		name string
		q    UsageQuery
		want string
	}{
		{"UnknownGroupBy", UsageQuery{From: usageDay, To: usageDay.AddDate(0, 0, 1), GroupBy: []string{"model", "modle"}}, `"modle"`},
		{"RepeatedGroupBy", UsageQuery{From: usageDay, To: usageDay.AddDate(0, 0, 1), GroupBy: []string{"day", "day"}}, `"day" repeated`},
		{"MissingRange", UsageQuery{GroupBy: []string{"day"}}, "required"},
		{"InvertedRange", UsageQuery{From: usageDay.AddDate(0, 0, 1), To: usageDay}, "not before"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Query(context.Background(), tc.q)
			if !errors.Is(err, ErrInvalidQuery) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want ErrInvalidQuery mentioning %s", err, tc.want)
			}
		})
	}
}

func TestRenderers(t *testing.T) {
	rows := []UsageRow{
		{Day: "2026-05-04", Model: "m1", Requests: 3, Usage: metering.Usage{InputUncached: 1200, CacheRead: 34, Output: 1234567}, CostMicroUSD: costPtr(int64(12_345_678)), PricedRequests: 3},
		{Day: "2026-05-04", Model: "", Requests: 2, Usage: metering.Usage{InputUncached: 10}, UnpricedRequests: 1, MissingUsageRequests: 1},
	}
	groupBy := []string{GroupDay, GroupModel}
	t.Run("JSON", func(t *testing.T) {
		var b bytes.Buffer
		if err := WriteJSON(&b, groupBy, rows); err != nil {
			t.Fatal(err)
		}
		var got []map[string]any
		if err := json.Unmarshal(b.Bytes(), &got); err != nil {
			t.Fatalf("invalid JSON %s: %v", b.String(), err)
		}
		if len(got) != 2 || got[0]["cost_usd"] != "12.345678" || got[0]["output"] != float64(1234567) ||
			got[1]["model"] != "" || got[1]["cost_usd"] != nil || got[0]["input_total"] != float64(1234) {
			t.Errorf("JSON: %s", b.String())
		}
		if _, ok := got[0]["user"]; ok {
			t.Errorf("JSON has a dimension not grouped by: %s", b.String())
		}
		b.Reset()
		WriteJSON(&b, groupBy, nil)
		if strings.TrimSpace(b.String()) != "[]" {
			t.Errorf("JSON of no rows: %q, want []", b.String())
		}
	})
	t.Run("CSV", func(t *testing.T) {
		var b bytes.Buffer
		if err := WriteCSV(&b, groupBy, rows); err != nil {
			t.Fatal(err)
		}
		recs, err := csv.NewReader(&b).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		wantHead := "day,model,requests,input_uncached,cache_read,cache_write_5m,cache_write_1h,input_other,input_total,output,reasoning,web_search_requests,cost_micro_usd,cost_usd,priced_requests,unpriced_requests,missing_usage_requests,estimated_requests,unmetered_requests,rejected_requests"
		if got := strings.Join(recs[0], ","); got != wantHead {
			t.Errorf("CSV header:\n got %s\nwant %s", got, wantHead)
		}
		if got := strings.Join(recs[1], ","); got != "2026-05-04,m1,3,1200,34,0,0,0,1234,1234567,0,0,12345678,12.345678,3,0,0,0,0,0" {
			t.Errorf("CSV row: %s", got)
		}
		if len(recs) != 3 {
			t.Errorf("CSV lines: %d, want header + 2", len(recs))
		}
	})
	t.Run("Table", func(t *testing.T) {
		var b bytes.Buffer
		if err := WriteTable(&b, groupBy, rows); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
		if len(lines) != 4 {
			t.Fatalf("table lines: %d, want header, 2 rows, total:\n%s", len(lines), b.String())
		}
		for _, want := range []string{"1,234,567", "12.345678", "(none)", "total"} {
			if !strings.Contains(b.String(), want) {
				t.Errorf("table lacks %q:\n%s", want, b.String())
			}
		}
		// Right-aligned numbers: every line ends at the same column.
		// The cost of the unpriced row is "-", not 0.
		if !strings.Contains(lines[2], " - ") {
			t.Errorf("unpriced cost not shown as -: %q", lines[2])
		}
		col := strings.Index(lines[0], "requests") + len("requests")
		for _, l := range lines[1:] {
			if len(l) < col || l[col-1] == ' ' {
				t.Errorf("requests column not right-aligned at %d:\n%s", col, b.String())
			}
		}
	})
	// A tier is a column like any dimension; the '' tier stays a value
	// of its own (empty in JSON and CSV, "(none)" in the table).
	t.Run("ServiceTier", func(t *testing.T) {
		tiers := []UsageRow{
			{ServiceTier: "", Requests: 2, Usage: metering.Usage{InputUncached: 300, Output: 30}, CostMicroUSD: costPtr(3000), PricedRequests: 2},
			{ServiceTier: "flex", Requests: 1, Usage: metering.Usage{InputUncached: 300, Output: 30}, CostMicroUSD: costPtr(1500), PricedRequests: 1},
		}
		by := []string{GroupServiceTier}
		var b bytes.Buffer
		if err := WriteJSON(&b, by, tiers); err != nil {
			t.Fatal(err)
		}
		var got []map[string]any
		if err := json.Unmarshal(b.Bytes(), &got); err != nil {
			t.Fatalf("invalid JSON %s: %v", b.String(), err)
		}
		if len(got) != 2 || got[0]["service_tier"] != "" || got[1]["service_tier"] != "flex" || got[1]["cost_usd"] != "0.001500" {
			t.Errorf("JSON: %s", b.String())
		}
		b.Reset()
		if err := WriteCSV(&b, by, tiers); err != nil {
			t.Fatal(err)
		}
		recs, err := csv.NewReader(&b).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 3 || recs[0][0] != "service_tier" || strings.Join(recs[1], ",") != ",2,300,0,0,0,0,300,30,0,0,3000,0.003000,2,0,0,0,0,0" ||
			strings.Join(recs[2], ",") != "flex,1,300,0,0,0,0,300,30,0,0,1500,0.001500,1,0,0,0,0,0" {
			t.Errorf("CSV: %q", recs)
		}
		b.Reset()
		if err := WriteTable(&b, by, tiers); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
		if len(lines) != 4 || !strings.HasPrefix(lines[0], "service_tier") || !strings.HasPrefix(lines[1], "(none)") ||
			!strings.HasPrefix(lines[2], "flex") || !strings.HasPrefix(lines[3], "total") || !strings.Contains(lines[3], " 0.004500 ") {
			t.Errorf("table:\n%s", b.String())
		}
	})
	t.Run("BadGroupBy", func(t *testing.T) {
		for name, f := range map[string]func() error{
			"JSON":  func() error { return WriteJSON(io.Discard, []string{"nope"}, rows) },
			"CSV":   func() error { return WriteCSV(io.Discard, []string{"nope"}, rows) },
			"Table": func() error { return WriteTable(io.Discard, []string{"nope"}, rows) },
		} {
			if err := f(); !errors.Is(err, ErrInvalidQuery) {
				t.Errorf("%s: got %v, want ErrInvalidQuery", name, err)
			}
		}
	})
}

func TestGroupDigits(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{{0, "0"}, {999, "999"}, {1000, "1,000"}, {-1234567, "-1,234,567"}} {
		if got := groupDigits(tc.in); got != tc.want {
			t.Errorf("groupDigits(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got := formatMicroUSD(-1_500_000); got != "-1.500000" {
		t.Errorf("formatMicroUSD(-1.5$) = %q", got)
	}
}

// tierRecord is a priced request of proj0/user0 on claude-x-0 in tier, so
// that records differ only by their service tier.
func tierRecord(id, tier string, start time.Time, u metering.Usage, cost *int64) *metering.Record {
	r := usageRecordN(id, 0, start)
	r.ServiceTier, r.Source, r.Usage, r.CostMicroUSD, r.Unpriced = tier, metering.SourceUpstream, &u, cost, cost == nil
	return r
}

// TestQueryByServiceTier: requests that differ only by service tier land in
// separate rollup rows, and group_by=service_tier gives their exact tokens
// and costs, from the rollup (whole days) and from the raw records (a
// partial day) alike.
func TestQueryByServiceTier(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			ctx := context.Background()
			h := func(n float64) time.Time { return usageDay.Add(time.Duration(n * float64(time.Hour))) }
			recs := []*metering.Record{
				tierRecord("t-1", "", h(10), metering.Usage{InputUncached: 100, Output: 10}, costPtr(1000)),
				tierRecord("t-2", "", h(11), metering.Usage{InputUncached: 200, CacheRead: 50, Output: 20}, costPtr(2000)),
				tierRecord("t-3", "flex", h(10.5), metering.Usage{InputUncached: 300, Output: 30}, costPtr(1500)),
				tierRecord("t-4", "priority", h(12), metering.Usage{InputUncached: 400, Output: 40, Reasoning: 5}, costPtr(8000)),
				tierRecord("t-5", "priority", h(23), metering.Usage{InputUncached: 1, Output: 1}, nil),    // no price for the tier
				tierRecord("t-6", "flex", h(25), metering.Usage{InputUncached: 7, Output: 7}, costPtr(7)), // the next day
			}
			if n, err := s.InsertBatch(ctx, recs[:3]); err != nil || n != 3 {
				t.Fatalf("InsertBatch: %d, %v", n, err)
			}
			// A later batch adds to the tier rows the first one created.
			if n, err := s.InsertBatch(ctx, recs[3:]); err != nil || n != 3 {
				t.Fatalf("InsertBatch: %d, %v", n, err)
			}
			var tiers []string
			rows, err := s.db.QueryContext(ctx, `SELECT service_tier, requests FROM usage_daily WHERE day = $1 ORDER BY service_tier`, "2026-05-04")
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var tier string
				var n int64
				if err := rows.Scan(&tier, &n); err != nil {
					t.Fatal(err)
				}
				tiers = append(tiers, fmt.Sprintf("%q:%d", tier, n))
			}
			rows.Close()
			if got := strings.Join(tiers, " "); got != `"":2 "flex":1 "priority":2` {
				t.Errorf("usage_daily rows of the day: %s, want one per tier", got)
			}

			day := UsageQuery{From: usageDay, To: usageDay.AddDate(0, 0, 1), GroupBy: []string{GroupServiceTier}}
			want := []UsageRow{
				{ServiceTier: "", Requests: 2, Usage: metering.Usage{InputUncached: 300, CacheRead: 50, Output: 30}, CostMicroUSD: costPtr(3000), PricedRequests: 2},
				{ServiceTier: "flex", Requests: 1, Usage: metering.Usage{InputUncached: 300, Output: 30}, CostMicroUSD: costPtr(1500), PricedRequests: 1},
				{ServiceTier: "priority", Requests: 2, Usage: metering.Usage{InputUncached: 401, Output: 41, Reasoning: 5}, CostMicroUSD: costPtr(8000), PricedRequests: 1, UnpricedRequests: 1},
			}
			got, err := s.Query(ctx, day)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("whole day by tier:\n got %s\nwant %s", rowsJSON(got), rowsJSON(want))
			}
			assertRollupMatchesRaw(t, s, day)
			// The same day less its last nanosecond is answered from the
			// raw records, and must agree with the rollup.
			raw := day
			raw.To = raw.To.Add(-time.Nanosecond)
			if got, err := s.Query(ctx, raw); err != nil || !reflect.DeepEqual(got, want) {
				t.Errorf("raw day by tier: %v\n got %s\nwant %s", err, rowsJSON(got), rowsJSON(want))
			}
			// 10:15 to 22:00 leaves out t-1 and t-5.
			partial := UsageQuery{From: h(10.25), To: h(22), GroupBy: []string{GroupServiceTier}}
			wantPartial := []UsageRow{
				{ServiceTier: "", Requests: 1, Usage: metering.Usage{InputUncached: 200, CacheRead: 50, Output: 20}, CostMicroUSD: costPtr(2000), PricedRequests: 1},
				{ServiceTier: "flex", Requests: 1, Usage: metering.Usage{InputUncached: 300, Output: 30}, CostMicroUSD: costPtr(1500), PricedRequests: 1},
				{ServiceTier: "priority", Requests: 1, Usage: metering.Usage{InputUncached: 400, Output: 40, Reasoning: 5}, CostMicroUSD: costPtr(8000), PricedRequests: 1},
			}
			if got, err := s.Query(ctx, partial); err != nil || !reflect.DeepEqual(got, wantPartial) {
				t.Errorf("partial day by tier: %v\n got %s\nwant %s", err, rowsJSON(got), rowsJSON(wantPartial))
			}
			// Two days by tier and day, and one tier alone.
			two := UsageQuery{From: usageDay, To: usageDay.AddDate(0, 0, 2), GroupBy: []string{GroupDay, GroupServiceTier}}
			if got, err := s.Query(ctx, two); err != nil || len(got) != 4 || got[3].Day != "2026-05-05" || got[3].ServiceTier != "flex" || got[3].CostMicroUSD == nil || *got[3].CostMicroUSD != 7 {
				t.Errorf("two days by day and tier: %v %s", err, rowsJSON(got))
			}
			assertRollupMatchesRaw(t, s, two)
			flex := UsageQuery{From: usageDay, To: usageDay.AddDate(0, 0, 2), ServiceTier: "flex"}
			if got, err := s.Query(ctx, flex); err != nil || len(got) != 1 || got[0].Requests != 2 || got[0].CostMicroUSD == nil || *got[0].CostMicroUSD != 1507 {
				t.Errorf("flex only: %v %s", err, rowsJSON(got))
			}
			assertRollupMatchesRaw(t, s, flex)
		})
	}
}

func TestParseUsageQueryServiceTier(t *testing.T) {
	q, err := ParseUsageQuery("2026-05-04", "2026-05-04", "service_tier, day", usageDay)
	if err != nil || !reflect.DeepEqual(q.GroupBy, []string{GroupServiceTier, GroupDay}) || q.rollupTable() != "usage_project_models" {
		t.Errorf("got %+v, %v", q, err)
	}
	_, err = ParseUsageQuery("2026-05-04", "2026-05-04", "tier", usageDay)
	if !errors.Is(err, ErrInvalidQuery) || !strings.Contains(err.Error(), `unknown group_by "tier"`) || !strings.Contains(err.Error(), GroupServiceTier) {
		t.Errorf("unknown group_by: %v, want ErrInvalidQuery naming it and listing service_tier", err)
	}
}

// TestQueryCostPerSession is the agent manager's question, "what did this
// task cost": per session, the answer is the sum of that session's records,
// on every engine, and a session filter selects exactly one of them.
func TestQueryCostPerSession(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			ctx := context.Background()
			start := usageDay.Add(10 * time.Hour)
			costs := map[string][]int64{"task-1": {1_000_000, 820_000}, "task-2": {5, 7, 11}, "": {300}}
			var recs []*metering.Record
			want := map[string]int64{}
			for sess, cs := range costs {
				for i, c := range cs {
					r := usageRecordN(fmt.Sprintf("%s-%d", sess, i), 0, start.Add(time.Duration(i)*time.Minute))
					r.Session, r.CostMicroUSD, r.Unpriced = sess, costPtr(c), false
					recs = append(recs, r)
					want[sess] += c
				}
			}
			// Another session a day later: outside the queried day.
			late := usageRecordN("late", 0, usageDay.AddDate(0, 0, 1).Add(time.Hour))
			late.Session, late.CostMicroUSD = "task-1", costPtr(999)
			recs = append(recs, late)
			if _, err := s.InsertBatch(ctx, recs); err != nil {
				t.Fatal(err)
			}
			day := UsageQuery{From: usageDay, To: usageDay.AddDate(0, 0, 1), GroupBy: []string{GroupSession}}
			rows, err := s.Query(ctx, day)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]int64{}
			for _, r := range rows {
				if r.CostMicroUSD == nil || r.Requests != int64(len(costs[r.Session])) {
					t.Errorf("session %q: %s", r.Session, rowsJSON([]UsageRow{r}))
					continue
				}
				got[r.Session] = *r.CostMicroUSD
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("cost per session %v, want %v", got, want)
			}
			one := day
			one.GroupBy, one.Session = nil, "task-1"
			rows, err = s.Query(ctx, one)
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) != 1 || rows[0].Requests != 2 || rows[0].CostMicroUSD == nil || *rows[0].CostMicroUSD != 1_820_000 {
				t.Fatalf("session=task-1 over the day: %s, want 2 requests costing 1820000", rowsJSON(rows))
			}
			var out bytes.Buffer
			if err := WriteTable(&out, []string{GroupSession}, []UsageRow{{Session: "task-1", Requests: 2, CostMicroUSD: costPtr(1_820_000), PricedRequests: 2}}); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out.String(), "task-1") || !strings.Contains(out.String(), "1.820000") {
				t.Errorf("table:\n%s", out.String())
			}
			out.Reset()
			if err := WriteCSV(&out, []string{GroupSession}, rows); err != nil {
				t.Fatal(err)
			}
			if lines := strings.Split(out.String(), "\n"); !strings.HasPrefix(lines[0], "session,") {
				t.Errorf("CSV header %q does not start with session", lines[0])
			}
			q, err := ParseUsageQuery("2026-05-04", "2026-05-04", "session", time.Now())
			if err != nil || !slices.Equal(q.GroupBy, []string{GroupSession}) {
				t.Errorf("ParseUsageQuery group_by=session: %v %v", q.GroupBy, err)
			}
		})
	}
}
