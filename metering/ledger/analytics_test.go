package ledger

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/metering"
)

// analyticsFixture is seven hand-made records over two days (usageDay and
// the next), stored through the writer's InsertBatch so the rollup is the
// writer's. The expectations in the tests below are worked out by hand
// from this table:
//
//	id  day/time    project user ws harness     model sess usage                                 cost
//	r1  D 10:00     a       u1   w1 claude-code m1    s1   in 100 cr 300 cw5m 100 out 50         1000
//	r2  D 11:30     a       u2   w1 codex       m2    s2   in 200 out 20                          500
//	r3  D 11:45     b       u1   w2 claude-code m3    s1   in 50 cw1h 50 out 10                   unpriced
//	r4  D+1 09:00   b       u3   w2 claude-code m1    s3   in 400 cr 600 out 100                 2000
//	r5  D+1 09:10   a       u1   w1 codex       m4    s2   missing usage                          -
//	r6  D+1 23:59   c       u3   w3 aider       m2    s4   in 10 out 1                             500
//	r7  D+1 10:00   c       u4   w4 aider       m2    s5   in 10 out 1                             500
func analyticsFixture(tb testing.TB, s *Store) {
	tb.Helper()
	d := usageDay
	rec := func(id string, at time.Time, proj, user, ws, harness, model, sess string, u *metering.Usage, cost int64) *metering.Record {
		r := &metering.Record{RequestID: id, Start: at, Project: "proj-" + proj, User: user, Workspace: ws, Harness: harness,
			Provider: "anthropic", ModelServed: model, Session: sess, Status: 200, Outcome: metering.OutcomeOK,
			Source: metering.SourceUpstream, Usage: u}
		switch {
		case u == nil:
			r.Source = metering.SourceMissing
		case cost < 0:
			r.Unpriced = true
		default:
			r.CostMicroUSD = &cost
		}
		return r
	}
	recs := []*metering.Record{
		rec("r1", d.Add(10*time.Hour), "a", "u1", "w1", "claude-code", "m1", "s1", &metering.Usage{InputUncached: 100, CacheRead: 300, CacheWrite5m: 100, Output: 50}, 1000),
		rec("r2", d.Add(11*time.Hour+30*time.Minute), "a", "u2", "w1", "codex", "m2", "s2", &metering.Usage{InputUncached: 200, Output: 20}, 500),
		rec("r3", d.Add(11*time.Hour+45*time.Minute), "b", "u1", "w2", "claude-code", "m3", "s1", &metering.Usage{InputUncached: 50, CacheWrite1h: 50, Output: 10}, -1),
		rec("r4", d.Add(33*time.Hour), "b", "u3", "w2", "claude-code", "m1", "s3", &metering.Usage{InputUncached: 400, CacheRead: 600, Output: 100}, 2000),
		rec("r5", d.Add(33*time.Hour+10*time.Minute), "a", "u1", "w1", "codex", "m4", "s2", nil, 0),
		rec("r6", d.Add(47*time.Hour+59*time.Minute), "c", "u3", "w3", "aider", "m2", "s4", &metering.Usage{InputUncached: 10, Output: 1}, 500),
		rec("r7", d.Add(34*time.Hour), "c", "u4", "w4", "aider", "m2", "s5", &metering.Usage{InputUncached: 10, Output: 1}, 500),
	}
	if _, err := s.InsertBatch(context.Background(), recs); err != nil {
		tb.Fatal(err)
	}
}

// twoDays is the fixture's whole range, answered from the rollup; the same
// range shifted by a second is answered from the raw records.
func twoDays() UsageQuery { return UsageQuery{From: usageDay, To: usageDay.AddDate(0, 0, 2)} }

func rawTwoDays() UsageQuery {
	return UsageQuery{From: usageDay.Add(-time.Second), To: usageDay.AddDate(0, 0, 2)}
}

func fmtCost(p *int64) string {
	if p == nil {
		return "nil"
	}
	return strconv.FormatInt(*p, 10)
}

