package ledger

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// DefaultUsageWindow is the range of a usage query that names no start.
const DefaultUsageWindow = 7 * 24 * time.Hour

// ParseUsageQuery builds a UsageQuery from the text the CLI and the HTTP API
// receive, so both accept exactly the same input. from and to are RFC 3339
// times or YYYY-MM-DD dates (UTC). from is inclusive. A to date is
// inclusive of that whole UTC day; a to time is an exclusive instant. Empty
// from means DefaultUsageWindow before to; empty to means now. groupBy is a
// comma list. Errors quote the text as given, not the instant it became.
func ParseUsageQuery(from, to, groupBy string, now time.Time) (UsageQuery, error) {
	var q UsageQuery
	var err error
	q.To = now.UTC()
	if to != "" {
		if q.To, err = parseUsageTime(to, true); err != nil {
			return q, err
		}
	}
	q.From = q.To.Add(-DefaultUsageWindow)
	if from != "" {
		if q.From, err = parseUsageTime(from, false); err != nil {
			return q, err
		}
	}
	if !q.From.Before(q.To) {
		return q, fmt.Errorf("%w: from %s is not before to %s", ErrInvalidQuery, typedOr(from, "(to minus 7 days)"), typedOr(to, "(now)"))
	}
	for _, g := range strings.Split(groupBy, ",") {
		if g = strings.TrimSpace(g); g != "" {
			q.GroupBy = append(q.GroupBy, g)
		}
	}
	if err := q.Validate(); err != nil {
		return q, err
	}
	return q, nil
}

// typedOr quotes what the caller typed, or names the default it got.
func typedOr(typed, def string) string {
	if typed == "" {
		return def
	}
	return strconv.Quote(typed)
}

func parseUsageTime(s string, end bool) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UTC(), nil
	}
	t, err := time.Parse("2006-01-02", s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: %q is neither a date (2006-01-02) nor an RFC 3339 time", ErrInvalidQuery, s)
	}
	if end {
		t = t.AddDate(0, 0, 1) // the end of that whole day
	}
	return t, nil
}
