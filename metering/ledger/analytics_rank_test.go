package ledger

import (
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/metering"
)

// TestSessionRankSQLMatchesGo: the per-session top list and cache report
// rank and cut in SQL (rankOrder); their order must be rankRows' order
// over every session of the range, or the Usage page would list a
// different top N than the full ranking. The seed forces every tie-break:
// equal costs, equal tokens, unpriced sessions (after every priced one,
// including cost 0), sessions mixing priced and unpriced records, usage
// missing, and keys whose byte order differs from a locale's (case,
// non-ASCII, punctuation). A second batch lands after the first was
// ranked, merging into existing session rows of the rollup and adding
// new sessions, and is checked again.
func TestSessionRankSQLMatchesGo(t *testing.T) {
	keys := []string{"a", "A", "b", "B", "é", "e", "z", "Z", "a b", "a-b", "a_b", "ab", "ß", "ss", "0", "9", "~", "s\u00e9", "se\u0301", "ä"}
	for i := range 30 {
		keys = append(keys, fmt.Sprintf("sess-%02d", i))
	}
	rng := rand.New(rand.NewPCG(14, 300))
	var n int
	batch := func(sessions []string, per int) []*metering.Record {
		var recs []*metering.Record
		for _, sess := range sessions {
			for range 1 + rng.IntN(per) {
				n++
				r := &metering.Record{RequestID: fmt.Sprintf("r%d", n), Start: usageDay.Add(time.Duration(rng.IntN(47*60)) * time.Minute),
					Project: "p", User: "u", Workspace: "w", Harness: "h", Provider: "anthropic", ModelServed: "m",
					Session: sess, Status: 200, Outcome: metering.OutcomeOK, Source: metering.SourceUpstream}
				tok := []int64{0, 10, 10, 11}[rng.IntN(4)]
				r.Usage = &metering.Usage{InputUncached: tok, Output: tok / 2}
				switch rng.IntN(6) {
				case 0:
					r.Unpriced = true
				case 1:
					r.Usage, r.Source = nil, metering.SourceMissing
				default:
					r.CostMicroUSD = costPtr([]int64{0, 500, 500, 1000}[rng.IntN(4)])
				}
				recs = append(recs, r)
			}
		}
		return recs
	}
	first := batch(keys[:35], 2)
	// Later records: more for some ranked sessions, and new sessions.
	later := batch(append(slices.Clone(keys[10:20]), keys[35:]...), 3)
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			ctx := context.Background()
			for step, recs := range [][]*metering.Record{first, later} {
				if _, err := s.InsertBatch(ctx, recs); err != nil {
					t.Fatal(err)
				}
				// Single days: sessions of both days straddle the first's
				// end and the second's start, so their ranks come from
				// usage_sessions' in-range days, not usage_session_spans.
				day1 := UsageQuery{From: usageDay, To: usageDay.AddDate(0, 0, 1)}
				day2 := UsageQuery{From: usageDay.AddDate(0, 0, 1), To: usageDay.AddDate(0, 0, 2)}
				for _, base := range []UsageQuery{twoDays(), rawTwoDays(), day1, day2} {
					all := base
					all.GroupBy = []string{GroupSession}
					rows, err := s.Query(ctx, all)
					if err != nil {
						t.Fatal(err)
					}
					rankRows(rows, func(r *UsageRow) string { return r.Session })
					var want []string
					for i := range rows {
						want = append(want, fmt.Sprintf("%q:%s:%d", rows[i].Session, fmtCost(rows[i].CostMicroUSD), rows[i].InputTotal()+rows[i].Output))
					}
					for _, top := range []int{1, 3, 7, 20, len(rows) - 1, len(rows), MaxTopN} {
						at := fmt.Sprintf("batch %d, from %s, n %d", step+1, base.From.Format(time.RFC3339), top)
						k := min(top, len(want))
						got, err := s.Top(ctx, TopQuery{UsageQuery: base, By: GroupSession, N: top})
						if err != nil {
							t.Fatal(err)
						}
						var g []string
						for i := range got.Rows {
							r := &got.Rows[i]
							g = append(g, fmt.Sprintf("%q:%s:%d", r.Session, fmtCost(r.CostMicroUSD), r.InputTotal()+r.Output))
						}
						if strings.Join(g, " ") != strings.Join(want[:k], " ") {
							t.Errorf("%s: top sessions\n got %s\nwant %s", at, strings.Join(g, " "), strings.Join(want[:k], " "))
						}
						if got.Folded != len(want)-k {
							t.Errorf("%s: top folded %d, want %d", at, got.Folded, len(want)-k)
						}
						c, err := s.Cache(ctx, CacheQuery{UsageQuery: base, By: GroupSession, N: top}, nil)
						if err != nil {
							t.Fatal(err)
						}
						g = g[:0]
						for i := range c.Rows {
							g = append(g, c.Rows[i].Key)
						}
						var wk []string
						for i := range rows[:k] {
							wk = append(wk, rows[i].Session)
						}
						if !slices.Equal(g, wk) {
							t.Errorf("%s: cache sessions\n got %q\nwant %q", at, g, wk)
						}
						if c.Folded != len(want)-k {
							t.Errorf("%s: cache folded %d, want %d", at, c.Folded, len(want)-k)
						}
						// The console hands the top list's ranking to the
						// cache query: the answer must be the same.
						cq := CacheQuery{UsageQuery: base, By: GroupSession, N: top}
						cq.Ranked, cq.RankedGroups = got.Ranking()
						reused, err := s.Cache(ctx, cq, nil)
						if err != nil {
							t.Fatal(err)
						}
						if !reflect.DeepEqual(reused, c) {
							t.Errorf("%s: cache per session from the top list's ranking\n got %+v\nwant %+v", at, reused, c)
						}
						// ... and the project answer's total row.
						pc, err := s.Cache(ctx, CacheQuery{UsageQuery: base, By: GroupProject}, nil)
						if err != nil {
							t.Fatal(err)
						}
						if !reflect.DeepEqual(pc.Total, c.Total) {
							t.Errorf("%s: the project and session answers' totals differ\n project %+v\n session %+v", at, pc.Total, c.Total)
						}
						cq.Total = &pc.Total
						if reused, err = s.Cache(ctx, cq, nil); err != nil {
							t.Fatal(err)
						}
						if !reflect.DeepEqual(reused, c) {
							t.Errorf("%s: cache per session with the project answer's total\n got %+v\nwant %+v", at, reused, c)
						}
					}
				}
			}
		})
	}
}
