package console

import (
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/metering/ledger"
)

// The Usage page's charts are inline SVG computed here and drawn by the
// template: no script, nothing fetched, and a table of the same figures
// under each for screen readers and keyboards.

// seriesColours are the stacked series' fills, in rank order, then the
// "(other)" fill. Each has at least 3:1 contrast with the white page
// (WCAG 1.4.11, non-text; TestSeriesColoursContrast checks) and adjacent
// segments are parted by a white line, so no two need tell apart by hue.
var seriesColours = []string{"#1f5fa8", "#c24e00", "#2b7a3b", "#8a3fa0", "#b0243a", "#00727a", "#7a5230", "#a8306e"}

const otherColour = "#5f6368"

// unknownColour draws the hatch that marks a bucket with unpriced
// requests (cost chart) or requests without usage (token chart).
const unknownColour = "#8a1410"

// Chart geometry, in viewBox units.
const (
	chartW, chartH = 960, 300
	plotL, plotR   = 84, 948
	plotT, plotB   = 16, 256
	markH          = 8
	maxXLabels     = 10
	barFill        = 0.72 // of a bucket's slot
)

type legendItem struct {
	Key, Label, Colour string
	Other              bool
	Cost               money
	Tokens             string
}

type segView struct {
	X, Y, W, H float64
	Colour     string
	Title      string
}

type tickView struct {
	X, Y  float64
	Label string
}

type chartView struct {
	ID, Title, Unit, Desc, HatchID, MarkLabel string
	Marked                                    bool
	Segs                                      []segView
	Marks                                     []segView
	YTicks, XLabels                           []tickView
	Table                                     chartTable
}

// chartTable is the chart as a table: a row per bucket, a column per
// series, then the bucket's total.
type chartTable struct {
	Series []string
	Rows   []chartRow
	Total  []chartCell
}

type chartRow struct {
	Bucket string
	Cells  []chartCell // one per series, then the total
}

type chartCell struct {
	Series, Text, Note string
	Total              bool   // the bucket's (or the range's) total, not a series
	Micro              string // cost chart: exact micro-USD, "" unknown
	Tokens             int64  // tokens chart
	Requests           int64
	Unpriced, Missing  int64
}

func lineColour(i int, l ledger.SeriesLine) string {
	if l.Other {
		return otherColour
	}
	return seriesColours[i%len(seriesColours)]
}

func lineLabel(l ledger.SeriesLine) string {
	switch {
	case l.Other:
		return fmt.Sprintf("other (%s more)", formatCount(int64(l.Folded)))
	case l.Key == "" && len(l.Points) > 0:
		return "(none)"
	}
	return l.Key
}

func legendOf(sr *ledger.Series) []legendItem {
	var out []legendItem
	for i, l := range sr.Lines {
		lab := lineLabel(l)
		if sr.StackBy == "" {
			lab = "all usage"
		}
		out = append(out, legendItem{Key: l.Key, Label: lab, Colour: lineColour(i, l), Other: l.Other,
			Cost: sumsMoney(l.Total), Tokens: formatCount(l.Total.InputTokens + l.Total.OutputTokens)})
	}
	return out
}

// bucketLabel is an axis label: "Dec 1" for a day, "Dec 1 14:00" for an hour.
func bucketLabel(bucket, b string) string {
	if bucket == ledger.GroupHour {
		if t, err := time.Parse(time.RFC3339, b); err == nil {
			return t.Format("Jan 2 15:04")
		}
		return b
	}
	if t, err := time.Parse(time.DateOnly, b); err == nil {
		return t.Format("Jan 2")
	}
	return b
}

// niceMax is the axis top and tick step for a largest value of max: a step
// of 1, 2 or 5 × 10^k giving at most five ticks.
func niceMax(max float64) (top, step float64) {
	if max <= 0 {
		return 1, 1
	}
	raw := max / 4
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		step = m * mag
		if step >= raw {
			break
		}
	}
	return math.Ceil(max/step) * step, step
}

