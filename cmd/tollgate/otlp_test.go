package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	"google.golang.org/protobuf/proto"
)

// otlpVars is every variable either exporter reads. Tests blank them all
// so a developer's environment cannot leak into what they assert.
var otlpVars = func() []string {
	var out []string
	for _, k := range []string{"ENDPOINT", "HEADERS", "COMPRESSION", "TIMEOUT", "CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY", "PROTOCOL", "INSECURE"} {
		out = append(out, "OTEL_EXPORTER_OTLP_"+k, "OTEL_EXPORTER_OTLP_METRICS_"+k)
	}
	return append(out, "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION")
}()

// setOTLPEnv blanks every OTLP variable, then sets kv (name, value, ...).
func setOTLPEnv(t *testing.T, kv ...string) {
	t.Helper()
	for _, v := range otlpVars {
		t.Setenv(v, "")
	}
	for i := 0; i+1 < len(kv); i += 2 {
		t.Setenv(kv[i], kv[i+1])
	}
}

// testOTLPExporter builds an exporter for endpoint from the environment
// with the retry schedule shrunk to milliseconds.
func testOTLPExporter(t *testing.T, endpoint string, kv ...string) *otlpExporter {
	t.Helper()
	setOTLPEnv(t, append([]string{"OTEL_EXPORTER_OTLP_ENDPOINT", endpoint}, kv...)...)
	e, err := newOTLPExporter()
	if err != nil {
		t.Fatalf("newOTLPExporter: %v", err)
	}
	e.retryInitial, e.retryMax, e.retryElapsed = 5*time.Millisecond, 20*time.Millisecond, 5*time.Second
	t.Cleanup(func() { e.Shutdown(context.Background()) })
	return e
}

var (
	otlpT0 = time.Unix(1_700_000_000, 123_456_789)
	otlpT1 = otlpT0.Add(time.Minute)
)

// everyAttrKind has one attribute of each attribute.Type.
func everyAttrKind(prefix string) []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.Bool(prefix+"bool", true),
		attribute.Int64(prefix+"int", -42),
		attribute.Float64(prefix+"float", 3.25),
		attribute.String(prefix+"string", "v"),
		attribute.BoolSlice(prefix+"bools", []bool{true, false}),
		attribute.Int64Slice(prefix+"ints", []int64{1, -2}),
		attribute.Float64Slice(prefix+"floats", []float64{0.5, -1.5}),
		attribute.StringSlice(prefix+"strings", []string{"a", ""}),
		attribute.ByteSlice(prefix+"bytes", []byte{0, 1, 0xff}),
		attribute.Slice(prefix+"slice", attribute.IntValue(1), attribute.StringValue("x"), attribute.BoolSliceValue([]bool{true})),
		attribute.Map(prefix+"map", attribute.String("k", "v"), attribute.Float64("f", 2)),
		{Key: attribute.Key(prefix + "empty")},
	}
}

func attrSet(kv ...attribute.KeyValue) attribute.Set { return attribute.NewSet(kv...) }

func testExemplars[N int64 | float64](v N) []metricdata.Exemplar[N] {
	return []metricdata.Exemplar[N]{
		{
			FilteredAttributes: everyAttrKind("ex."),
			Time:               otlpT0.Add(time.Second),
			Value:              v,
			SpanID:             []byte{1, 2, 3, 4, 5, 6, 7, 8},
			TraceID:            []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		},
		{Value: v}, // no trace, no time, no attributes
	}
}

func numberPoints[N int64 | float64](a, b N) []metricdata.DataPoint[N] {
	return []metricdata.DataPoint[N]{
		{Attributes: attrSet(everyAttrKind("dp.")...), StartTime: otlpT0, Time: otlpT1, Value: a, Exemplars: testExemplars(a)},
		{Attributes: attrSet(attribute.String("only", "one")), Time: otlpT1, Value: b}, // zero start time
	}
}

func histPoints[N int64 | float64](sum N) []metricdata.HistogramDataPoint[N] {
	return []metricdata.HistogramDataPoint[N]{
		{
			Attributes: attrSet(everyAttrKind("h.")...), StartTime: otlpT0, Time: otlpT1,
			Count: 6, Bounds: []float64{0, 5, 10}, BucketCounts: []uint64{1, 2, 3, 0},
			Min: metricdata.NewExtrema[N](1), Max: metricdata.NewExtrema[N](9), Sum: sum,
			Exemplars: testExemplars(sum),
		},
		{StartTime: otlpT0, Time: otlpT1, BucketCounts: []uint64{0}}, // no min, max or bounds
	}
}

func expHistPoints[N int64 | float64](sum N) []metricdata.ExponentialHistogramDataPoint[N] {
	return []metricdata.ExponentialHistogramDataPoint[N]{
		{
			Attributes: attrSet(everyAttrKind("e.")...), StartTime: otlpT0, Time: otlpT1,
			Count: 9, Min: metricdata.NewExtrema[N](-3), Max: metricdata.NewExtrema[N](12), Sum: sum,
			Scale: -2, ZeroCount: 1, ZeroThreshold: 1e-9,
			PositiveBucket: metricdata.ExponentialBucket{Offset: -1, Counts: []uint64{1, 2, 3}},
			NegativeBucket: metricdata.ExponentialBucket{Offset: 4, Counts: []uint64{2}},
			Exemplars:      testExemplars(sum),
		},
		{StartTime: otlpT0, Time: otlpT1, Scale: 20}, // no min, max or buckets
	}
}

