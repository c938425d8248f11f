package console

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"html"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/ledger"
	"github.com/tollgate/tollgate/proxy"
)

// usageDay0 is the first of the four seeded days; the env's clock is
// 2026-12-01 09:00, the day after the last.
var usageDay0 = time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)

const (
	pricedModel   = "claude-sonnet-4-5" // in the built-in price table
	unpricedModel = "mystery-model"     // in no price table
)

// seedUsage stores 4 days × 6 records through the writer's InsertBatch
// (so the rollups are the writer's): three projects, two users, four
// workspaces, two harnesses, three models of which one is unpriced, cache
// reads and writes, and one record without usage.
func seedUsage(t *testing.T, st *ledger.Store) {
	t.Helper()
	models := []string{pricedModel, "gpt-5", unpricedModel}
	var recs []*metering.Record
	for d := range 4 {
		for i := range 6 {
			cost := int64(1000*(d+1) + 37*i)
			r := &metering.Record{RequestID: "u" + strconv.Itoa(d) + strconv.Itoa(i), Start: usageDay0.AddDate(0, 0, d).Add(time.Duration(2+3*i) * time.Hour),
				Project: []string{"pa", "pb", "pc"}[i%3], User: []string{"u1", "u2"}[i%2], Workspace: "w" + strconv.Itoa((d+i)%4),
				Harness: []string{"claude-code", "codex"}[i%2], Provider: []string{"anthropic", "openai", "anthropic"}[i%3], ModelServed: models[i%3],
				Session: "s" + strconv.Itoa(d) + "-" + strconv.Itoa(i%3), Status: 200, Outcome: metering.OutcomeOK, Source: metering.SourceUpstream,
				Usage:        &metering.Usage{InputUncached: int64(100 + 10*i + d), CacheRead: int64(50 * (i % 3)), CacheWrite5m: int64(20 * (1 - i%2)), Output: int64(30 + i)},
				CostMicroUSD: &cost}
			if models[i%3] == unpricedModel {
				r.CostMicroUSD, r.Unpriced = nil, true
			}
			recs = append(recs, r)
		}
	}
	recs = append(recs, &metering.Record{RequestID: "missing", Start: usageDay0.Add(26 * time.Hour), Project: "pa", User: "u1", Workspace: "w1",
		Harness: "codex", Provider: "openai", ModelServed: "gpt-5", Session: "s1-0", Status: 200, Outcome: metering.OutcomeOK, Source: metering.SourceMissing})
	if _, err := st.InsertBatch(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
}

type nopSink struct{}

func (nopSink) Record(*metering.Record) {}

// usageEnv is the console on a real usage store on SQLite, served as
// tollgate serves it: mounted on a real admin listener beside the admin
// API, so a test reads the page and GET /admin/v1/usage from one server.
type usageEnv struct {
	*env
	admin string // the admin listener's base URL
}

func (e *env) withUsage() {
	e.t.Helper()
	st, err := ledger.OpenStore(context.Background(), e.db)
	if err != nil {
		e.t.Fatal(err)
	}
	seedUsage(e.t, st)
	e.usage, e.pricer = st, metering.DefaultPrices()
	e.con, e.srv = e.console(testAdminToken)
}

func newUsageEnv(t *testing.T) *usageEnv {
	t.Helper()
	e := newEnv(t)
	e.withUsage()
	srv, err := proxy.New(proxy.Config{Registry: e.reg, Auth: e.svc, Resolver: e.svc, Admin: e.svc, Usage: e.usage,
		Sink: nopSink{}, AdminToken: testAdminToken, Console: e.con, Pricer: metering.DefaultPrices()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.ServeAdmin(ln) }()
	// Closing the listener ends ServeAdmin; Shutdown would race, in
	// fasthttp, with a finished request's context still watched by
	// database/sql (RequestCtx.Done against ShutdownWithContext).
	t.Cleanup(func() { _ = ln.Close() })
	return &usageEnv{env: e, admin: "http://" + ln.Addr().String()}
}

// adminUsage is GET /admin/v1/usage's rows for the query q.
type adminRow struct {
	Day, Model, Project string
	Requests            int64  `json:"requests"`
	InputTotal          int64  `json:"input_total"`
	Output              int64  `json:"output"`
	CacheRead           int64  `json:"cache_read"`
	Cost                *int64 `json:"cost_micro_usd"`
	Unpriced            int64  `json:"unpriced_requests"`
}

func (e *usageEnv) adminUsage(q string) []adminRow {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.admin+"/admin/v1/usage?"+q, nil)
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("admin usage %s: %d %s", q, resp.StatusCode, b)
	}
	var rows []adminRow
	if err := json.Unmarshal(b, &rows); err != nil {
		e.t.Fatal(err)
	}
	return rows
}