// sumsString renders the fields the tests check, so a failure shows them.
func sumsString(s Sums) string {
	return fmt.Sprintf("req=%d in=%d out=%d cost=%s unpriced=%d missing=%d", s.Requests, s.InputTokens, s.OutputTokens,
		fmtCost(s.CostMicroUSD), s.UnpricedRequests, s.MissingUsageRequests)
}

// TestSeriesStackedWithOther: a day series stacked by model keeps the two
// costliest models and folds the rest into one Other series, whose cost is
// unknown (nil), not $0, because its models were never priced; buckets are
// dense and every point sums back to the total, on the rollup and raw paths
// alike.
func TestSeriesStackedWithOther(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			analyticsFixture(t, s)
			for _, base := range []UsageQuery{twoDays(), rawTwoDays()} {
				sr, err := s.Series(context.Background(), SeriesQuery{UsageQuery: base, Bucket: GroupDay, StackBy: GroupModel, Top: 2})
				if err != nil {
					t.Fatal(err)
				}
				wantBuckets := "2026-05-04,2026-05-05"
				if base.From.Before(usageDay) {
					wantBuckets = "2026-05-03," + wantBuckets
				}
				if got := strings.Join(sr.Buckets, ","); got != wantBuckets {
					t.Fatalf("buckets %s, want %s", got, wantBuckets)
				}
				off := len(sr.Buckets) - 2 // the raw range starts a day early
				var got []string
				for _, l := range sr.Lines {
					got = append(got, fmt.Sprintf("%s other=%v folded=%d: %s | %s | %s", l.Key, l.Other, l.Folded,
						sumsString(l.Total), sumsString(l.Points[off]), sumsString(l.Points[off+1])))
				}
				want := []string{
					"m1 other=false folded=0: req=2 in=1500 out=150 cost=3000 unpriced=0 missing=0 | req=1 in=500 out=50 cost=1000 unpriced=0 missing=0 | req=1 in=1000 out=100 cost=2000 unpriced=0 missing=0",
					"m2 other=false folded=0: req=3 in=220 out=22 cost=1500 unpriced=0 missing=0 | req=1 in=200 out=20 cost=500 unpriced=0 missing=0 | req=2 in=20 out=2 cost=1000 unpriced=0 missing=0",
					"(other) other=true folded=2: req=2 in=100 out=10 cost=nil unpriced=1 missing=1 | req=1 in=100 out=10 cost=nil unpriced=1 missing=0 | req=1 in=0 out=0 cost=nil unpriced=0 missing=1",
				}
				if strings.Join(got, "\n") != strings.Join(want, "\n") {
					t.Errorf("from %s:\n%s\nwant\n%s", base.From, strings.Join(got, "\n"), strings.Join(want, "\n"))
				}
				if g := sumsString(sr.Total); g != "req=7 in=1820 out=182 cost=4500 unpriced=1 missing=1" {
					t.Errorf("total %s", g)
				}
			}
		})
	}
}

// TestSeriesHourAndFilters: hour buckets come from the raw records; the
// harness, model, project and user filters narrow the sums; one series
// without stacking is the total; a malformed query names its problems.
func TestSeriesHourAndFilters(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			analyticsFixture(t, s)
			ctx := context.Background()
			day := UsageQuery{From: usageDay, To: usageDay.AddDate(0, 0, 1)}
			sr, err := s.Series(ctx, SeriesQuery{UsageQuery: day, Bucket: GroupHour, StackBy: GroupHarness})
			if err != nil {
				t.Fatal(err)
			}
			if len(sr.Buckets) != 24 || sr.Buckets[10] != "2026-05-04T10:00:00Z" {
				t.Fatalf("buckets %v", sr.Buckets)
			}
			var got []string
			for _, l := range sr.Lines {
				for i, p := range l.Points {
					if p.Requests > 0 {
						got = append(got, fmt.Sprintf("%s@%d:%d:%s", l.Key, i, p.Requests, fmtCost(p.CostMicroUSD)))
					}
				}
			}
			// claude-code: r1 (1000) ranks over codex: r2 (500); r3 is unpriced.
			if g := strings.Join(got, " "); g != "claude-code@10:1:1000 claude-code@11:1:nil codex@11:1:500" {
				t.Errorf("hour points: %s", g)
			}

			for _, tc := range []struct {
				name string
				f    func(*UsageQuery)
				want string
			}{
				{"harness", func(q *UsageQuery) { q.Harness = "codex" }, "req=2 in=200 out=20 cost=500 unpriced=0 missing=1"},
				{"model", func(q *UsageQuery) { q.Model = "m2" }, "req=3 in=220 out=22 cost=1500 unpriced=0 missing=0"},
				{"project+user", func(q *UsageQuery) { q.Project, q.User = "proj-a", "u1" }, "req=2 in=500 out=50 cost=1000 unpriced=0 missing=1"},
				{"workspace", func(q *UsageQuery) { q.Workspace = "w2" }, "req=2 in=1100 out=110 cost=2000 unpriced=1 missing=0"},
				{"session", func(q *UsageQuery) { q.Session = "s1" }, "req=2 in=600 out=60 cost=1000 unpriced=1 missing=0"},
				{"nothing", func(q *UsageQuery) { q.Model = "m9" }, "req=0 in=0 out=0 cost=nil unpriced=0 missing=0"},
			} {
				for _, base := range []UsageQuery{twoDays(), rawTwoDays()} {
					q := base
					tc.f(&q)
					sr, err := s.Series(ctx, SeriesQuery{UsageQuery: q, Bucket: GroupDay})
					if err != nil {
						t.Fatal(err)
					}
					if g := sumsString(sr.Total); g != tc.want {
						t.Errorf("%s from %s: %s, want %s", tc.name, q.From, g, tc.want)
					}
					if len(sr.Lines) > 1 {
						t.Errorf("%s: unstacked series has %d lines", tc.name, len(sr.Lines))
					}
				}
			}

			_, err = s.Series(ctx, SeriesQuery{UsageQuery: UsageQuery{From: usageDay, To: usageDay.AddDate(0, 0, 15), GroupBy: []string{GroupDay}}, Bucket: GroupHour, StackBy: "colour", Top: 99})
			for _, want := range []string{"group_by is chosen", "hour buckets cover at most 7 days", `unknown stack_by "colour"`, "top 99 is out of range"} {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("bad query: %v, want %q", err, want)
				}
			}
		})
	}
}

// TestTopOrderAndTies: top workspaces and sessions rank by cost, ties by
// tokens, then by name; what is past N is folded into Other with a count.
func TestTopOrderAndTies(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			analyticsFixture(t, s)
			ctx := context.Background()
			for _, tc := range []struct {
				by    string
				n     int
				want  string
				other string
			}{
				// w2 2000 (r3 unpriced beside r4), w1 1500, then w3 and w4
				// tie on cost and tokens: name order.
				{GroupWorkspace, 0, "w2:2000 w1:1500 w3:500 w4:500", "none"},
				// s2 and s4/s5 tie on cost; s2 has more tokens; s4/s5 by name.
				{GroupSession, 3, "s3:2000 s1:1000 s2:500", "(other):2req:1000:folded=2"},
				{GroupModel, 2, "m1:3000 m2:1500", "(other):2req:nil:folded=2"},
			} {
				for _, base := range []UsageQuery{twoDays(), rawTwoDays()} {
					top, err := s.Top(ctx, TopQuery{UsageQuery: base, By: tc.by, N: tc.n})
					if err != nil {
						t.Fatal(err)
					}
					var got []string
					for _, r := range top.Rows {
						got = append(got, *r.dim(tc.by)+":"+fmtCost(r.CostMicroUSD))
					}
					other := "none"
					if top.Other != nil {
						other = fmt.Sprintf("%s:%dreq:%s:folded=%d", *top.Other.dim(tc.by), top.Other.Requests, fmtCost(top.Other.CostMicroUSD), top.Folded)
					}
					if g := strings.Join(got, " "); g != tc.want || other != tc.other {
						t.Errorf("top %s from %s: %s, other %s; want %s, other %s", tc.by, base.From, g, other, tc.want, tc.other)
					}
					if g := sumsString(top.Total); g != "req=7 in=1820 out=182 cost=4500 unpriced=1 missing=1" {
						t.Errorf("top %s total %s", tc.by, g)
					}
				}
			}
			if _, err := s.Top(ctx, TopQuery{UsageQuery: twoDays(), By: "colour"}); err == nil || !strings.Contains(err.Error(), `unknown by "colour"`) {
				t.Errorf("bad by: %v", err)
			}
		})
	}
}

