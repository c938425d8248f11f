package console

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/metering/ledger"
)

// usageDays is the range the page shows when none is asked: the last
// seven whole UTC days, today included, so it is read from the rollup.
const usageDays = 7

// The page's parameters are the series endpoint's; the CSV links of its
// tables add the top and cache endpoints' "by". All are strict, as the
// admin API's: a misspelt filter must not silently widen the figures.
var (
	usagePageParams  = slices.Concat(ledger.UsageFilterParams, ledger.SeriesParams)
	usageTopParams   = slices.Concat(ledger.UsageFilterParams, ledger.TopParams)
	usageCacheParams = slices.Concat(ledger.UsageFilterParams, ledger.CacheParams)
)

// usageValues is the request's query, checked against allowed and
// trimmed, empty values dropped and the default range filled in: the
// canonical query the page shows and every CSV link carries.
func usageValues(q url.Values, allowed []string, now time.Time) (url.Values, error) {
	out := url.Values{}
	var probs []string
	for k, vs := range q {
		switch {
		case !slices.Contains(allowed, k):
			probs = append(probs, fmt.Sprintf("unknown parameter %q", k))
		case len(vs) > 1:
			probs = append(probs, fmt.Sprintf("parameter %q given more than once", k))
		default:
			if v := strings.TrimSpace(vs[0]); v != "" {
				out.Set(k, v)
			}
		}
	}
	if len(probs) > 0 {
		slices.Sort(probs)
		return out, fmt.Errorf("%w: %s", ledger.ErrInvalidQuery, strings.Join(probs, "; "))
	}
	if out.Get("from") == "" && out.Get("to") == "" {
		today := now.UTC()
		out.Set("to", today.Format(time.DateOnly))
		out.Set("from", today.AddDate(0, 0, 1-usageDays).Format(time.DateOnly))
	}
	return out, nil
}

// money is a cost as the page shows it: a dollar amount, "unpriced" when
// requests had tokens but no price (never $0), "unknown" when their usage
// is missing, "—" without metered requests. Micro is the exact micro-USD
// ("" when unknown) for data attributes the browser tests compare.
type money struct {
	Text, Micro string
	// Note adds what a known amount leaves out: "+ 2 unpriced".
	Note     string
	Unpriced int64
	Known    bool
}

func moneyOf(cost *int64, requests, unpriced, missing int64) money {
	m := money{Unpriced: unpriced}
	var notes []string
	if cost != nil && unpriced > 0 {
		notes = append(notes, fmt.Sprintf("+ %s unpriced", plural(unpriced, "request")))
	}
	if cost != nil && missing > 0 {
		notes = append(notes, fmt.Sprintf("+ %s without usage", plural(missing, "request")))
	}
	m.Note = strings.Join(notes, ", ")
	switch {
	case cost != nil:
		m.Text, m.Micro, m.Known = governance.FormatUSD(*cost), strconv.FormatInt(*cost, 10), true
	case unpriced > 0:
		m.Text = "unpriced"
	case missing > 0:
		m.Text = "unknown"
	case requests > 0:
		m.Text = "—" // not metered calls (rejected, failed): nothing was billed
	default:
		m.Text = "—"
	}
	return m
}

func sumsMoney(s ledger.Sums) money {
	return moneyOf(s.CostMicroUSD, s.Requests, s.UnpricedRequests, s.MissingUsageRequests)
}

func plural(n int64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return formatCount(n) + " " + what + "s"
}

// formatCount writes n with thousands separators.
func formatCount(n int64) string {
	if n < 0 {
		return "-" + formatCount(-n)
	}
	if n < 1000 {
		return strconv.FormatInt(n, 10)
	}
	return formatCount(n/1000) + fmt.Sprintf(",%03d", n%1000)
}

type choice struct{ Value, Label string }

type textField struct{ Name, Label, Value string }