// everyAggregation covers what the SDK (and its bridges) can hand an
// exporter, plus two metrics both exporters must drop.
func everyAggregation() *metricdata.ResourceMetrics {
	res := resource.NewWithAttributes("https://opentelemetry.io/schemas/1.26.0", everyAttrKind("res.")...)
	return &metricdata.ResourceMetrics{
		Resource: res,
		ScopeMetrics: []metricdata.ScopeMetrics{
			{
				Scope: instrumentation.Scope{
					Name: "github.com/tollgate/tollgate", Version: "v1.2.3",
					SchemaURL: "https://opentelemetry.io/schemas/1.24.0", Attributes: attrSet(everyAttrKind("scope.")...),
				},
				Metrics: []metricdata.Metrics{
					{Name: "gauge.int", Description: "d", Unit: "{x}", Data: metricdata.Gauge[int64]{DataPoints: numberPoints[int64](7, -7)}},
					{Name: "gauge.float", Data: metricdata.Gauge[float64]{DataPoints: numberPoints(0.25, -1e300)}},
					{Name: "sum.int.cumulative.mono", Unit: "By", Data: metricdata.Sum[int64]{Temporality: metricdata.CumulativeTemporality, IsMonotonic: true, DataPoints: numberPoints[int64](1, 2)}},
					{Name: "sum.float.delta.nonmono", Data: metricdata.Sum[float64]{Temporality: metricdata.DeltaTemporality, DataPoints: numberPoints(-0.5, 0)}},
					{Name: "sum.int.delta.mono", Data: metricdata.Sum[int64]{Temporality: metricdata.DeltaTemporality, IsMonotonic: true, DataPoints: numberPoints[int64](3, 4)}},
					{Name: "hist.int", Unit: "ms", Data: metricdata.Histogram[int64]{Temporality: metricdata.CumulativeTemporality, DataPoints: histPoints[int64](30)}},
					{Name: "hist.float", Data: metricdata.Histogram[float64]{Temporality: metricdata.DeltaTemporality, DataPoints: histPoints(30.5)}},
					{Name: "exphist.int", Data: metricdata.ExponentialHistogram[int64]{Temporality: metricdata.CumulativeTemporality, DataPoints: expHistPoints[int64](40)}},
					{Name: "exphist.float", Data: metricdata.ExponentialHistogram[float64]{Temporality: metricdata.DeltaTemporality, DataPoints: expHistPoints(40.5)}},
					{Name: "summary", Data: metricdata.Summary{DataPoints: []metricdata.SummaryDataPoint{{
						Attributes: attrSet(attribute.Int("q", 1)), StartTime: otlpT0, Time: otlpT1, Count: 3, Sum: 6,
						QuantileValues: []metricdata.QuantileValue{{Quantile: 0, Value: 1}, {Quantile: 1, Value: 3}},
					}}}},
					{Name: "bad.temporality", Data: metricdata.Sum[int64]{DataPoints: numberPoints[int64](1, 1)}},
					{Name: "bad.nil"},
				},
			},
			{Scope: instrumentation.Scope{Name: "empty-scope"}},
		},
	}
}

