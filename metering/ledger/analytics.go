package ledger

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strings"
	"time"

	"github.com/tollgate/tollgate/metering"
)

// The console's Usage page and the admin API's /usage/series, /usage/top
// and /usage/cache. Each is built from Query's SQL (the same sums, filters
// and rollup-or-raw choice) and folded in Go, so their totals equal GET
// /admin/v1/usage for the same range and filters by construction. Sessions
// are ranked in SQL (rankInSQL); their Other is then the total less the
// listed rows, which holds because usage_sessions and usage_daily sum the
// same records (TestQuery*, TestRollupRebuildMatchesWriter).

// Limits of the analytics queries.
const (
	// DefaultSeriesTop is how many series a chart stacks before the rest
	// is folded into one "other" series.
	DefaultSeriesTop = 8
	MaxSeriesTop     = 50
	// MaxHourBuckets bounds an hourly series (7 days): hours are read
	// from the raw records, 14 days of which (155,000 of a million over 90
	// days) took 330 ms of CPU on SQLite, and a chart of more points is
	// unreadable anyway.
	MaxHourBuckets = 7 * 24
	// DefaultTopN and MaxTopN bound the rows of a top list.
	DefaultTopN = 10
	MaxTopN     = 1000
)

// OtherKey labels the series, or top-list row, that folds every one after
// the first N. The Other flag, not the label, tells it from a real value.
const OtherKey = "(other)"

// SeriesStackNames are the dimensions a series can be stacked by.
var SeriesStackNames = []string{GroupModel, GroupProject, GroupHarness, GroupUser, GroupWorkspace, GroupProvider}

// TopByNames are the dimensions a top list can rank.
var TopByNames = []string{GroupWorkspace, GroupSession, GroupProject, GroupUser, GroupModel, GroupHarness}

// CacheByNames are the dimensions cache efficiency is reported per.
var CacheByNames = []string{GroupProject, GroupSession}

// Sums is the lean aggregate a chart point carries. Token sums leave out
// requests whose usage is unknown (MissingUsageRequests say how many);
// CostMicroUSD is nil when no request was priced, and UnpricedRequests
// counts those with tokens but no price: an unknown cost is never $0.
type Sums struct {
	Requests             int64  `json:"requests"`
	InputTokens          int64  `json:"input_tokens"`
	OutputTokens         int64  `json:"output_tokens"`
	CostMicroUSD         *int64 `json:"cost_micro_usd"`
	PricedRequests       int64  `json:"priced_requests"`
	UnpricedRequests     int64  `json:"unpriced_requests"`
	MissingUsageRequests int64  `json:"missing_usage_requests"`
}

func (s *Sums) addRow(r *UsageRow) {
	s.Requests += r.Requests
	s.InputTokens += r.InputTotal()
	s.OutputTokens += r.Output
	s.PricedRequests += r.PricedRequests
	s.UnpricedRequests += r.UnpricedRequests
	s.MissingUsageRequests += r.MissingUsageRequests
	addCost(&s.CostMicroUSD, r.CostMicroUSD)
}

// addCost adds c to *dst, leaving *dst nil while nothing priced was added.
func addCost(dst **int64, c *int64) {
	if c == nil {
		return
	}
	if *dst == nil {
		*dst = new(int64)
	}
	**dst += *c
}

// mergeRow adds o's sums and cost into r.
func mergeRow(r, o *UsageRow) {
	r.add(o)
	if o.CostMicroUSD != nil {
		v := int64(0)
		if r.CostMicroUSD != nil {
			v = *r.CostMicroUSD
		}
		v += *o.CostMicroUSD
		r.CostMicroUSD = &v
	}
}

// checkFilters refuses a GroupBy in an analytics query: the analytics
// choose their own grouping.
func checkFilters(q UsageQuery) error {
	if len(q.GroupBy) > 0 {
		return fmt.Errorf("%w: group_by is chosen by the analytics query", ErrInvalidQuery)
	}
	return nil
}

