package proxy

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// metricsStandIn is what the telemetry handler would expose: a project
// name, which is exactly what a workspace must not read.
var metricsStandIn = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
	io.WriteString(w, "gen_ai_client_token_usage_sum{project=\"secret-project\"} 42\n")
})

// get sends one GET with an optional bearer token and returns the status,
// the body and the envelope's message, if any.
func get(t *testing.T, url, bearer string) (int, string, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var v struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if resp.StatusCode >= 400 {
		if err := json.Unmarshal(b, &v); err != nil {
			t.Errorf("GET %s: %d answer is not a JSON error envelope: %q", url, resp.StatusCode, b)
		}
	}
	return resp.StatusCode, string(b), v.Error.Message
}

func operatorConfig(e *testEnv) Config {
	return Config{Registry: e.reg, Auth: e.svc, Resolver: e.svc, Admin: e.svc, Sink: e.sink,
		AdminToken: "admin-secret", Metrics: metricsStandIn}
}

// TestListenerProxyPortServesNoAdminOrMetrics: the port every workspace
// reaches answers neither /metrics nor the admin API, however the path is
// spelled and even with the right admin token; the admin listener answers
// both and no inference route.
func TestListenerProxyPortServesNoAdminOrMetrics(t *testing.T) {
	e := newEnv(t, envOptions{})
	se := serveOn(t, e, operatorConfig(e))
	for _, p := range []string{"/metrics", "/metrics/", "/METRICS", "/admin/v1/tokens", "/admin/v1/tokens/", "/Admin/v1/tokens", "/admin/v1/usage", "/admin"} {
		for _, bearer := range []string{"", "admin-secret"} {
			code, body, msg := get(t, se.URL+p, bearer)
			if code != 404 || !strings.Contains(msg, "admin listener") || strings.Contains(body, "secret-project") {
				t.Errorf("proxy port GET %s (bearer %q): %d %q, want 404 naming the admin listener", p, bearer, code, body)
			}
		}
	}
	for _, p := range []struct{ path, body string }{{"/healthz", "ok\n"}, {"/readyz", `{"status":"ok","staleness_s":0}`}} {
		for _, base := range []string{se.URL, se.AdminURL} {
			if code, body, _ := get(t, base+p.path, ""); code != 200 || body != p.body {
				t.Errorf("GET %s%s: %d %q, want 200 %q", base, p.path, code, body, p.body)
			}
		}
	}

	if code, body, _ := get(t, se.AdminURL+"/metrics", ""); code != 200 || !strings.Contains(body, "secret-project") {
		t.Errorf("admin listener /metrics: %d %q", code, body)
	}
	if code, body, _ := get(t, se.AdminURL+"/admin/v1/tokens?all=true", "admin-secret"); code != 200 || !strings.Contains(body, `"tokens"`) {
		t.Errorf("admin listener /admin/v1/tokens: %d %q", code, body)
	}
	// No proxy route on the admin listener: a workspace token buys nothing there.
	tok := e.token("ws", "p", "u", "")
	req, _ := http.NewRequest("POST", se.AdminURL+"/openai/v1/chat/completions", strings.NewReader(`{"model":"gpt-5","messages":[]}`))
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 404 || !strings.Contains(string(b), "TOLLGATE_ADDR") {
		t.Errorf("inference on the admin listener: %d %s", resp.StatusCode, b)
	}
	// Inference on the proxy port is untouched.
	resp = se.do("POST", "/openai/v1/chat/completions", tok, `{"model":"gpt-5","messages":[]}`)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("inference on the proxy port: %d", resp.StatusCode)
	}
}

// TestMetricsTokenIsRequiredWhenSet: with a metrics token, /metrics needs
// it as a bearer token; the admin token is not a substitute.
func TestMetricsTokenIsRequiredWhenSet(t *testing.T) {
	e := newEnv(t, envOptions{})
	cfg := operatorConfig(e)
	cfg.MetricsToken = "metrics-secret"
	se := serveOn(t, e, cfg)
	for _, bearer := range []string{"", "wrong", "admin-secret", "metrics-secre", "metrics-secretX"} {
		code, body, msg := get(t, se.AdminURL+"/metrics", bearer)
		if code != 401 || !strings.Contains(msg, "TOLLGATE_METRICS_TOKEN") || strings.Contains(body, "secret-project") {
			t.Errorf("/metrics with bearer %q: %d %q, want 401", bearer, code, body)
		}
	}
	if code, body, _ := get(t, se.AdminURL+"/metrics", "metrics-secret"); code != 200 || !strings.Contains(body, "secret-project") {
		t.Errorf("/metrics with the metrics token: %d %q", code, body)
	}
}

// TestAdminOnProxyKeepsTheSinglePort: the opt-in keeps the old layout, the
// metrics token still applying.
func TestAdminOnProxyKeepsTheSinglePort(t *testing.T) {
	e := newEnv(t, envOptions{})
	cfg := operatorConfig(e)
	cfg.AdminOnProxy = true
	cfg.MetricsToken = "metrics-secret"
	se := serveOn(t, e, cfg)
	if code, body, _ := get(t, se.URL+"/metrics", "metrics-secret"); code != 200 || !strings.Contains(body, "secret-project") {
		t.Errorf("proxy port /metrics with AdminOnProxy: %d %q", code, body)
	}
	if code, _, _ := get(t, se.URL+"/metrics", ""); code != 401 {
		t.Errorf("proxy port /metrics with AdminOnProxy and no token: %d", code)
	}
	if code, body, _ := get(t, se.URL+"/admin/v1/tokens?all=true", "admin-secret"); code != 200 || !strings.Contains(body, `"tokens"`) {
		t.Errorf("proxy port /admin/v1/tokens with AdminOnProxy: %d %q", code, body)
	}
}

// TestListenerShutdownStopsBoth: Shutdown stops the admin listener as well
// as the proxy's, so serve's drain covers both.
func TestListenerShutdownStopsBoth(t *testing.T) {
	e := newEnv(t, envOptions{})
	srv, err := New(operatorConfig(e))
	if err != nil {
		t.Fatal(err)
	}
	var lns [2]net.Listener
	for i := range lns {
		if lns[i], err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 2)
	go func() { done <- srv.Serve(lns[0]) }()
	go func() { done <- srv.ServeAdmin(lns[1]) }()
	for _, ln := range lns {
		if code, _, _ := get(t, "http://"+ln.Addr().String()+"/readyz", ""); code != 200 {
			t.Fatalf("%s/readyz: %d", ln.Addr(), code)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	for range lns {
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("a listener still serves after Shutdown")
		}
	}
	for _, ln := range lns {
		if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts after Shutdown", ln.Addr())
		}
	}
}

// TestServeAfterShutdownReturns: a Serve that starts (or registers its
// listener with fasthttp) only after Shutdown ran returns instead of
// accepting forever, which once hung a test's cleanup for ten minutes.
func TestServeAfterShutdownReturns(t *testing.T) {
	e := newEnv(t, envOptions{})
	srv, err := New(operatorConfig(e))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	for name, serve := range map[string]func(net.Listener) error{"Serve": srv.Serve, "ServeAdmin": srv.ServeAdmin} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- serve(ln) }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s after Shutdown: %v, want nil", name, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s after Shutdown still serving after 5 s", name)
		}
		if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
			c.Close()
			t.Errorf("%s after Shutdown: its listener still accepts", name)
		}
	}
}
