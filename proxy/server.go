// Package proxy is tollgate's only HTTP adapter: it serves agents with fiber,
// authenticates their scoped tokens, swaps in the resolved credential,
// forwards to the provider with fasthttp's client (upstream.go) and streams
// the answer back byte for byte while metering it. Nothing else in tollgate imports fiber.
package proxy

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"

	"github.com/tollgate/tollgate/audit"
	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/internal/netguard"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/ledger"
	"github.com/tollgate/tollgate/registry"
	"github.com/tollgate/tollgate/resolver"
)

// Authenticator checks a workspace-scoped token and says who is calling.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (resolver.Identity, error)
}

// CredentialResolver picks the credential that pays for a request.
type CredentialResolver interface {
	Resolve(ctx context.Context, req resolver.Request) (resolver.Target, error)
}

// Sink receives one usage record per request, except authentication
// refusals, which go to Config.Refusals as counts: anyone can send those at
// line rate. Record must not block.
type Sink interface {
	Record(r *metering.Record)
}

// InflightSink is a Sink that also keeps the requests in flight, so that a
// process killed mid-request still leaves one record of each request the
// provider received (replicas.md §4; *ledger.Writer). The proxy calls
// Begin once per request just before it is sent upstream, and, for a
// stream, Progress with the usage seen so far when it first appears and
// then at most every inflightProgressEvery; Record with the same request id
// ends it. r is read during the call and not kept. Neither may block.
type InflightSink interface {
	Sink
	Begin(r *metering.Record)
	Progress(r *metering.Record)
}

// RefusalCounter counts authentication refusals, which get no usage record
// (ledger.RefusalCounter). Add must not block.
type RefusalCounter interface {
	Add(r ledger.Refusal)
}

// Pricer prices usage; a nil cost means the model, or the service tier it
// was served in, is not priced.
type Pricer interface {
	Cost(provider, model, serviceTier string, u metering.Usage) (microUSD *int64, version string)
}

// Freshness says how current this replica's view of tokens and
// credentials is (resolver.Service.Freshness): ok is false once staleness
// exceeds bound, when the resolver refuses lookups.
type Freshness interface {
	Freshness() (staleness, bound time.Duration, ok bool)
}

// Observer receives each finished record with the time spent inside tollgate
// (metrics).
type Observer interface {
	Observe(r *metering.Record, overhead time.Duration)
}

// Server limits and timeouts, each a named bound with its reason.
const (
	// DefaultStreamIdleTimeout ends a stream whose upstream sent nothing for
	// this long. Reasoning models pause, but Anthropic pings every few
	// seconds and OpenAI streams keep-alive comments; five minutes of
	// silence is a dead upstream. Idle, never total (caddyserver/caddy#7913).
	// A client write that makes no progress for as long ends the stream too.
	DefaultStreamIdleTimeout = 5 * time.Minute
	// DefaultResponseHeaderTimeout bounds the wait for upstream headers. A
	// non-streamed answer sends its headers only when generation ends, and
	// harnesses allow 600 s (Claude Code's x-stainless-timeout).
	DefaultResponseHeaderTimeout = 10 * time.Minute
	// DefaultShutdownGrace is how long open streams may run after SIGTERM.
	DefaultShutdownGrace = 30 * time.Second
	// serverReadTimeout bounds reading one request (headers and body).
	serverReadTimeout = 60 * time.Second
	// serverIdleTimeout closes idle keep-alive connections.
	serverIdleTimeout = 120 * time.Second
	// serverReadBufferSize also caps request header size
	// (valyala/fasthttp#1007); harness requests carry many headers.
	serverReadBufferSize = 16 << 10
)