// cacheTestPricer prices m1's cache writes at 4 µ$ a 5-minute token and 8
// a 1-hour one, and nothing for any other model.
type cacheTestPricer struct{}

func (cacheTestPricer) Cost(provider, model, tier string, u metering.Usage) (*int64, string) {
	if model != "m1" {
		return nil, "t"
	}
	c := 4*u.CacheWrite5m + 8*u.CacheWrite1h + u.InputUncached
	return &c, "t"
}

// TestCacheEfficiency: cache reads ÷ all input per project and session,
// and the cache writes priced at the model's rate; writes of an unpriced
// model are counted apart, never priced at 0.
func TestCacheEfficiency(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			analyticsFixture(t, s)
			ctx := context.Background()
			show := func(r CacheRow) string {
				share := "nil"
				if r.CacheReadShare != nil {
					share = strconv.FormatFloat(*r.CacheReadShare, 'f', 4, 64)
				}
				return fmt.Sprintf("%s: in=%d cr=%d cw=%d share=%s cwcost=%s cwunpriced=%d cost=%s", r.Key, r.InputTokens, r.CacheReadTokens,
					r.CacheWriteTokens, share, fmtCost(r.CacheWriteCostMicroUSD), r.CacheWriteUnpricedTokens, fmtCost(r.CostMicroUSD))
			}
			for _, tc := range []struct {
				by    string
				p     Pricer
				want  []string
				total string
			}{
				{GroupProject, cacheTestPricer{}, []string{
					"proj-b: in=1100 cr=600 cw=50 share=0.5455 cwcost=nil cwunpriced=50 cost=2000",
					"proj-a: in=700 cr=300 cw=100 share=0.4286 cwcost=400 cwunpriced=0 cost=1500",
					"proj-c: in=20 cr=0 cw=0 share=0.0000 cwcost=0 cwunpriced=0 cost=1000",
				}, ": in=1820 cr=900 cw=150 share=0.4945 cwcost=400 cwunpriced=50 cost=4500"},
				{GroupSession, cacheTestPricer{}, []string{
					"s3: in=1000 cr=600 cw=0 share=0.6000 cwcost=0 cwunpriced=0 cost=2000",
					"s1: in=600 cr=300 cw=150 share=0.5000 cwcost=400 cwunpriced=50 cost=1000",
					"s2: in=200 cr=0 cw=0 share=0.0000 cwcost=0 cwunpriced=0 cost=500",
					"s4: in=10 cr=0 cw=0 share=0.0000 cwcost=0 cwunpriced=0 cost=500",
					"s5: in=10 cr=0 cw=0 share=0.0000 cwcost=0 cwunpriced=0 cost=500",
				}, ": in=1820 cr=900 cw=150 share=0.4945 cwcost=400 cwunpriced=50 cost=4500"},
				// Without a price table no cache write is priced.
				{GroupProject, nil, []string{
					"proj-b: in=1100 cr=600 cw=50 share=0.5455 cwcost=nil cwunpriced=50 cost=2000",
					"proj-a: in=700 cr=300 cw=100 share=0.4286 cwcost=nil cwunpriced=100 cost=1500",
					"proj-c: in=20 cr=0 cw=0 share=0.0000 cwcost=0 cwunpriced=0 cost=1000",
				}, ": in=1820 cr=900 cw=150 share=0.4945 cwcost=nil cwunpriced=150 cost=4500"},
			} {
				for _, base := range []UsageQuery{twoDays(), rawTwoDays()} {
					c, err := s.Cache(ctx, CacheQuery{UsageQuery: base, By: tc.by}, tc.p)
					if err != nil {
						t.Fatal(err)
					}
					var got []string
					for _, r := range c.Rows {
						got = append(got, show(r))
					}
					if strings.Join(got, "\n") != strings.Join(tc.want, "\n") || show(c.Total) != tc.total {
						t.Errorf("cache by %s:\n%s\ntotal %s\nwant\n%s\ntotal %s", tc.by, strings.Join(got, "\n"), show(c.Total), strings.Join(tc.want, "\n"), tc.total)
					}
				}
			}
			// A session of no input has no share rather than 0.
			c, err := s.Cache(ctx, CacheQuery{UsageQuery: func() UsageQuery { q := twoDays(); q.Model = "m4"; return q }(), By: GroupSession}, nil)
			if err != nil || len(c.Rows) != 1 || c.Rows[0].CacheReadShare != nil {
				t.Errorf("no input: %v %+v", err, c)
			}
		})
	}
}

