package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/protobuf/proto"

	"github.com/tollgate/tollgate/metering"
)

// otlpExport is one push as the collector saw it. body is kept
// decompressed so a leak is found whatever encoding the exporter chose.
type otlpExport struct {
	header http.Header
	body   []byte
	req    *colmetricspb.ExportMetricsServiceRequest
}

// otlpCollector is a fake OTLP/HTTP metrics receiver. It is strict about
// the wire contract (path, method, content type, encoding, protobuf) so a
// push a real collector would reject cannot pass here.
type otlpCollector struct {
	mu      sync.Mutex
	exports []otlpExport
	errs    []string
}

func (c *otlpCollector) reject(w http.ResponseWriter, code int, format string, args ...any) {
	c.mu.Lock()
	c.errs = append(c.errs, fmt.Sprintf(format, args...))
	c.mu.Unlock()
	http.Error(w, fmt.Sprintf(format, args...), code)
}

func (c *otlpCollector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/metrics" {
		c.reject(w, http.StatusNotFound, "unexpected %s %s", r.Method, r.URL.Path)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-protobuf" {
		c.reject(w, http.StatusUnsupportedMediaType, "content type %q", ct)
		return
	}
	var body io.Reader = r.Body
	switch enc := r.Header.Get("Content-Encoding"); enc {
	case "":
	case "gzip":
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			c.reject(w, http.StatusBadRequest, "gzip: %v", err)
			return
		}
		defer zr.Close()
		body = zr
	default:
		c.reject(w, http.StatusUnsupportedMediaType, "content encoding %q", enc)
		return
	}
	raw, err := io.ReadAll(body)
	if err != nil {
		c.reject(w, http.StatusBadRequest, "read body: %v", err)
		return
	}
	req := &colmetricspb.ExportMetricsServiceRequest{}
	if err := proto.Unmarshal(raw, req); err != nil {
		c.reject(w, http.StatusBadRequest, "decode ExportMetricsServiceRequest: %v", err)
		return
	}
	c.mu.Lock()
	c.exports = append(c.exports, otlpExport{header: r.Header.Clone(), body: raw, req: req})
	c.mu.Unlock()
	resp, err := proto.Marshal(&colmetricspb.ExportMetricsServiceResponse{})
	if err != nil {
		c.reject(w, http.StatusInternalServerError, "encode response: %v", err)
		return
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(resp)
}

func (c *otlpCollector) snapshot() ([]otlpExport, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.exports), slices.Clone(c.errs)
}

