// Package console is tollgate's web page for operators: server-rendered
// HTML (html/template) with its templates and stylesheet embedded, so it
// works offline and needs no asset build. It is a net/http handler and
// knows no fiber: the proxy mounts it on the admin listener under Prefix.
//
// Signing in exchanges the admin token for a session cookie; sessions are
// rows of the shared database (session.go), so any replica serves any
// request. Every state-changing form carries a per-session CSRF token and
// must come from the console's own origin; GET never changes state.
package console

import (
	"context"
	"crypto/subtle"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/tollgate/tollgate/audit"
	"github.com/tollgate/tollgate/health"
	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/metering/ledger"
	"github.com/tollgate/tollgate/registry"
	"github.com/tollgate/tollgate/resolver"
)

// Prefix is the path the console is served under; its cookie is scoped to it.
const Prefix = "/ui/"

// CookieName is the session cookie's name.
const CookieName = "tollgate_console"

// Sign-in failure bounds: guesses at the admin token are the most valuable
// ones, so each failure is answered late and an address gets a few tries
// before it must wait.
const (
	DefaultFailDelay = time.Second
	failBurst        = 5
	failRefill       = 12 * time.Second // one more try per interval after the burst
	failTableMax     = 4096             // addresses tracked; a flood resets the table, never grows it
	maxFormBytes     = 64 << 10         // a form is a few fields: no key is this long
)

// Resolver is what the pages read and write: the resolver functions
// requests, the CLI and the admin API use (*resolver.Service), so a page
// can neither disagree with a request nor validate differently from the CLI.
type Resolver interface {
	ResolutionView(ctx context.Context, project, user string) ([]resolver.Resolution, error)
	ListCredentials(ctx context.Context) ([]resolver.Credential, error)
	ListBindings(ctx context.Context, f resolver.BindingFilter) ([]resolver.Binding, error)
	CreateCredential(ctx context.Context, spec resolver.CredentialSpec) (resolver.Credential, error)
	DeleteCredential(ctx context.Context, id string) error
	BindCandidates(ctx context.Context, k resolver.BindingKey, cands []resolver.BindCandidate, opts ...resolver.BindOptions) (resolver.Binding, error)
	SetBindingActive(ctx context.Context, k resolver.BindingKey, active bool) error
	Unbind(ctx context.Context, k resolver.BindingKey) error
	DisableCredential(ctx context.Context, id string) error
	EnableCredential(ctx context.Context, id string) error
	PlatformKeys(ctx context.Context) ([]resolver.PlatformKey, error)
	SetPlatformKey(ctx context.Context, provider string, secret resolver.Secret) (resolver.Credential, error)
	DeletePlatformKey(ctx context.Context, provider string) (resolver.Credential, error)

	CheckTokenSpec(spec resolver.TokenSpec) error
	IssueToken(ctx context.Context, spec resolver.TokenSpec) (string, resolver.TokenInfo, error)
	ListTokens(ctx context.Context, f resolver.TokenFilter) ([]resolver.TokenInfo, error)
	RevokeToken(ctx context.Context, id string) error
}

// HealthSource is what this replica has observed of each credential
// (*health.Tracker); the grid shows it beside the credential.
type HealthSource interface {
	States() []health.State
}

