package metering

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// promSeries gathers what the OTel Prometheus exporter in go.mod exposes for
// the instruments: metric family name → label names.
func promSeries(tb testing.TB) map[string]map[string]bool {
	tb.Helper()
	in, reg := promInstruments(tb, LabelConfig{})
	in.Observe(otelRecord(), time.Millisecond)
	unregister, err := in.RegisterWriter(&fixedStats{})
	if err != nil {
		tb.Fatal(err)
	}
	defer unregister()
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]map[string]bool{}
	for _, mf := range mfs {
		labels := map[string]bool{}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = true
			}
		}
		out[mf.GetName()+" "+mf.GetType().String()] = labels
	}
	return out
}

// TestPrometheusNames pins the names the exporter produces from the
// instruments (dots to underscores, unit suffixes for "s" and "By", _total
// for counters, curly-brace units dropped); docs/grafana-finance.json and
// anyone's alerts depend on them.
func TestPrometheusNames(t *testing.T) {
	got := promSeries(t)
	want := map[string][]string{
		"gen_ai_client_token_usage HISTOGRAM":                           {"gen_ai_token_type", "gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_response_model", "tollgate_harness", "tollgate_project"},
		"gen_ai_client_operation_duration_seconds HISTOGRAM":            {"gen_ai_operation_name", "gen_ai_response_model"},
		"gen_ai_client_operation_time_to_first_chunk_seconds HISTOGRAM": {"gen_ai_response_model"},
		"tollgate_cost_total COUNTER":                                   {"gen_ai_response_model", "tollgate_project"},
		"tollgate_requests_total COUNTER":                               {"tollgate_end_reason", "tollgate_usage_source", "tollgate_cost_status"},
		"tollgate_proxy_overhead_seconds HISTOGRAM":                     {"tollgate_harness"},
		"tollgate_metering_records_total COUNTER":                       {"tollgate_disposition"},
		"tollgate_metrics_labels_folded_total COUNTER":                  {"tollgate_dimension"},
		"tollgate_governance_refusals_total COUNTER":                    {"kind"},
		"tollgate_server_tool_uses_total COUNTER":                       {"tool"},
		"tollgate_metering_store_retries_total COUNTER":                 nil,
		"tollgate_metering_spool_usage_bytes GAUGE":                     nil,
		"tollgate_metering_queue_size GAUGE":                            nil,
		"target_info GAUGE":                                             nil,
	}
	for name, labels := range want {
		have, ok := got[name]
		if !ok {
			t.Errorf("exporter does not emit %s", name)
			continue
		}
		for _, l := range labels {
			if !have[l] {
				t.Errorf("%s lacks label %s", name, l)
			}
		}
	}
	for name, labels := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("unexpected family %s %v", name, labels)
		}
	}
}

// TestGrafanaDashboardUsesEmittedNames checks every metric and label the
// dashboard's queries mention against what the exporter emits.
func TestGrafanaDashboardUsesEmittedNames(t *testing.T) {
	b, err := os.ReadFile("../docs/grafana-finance.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash any
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard is not JSON: %v", err)
	}
	series, labels := map[string]bool{}, map[string]bool{"le": true}
	for fam, ls := range promSeries(t) {
		name, typ, _ := strings.Cut(fam, " ")
		if typ == "HISTOGRAM" {
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				series[name+suf] = true
			}
		} else {
			series[name] = true
		}
		for l := range ls {
			labels[l] = true
		}
	}
	var exprs []string
	var walk func(v any, key string)
	walk = func(v any, key string) {
		switch v := v.(type) {
		case map[string]any:
			for k, c := range v {
				walk(c, k)
			}
		case []any:
			for _, c := range v {
				walk(c, key)
			}
		case string:
			if key == "expr" || key == "definition" || key == "legendFormat" {
				exprs = append(exprs, v)
			}
		}
	}
	walk(dash, "")
	if len(exprs) < 10 {
		t.Fatalf("found only %d queries", len(exprs))
	}
	used := map[string]bool{}
	ident := regexp.MustCompile(`\b(?:gen_ai|tollgate)_[a-z0-9_]+\b`)
	for _, e := range exprs {
		for _, id := range ident.FindAllString(e, -1) {
			switch {
			case series[id]:
				used[id] = true
			case labels[id]:
			default:
				t.Errorf("dashboard query uses %q, which the exporter does not emit: %s", id, e)
			}
		}
	}
	for _, need := range []string{"gen_ai_client_token_usage_sum", "tollgate_cost_total", "tollgate_requests_total"} {
		if !used[need] {
			t.Errorf("dashboard never queries %s", need)
		}
	}
}

// scrape serves reg as cmd/tollgate does (promhttp defaults) on a real
// loopback listener and returns the status and body of one GET /metrics.
func scrape(tb testing.TB, reg *prometheus.Registry) (int, string) {
	tb.Helper()
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func promInstruments(tb testing.TB, cfg LabelConfig) (*Instruments, *prometheus.Registry) {
	tb.Helper()
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		tb.Fatal(err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp))
	tb.Cleanup(func() { mp.Shutdown(context.Background()) })
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	in, err := NewInstruments(mp.Meter("github.com/tollgate/tollgate/metering"), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return in, reg
}

// TestNonUTF8ModelDoesNotBreakMetrics: one client-chosen model name that is
// not UTF-8 used to make every later scrape a 500.
func TestNonUTF8ModelDoesNotBreakMetrics(t *testing.T) {
	in, reg := promInstruments(t, LabelConfig{Labels: []string{AttrHarness, AttrProject, AttrUser}})
	in.Observe(otelRecord(), time.Millisecond)
	r := otelRecord()
	r.ModelRequest, r.ModelServed, r.Project, r.User = "\xff\xfe", "bad\xff", "p\xfe", "u\x00\x1b[31m"
	in.Observe(r, time.Millisecond)
	long := otelRecord()
	long.ModelRequest = strings.Repeat("é", 300)
	in.Observe(long, time.Millisecond)

	status, body := scrape(t, reg)
	if status != http.StatusOK {
		t.Fatalf("scrape: %d\n%s", status, body)
	}
	for _, want := range []string{"gen_ai_request_model=\"\uFFFD\"", "gen_ai_response_model=\"bad\uFFFD\"", "tollgate_project=\"p\uFFFD\"", "tollgate_user=\"u\uFFFD\uFFFD[31m\"", `gen_ai_request_model="claude-sonnet"`} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
	for _, line := range strings.Split(body, "\n") {
		if i := strings.Index(line, `gen_ai_request_model="éé`); i >= 0 {
			v, _, _ := strings.Cut(line[i+len(`gen_ai_request_model="`):], `"`)
			if len(v) > maxLabelBytes || !utf8.ValidString(v) || !strings.HasSuffix(v, "…") {
				t.Errorf("long model label: %d bytes, valid %v: %q", len(v), utf8.ValidString(v), v)
			}
		}
	}
}