// TestOTLPMatchesOfficialExporter is the contract: for the same data and
// the same environment, a collector receives the same request from our
// exporter as from otlpmetrichttp.
func TestOTLPMatchesOfficialExporter(t *testing.T) {
	cases := map[string]*metricdata.ResourceMetrics{
		"every aggregation": everyAggregation(),
		"empty":             {Resource: resource.Empty()},
		"nil resource":      {ScopeMetrics: []metricdata.ScopeMetrics{{Scope: instrumentation.Scope{Name: "s"}}}},
	}
	for _, compression := range []string{"none", "gzip"} {
		for name, rm := range cases {
			t.Run(compression+"/"+name, func(t *testing.T) {
				col := &otlpCollector{}
				srv := httptest.NewServer(col)
				t.Cleanup(srv.Close)
				setOTLPEnv(t, "OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL, "OTEL_EXPORTER_OTLP_COMPRESSION", compression,
					"OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")
				ctx := context.Background()

				official, err := otlpmetrichttp.New(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer official.Shutdown(ctx)
				ours, err := newOTLPExporter()
				if err != nil {
					t.Fatal(err)
				}
				defer ours.Shutdown(ctx)

				officialErr := official.Export(ctx, rm)
				ourErr := ours.Export(ctx, rm)
				if (officialErr == nil) != (ourErr == nil) {
					t.Errorf("official error %v, ours %v", officialErr, ourErr)
				}

				exports, errs := col.snapshot()
				if len(errs) > 0 || len(exports) != 2 {
					t.Fatalf("collector got %d exports, errors %q", len(exports), errs)
				}
				want, got := exports[0], exports[1]
				if !proto.Equal(want.req, got.req) {
					t.Errorf("requests differ\nofficial: %v\nours:     %v", want.req, got.req)
				}
				// proto.Equal forgives field order and varint padding; the
				// file's header promises the bytes themselves (before
				// compression, which the collector undoes) are the same.
				if !bytes.Equal(want.body, got.body) {
					t.Errorf("request bodies differ byte for byte\nofficial: %x\nours:     %x", want.body, got.body)
				}
				for _, h := range []string{"Content-Type", "Content-Encoding", "X-Tenant"} {
					if w, g := want.header.Get(h), got.header.Get(h); w != g {
						t.Errorf("header %s: official %q, ours %q", h, w, g)
					}
				}
				if ua := got.header.Get("User-Agent"); !strings.HasPrefix(ua, "tollgate/") {
					t.Errorf("User-Agent %q does not name tollgate", ua)
				}
			})
		}
	}
}

// Temporality and aggregation decide what the SDK hands Export; they
// must match the official exporter for every preference and kind.
func TestOTLPSelectorsMatchOfficialExporter(t *testing.T) {
	kinds := []sdkmetric.InstrumentKind{
		sdkmetric.InstrumentKindCounter, sdkmetric.InstrumentKindUpDownCounter, sdkmetric.InstrumentKindHistogram,
		sdkmetric.InstrumentKindGauge, sdkmetric.InstrumentKindObservableCounter,
		sdkmetric.InstrumentKindObservableUpDownCounter, sdkmetric.InstrumentKindObservableGauge,
	}
	for _, pref := range []string{"", "cumulative", "delta", "lowmemory", "Delta"} {
		setOTLPEnv(t, "OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", pref)
		official, err := otlpmetrichttp.New(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		ours, err := newOTLPExporter()
		if err != nil {
			t.Fatalf("%q: %v", pref, err)
		}
		for _, k := range kinds {
			if w, g := official.Temporality(k), ours.Temporality(k); w != g {
				t.Errorf("preference %q, %v: temporality official %v, ours %v", pref, k, w, g)
			}
			if w, g := official.Aggregation(k), ours.Aggregation(k); !reflect.DeepEqual(w, g) {
				t.Errorf("%v: aggregation official %#v, ours %#v", k, w, g)
			}
		}
	}
}

func TestOTLPEnvironment(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, _ := writeTestCert(t, dir)
	notPEM := filepath.Join(dir, "not.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o600)

	type check func(t *testing.T, e *otlpExporter)
	target := func(want string) check {
		return func(t *testing.T, e *otlpExporter) {
			if e.target != want {
				t.Errorf("target %q, want %q", e.target, want)
			}
		}
	}
	header := func(name, want string) check {
		return func(t *testing.T, e *otlpExporter) {
			if got := e.header.Get(name); got != want {
				t.Errorf("header %s = %q, want %q", name, got, want)
			}
		}
	}
	tests := []struct {
		name    string
		env     []string
		check   check
		wantErr string // substring; the variable to fix must be named
	}{
		{name: "base endpoint", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"}, check: target("http://c:4318/v1/metrics")},
		{name: "base with slash", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318/"}, check: target("https://c:4318/v1/metrics")},
		{name: "base with path", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "https://c/otlp/"}, check: target("https://c/otlp/v1/metrics")},
		{name: "metrics endpoint as is", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://b:2/custom/ingest?tenant=x"}, check: target("http://b:2/custom/ingest?tenant=x")},
		{name: "metrics endpoint without path", env: []string{"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://b:2"}, check: target("http://b:2/")},
		{name: "endpoint without scheme", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"}, wantErr: "OTEL_EXPORTER_OTLP_ENDPOINT must be an http:// or https:// URL"},
		{name: "grpc scheme", env: []string{"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "unix:///run/otel.sock"}, wantErr: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT must be"},
		{name: "credentials in url", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "https://user:hunter2@c"}, wantErr: "OTEL_EXPORTER_OTLP_ENDPOINT holds credentials"},

		{name: "headers decoded", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20tok%3D%3D , x-a = 1 ,"}, check: func(t *testing.T, e *otlpExporter) {
			header("Authorization", "Bearer tok==")(t, e)
			header("X-A", "1")(t, e)
			header("Content-Type", "application/x-protobuf")(t, e)
		}},
		{name: "metrics headers replace generic", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_HEADERS", "a=1,b=2", "OTEL_EXPORTER_OTLP_METRICS_HEADERS", "a=3"}, check: func(t *testing.T, e *otlpExporter) {
			header("A", "3")(t, e)
			header("B", "")(t, e)
		}},
		{name: "header without =", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_HEADERS", "a=1,Bearer sk-secret"}, wantErr: "OTEL_EXPORTER_OTLP_HEADERS: entry 2 is not name=value"},
		{name: "header bad escape", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_METRICS_HEADERS", "k=sk-%zz"}, wantErr: "OTEL_EXPORTER_OTLP_METRICS_HEADERS: entry 1 (k): the value is not valid percent-encoding"},
		{name: "header control char", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_HEADERS", "k=a%0Ab"}, wantErr: "control characters"},

		{name: "gzip", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"}, check: func(t *testing.T, e *otlpExporter) {
			if !e.gzip {
				t.Error("gzip off")
			}
		}},
		{name: "metrics compression wins", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_COMPRESSION", "gzip", "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "none"}, check: func(t *testing.T, e *otlpExporter) {
			if e.gzip {
				t.Error("gzip on")
			}
		}},
		{name: "bad compression", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"}, wantErr: `OTEL_EXPORTER_OTLP_COMPRESSION="zstd": want gzip or none`},

		{name: "default timeout", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"}, check: func(t *testing.T, e *otlpExporter) {
			if e.client.Timeout != 10*time.Second {
				t.Errorf("timeout %v", e.client.Timeout)
			}
		}},
		{name: "metrics timeout wins", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_TIMEOUT", "1000", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "250"}, check: func(t *testing.T, e *otlpExporter) {
			if e.client.Timeout != 250*time.Millisecond {
				t.Errorf("timeout %v", e.client.Timeout)
			}
		}},
		{name: "timeout with unit", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_TIMEOUT", "10s"}, wantErr: `OTEL_EXPORTER_OTLP_TIMEOUT="10s": want a positive number of milliseconds`},
		{name: "negative timeout", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "-1"}, wantErr: "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"},

		{name: "delta", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta"}, check: func(t *testing.T, e *otlpExporter) {
			if e.Temporality(sdkmetric.InstrumentKindCounter) != metricdata.DeltaTemporality || e.Temporality(sdkmetric.InstrumentKindUpDownCounter) != metricdata.CumulativeTemporality {
				t.Error("delta preference not applied")
			}
		}},
		{name: "bad temporality", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "weekly"}, wantErr: "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"},

		{name: "protocol http/protobuf", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"}, check: target("http://c/v1/metrics")},
		{name: "protocol grpc", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"}, wantErr: `OTEL_EXPORTER_OTLP_PROTOCOL="grpc": tollgate pushes OTLP over HTTP with protobuf only`},
		{name: "protocol http/json", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json"}, wantErr: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL=\"http/json\": tollgate pushes OTLP over HTTP with protobuf only"},
		{name: "metrics protocol wins", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"}, check: target("http://c/v1/metrics")},

		{name: "tls files", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "https://c", "OTEL_EXPORTER_OTLP_CERTIFICATE", certFile, "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE", certFile, "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", keyFile}, check: func(t *testing.T, e *otlpExporter) {
			cfg := e.client.Transport.(*http.Transport).TLSClientConfig
			if cfg == nil || cfg.RootCAs == nil || len(cfg.Certificates) != 1 {
				t.Errorf("TLS config not applied: %+v", cfg)
			}
		}},
		{name: "missing CA file", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "https://c", "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", filepath.Join(dir, "nope.pem")}, wantErr: "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE: open"},
		{name: "CA file not PEM", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "https://c", "OTEL_EXPORTER_OTLP_CERTIFICATE", notPEM}, wantErr: "OTEL_EXPORTER_OTLP_CERTIFICATE: " + notPEM + " holds no PEM certificate"},
		// Blank is unset, for the pair choice as for every other variable:
		// a whitespace-only metrics-specific half must not hide the
		// generic pair.
		{name: "blank metrics client cert falls back to generic pair", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "https://c", "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE", " \t", "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", " ", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", certFile, "OTEL_EXPORTER_OTLP_CLIENT_KEY", keyFile}, check: func(t *testing.T, e *otlpExporter) {
			if cfg := e.client.Transport.(*http.Transport).TLSClientConfig; cfg == nil || len(cfg.Certificates) != 1 {
				t.Errorf("generic client certificate pair not applied: %+v", cfg)
			}
		}},
		{name: "client cert without key", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "https://c", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", certFile}, wantErr: "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY must be set together"},
		{name: "client key not a key", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "https://c", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", certFile, "OTEL_EXPORTER_OTLP_CLIENT_KEY", notPEM}, wantErr: "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE/OTEL_EXPORTER_OTLP_CLIENT_KEY: tls:"},
		{name: "tls with http endpoint", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_CERTIFICATE", certFile}, wantErr: "OTEL_EXPORTER_OTLP_CERTIFICATE is set but the OTLP endpoint is http://"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			setOTLPEnv(t, tc.env...)
			e, err := newOTLPExporter()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				for _, secret := range []string{"sk-", "hunter2"} {
					if strings.Contains(err.Error(), secret) {
						t.Errorf("error quotes a secret: %v", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("newOTLPExporter: %v", err)
			}
			tc.check(t, e)
		})
	}
}

// writeTestCert writes a self-signed certificate for 127.0.0.1 that can
// serve as CA, server and client certificate at once.
func writeTestCert(t *testing.T, dir string) (certFile, keyFile string, pair tls.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tollgate test"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IsCA:        true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if pair, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, pair
}

// A collector that requires a client certificate and is signed by a CA
// only the certificate file knows: the push gets through only if both
// TLS variables took effect; without the CA it fails at once, since no
// retry can fix an untrusted certificate.
func TestOTLPMutualTLS(t *testing.T) {
	certFile, keyFile, pair := writeTestCert(t, t.TempDir())
	pool := x509.NewCertPool()
	pool.AddCert(pair.Leaf)
	var peerCerts atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peerCerts.Store(int32(len(r.TLS.PeerCertificates)))
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	var conns atomic.Int32
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	e := testOTLPExporter(t, srv.URL, "OTEL_EXPORTER_OTLP_CERTIFICATE", certFile,
		"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", certFile, "OTEL_EXPORTER_OTLP_CLIENT_KEY", keyFile)
	if err := e.Export(context.Background(), tinyMetrics()); err != nil {
		t.Fatalf("export over mTLS: %v", err)
	}
	if peerCerts.Load() != 1 {
		t.Errorf("collector saw %d client certificates, want 1", peerCerts.Load())
	}

	untrusting := testOTLPExporter(t, srv.URL)
	conns.Store(0)
	err := untrusting.Export(context.Background(), tinyMetrics())
	var certErr *tls.CertificateVerificationError
	if !errors.As(err, &certErr) || conns.Load() != 1 {
		t.Errorf("untrusted collector: error %v after %d connection(s), want a certificate error after 1", err, conns.Load())
	}
}

func tinyMetrics() *metricdata.ResourceMetrics {
	return &metricdata.ResourceMetrics{
		Resource: resource.NewSchemaless(attribute.String("service.name", "tollgate")),
		ScopeMetrics: []metricdata.ScopeMetrics{{
			Scope: instrumentation.Scope{Name: "test"},
			Metrics: []metricdata.Metrics{{Name: "requests", Data: metricdata.Sum[int64]{
				Temporality: metricdata.CumulativeTemporality, IsMonotonic: true,
				DataPoints: []metricdata.DataPoint[int64]{{Attributes: attrSet(attribute.String("model", "m")), StartTime: otlpT0, Time: otlpT1, Value: 1}},
			}}},
		}},
	}
}

// scriptedCollector answers the n-th push (from 1) with respond and
// counts pushes; it checks nothing about them, otlpCollector does that.
type scriptedCollector struct {
	n       atomic.Int32
	mu      sync.Mutex
	bodies  []string
	respond func(n int, w http.ResponseWriter, r *http.Request)
}

func (c *scriptedCollector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	c.bodies = append(c.bodies, string(b))
	c.mu.Unlock()
	c.respond(int(c.n.Add(1)), w, r)
}

func startScripted(t *testing.T, respond func(n int, w http.ResponseWriter, r *http.Request)) (*scriptedCollector, string) {
	c := &scriptedCollector{respond: respond}
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)
	return c, srv.URL
}

func TestOTLPRetriesThrottlingHonouringRetryAfter(t *testing.T) {
	col, url := startScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "busy", http.StatusServiceUnavailable)
		}
	})
	e := testOTLPExporter(t, url)
	start := time.Now()
	if err := e.Export(context.Background(), tinyMetrics()); err != nil {
		t.Fatalf("export: %v", err)
	}
	if n := col.n.Load(); n != 2 {
		t.Errorf("%d pushes, want 2", n)
	}
	// Our backoff is 5ms here; only Retry-After makes the wait a second.
	if d := time.Since(start); d < time.Second {
		t.Errorf("retried after %v, want at least the 1s Retry-After", d)
	}
	if col.bodies[0] != col.bodies[1] {
		t.Error("the retry sent a different body")
	}
}