// Config configures the console. AdminToken, DB, Registry and Resolver
// are required.
type Config struct {
	// AdminToken is what signing in takes (TOLLGATE_ADMIN_TOKEN).
	AdminToken string
	// DB holds the sessions (table console_sessions).
	DB *store.DB
	// Registry lists the harnesses, dialects and providers.
	Registry *registry.Holder
	// Resolver backs the Connections page.
	Resolver Resolver
	// Usage, if set, backs the Usage page: the functions the admin API's
	// /usage/series, /usage/top and /usage/cache answer with, each one
	// usage Query folded, so the page's totals are GET /admin/v1/usage's
	// for the same filters (the page writes no SQL). Nil shows that there
	// is no usage store.
	Usage *ledger.Store
	// Pricer prices the Usage page's cache writes as the proxy prices
	// requests (the hot-reloaded price table); nil leaves them unpriced.
	Pricer ledger.Pricer
	// Health, if set, adds each credential's circuit and rate-limit state
	// as this replica saw it; nil shows none.
	Health HealthSource
	// Audit records every write the console makes, as the admin API's
	// and the CLI's are; its actor is the session (audit.KindConsole and
	// the session's fingerprint). A nil Log records nothing.
	Audit audit.Trail
	// ProxyURL is tollgate's URL as workspaces reach it, for the
	// environment an issued token is shown with; default PublicURL.
	ProxyURL string
	// Policies and Ledger back the Budgets page (*governance.Store,
	// *governance.Ledger); without either it says governance is off.
	// Budget writes are recorded through Audit; Audit.Log is also what the
	// Audit page reads.
	Policies PolicyStore
	Ledger   HeadroomSource
	// PolicyWatcher, if set, reloads this replica's policies after a
	// console write (*governance.Watcher); else its poll picks it up.
	PolicyWatcher PolicyRefresher
	// PublicURL, when https, marks the cookie Secure even if the request
	// reached tollgate over plain HTTP (TLS ended at a load balancer); its
	// origin is also trusted for form posts.
	PublicURL string
	// IdleTimeout and MaxAge bound a session; defaults DefaultIdleTimeout
	// and DefaultMaxAge.
	IdleTimeout, MaxAge time.Duration
	// FailDelay is how long a failed sign-in waits before its answer;
	// default DefaultFailDelay, negative for none.
	FailDelay time.Duration
	// Logger receives sign-in refusals (never the token); default
	// slog.Default().
	Logger *slog.Logger

	now func() time.Time
}

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Console is the console's http.Handler.
type Console struct {
	cfg      Config
	log      *slog.Logger
	sessions *sessions
	// pages are parsed on the first render, not at start: most replicas
	// never serve a page, and parsed templates cost idle memory (README,
	// Console).
	pages  func() (map[string]*template.Template, error)
	mux    *http.ServeMux
	origin *http.CrossOriginProtection
	secure bool

	mu    sync.Mutex
	fails map[string]*failBucket
}

type failBucket struct {
	tokens float64
	at     time.Time
}

// New migrates the session table and builds the handler.
func New(ctx context.Context, cfg Config) (*Console, error) {
	var missing []string
	if cfg.AdminToken == "" {
		missing = append(missing, "AdminToken")
	}
	if cfg.DB == nil {
		missing = append(missing, "DB")
	}
	if cfg.Registry == nil {
		missing = append(missing, "Registry")
	}
	if cfg.Resolver == nil {
		missing = append(missing, "Resolver")
	}
	if len(missing) > 0 {
		return nil, errors.New("console config: missing " + strings.Join(missing, ", "))
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = DefaultMaxAge
	}
	if cfg.FailDelay == 0 {
		cfg.FailDelay = DefaultFailDelay
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	if cfg.ProxyURL == "" {
		cfg.ProxyURL = cfg.PublicURL
	}
	ss, err := openSessions(ctx, cfg.DB, cfg.IdleTimeout, cfg.MaxAge)
	if err != nil {
		return nil, err
	}
	if err := migrateTokens(ctx, cfg.DB); err != nil {
		return nil, err
	}
	c := &Console{cfg: cfg, log: cfg.Logger, sessions: ss, pages: sync.OnceValues(parsePages), fails: map[string]*failBucket{}}
	c.origin = http.NewCrossOriginProtection()
	if u, err := url.Parse(cfg.PublicURL); err == nil && u.Scheme == "https" && u.Host != "" {
		c.secure = true
		if err := c.origin.AddTrustedOrigin(u.Scheme + "://" + u.Host); err != nil {
			return nil, fmt.Errorf("console config: PublicURL: %w", err)
		}
	}
	c.origin.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.forbidden(w, r, "This form was sent from another site, so it was refused.")
	}))
	c.routes()
	return c, nil
}