// TestScaleCost: the probe rate scales exactly, rounds half up and cannot
// overflow.
func TestScaleCost(t *testing.T) {
	for _, tc := range []struct{ tokens, probe, want int64 }{
		{100, 400_000, 400}, {1, 375_000, 4}, {3, 50_000, 2}, {0, 9, 0}, {1 << 40, 1 << 40, 1<<63 - 1},
	} {
		if got := scaleCost(tc.tokens, tc.probe); got != tc.want {
			t.Errorf("scaleCost(%d, %d) = %d, want %d", tc.tokens, tc.probe, got, tc.want)
		}
	}
}

// TestSeriesCSVIsTheQuery: the series CSV holds exactly the JSON's cells:
// each non-empty point once, the folded series as (other), the same sums.
func TestSeriesCSVIsTheQuery(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			analyticsFixture(t, s)
			sr, err := s.Series(context.Background(), SeriesQuery{UsageQuery: twoDays(), Bucket: GroupDay, StackBy: GroupProject, Top: 1})
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if err := WriteCSV(&buf, sr.GroupBy(), sr.Rows); err != nil {
				t.Fatal(err)
			}
			recs, err := csv.NewReader(&buf).ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			col := map[string]int{}
			for i, h := range recs[0] {
				col[h] = i
			}
			var fromCSV, fromJSON []string
			for _, r := range recs[1:] {
				fromCSV = append(fromCSV, strings.Join([]string{r[col["day"]], r[col["project"]], r[col["requests"]], r[col["input_total"]],
					r[col["output"]], r[col["cost_micro_usd"]], r[col["unpriced_requests"]], r[col["missing_usage_requests"]]}, ","))
			}
			for i, b := range sr.Buckets {
				for _, l := range sr.Lines {
					p := l.Points[i]
					if p.Requests == 0 {
						continue
					}
					cost := ""
					if p.CostMicroUSD != nil {
						cost = fmtCost(p.CostMicroUSD)
					}
					fromJSON = append(fromJSON, fmt.Sprintf("%s,%s,%d,%d,%d,%s,%d,%d", b, l.Key, p.Requests, p.InputTokens, p.OutputTokens, cost, p.UnpricedRequests, p.MissingUsageRequests))
				}
			}
			if strings.Join(fromCSV, "\n") != strings.Join(fromJSON, "\n") {
				t.Errorf("csv\n%s\njson\n%s", strings.Join(fromCSV, "\n"), strings.Join(fromJSON, "\n"))
			}
			// proj-b is the costliest (2000); a and c are folded. Day one's
			// other cell is proj-a's r1+r2, day two's proj-a r5 + proj-c.
			if want := "2026-05-04,proj-b,1,100,10,,1,0\n2026-05-04,(other),2,700,70,1500,0,0\n2026-05-05,proj-b,1,1000,100,2000,0,0\n2026-05-05,(other),3,20,2,1000,0,1"; strings.Join(fromCSV, "\n") != want {
				t.Errorf("csv rows\n%s\nwant\n%s", strings.Join(fromCSV, "\n"), want)
			}
		})
	}
}