// compactCount is a token axis label: 950, 1.5k, 12M.
func compactCount(v float64) string {
	for _, u := range []struct {
		div float64
		suf string
	}{{1e9, "G"}, {1e6, "M"}, {1e3, "k"}} {
		if v >= u.div {
			return strconv.FormatFloat(v/u.div, 'f', -1, 64) + u.suf
		}
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

// chartKind is what a chart plots: value per point, its axis labels,
// which buckets are marked (mark says why, "" for none) and the table's
// cell. Title and Desc take the bucket and the stack dimension.
type chartKind struct {
	ID, Unit, HatchID, MarkLabel string
	Title, Desc                  func(bucket, stack string) string
	value                        func(ledger.Sums) float64
	tick                         func(float64) string
	mark                         func(ledger.Sums) string
	cell                         func(s ledger.Sums, series string) chartCell
}

var costKind = chartKind{
	ID: "usage-chart", Unit: "USD", HatchID: "usage-hatch-cost",
	MarkLabel: "unpriced requests in the bucket: their cost is unknown, not $0",
	Title:     func(b, st string) string { return "Cost per " + b + " by " + st },
	Desc: func(b, st string) string {
		return "Stacked bars of cost in US dollars per " + b + ", one colour per " + st + "; hatched marks flag buckets with unpriced requests. The table below lists every value."
	},
	value: func(s ledger.Sums) float64 {
		if s.CostMicroUSD == nil {
			return 0
		}
		return float64(*s.CostMicroUSD)
	},
	tick: func(v float64) string { return governance.FormatUSD(int64(math.Round(v))) },
	mark: func(s ledger.Sums) string {
		if s.UnpricedRequests == 0 {
			return ""
		}
		return plural(s.UnpricedRequests, "unpriced request") + ", cost unknown"
	},
	cell: func(s ledger.Sums, series string) chartCell {
		m := sumsMoney(s)
		return chartCell{Series: series, Text: m.Text, Note: m.Note, Micro: m.Micro, Requests: s.Requests, Unpriced: s.UnpricedRequests, Missing: s.MissingUsageRequests}
	},
}

var tokensKind = chartKind{
	ID: "usage-tokens-chart", Unit: "tokens", HatchID: "usage-hatch-tokens",
	MarkLabel: "requests without usage data in the bucket: their tokens are unknown",
	Title:     func(b, st string) string { return "Tokens (input and output) per " + b + " by " + st },
	Desc: func(b, st string) string {
		return "Stacked bars of input plus output tokens per " + b + ", one colour per " + st + "; hatched marks flag buckets with requests whose usage is unknown. The table below lists every value."
	},
	value: func(s ledger.Sums) float64 { return float64(s.InputTokens + s.OutputTokens) },
	tick:  compactCount,
	mark: func(s ledger.Sums) string {
		if s.MissingUsageRequests == 0 {
			return ""
		}
		return plural(s.MissingUsageRequests, "request") + " without usage data, tokens unknown"
	},
	cell: func(s ledger.Sums, series string) chartCell {
		c := chartCell{Series: series, Tokens: s.InputTokens + s.OutputTokens, Requests: s.Requests, Missing: s.MissingUsageRequests}
		c.Text = formatCount(c.Tokens)
		if s.Requests == 0 {
			c.Text = "—"
		}
		if s.MissingUsageRequests > 0 {
			c.Note = "+ " + plural(s.MissingUsageRequests, "request") + " without usage"
		}
		return c
	},
}

// stackChart lays out k's stacked bars, one per bucket, a segment per
// series, and its table.
func stackChart(sr *ledger.Series, k chartKind, stack string) chartView {
	n := len(sr.Buckets)
	cv := chartView{ID: k.ID, Unit: k.Unit, HatchID: k.HatchID, MarkLabel: k.MarkLabel, Title: k.Title(sr.Bucket, stack), Desc: k.Desc(sr.Bucket, stack)}
	totals := make([]ledger.Sums, n)
	maxV := 0.0
	for p := range n {
		sum := 0.0
		for _, l := range sr.Lines {
			sum += k.value(l.Points[p])
			addSums(&totals[p], l.Points[p])
		}
		maxV = math.Max(maxV, sum)
	}
	top, step := niceMax(maxV)
	scale := float64(plotB-plotT) / top
	for v := 0.0; v <= top+step/2; v += step {
		cv.YTicks = append(cv.YTicks, tickView{X: plotL - 6, Y: plotB - v*scale, Label: k.tick(v)})
	}
	slot := float64(plotR-plotL) / float64(max(n, 1))
	w := math.Max(slot*barFill, 1)
	every := max((n+maxXLabels-1)/maxXLabels, 1)
	for p, b := range sr.Buckets {
		x := plotL + float64(p)*slot + (slot-w)/2
		y := float64(plotB)
		for i, l := range sr.Lines {
			v := k.value(l.Points[p])
			if v <= 0 {
				continue
			}
			h := v * scale
			y -= h
			cv.Segs = append(cv.Segs, segView{X: x, Y: y, W: w, H: h, Colour: lineColour(i, l), Title: fmt.Sprintf("%s · %s: %s", b, lineLabel(l), k.tick(v))})
		}
		if why := k.mark(totals[p]); why != "" {
			cv.Marked = true
			cv.Marks = append(cv.Marks, segView{X: x, Y: y - markH - 1, W: w, H: markH, Title: b + ": " + why})
		}
		if p%every == 0 {
			cv.XLabels = append(cv.XLabels, tickView{X: x + w/2, Y: plotB + 18, Label: bucketLabel(sr.Bucket, b)})
		}
	}
	cv.Table = tableOf(sr, k.cell)
	return cv
}

// tableOf is the chart's table; a chart of one series (stacked by
// nothing) has only the total column.
func tableOf(sr *ledger.Series, cell func(ledger.Sums, string) chartCell) chartTable {
	var t chartTable
	lines := sr.Lines
	if sr.StackBy == "" {
		lines = nil
	}
	for _, l := range lines {
		t.Series = append(t.Series, lineLabel(l))
	}
	for p, b := range sr.Buckets {
		row := chartRow{Bucket: b}
		var total ledger.Sums
		for _, l := range sr.Lines {
			addSums(&total, l.Points[p])
		}
		for _, l := range lines {
			row.Cells = append(row.Cells, cell(l.Points[p], l.Key))
		}
		row.Cells = append(row.Cells, totalCell(cell(total, "")))
		t.Rows = append(t.Rows, row)
	}
	for _, l := range lines {
		t.Total = append(t.Total, cell(l.Total, l.Key))
	}
	t.Total = append(t.Total, totalCell(cell(sr.Total, "")))
	return t
}

func totalCell(c chartCell) chartCell {
	c.Total = true
	return c
}

func addSums(dst *ledger.Sums, s ledger.Sums) {
	dst.Requests += s.Requests
	dst.InputTokens += s.InputTokens
	dst.OutputTokens += s.OutputTokens
	dst.PricedRequests += s.PricedRequests
	dst.UnpricedRequests += s.UnpricedRequests
	dst.MissingUsageRequests += s.MissingUsageRequests
	if s.CostMicroUSD != nil {
		v := *s.CostMicroUSD
		if dst.CostMicroUSD != nil {
			v += *dst.CostMicroUSD
		}
		dst.CostMicroUSD = &v
	}
}

// px writes a chart coordinate with one decimal.
func px(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }
