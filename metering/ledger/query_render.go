package ledger

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/tollgate/tollgate/metering"
)

// The renderers take the query's GroupBy so that exactly the grouped
// dimensions become columns (an empty user id is still a column when
// grouping by user). Costs are printed as exact decimals from micro-USD,
// never through a float; an unknown cost is empty/null/"-", never 0.

// usageMetric is one numeric column of the rendered output.
type usageMetric struct {
	name string
	get  func(*UsageRow) int64
}

// usageMetrics are requests, the token buckets and input_total after the
// last input bucket.
var usageMetrics = func() []usageMetric {
	ms := []usageMetric{{"requests", func(r *UsageRow) int64 { return r.Requests }}}
	last := 0
	for _, b := range metering.Buckets {
		ms = append(ms, usageMetric{b.Name, func(r *UsageRow) int64 { return *b.Of(&r.Usage) }})
		if b.Input {
			last = len(ms)
		}
	}
	total := usageMetric{"input_total", func(r *UsageRow) int64 { return r.InputTotal() }}
	return slices.Insert(ms, last, total)
}()

// usageCounts are the request counters after the cost.
var usageCounts = func() []usageMetric {
	ms := make([]usageMetric, len(rollupCounts))
	for i, c := range rollupCounts {
		ms[i] = usageMetric{c.column, func(r *UsageRow) int64 { return *c.row(r) }}
	}
	return ms
}()

// tableMetrics are the terminal table's numbers: requests, then the
// buckets summed by their Table column, in order of first appearance.
var tableMetrics = func() []usageMetric {
	ms := []usageMetric{usageMetrics[0]}
	var names []string
	for _, b := range metering.Buckets {
		if !slices.Contains(names, b.Table) {
			names = append(names, b.Table)
		}
	}
	for _, name := range names {
		ms = append(ms, usageMetric{name, func(r *UsageRow) int64 {
			var n int64
			for _, b := range metering.Buckets {
				if b.Table == name {
					n += *b.Of(&r.Usage)
				}
			}
			return n
		}})
	}
	return ms
}()

// formatMicroUSD renders micro-USD as an exact decimal with six places.
func formatMicroUSD(micro int64) string {
	sign := ""
	u := uint64(micro)
	if micro < 0 {
		sign, u = "-", uint64(-micro)
	}
	return fmt.Sprintf("%s%d.%06d", sign, u/1e6, u%1e6)
}

func checkGroupBy(groupBy []string) error {
	var r UsageRow
	for _, g := range groupBy {
		if r.dim(g) == nil {
			return fmt.Errorf("%w: unknown group_by %q", ErrInvalidQuery, g)
		}
	}
	return nil
}

// WriteJSON writes rows as a JSON array of objects: the groupBy dimensions,
// the metrics, cost_micro_usd and cost_usd (a decimal string; both null
// when nothing was priced).
func WriteJSON(w io.Writer, groupBy []string, rows []UsageRow) error {
	if err := checkGroupBy(groupBy); err != nil {
		return err
	}
	bw := bufio.NewWriter(w)
	bw.WriteString("[")
	for i := range rows {
		r := &rows[i]
		if i > 0 {
			bw.WriteString(",")
		}
		bw.WriteString("\n  {")
		sep := ""
		field := func(k string, v any) {
			b, _ := json.Marshal(v)
			fmt.Fprintf(bw, "%s%q: %s", sep, k, b)
			sep = ", "
		}
		for _, g := range groupBy {
			field(g, *r.dim(g))
		}
		for _, m := range usageMetrics {
			field(m.name, m.get(r))
		}
		if r.CostMicroUSD != nil {
			field("cost_micro_usd", *r.CostMicroUSD)
			field("cost_usd", formatMicroUSD(*r.CostMicroUSD))
		} else {
			field("cost_micro_usd", nil)
			field("cost_usd", nil)
		}
		for _, m := range usageCounts {
			field(m.name, m.get(r))
		}
		bw.WriteString("}")
	}
	if len(rows) > 0 {
		bw.WriteString("\n")
	}
	bw.WriteString("]\n")
	return bw.Flush()
}