func TestOTLPRetriesTransportErrors(t *testing.T) {
	col, url := startScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 1 { // drop the connection without answering
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
		}
	})
	e := testOTLPExporter(t, url)
	if err := e.Export(context.Background(), tinyMetrics()); err != nil {
		t.Fatalf("export: %v", err)
	}
	if n := col.n.Load(); n != 2 {
		t.Errorf("%d pushes, want 2", n)
	}
}

// A 400 is the collector refusing the data: resending cannot help. It
// echoes the credential it was sent, as some do, and the error must not.
func TestOTLPRejectionIsPermanentAndRedacted(t *testing.T) {
	const key = "sk-collector-canary-8c1d"
	col, url := startScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
		http.Error(w, "invalid token\x00 for header "+r.Header.Get("Authorization")+"\n\n"+strings.Repeat("metric payload ", 100), http.StatusBadRequest)
	})
	e := testOTLPExporter(t, url, "OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer "+key)
	err := e.Export(context.Background(), tinyMetrics())
	if err == nil {
		t.Fatal("export succeeded")
	}
	if n := col.n.Load(); n != 1 {
		t.Errorf("%d pushes, want 1 (400 is not retried)", n)
	}
	msg := err.Error()
	if strings.Contains(msg, key) || strings.Contains(msg, "Bearer") {
		t.Errorf("error quotes the header value: %s", msg)
	}
	if !strings.Contains(msg, "400 Bad Request") || !strings.Contains(msg, "invalid token") || !strings.Contains(msg, "[redacted]") {
		t.Errorf("error does not explain the rejection: %s", msg)
	}
	if len(msg) > 400 || strings.ContainsRune(msg, 0) {
		t.Errorf("error quotes too much of the body (%d bytes): %q", len(msg), msg)
	}
}