// usageForm is the filter form, filled from the canonical query.
type usageForm struct {
	From, To, Harness string
	FromDate, ToDate  bool // plain dates: a date picker can show them
	Bucket, StackBy   string
	// ServiceTier and Top have no field of their own; set by a link, they
	// ride along hidden so the form keeps the query.
	ServiceTier, Top string
	// Texts are the free-text filters, in form order.
	Texts     []textField
	Stacks    []choice
	Harnesses []string
	// HarnessOther is a harness filter the registry does not list (a
	// link's, or a harness since removed), kept as an option of its own.
	HarnessOther bool
	// HourDays is the longest range an hourly chart covers.
	HourDays int
}

type totalView struct {
	Cost                                            money
	Requests, InputTokens, OutputTokens             string
	RequestsN, InputN, OutputN, UnpricedN, MissingN int64
}

type topRow struct {
	Key, Label, Link   string
	Cost               money
	Requests, Tokens   string
	RequestsN, TokensN int64
}

type topView struct {
	ID, Title, By, CSV string
	Rows               []topRow
	Other              *topRow
	Folded             int
}

type cacheRowView struct {
	Key, Label, Link                       string
	Requests, Input, CacheRead, CacheWrite string
	Share, ShareValue                      string
	WriteCost                              money
	UnpricedWriteTokens                    string
	Cost                                   money
}

type cacheView struct {
	ID, Title, By, CSV string
	Rows               []cacheRowView
	Total              cacheRowView
	Folded             int
}

type usageData struct {
	Form         usageForm
	Shown        bool // the query was answered
	Range        string
	Total        totalView
	Cost, Tokens chartView
	Legend       []legendItem
	StackLabel   string
	CSV          string
	Tops         []topView   // workspaces, sessions
	Caches       []cacheView // projects, sessions
}

var stackLabels = map[string]string{
	ledger.GroupModel: "model", ledger.GroupProject: "project", ledger.GroupHarness: "harness",
	ledger.GroupUser: "user", ledger.GroupWorkspace: "workspace", ledger.GroupProvider: "provider",
}

func (c *Console) usageForm(v url.Values) usageForm {
	f := usageForm{From: v.Get("from"), To: v.Get("to"), Harness: v.Get("harness"), ServiceTier: v.Get("service_tier"), Top: v.Get("top"),
		HourDays: ledger.MaxHourBuckets / 24, Bucket: cmp.Or(v.Get("bucket"), ledger.GroupDay), StackBy: cmp.Or(v.Get("stack_by"), ledger.GroupModel)}
	_, err := time.Parse(time.DateOnly, f.From)
	f.FromDate = err == nil
	_, err = time.Parse(time.DateOnly, f.To)
	f.ToDate = err == nil
	for _, t := range []textField{{"project", "Project", ""}, {"user", "User", ""}, {"workspace", "Workspace", ""}, {"model", "Model", ""}, {"session", "Session", ""}} {
		t.Value = v.Get(t.Name)
		f.Texts = append(f.Texts, t)
	}
	for _, s := range ledger.SeriesStackNames {
		f.Stacks = append(f.Stacks, choice{s, stackLabels[s]})
	}
	f.Stacks = append(f.Stacks, choice{"none", "nothing (one series)"})
	for _, h := range c.cfg.Registry.Current().Harnesses() {
		f.Harnesses = append(f.Harnesses, h.Name)
	}
	f.HarnessOther = f.Harness != "" && !slices.Contains(f.Harnesses, f.Harness)
	return f
}

