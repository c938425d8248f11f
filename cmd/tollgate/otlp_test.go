package main

import (
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
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
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
	e, err := newOTLPExporter(context.Background(), otlpRetry{5 * time.Millisecond, 20 * time.Millisecond, 5 * time.Second})
	if err != nil {
		t.Fatalf("newOTLPExporter: %v", err)
	}
	t.Cleanup(func() { e.Shutdown(context.Background()) })
	return e
}

var (
	otlpT0 = time.Unix(1_700_000_000, 123_456_789)
	otlpT1 = otlpT0.Add(time.Minute)
)

func attrSet(kv ...attribute.KeyValue) attribute.Set { return attribute.NewSet(kv...) }

func TestOTLPEnvironment(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, _ := writeTestCert(t, dir)
	notPEM := filepath.Join(dir, "not.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o600)

	type check func(t *testing.T, c *otlpConfig)
	target := func(want string) check {
		return func(t *testing.T, c *otlpConfig) {
			if got := c.target.String(); got != want {
				t.Errorf("target %q, want %q", got, want)
			}
		}
	}
	header := func(name, want string) check {
		return func(t *testing.T, c *otlpConfig) {
			h := http.Header{}
			for k, v := range c.header {
				h.Set(k, v)
			}
			if got := h.Get(name); got != want {
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
		{name: "metrics endpoint as is", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://b:2/custom/ingest"}, check: target("http://b:2/custom/ingest")},
		// The exporter sends no query: one must fail startup, not vanish.
		{name: "query in endpoint", env: []string{"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://b:2/custom/ingest?tenant=x&key=sk-q"}, wantErr: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT has a query string"},
		{name: "empty query in endpoint", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://b:2/?"}, wantErr: "OTEL_EXPORTER_OTLP_ENDPOINT has a query string"},
		{name: "metrics endpoint without path", env: []string{"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://b:2"}, check: target("http://b:2/")},
		{name: "endpoint without scheme", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"}, wantErr: "OTEL_EXPORTER_OTLP_ENDPOINT must be an http:// or https:// URL"},
		{name: "grpc scheme", env: []string{"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "unix:///run/otel.sock"}, wantErr: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT must be"},
		{name: "credentials in url", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "https://user:hunter2@c"}, wantErr: "OTEL_EXPORTER_OTLP_ENDPOINT holds credentials"},

		{name: "headers decoded", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20tok%3D%3D , x-a = 1 ,"}, check: func(t *testing.T, e *otlpConfig) {
			header("Authorization", "Bearer tok==")(t, e)
			header("X-A", "1")(t, e)
		}},
		{name: "metrics headers replace generic", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_HEADERS", "a=1,b=2", "OTEL_EXPORTER_OTLP_METRICS_HEADERS", "a=3"}, check: func(t *testing.T, e *otlpConfig) {
			header("A", "3")(t, e)
			header("B", "")(t, e)
		}},
		{name: "header without =", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_HEADERS", "a=1,Bearer sk-secret"}, wantErr: "OTEL_EXPORTER_OTLP_HEADERS: entry 2 is not name=value"},
		{name: "header bad escape", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_METRICS_HEADERS", "k=sk-%zz"}, wantErr: "OTEL_EXPORTER_OTLP_METRICS_HEADERS: entry 1 (k): the value is not valid percent-encoding"},
		{name: "header control char", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_HEADERS", "k=a%0Ab"}, wantErr: "control characters"},

		{name: "gzip", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"}, check: func(t *testing.T, e *otlpConfig) {
			if !e.gzip {
				t.Error("gzip off")
			}
		}},
		{name: "metrics compression wins", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_COMPRESSION", "gzip", "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "none"}, check: func(t *testing.T, e *otlpConfig) {
			if e.gzip {
				t.Error("gzip on")
			}
		}},
		{name: "bad compression", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"}, wantErr: `OTEL_EXPORTER_OTLP_COMPRESSION="zstd": want gzip or none`},

		{name: "default timeout", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"}, check: func(t *testing.T, e *otlpConfig) {
			if e.timeout != 10*time.Second {
				t.Errorf("timeout %v", e.timeout)
			}
		}},
		{name: "metrics timeout wins", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_TIMEOUT", "1000", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "250"}, check: func(t *testing.T, e *otlpConfig) {
			if e.timeout != 250*time.Millisecond {
				t.Errorf("timeout %v", e.timeout)
			}
		}},
		{name: "timeout with unit", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_TIMEOUT", "10s"}, wantErr: `OTEL_EXPORTER_OTLP_TIMEOUT="10s": want a positive number of milliseconds`},
		{name: "negative timeout", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "-1"}, wantErr: "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"},

		{name: "delta", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta"}, check: func(t *testing.T, e *otlpConfig) {
			if e.temporality(sdkmetric.InstrumentKindCounter) != metricdata.DeltaTemporality || e.temporality(sdkmetric.InstrumentKindUpDownCounter) != metricdata.CumulativeTemporality {
				t.Error("delta preference not applied")
			}
		}},
		{name: "bad temporality", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "weekly"}, wantErr: "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"},
		{name: "exponential histograms", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION", "base2_exponential_bucket_histogram"}, check: target("http://c/v1/metrics")},
		{name: "bad histogram aggregation", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION", "exponential"}, wantErr: `OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION="exponential": want explicit_bucket_histogram or base2_exponential_bucket_histogram`},

		{name: "protocol http/protobuf", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"}, check: target("http://c/v1/metrics")},
		{name: "protocol grpc", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"}, check: func(t *testing.T, c *otlpConfig) {
			if !c.grpc || c.target.String() != "http://c:4317" {
				t.Errorf("grpc %v to %s, want gRPC to http://c:4317 (no /v1/metrics)", c.grpc, c.target)
			}
		}},
		{name: "grpc endpoint with a path", env: []string{"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://c:4318/v1/metrics", "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"}, wantErr: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT has a path, which OTLP over gRPC has no use for"},
		{name: "protocol http/json", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json"}, wantErr: `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL="http/json": want http/protobuf or grpc`},
		{name: "metrics protocol wins", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c", "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"}, check: target("http://c/v1/metrics")},

		{name: "tls files", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "https://c", "OTEL_EXPORTER_OTLP_CERTIFICATE", certFile, "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE", certFile, "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", keyFile}, check: func(t *testing.T, e *otlpConfig) {
			cfg := e.tls
			if cfg == nil || cfg.RootCAs == nil || len(cfg.Certificates) != 1 {
				t.Errorf("TLS config not applied: %+v", cfg)
			}
		}},
		{name: "missing CA file", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "https://c", "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", filepath.Join(dir, "nope.pem")}, wantErr: "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE: open"},
		{name: "CA file not PEM", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "https://c", "OTEL_EXPORTER_OTLP_CERTIFICATE", notPEM}, wantErr: "OTEL_EXPORTER_OTLP_CERTIFICATE: " + notPEM + " holds no PEM certificate"},
		// Blank is unset, for the pair choice as for every other variable:
		// a whitespace-only metrics-specific half must not hide the
		// generic pair.
		{name: "blank metrics client cert falls back to generic pair", env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "https://c", "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE", " \t", "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", " ", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", certFile, "OTEL_EXPORTER_OTLP_CLIENT_KEY", keyFile}, check: func(t *testing.T, e *otlpConfig) {
			if cfg := e.tls; cfg == nil || len(cfg.Certificates) != 1 {
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
			c, err := otlpConfigFromEnv()
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
				t.Fatalf("otlpConfigFromEnv: %v", err)
			}
			tc.check(t, c)
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
		// Unbounded, it would retry for the 5s MaxElapsedTime; the slack
		// is for a loaded machine, not for the exporter.
		if err == nil || time.Since(start) > time.Second {
			t.Fatalf("error %v after %v, want a failure by the 300ms deadline", err, time.Since(start))
		}
		if col.n.Load() < 2 {
			t.Errorf("%d pushes, want retries until the deadline", col.n.Load())
		}
		// Whether the collector's reply is quoted depends on where the
		// deadline falls (between attempts, or inside one on a loaded
		// machine); TestOTLPRejectionIsPermanentAndRedacted pins the
		// quoting. Here: the deadline, and never the header value.
		if strings.Contains(err.Error(), key) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error %q: want the deadline and no header value", err)
		}
	})
	// A Retry-After past the deadline, in seconds or as an HTTP date
	// (RFC 9110 10.2.3), does not hold the export past it.
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
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			start := time.Now()
			err := e.Export(ctx, tinyMetrics())
			if err == nil || time.Since(start) > 1500*time.Millisecond || col.n.Load() != 1 {
				t.Errorf("error %v after %v and %d pushes, want a failure at the 500ms deadline after one push", err, time.Since(start), col.n.Load())
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
	if err == nil || !strings.Contains(err.Error(), "dropped points with bad labels") || !strings.Contains(err.Error(), "3 metric data points rejected") {
		t.Fatalf("error %v, want the partial success", err)
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
		c, err := otlpConfigFromEnv()
		if err != nil {
			t.Fatalf("%q: %v", value, err)
		}
		e := &otlpExporter{secrets: c.secrets}
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
	c, err := otlpConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	e := &otlpExporter{secrets: c.secrets}
	if got := e.sanitize("got tenant-key-1234-rest and key-1234"); got != "got [redacted] and [redacted]" {
		t.Errorf("sanitised to %q", got)
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

// An error is cut at the length limit, on a rune boundary; redaction has
// already happened, so there is no reason to cut further back.
func TestOTLPExcerptCutAtTheLimit(t *testing.T) {
	setOTLPEnv(t, "OTEL_EXPORTER_OTLP_ENDPOINT", "http://c")
	c, err := otlpConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	e := &otlpExporter{secrets: c.secrets}
	for _, s := range []string{"id " + strings.Repeat("x", 300), "id " + strings.Repeat("é", 200), "é" + strings.Repeat("€", 100)} {
		got := e.sanitize(s)
		body, ok := strings.CutSuffix(got, "…")
		if !ok || !utf8.ValidString(got) || len(body) > otlpErrorLimit || len(body) < otlpErrorLimit-utf8.UTFMax+1 || !strings.HasPrefix(s, body) {
			t.Errorf("sanitize(%.20q…) = %q (%d bytes), want the first %d bytes or so and …", s, got, len(body), otlpErrorLimit)
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

// The metrics-specific endpoint is used as is, path and all, and the
// headers arrive as given: what otlpConfigFromEnv checked is what the
// exporter sends.
func TestOTLPConfigReachesTheWire(t *testing.T) {
	var path, tenant, ua atomic.Value
	_, url := startScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
		path.Store(r.URL.RequestURI())
		tenant.Store(r.Header.Get("X-Tenant"))
		ua.Store(r.Header.Get("User-Agent"))
	})
	e := testOTLPExporter(t, "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", url+"/custom/ingest",
		"OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")
	if err := e.Export(context.Background(), tinyMetrics()); err != nil {
		t.Fatalf("export: %v", err)
	}
	if path.Load() != "/custom/ingest" || tenant.Load() != "acme" {
		t.Errorf("pushed to %v with X-Tenant %v, want /custom/ingest and acme", path.Load(), tenant.Load())
	}
	if s, _ := ua.Load().(string); !strings.HasPrefix(s, "tollgate/") {
		t.Errorf("User-Agent %q does not name tollgate", s)
	}
}

// grpcCollector is an OTLP/gRPC metrics receiver; fail, when set, is
// what it answers with. As the server's stats handler it also sees the
// compression each request came with, which metadata does not show.
type grpcCollector struct {
	colmetricspb.UnimplementedMetricsServiceServer
	mu        sync.Mutex
	reqs      []*colmetricspb.ExportMetricsServiceRequest
	md        []metadata.MD
	encodings []string
	fail      func(metadata.MD) error
}

func (c *grpcCollector) HandleRPC(_ context.Context, s stats.RPCStats) {
	if in, ok := s.(*stats.InHeader); ok {
		c.mu.Lock()
		c.encodings = append(c.encodings, in.Compression)
		c.mu.Unlock()
	}
}
func (c *grpcCollector) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (c *grpcCollector) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (c *grpcCollector) HandleConn(context.Context, stats.ConnStats) {}

func (c *grpcCollector) Export(ctx context.Context, req *colmetricspb.ExportMetricsServiceRequest) (*colmetricspb.ExportMetricsServiceResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reqs, c.md = append(c.reqs, req), append(c.md, md)
	if c.fail != nil {
		return nil, c.fail(md)
	}
	return &colmetricspb.ExportMetricsServiceResponse{}, nil
}

func startGRPCCollector(t *testing.T, col *grpcCollector) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.StatsHandler(col))
	colmetricspb.RegisterMetricsServiceServer(srv, col)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return "http://" + lis.Addr().String()
}

// OTEL_EXPORTER_OTLP_PROTOCOL=grpc pushes to a gRPC collector, with the
// headers as metadata and either compression.
func TestOTLPOverGRPC(t *testing.T) {
	for _, compression := range []string{"none", "gzip"} {
		t.Run(compression, func(t *testing.T) {
			col := &grpcCollector{}
			url := startGRPCCollector(t, col)
			e := testOTLPExporter(t, url, "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "OTEL_EXPORTER_OTLP_COMPRESSION", compression,
				"OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")
			if err := e.Export(context.Background(), tinyMetrics()); err != nil {
				t.Fatalf("export: %v", err)
			}
			col.mu.Lock()
			defer col.mu.Unlock()
			if len(col.reqs) != 1 || findMetric(col.reqs[0], "requests") == nil {
				t.Fatalf("collector got %d requests: %v", len(col.reqs), col.reqs)
			}
			if got := col.md[0].Get("x-tenant"); !slices.Equal(got, []string{"acme"}) {
				t.Errorf("x-tenant metadata %q, want acme", got)
			}
			want := map[string]string{"none": "", "gzip": "gzip"}[compression]
			if !slices.Equal(col.encodings, []string{want}) {
				t.Errorf("request compression %q, want %q", col.encodings, want)
			}
		})
	}
}

// A gRPC collector's status message is the collector's own text, and it
// may echo a header: the error is redacted as over HTTP.
func TestOTLPOverGRPCRejectionIsRedacted(t *testing.T) {
	const key = "sk-grpc-canary-5150"
	col := &grpcCollector{fail: func(md metadata.MD) error {
		return status.Error(codes.InvalidArgument, "bad token "+strings.Join(md.Get("authorization"), ","))
	}}
	url := startGRPCCollector(t, col)
	e := testOTLPExporter(t, url, "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer "+key)
	err := e.Export(context.Background(), tinyMetrics())
	if err == nil || strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), "bad token [redacted]") {
		t.Errorf("error %v: want the collector's message with the header value cut", err)
	}
	if len(col.reqs) != 1 {
		t.Errorf("%d pushes, want 1 (InvalidArgument is not retried)", len(col.reqs))
	}
}