func parsePages() (map[string]*template.Template, error) {
	funcs := template.FuncMap{"tierLabel": tierLabel, "sourceLabel": sourceLabel, "slug": slug, "px": px}
	base, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html")
	if err != nil {
		return nil, fmt.Errorf("console templates: %w", err)
	}
	files, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, f := range files {
		name := strings.TrimSuffix(strings.TrimPrefix(f, "templates/"), ".html")
		if name == "layout" {
			continue
		}
		t, err := template.Must(base.Clone()).ParseFS(templateFS, f)
		if err != nil {
			return nil, fmt.Errorf("console templates: %w", err)
		}
		pages[name] = t
	}
	return pages, nil
}

func (c *Console) routes() {
	m := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	m.Handle("GET "+Prefix+"static/", http.StripPrefix(Prefix+"static/", staticHandler(http.FileServerFS(static))))
	m.HandleFunc("GET "+Prefix+"signin", c.signinPage)
	m.Handle("POST "+Prefix+"signin", c.origin.Handler(http.HandlerFunc(c.signin)))
	m.Handle("GET "+Prefix+"{$}", c.authed(func(w http.ResponseWriter, r *http.Request, _ session) {
		http.Redirect(w, r, Prefix+"connections", http.StatusSeeOther)
	}))
	m.Handle("POST "+Prefix+"signout", c.post(c.signout))
	m.Handle("GET "+Prefix+"connections", c.authed(c.connections))
	m.Handle("GET "+Prefix+"connections/connect", c.authed(c.connectPage))
	m.Handle("POST "+Prefix+"connections/connect", c.post(c.connect))
	m.Handle("GET "+Prefix+"connections/advanced", c.authed(c.advanced))
	m.Handle("POST "+Prefix+"bindings/active", c.post(c.setActive))
	c.usageRoutes(m)
	c.tokenRoutes(m)
	c.credentialRoutes(m)
	m.Handle("GET "+Prefix+"budgets", c.authed(c.budgets))
	m.Handle("POST "+Prefix+"budgets/set", c.post(c.budgetSet))
	m.Handle("GET "+Prefix+"budgets/{id}/delete", c.authed(c.budgetDeletePage))
	m.Handle("POST "+Prefix+"budgets/{id}/delete", c.post(c.budgetDelete))
	c.limitRoutes(m)
	m.Handle("GET "+Prefix+"audit", c.authed(c.auditPage))
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c.render(w, r, http.StatusNotFound, "message", page{Title: "Not found", Message: "The console has no page at this address."})
	})
	c.mux = m
}

// ServeHTTP serves the console; every answer carries headers that keep
// it out of frames and caches and confine it to its own assets.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	if r.Body != nil {
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	}
	c.mux.ServeHTTP(w, r)
}

func staticHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Assets are embedded: they change only with the binary.
		w.Header().Set("Cache-Control", "public, max-age=3600")
		next.ServeHTTP(w, r)
	})
}

// page is what every template gets.
type page struct {
	Title    string
	Nav      string
	SignedIn bool
	CSRF     string
	Flash    string
	Error    string
	Message  string
	Data     any
}