func checkName(what, v string, names []string) error {
	if !slices.Contains(names, v) {
		return fmt.Errorf("%w: unknown %s %q (want %s)", ErrInvalidQuery, what, v, strings.Join(names, ", "))
	}
	return nil
}

func checkN(what string, n, limit int) error {
	if n < 0 || n > limit {
		return fmt.Errorf("%w: %s %d is out of range (0 to %d)", ErrInvalidQuery, what, n, limit)
	}
	return nil
}

// rankRows orders rows by cost, highest first (an unpriced row after
// every priced one), then by tokens, then by key: a stable ranking whose
// ties are decided the same way on every engine.
func rankRows(rows []UsageRow, key func(*UsageRow) string) {
	// Sort indexes, not the rows: a row is a few hundred bytes, and a top
	// list of sessions has tens of thousands.
	idx := make([]int, len(rows))
	for i := range idx {
		idx[i] = i
	}
	cost := func(r *UsageRow) int64 {
		if r.CostMicroUSD == nil {
			return -1
		}
		return *r.CostMicroUSD
	}
	slices.SortFunc(idx, func(i, j int) int {
		a, b := &rows[i], &rows[j]
		return cmp.Or(cmp.Compare(cost(b), cost(a)),
			cmp.Compare(b.InputTotal()+b.Output, a.InputTotal()+a.Output),
			cmp.Compare(key(a), key(b)))
	})
	sorted := make([]UsageRow, len(rows))
	for i, j := range idx {
		sorted[i] = rows[j]
	}
	copy(rows, sorted)
}

// SeriesQuery asks for cost and tokens over time.
type SeriesQuery struct {
	// UsageQuery gives the range and the filters; its GroupBy must be empty.
	UsageQuery
	// Bucket is GroupDay or GroupHour. Day buckets of a whole-day range are
	// read from the daily rollup.
	Bucket string
	// StackBy is one of SeriesStackNames, or "" for one series.
	StackBy string
	// Top is how many series are kept (by cost) before the rest is folded
	// into OtherKey; 0 means DefaultSeriesTop.
	Top int
}

// Series is cost and tokens per bucket, per stacked series.
type Series struct {
	Bucket  string `json:"bucket"`
	StackBy string `json:"stack_by,omitempty"`
	// Buckets are the starts of every bucket in the range, empty ones
	// included, in order: YYYY-MM-DD days or RFC 3339 UTC hours. Every
	// line's Points align with them.
	Buckets []string     `json:"buckets"`
	Lines   []SeriesLine `json:"series"`
	// Total is the whole query: it equals the sum of the usage API's rows
	// for the same range and filters.
	Total Sums `json:"total"`
	// Rows are the non-empty (bucket, series) cells as usage rows, the
	// folded series under OtherKey: what WriteCSV writes for the page.
	Rows []UsageRow `json:"-"`
}

// SeriesLine is one stacked series.
type SeriesLine struct {
	Key string `json:"key"`
	// Other marks the fold of the series after the first Top; Folded says
	// how many it holds.
	Other  bool   `json:"other,omitempty"`
	Folded int    `json:"folded,omitempty"`
	Total  Sums   `json:"total"`
	Points []Sums `json:"points"`
}

// GroupBy is the CSV's grouping: the bucket, then the stack dimension.
func (s *Series) GroupBy() []string {
	if s.StackBy == "" {
		return []string{s.Bucket}
	}
	return []string{s.Bucket, s.StackBy}
}

// bucketStarts lists every bucket start of [from, to).
func bucketStarts(bucket string, from, to time.Time) []string {
	var out []string
	if bucket == GroupHour {
		for t := from.UTC().Truncate(time.Hour); t.Before(to); t = t.Add(time.Hour) {
			out = append(out, t.Format(hourLayout))
		}
		return out
	}
	f := from.UTC()
	for t := time.Date(f.Year(), f.Month(), f.Day(), 0, 0, 0, 0, time.UTC); t.Before(to); t = t.AddDate(0, 0, 1) {
		out = append(out, t.Format(usageDayLayout))
	}
	return out
}