// TestRollupRebuildMatchesWriter: the bench seeds records directly and
// builds usage_daily and usage_sessions with rollupRebuildSQL; that must be
// what InsertBatch writes (and migration 11 backfills), or the bench would
// time other tables.
func TestRollupRebuildMatchesWriter(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			ctx := context.Background()
			writer, rebuilt := mustUsageStore(t, engine), mustUsageStore(t, engine)
			var recs []*metering.Record
			if err := benchRecords(2000, func(r *metering.Record) error { recs = append(recs, r); return nil }); err != nil {
				t.Fatal(err)
			}
			if _, err := writer.InsertBatch(ctx, recs); err != nil {
				t.Fatal(err)
			}
			if err := seedUsage(ctx, rebuilt, len(recs)); err != nil {
				t.Fatal(err)
			}
			dump := func(s *Store, table string, keys []string) string {
				rows, err := s.db.QueryContext(ctx, "SELECT "+strings.Join(append(keys[:len(keys):len(keys)], dailySums...), ", ")+
					" FROM "+table+" ORDER BY "+strings.Join(keys, ", "))
				if err != nil {
					t.Fatal(err)
				}
				defer rows.Close()
				var b strings.Builder
				n := len(keys) + len(dailySums)
				for rows.Next() {
					vals := make([]any, n)
					ptrs := make([]any, n)
					for i := range vals {
						ptrs[i] = &vals[i]
					}
					if err := rows.Scan(ptrs...); err != nil {
						t.Fatal(err)
					}
					fmt.Fprintln(&b, vals...)
				}
				return b.String()
			}
			for _, rt := range benchRollups {
				w, r := dump(writer, rt.table, rt.keys), dump(rebuilt, rt.table, rt.keys)
				if w != r || strings.Count(w, "\n") < 100 {
					t.Errorf("%s: rebuilt rollup differs from the writer's (%d vs %d rows)", rt.table, strings.Count(w, "\n"), strings.Count(r, "\n"))
				}
			}
			spans := func(s *Store) string {
				rows, err := s.db.QueryContext(ctx, "SELECT session_id, first_day, last_day, priced_requests, cost_micro_usd, rank_tokens FROM usage_session_spans ORDER BY session_id")
				if err != nil {
					t.Fatal(err)
				}
				defer rows.Close()
				var b strings.Builder
				for rows.Next() {
					var id, first, last string
					var priced, cost, tokens int64
					if err := rows.Scan(&id, &first, &last, &priced, &cost, &tokens); err != nil {
						t.Fatal(err)
					}
					fmt.Fprintln(&b, id, first, last, priced, cost, tokens)
				}
				return b.String()
			}
			if w, r := spans(writer), spans(rebuilt); w != r || strings.Count(w, "\n") < 100 {
				t.Errorf("usage_session_spans: rebuilt differs from the writer's (%d vs %d rows)", strings.Count(w, "\n"), strings.Count(r, "\n"))
			}
		})
	}
}

// TestSessionRollupBackfill: migration 11 fills usage_sessions from the
// records already stored, so session totals over whole days (now read from
// it) are what they were from the raw records.
func TestSessionRollupBackfill(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			ctx := context.Background()
			db := mustUsageDB(t, engine)
			at := slices.IndexFunc(storeMigrations, func(m string) bool { return strings.Contains(m, "CREATE TABLE usage_sessions") })
			if err := db.Migrate(ctx, "metering", storeMigrations[:at]); err != nil {
				t.Fatal(err)
			}
			old := &Store{db: db, now: time.Now}
			var recs []*metering.Record
			for i := range 200 {
				r := usageRecordN(fmt.Sprintf("bf-%d", i), i, usageDay.Add(time.Duration(i)*17*time.Minute))
				r.ServiceTier = []string{"", "flex"}[i%2]
				r.Session = []string{"sess-a", "sess-b", "", "sess-c"}[i%4]
				recs = append(recs, r)
			}
			for _, r := range recs {
				if _, err := db.ExecContext(ctx, insertSQL(engine, 1, false), old.appendRecordArgs(nil, r, old.ts(usageDay))...); err != nil {
					t.Fatal(err)
				}
			}
			s, err := OpenStore(ctx, db)
			if err != nil {
				t.Fatal(err)
			}
			q := UsageQuery{From: usageDay, To: usageDay.AddDate(0, 0, 3), GroupBy: []string{GroupSession, GroupModel, GroupDay}}
			if q.rollupTable() != "usage_sessions" {
				t.Fatalf("read from %q", q.rollupTable())
			}
			got, err := s.Query(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			if want := expectRows(recs, q); len(want) < 10 || rowsJSON(got) != rowsJSON(want) {
				t.Errorf("backfilled:\n got %s\nwant %s", rowsJSON(got), rowsJSON(want))
			}
		})
	}
}