// usage serves the Usage page: the series chart of cost and of tokens,
// top workspaces and sessions, and cache efficiency, all for one query.
func (c *Console) usage(w http.ResponseWriter, r *http.Request, s session) {
	p := page{Title: "Usage", Nav: "usage", SignedIn: true, CSRF: s.csrf}
	if c.cfg.Usage == nil {
		p.Message = "This tollgate has no usage store, so there is nothing to show."
		c.render(w, r, http.StatusOK, "message", p)
		return
	}
	v, err := usageValues(r.URL.Query(), usagePageParams, c.cfg.now())
	d := usageData{Form: c.usageForm(v)}
	p.Data = &d
	if err == nil {
		err = c.fillUsage(r.Context(), v, &d)
	}
	if errors.Is(err, ledger.ErrInvalidQuery) {
		p.Error = err.Error()
		c.render(w, r, http.StatusBadRequest, "usage", p)
		return
	}
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.render(w, r, http.StatusOK, "usage", p)
}

// fillUsage asks the five answers of the page at once: on PostgreSQL they
// run side by side, so the page takes its slowest query's time, not the
// sum (SQLite has one connection and takes them in turn).
func (c *Console) fillUsage(ctx context.Context, v url.Values, d *usageData) error {
	sq, err := ledger.ParseSeriesQuery(v.Get, c.cfg.now())
	if err != nil {
		return err
	}
	uq := sq.UsageQuery
	topBy := []string{ledger.GroupWorkspace, ledger.GroupSession}
	cacheBy := []string{ledger.GroupProject, ledger.GroupSession}
	var (
		sr     *ledger.Series
		tops   = make([]*ledger.Top, len(topBy))
		caches = make([]*ledger.Cache, len(cacheBy))
		errs   = make([]error, 1+len(topBy)+len(cacheBy))
		wg     sync.WaitGroup
	)
	wg.Go(func() { sr, errs[0] = c.cfg.Usage.Series(ctx, sq) })
	for i, by := range topBy {
		if by == ledger.GroupSession {
			continue // with the cache per session, below
		}
		wg.Go(func() { tops[i], errs[1+i] = c.cfg.Usage.Top(ctx, ledger.TopQuery{UsageQuery: uq, By: by}) })
	}
	projectCache := make(chan struct{})
	for i, by := range cacheBy {
		wg.Go(func() {
			if by == ledger.GroupProject {
				defer close(projectCache) // answered or failed: never leave the session query waiting
			}
			cq := ledger.CacheQuery{UsageQuery: uq, By: by}
			if by == ledger.GroupSession {
				// Ranking the sessions is most of both answers' cost
				// (over 90 days, 64,000 sessions): the top list ranks
				// them once and the cache rows reuse its ranking, and
				// the range's total cache row is the project answer's.
				j := slices.Index(topBy, ledger.GroupSession)
				if tops[j], errs[1+j] = c.cfg.Usage.Top(ctx, ledger.TopQuery{UsageQuery: uq, By: by}); errs[1+j] != nil {
					return
				}
				cq.Ranked, cq.RankedGroups = tops[j].Ranking()
				<-projectCache
				if p := caches[slices.Index(cacheBy, ledger.GroupProject)]; p != nil {
					cq.Total = &p.Total
				}
			}
			caches[i], errs[1+len(topBy)+i] = c.cfg.Usage.Cache(ctx, cq, c.cfg.Pricer)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	d.Shown = true
	d.Range = uq.From.UTC().Format(time.RFC3339) + " to " + uq.To.UTC().Format(time.RFC3339)
	d.CSV = Prefix + "usage/series.csv?" + v.Encode()
	d.StackLabel = cmp.Or(stackLabels[sr.StackBy], "nothing")
	t := sr.Total
	d.Total = totalView{Cost: sumsMoney(t), Requests: formatCount(t.Requests), InputTokens: formatCount(t.InputTokens), OutputTokens: formatCount(t.OutputTokens),
		RequestsN: t.Requests, InputN: t.InputTokens, OutputN: t.OutputTokens, UnpricedN: t.UnpricedRequests, MissingN: t.MissingUsageRequests}
	d.Legend = legendOf(sr)
	d.Cost = stackChart(sr, costKind, d.StackLabel)
	d.Tokens = stackChart(sr, tokensKind, d.StackLabel)
	filters := filterValues(v)
	for i, top := range tops {
		d.Tops = append(d.Tops, topViewOf(top, "Top "+topBy[i]+"s by cost", v, filters))
	}
	for i, ca := range caches {
		d.Caches = append(d.Caches, cacheViewOf(ca, "Cache efficiency per "+cacheBy[i], v, filters))
	}
	return nil
}

// filterValues is v without the chart's own parameters: what a top or
// cache CSV link carries beside its "by".
func filterValues(v url.Values) url.Values {
	out := url.Values{}
	for _, k := range ledger.UsageFilterParams {
		if x := v.Get(k); x != "" {
			out.Set(k, x)
		}
	}
	return out
}

func with(v url.Values, k, x string) string {
	n := url.Values{}
	for key, vs := range v {
		n[key] = vs
	}
	n.Set(k, x)
	return n.Encode()
}

// keyLabel names a dimension's value; requests without one read "(none)".
func keyLabel(k string) string {
	if k == "" {
		return "(none)"
	}
	return k
}

func rowKey(by string, r *ledger.UsageRow) string {
	switch by {
	case ledger.GroupWorkspace:
		return r.Workspace
	case ledger.GroupSession:
		return r.Session
	case ledger.GroupProject:
		return r.Project
	case ledger.GroupUser:
		return r.User
	case ledger.GroupModel:
		return r.Model
	case ledger.GroupHarness:
		return r.Harness
	}
	return ""
}

func topRowOf(by string, r *ledger.UsageRow) topRow {
	tok := r.InputTotal() + r.Output
	k := rowKey(by, r)
	return topRow{Key: k, Label: keyLabel(k), Cost: moneyOf(r.CostMicroUSD, r.Requests, r.UnpricedRequests, r.MissingUsageRequests),
		Requests: formatCount(r.Requests), Tokens: formatCount(tok), RequestsN: r.Requests, TokensN: tok}
}

func topViewOf(t *ledger.Top, title string, page, filters url.Values) topView {
	tv := topView{ID: "usage-top-" + t.By + "s", Title: title, By: t.By, Folded: t.Folded,
		CSV: Prefix + "usage/top.csv?" + with(filters, "by", t.By)}
	for i := range t.Rows {
		row := topRowOf(t.By, &t.Rows[i])
		row.Link = Prefix + "usage?" + with(page, t.By, row.Key)
		if row.Key == "" {
			row.Link = "" // an empty filter is no filter
		}
		tv.Rows = append(tv.Rows, row)
	}
	if t.Other != nil {
		o := topRowOf(t.By, t.Other)
		o.Label = fmt.Sprintf("%s more", formatCount(int64(t.Folded)))
		tv.Other = &o
	}
	return tv
}

func cacheRowOf(r *ledger.CacheRow) cacheRowView {
	v := cacheRowView{Key: r.Key, Label: keyLabel(r.Key), Requests: formatCount(r.Requests), Input: formatCount(r.InputTokens),
		CacheRead: formatCount(r.CacheReadTokens), CacheWrite: formatCount(r.CacheWriteTokens), Share: "—",
		Cost: moneyOf(r.CostMicroUSD, r.Requests, r.UnpricedRequests, r.MissingUsageRequests)}
	if r.CacheReadShare != nil {
		v.Share = strconv.FormatFloat(*r.CacheReadShare*100, 'f', 1, 64) + " %"
		v.ShareValue = strconv.FormatFloat(*r.CacheReadShare, 'f', 6, 64)
	}
	switch {
	case r.CacheWriteCostMicroUSD != nil:
		v.WriteCost = money{Text: governance.FormatUSD(*r.CacheWriteCostMicroUSD), Micro: strconv.FormatInt(*r.CacheWriteCostMicroUSD, 10), Known: true}
		if r.CacheWriteUnpricedTokens > 0 {
			v.WriteCost.Note = "+ " + plural(r.CacheWriteUnpricedTokens, "token") + " unpriced"
		}
	default:
		v.WriteCost = money{Text: "unpriced"}
	}
	if r.CacheWriteUnpricedTokens > 0 {
		v.UnpricedWriteTokens = formatCount(r.CacheWriteUnpricedTokens)
	}
	return v
}

func cacheViewOf(ca *ledger.Cache, title string, page, filters url.Values) cacheView {
	cv := cacheView{ID: "usage-cache-" + ca.By + "s", Title: title, By: ca.By, Folded: ca.Folded,
		CSV: Prefix + "usage/cache.csv?" + with(filters, "by", ca.By), Total: cacheRowOf(&ca.Total)}
	for i := range ca.Rows {
		row := cacheRowOf(&ca.Rows[i])
		if row.Key != "" {
			row.Link = Prefix + "usage?" + with(page, ca.By, row.Key)
		}
		cv.Rows = append(cv.Rows, row)
	}
	return cv
}

// usageCSV serves a CSV of exactly a query the page shows: the same
// canonical parameters, the same store function, the admin API's writer.
func usageCSV[Q, R any](c *Console, allowed []string, name string, parse func(func(string) string, time.Time) (Q, error),
	answer func(context.Context, Q) (R, error), write func(io.Writer, R) error) http.Handler {
	return c.authed(func(w http.ResponseWriter, r *http.Request, s session) {
		msg := page{Title: "Bad query", Nav: "usage", SignedIn: true, CSRF: s.csrf}
		if c.cfg.Usage == nil {
			msg.Title, msg.Message = "Not found", "This tollgate has no usage store."
			c.render(w, r, http.StatusNotFound, "message", msg)
			return
		}
		now := c.cfg.now()
		var buf bytes.Buffer
		v, err := usageValues(r.URL.Query(), allowed, now)
		if err == nil {
			var q Q
			if q, err = parse(v.Get, now); err == nil {
				var out R
				if out, err = answer(r.Context(), q); err == nil {
					err = write(&buf, out)
				}
			}
		}
		if errors.Is(err, ledger.ErrInvalidQuery) {
			msg.Message = err.Error()
			c.render(w, r, http.StatusBadRequest, "message", msg)
			return
		}
		if err != nil {
			c.fail(w, r, s, err)
			return
		}
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		w.Header().Set("Content-Disposition", `attachment; filename="tollgate-usage-`+name+`.csv"`)
		_, _ = w.Write(buf.Bytes())
	})
}

func (c *Console) usageRoutes(m *http.ServeMux) {
	m.Handle("GET "+Prefix+"usage", c.authed(c.usage))
	m.Handle("GET "+Prefix+"usage/series.csv", usageCSV(c, usagePageParams, "series", ledger.ParseSeriesQuery,
		func(ctx context.Context, q ledger.SeriesQuery) (*ledger.Series, error) {
			return c.cfg.Usage.Series(ctx, q)
		},
		func(buf io.Writer, sr *ledger.Series) error { return ledger.WriteCSV(buf, sr.GroupBy(), sr.Rows) }))
	m.Handle("GET "+Prefix+"usage/top.csv", usageCSV(c, usageTopParams, "top", ledger.ParseTopQuery,
		func(ctx context.Context, q ledger.TopQuery) (*ledger.Top, error) { return c.cfg.Usage.Top(ctx, q) },
		func(buf io.Writer, t *ledger.Top) error { return ledger.WriteCSV(buf, []string{t.By}, t.CSVRows()) }))
	m.Handle("GET "+Prefix+"usage/cache.csv", usageCSV(c, usageCacheParams, "cache", ledger.ParseCacheQuery,
		func(ctx context.Context, q ledger.CacheQuery) (*ledger.Cache, error) {
			return c.cfg.Usage.Cache(ctx, q, c.cfg.Pricer)
		},
		ledger.WriteCacheCSV))
}