func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, p page) {
	pages, err := c.pages()
	if err != nil {
		c.log.Error("console templates", "err", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	var b strings.Builder
	if err := pages[name].ExecuteTemplate(&b, "layout.html", p); err != nil {
		c.log.Error("console render", "page", name, "err", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(b.String()))
}

func (c *Console) forbidden(w http.ResponseWriter, r *http.Request, why string) {
	c.render(w, r, http.StatusForbidden, "message", page{Title: "Refused", Message: why + " Go back, reload the page and try again."})
}

func (c *Console) fail(w http.ResponseWriter, r *http.Request, s session, err error) {
	c.log.Error("console", "path", r.URL.Path, "err", err)
	status := http.StatusInternalServerError
	if resolver.IsStoreUnavailable(err) {
		status = http.StatusServiceUnavailable
	}
	c.render(w, r, status, "message", page{Title: "Error", SignedIn: s.id != "", CSRF: s.csrf, Message: "The store could not answer; try again shortly."})
}

// session returns the request's live session.
func (c *Console) session(r *http.Request) (session, error) {
	ck, err := r.Cookie(CookieName)
	if err != nil {
		return session{}, errNoSession
	}
	return c.sessions.check(r.Context(), ck.Value, c.cfg.AdminToken, c.cfg.now())
}

type authedHandler func(w http.ResponseWriter, r *http.Request, s session)

// authed serves h to a signed-in browser and sends anyone else to sign in.
func (c *Console) authed(h authedHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, err := c.session(r)
		if errors.Is(err, errNoSession) {
			c.clearCookie(w, r)
			http.Redirect(w, r, Prefix+"signin", http.StatusSeeOther)
			return
		}
		if err != nil {
			c.fail(w, r, s, err)
			return
		}
		h(w, r, s)
	})
}

// post guards a state-changing form: it must come from this origin
// (Sec-Fetch-Site or Origin, else Referer), from a live session, and carry
// that session's CSRF token. Anything else gets a 403 page.
func (c *Console) post(h authedHandler) http.Handler {
	return c.origin.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !c.refererOK(r) {
			c.forbidden(w, r, "This form was sent from another site, so it was refused.")
			return
		}
		s, err := c.session(r)
		if errors.Is(err, errNoSession) {
			c.forbidden(w, r, "Your session has ended: sign in again.")
			return
		}
		if err != nil {
			c.fail(w, r, s, err)
			return
		}
		if err := r.ParseForm(); err != nil {
			c.render(w, r, http.StatusBadRequest, "message", page{Title: "Bad form", SignedIn: true, CSRF: s.csrf, Message: "The form could not be read."})
			return
		}
		got := r.PostForm.Get("csrf")
		if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(s.csrf)) != 1 {
			c.forbidden(w, r, "The form's security token is missing or out of date.")
			return
		}
		// The audit log names the session, never its id, as the writer.
		r = r.WithContext(audit.WithActor(r.Context(), audit.Actor{Kind: audit.KindConsole, ID: s.fingerprint()}, clientAddr(r)))
		h(w, r, s)
	}))
}

// refererOK covers browsers that send neither Sec-Fetch-Site nor Origin
// (which CrossOriginProtection checks): their Referer, if any, must be
// this host.
func (c *Console) refererOK(r *http.Request) bool {
	if r.Header.Get("Sec-Fetch-Site") != "" || r.Header.Get("Origin") != "" {
		return true
	}
	ref := r.Header.Get("Referer")
	if ref == "" {
		return true // not a browser, or one that strips it: the token decides
	}
	u, err := url.Parse(ref)
	if err != nil {
		return false
	}
	if u.Host == r.Host {
		return true
	}
	pu, err := url.Parse(c.cfg.PublicURL)
	return err == nil && pu.Host != "" && u.Host == pu.Host
}

// secureRequest says whether the cookie must be Secure: the request came
// over TLS (here or, by X-Forwarded-Proto, at a proxy before us), or the
// public URL is https.
func (c *Console) secureRequest(r *http.Request) bool {
	return c.secure || r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

func (c *Console) setCookie(w http.ResponseWriter, r *http.Request, id string) {
	http.SetCookie(w, &http.Cookie{
		Name: CookieName, Value: id, Path: Prefix,
		MaxAge:   int(c.cfg.MaxAge / time.Second),
		HttpOnly: true, Secure: c.secureRequest(r), SameSite: http.SameSiteStrictMode,
	})
}

func (c *Console) clearCookie(w http.ResponseWriter, r *http.Request) {
	if _, err := r.Cookie(CookieName); err != nil {
		return
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: Prefix, MaxAge: -1,
		HttpOnly: true, Secure: c.secureRequest(r), SameSite: http.SameSiteStrictMode})
}