// hourLayout is how GroupHour values read (dimExpr renders the same).
const hourLayout = "2006-01-02T15:00:00Z"

// Validate reports every problem of q.
func (q SeriesQuery) Validate() error {
	errs := []error{q.UsageQuery.Validate(), checkFilters(q.UsageQuery)}
	if q.Bucket != GroupDay && q.Bucket != GroupHour {
		errs = append(errs, fmt.Errorf("%w: unknown bucket %q (want day, hour)", ErrInvalidQuery, q.Bucket))
	} else if q.Bucket == GroupHour && q.From.Before(q.To) && q.To.Sub(q.From.Truncate(time.Hour)) > MaxHourBuckets*time.Hour {
		errs = append(errs, fmt.Errorf("%w: hour buckets cover at most %d days; use bucket=day", ErrInvalidQuery, MaxHourBuckets/24))
	}
	if q.StackBy != "" {
		errs = append(errs, checkName("stack_by", q.StackBy, SeriesStackNames))
	}
	errs = append(errs, checkN("top", q.Top, MaxSeriesTop))
	return errors.Join(errs...)
}

// Series answers q with one query grouped by bucket and stack dimension,
// folded in Go. Ranking and folding in SQL instead (a query per ranking,
// a CASE per row) made SQLite 1.3-3.7 times slower for every stack of
// BenchmarkUsageAnalytics, a user stack of 600 values included.
func (s *Store) Series(ctx context.Context, q SeriesQuery) (*Series, error) {
	if err := q.Validate(); err != nil {
		return nil, err
	}
	top := cmp.Or(q.Top, DefaultSeriesTop)
	uq := q.UsageQuery
	uq.GroupBy = []string{q.Bucket}
	if q.StackBy != "" {
		uq.GroupBy = append(uq.GroupBy, q.StackBy)
	}
	rows, err := s.Query(ctx, uq)
	if err != nil {
		return nil, err
	}
	out := &Series{Bucket: q.Bucket, StackBy: q.StackBy, Buckets: bucketStarts(q.Bucket, q.From, q.To)}
	stackKey := func(r *UsageRow) string {
		if q.StackBy == "" {
			return ""
		}
		return *r.dim(q.StackBy)
	}
	// Rank the series by their totals over the range.
	totals := map[string]*UsageRow{}
	var order []UsageRow
	for i := range rows {
		r := &rows[i]
		out.Total.addRow(r)
		k := stackKey(r)
		t := totals[k]
		if t == nil {
			t = &UsageRow{}
			if q.StackBy != "" {
				*t.dim(q.StackBy) = k
			}
			totals[k] = t
		}
		mergeRow(t, r)
	}
	for _, t := range totals {
		order = append(order, *t)
	}
	rankRows(order, stackKey)
	line := map[string]int{} // series key → index in out.Lines
	for i := range order {
		k := stackKey(&order[i])
		if i < top {
			line[k] = i
			out.Lines = append(out.Lines, SeriesLine{Key: k})
			continue
		}
		if i == top {
			out.Lines = append(out.Lines, SeriesLine{Key: OtherKey, Other: true})
		}
		line[k] = top
		out.Lines[top].Folded++
	}
	pos := make(map[string]int, len(out.Buckets))
	for i, b := range out.Buckets {
		pos[b] = i
	}
	for i := range out.Lines {
		out.Lines[i].Points = make([]Sums, len(out.Buckets))
	}
	// Rows come ordered by bucket, then key: the kept series' cells are
	// copied, and the folded ones of a bucket merged into one Other cell
	// that follows them.
	var other *UsageRow
	flush := func() {
		if other != nil {
			out.Rows = append(out.Rows, *other)
			other = nil
		}
	}
	for i := range rows {
		r := &rows[i]
		b := *r.dim(q.Bucket)
		p, ok := pos[b]
		if !ok {
			return nil, fmt.Errorf("usage series: bucket %q outside the range", b)
		}
		if other != nil && *other.dim(q.Bucket) != b {
			flush()
		}
		l := line[stackKey(r)]
		out.Lines[l].Points[p].addRow(r)
		out.Lines[l].Total.addRow(r)
		if !out.Lines[l].Other {
			out.Rows = append(out.Rows, *r)
			continue
		}
		if other == nil {
			other = &UsageRow{}
			*other.dim(q.Bucket) = b
			*other.dim(q.StackBy) = OtherKey
		}
		mergeRow(other, r)
	}
	flush()
	return out, nil
}

