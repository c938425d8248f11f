package proxy

import (
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/console"
	"github.com/tollgate/tollgate/internal/store"
)

// TestConsoleOnTheAdminListener: the console answers through fiber's
// adaptor on the admin listener (forms, cookies, redirects and its 403
// intact) and not on the proxy port.
func TestConsoleOnTheAdminListener(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(t.TempDir(), "console.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	cfg := operatorConfig(e)
	con, err := console.New(ctx, console.Config{AdminToken: cfg.AdminToken, DB: db, Registry: e.reg, Resolver: e.svc, FailDelay: -1, Logger: testLogger(e)})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Console = con
	se := serveOn(t, e, cfg)

	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	do := func(method, u string, form url.Values) (*http.Response, string) {
		t.Helper()
		var body io.Reader
		if form != nil {
			body = strings.NewReader(form.Encode())
		}
		req, _ := http.NewRequest(method, u, body)
		if form != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Origin", se.AdminURL)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}

	if resp, _ := do("GET", se.AdminURL+"/ui", nil); resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/ui/" {
		t.Errorf("/ui: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp, _ := do("GET", se.AdminURL+"/ui/", nil); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/signin" {
		t.Errorf("/ui/ signed out: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, body := do("GET", se.AdminURL+"/ui/signin", nil)
	if resp.StatusCode != 200 || !strings.Contains(body, `id="signin-form"`) || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
		t.Fatalf("sign-in page: %d %v", resp.StatusCode, resp.Header)
	}
	if resp, _ := do("GET", se.AdminURL+"/ui/static/console.css", nil); resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/css") {
		t.Errorf("stylesheet: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	resp, _ = do("POST", se.AdminURL+"/ui/signin", url.Values{"token": {cfg.AdminToken}})
	if resp.StatusCode != http.StatusSeeOther || !strings.Contains(resp.Header.Get("Set-Cookie"), "HttpOnly") {
		t.Fatalf("sign-in: %d %q", resp.StatusCode, resp.Header.Get("Set-Cookie"))
	}
	resp, body = do("GET", se.AdminURL+"/ui/connections", nil)
	if resp.StatusCode != 200 || !strings.Contains(body, `id="conn-claude-code-anthropic-messages"`) || !strings.Contains(body, "badge-platform") {
		t.Fatalf("connections: %d", resp.StatusCode)
	}
	csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(body)
	if csrf == nil {
		t.Fatal("no CSRF token on the page")
	}
	k := url.Values{"tier": {"platform"}, "dialect": {"anthropic-messages"}, "active": {"false"}}
	if resp, _ := do("POST", se.AdminURL+"/ui/bindings/active", k); resp.StatusCode != http.StatusForbidden {
		t.Errorf("post without the CSRF token: %d", resp.StatusCode)
	}
	k.Set("csrf", csrf[1])
	if resp, _ := do("POST", se.AdminURL+"/ui/bindings/active", k); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("post with the CSRF token: %d", resp.StatusCode)
	}
	if _, body := do("GET", se.AdminURL+"/ui/connections", nil); !strings.Contains(body, `id="conn-claude-code-anthropic-messages" data-harness="claude-code" data-dialect="anthropic-messages" data-source="unresolved"`) {
		t.Error("the deactivated platform binding still pays")
	}

	for _, p := range []string{"/ui/", "/ui/signin"} {
		if code, _, msg := get(t, se.URL+p, ""); code != 404 || !strings.Contains(msg, "admin listener") {
			t.Errorf("proxy port %s: %d %q, want 404 naming the admin listener", p, code, msg)
		}
	}
}

func TestConsoleOffWithoutOne(t *testing.T) {
	e := newEnv(t, envOptions{})
	se := serveOn(t, e, operatorConfig(e))
	if code, _, msg := get(t, se.AdminURL+"/ui/", ""); code != 404 || !strings.Contains(msg, "/ui/") {
		t.Errorf("no console: %d %q", code, msg)
	}
}
