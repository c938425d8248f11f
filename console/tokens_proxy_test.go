package console

import (
	"context"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/proxy"
	"github.com/tollgate/tollgate/resolver"
)

type discardSink struct{}

func (discardSink) Record(*metering.Record) {}

// TestIssuedTokenWorksThroughTheProxyUntilRevoked issues a token on the
// page, sends a Claude Code request with the environment the page showed
// through a real proxy to a fake Anthropic, then revokes the token on the
// page and sees the proxy refuse it.
func TestIssuedTokenWorksThroughTheProxyUntilRevoked(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	var upstreamKey atomic.Value // written by the fake's handler goroutine
	upstreamKey.Store("")
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamKey.Store(r.Header.Get("x-api-key"))
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":1}}`)
	}))
	t.Cleanup(fake.Close)
	var err error
	// The fake provider is plain http on 127.0.0.1: a resolver that allows
	// it serves both the proxy and the console.
	e.svc, err = resolver.New(ctx, resolver.Config{MasterKey: e.key, AllowHTTPBaseURL: true, AllowPrivateBaseURL: true},
		resolver.Deps{DB: e.db, Registry: e.reg, Log: slog.New(slog.NewTextHandler(e.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.svc.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	proxyURL := "http://" + ln.Addr().String()
	c, err := New(ctx, Config{AdminToken: testAdminToken, DB: e.db, Registry: e.reg, Resolver: e.svc, FailDelay: -1,
		Logger: slog.New(slog.NewTextHandler(e.logs, nil)), now: time.Now, Audit: e.con.cfg.Audit, ProxyURL: proxyURL})
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewServer(c)
	t.Cleanup(e.srv.Close)
	srv, err := proxy.New(proxy.Config{Registry: e.reg, Auth: e.svc, Resolver: e.svc, Sink: discardSink{}, PublicURL: proxyURL,
		AllowPrivateBaseURL: true, Logger: slog.New(slog.NewTextHandler(e.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	const providerKey = "sk-ant-api03-proxied-000000000000000077"
	cr := mustCred(t, e.svc, "anthropic", "fake", providerKey, fake.URL)
	mustBind(t, e.svc, resolver.BindingKey{Tier: resolver.TierProject, ScopeID: "p1", Dialect: "anthropic-messages"}, cr.ID, false)

	b := e.browser()
	b.signIn(testAdminToken)
	b.get("/ui/tokens")
	a := b.post("/ui/tokens/issue", postIssue("ws-proxy", "p1", "u1", "claude-code", "", ""))
	m := envArea.FindStringSubmatch(a.body)
	if a.status != http.StatusOK || m == nil {
		t.Fatalf("issue: %d\n%s", a.status, a.body)
	}
	// Read the environment as a shell would: export NAME=VALUE.
	env := map[string]string{}
	for _, line := range strings.Split(html.UnescapeString(m[2]), "\n") {
		if k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "="); ok && strings.HasPrefix(line, "export ") {
			env[k] = strings.Trim(v, "'")
		}
	}
	send := func() int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, env["ANTHROPIC_BASE_URL"]+"/v1/messages",
			strings.NewReader(`{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}`))
		req.Header.Set("Authorization", "Bearer "+env["ANTHROPIC_AUTH_TOKEN"])
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("anthropic-version", "2023-06-01")
		req.Header.Set("User-Agent", "claude-cli/2.0.0 (external, cli)")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	if !strings.HasPrefix(env["ANTHROPIC_BASE_URL"], proxyURL+"/") || !strings.HasPrefix(env["ANTHROPIC_AUTH_TOKEN"], resolver.TokenPrefix) {
		t.Fatalf("environment %v", env)
	}
	if st := send(); st != http.StatusOK || upstreamKey.Load() != providerKey {
		t.Fatalf("through the proxy: %d, upstream got the key: %t", st, upstreamKey.Load() == providerKey)
	}
	toks, err := e.svc.ListTokens(ctx, resolver.TokenFilter{Workspace: "ws-proxy"})
	if err != nil || len(toks) != 1 {
		t.Fatalf("tokens: %v %v", toks, err)
	}
	b.get("/ui/tokens/" + toks[0].ID + "/revoke")
	if a := b.post("/ui/tokens/"+toks[0].ID+"/revoke", nil); a.status != http.StatusSeeOther {
		t.Fatalf("revoke: %d", a.status)
	}
	if st := send(); st != http.StatusUnauthorized {
		t.Fatalf("after revoke: %d, want 401", st)
	}
}