// TopQuery asks for the costliest values of one dimension.
type TopQuery struct {
	// UsageQuery gives the range and the filters; its GroupBy must be empty.
	UsageQuery
	// By is one of TopByNames.
	By string
	// N is how many rows are listed; 0 means DefaultTopN.
	N int
}

// Top is a ranked list: cost, highest first, then tokens, then the value.
type Top struct {
	By   string     `json:"by"`
	Rows []UsageRow `json:"rows"`
	// Other sums the values after the first N (nil when there are none);
	// Folded says how many.
	Other  *UsageRow `json:"other"`
	Folded int       `json:"folded"`
	// Total is the whole query, equal to the usage API's.
	Total Sums `json:"total"`
}

// Ranking is t's ranking as CacheQuery.Ranked and RankedGroups take it:
// its rows' keys in order, and how many values were ranked.
func (t *Top) Ranking() (keys []string, groups int) {
	keys = make([]string, 0, len(t.Rows))
	for i := range t.Rows {
		keys = append(keys, *t.Rows[i].dim(t.By))
	}
	return keys, len(t.Rows) + t.Folded
}

// Validate reports every problem of q.
func (q TopQuery) Validate() error {
	return errors.Join(q.UsageQuery.Validate(), checkFilters(q.UsageQuery), checkName("by", q.By, TopByNames), checkN("n", q.N, MaxTopN))
}

// Top answers q. Other is the whole query's total less the listed rows.
func (s *Store) Top(ctx context.Context, q TopQuery) (*Top, error) {
	if err := q.Validate(); err != nil {
		return nil, err
	}
	n := cmp.Or(q.N, DefaultTopN)
	uq := q.UsageQuery
	uq.GroupBy = []string{q.By}
	var rows, total []UsageRow
	var groups int
	var err error
	if rankInSQL(q.By) {
		if rows, err = s.queryOpt(ctx, uq, uq.rollupTable(), queryOpt{rank: n, groups: &groups}); err != nil {
			return nil, err
		}
		if total, err = s.Query(ctx, q.UsageQuery); err != nil {
			return nil, err
		}
	} else {
		if total, err = s.Query(ctx, uq); err != nil {
			return nil, err
		}
		rankRows(total, func(r *UsageRow) string { return *r.dim(q.By) })
		groups = len(total)
		rows = slices.Clone(total[:min(n, len(total))])
	}
	out := &Top{By: q.By, Rows: nonNilRows(rows)}
	var t UsageRow
	for i := range total {
		mergeRow(&t, &total[i])
	}
	out.Total.addRow(&t)
	if groups > len(rows) {
		o := t
		for i := range rows {
			subtractRow(&o, &rows[i])
		}
		*o.dim(q.By) = OtherKey
		out.Other, out.Folded = &o, groups-len(rows)
	}
	return out, nil
}

// rankInSQL says whether a dimension's values are ranked and cut to the
// first N by SQL (queryOpt.rank) rather than all fetched and ranked in Go.
// Sessions are unbounded (64,000 in BenchmarkUsageAnalytics' 90 days: SQL
// was 1.3-1.6 times faster, and took the client's CPU from 950 ms to 1 ms
// on PostgreSQL); the other dimensions have hundreds of values at most,
// and a second scan for the total cost more than fetching them all
// (top workspaces 1.4 times slower on SQLite).
func rankInSQL(dim string) bool { return dim == GroupSession }