// WriteCSV writes a header row and one line per row: the groupBy
// dimensions, the metrics, cost_micro_usd and cost_usd (empty when nothing
// was priced) and the request counters.
func WriteCSV(w io.Writer, groupBy []string, rows []UsageRow) error {
	if err := checkGroupBy(groupBy); err != nil {
		return err
	}
	cw := csv.NewWriter(w)
	head := append([]string(nil), groupBy...)
	for _, m := range usageMetrics {
		head = append(head, m.name)
	}
	head = append(head, "cost_micro_usd", "cost_usd")
	for _, m := range usageCounts {
		head = append(head, m.name)
	}
	cw.Write(head)
	for i := range rows {
		r := &rows[i]
		rec := make([]string, 0, len(head))
		for _, g := range groupBy {
			rec = append(rec, *r.dim(g))
		}
		for _, m := range usageMetrics {
			rec = append(rec, strconv.FormatInt(m.get(r), 10))
		}
		if r.CostMicroUSD != nil {
			rec = append(rec, strconv.FormatInt(*r.CostMicroUSD, 10), formatMicroUSD(*r.CostMicroUSD))
		} else {
			rec = append(rec, "", "")
		}
		for _, m := range usageCounts {
			rec = append(rec, strconv.FormatInt(m.get(r), 10))
		}
		cw.Write(rec)
	}
	cw.Flush()
	return cw.Error()
}

// WriteTable writes rows as aligned text for a terminal (`tollgate usage`):
// dimensions left-aligned, numbers right-aligned with thousands separators,
// cost in USD ("-" when nothing was priced), and a total line when there is
// more than one row. The unpriced and no_usage columns count requests whose
// cost or tokens are unknown and so absent from the sums; unmetered counts
// requests that were never metered calls (rejected, failed upstream,
// count_tokens). A row of only such requests without a model says why in
// the model column: (rejected) or (unmetered), not (none).
func WriteTable(w io.Writer, groupBy []string, rows []UsageRow) error {
	if err := checkGroupBy(groupBy); err != nil {
		return err
	}
	head := append([]string(nil), groupBy...)
	nums := tableMetrics
	for _, m := range nums {
		head = append(head, m.name)
	}
	head = append(head, "cost_usd", "unpriced", "no_usage", "unmetered")
	cells := [][]string{head}
	line := func(r *UsageRow, dims []string) {
		c := append([]string(nil), dims...)
		for _, m := range nums {
			c = append(c, groupDigits(m.get(r)))
		}
		cost := "-"
		if r.CostMicroUSD != nil {
			cost = formatMicroUSD(*r.CostMicroUSD)
		}
		c = append(c, cost, groupDigits(r.UnpricedRequests), groupDigits(r.MissingUsageRequests), groupDigits(r.UnmeteredRequests))
		cells = append(cells, c)
	}
	var total UsageRow
	var totalCost int64
	for i := range rows {
		r := &rows[i]
		dims := make([]string, len(groupBy))
		for j, g := range groupBy {
			dims[j] = emptyLabel(g, *r.dim(g), r)
		}
		line(r, dims)
		total.add(r)
		if r.CostMicroUSD != nil {
			totalCost += *r.CostMicroUSD
		}
	}
	if len(rows) > 1 && len(groupBy) > 0 {
		if total.PricedRequests > 0 {
			total.CostMicroUSD = &totalCost
		}
		dims := make([]string, len(groupBy))
		dims[0] = "total"
		line(&total, dims)
	}
	width := make([]int, len(head))
	for _, c := range cells {
		for j, v := range c {
			width[j] = max(width[j], len(v))
		}
	}
	bw := bufio.NewWriter(w)
	for _, c := range cells {
		var b strings.Builder
		for j, v := range c {
			if j > 0 {
				b.WriteString("  ")
			}
			pad := strings.Repeat(" ", width[j]-len(v))
			if j < len(groupBy) {
				b.WriteString(v + pad)
			} else {
				b.WriteString(pad + v)
			}
		}
		bw.WriteString(strings.TrimRight(b.String(), " ") + "\n")
	}
	if len(rows) == 0 {
		bw.WriteString("(no usage in range)\n")
	}
	return bw.Flush()
}

// emptyLabel is how the table shows dimension g's value v of row r: an
// empty value as (none), except a model left empty because no request of
// the row was a metered call.
func emptyLabel(g, v string, r *UsageRow) string {
	switch {
	case v != "":
		return v
	case g == GroupModel && r.RejectedRequests == r.Requests:
		return "(rejected)"
	case g == GroupModel && r.UnmeteredRequests == r.Requests:
		return "(unmetered)"
	}
	return "(none)"
}

// add accumulates o's sums into r (the table's total line).
func (r *UsageRow) add(o *UsageRow) {
	r.Requests += o.Requests
	r.Usage.Add(&o.Usage)
	for _, c := range rollupCounts {
		*c.row(r) += *c.row(o)
	}
}

// groupDigits renders n with thousands separators.
func groupDigits(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
