package proxy

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/resolver"
)

// serveOn starts a second tollgate on 127.0.0.1 with cfg and returns a
// testEnv that talks to it (e's fake and sink).
func serveOn(t *testing.T, e *testEnv, cfg Config) *testEnv {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(e)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	adminLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 2)
	go func() { done <- srv.Serve(ln) }()
	go func() { done <- srv.ServeAdmin(adminLn) }()
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		<-done
		<-done
	})
	return &testEnv{t: t, URL: "http://" + ln.Addr().String(), AdminURL: "http://" + adminLn.Addr().String(), fake: e.fake, sink: e.sink, reg: e.reg, logs: e.logs, srv: srv}
}

// testLogger writes to e's log buffer, which the canary check reads.
func testLogger(e *testEnv) *slog.Logger {
	return slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// TestHTTPBaseURLRefusedAtUseSaysWhy: a credential with an http base URL,
// written by a process that allowed it, used by a server that does not,
// tells the client the credential is unusable and which setting allows it
// (not "this project has disabled this provider"); creating one on that
// server is refused naming the setting too.
func TestHTTPBaseURLRefusedAtUseSaysWhy(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(t.TempDir(), "shared.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	key := bytes.Repeat([]byte{9}, 32)
	open := func(allowHTTP bool) *resolver.Service {
		svc, err := resolver.New(ctx, resolver.Config{MasterKey: key, AllowHTTPBaseURL: allowHTTP, AllowPrivateBaseURL: true}, resolver.Deps{DB: db, Registry: e.reg, Log: testLogger(e)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { svc.Close() })
		return svc
	}
	lax, strict := open(true), open(false)
	cr, err := lax.CreateCredential(ctx, resolver.CredentialSpec{Name: "local", Provider: "openai", Secret: resolver.NewSecret(canaryOpenAI), BaseURL: e.fakeURL})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []resolver.BindingKey{
		{Tier: resolver.TierProject, ScopeID: "p-http", Dialect: "openai-chat"},
		{Tier: resolver.TierPlatform, Dialect: "openai-chat"},
	} {
		if _, err := lax.Bind(ctx, k, cr.ID); err != nil {
			t.Fatal(err)
		}
	}
	se := serveOn(t, e, Config{Registry: e.reg, Auth: strict, Resolver: strict, Admin: strict, Sink: e.sink, AdminToken: "admin-secret"})

	// Halted at the project tier, and fallen through to nothing at the
	// platform tier: both say why.
	for _, project := range []string{"p-http", "p-other"} {
		tok, _, err := strict.IssueToken(ctx, resolver.TokenSpec{Workspace: "ws", Project: project, User: "u"})
		if err != nil {
			t.Fatal(err)
		}
		resp := se.do("POST", "/openai/v1/chat/completions", tok, `{"model":"gpt-5","messages":[]}`)
		body := readAll(t, resp.Body)
		resp.Body.Close()
		msg := checkEnvelope(t, "openai", body)
		if resp.StatusCode != 403 || !strings.Contains(msg, "unusable") || !strings.Contains(msg, "TOLLGATE_ALLOW_HTTP_BASE_URL") ||
			strings.Contains(msg, "disabled this provider") || strings.Contains(string(body), cr.ID) {
			t.Errorf("project %s: %d %s", project, resp.StatusCode, body)
		}
		if rec := se.record(resp); rec.Status != 403 || rec.Outcome != "rejected" {
			t.Errorf("project %s: record status %d outcome %s", project, rec.Status, rec.Outcome)
		}
		code, v := se.admin("GET", "/resolution?project="+project+"&user=u", "")
		if code != 200 {
			t.Fatalf("resolution: %d %v", code, v)
		}
		for _, r := range v["resolutions"].([]any) {
			if m := r.(map[string]any); m["dialect"] == "openai-chat" && m["harness"] == "" && m["reason"] != resolver.ReasonCredentialUnusable {
				t.Errorf("project %s: resolution row %v, want reason %s", project, m, resolver.ReasonCredentialUnusable)
			}
		}
	}
	if n := e.fake.Counters().Requests; n != 0 {
		t.Errorf("%d requests reached the provider", n)
	}

	code, _, msg := se.adminRaw("POST", "/admin/v1/credentials", `{"provider":"openai","key":"sk-test-0123456789abcdef","base_url":"http://127.0.0.1:1"}`)
	if code != 400 || !strings.Contains(msg, "TOLLGATE_ALLOW_HTTP_BASE_URL") {
		t.Errorf("create http credential where not allowed: %d %q", code, msg)
	}
}