func TestOTLPRetryStopsAtTheDeadline(t *testing.T) {
	const key = "sk-deadline-canary-33"
	t.Run("backoff", func(t *testing.T) {
		col, url := startScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
			http.Error(w, "echo "+r.Header.Get("X-Api-Key"), http.StatusBadGateway)
		})
		e := testOTLPExporter(t, url, "OTEL_EXPORTER_OTLP_HEADERS", "x-api-key="+key)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := e.Export(ctx, tinyMetrics())
		// Unbounded, it would retry for retryElapsed (5s); the slack is
		// for a loaded machine, not for the exporter.
		if err == nil || time.Since(start) > time.Second {
			t.Fatalf("error %v after %v, want a failure by the 300ms deadline", err, time.Since(start))
		}
		if col.n.Load() < 2 {
			t.Errorf("%d pushes, want retries until the deadline", col.n.Load())
		}
		if !strings.Contains(err.Error(), "502 Bad Gateway") || strings.Contains(err.Error(), key) {
			t.Errorf("error %q: want the status and no header value", err)
		}
	})
	// The deadline falls inside an attempt: the error still gives the
	// collector's last answer, not just "context deadline exceeded".
	t.Run("mid-attempt", func(t *testing.T) {
		_, url := startScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
			if n > 1 {
				<-r.Context().Done()
				return
			}
			http.Error(w, "echo "+r.Header.Get("X-Api-Key"), http.StatusBadGateway)
		})
		e := testOTLPExporter(t, url, "OTEL_EXPORTER_OTLP_HEADERS", "x-api-key="+key)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		err := e.Export(ctx, tinyMetrics())
		if err == nil || !strings.Contains(err.Error(), "502 Bad Gateway") || !strings.Contains(err.Error(), "deadline") || strings.Contains(err.Error(), key) {
			t.Errorf("error %v: want the last status, the deadline and no header value", err)
		}
	})
	// A Retry-After past the deadline, in seconds or as an HTTP date
	// (RFC 9110 10.2.3), is not waited for at all.
	for name, retryAfter := range map[string]func() string{
		"retry-after seconds": func() string { return "30" },
		"retry-after date":    func() string { return time.Now().Add(30 * time.Second).UTC().Format(http.TimeFormat) },
	} {
		t.Run(name, func(t *testing.T) {
			col, url := startScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", retryAfter())
				w.WriteHeader(http.StatusTooManyRequests)
			})
			e := testOTLPExporter(t, url)
			e.retryElapsed = time.Hour // so only the deadline can stop it
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			start := time.Now()
			err := e.Export(ctx, tinyMetrics())
			if err == nil || time.Since(start) > time.Second || col.n.Load() != 1 {
				t.Errorf("error %v after %v and %d pushes, want an immediate failure", err, time.Since(start), col.n.Load())
			}
		})
	}
}