// Config configures a Server. Zero values take the defaults named per field.
type Config struct {
	// Registry serves the current harness registry. Required.
	Registry *registry.Holder
	// Auth checks tokens. Required.
	Auth Authenticator
	// Resolver picks credentials. Required.
	Resolver CredentialResolver
	// Admin backs the admin API; nil disables /admin.
	Admin *resolver.Service
	// Usage answers the usage API; nil disables /admin/v1/usage.
	Usage UsageQuerier
	// Audit records each admin write and serves GET /admin/v1/audit; nil
	// records nothing.
	Audit *audit.Log
	// Owners finds who created a stored provider object (a response) the
	// in-memory index no longer holds; nil leaves only the index, so on a
	// platform key such ids are refused once it forgets them.
	Owners OwnerLookup
	// Sink receives usage records. Required.
	Sink Sink
	// Refusals counts authentication refusals (no, bad, revoked or expired
	// token, wrong harness, throttled); they reach neither Sink nor the
	// access log. Nil: they are only seen by Observer.
	Refusals RefusalCounter
	// AuthLimits throttles authentication failures per client address and
	// globally (authlimit.go); zero fields take the defaults.
	AuthLimits AuthLimitConfig
	// Pricer prices records; nil leaves every record unpriced.
	Pricer Pricer
	// Observer receives records for metrics; may be nil.
	Observer Observer
	// Freshness, if set, decides /readyz on both listeners: 503 with reason
	// store-stale while it is not ok. Nil: ready until Unready.
	Freshness Freshness
	// Governor admits requests under budgets, rate limits and model
	// policy before they are forwarded; nil: nothing is governed.
	Governor *governance.Governor
	// Policies, if set, backs the admin API's /budgets, /limits and
	// /model-rules (the same store as the CLI's); its watcher is refreshed
	// after each write so this replica enforces it before answering.
	Policies *governance.Store
	// PolicyWatcher is refreshed after each policy write; may be nil.
	PolicyWatcher *governance.Watcher
	// Metrics, if set, is served on GET /metrics (Prometheus exposition)
	// of the admin listener.
	Metrics http.Handler
	// MetricsToken, if set, is the bearer token GET /metrics needs:
	// metrics name every project and model and what each spent.
	MetricsToken string
	// AdminOnProxy serves the admin API and /metrics on the proxy listener
	// too, as tollgate did before it had an admin listener: any workspace
	// that reaches the proxy then reaches them.
	AdminOnProxy bool
	// Console, if set, is the web console (package console), served under
	// /ui/ wherever the admin API is.
	Console http.Handler
	// AdminToken guards /admin/v1; empty disables the admin API.
	// The admin API is served by ServeAdmin, apart from the proxy.
	AdminToken string
	// PublicURL is tollgate's URL as workspaces reach it, used to render the
	// environment returned with a new token. Default http://<listen address>.
	PublicURL string
	// BaseContext is the parent of every upstream request; cancelling it
	// ends every open stream (shutdown step 3). Default context.Background().
	BaseContext context.Context
	// StreamIdleTimeout, default DefaultStreamIdleTimeout.
	StreamIdleTimeout time.Duration
	// ResponseHeaderTimeout, default DefaultResponseHeaderTimeout, bounds
	// the wait for a streamed answer's headers and for a whole non-streamed
	// answer.
	ResponseHeaderTimeout time.Duration
	// Failover bounds the attempts of a request across its candidate
	// credentials (failover.go); zero fields take the defaults.
	Failover FailoverConfig
	// Health is each credential's health as attempts found it: failover
	// skips a credential it refuses, and the resolution view shows it.
	// Nil: every credential may be tried.
	Health HealthTracker
	// Logger receives one line per request; default slog.Default().
	Logger *slog.Logger
	// AllowPrivateBaseURL lets credential base URL overrides reach loopback
	// and private addresses when dialled (resolver.Config has the same
	// setting for when they are written). Default false.
	AllowPrivateBaseURL bool
	// now is injectable for tests.
	now func() time.Time
}

func (c *Config) timeNow() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

