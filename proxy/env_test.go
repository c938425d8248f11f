package proxy

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate/tollgate/audit"
	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/meteringtest"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
	"github.com/tollgate/tollgate/registry"
	"github.com/tollgate/tollgate/resolver"
)

// Canary keys: real-looking provider keys that must never appear anywhere a
// client, a log or a record can see.
const (
	canaryAnthropic = "sk-ant-api03-CANARYanthropicKEY0123456789abcdef"
	canaryOpenAI    = "sk-proj-CANARYopenaiKEY0123456789abcdef"
	canaryGemini    = "AIzaSyCANARYgeminiKEY0123456789abc"
)

var canaries = []string{canaryAnthropic, canaryOpenAI, canaryGemini}

// testEnv is a running tollgate in front of a fake provider: the real fiber
// server on 127.0.0.1, the real resolver on a SQLite file.
type testEnv struct {
	t   testing.TB
	URL string
	// AdminURL is the admin listener's: the admin API and /metrics.
	AdminURL string
	fake     *upstreamtest.Server
	fakeURL  string
	svc      *resolver.Service
	sink     *meteringtest.Sink
	srv      *Server
	logs     *testkit.LogBuffer
	reg      *registry.Holder
	cancel   context.CancelFunc
	baseCtx  context.Context
	shutdown func()
	audit    *audit.Log
}

type envOptions struct {
	fake       upstreamtest.Config
	idle       time.Duration
	headerWait time.Duration
	// registryEdit rewrites the registry YAML before loading.
	registryEdit func(string) string
	pricer       Pricer
	// upstreamURL, if set, replaces the fake provider in the registry.
	upstreamURL string
	// strictBaseURL refuses credential base URLs on loopback and private
	// addresses, as a default deployment does; tests point them at fakes.
	strictBaseURL bool
	// owners backs the stored-object owner check (Config.Owners).
	owners OwnerLookup
	// authLimits and refusals set the Config fields of the same names.
	authLimits AuthLimitConfig
	refusals   RefusalCounter
	// sink, if set, wraps the in-memory sink as the server's Sink.
	sink func(*meteringtest.Sink) Sink
	// governor sets Config.Governor (gov_*_test.go).
	governor *governance.Governor
	// resolver wraps the real resolver as Config.Resolver; failover and
	// health set the Config fields of the same names (failover_test.go).
	resolver func(CredentialResolver) CredentialResolver
	failover FailoverConfig
	health   HealthTracker
	// audit turns the audit log on (Config.Audit); dbURL, if set, is the
	// database instead of a SQLite file (adminaudit_test.go).
	audit bool
	dbURL string
}

func mustRegistryYAML(tb testing.TB, fakeURL string) string {
	tb.Helper()
	b, err := os.ReadFile("../harnesses.yaml")
	if err != nil {
		tb.Fatal(err)
	}
	y := string(b)
	for _, u := range []string{"https://api.anthropic.com", "https://api.openai.com", "https://generativelanguage.googleapis.com"} {
		y = strings.ReplaceAll(y, "base_url: "+u+"\n", "base_url: "+fakeURL+"\n    forward_headers: [X-Fake-Fault, X-Fake-Gap, X-Fake-Events, X-Fake-TTFB, X-Fake-Chunk-Bytes]\n")
	}
	return y
}