func (c *Console) signinPage(w http.ResponseWriter, r *http.Request) {
	if _, err := c.session(r); err == nil {
		http.Redirect(w, r, Prefix+"connections", http.StatusSeeOther)
		return
	}
	c.render(w, r, http.StatusOK, "signin", page{Title: "Sign in", Message: c.secureNote(r)})
}

// secureNote warns, on a plain-HTTP request, that the browser will not
// send back the Secure cookie an https public URL makes it set: sign-in
// would seem to do nothing.
func (c *Console) secureNote(r *http.Request) string {
	if c.secure && r.TLS == nil && !strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https") {
		return "TOLLGATE_PUBLIC_URL is https, so the session cookie is Secure: open the console over https, or the browser may not keep you signed in."
	}
	return ""
}

func (c *Console) signin(w http.ResponseWriter, r *http.Request) {
	addr := clientAddr(r)
	if !c.mayTry(addr) {
		c.log.Warn("console sign-in throttled", "remote", addr)
		w.Header().Set("Retry-After", fmt.Sprint(int(failRefill/time.Second)))
		c.render(w, r, http.StatusTooManyRequests, "signin", page{Title: "Sign in", Error: "Too many failed sign-ins from this address: wait a little and try again."})
		return
	}
	tok := strings.TrimSpace(r.PostFormValue("token"))
	if tok == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(c.cfg.AdminToken)) != 1 {
		c.failed(addr)
		c.log.Warn("console sign-in refused: wrong admin token", "remote", addr)
		if c.cfg.FailDelay > 0 {
			t := time.NewTimer(c.cfg.FailDelay)
			select {
			case <-t.C:
			case <-r.Context().Done():
			}
			t.Stop()
		}
		c.render(w, r, http.StatusUnauthorized, "signin", page{Title: "Sign in", Error: "That is not the admin token."})
		return
	}
	s, err := c.sessions.create(r.Context(), c.cfg.AdminToken, c.cfg.now())
	if err != nil {
		c.fail(w, r, session{}, err)
		return
	}
	c.log.Info("console sign-in", "remote", addr, "session", s.fingerprint())
	c.setCookie(w, r, s.id)
	http.Redirect(w, r, Prefix+"connections", http.StatusSeeOther)
}

func (c *Console) signout(w http.ResponseWriter, r *http.Request, s session) {
	if err := c.sessions.delete(r.Context(), s.id); err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.clearCookie(w, r)
	http.Redirect(w, r, Prefix+"signin", http.StatusSeeOther)
}

func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// mayTry says whether addr has a sign-in attempt left (a token bucket of
// failBurst, refilled one per failRefill).
func (c *Console) mayTry(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.fails[addr]
	if b == nil {
		return true
	}
	now := c.cfg.now()
	b.tokens = min(failBurst, b.tokens+float64(now.Sub(b.at))/float64(failRefill))
	b.at = now
	return b.tokens >= 1
}

func (c *Console) failed(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.fails[addr]
	if b == nil {
		if len(c.fails) >= failTableMax {
			clear(c.fails)
		}
		b = &failBucket{tokens: failBurst, at: c.cfg.now()}
		c.fails[addr] = b
	}
	b.tokens--
}

// audited logs an audit entry that could not be appended after a write
// that succeeded: the write has committed, and an error page would read
// as "not done" and invite doing it again.
func (c *Console) audited(r *http.Request, err error) {
	if err != nil {
		c.log.Error("console: audit entry not recorded", "path", r.URL.Path, "err", err)
	}
}