// Partial success is returned from Export, as the official exporter
// does; the periodic reader passes it to otel.Handle.
func TestOTLPPartialSuccessIsReported(t *testing.T) {
	const key = "sk-partial-canary-91"
	_, url := startScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
		resp, _ := proto.Marshal(&colmetricspb.ExportMetricsServiceResponse{PartialSuccess: &colmetricspb.ExportMetricsPartialSuccess{
			RejectedDataPoints: 3,
			ErrorMessage:       "dropped points with bad labels; caller " + r.Header.Get("Authorization"),
		}})
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(resp)
	})
	e := testOTLPExporter(t, url, "OTEL_EXPORTER_OTLP_HEADERS", "authorization="+key)
	err := e.Export(context.Background(), tinyMetrics())
	var ps *otlpPartialSuccess
	if !errors.As(err, &ps) {
		t.Fatalf("error %v, want a partial success", err)
	}
	if ps.rejected != 3 || !strings.Contains(ps.message, "dropped points with bad labels") {
		t.Errorf("partial success %+v", ps)
	}
	if strings.Contains(err.Error(), key) {
		t.Errorf("error quotes the header value: %v", err)
	}
}

// An empty partial_success is how a collector says "all accepted".
func TestOTLPEmptyPartialSuccessIsSuccess(t *testing.T) {
	_, url := startScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
		resp, _ := proto.Marshal(&colmetricspb.ExportMetricsServiceResponse{PartialSuccess: &colmetricspb.ExportMetricsPartialSuccess{}})
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(resp)
	})
	if err := testOTLPExporter(t, url).Export(context.Background(), tinyMetrics()); err != nil {
		t.Fatalf("export: %v", err)
	}
}