// subtractRow takes k's sums out of r: what is left of a total once the
// kept rows are listed. The cost stays nil when nothing left was priced.
func subtractRow(r, k *UsageRow) {
	r.Requests -= k.Requests
	for _, b := range metering.Buckets {
		*b.Of(&r.Usage) -= *b.Of(&k.Usage)
	}
	for _, c := range rollupCounts {
		*c.row(r) -= *c.row(k)
	}
	var cost int64
	if r.CostMicroUSD != nil {
		cost = *r.CostMicroUSD
	}
	if k.CostMicroUSD != nil {
		cost -= *k.CostMicroUSD
	}
	r.CostMicroUSD = nil
	if r.PricedRequests > 0 {
		r.CostMicroUSD = &cost
	}
}

// CSVRows are the top list as WriteCSV rows: the ranked rows, then Other.
func (t *Top) CSVRows() []UsageRow {
	if t.Other == nil {
		return t.Rows
	}
	return append(slices.Clip(t.Rows), *t.Other)
}

func nonNilRows(r []UsageRow) []UsageRow {
	if r == nil {
		return []UsageRow{}
	}
	return r
}

// Pricer prices usage as the proxy does (metering.PriceTable.Cost); the
// cache report prices cache writes with it.
type Pricer interface {
	Cost(provider, model, serviceTier string, u metering.Usage) (microUSD *int64, version string)
}

// CacheQuery asks for cache efficiency per project or session.
type CacheQuery struct {
	// UsageQuery gives the range and the filters; its GroupBy must be empty.
	UsageQuery
	// By is one of CacheByNames.
	By string
	// N is how many rows are listed, costliest first; 0 means DefaultTopN.
	N int
	// Ranked, when not nil, is the ranking a Top of the same query, By
	// and N made (its rows' keys, in order), and RankedGroups how many
	// values it ranked (its rows plus Folded): the console's Usage page
	// asks both for sessions, and the ranking is most of either's cost,
	// so it is not made twice. Only for a By that is ranked in SQL.
	Ranked       []string
	RankedGroups int
	// Total, when not nil, is the whole query's row as a Cache of the same
	// UsageQuery by another dimension answered it (it does not depend on
	// By), so ranked dimensions need not sum the range once more.
	Total *CacheRow
}

// CacheRow is the cache efficiency of one project or session.
type CacheRow struct {
	Key      string `json:"key"`
	Requests int64  `json:"requests"`
	// InputTokens is all input: uncached, cache reads, cache writes, other.
	InputTokens      int64 `json:"input_tokens"`
	CacheReadTokens  int64 `json:"cache_read_tokens"`
	CacheWriteTokens int64 `json:"cache_write_tokens"`
	// CacheReadShare is CacheReadTokens ÷ InputTokens, nil without input.
	CacheReadShare *float64 `json:"cache_read_share"`
	// CacheWriteCostMicroUSD prices the cache writes at today's rates of
	// the price table (the records keep only each request's total cost):
	// 0 without cache writes, nil when there were some and none could be
	// priced. CacheWriteUnpricedTokens are the cache-write tokens of models
	// the table does not price, left out of it.
	CacheWriteCostMicroUSD   *int64 `json:"cache_write_cost_micro_usd"`
	CacheWriteUnpricedTokens int64  `json:"cache_write_unpriced_tokens"`
	// CostMicroUSD is what the requests cost (nil: none was priced);
	// UnpricedRequests and MissingUsageRequests as in UsageRow.
	CostMicroUSD         *int64 `json:"cost_micro_usd"`
	UnpricedRequests     int64  `json:"unpriced_requests"`
	MissingUsageRequests int64  `json:"missing_usage_requests"`
}

