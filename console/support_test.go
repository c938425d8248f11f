package console

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate/tollgate"
	"github.com/tollgate/tollgate/audit"
	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/metering/ledger"
	"github.com/tollgate/tollgate/registry"
	"github.com/tollgate/tollgate/resolver"
)

const testAdminToken = "tg-admin-test-0123456789abcdef"

// testProxyURL is the proxy URL issued tokens' environments name.
const testProxyURL = "http://127.0.0.1:8787"

// clock is a settable clock shared by a test's consoles.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// env is a console on 127.0.0.1 over a real resolver on SQLite, with the
// shipped registry.
type env struct {
	t     *testing.T
	db    *store.DB
	dbDSN string
	reg   *registry.Holder
	key   []byte
	svc   *resolver.Service
	con   *Console
	srv   *httptest.Server
	clock *clock
	logs  *testkit.LogBuffer
	// usage and pricer back the Usage page of consoles started after they
	// are set (usage_test.go).
	usage  *ledger.Store
	pricer ledger.Pricer
	audit  *audit.Log
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvOn(t, filepath.Join(t.TempDir(), "tollgate.db"))
}

// newEnvOn is newEnv on the database dsn names.
func newEnvOn(t *testing.T, dsn string) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{t: t, clock: &clock{t: time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)}, logs: &testkit.LogBuffer{}}
	r, err := registry.Parse(tollgate.DefaultHarnesses)
	if err != nil {
		t.Fatal(err)
	}
	e.reg = registry.NewStatic(r)
	e.dbDSN = dsn
	if e.db, err = store.Open(ctx, e.dbDSN); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.db.Close() })
	e.key = make([]byte, 32)
	_, _ = rand.Read(e.key)
	e.svc = e.resolver(false)
	if e.audit, err = audit.Open(ctx, e.db); err != nil {
		t.Fatal(err)
	}
	e.con, e.srv = e.console(testAdminToken)
	return e
}

// resolver opens another Service on the env's database; allowHTTP lets it
// write http:// base URLs, which the env's own Service refuses at use.
func (e *env) resolver(allowHTTP bool) *resolver.Service {
	e.t.Helper()
	svc, err := resolver.New(context.Background(), resolver.Config{MasterKey: e.key, AllowHTTPBaseURL: allowHTTP},
		resolver.Deps{DB: e.db, Registry: e.reg, Log: slog.New(slog.NewTextHandler(e.logs, nil))})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { svc.Close() })
	return svc
}

// console starts a console (a replica, when called again) on the env's
// database and resolver.
func (e *env) console(adminToken string) (*Console, *httptest.Server) {
	e.t.Helper()
	c, err := New(context.Background(), Config{AdminToken: adminToken, DB: e.db, Registry: e.reg, Resolver: e.svc,
		Usage: e.usage, Pricer: e.pricer, FailDelay: -1, Logger: slog.New(slog.NewTextHandler(e.logs, nil)), now: e.clock.now,
		Audit: audit.Trail{Log: e.audit, Secrets: []string{adminToken}}, ProxyURL: testProxyURL})
	if err != nil {
		e.t.Fatal(err)
	}
	srv := httptest.NewServer(c)
	e.t.Cleanup(srv.Close)
	return c, srv
}

// browser is an HTTP client with a cookie jar that does not follow
// redirects, so each answer can be inspected.
type browser struct {
	t    *testing.T
	base string
	hc   *http.Client
	csrf string
}

func (e *env) browser() *browser { return newBrowser(e.t, e.srv.URL) }

func newBrowser(t *testing.T, base string) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, base: base, hc: &http.Client{Jar: jar, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// at makes a browser for another server with b's cookies (a jar ignores
// ports, so servers on 127.0.0.1 share them anyway).
func (b *browser) at(base string) *browser {
	nb := *b
	nb.base = base
	u, _ := url.Parse(b.base)
	v, _ := url.Parse(base)
	b.hc.Jar.SetCookies(v, b.hc.Jar.Cookies(u))
	return &nb
}

type answer struct {
	status   int
	body     string
	location string
	header   http.Header
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func (b *browser) do(req *http.Request) answer {
	b.t.Helper()
	resp, err := b.hc.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, body: string(body), location: resp.Header.Get("Location"), header: resp.Header}
	if m := csrfField.FindStringSubmatch(a.body); m != nil {
		b.csrf = m[1]
	}
	return a
}

func (b *browser) get(path string) answer {
	b.t.Helper()
	req, err := http.NewRequest(http.MethodGet, b.base+path, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	return b.do(req)
}

// post sends a form as a same-origin browser would (Origin set), adding
// the CSRF token of the last page seen unless form has one.
func (b *browser) post(path string, form url.Values, hdr ...string) answer {
	b.t.Helper()
	if form == nil {
		form = url.Values{}
	}
	if _, ok := form["csrf"]; !ok && b.csrf != "" {
		form.Set("csrf", b.csrf)
	}
	req, err := http.NewRequest(http.MethodPost, b.base+path, strings.NewReader(form.Encode()))
	if err != nil {
		b.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", b.base)
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] == "" {
			req.Header.Del(hdr[i])
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	return b.do(req)
}

// signIn signs in and loads the Connections page (and its CSRF token).
func (b *browser) signIn(token string) answer {
	b.t.Helper()
	a := b.post("/ui/signin", url.Values{"token": {token}})
	if a.status != http.StatusSeeOther || a.location != "/ui/connections" {
		b.t.Fatalf("sign-in: %d %s", a.status, a.location)
	}
	if p := b.get("/ui/connections"); p.status != http.StatusOK {
		b.t.Fatalf("connections after sign-in: %d", p.status)
	}
	return a
}

func (b *browser) cookie() *http.Cookie {
	u, _ := url.Parse(b.base + Prefix)
	for _, c := range b.hc.Jar.Cookies(u) {
		if c.Name == CookieName {
			return c
		}
	}
	return nil
}

// httptestPost posts a form straight to a handler, for consoles a test
// only needs one answer from.
func httptestPost(t *testing.T, h http.Handler, path string, form url.Values) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "http://127.0.0.1"+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}
