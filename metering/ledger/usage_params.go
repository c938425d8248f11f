package ledger

import (
	"fmt"
	"strings"
	"time"
)

// DefaultUsageWindow is the range of a usage query that names no start.
const DefaultUsageWindow = 7 * 24 * time.Hour

// ParseUsageQuery builds a UsageQuery from the text the CLI and the HTTP API
// receive, so both accept exactly the same input. from and to are RFC 3339
// times or YYYY-MM-DD dates (UTC midnight); to is exclusive, and a date
// given as to includes that whole day. Empty from means DefaultUsageWindow
// before now; empty to means now. groupBy is a comma list.
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

func parseUsageTime(s string, end bool) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UTC(), nil
	}
	t, err := time.Parse("2006-01-02", s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: %q is neither a date (2006-01-02) nor an RFC 3339 time", ErrInvalidQuery, s)
	}
	if end {
		t = t.AddDate(0, 0, 1)
	}
	return t, nil
}