func newEnv(tb testing.TB, o envOptions) *testEnv {
	tb.Helper()
	if o.fake.Keys == nil && o.fake.Accept == nil {
		o.fake.Keys = canaries
	}
	fake, fakeURL := upstreamtest.MustStart(tb, o.fake)
	if o.upstreamURL != "" {
		fakeURL = o.upstreamURL
	}
	y := mustRegistryYAML(tb, fakeURL)
	if o.registryEdit != nil {
		y = o.registryEdit(y)
	}
	regPath := filepath.Join(tb.TempDir(), "harnesses.yaml")
	if err := os.WriteFile(regPath, []byte(y), 0o600); err != nil {
		tb.Fatal(err)
	}
	logs := &testkit.LogBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg, err := registry.NewHolder(regPath, log)
	if err != nil {
		tb.Fatal(err)
	}
	ctx := context.Background()
	dsn := filepath.Join(tb.TempDir(), "tollgate.db")
	if o.dbURL != "" {
		dsn = o.dbURL
	}
	db, err := store.Open(ctx, dsn)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	key := bytes.Repeat([]byte{7}, 32)
	svc, err := resolver.New(ctx, resolver.Config{MasterKey: key, AllowHTTPBaseURL: true, AllowPrivateBaseURL: !o.strictBaseURL}, resolver.Deps{DB: db, Registry: reg, Log: log})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { svc.Close() })
	for p, k := range map[string]string{"anthropic": canaryAnthropic, "openai": canaryOpenAI, "gemini": canaryGemini} {
		if _, err := svc.SetPlatformKey(ctx, p, resolver.NewSecret(k)); err != nil {
			tb.Fatal(err)
		}
	}
	var auditLog *audit.Log
	if o.audit {
		if auditLog, err = audit.Open(ctx, db); err != nil {
			tb.Fatal(err)
		}
	}
	sink := &meteringtest.Sink{}
	var serverSink Sink = sink
	if o.sink != nil {
		serverSink = o.sink(sink)
	}
	var credResolver CredentialResolver = svc
	if o.resolver != nil {
		credResolver = o.resolver(svc)
	}
	baseCtx, cancel := context.WithCancel(context.Background())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := New(Config{
		Registry:              reg,
		Auth:                  svc,
		Resolver:              credResolver,
		Admin:                 svc,
		Sink:                  serverSink,
		Pricer:                o.pricer,
		AdminToken:            "admin-secret",
		PublicURL:             "http://" + ln.Addr().String(),
		BaseContext:           baseCtx,
		StreamIdleTimeout:     o.idle,
		ResponseHeaderTimeout: o.headerWait,
		Logger:                log,
		AllowPrivateBaseURL:   !o.strictBaseURL,
		Owners:                o.owners,
		AuthLimits:            o.authLimits,
		Refusals:              o.refusals,
		Governor:              o.governor,
		Failover:              o.failover,
		Health:                o.health,
		Audit:                 auditLog,
	})
	if err != nil {
		tb.Fatal(err)
	}
	adminLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan error, 2)
	go func() { done <- srv.Serve(ln) }()
	go func() { done <- srv.ServeAdmin(adminLn) }()
	e := &testEnv{t: tb, URL: "http://" + ln.Addr().String(), AdminURL: "http://" + adminLn.Addr().String(), fake: fake, fakeURL: fakeURL, svc: svc, sink: sink, srv: srv, logs: logs, reg: reg, cancel: cancel, baseCtx: baseCtx, audit: auditLog}
	var once sync.Once
	e.shutdown = func() {
		once.Do(func() {
			ctx, c := context.WithTimeout(context.Background(), 2*time.Second)
			defer c()
			_ = srv.Shutdown(ctx)
			cancel()
			<-done
			<-done
		})
	}
	tb.Cleanup(func() {
		e.shutdown()
		e.assertNoCanary()
	})
	return e
}

// token issues a workspace token.
func (e *testEnv) token(workspace, project, user, harness string) string {
	e.t.Helper()
	tok, _, err := e.svc.IssueToken(context.Background(), resolver.TokenSpec{Workspace: workspace, Project: project, User: user, Harness: harness, TTL: time.Hour})
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// assertNoCanary fails if a real key appears in the logs or any record.
func (e *testEnv) assertNoCanary() {
	e.t.Helper()
	logs := e.logs.String()
	for _, c := range canaries {
		if strings.Contains(logs, c) {
			e.t.Errorf("a provider key leaked into the logs")
		}
		for _, r := range e.sink.Records() {
			if strings.Contains(recordText(r), c) {
				e.t.Errorf("a provider key leaked into usage record %s", r.RequestID)
			}
		}
	}
}

func recordText(r metering.Record) string {
	var b strings.Builder
	for _, s := range []string{r.RequestID, r.Workspace, r.Project, r.User, r.TokenID, r.Session, r.Harness, r.Dialect, r.Path, r.Provider, r.CredTier, r.CredentialID, r.ModelRequest, r.ModelServed, r.UpstreamID, r.Outcome, r.Source, r.PriceVersion} {
		b.WriteString(s)
		b.WriteByte(' ')
	}
	return b.String()
}

// do sends one request through tollgate.
func (e *testEnv) do(method, path, token string, body string, hdr ...string) *http.Response {
	e.t.Helper()
	req, err := http.NewRequest(method, e.URL+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp
}

func readAll(tb testing.TB, r io.Reader) []byte {
	tb.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		tb.Fatalf("read body: %v", err)
	}
	return b
}

// lastFake returns the fake's most recent exchange once it has finished.
func (e *testEnv) lastFake() upstreamtest.Request {
	e.t.Helper()
	var r upstreamtest.Request
	testkit.Eventually(e.t, 5*time.Second, "the fake provider to finish the exchange", func() bool {
		var ok bool
		r, ok = e.fake.Last()
		return ok && r.Outcome != upstreamtest.OutcomeInFlight
	})
	return r
}

// record waits for the usage record of a response.
func (e *testEnv) record(resp *http.Response) metering.Record {
	e.t.Helper()
	id := resp.Header.Get(RequestIDHeader)
	if id == "" {
		e.t.Fatalf("response has no %s header", RequestIDHeader)
	}
	var rec metering.Record
	testkit.Eventually(e.t, 5*time.Second, "usage record "+id, func() bool {
		var ok bool
		rec, ok = e.sink.ByID(id)
		return ok
	})
	return rec
}