// Cache is cache efficiency per project or session.
type Cache struct {
	By   string     `json:"by"`
	Rows []CacheRow `json:"rows"`
	// Folded counts the values after the first N; Total covers all.
	Folded int      `json:"folded"`
	Total  CacheRow `json:"total"`
}

// Validate reports every problem of q.
func (q CacheQuery) Validate() error {
	return errors.Join(q.UsageQuery.Validate(), checkFilters(q.UsageQuery), checkName("by", q.By, CacheByNames), checkN("n", q.N, MaxTopN))
}

// cacheProbeTokens is the cache-write count priced to get a model's rate:
// small enough to stay under every long-context threshold (which a range's
// summed tokens would cross), large enough to carry rates of a thousandth
// of a cent per million tokens exactly in micro-USD.
const cacheProbeTokens = 100_000

// Cache answers q, pricing cache writes with p (nil: none is priced).
func (s *Store) Cache(ctx context.Context, q CacheQuery, p Pricer) (*Cache, error) {
	if err := q.Validate(); err != nil {
		return nil, err
	}
	// Sessions are ranked in SQL (rankInSQL), then the cache writes of
	// the kept ones and of the whole query are priced per model: three
	// small answers. Projects are few: one query, ranked in Go.
	n := cmp.Or(q.N, DefaultTopN)
	perModel := []string{GroupProvider, GroupModel, GroupServiceTier}
	var keys []string
	var groups int
	var rows, totals []UsageRow
	if rankInSQL(q.By) {
		if q.Ranked != nil {
			keys, groups = q.Ranked[:min(n, len(q.Ranked))], q.RankedGroups
		} else {
			rq := q.UsageQuery
			rq.GroupBy = []string{q.By}
			ranked, err := s.queryOpt(ctx, rq, rq.rollupTable(), queryOpt{rank: n, groups: &groups})
			if err != nil {
				return nil, err
			}
			for i := range ranked {
				keys = append(keys, *ranked[i].dim(q.By))
			}
		}
		var err error
		kq := q.UsageQuery
		kq.GroupBy = append([]string{q.By}, perModel...)
		if rows, err = s.queryOpt(ctx, kq, kq.rollupTable(), queryOpt{inDim: q.By, in: keys}); err != nil {
			return nil, err
		}
		if q.Total == nil {
			tq := q.UsageQuery
			tq.GroupBy = perModel
			if totals, err = s.Query(ctx, tq); err != nil {
				return nil, err
			}
		}
	} else {
		kq := q.UsageQuery
		kq.GroupBy = append([]string{q.By}, perModel...)
		var err error
		if rows, err = s.Query(ctx, kq); err != nil {
			return nil, err
		}
		// The total is priced per model, as the ranked branch's totals
		// query groups it: pricing per (value, model) rounds each row, and
		// the project and session answers' totals would differ by a few
		// micro-dollars (115 on BenchmarkUsageAnalytics' million records).
		totals = mergeBy(rows, func(r *UsageRow) [3]string { return [3]string{r.Provider, r.Model, r.ServiceTier} })
		byKey := map[string]*UsageRow{}
		var sums []UsageRow
		for i := range rows {
			k := *rows[i].dim(q.By)
			if byKey[k] == nil {
				byKey[k] = &UsageRow{}
				*byKey[k].dim(q.By) = k
			}
			mergeRow(byKey[k], &rows[i])
		}
		for _, r := range byKey {
			sums = append(sums, *r)
		}
		rankRows(sums, func(r *UsageRow) string { return *r.dim(q.By) })
		groups = len(sums)
		for i := range sums[:min(n, len(sums))] {
			keys = append(keys, *sums[i].dim(q.By))
		}
	}
	type rate struct{ w5m, w1h *int64 }
	rates := map[[3]string]rate{}
	rateOf := func(r *UsageRow) rate {
		k := [3]string{r.Provider, r.Model, r.ServiceTier}
		rt, ok := rates[k]
		if !ok && p != nil {
			rt.w5m, _ = p.Cost(r.Provider, r.Model, r.ServiceTier, metering.Usage{CacheWrite5m: cacheProbeTokens})
			rt.w1h, _ = p.Cost(r.Provider, r.Model, r.ServiceTier, metering.Usage{CacheWrite1h: cacheProbeTokens})
			rates[k] = rt
		}
		return rt
	}
	add := func(dst *CacheRow, r *UsageRow) {
		rt := rateOf(r)
		dst.Requests += r.Requests
		dst.InputTokens += r.InputTotal()
		dst.CacheReadTokens += r.CacheRead
		dst.CacheWriteTokens += r.CacheWrite5m + r.CacheWrite1h
		dst.UnpricedRequests += r.UnpricedRequests
		dst.MissingUsageRequests += r.MissingUsageRequests
		addCost(&dst.CostMicroUSD, r.CostMicroUSD)
		for _, w := range []struct {
			tokens int64
			rate   *int64
		}{{r.CacheWrite5m, rt.w5m}, {r.CacheWrite1h, rt.w1h}} {
			switch {
			case w.tokens == 0:
			case w.rate == nil:
				dst.CacheWriteUnpricedTokens += w.tokens
			default:
				c := scaleCost(w.tokens, *w.rate)
				addCost(&dst.CacheWriteCostMicroUSD, &c)
			}
		}
	}
	out := &Cache{By: q.By, Rows: make([]CacheRow, len(keys)), Folded: groups - len(keys)}
	at := map[string]int{}
	for i, k := range keys {
		out.Rows[i].Key = k
		at[k] = i
	}
	for i := range rows {
		r := &rows[i]
		if j, ok := at[*r.dim(q.By)]; ok {
			add(&out.Rows[j], r)
		}
	}
	for i := range out.Rows {
		out.Rows[i].finish()
	}
	if rankInSQL(q.By) && q.Total != nil {
		out.Total = *q.Total
		return out, nil
	}
	for i := range totals {
		add(&out.Total, &totals[i])
	}
	out.Total.finish()
	return out, nil
}

