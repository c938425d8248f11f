package proxy

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"io"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/ledger"
)

// TestAdminUsageAnalytics: the Usage page's endpoints on a real metering
// store: series, top and cache totals equal GET /admin/v1/usage for the
// same filters (rollup and raw ranges), the CSV is the JSON's query,
// unpriced cost stays null, and a misspelt or repeated parameter is a 400
// that names it.
func TestAdminUsageAnalytics(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(t.TempDir(), "usage.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	st, err := ledger.OpenStore(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	day := time.Date(2026, 5, 4, 0, 0, 0, 0, time.UTC)
	var recs []*metering.Record
	for i := range 60 {
		cost := int64(100 + i*7)
		r := &metering.Record{
			RequestID: "a" + strconv.Itoa(i), Start: day.Add(time.Duration(i*53) * time.Minute),
			Workspace: "ws" + strconv.Itoa(i%4), Project: "p" + strconv.Itoa(i%3), User: "u" + strconv.Itoa(i%5),
			Harness: []string{"codex", "claude-code"}[i%2], Provider: "openai", ModelServed: "m" + strconv.Itoa(i%6),
			Session: "s" + strconv.Itoa(i%9), Status: 200, Outcome: metering.OutcomeOK, Source: metering.SourceUpstream,
			Usage:        &metering.Usage{InputUncached: int64(10 + i), CacheRead: int64(i), CacheWrite5m: 2, Output: 5},
			CostMicroUSD: &cost,
		}
		if i%6 == 5 { // model m5 is never priced
			r.CostMicroUSD, r.Unpriced = nil, true
		}
		recs = append(recs, r)
	}
	if _, err := st.InsertBatch(ctx, recs); err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Registry: e.reg, Auth: e.svc, Resolver: e.svc, Admin: e.svc, Usage: st, Sink: e.sink,
		AdminToken: "admin-secret", now: func() time.Time { return day.AddDate(0, 0, 3) }})
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string) (int, string) {
		t.Helper()
		req := httptest.NewRequest("GET", "/admin/v1"+path, nil)
		req.Header.Set("Authorization", "Bearer admin-secret")
		resp, err := srv.admin.Test(req, -1)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// usageTotal sums GET /usage's rows: requests and cost_micro_usd.
	usageTotal := func(q string) (int64, int64) {
		t.Helper()
		code, body := get("/usage?" + q)
		var rows []struct {
			Requests int64  `json:"requests"`
			Cost     *int64 `json:"cost_micro_usd"`
		}
		if err := json.Unmarshal([]byte(body), &rows); code != 200 || err != nil {
			t.Fatalf("usage %s: %d %v %s", q, code, err, body)
		}
		var n, c int64
		for _, r := range rows {
			n += r.Requests
			if r.Cost != nil {
				c += *r.Cost
			}
		}
		return n, c
	}
	type total struct {
		Requests int64  `json:"requests"`
		Cost     *int64 `json:"cost_micro_usd"`
		Unpriced int64  `json:"unpriced_requests"`
	}
	for _, filters := range []string{
		"from=2026-05-04&to=2026-05-06",
		"from=2026-05-04T05:00:00Z&to=2026-05-06T00:00:00Z",
		"from=2026-05-04&to=2026-05-06&project=p1",
		"from=2026-05-04&to=2026-05-06&harness=codex&user=u3",
		"from=2026-05-04&to=2026-05-06&model=m2&workspace=ws2",
		"from=2026-05-04&to=2026-05-05&session=s4",
	} {
		wantN, wantC := usageTotal(filters)
		if wantN == 0 {
			t.Fatalf("%s: no usage, a vacuous comparison", filters)
		}
		for _, path := range []string{"/usage/series?stack_by=project&top=1&", "/usage/series?bucket=hour&stack_by=model&", "/usage/top?by=session&n=2&", "/usage/top?by=workspace&"} {
			code, body := get(path + filters)
			var out struct {
				Total total `json:"total"`
			}
			if err := json.Unmarshal([]byte(body), &out); code != 200 || err != nil {
				t.Fatalf("%s%s: %d %v %s", path, filters, code, err, body)
			}
			if out.Total.Requests != wantN || out.Total.Cost == nil || *out.Total.Cost != wantC {
				t.Errorf("%s%s: total %+v, usage API says %d requests, %d µ$", path, filters, out.Total, wantN, wantC)
			}
		}
		code, body := get("/usage/cache?" + filters)
		var c struct {
			Total ledger.CacheRow `json:"total"`
		}
		if err := json.Unmarshal([]byte(body), &c); code != 200 || err != nil || c.Total.Requests != wantN || *c.Total.CostMicroUSD != wantC {
			t.Errorf("cache %s: %d %v %+v, want %d requests %d µ$", filters, code, err, c.Total, wantN, wantC)
		}
	}

	// The unpriced model alone: its cost is null, and counted as unpriced.
	code, body := get("/usage/series?from=2026-05-04&to=2026-05-06&model=m5")
	var sr struct {
		Total  total `json:"total"`
		Series []struct {
			Key    string  `json:"key"`
			Points []total `json:"points"`
		} `json:"series"`
	}
	if err := json.Unmarshal([]byte(body), &sr); code != 200 || err != nil || sr.Total.Cost != nil || sr.Total.Unpriced != 10 ||
		len(sr.Series) != 1 || sr.Series[0].Key != "m5" || !strings.Contains(body, `"cost_micro_usd":null`) {
		t.Errorf("unpriced: %d %v %s", code, err, body)
	}

	// CSV: exactly the series query's cells, the folded ones as (other).
	code, body = get("/usage/series?from=2026-05-04&to=2026-05-06&stack_by=project&top=1&format=csv")
	rows, err := csv.NewReader(strings.NewReader(body)).ReadAll()
	if code != 200 || err != nil || len(rows) != 7 || strings.Join(rows[0][:3], ",") != "day,project,requests" {
		t.Fatalf("series csv: %d %v %q", code, err, body)
	}
	var csvN int64
	for _, r := range rows[1:] {
		n, _ := strconv.ParseInt(r[2], 10, 64)
		csvN += n
	}
	if wantN, _ := usageTotal("from=2026-05-04&to=2026-05-06"); csvN != wantN || rows[2][1] != ledger.OtherKey {
		t.Errorf("series csv: %d requests, want %d:\n%s", csvN, wantN, body)
	}
	if code, body := get("/usage/top?by=session&n=2&format=csv&from=2026-05-04&to=2026-05-06"); code != 200 || strings.Count(body, "\n") != 4 || !strings.Contains(body, "\n(other),") {
		t.Errorf("top csv: %d %q", code, body)
	}
	if code, body := get("/usage/cache?format=csv&from=2026-05-04&to=2026-05-06"); code != 200 || !strings.HasPrefix(body, "project,row,requests,input_tokens,cache_read_tokens") || !strings.Contains(body, ",total,60,") {
		t.Errorf("cache csv: %d %q", code, body)
	}

	for _, tc := range []struct{ path, want string }{
		{"/usage/series?projct=p1", `unknown parameter \"projct\"`},
		{"/usage/series?project=p1&project=p2", `parameter \"project\" given more than once`},
		{"/usage/top?bucket=day", `unknown parameter \"bucket\"`},
		{"/usage/top?by=colour", `unknown by \"colour\"`},
		{"/usage/cache?by=workspace", `unknown by \"workspace\"`},
		{"/usage/series?bucket=week", `unknown bucket \"week\"`},
		{"/usage/series?top=many", `top \"many\" is not a whole number`},
		{"/usage/series?format=xml", "format must be json or csv"},
		{"/usage/series?from=2026-05-01&to=2026-05-30&bucket=hour", "hour buckets cover at most 7 days"},
	} {
		if code, body := get(tc.path); code != 400 || !strings.Contains(body, tc.want) {
			t.Errorf("%s: %d %s, want 400 naming %s", tc.path, code, body, tc.want)
		}
	}
}