func TestOTLPShutdown(t *testing.T) {
	col, url := startScripted(t, func(int, http.ResponseWriter, *http.Request) {})
	e := testOTLPExporter(t, url)
	if err := e.ForceFlush(context.Background()); err != nil {
		t.Errorf("ForceFlush: %v", err)
	}
	if err := e.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	err := e.Export(context.Background(), tinyMetrics())
	if !errors.Is(err, sdkmetric.ErrExporterShutdown) || !strings.Contains(err.Error(), "after shutdown") {
		t.Errorf("export after shutdown: %v", err)
	}
	if n := col.n.Load(); n != 0 {
		t.Errorf("%d pushes after shutdown", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.ForceFlush(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("ForceFlush with a cancelled context: %v", err)
	}
}

// The SDK may call Export from several readers at once; -race checks it.
func TestOTLPConcurrentExports(t *testing.T) {
	col := &otlpCollector{}
	srv := httptest.NewServer(col)
	t.Cleanup(srv.Close)
	e := testOTLPExporter(t, srv.URL, "OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if err := e.Export(context.Background(), tinyMetrics()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if exports, errs := col.snapshot(); len(exports) != 8 || len(errs) > 0 {
		t.Errorf("%d exports, collector errors %q", len(exports), errs)
	}
}

// The collector's text is squeezed (white space runs to one space) before
// secrets are cut from it, so the secrets must be squeezed the same way or
// a header value holding a run of spaces comes back in clear.
func TestOTLPRedactionSurvivesWhiteSpaceSqueezing(t *testing.T) {
	_, url := startScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
		http.Error(w, "bad key "+r.Header.Get("X-Api-Key"), http.StatusUnauthorized)
	})
	e := testOTLPExporter(t, url, "OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=abc1%20%20def2")
	err := e.Export(context.Background(), tinyMetrics())
	if err == nil {
		t.Fatal("export succeeded")
	}
	if msg := err.Error(); strings.Contains(msg, "abc1") || strings.Contains(msg, "def2") || !strings.Contains(msg, "bad key [redacted]") {
		t.Errorf("error %q: want the key redacted", msg)
	}

	// However the value is spaced, and however the echo is, it is cut.
	for _, value := range []string{"abc1\t\tdef2", "abc1 \t def2", "Bearer  sk-spaced\t\tkey-77", "abc1\u00a0\u00a0def2", "abc1\u200b\u200bdef2"} {
		setOTLPEnv(t, "OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_HEADERS", "k="+strings.ReplaceAll(value, "\t", "%09"))
		e, err := newOTLPExporter()
		if err != nil {
			t.Fatalf("%q: %v", value, err)
		}
		for _, echo := range []string{value, strings.Join(strings.Fields(value), " "), strings.Join(strings.Fields(value), "\n \r\n")} {
			if got := e.sanitize("echo: " + echo + " end"); got != "echo: [redacted] end" {
				t.Errorf("header %q echoed as %q: sanitised to %q", value, echo, got)
			}
		}
	}
}

// One header value inside another must not cut the longer one in pieces
// and leave the rest of it in clear.
func TestOTLPRedactionPrefersLongestSecret(t *testing.T) {
	setOTLPEnv(t, "OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_HEADERS", "a=key-1234,b=tenant-key-1234-rest")
	e, err := newOTLPExporter()
	if err != nil {
		t.Fatal(err)
	}
	if got := e.sanitize("got tenant-key-1234-rest and key-1234"); got != "got [redacted] and [redacted]" {
		t.Errorf("sanitised to %q", got)
	}
}

// A reply cut by the excerpt's read limit may end in the first part of a
// header value; that part is as secret as the whole.
func TestOTLPRedactionOfASecretCutByTheReadLimit(t *testing.T) {
	const key = "sk-straddling-canary-4242"
	for cut := 1; cut < len(key); cut++ {
		_, url := startScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusBadRequest)
			// Squeezing makes 4 KiB of white space one space, so the
			// echoed key lands well inside the 200-byte excerpt.
			io.WriteString(w, "rejected"+strings.Repeat(" ", 4<<10-len("rejected")-cut)+key)
		})
		e := testOTLPExporter(t, url, "OTEL_EXPORTER_OTLP_HEADERS", "authorization="+key)
		err := e.Export(context.Background(), tinyMetrics())
		if err == nil {
			t.Fatal("export succeeded")
		}
		if msg := err.Error(); !strings.HasSuffix(msg, `400 Bad Request: "rejected"`) {
			t.Errorf("body cut %d byte(s) into the key: error %q quotes its start", cut, msg)
		}
	}
}

