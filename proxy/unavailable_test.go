package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tollgate/tollgate/resolver"
)

// failingAuth refuses every token with err, as a resolver cut off from its
// store does.
type failingAuth struct{ err error }

func (f failingAuth) Authenticate(context.Context, string) (resolver.Identity, error) {
	return resolver.Identity{}, f.err
}

// failingResolver authenticates through the real service and fails every
// resolution with err.
type failingResolver struct{ err error }

func (f failingResolver) Resolve(context.Context, resolver.Request) (resolver.Target, error) {
	return resolver.Target{}, f.err
}

// realConnectError is what pgx returns when PostgreSQL cannot be reached:
// nothing listens on port 1.
func realConnectError(t *testing.T) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, "postgres://tollgate@127.0.0.1:1/none?connect_timeout=1&sslmode=disable")
	if err == nil {
		c.Close(ctx)
		t.Fatal("connected to port 1")
	}
	var ce *pgconn.ConnectError
	if !errors.As(err, &ce) {
		t.Fatalf("connecting to port 1: %T %v, want a *pgconn.ConnectError", err, err)
	}
	return fmt.Errorf("authenticate: %w", err)
}

// A credential store that cannot be reached is a 503 with Retry-After in
// the caller's own envelope, answered at once; never a 500 (defect 4). A
// database error that is not about reaching it stays a 500.
func TestStoreUnreachableIs503WithRetryAfter(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws-1", "proj-1", "user-1", "")
	stale := &resolver.UnavailableError{Staleness: 7300 * time.Millisecond, Bound: 5 * time.Second}
	shapes := []struct{ path, body, shape string }{
		{anthropicPath, anthropicBody, "anthropic"},
		{chatPath, chatBody, "openai"},
		{"/gemini/v1beta/models/gemini-2.5-flash:generateContent", `{"contents":[]}`, "gemini"},
	}
	for _, tc := range []struct {
		name   string
		cfg    func(Config) Config
		status int
		msg    string
	}{
		{"AuthStale", func(c Config) Config { c.Auth = failingAuth{fmt.Errorf("authenticate: %w", stale)}; return c }, 503, "for 7.3 s"},
		{"ResolveStale", func(c Config) Config { c.Resolver = failingResolver{stale}; return c }, 503, "for 7.3 s"},
		{"AuthConnectError", func(c Config) Config { c.Auth = failingAuth{realConnectError(t)}; return c }, 503, "cannot reach its credential store"},
		{"ResolveAdminShutdown", func(c Config) Config {
			c.Resolver = failingResolver{&pgconn.PgError{Code: "57P01", Message: "terminating connection due to administrator command"}}
			return c
		}, 503, "cannot reach its credential store"},
		{"ResolveConnectionException", func(c Config) Config {
			c.Resolver = failingResolver{&pgconn.PgError{Code: "08006"}}
			return c
		}, 503, "cannot reach its credential store"},
		{"ResolveConstraint", func(c Config) Config {
			c.Resolver = failingResolver{&pgconn.PgError{Code: "23505"}}
			return c
		}, 500, "internal error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			se := serveOn(t, e, tc.cfg(operatorConfig(e)))
			se.svc = e.svc
			for _, sh := range shapes {
				start := time.Now()
				code, h, b := se.doFrom(http.DefaultClient, sh.path, tok, sh.body)
				if d := time.Since(start); d > time.Second {
					t.Errorf("%s: answered in %s", sh.shape, d)
				}
				if code != tc.status {
					t.Fatalf("%s: %d %s, want %d", sh.shape, code, b, tc.status)
				}
				if tc.status != 503 {
					continue
				}
				if h.Get("Retry-After") != "2" {
					t.Errorf("%s: Retry-After %q, want 2", sh.shape, h.Get("Retry-After"))
				}
				checkUnavailableEnvelope(t, sh.shape, b, tc.msg)
			}
		})
	}
}

func checkUnavailableEnvelope(t *testing.T, shape string, b []byte, msg string) {
	t.Helper()
	var v struct {
		Type  string `json:"type"`
		Error struct {
			Type    string `json:"type"`
			Message string `json:"message"`
			Status  string `json:"status"`
			Code    any    `json:"code"`
			Details []struct {
				RetryDelay string `json:"retryDelay"`
			} `json:"details"`
		} `json:"error"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: body %s: %v", shape, b, err)
	}
	ok := false
	switch shape {
	case "anthropic":
		ok = v.Type == "error" && v.Error.Type == "api_error"
	case "openai":
		ok = v.Error.Type == "server_error"
	case "gemini":
		ok = v.Error.Status == "UNAVAILABLE" && v.Error.Code == float64(503) && len(v.Error.Details) == 1 && v.Error.Details[0].RetryDelay == "2s"
	}
	if !ok || !strings.Contains(v.Error.Message, msg) {
		t.Errorf("%s: body %s, want the %s envelope saying %q", shape, b, shape, msg)
	}
}

// fakeFreshness is a resolver's freshness a test sets.
type fakeFreshness struct {
	mu               sync.Mutex
	staleness, bound time.Duration
}

func (f *fakeFreshness) set(st time.Duration) {
	f.mu.Lock()
	f.staleness = st
	f.mu.Unlock()
}

func (f *fakeFreshness) Freshness() (time.Duration, time.Duration, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.staleness, f.bound, f.staleness <= f.bound
}

// /readyz on both listeners follows the resolver's freshness and turns
// unready for good on Unready (SIGTERM); /healthz stays ok throughout.
func TestReadyzFollowsFreshnessAndShutdown(t *testing.T) {
	e := newEnv(t, envOptions{})
	fr := &fakeFreshness{staleness: 400 * time.Millisecond, bound: 5 * time.Second}
	cfg := operatorConfig(e)
	cfg.Freshness = fr
	se := serveOn(t, e, cfg)
	want := func(what string, code int, body string) {
		t.Helper()
		for _, base := range []string{se.URL, se.AdminURL} {
			if c, b, _ := get(t, base+"/readyz", ""); c != code || b != body {
				t.Errorf("%s: GET %s/readyz: %d %q, want %d %q", what, base, c, b, code, body)
			}
			if c, b, _ := get(t, base+"/healthz", ""); c != 200 || b != "ok\n" {
				t.Errorf("%s: GET %s/healthz: %d %q, want 200 ok", what, base, c, b)
			}
		}
	}
	want("fresh", 200, `{"status":"ok","staleness_s":0.4}`)
	fr.set(7300 * time.Millisecond)
	want("stale", 503, `{"status":"unready","reason":"store-stale","staleness_s":7.3,"bound_s":5}`)
	fr.set(100 * time.Millisecond)
	want("fresh again", 200, `{"status":"ok","staleness_s":0.1}`)
	se.srv.Unready()
	want("shutting down", 503, `{"status":"unready","reason":"shutting-down","staleness_s":0.1,"bound_s":5}`)
}
