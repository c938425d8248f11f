package ledger

import (
	"encoding/csv"
	"fmt"
	"io"
	"strconv"
	"time"
)

// The analytics endpoints and the console read the same parameters through
// these parsers, so a page's query and its API twin cannot drift.

// UsageFilterParams are the range and filter parameters of every usage
// endpoint: from and to as ParseUsageQuery takes them, then one id each.
var UsageFilterParams = []string{"from", "to", "project", "user", "workspace", "harness", "model", "service_tier", "session"}

// Parameters of the analytics endpoints beyond UsageFilterParams.
var (
	SeriesParams = []string{"bucket", "stack_by", "top"}
	TopParams    = []string{"by", "n"}
	CacheParams  = []string{"by", "n"}
)

// ParseUsageFilters builds the range and filters from get (a query
// parameter's value, "" when absent).
func ParseUsageFilters(get func(string) string, now time.Time) (UsageQuery, error) {
	q, err := ParseUsageQuery(get("from"), get("to"), "", now)
	if err != nil {
		return q, err
	}
	q.Project, q.User, q.Workspace = get("project"), get("user"), get("workspace")
	q.Harness, q.Model = get("harness"), get("model")
	q.ServiceTier, q.Session = get("service_tier"), get("session")
	return q, nil
}

// ParseSeriesQuery reads a series query: bucket (day, the default, or
// hour), stack_by (model by default; "none" for one series) and top.
func ParseSeriesQuery(get func(string) string, now time.Time) (SeriesQuery, error) {
	uq, err := ParseUsageFilters(get, now)
	if err != nil {
		return SeriesQuery{}, err
	}
	q := SeriesQuery{UsageQuery: uq, Bucket: or(get("bucket"), GroupDay), StackBy: or(get("stack_by"), GroupModel)}
	if q.StackBy == "none" {
		q.StackBy = ""
	}
	if q.Top, err = parseCount("top", get("top")); err != nil {
		return q, err
	}
	return q, q.Validate()
}

// ParseTopQuery reads a top list: by (workspace by default) and n.
func ParseTopQuery(get func(string) string, now time.Time) (TopQuery, error) {
	uq, err := ParseUsageFilters(get, now)
	if err != nil {
		return TopQuery{}, err
	}
	q := TopQuery{UsageQuery: uq, By: or(get("by"), GroupWorkspace)}
	if q.N, err = parseCount("n", get("n")); err != nil {
		return q, err
	}
	return q, q.Validate()
}

// ParseCacheQuery reads a cache report: by (project by default) and n.
func ParseCacheQuery(get func(string) string, now time.Time) (CacheQuery, error) {
	uq, err := ParseUsageFilters(get, now)
	if err != nil {
		return CacheQuery{}, err
	}
	q := CacheQuery{UsageQuery: uq, By: or(get("by"), GroupProject)}
	if q.N, err = parseCount("n", get("n")); err != nil {
		return q, err
	}
	return q, q.Validate()
}

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func parseCount(name, v string) (int, error) {
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%w: %s %q is not a whole number", ErrInvalidQuery, name, v)
	}
	return n, nil
}

// WriteCacheCSV writes the cache report as CSV: a header, a row per value
// of By, then a total row with By empty and "total" in its own column.
// Unknown values (no input, no price) are empty cells, never 0.
func WriteCacheCSV(w io.Writer, c *Cache) error {
	cw := csv.NewWriter(w)
	cw.Write([]string{c.By, "row", "requests", "input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_read_share",
		"cache_write_cost_micro_usd", "cache_write_cost_usd", "cache_write_unpriced_tokens", "cost_micro_usd", "cost_usd",
		"unpriced_requests", "missing_usage_requests"})
	line := func(r *CacheRow, kind string) {
		i := func(v int64) string { return strconv.FormatInt(v, 10) }
		share := ""
		if r.CacheReadShare != nil {
			share = strconv.FormatFloat(*r.CacheReadShare, 'f', 6, 64)
		}
		money := func(p *int64) []string {
			if p == nil {
				return []string{"", ""}
			}
			return []string{i(*p), formatMicroUSD(*p)}
		}
		rec := []string{r.Key, kind, i(r.Requests), i(r.InputTokens), i(r.CacheReadTokens), i(r.CacheWriteTokens), share}
		rec = append(rec, money(r.CacheWriteCostMicroUSD)...)
		rec = append(rec, i(r.CacheWriteUnpricedTokens))
		rec = append(rec, money(r.CostMicroUSD)...)
		cw.Write(append(rec, i(r.UnpricedRequests), i(r.MissingUsageRequests)))
	}
	for i := range c.Rows {
		line(&c.Rows[i], "")
	}
	line(&c.Total, "total")
	cw.Flush()
	return cw.Error()
}