// TestSessionSpansBackfillSQL: migration 12's literal SQL sums the tokens
// the ranking orders by (rankTokenColumns), which the writer sums from the
// buckets; a bucket added to the ranking must reach the backfill too.
func TestSessionSpansBackfillSQL(t *testing.T) {
	if want := "SUM(" + strings.Join(rankTokenColumns(), " + ") + ")"; !strings.Contains(sessionSpansBackfillSQL, want) {
		t.Errorf("backfill does not sum %s:\n%s", want, sessionSpansBackfillSQL)
	}
}

// TestNarrowRollupsBackfill: whole-day queries that need only the day,
// project and model's columns read usage_project_models, and those that
// need only the day, user and workspace usage_user_workspaces; the writer
// keeps both and migrations 13 and 14 backfill them from usage_daily.
// Either way they must give what the records give, filtered or not.
func TestNarrowRollupsBackfill(t *testing.T) {
	day3 := func(q UsageQuery) UsageQuery { q.From, q.To = usageDay, usageDay.AddDate(0, 0, 3); return q }
	var recs []*metering.Record
	for i := range 300 {
		r := usageRecordN(fmt.Sprintf("nb-%d", i), i, usageDay.Add(time.Duration(i)*13*time.Minute))
		r.ServiceTier = []string{"", "flex", "priority"}[i%3]
		r.Workspace = []string{"ws-a", "ws-b"}[i%2]
		recs = append(recs, r)
	}
	rollups := []struct {
		table, backfill string
		queries         []UsageQuery
	}{
		{"usage_project_models", modelsBackfillSQL, []UsageQuery{
			day3(UsageQuery{GroupBy: []string{GroupDay, GroupProject, GroupProvider, GroupModel, GroupServiceTier}}),
			day3(UsageQuery{GroupBy: []string{GroupModel}, Project: recs[1].Project}),
		}},
		{"usage_user_workspaces", peopleBackfillSQL, []UsageQuery{
			day3(UsageQuery{GroupBy: []string{GroupDay, GroupUser, GroupWorkspace}}),
			day3(UsageQuery{GroupBy: []string{GroupWorkspace}, User: recs[1].User}),
		}},
	}
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			ctx := context.Background()
			s := mustUsageStore(t, engine)
			if _, err := s.InsertBatch(ctx, recs); err != nil {
				t.Fatal(err)
			}
			for _, ru := range rollups {
				for _, step := range []string{"writer", "backfill"} {
					if step == "backfill" {
						if _, err := s.db.ExecContext(ctx, "DELETE FROM "+ru.table); err != nil {
							t.Fatal(err)
						}
						if _, err := s.db.ExecContext(ctx, ru.backfill); err != nil {
							t.Fatal(err)
						}
					}
					for _, q := range ru.queries {
						if q.rollupTable() != ru.table {
							t.Fatalf("%v read from %q, want %s", q.GroupBy, q.rollupTable(), ru.table)
						}
						got, err := s.Query(ctx, q)
						if err != nil {
							t.Fatal(err)
						}
						if want := expectRows(recs, q); len(want) < 2 || rowsJSON(got) != rowsJSON(want) {
							t.Errorf("%s %s, %v:\n got %s\nwant %s", ru.table, step, q.GroupBy, rowsJSON(got), rowsJSON(want))
						}
					}
				}
			}
		})
	}
}