func TestOTLPRetryAfterDate(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		header   string
		min, max time.Duration
	}{
		{"2", 2 * time.Second, 2 * time.Second},
		{" 0 ", 0, 0},
		{"-5", 0, 0},
		{"soon", 0, 0},
		{"99999999999999999", otlpMaxRetryAfter, otlpMaxRetryAfter},
		{"99999999999999999999999", otlpMaxRetryAfter, otlpMaxRetryAfter},
		{now.Add(10 * time.Second).UTC().Format(http.TimeFormat), 8 * time.Second, 10 * time.Second},
		{now.Add(10 * time.Second).UTC().Format(time.RFC850), 8 * time.Second, 10 * time.Second},
		{now.Add(10 * time.Second).UTC().Format(time.ANSIC), 8 * time.Second, 10 * time.Second},
		{now.Add(-time.Hour).UTC().Format(http.TimeFormat), 0, 0},
		{now.Add(48 * time.Hour).UTC().Format(http.TimeFormat), otlpMaxRetryAfter, otlpMaxRetryAfter},
	} {
		if got := retryAfter(tc.header); got < tc.min || got > tc.max {
			t.Errorf("Retry-After %q: wait %v, want %v to %v", tc.header, got, tc.min, tc.max)
		}
	}
}

// Retry-After may be an HTTP date (RFC 9110 10.2.3); it is honoured like
// the delay in seconds (past the deadline: TestOTLPRetryStopsAtTheDeadline).
func TestOTLPRetriesHonouringRetryAfterDate(t *testing.T) {
	t.Run("honoured", func(t *testing.T) {
		col, url := startScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
			if n == 1 {
				// Whole seconds only, so the wait is between 1s and 2s.
				w.Header().Set("Retry-After", time.Now().Add(2*time.Second).UTC().Format(http.TimeFormat))
				http.Error(w, "busy", http.StatusTooManyRequests)
			}
		})
		e := testOTLPExporter(t, url)
		start := time.Now()
		if err := e.Export(context.Background(), tinyMetrics()); err != nil {
			t.Fatalf("export: %v", err)
		}
		if d := time.Since(start); col.n.Load() != 2 || d < 900*time.Millisecond {
			t.Errorf("%d pushes in %v, want 2 at least a second apart", col.n.Load(), d)
		}
	})
}

// A success reply too big to read is not a malformed one: the data was
// accepted, and the error must say that rather than report a decode
// failure of a reply it never read whole.
func TestOTLPOversizedReply(t *testing.T) {
	reply := func(size int) func(int, http.ResponseWriter, *http.Request) {
		return func(n int, w http.ResponseWriter, r *http.Request) {
			resp, _ := proto.Marshal(&colmetricspb.ExportMetricsServiceResponse{PartialSuccess: &colmetricspb.ExportMetricsPartialSuccess{
				RejectedDataPoints: 1, ErrorMessage: strings.Repeat("m", size),
			}})
			w.Header().Set("Content-Type", "application/x-protobuf")
			w.Write(resp)
		}
	}
	t.Run("over the limit", func(t *testing.T) {
		col, url := startScripted(t, reply(otlpMaxReply))
		err := testOTLPExporter(t, url).Export(context.Background(), tinyMetrics())
		if err == nil || !strings.Contains(err.Error(), "accepted") || !strings.Contains(err.Error(), "too large") || strings.Contains(err.Error(), "EOF") {
			t.Errorf("error %v, want one saying the export was accepted and the reply too large", err)
		}
		if col.n.Load() != 1 {
			t.Errorf("%d pushes, want 1", col.n.Load())
		}
	})
	t.Run("under the limit", func(t *testing.T) {
		_, url := startScripted(t, reply(otlpMaxReply-16))
		var ps *otlpPartialSuccess
		if err := testOTLPExporter(t, url).Export(context.Background(), tinyMetrics()); !errors.As(err, &ps) || ps.rejected != 1 {
			t.Errorf("error %v, want the partial success", err)
		}
	})
}

// The excerpt is cut at the length limit, on a rune boundary; redaction
// has already happened, so there is no reason to cut further back.
func TestOTLPExcerptCutAtTheLimit(t *testing.T) {
	setOTLPEnv(t, "OTEL_EXPORTER_OTLP_ENDPOINT", "http://c")
	e, err := newOTLPExporter()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"id " + strings.Repeat("x", 300), "id " + strings.Repeat("é", 200), "é" + strings.Repeat("€", 100)} {
		got := e.sanitize(s)
		body, ok := strings.CutSuffix(got, "…")
		if !ok || !utf8.ValidString(got) || len(body) > 200 || len(body) < 200-utf8.UTFMax+1 || !strings.HasPrefix(s, body) {
			t.Errorf("sanitize(%.20q…) = %q (%d bytes), want the first 200 bytes or so and …", s, got, len(body))
		}
	}
}

// Blank is unset for the switch that turns the push on, as it is for the
// exporter: an endpoint of " " must not turn it on and then fail startup.
func TestTelemetryBlankOTLPEndpointIsUnset(t *testing.T) {
	for _, kv := range [][]string{
		{"OTEL_EXPORTER_OTLP_ENDPOINT", " "},
		{"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "\t"},
		{"OTEL_EXPORTER_OTLP_ENDPOINT", " ", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", " \n"},
	} {
		setOTLPEnv(t, kv...)
		tel, err := newTelemetry(context.Background(), splitList(""), nil, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Errorf("%q: newTelemetry: %v", kv, err)
			continue
		}
		tel.shutdown(context.Background())
		if otlpConfigured() {
			t.Errorf("%q: otlpConfigured says yes", kv)
		}
	}
}