// finish derives the share, and a known zero cache-write cost when every
// cache-write token (if any) was priced.
func (c *CacheRow) finish() {
	if c.CacheWriteCostMicroUSD == nil && c.CacheWriteUnpricedTokens == 0 {
		c.CacheWriteCostMicroUSD = new(int64)
	}
	if c.InputTokens > 0 {
		v := float64(c.CacheReadTokens) / float64(c.InputTokens)
		c.CacheReadShare = &v
	}
}

// scaleCost is tokens at the rate of cacheProbeTokens costing probe
// micro-USD, rounded half up, in 128 bits so no sum overflows.
func scaleCost(tokens, probe int64) int64 {
	if tokens <= 0 || probe <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(uint64(tokens), uint64(probe))
	lo, carry := bits.Add64(lo, cacheProbeTokens/2, 0)
	hi += carry
	if hi >= cacheProbeTokens { // beyond int64 micro-USD: clamp
		return 1<<63 - 1
	}
	q, _ := bits.Div64(hi, lo, cacheProbeTokens)
	return int64(min(q, 1<<63-1))
}

// mergeBy sums rows that share key's value into one row each, keeping the
// key's columns as the first row of each gave them.
func mergeBy[K comparable](rows []UsageRow, key func(*UsageRow) K) []UsageRow {
	at := map[K]int{}
	var out []UsageRow
	for i := range rows {
		k := key(&rows[i])
		j, ok := at[k]
		if !ok {
			j = len(out)
			at[k] = j
			out = append(out, UsageRow{Provider: rows[i].Provider, Model: rows[i].Model, ServiceTier: rows[i].ServiceTier})
		}
		mergeRow(&out[j], &rows[i])
	}
	return out
}