// waitFor returns the newest export for which ok holds. It polls rather
// than sleeping an export interval so the test takes only as long as the
// first push, and fails with what did arrive so a broken push is legible.
func (c *otlpCollector) waitFor(t *testing.T, within time.Duration, ok func(*colmetricspb.ExportMetricsServiceRequest) bool) otlpExport {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		exports, errs := c.snapshot()
		for i := len(exports) - 1; i >= 0; i-- {
			if ok(exports[i].req) {
				return exports[i]
			}
		}
		if time.Now().After(deadline) {
			var seen []string
			for _, e := range exports {
				seen = append(seen, strings.Join(metricNames(e.req), ","))
			}
			t.Fatalf("no matching OTLP export within %v: %d export(s) received %q, collector errors %q", within, len(exports), seen, errs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func metricNames(req *colmetricspb.ExportMetricsServiceRequest) []string {
	var names []string
	for _, rm := range req.GetResourceMetrics() {
		for _, sm := range rm.GetScopeMetrics() {
			for _, m := range sm.GetMetrics() {
				names = append(names, m.GetName())
			}
		}
	}
	return names
}

func findMetric(req *colmetricspb.ExportMetricsServiceRequest, name string) *metricspb.Metric {
	for _, rm := range req.GetResourceMetrics() {
		for _, sm := range rm.GetScopeMetrics() {
			for _, m := range sm.GetMetrics() {
				if m.GetName() == name {
					return m
				}
			}
		}
	}
	return nil
}

// stringAttrs flattens attributes; every attribute tollgate sets is a
// string, so anything else is reported rather than silently dropped.
func stringAttrs(t *testing.T, kvs []*commonpb.KeyValue) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, kv := range kvs {
		sv, ok := kv.GetValue().GetValue().(*commonpb.AnyValue_StringValue)
		if !ok {
			t.Errorf("attribute %s is not a string: %v", kv.GetKey(), kv.GetValue())
			continue
		}
		out[kv.GetKey()] = sv.StringValue
	}
	return out
}

func withAttrs(base map[string]string, kv ...string) map[string]string {
	out := maps.Clone(base)
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

func TestMetricsArePushedOverOTLP(t *testing.T) {
	// Both encodings a collector must accept: the default, and gzip as
	// enabled by the standard compression variable.
	for _, compression := range []string{"none", "gzip"} {
		t.Run(compression, func(t *testing.T) { testOTLPPush(t, compression) })
	}
}

func testOTLPPush(t *testing.T, compression string) {
	col := &otlpCollector{}
	srv := httptest.NewServer(col)
	t.Cleanup(srv.Close)

	// A collector API key is the one secret the push path itself carries:
	// it must travel as a header and never end up in the payload.
	const collectorKey = "sk-otlp-collector-canary-7f3a"
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	t.Setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer "+collectorKey)
	t.Setenv("OTEL_EXPORTER_OTLP_COMPRESSION", compression)
	t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")
	// The metrics-specific variables override the generic ones; blank
	// (which the exporter treats as unset) so a developer's environment
	// cannot redirect the push or change its shape under the assertions.
	for _, v := range []string{
		"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
		"OTEL_EXPORTER_OTLP_METRICS_HEADERS",
		"OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
		"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
		"OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
		"OTEL_SERVICE_NAME",
		"OTEL_RESOURCE_ATTRIBUTES",
	} {
		t.Setenv(v, "")
	}

	// The labels argument is what serve passes when TOLLGATE_METRIC_LABELS
	// is unset, so the attributes checked below are the shipped defaults.
	tel, err := newTelemetry(context.Background(), splitList(""), nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("newTelemetry: %v", err)
	}
	shutdown := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return tel.shutdown(ctx)
	}
	// Only for a test that stops early; registered after srv.Close so it
	// runs first and the exporter is not left retrying a closed port.
	shut := false
	t.Cleanup(func() {
		if !shut {
			shutdown()
		}
	})

	costMicroUSD := int64(12345)
	rec := &metering.Record{
		RequestID: "req-otlp-1", Start: time.Now(), Duration: 1500 * time.Millisecond, TTFB: 300 * time.Millisecond,
		Workspace: "ws-otlp", Project: "proj-otlp", User: "user-otlp", TokenID: "tok-otlp",
		Harness: "claude-code", Dialect: "anthropic", Operation: "chat", Path: "/v1/messages",
		Provider: "anthropic", CredTier: "project", CredentialID: "cred-otlp", Stream: true,
		ModelRequest: "claude-sonnet-4-5", ModelServed: "claude-sonnet-4-5-20250929", UpstreamID: "msg_otlp",
		Status: 200, Outcome: metering.OutcomeOK, Source: metering.SourceUpstream,
		Usage:        &metering.Usage{InputUncached: 1000, CacheRead: 200, Output: 345},
		CostMicroUSD: &costMicroUSD, PriceVersion: "otlp-test",
	}
	tel.instruments.Observe(rec, 2*time.Millisecond)

	// Cost is the last thing Observe records and the reader sends
	// cumulative totals, so an export holding it holds the whole request.
	got := col.waitFor(t, 5*time.Second, func(r *colmetricspb.ExportMetricsServiceRequest) bool {
		return findMetric(r, metering.MetricCost) != nil
	})

	exports, errs := col.snapshot()
	if len(errs) > 0 {
		t.Errorf("collector rejected pushes: %q", errs)
	}
	wantEncoding := map[string]string{"none": "", "gzip": "gzip"}[compression]
	for i, e := range exports {
		if enc := e.header.Get("Content-Encoding"); enc != wantEncoding {
			t.Errorf("export %d: Content-Encoding %q, want %q", i, enc, wantEncoding)
		}
		if a := e.header.Get("Authorization"); a != "Bearer "+collectorKey {
			t.Errorf("export %d: Authorization header %q, want the OTEL_EXPORTER_OTLP_HEADERS value", i, a)
		}
		if bytes.Contains(e.body, []byte("sk-")) {
			t.Errorf("export %d: payload contains an sk- string: %q", i, e.body)
		}
	}

	rms := got.req.GetResourceMetrics()
	if len(rms) != 1 {
		t.Fatalf("%d resource metrics, want 1", len(rms))
	}
	res := map[string]string{}
	for _, kv := range rms[0].GetResource().GetAttributes() {
		res[kv.GetKey()] = kv.GetValue().GetStringValue()
	}
	if res["service.name"] != "tollgate" {
		t.Errorf("resource service.name %q, want tollgate: %v", res["service.name"], res)
	}
	for _, sm := range rms[0].GetScopeMetrics() {
		if s := sm.GetScope().GetName(); s != "github.com/tollgate/tollgate" {
			t.Errorf("scope %q, want github.com/tollgate/tollgate", s)
		}
	}

	base := map[string]string{
		metering.AttrOperation: "chat",
		metering.AttrProvider:  "anthropic",
		metering.AttrReqModel:  "claude-sonnet-4-5",
		metering.AttrRespModel: "claude-sonnet-4-5-20250929",
		metering.AttrHarness:   "claude-code",
		metering.AttrProject:   "proj-otlp",
	}

	tokens := findMetric(got.req, metering.MetricTokenUsage)
	if tokens == nil {
		t.Fatalf("no %s in export; got %q", metering.MetricTokenUsage, metricNames(got.req))
	}
	if u := tokens.GetUnit(); u != "{token}" {
		t.Errorf("%s unit %q, want {token}", metering.MetricTokenUsage, u)
	}
	h := tokens.GetHistogram()
	if h == nil {
		t.Fatalf("%s is not a histogram: %T", metering.MetricTokenUsage, tokens.GetData())
	}
	if h.GetAggregationTemporality() != metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE {
		t.Errorf("%s temporality %v, want cumulative", metering.MetricTokenUsage, h.GetAggregationTemporality())
	}
	// input includes the cache read; zero-valued custom types are not sent.
	wantTokens := map[string]float64{metering.TokenInput: 1200, metering.TokenOutput: 345, metering.TokenCachedInput: 200}
	seen := map[string]bool{}
	for _, dp := range h.GetDataPoints() {
		attrs := stringAttrs(t, dp.GetAttributes())
		typ := attrs[metering.AttrTokenType]
		want, ok := wantTokens[typ]
		if !ok {
			t.Errorf("unexpected %s data point %v", metering.MetricTokenUsage, attrs)
			continue
		}
		seen[typ] = true
		if dp.GetCount() != 1 || dp.GetSum() != want {
			t.Errorf("%s %s: count %d sum %v, want count 1 sum %v", metering.MetricTokenUsage, typ, dp.GetCount(), dp.GetSum(), want)
		}
		if w := withAttrs(base, metering.AttrTokenType, typ); !maps.Equal(attrs, w) {
			t.Errorf("%s %s attributes\n got %v\nwant %v", metering.MetricTokenUsage, typ, attrs, w)
		}
	}
	for typ := range wantTokens {
		if !seen[typ] {
			t.Errorf("%s has no %s=%s data point", metering.MetricTokenUsage, metering.AttrTokenType, typ)
		}
	}

	cost := findMetric(got.req, metering.MetricCost).GetSum()
	if cost == nil || !cost.GetIsMonotonic() || len(cost.GetDataPoints()) != 1 {
		t.Fatalf("%s: want one monotonic sum data point, got %v", metering.MetricCost, findMetric(got.req, metering.MetricCost))
	}
	dp := cost.GetDataPoints()[0]
	if v := dp.GetAsDouble(); math.Abs(v-0.012345) > 1e-12 {
		t.Errorf("%s = %v, want 0.012345 USD", metering.MetricCost, v)
	}
	if attrs := stringAttrs(t, dp.GetAttributes()); !maps.Equal(attrs, base) {
		t.Errorf("%s attributes\n got %v\nwant %v", metering.MetricCost, attrs, base)
	}

	reqs := findMetric(got.req, metering.MetricRequests).GetSum()
	if reqs == nil || len(reqs.GetDataPoints()) != 1 {
		t.Fatalf("%s: want one sum data point, got %v", metering.MetricRequests, findMetric(got.req, metering.MetricRequests))
	}
	dp = reqs.GetDataPoints()[0]
	if v := dp.GetAsInt(); v != 1 {
		t.Errorf("%s = %d, want 1", metering.MetricRequests, v)
	}
	wantReq := withAttrs(base, metering.AttrEndReason, metering.OutcomeOK, metering.AttrUsageSource, metering.SourceUpstream, metering.AttrCostStatus, "priced")
	if attrs := stringAttrs(t, dp.GetAttributes()); !maps.Equal(attrs, wantReq) {
		t.Errorf("%s attributes\n got %v\nwant %v", metering.MetricRequests, attrs, wantReq)
	}

	// serve's exit path is tel.shutdown: once it returns, a request seen
	// just before must have reached the collector, not died with the
	// process between two export intervals.
	tel.instruments.Observe(rec, 2*time.Millisecond)
	shut = true
	if err := shutdown(); err != nil {
		t.Fatalf("telemetry shutdown: %v", err)
	}
	exports, _ = col.snapshot()
	flushed := false
	for i, e := range exports {
		if bytes.Contains(e.body, []byte("sk-")) {
			t.Errorf("export %d: payload contains an sk- string: %q", i, e.body)
		}
		for _, dp := range findMetric(e.req, metering.MetricTokenUsage).GetHistogram().GetDataPoints() {
			if stringAttrs(t, dp.GetAttributes())[metering.AttrTokenType] == metering.TokenOutput && dp.GetCount() == 2 && dp.GetSum() == 2*345 {
				flushed = true
			}
		}
	}
	if !flushed {
		t.Errorf("after shutdown returned, no export carried the second request's output tokens (count 2, sum 690)")
	}
}

// The exporter honours the standard histogram-aggregation variable: an
// operator who asks for exponential histograms gets them on the wire
// (tollgate's own exporter used to warn and send explicit buckets).
func TestOTLPExponentialHistogramsOnRequest(t *testing.T) {
	col := &otlpCollector{}
	srv := httptest.NewServer(col)
	t.Cleanup(srv.Close)
	setOTLPEnv(t, "OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL,
		"OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION", "base2_exponential_bucket_histogram")
	t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")
	tel, err := newTelemetry(context.Background(), splitList(""), nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("newTelemetry: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tel.shutdown(ctx)
	})
	tel.instruments.Observe(&metering.Record{
		RequestID: "req-exp", Start: time.Now(), Duration: time.Second, Harness: "claude-code", Dialect: "anthropic",
		Operation: "chat", Provider: "anthropic", ModelRequest: "m", Status: 200, Outcome: metering.OutcomeOK,
		Source: metering.SourceUpstream, Usage: &metering.Usage{InputUncached: 10, Output: 5},
	}, time.Millisecond)
	got := col.waitFor(t, 5*time.Second, func(r *colmetricspb.ExportMetricsServiceRequest) bool {
		return findMetric(r, metering.MetricTokenUsage) != nil
	})
	if m := findMetric(got.req, metering.MetricTokenUsage); m.GetExponentialHistogram() == nil {
		t.Errorf("%s is sent as %T, want an exponential histogram", metering.MetricTokenUsage, m.GetData())
	}
}