// sumOf is the rows' total as the page shows it: requests, input, output,
// cost ("" when nothing was priced) and unpriced requests.
func sumOf(rows []adminRow) (req, in, out int64, cost string, unpriced int64) {
	var c *int64
	for _, r := range rows {
		req, in, out, unpriced = req+r.Requests, in+r.InputTotal, out+r.Output, unpriced+r.Unpriced
		if r.Cost != nil {
			c = cmpOr(c, 0)
			*c += *r.Cost
		}
	}
	if c != nil {
		cost = strconv.FormatInt(*c, 10)
	}
	return req, in, out, cost, unpriced
}

func cmpOr(p *int64, v int64) *int64 {
	if p == nil {
		return &v
	}
	return p
}

func attr(t *testing.T, body, id, name string) string {
	t.Helper()
	m := regexp.MustCompile(`id="` + regexp.QuoteMeta(id) + `"[^>]*? ` + name + `="([^"]*)"`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no %s on #%s", name, id)
	}
	return html.UnescapeString(m[1])
}

// pageTotals reads the totals the page shows, in sumOf's form.
func pageTotals(t *testing.T, body string) (req, in, out int64, cost string, unpriced int64) {
	t.Helper()
	n := func(id string) int64 {
		v, err := strconv.ParseInt(attr(t, body, id, "data-value"), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	return n("usage-total-requests"), n("usage-total-input-tokens"), n("usage-total-output-tokens"),
		attr(t, body, "usage-total-cost", "data-micro-usd"), n("usage-total-unpriced")
}

func (b *browser) page(path string) string {
	b.t.Helper()
	a := b.get(path)
	if a.status != http.StatusOK {
		b.t.Fatalf("%s: %d\n%s", path, a.status, a.body)
	}
	return a.body
}

// TestUsagePageTotalsEqualAdminUsage: for each filter set, on whole-day
// ranges (the rollup) and an instant range (the raw records), by day and
// by hour, the page's totals are GET /admin/v1/usage's rows summed, read
// from the same tollgate's admin listener.
func TestUsagePageTotalsEqualAdminUsage(t *testing.T) {
	e := newUsageEnv(t)
	b := newBrowser(t, e.admin)
	b.signIn(testAdminToken)
	all := url.Values{"from": {"2026-11-27"}, "to": {"2026-11-30"}}
	var unfiltered string
	for _, f := range []url.Values{
		{},
		{"project": {"pa"}},
		{"model": {"gpt-5"}},
		{"harness": {"codex"}, "user": {"u1"}},
		{"workspace": {"w1"}, "bucket": {"hour"}, "stack_by": {"project"}},
		{"session": {"s1-0"}},
		{"from": {"2026-11-28T05:30:00Z"}, "to": {"2026-11-29T12:00:00Z"}, "stack_by": {"user"}},
		{"from": {"2026-11-28"}, "to": {"2026-11-28"}, "bucket": {"hour"}},
	} {
		q := url.Values{}
		for k, v := range all {
			q[k] = v
		}
		for k, v := range f {
			q[k] = v
		}
		body := b.page("/ui/usage?" + q.Encode())
		aq := url.Values{}
		for k, v := range q {
			if k != "bucket" && k != "stack_by" {
				aq[k] = v
			}
		}
		wr, wi, wo, wc, wu := sumOf(e.adminUsage(aq.Encode()))
		gr, gi, gout, gc, gu := pageTotals(t, body)
		if gr != wr || gi != wi || gout != wo || gc != wc || gu != wu {
			t.Errorf("%s: page req=%d in=%d out=%d cost=%q unpriced=%d; /admin/v1/usage req=%d in=%d out=%d cost=%q unpriced=%d",
				q.Encode(), gr, gi, gout, gc, gu, wr, wi, wo, wc, wu)
		}
		if wr == 0 {
			t.Errorf("%s: the filter selects nothing, so the comparison proves nothing", q.Encode())
		}
		// The top lists (with their "more" row) and the cache tables' totals
		// are the same query's: they add up to the same cost.
		for _, id := range []string{"usage-top-workspaces", "usage-top-sessions"} {
			if got := listCost(t, body, id); got != wc {
				t.Errorf("%s: #%s adds up to %q, /admin/v1/usage %q", q.Encode(), id, got, wc)
			}
		}
		for _, id := range []string{"usage-cache-projects", "usage-cache-sessions"} {
			m := regexp.MustCompile(`data-total="true">.*<td data-micro-usd="([^"]*)">`).FindStringSubmatch(table(t, body, id))
			if m == nil || m[1] != wc {
				t.Errorf("%s: #%s total cost %v, /admin/v1/usage %q", q.Encode(), id, m, wc)
			}
		}
		if len(f) == 0 {
			unfiltered = gc
		} else if gc == unfiltered && f.Get("from") == "" {
			t.Errorf("%s: filtered cost %s equals the unfiltered one", q.Encode(), gc)
		}
	}
	if unfiltered == "" {
		t.Fatal("the seeded range has no cost")
	}
}

// table is the HTML of the table with id.
func table(t *testing.T, body, id string) string {
	t.Helper()
	i := strings.Index(body, `<table id="`+id+`"`)
	if i < 0 {
		t.Fatalf("no table #%s", id)
	}
	return body[i : i+strings.Index(body[i:], "</table>")]
}

// listCost sums a top list's cost column, its "more" row included; ""
// when nothing in it was priced.
func listCost(t *testing.T, body, id string) string {
	t.Helper()
	var sum *int64
	for _, m := range regexp.MustCompile(`</th><td data-micro-usd="([^"]*)">`).FindAllStringSubmatch(table(t, body, id), -1) {
		if m[1] == "" {
			continue
		}
		v, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		sum = cmpOr(sum, 0)
		*sum += v
	}
	if sum == nil {
		return ""
	}
	return strconv.FormatInt(*sum, 10)
}

// cell is one figure of a chart table.
type cell struct {
	micro, requests, unpriced string
	text                      string
}

var (
	tagRe  = regexp.MustCompile(`<[^>]*>`)
	rowRe  = regexp.MustCompile(`(?s)<tr data-bucket="([^"]*)">(.*?)</tr>`)
	cellRe = regexp.MustCompile(`(?s)<td (?:data-total="true"|data-series="([^"]*)") data-micro-usd="([^"]*)" data-requests="(\d+)" data-unpriced="(\d+)">(.*?)</td>`)
)

// totalCol is costTable's key of a row's total column.
const totalCol = "\x00total"

// costTable reads the cost chart's table: bucket → series → cell, the
// series totalCol being the bucket's total and the bucket "" the totals row.
func costTable(t *testing.T, body string) map[string]map[string]cell {
	t.Helper()
	tbl := table(t, body, "usage-chart-table")
	out := map[string]map[string]cell{}
	for _, r := range rowRe.FindAllStringSubmatch(tbl, -1) {
		m := map[string]cell{}
		for _, c := range cellRe.FindAllStringSubmatch(r[2], -1) {
			k := html.UnescapeString(c[1])
			if strings.HasPrefix(c[0], `<td data-total`) {
				k = totalCol
			}
			m[k] = cell{micro: c[2], requests: c[3], unpriced: c[4], text: tagRe.ReplaceAllString(c[5], "")}
		}
		out[html.UnescapeString(r[1])] = m
	}
	return out
}

func legend(body string) []string {
	var out []string
	for _, m := range regexp.MustCompile(`<li data-series="([^"]*)">`).FindAllStringSubmatch(body, -1) {
		out = append(out, html.UnescapeString(m[1]))
	}
	return out
}

// TestUsageStackingAndFilters: stacking by project gives one series per
// project whose totals are the admin API's per project; by model, the
// unpriced model's column says "unpriced" and its cost is unknown, never
// $0; an hourly chart has a row per hour; a filter narrows every figure.
func TestUsageStackingAndFilters(t *testing.T) {
	e := newUsageEnv(t)
	b := newBrowser(t, e.admin)
	b.signIn(testAdminToken)
	rng := "from=2026-11-27&to=2026-11-30"

	body := b.page("/ui/usage?" + rng + "&stack_by=project")
	if got := strings.Join(legend(body), ","); got != "pa,pb,pc" && got != "pb,pa,pc" && got != "pa,pc,pb" && got != "pb,pc,pa" {
		t.Errorf("legend by project: %s", got)
	}
	tbl := costTable(t, body)
	for _, r := range e.adminUsage(rng + "&group_by=project") {
		_, _, _, cost, _ := sumOf([]adminRow{r})
		if got := tbl[""][r.Project]; got.micro != cost || got.requests != strconv.FormatInt(r.Requests, 10) {
			t.Errorf("project %s: page %+v, admin cost %s requests %d", r.Project, got, cost, r.Requests)
		}
	}
	if len(tbl) != 4+1 {
		t.Errorf("%d rows in the day table, want 4 days and the total", len(tbl))
	}

	body = b.page("/ui/usage?" + rng + "&stack_by=model")
	tbl = costTable(t, body)
	unp := tbl[""][unpricedModel]
	if unp.micro != "" || unp.unpriced == "0" || !strings.HasPrefix(unp.text, "unpriced") {
		t.Errorf("the unpriced model's total reads %+v", unp)
	}
	for day, row := range tbl {
		if c := row[unpricedModel]; c.requests != "0" && (strings.Contains(c.text, "$0") || c.micro != "") {
			t.Errorf("%s: the unpriced model's cost shows as %q (micro %q)", day, c.text, c.micro)
		}
	}
	if !strings.Contains(body, `fill="url(#usage-hatch-cost)"`) {
		t.Error("the cost chart does not mark the buckets with unpriced requests")
	}
	if tot := attr(t, body, "usage-total-cost", "data-unpriced-requests"); tot != "8" {
		t.Errorf("total unpriced requests %s, want 8", tot)
	}
	only := b.page("/ui/usage?" + rng + "&model=" + unpricedModel)
	if attr(t, only, "usage-total-cost", "data-micro-usd") != "" || !regexp.MustCompile(`id="usage-total-cost"[^>]*><span class="money unknown">unpriced</span>`).MatchString(only) {
		t.Error("a range of only unpriced requests does not read unpriced")
	}

	hourly := costTable(t, b.page("/ui/usage?"+rng+"&bucket=hour&stack_by=none"))
	if len(hourly) != 4*24+1 {
		t.Errorf("%d rows in the hour table, want 96 hours and the total", len(hourly))
	}
	if c := hourly["2026-11-27T02:00:00Z"][totalCol]; c.micro != "1000" || c.requests != "1" {
		t.Errorf("02:00 on the first day: %+v, want the one 1000 µ$ request", c)
	}

	filtered := costTable(t, b.page("/ui/usage?"+rng+"&project=pb&stack_by=project"))
	if len(filtered[""]) != 2 { // pb and the total
		t.Errorf("filter project=pb still stacks %d series", len(filtered[""])-1)
	}
	_, _, _, want, _ := sumOf(e.adminUsage(rng + "&project=pb"))
	if filtered[""]["pb"].micro != want {
		t.Errorf("pb: %+v, admin %s", filtered[""]["pb"], want)
	}
}

func (b *browser) csv(path string) [][]string {
	b.t.Helper()
	a := b.get(path)
	if a.status != http.StatusOK || !strings.HasPrefix(a.header.Get("Content-Type"), "text/csv") {
		b.t.Fatalf("%s: %d %s\n%s", path, a.status, a.header.Get("Content-Type"), a.body)
	}
	recs, err := csv.NewReader(strings.NewReader(a.body)).ReadAll()
	if err != nil {
		b.t.Fatal(err)
	}
	return recs
}

func href(t *testing.T, body, id string) string {
	t.Helper()
	m := regexp.MustCompile(`id="` + id + `"[^>]* href="([^"]+)"`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no link #%s", id)
	}
	return html.UnescapeString(m[1])
}

// TestUsageCSVEqualsPage: the CSV link carries the page's query, and its
// rows are the chart table's non-empty cells, figure for figure; the top
// and cache tables' links give their rows.
func TestUsageCSVEqualsPage(t *testing.T) {
	e := newUsageEnv(t)
	b := newBrowser(t, e.admin)
	b.signIn(testAdminToken)
	path := "/ui/usage?from=2026-11-27&to=2026-11-30&stack_by=project&user=u1&top=2"
	body := b.page(path)
	link := href(t, body, "usage-csv")
	lu, _ := url.Parse(link)
	pu, _ := url.Parse(path)
	if lu.Path != "/ui/usage/series.csv" || lu.Query().Encode() != pu.Query().Encode() {
		t.Fatalf("CSV link %s is not the page's query %s", link, path)
	}
	tbl := costTable(t, body)
	recs := b.csv(link)
	head := recs[0]
	col := map[string]int{}
	for i, h := range head {
		col[h] = i
	}
	cells := 0
	for _, r := range recs[1:] {
		got := tbl[r[col["day"]]][r[col["project"]]]
		if got.micro != r[col["cost_micro_usd"]] || got.requests != r[col["requests"]] || got.unpriced != r[col["unpriced_requests"]] {
			t.Errorf("CSV %v, page %+v", r, got)
		}
		cells++
	}
	shown := 0
	for day, row := range tbl {
		for series, c := range row {
			if day != "" && series != totalCol && c.requests != "0" {
				shown++
			}
		}
	}
	if cells != shown || cells == 0 {
		t.Errorf("CSV has %d rows, the page %d non-empty cells", cells, shown)
	}
	if _, ok := tbl[""][ledger.OtherKey]; !ok {
		t.Error("top=2 of three projects folds no other series")
	}

	top := b.csv(href(t, body, "usage-top-workspaces-csv"))
	sec := table(t, body, "usage-top-workspaces")
	rows := regexp.MustCompile(`<tr data-key="([^"]*)"><th scope="row">.*?</th><td data-micro-usd="([^"]*)">`).FindAllStringSubmatch(sec, -1)
	if len(rows) == 0 || len(rows) > len(top)-1 {
		t.Fatalf("top workspaces: %d page rows, %d CSV rows", len(rows), len(top)-1)
	}
	for i, r := range rows {
		if top[i+1][0] != html.UnescapeString(r[1]) || top[i+1][len(ledgerCostCol(top[0]))] != r[2] {
			t.Errorf("top row %d: page %v, CSV %v", i, r[1:], top[i+1])
		}
	}

	cache := b.csv(href(t, body, "usage-cache-projects-csv"))
	want := e.adminUsage("from=2026-11-27&to=2026-11-30&user=u1&group_by=project")
	for _, r := range cache[1:] {
		if r[1] == "total" {
			continue
		}
		for _, a := range want {
			if a.Project == r[0] {
				share, _ := strconv.ParseFloat(r[6], 64)
				if math.Abs(share-float64(a.CacheRead)/float64(a.InputTotal)) > 1e-6 {
					t.Errorf("project %s cache share %s, admin %d/%d", a.Project, r[6], a.CacheRead, a.InputTotal)
				}
				if !strings.Contains(body, `data-share="`+r[6]+`"`) {
					t.Errorf("project %s: share %s not on the page", a.Project, r[6])
				}
			}
		}
	}
}

// ledgerCostCol is the head up to cost_micro_usd: its length is that
// column's index.
func ledgerCostCol(head []string) []string {
	for i, h := range head {
		if h == "cost_micro_usd" {
			return head[:i]
		}
	}
	return head
}

// TestUsageCacheWriteCost: cache writes of a priced model are priced at
// the price table's rate; those of an unpriced model read "unpriced".
func TestUsageCacheWriteCost(t *testing.T) {
	e := newUsageEnv(t)
	b := newBrowser(t, e.admin)
	b.signIn(testAdminToken)
	body := b.page("/ui/usage?from=2026-11-27&to=2026-11-30&model=" + pricedModel)
	// 8 records of the priced model, 20 cache-write tokens on each with i even (i=0: every day).
	want, _ := metering.DefaultPrices().Cost("anthropic", pricedModel, "", metering.Usage{CacheWrite5m: 4 * 20})
	if want == nil {
		t.Fatal("the price table does not price the model's cache writes")
	}
	sec := table(t, body, "usage-cache-projects")
	total := regexp.MustCompile(`data-total="true">.*?<td data-micro-usd="([^"]*)">`).FindStringSubmatch(sec)
	if total == nil || total[1] != strconv.FormatInt(*want, 10) {
		t.Errorf("cache-write cost %v, want %d", total, *want)
	}
	body = b.page("/ui/usage?from=2026-11-27&to=2026-11-30&model=" + unpricedModel)
	sec = table(t, body, "usage-cache-projects")
	if m := regexp.MustCompile(`data-total="true">.*?<td data-micro-usd="([^"]*)"><span class="money unknown">unpriced</span>`).FindStringSubmatch(sec); m == nil || m[1] != "" {
		t.Errorf("an unpriced model's cache writes do not read unpriced:\n%s", sec[:min(len(sec), 2000)])
	}
}

// TestUsageRefusesBadQueries: a misspelt or repeated parameter, or an
// hourly chart too long to read, is a 400 naming it, with the form kept.
func TestUsageRefusesBadQueries(t *testing.T) {
	e := newUsageEnv(t)
	b := newBrowser(t, e.admin)
	b.signIn(testAdminToken)
	for path, want := range map[string]string{
		"/ui/usage?projet=pa":                                 `unknown parameter &#34;projet&#34;`,
		"/ui/usage?project=pa&project=pb":                     `&#34;project&#34; given more than once`,
		"/ui/usage?from=2026-10-01&to=2026-11-30&bucket=hour": "hour buckets cover at most " + strconv.Itoa(ledger.MaxHourBuckets/24) + " days",
		"/ui/usage?stack_by=colour":                           `unknown stack_by &#34;colour&#34;`,
		"/ui/usage/series.csv?from=yesterday":                 "neither a date",
		"/ui/usage/top.csv?by=credential":                     `unknown by &#34;credential&#34;`,
		"/ui/usage/cache.csv?from=2026-11-27&bucket=day":      `unknown parameter &#34;bucket&#34;`,
	} {
		a := b.get(path)
		if a.status != http.StatusBadRequest || !strings.Contains(a.body, want) {
			t.Errorf("%s: %d, want 400 with %q\n%s", path, a.status, want, a.body)
		}
		if strings.HasPrefix(path, "/ui/usage?") && !strings.Contains(a.body, `id="usage-filter-form"`) {
			t.Errorf("%s: the form is not shown again", path)
		}
	}
	// Signed out, the page and its CSV send to sign-in.
	anon := newBrowser(t, e.admin)
	for _, p := range []string{"/ui/usage", "/ui/usage/series.csv"} {
		if a := anon.get(p); a.status != http.StatusSeeOther || a.location != "/ui/signin" {
			t.Errorf("%s signed out: %d %s", p, a.status, a.location)
		}
	}
}

// TestUsageDefaultRange: without a range the page shows the last seven
// whole UTC days, today included, and its CSV link names them.
func TestUsageDefaultRange(t *testing.T) {
	e := newUsageEnv(t)
	b := newBrowser(t, e.admin)
	b.signIn(testAdminToken)
	body := b.page("/ui/usage")
	if got := href(t, body, "usage-csv"); got != "/ui/usage/series.csv?from=2026-11-25&to=2026-12-01" {
		t.Errorf("default CSV link %s", got)
	}
	if got := len(costTable(t, body)); got != 7+1 {
		t.Errorf("%d rows, want 7 days and the total", got)
	}
}

// contrast is the WCAG contrast ratio of a #rrggbb colour with white.
func contrast(hex string) float64 { return contrastRatio(hex, "#ffffff") }

func TestSeriesColoursContrast(t *testing.T) {
	if c := contrast("#777777"); c < 4.4 || c > 4.6 {
		t.Fatalf("contrast of #777 with white is %.2f, want about 4.48", c)
	}
	seen := map[string]bool{}
	for _, c := range append(append([]string{}, seriesColours...), otherColour, unknownColour) {
		if r := contrast(c); r < 3 {
			t.Errorf("%s: contrast %.2f with white, want at least 3", c, r)
		}
		if seen[c] {
			t.Errorf("%s used twice", c)
		}
		seen[c] = true
	}
}