// Server is the HTTP front of tollgate.
type Server struct {
	cfg Config
	// app serves inference (Serve); admin serves the admin API and
	// metrics (ServeAdmin). Two apps, so that no route of one is reachable
	// through the other's listener, whatever the path spelling.
	app   *fiber.App
	admin *fiber.App
	// served are the listeners handed to Serve and ServeAdmin, closed by
	// Shutdown too (stopped then refuses new ones): fasthttp's Shutdown
	// knows a listener only once its Serve has registered it, and a Serve
	// that registers after Shutdown ran would accept forever.
	lnMu    sync.Mutex
	served  []net.Listener
	stopped bool
	log     *slog.Logger
	fast    *fastUpstream
	// owners is who created each stored object on a platform key (owner.go).
	owners *owners
	// limiter is nil when both authentication limits are off.
	limiter *authLimiter
	// decodes bounds the memory of decoded request bodies (decompress.go).
	decodes *decodeBudget
	// inflight is cfg.Sink when it keeps requests in flight, else nil.
	inflight InflightSink
	// unready is set by Unready, from SIGTERM on.
	unready atomic.Bool
}

// New validates cfg, applies defaults and builds the fiber app.
func New(cfg Config) (*Server, error) {
	var missing []string
	if cfg.Registry == nil {
		missing = append(missing, "Registry")
	}
	if cfg.Auth == nil {
		missing = append(missing, "Auth")
	}
	if cfg.Resolver == nil {
		missing = append(missing, "Resolver")
	}
	if cfg.Sink == nil {
		missing = append(missing, "Sink")
	}
	if len(missing) > 0 {
		return nil, errors.New("proxy config: missing " + strings.Join(missing, ", "))
	}
	if cfg.BaseContext == nil {
		cfg.BaseContext = context.Background()
	}
	if cfg.StreamIdleTimeout <= 0 {
		cfg.StreamIdleTimeout = DefaultStreamIdleTimeout
	}
	if cfg.ResponseHeaderTimeout <= 0 {
		cfg.ResponseHeaderTimeout = DefaultResponseHeaderTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Failover = cfg.Failover.withDefaults()
	fast, err := newFastUpstream(cfg.BaseContext, 4*registry.DefaultMaxResponseBodyBytes, cfg.Registry, netguard.Policy{AllowPrivate: cfg.AllowPrivateBaseURL}, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("proxy config: upstream proxy from the environment: %w", err)
	}
	s := &Server{
		fast:   fast,
		cfg:    cfg,
		log:    cfg.Logger,
		owners: newOwners(cfg.Owners),
	}
	s.inflight, _ = cfg.Sink.(InflightSink)
	s.limiter = newAuthLimiter(cfg.AuthLimits, cfg.timeNow())
	s.decodes = newDecodeBudget(max(decodeBudgetMin, 2*int64(cfg.Registry.Current().Limits.MaxBodyBytes)))
	appConfig := fiber.Config{
		ReadTimeout:  serverReadTimeout,
		WriteTimeout: 0, // absolute over a streamed body: would cut long streams (R1)
		IdleTimeout:  serverIdleTimeout,
		// With a streamed request body, BodyLimit only bounds what fasthttp
		// prefetches (at most 8 KiB); the edge middleware enforces the live
		// registry's limit while reading (edge.go).
		BodyLimit:      registry.DefaultMaxBodyBytes * 4,
		ReadBufferSize: serverReadBufferSize,
		// A streamed response holds its writer for the stream's life; SSE
		// events are far smaller, and larger writes bypass the buffer.
		WriteBufferSize:   2 << 10,
		ReduceMemoryUsage: true,
		// Buffered mode allocates a declared Content-Length before reading
		// a byte; streamed, the edge reads what arrives (hostile-clients.md §1).
		StreamRequestBody:     true,
		DisableStartupMessage: true,
		ErrorHandler:          s.errorHandler,
		// Only used for the Server header; keep it anonymous.
		ServerHeader:                 "",
		DisableKeepalive:             false,
		DisableDefaultDate:           true,
		DisablePreParseMultipartForm: true,
	}
	s.app = fiber.New(appConfig)
	s.admin = fiber.New(appConfig)
	// Not in fiber.Config: set on each fasthttp server before it serves.
	// The admin listener gets the same edge: bounded bodies, framing and
	// HTTP/2 refusals hold on every port.
	for _, app := range []*fiber.App{s.app, s.admin} {
		app.Server().HeaderReceived = s.headerReceived
		app.Server().ConnState = connState
		app.Server().Handler = s.refuseHTTP2(app.Server().Handler)
		app.Use(s.edge)
	}
	s.routes()
	s.adminListenerRoutes()
	return s, nil
}

// routes are the proxy listener's: health and inference. The admin API
// and metrics answer here only with AdminOnProxy; otherwise a clear 404
// says where they are, rather than the proxy's "no route".
func (s *Server) routes() {
	s.healthRoutes(s.app)
	if s.cfg.AdminOnProxy {
		s.operatorRoutes(s.app)
	} else {
		notHere := func(c *fiber.Ctx) error {
			return newError(kindNotFound, "the admin API and /metrics are not served on this port: they are on the admin listener (TOLLGATE_ADMIN_ADDR)")
		}
		s.app.Use("/admin", notHere)
		s.app.Use("/metrics", notHere)
		s.app.Use(consolePrefix, func(c *fiber.Ctx) error {
			return newError(kindNotFound, "the console is not served on this port: open /ui/ on the admin listener (TOLLGATE_ADMIN_ADDR)")
		})
	}
	s.app.Use(s.forward)
}

// healthRoutes: /healthz is liveness and always ok: a database outage
// reflected there would restart the whole fleet. /readyz is readiness: it
// fails while the resolver's view is past its freshness bound, when
// inference is refused anyway, and from SIGTERM on, so load balancers stop
// sending new work before the drain.
func (s *Server) healthRoutes(r fiber.Router) {
	r.Get("/healthz", func(c *fiber.Ctx) error { return c.SendString("ok\n") })
	r.Get("/readyz", s.readyz)
}

// readyState is /readyz's body.
type readyState struct {
	Status     string   `json:"status"`
	Reason     string   `json:"reason,omitempty"`
	StalenessS float64  `json:"staleness_s"`
	BoundS     *float64 `json:"bound_s,omitempty"`
	// RateLimits is where rate limits are counted (shared, local-fallback,
	// local): a Redis outage is visible here without failing readiness,
	// since the local fallback still enforces limit / replicas.
	RateLimits string `json:"rate_limits,omitempty"`
}

// Readiness reasons.
const (
	readyStoreStale   = "store-stale"
	readyShuttingDown = "shutting-down"
)

func (s *Server) readyz(c *fiber.Ctx) error {
	st := readyState{Status: "ok", RateLimits: s.cfg.Governor.RateLimits()}
	var staleness, bound time.Duration
	fresh := true
	if s.cfg.Freshness != nil {
		staleness, bound, fresh = s.cfg.Freshness.Freshness()
		st.StalenessS = roundSeconds(staleness)
	}
	switch {
	case s.unready.Load():
		st.Status, st.Reason = "unready", readyShuttingDown
	case !fresh:
		st.Status, st.Reason = "unready", readyStoreStale
	}
	if st.Reason != "" {
		if s.cfg.Freshness != nil {
			b := roundSeconds(bound)
			st.BoundS = &b
		}
		c.Status(fiber.StatusServiceUnavailable)
	}
	return c.JSON(st)
}

func roundSeconds(d time.Duration) float64 {
	return float64(d.Round(time.Millisecond)) / float64(time.Second)
}

// Unready makes /readyz answer 503 "shutting-down" on both listeners from
// now on; serve calls it on SIGTERM, before it stops accepting and drains.
func (s *Server) Unready() { s.unready.Store(true) }

// operatorRoutes are /metrics and the admin API, wherever they are served.
func (s *Server) operatorRoutes(r fiber.Router) {
	if s.cfg.Metrics != nil {
		r.Get("/metrics", s.requireMetricsToken, adaptor.HTTPHandler(s.cfg.Metrics))
	}
	s.consoleRoutes(r)
	if s.cfg.Admin != nil && s.cfg.AdminToken != "" {
		s.adminRoutes(r.Group(adminPrefix, s.requireAdmin, s.operatorContext))
	} else {
		// Said outright: a bare "no route" reads as a wrong path or version.
		r.Use("/admin", func(c *fiber.Ctx) error {
			return newError(kindNotFound, "the admin API is off on this server: set TOLLGATE_ADMIN_TOKEN to turn it on")
		})
	}
}

// requireAdmin checks the admin token, under the same failure limits as
// workspace tokens: guesses at the admin token are the most valuable ones.
func (s *Server) requireAdmin(c *fiber.Ctx) error {
	now := s.cfg.timeNow()
	got := strings.TrimSpace(strings.TrimPrefix(c.Get(fiber.HeaderAuthorization), "Bearer "))
	lim := s.limiter.take(c.Context().RemoteAddr(), got, now)
	if !lim.ok {
		wait := retryAfterSeconds(lim.wait)
		c.Set(fiber.HeaderRetryAfter, strconv.Itoa(wait))
		c.Context().SetConnectionClose()
		e := newError(kindTooManyRequests, "too many failed admin authentications from this address; retry in %d s", wait)
		e.retryAfter = wait
		return e
	}
	if !bearerIs(c, s.cfg.AdminToken) {
		s.limiter.failed(lim, got)
		return newError(kindUnauthenticated, "admin API needs 'Authorization: Bearer <TOLLGATE_ADMIN_TOKEN>'")
	}
	s.limiter.accepted(lim, got, now)
	return c.Next()
}

func (s *Server) requireMetricsToken(c *fiber.Ctx) error {
	if s.cfg.MetricsToken != "" && !bearerIs(c, s.cfg.MetricsToken) {
		return newError(kindUnauthenticated, "/metrics needs 'Authorization: Bearer <TOLLGATE_METRICS_TOKEN>'")
	}
	return c.Next()
}

// bearerIs says whether the request's bearer token is want, in constant
// time; an empty want matches nothing.
func bearerIs(c *fiber.Ctx, want string) bool {
	got := strings.TrimSpace(strings.TrimPrefix(c.Get(fiber.HeaderAuthorization), "Bearer "))
	return got != "" && want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// errorHandler is fiber's error handler: every error a client sees passes
// here, is classified once and rendered in the caller's dialect envelope.
// fiber's default would send err.Error(), which can leak URLs or hints.
func (s *Server) errorHandler(c *fiber.Ctx, err error) error {
	e := classify(err)
	status := e.status()
	if e.kind == kindInternal {
		s.log.Error("internal error", "path", c.Path(), "err", err)
	}
	c.Status(status)
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	if e.retryAfter > 0 {
		c.Set(fiber.HeaderRetryAfter, strconv.Itoa(e.retryAfter))
	}
	return c.Send(errorBody(s.shapeFor(c), e))
}

// shapeFor picks the error envelope from the route segment, so a caller gets
// its own dialect's shape even for paths tollgate does not serve.
func (s *Server) shapeFor(c *fiber.Ctx) string {
	path := string(c.Request().URI().PathOriginal())
	if d, ok := s.cfg.Registry.Current().RouteKnown(path); ok {
		return d.ErrorShape
	}
	return registry.ShapeOpenAI
}

// Serve serves the proxy on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	if !s.track(ln) {
		return nil
	}
	return s.app.Listener(ln)
}

// track notes ln for Shutdown; false (ln closed) once Shutdown has begun.
func (s *Server) track(ln net.Listener) bool {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	if s.stopped {
		ln.Close()
		return false
	}
	s.served = append(s.served, ln)
	return true
}

// Shutdown stops accepting on both listeners, then waits for their open
// connections until ctx ends. Streams still open then are ended by
// cancelling Config.BaseContext, which the caller owns
// (streaming-on-fiber.md R3). A listener never served stops at once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.lnMu.Lock()
	s.stopped = true
	served := s.served
	s.lnMu.Unlock()
	adminDone := make(chan error, 1)
	go func() { adminDone <- s.admin.ShutdownWithContext(ctx) }()
	err := s.app.ShutdownWithContext(ctx)
	err = errors.Join(err, <-adminDone)
	// A Serve that had not registered its listener with fasthttp yet was
	// not stopped above; closing it ends that Serve's accept loop (nil,
	// as fasthttp answers a closed listener). Already closed: no matter.
	for _, ln := range served {
		ln.Close()
	}
	return err
}
