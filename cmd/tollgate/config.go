package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate/tollgate"
	"github.com/tollgate/tollgate/audit"
	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/health"
	"github.com/tollgate/tollgate/proxy"
	"github.com/tollgate/tollgate/registry"
	"github.com/tollgate/tollgate/resolver"
)

// options are the settings shared by subcommands. Each has a TOLLGATE_*
// variable and, unless it is a secret, a flag; the flag wins. A value that
// does not parse is an error naming the variable, never a silent default.
type options struct {
	// Addr is where serve listens (TOLLGATE_ADDR, default 127.0.0.1:8787).
	Addr string
	// AdminAddr is where serve answers the admin API and /metrics
	// (TOLLGATE_ADMIN_ADDR, default 127.0.0.1:8788): apart from Addr,
	// which every workspace reaches. adminAddrOff serves neither;
	// adminAddrSame serves them on Addr, as before.
	AdminAddr string
	// MetricsToken, when set, is the bearer token /metrics needs
	// (TOLLGATE_METRICS_TOKEN, no flag, or a file named by
	// TOLLGATE_METRICS_TOKEN_FILE / --metrics-token-file).
	MetricsToken     string
	MetricsTokenFile string
	// DB is a SQLite file path or a postgres:// URL (TOLLGATE_DB, default
	// ./data/tollgate.db).
	DB string
	// Harnesses is the registry file (TOLLGATE_HARNESSES, default
	// ./harnesses.yaml).
	Harnesses string
	// Prices is a price table file; empty uses the built-in table
	// (TOLLGATE_PRICES).
	Prices string
	// MasterKey encrypts credentials at rest: 32 bytes, base64 or hex
	// (TOLLGATE_MASTER_KEY, no flag: flags show in process listings).
	// MasterKeyFile reads it from a file instead (TOLLGATE_MASTER_KEY_FILE,
	// default ./data/master.key, created on first use when neither is set,
	// with a warning).
	MasterKey     string
	MasterKeyFile string
	// PreviousKeys are older master keys still accepted for reading, comma
	// separated, during a rotation (TOLLGATE_PREVIOUS_MASTER_KEYS, no flag).
	PreviousKeys string
	// AdminToken guards /admin/v1 (TOLLGATE_ADMIN_TOKEN, or a file named by
	// TOLLGATE_ADMIN_TOKEN_FILE / --admin-token-file); empty disables the
	// admin HTTP API (the CLI still works against the database).
	AdminToken     string
	AdminTokenFile string
	// PublicURL is tollgate's URL as workspaces reach it
	// (TOLLGATE_PUBLIC_URL, default http://<addr>).
	PublicURL string
	// Spool is the durable usage spool directory (TOLLGATE_SPOOL, default
	// ./data/spool).
	Spool string
	// AllowHTTPBaseURL lets credentials override the provider with a plain
	// http base URL, for local endpoints and tests
	// (TOLLGATE_ALLOW_HTTP_BASE_URL).
	AllowHTTPBaseURL bool
	// AllowPrivateBaseURL lets credential base URLs reach loopback and
	// private addresses, for local model servers and tests; link-local ones
	// (cloud metadata) stay refused (TOLLGATE_ALLOW_PRIVATE_BASE_URL).
	AllowPrivateBaseURL bool
	// StreamIdle ends a silent stream (TOLLGATE_STREAM_IDLE_TIMEOUT, 5m).
	StreamIdle time.Duration
	// ShutdownGrace is how long open streams may finish after SIGTERM
	// (TOLLGATE_SHUTDOWN_GRACE, 30s).
	ShutdownGrace time.Duration
	// LogLevel is debug, info, warn or error (TOLLGATE_LOG_LEVEL, info).
	LogLevel string
	// MetricLabels lists extra metric attributes (TOLLGATE_METRIC_LABELS).
	MetricLabels string
	// MaxStaleness is how long after its last successful read of the
	// change log serve still answers from memory; past it, inference gets
	// 503 and /readyz fails (TOLLGATE_MAX_STALENESS, 5s; more than 2 x
	// the 1 s poll). Zero, for commands that do not serve: the default.
	MaxStaleness time.Duration
	// PGNotify is on or off (TOLLGATE_PG_NOTIFY, on): off makes serve
	// poll only and its writes notify no one (PgBouncer in transaction
	// mode, comparisons). Empty, for commands that do not serve: on.
	PGNotify string

	// needRegistry says the command registered --harnesses and opens the
	// registry; the others run without one.
	needRegistry bool
	fs           *flag.FlagSet
	// envErrs are the variables that did not parse, by flag name (a flag
	// given on the command line overrides its variable, bad or not);
	// errs are problems no flag overrides.
	envErrs map[string]error
	errs    []error

	// Connection caps at the listener (proxy.Listener). MaxConns caps open
	// client connections (TOLLGATE_MAX_CONNS; 0 derives it from the
	// descriptor limit, at most 4096; negative: no cap). MaxConnsPerIP caps
	// them per IPv4 address or IPv6 /64 (TOLLGATE_MAX_CONNS_PER_IP, 256;
	// negative: no cap).
	MaxConns      int
	MaxConnsPerIP int

	// Authentication-failure limits (proxy.AuthLimitConfig): a client
	// address's burst (TOLLGATE_AUTH_FAILURE_BURST, 20) and refill
	// (TOLLGATE_AUTH_FAILURES_PER_MIN, 60), and failures per second over
	// every address (TOLLGATE_AUTH_FAILURES_GLOBAL, 1000). 0 takes the
	// default; negative turns that limit off.
	AuthFailureBurst   int
	AuthFailuresPerMin int
	AuthFailuresGlobal int

	// Governance (governance.md). RedisURL shares rate limits across
	// replicas (TOLLGATE_REDIS_URL, no flag: it may hold a password);
	// empty counts them in process. RedisPrefix starts every key
	// (TOLLGATE_REDIS_PREFIX, tg:). RateMaxWait is how long a rate-limited
	// request may wait inside tollgate (TOLLGATE_RATE_MAX_WAIT, 5s; 0:
	// never).
	RedisURL    string
	RedisPrefix string
	RateMaxWait time.Duration
	// BudgetLease and BudgetHeartbeat are the budget ledger's lease and
	// heartbeat (TOLLGATE_BUDGET_LEASE, 30s; TOLLGATE_BUDGET_HEARTBEAT,
	// 5s); ReplicaID names this replica's reservations
	// (TOLLGATE_REPLICA_ID, default random per start).
	BudgetLease     time.Duration
	BudgetHeartbeat time.Duration
	ReplicaID       string
	// BudgetAllotments (TOLLGATE_BUDGET_ALLOTMENTS, on) admits budgeted
	// requests from slices of headroom reserved ahead; off reserves each
	// request in the ledger.
	BudgetAllotments string
	// AlertWebhookURL receives budget alerts (TOLLGATE_ALERT_WEBHOOK_URL,
	// no flag); AlertWebhookSecret signs them (TOLLGATE_ALERT_WEBHOOK_SECRET,
	// or a file named by TOLLGATE_ALERT_WEBHOOK_SECRET_FILE /
	// --alert-webhook-secret-file).
	AlertWebhookURL        string
	AlertWebhookSecret     string
	AlertWebhookSecretFile string

	// Failover across a binding's credentials (proxy.FailoverConfig):
	// UpstreamHeaderTimeout bounds a streamed attempt's wait for headers
	// when another credential could follow (TOLLGATE_UPSTREAM_HEADER_TIMEOUT,
	// 60s); RetryAfterMax is the longest Retry-After waited out on the same
	// credential (TOLLGATE_RETRY_AFTER_MAX, 2s; 0: never);
	// FailoverDeadline is when no further attempt starts
	// (TOLLGATE_FAILOVER_DEADLINE, 30s); FailoverAfterMaybeBilled fails
	// over after an attempt the provider may have billed
	// (TOLLGATE_FAILOVER_AFTER_MAYBE_BILLED, false).
	UpstreamHeaderTimeout    time.Duration
	RetryAfterMax            time.Duration
	FailoverDeadline         time.Duration
	FailoverAfterMaybeBilled bool
	// Credential health (health.Config): consecutive failures that open a
	// credential's circuit (TOLLGATE_HEALTH_FAILURES), its first and
	// longest cooldown (TOLLGATE_HEALTH_COOLDOWN,
	// TOLLGATE_HEALTH_MAX_COOLDOWN); 0 takes the health package's default.
	HealthFailures    int
	HealthCooldown    time.Duration
	HealthMaxCooldown time.Duration
	// AuditRetention is how long audit log entries are kept
	// (TOLLGATE_AUDIT_RETENTION: a duration or whole days, 90d; at least
	// a day); zero, the default, keeps them forever.
	AuditRetention time.Duration
}

// bind registers the flags every database-backed command uses.
func (o *options) bind(fs *flag.FlagSet) {
	o.fs = fs
	o.MasterKey = os.Getenv("TOLLGATE_MASTER_KEY")
	o.PreviousKeys = os.Getenv("TOLLGATE_PREVIOUS_MASTER_KEYS")
	o.stringVar(fs, &o.DB, "db", "TOLLGATE_DB", "./data/tollgate.db", "SQLite `file` or postgres:// URL", nil)
	o.stringVar(fs, &o.MasterKeyFile, "master-key-file", "TOLLGATE_MASTER_KEY_FILE", "", "`file` holding the master key; the key itself is accepted only from TOLLGATE_MASTER_KEY", nil)
	o.stringVar(fs, &o.LogLevel, "log-level", "TOLLGATE_LOG_LEVEL", "info", "`level`: debug, info, warn or error", checkLogLevel)
	o.removedFlag(fs, "master-key", "set TOLLGATE_MASTER_KEY, or put the key in a file and pass --master-key-file FILE (TOLLGATE_MASTER_KEY_FILE)")
	o.removedFlag(fs, "previous-master-keys", "set TOLLGATE_PREVIOUS_MASTER_KEYS")
}

// bindRegistry registers --harnesses for commands that use the registry.
func (o *options) bindRegistry(fs *flag.FlagSet) {
	o.needRegistry = true
	o.stringVar(fs, &o.Harnesses, "harnesses", "TOLLGATE_HARNESSES", defaultHarnesses, "harness registry `file`; when the default is missing, the built-in registry", nil)
}

// bindHTTPBaseURL registers --allow-http-base-url, for commands that store
// or use credential base URLs.
func (o *options) bindHTTPBaseURL(fs *flag.FlagSet) {
	o.boolVar(fs, &o.AllowHTTPBaseURL, "allow-http-base-url", "TOLLGATE_ALLOW_HTTP_BASE_URL", "allow http:// credential base URLs")
	o.boolVar(fs, &o.AllowPrivateBaseURL, "allow-private-base-url", "TOLLGATE_ALLOW_PRIVATE_BASE_URL", "allow credential base URLs on loopback and private addresses (link-local and cloud metadata stay refused)")
}

// bindServe registers everything serve reads.
func (o *options) bindServe(fs *flag.FlagSet) {
	o.bind(fs)
	o.bindRegistry(fs)
	o.bindHTTPBaseURL(fs)
	o.AdminToken = os.Getenv("TOLLGATE_ADMIN_TOKEN")
	o.MetricsToken = os.Getenv("TOLLGATE_METRICS_TOKEN")
	o.stringVar(fs, &o.Addr, "addr", "TOLLGATE_ADDR", "127.0.0.1:8787", "listen `host:port`", checkAddr)
	o.stringVar(fs, &o.AdminAddr, "admin-addr", "TOLLGATE_ADMIN_ADDR", "127.0.0.1:8788",
		"`host:port` of the admin API and /metrics; "+adminAddrOff+" serves neither, "+adminAddrSame+" serves them on the proxy port", checkAdminAddr)
	o.stringVar(fs, &o.MetricsTokenFile, "metrics-token-file", "TOLLGATE_METRICS_TOKEN_FILE", "", "`file` holding the bearer token /metrics needs; or set TOLLGATE_METRICS_TOKEN", nil)
	o.stringVar(fs, &o.Prices, "prices", "TOLLGATE_PRICES", "", "price table `file`; empty uses the built-in one", nil)
	o.stringVar(fs, &o.AdminTokenFile, "admin-token-file", "TOLLGATE_ADMIN_TOKEN_FILE", "", "`file` holding the bearer token for /admin/v1; or set TOLLGATE_ADMIN_TOKEN", nil)
	o.stringVar(fs, &o.PublicURL, "public-url", "TOLLGATE_PUBLIC_URL", "", "`URL` workspaces use to reach tollgate", checkHTTPURL)
	o.stringVar(fs, &o.Spool, "spool", "TOLLGATE_SPOOL", "./data/spool", "usage spool `directory`", nil)
	o.durationVar(fs, &o.StreamIdle, "stream-idle-timeout", "TOLLGATE_STREAM_IDLE_TIMEOUT", 5*time.Minute, "end a stream whose provider sent, or whose client took, nothing for this `long`")
	o.durationVar(fs, &o.ShutdownGrace, "shutdown-grace", "TOLLGATE_SHUTDOWN_GRACE", 30*time.Second, "`time` open streams get after SIGTERM")
	o.durationVar(fs, &o.MaxStaleness, "max-staleness", "TOLLGATE_MAX_STALENESS", resolver.DefaultMaxStalenessPolls*resolver.DefaultPollInterval,
		"answer from memory for at most this `long` after the last successful read of the credential store; then refuse with 503 and fail /readyz")
	o.stringVar(fs, &o.PGNotify, "pg-notify", "TOLLGATE_PG_NOTIFY", "on", "`on` or off: PostgreSQL LISTEN/NOTIFY carries changes between replicas at once; off polls only", checkOnOff)
	o.stringVar(fs, &o.MetricLabels, "metric-labels", "TOLLGATE_METRIC_LABELS", "", "extra metric `labels`, comma separated", nil)
	o.intVar(fs, &o.MaxConns, "max-conns", "TOLLGATE_MAX_CONNS", 0, "cap on open client `connections`; 0 derives it from the descriptor limit (at most 4096), negative: none")
	o.intVar(fs, &o.MaxConnsPerIP, "max-conns-per-ip", "TOLLGATE_MAX_CONNS_PER_IP", 256, "cap on open `connections` per client IPv4 address or IPv6 /64; negative: none")
	o.intVar(fs, &o.AuthFailureBurst, "auth-failure-burst", "TOLLGATE_AUTH_FAILURE_BURST", proxy.DefaultAuthFailureBurst, "failed token checks a client IPv4 address or IPv6 /64 may make before it gets 429; negative: no per-address limit")
	o.intVar(fs, &o.AuthFailuresPerMin, "auth-failures-per-min", "TOLLGATE_AUTH_FAILURES_PER_MIN", proxy.DefaultAuthFailuresPerMinute, "failed token checks a minute a client address may sustain after its burst")
	o.intVar(fs, &o.AuthFailuresGlobal, "auth-failures-global", "TOLLGATE_AUTH_FAILURES_GLOBAL", proxy.DefaultAuthFailuresGlobal, "failed token checks a second over all addresses before clients without a recently accepted token get 429; negative: no global limit")
	o.bindGovernance(fs)
	o.bindFailover(fs)
	o.register(fs, &strictValue{
		set: func(s string) error {
			d, err := audit.ParseRetention(s)
			if err == nil {
				o.AuditRetention = d
			}
			return err
		},
		get: func() string {
			if o.AuditRetention == 0 {
				return "forever"
			}
			return o.AuditRetention.String()
		},
	}, "audit-retention", "TOLLGATE_AUDIT_RETENTION", "how `long` audit log entries are kept (90d, 2160h); unset keeps them forever", true)
	o.removedFlag(fs, "admin-token", "set TOLLGATE_ADMIN_TOKEN, or put the token in a file and pass --admin-token-file FILE (TOLLGATE_ADMIN_TOKEN_FILE)")
	o.removedFlag(fs, "metrics-token", "set TOLLGATE_METRICS_TOKEN, or put the token in a file and pass --metrics-token-file FILE (TOLLGATE_METRICS_TOKEN_FILE)")
}

const defaultHarnesses = "./harnesses.yaml"

// bindFailover registers serve's failover and credential health settings.
func (o *options) bindFailover(fs *flag.FlagSet) {
	o.durationVar(fs, &o.UpstreamHeaderTimeout, "upstream-header-timeout", "TOLLGATE_UPSTREAM_HEADER_TIMEOUT", proxy.DefaultFailoverHeaderTimeout,
		"how `long` a streamed request waits for a provider's headers before another credential of its binding is tried")
	o.waitVar(fs, &o.RetryAfterMax, "retry-after-max", "TOLLGATE_RETRY_AFTER_MAX", proxy.DefaultRetryAfterMax,
		"longest Retry-After (a `duration`) tollgate waits out to send a request to the same credential again; longer moves on to the next; 0: never")
	o.durationVar(fs, &o.FailoverDeadline, "failover-deadline", "TOLLGATE_FAILOVER_DEADLINE", proxy.DefaultFailoverDeadline,
		"no further attempt of a request starts this `long` after it arrived")
	o.boolVar(fs, &o.FailoverAfterMaybeBilled, "failover-after-maybe-billed", "TOLLGATE_FAILOVER_AFTER_MAYBE_BILLED",
		"also fail over after an attempt the provider may have billed (sent, then no headers in time or a broken answer); it may then bill twice")
	o.intVar(fs, &o.HealthFailures, "health-failures", "TOLLGATE_HEALTH_FAILURES", 0, "consecutive failed attempts that put a credential in cooldown; 0: the default")
	o.waitVar(fs, &o.HealthCooldown, "health-cooldown", "TOLLGATE_HEALTH_COOLDOWN", 0, "first cooldown (a `duration`) of a failing credential, doubled on each reopening; 0: the default")
	o.waitVar(fs, &o.HealthMaxCooldown, "health-max-cooldown", "TOLLGATE_HEALTH_MAX_COOLDOWN", 0, "longest cooldown (a `duration`); 0: the default")
}

// failover is the proxy's failover configuration.
func (o *options) failover() proxy.FailoverConfig {
	f := proxy.FailoverConfig{HeaderTimeout: o.UpstreamHeaderTimeout, RetryAfterMax: o.RetryAfterMax,
		Deadline: o.FailoverDeadline, AfterMaybeBilled: o.FailoverAfterMaybeBilled}
	if f.RetryAfterMax == 0 {
		f.RetryAfterMax = -1
	}
	return f
}

// healthConfig is the credential health tracker's configuration.
func (o *options) healthConfig() health.Config {
	return health.Config{FailureThreshold: max(o.HealthFailures, 0), BaseCooldown: o.HealthCooldown, MaxCooldown: o.HealthMaxCooldown}
}

// bindGovernance registers serve's budget, rate-limit and alert settings.
// The Redis and webhook URLs come from the environment only: either may
// carry a password.
func (o *options) bindGovernance(fs *flag.FlagSet) {
	o.RedisURL = os.Getenv("TOLLGATE_REDIS_URL")
	o.AlertWebhookURL = os.Getenv("TOLLGATE_ALERT_WEBHOOK_URL")
	o.AlertWebhookSecret = os.Getenv("TOLLGATE_ALERT_WEBHOOK_SECRET")
	o.stringVar(fs, &o.RedisPrefix, "redis-prefix", "TOLLGATE_REDIS_PREFIX", "tg:", "`prefix` of every Redis key", checkRedisPrefix)
	o.waitVar(fs, &o.RateMaxWait, "rate-max-wait", "TOLLGATE_RATE_MAX_WAIT", governance.DefaultMaxWait, "how `long` a rate-limited request may wait inside tollgate before it is refused; 0: never wait")
	o.durationVar(fs, &o.BudgetLease, "budget-lease", "TOLLGATE_BUDGET_LEASE", governance.DefaultLease, "how `long` a silent replica keeps its budget reservations before a peer reclaims them at their ceiling")
	o.stringVar(fs, &o.BudgetAllotments, "budget-allotments", "TOLLGATE_BUDGET_ALLOTMENTS", "on", "`on` or off: admit budgeted requests from a slice of headroom this replica reserves ahead (off: one ledger transaction per request)", checkOnOff)
	o.durationVar(fs, &o.BudgetHeartbeat, "budget-heartbeat", "TOLLGATE_BUDGET_HEARTBEAT", governance.DefaultHeartbeat, "how `often` this replica proves to the budget ledger it is alive")
	o.stringVar(fs, &o.ReplicaID, "replica-id", "TOLLGATE_REPLICA_ID", "", "`name` of this replica's budget reservations; default random per start", checkReplicaID)
	o.stringVar(fs, &o.AlertWebhookSecretFile, "alert-webhook-secret-file", "TOLLGATE_ALERT_WEBHOOK_SECRET_FILE", "", "`file` holding the secret budget alerts are signed with; or set TOLLGATE_ALERT_WEBHOOK_SECRET", nil)
}

// checkGovernance reports the governance settings that do not fit
// together or do not parse. URLs are never quoted: they may hold a
// password.
func (o *options) checkGovernance() []error {
	var errs []error
	if o.RedisURL != "" {
		u, err := url.Parse(o.RedisURL)
		if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
			errs = append(errs, errors.New("TOLLGATE_REDIS_URL is not a Redis URL: use redis://[user:password@]host:port/db or rediss://... (the value is not shown: it may hold a password)"))
		}
	}
	if o.AlertWebhookURL != "" {
		u, err := url.Parse(o.AlertWebhookURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, errors.New("TOLLGATE_ALERT_WEBHOOK_URL is not an http(s) URL (the value is not shown: it may hold a secret)"))
		}
	}
	if o.AlertWebhookSecret != "" && o.AlertWebhookSecretFile != "" {
		errs = append(errs, errors.New("both TOLLGATE_ALERT_WEBHOOK_SECRET and an alert webhook secret file are set: set one"))
	}
	if o.AlertWebhookURL == "" && (o.AlertWebhookSecret != "" || o.AlertWebhookSecretFile != "") {
		errs = append(errs, errors.New("an alert webhook secret is set without TOLLGATE_ALERT_WEBHOOK_URL: set the URL, or unset the secret"))
	}
	// Two missed heartbeats must not lose a live replica's reservations.
	if o.BudgetLease > 0 && o.BudgetHeartbeat > 0 && o.BudgetLease < 2*o.BudgetHeartbeat {
		errs = append(errs, fmt.Errorf("TOLLGATE_BUDGET_LEASE=%q must be at least 2 x TOLLGATE_BUDGET_HEARTBEAT=%q, or a live replica's reservations are reclaimed between two heartbeats",
			o.BudgetLease.String(), o.BudgetHeartbeat.String()))
	}
	return errs
}

// alertSecret returns the webhook secret from the variable or the file.
func (o *options) alertSecret() (string, error) {
	return tokenFrom("alert webhook secret", o.AlertWebhookSecret, o.AlertWebhookSecretFile)
}

func checkRedisPrefix(s string) error {
	if s == "" || len(s) > 64 || strings.ContainsAny(s, " \t\r\n") {
		return errors.New("a Redis key prefix is 1 to 64 characters without spaces, e.g. tg:")
	}
	return nil
}

func checkReplicaID(s string) error {
	if len(s) > 128 {
		return errors.New("at most 128 characters")
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("._-:", c)) {
			return errors.New("use letters, digits and . _ - : only")
		}
	}
	return nil
}

// waitVar is a duration that may be zero ("0" or "0s": never wait).
func (o *options) waitVar(fs *flag.FlagSet, p *time.Duration, name, env string, def time.Duration, usage string) {
	*p = def
	o.register(fs, &strictValue{
		set: func(s string) error {
			if t := strings.TrimSpace(s); t == "0" || t == "0s" {
				*p = 0
				return nil
			}
			d, err := parseDuration(s)
			if err == nil {
				*p = d
			}
			return err
		},
		get: func() string { return p.String() },
	}, name, env, usage, true)
}

// The TOLLGATE_ADMIN_ADDR values that are not addresses.
const (
	adminAddrOff  = "off"
	adminAddrSame = "same"
)

// builtInRegistry returns the registry built into the binary when path is
// the default and there is no such file, as outside a checkout, and note
// says so; otherwise nil, and the caller reads the file.
func builtInRegistry(path string, note func(string)) (*registry.Registry, error) {
	if path != defaultHarnesses {
		return nil, nil
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	r, err := registry.Parse(tollgate.DefaultHarnesses)
	if err != nil {
		return nil, fmt.Errorf("built-in registry: %w", err)
	}
	note("no " + defaultHarnesses + " here: using the registry built into tollgate; set TOLLGATE_HARNESSES or --harnesses to use your own")
	return r, nil
}

// check reports every setting that did not parse and every secret given
// twice; commands call it after parsing their flags.
func (o *options) check() error {
	set := map[string]bool{}
	if o.fs != nil {
		o.fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	}
	errs := append([]error(nil), o.errs...)
	for _, name := range slices.Sorted(maps.Keys(o.envErrs)) {
		if !set[name] {
			errs = append(errs, o.envErrs[name])
		}
	}
	if o.MasterKey != "" && o.MasterKeyFile != "" {
		errs = append(errs, errors.New("both TOLLGATE_MASTER_KEY and a master key file are set: set one"))
	}
	if o.AdminToken != "" && o.AdminTokenFile != "" {
		errs = append(errs, errors.New("both TOLLGATE_ADMIN_TOKEN and an admin token file are set: set one"))
	}
	// One fixed port for both would fail as "address already in use",
	// which does not say which setting to change.
	if _, port, err := net.SplitHostPort(o.Addr); err == nil && port != "0" && o.AdminAddr == o.Addr {
		errs = append(errs, fmt.Errorf("TOLLGATE_ADMIN_ADDR and TOLLGATE_ADDR are both %s: give the admin listener a port of its own, or set TOLLGATE_ADMIN_ADDR=%s", o.Addr, adminAddrSame))
	}
	if o.MaxStaleness != 0 && o.MaxStaleness <= 2*resolver.DefaultPollInterval {
		errs = append(errs, fmt.Errorf("TOLLGATE_MAX_STALENESS=%q: must be more than 2 x the %s poll interval, or one slow poll makes the replica refuse traffic", o.MaxStaleness.String(), resolver.DefaultPollInterval))
	}
	if o.MetricsToken != "" && o.MetricsTokenFile != "" {
		errs = append(errs, errors.New("both TOLLGATE_METRICS_TOKEN and a metrics token file are set: set one"))
	}
	errs = append(errs, o.checkGovernance()...)
	return errors.Join(errs...)
}

// adminToken returns the admin token from the variable or the file.
func (o *options) adminToken() (string, error) {
	return tokenFrom("admin", o.AdminToken, o.AdminTokenFile)
}

// metricsToken returns the metrics token from the variable or the file.
func (o *options) metricsToken() (string, error) {
	return tokenFrom("metrics", o.MetricsToken, o.MetricsTokenFile)
}

// tokenFrom returns value, or the trimmed content of file when one is
// named; an empty file is an error, never an open door.
func tokenFrom(what, value, file string) (string, error) {
	if file == "" {
		return value, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("read %s token file: %w", what, err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("%s token file %s is empty", what, file)
	}
	return tok, nil
}

// strictValue is a flag whose variable and command-line value share one
// parser.
type strictValue struct {
	set func(string) error
	get func() string
	// isBool makes "--flag" alone mean true.
	isBool bool
}

func (v *strictValue) Set(s string) error { return v.set(s) }
func (v *strictValue) String() string {
	if v == nil || v.get == nil {
		return ""
	}
	return v.get()
}
func (v *strictValue) IsBoolFlag() bool { return v.isBool }

// register applies the variable, if set, then the flag; usage names the
// variable so -h says where else the setting comes from.
// An empty variable leaves a checked setting at its default, as if unset.
func (o *options) register(fs *flag.FlagSet, v *strictValue, name, env, usage string, emptyIsUnset bool) {
	if raw, ok := os.LookupEnv(env); ok && (raw != "" || !emptyIsUnset) {
		if err := v.Set(raw); err != nil {
			if o.envErrs == nil {
				o.envErrs = map[string]error{}
			}
			o.envErrs[name] = fmt.Errorf("%s=%q: %v", env, raw, err)
		}
	}
	fs.Var(v, name, usage+" ("+env+")")
}

func (o *options) stringVar(fs *flag.FlagSet, p *string, name, env, def, usage string, valid func(string) error) {
	*p = def
	o.register(fs, &strictValue{
		set: func(s string) error {
			if valid != nil {
				if err := valid(s); err != nil {
					return err
				}
			}
			*p = s
			return nil
		},
		get: func() string { return *p },
	}, name, env, usage, valid != nil)
}

func (o *options) boolVar(fs *flag.FlagSet, p *bool, name, env, usage string) {
	o.register(fs, &strictValue{
		set: func(s string) error {
			b, err := parseBool(s)
			if err == nil {
				*p = b
			}
			return err
		},
		get:    func() string { return strconv.FormatBool(*p) },
		isBool: true,
	}, name, env, usage, true)
}

func (o *options) durationVar(fs *flag.FlagSet, p *time.Duration, name, env string, def time.Duration, usage string) {
	*p = def
	o.register(fs, &strictValue{
		set: func(s string) error {
			d, err := parseDuration(s)
			if err == nil {
				*p = d
			}
			return err
		},
		get: func() string { return p.String() },
	}, name, env, usage, true)
}

// intVar registers a whole-number setting, strict like the others.
func (o *options) intVar(fs *flag.FlagSet, p *int, name, env string, def int, usage string) {
	*p = def
	o.register(fs, &strictValue{
		set: func(s string) error {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil {
				return fmt.Errorf("not a whole number")
			}
			*p = n
			return nil
		},
		get: func() string { return strconv.Itoa(*p) },
	}, name, env, usage, true)
}

// removedFlag registers a secret's old flag: secrets on a command line
// show in process listings and shell history. Using it is an error that
// says what to do instead, and the value is never echoed.
func (o *options) removedFlag(fs *flag.FlagSet, name, instead string) {
	fs.Var(&strictValue{set: func(string) error {
		o.errs = append(o.errs, fmt.Errorf("--%s is not accepted: command-line flags show in process listings; %s", name, instead))
		return nil
	}, get: func() string { return "" }}, name, hiddenUsage)
}

// hiddenUsage marks a flag -h leaves out.
const hiddenUsage = "(not accepted)"

// parseBool accepts the usual spellings, in any case.
func parseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "1", "true", "yes", "on":
		return true, nil
	case "0", "false", "no", "off":
		return false, nil
	}
	return false, errors.New("not a boolean: use 1, true, yes or on; 0, false, no or off")
}

// parseDuration requires a unit: a bare "5" is as likely seconds as
// minutes, so it is refused with the likely reading.
func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		return 0, fmt.Errorf("a duration needs a unit: did you mean %ss? (use e.g. 30s, 5m, 1h30m)", s)
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, errors.New("not a duration: use e.g. 30s, 5m, 1h30m")
	}
	if d <= 0 {
		return 0, errors.New("must be more than zero: use e.g. 30s, 5m, 1h30m")
	}
	return d, nil
}

func checkOnOff(s string) error {
	if s == "on" || s == "off" {
		return nil
	}
	return errors.New("use on or off")
}

func checkLogLevel(s string) error {
	switch strings.ToLower(s) {
	case "debug", "info", "warn", "error":
		return nil
	}
	return errors.New("not a log level: use debug, info, warn or error")
}

func checkAddr(s string) error {
	if _, _, err := net.SplitHostPort(s); err != nil {
		return fmt.Errorf("not a listen address: use host:port, e.g. 127.0.0.1:8787 or :8787 (%v)", err)
	}
	return nil
}

func checkAdminAddr(s string) error {
	if s == adminAddrOff || s == adminAddrSame {
		return nil
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		return fmt.Errorf("not an admin listen address: use host:port, e.g. 127.0.0.1:8788; %s to serve no admin API and no /metrics; or %s to serve them on the proxy port (%v)", adminAddrOff, adminAddrSame, err)
	}
	return nil
}

// checkHTTPURL accepts an absolute http or https URL with a host.
func checkHTTPURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("not an http(s) URL: use e.g. https://tollgate.example.com")
	}
	return nil
}

func (o *options) logger(w io.Writer) *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.LogLevel)); err != nil {
		lvl = slog.LevelInfo // check has reported it
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lvl}))
}

// masterKey returns the configured master key text. With neither the
// variable nor a file configured, it uses ./data/master.key beside the
// default database, creating it on first use: `make run` must work with no
// set-up, and a generated key is safer than a fixed default. mayGenerate
// runs before a key is written and vetoes it by returning an error.
func (o *options) masterKey(log *slog.Logger, mayGenerate func(path string) error) (string, error) {
	if o.MasterKey != "" {
		return o.MasterKey, nil
	}
	path := o.MasterKeyFile
	generated := false
	if path == "" {
		if strings.Contains(o.DB, "://") {
			return "", errors.New("no master key: set TOLLGATE_MASTER_KEY or TOLLGATE_MASTER_KEY_FILE")
		}
		path = filepath.Join(filepath.Dir(strings.TrimPrefix(o.DB, "sqlite:")), "master.key")
		generated = true
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && generated {
		if err := mayGenerate(path); err != nil {
			return "", err
		}
		var k [32]byte
		if _, err := rand.Read(k[:]); err != nil {
			return "", err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return "", err
		}
		enc := base64.StdEncoding.EncodeToString(k[:])
		switch won, err := createOnce(path, []byte(enc+"\n")); {
		case err != nil:
			return "", fmt.Errorf("write master key: %w", err)
		case won:
			log.Warn("generated a new master key; keep this file safe, credentials cannot be read without it", "path", path)
			return enc, nil
		}
		// Another process (`make run` and a CLI command started beside
		// it) created the key first: use that one.
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return "", fmt.Errorf("read master key file: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// createOnce writes data to path only if path does not exist, and never
// lets a reader see it half written: the bytes go to a temporary file in
// the same directory, which is then hard-linked into place (link fails if
// the name exists, so of two processes racing exactly one wins). won says
// whether this call's data is the file's.
func createOnce(path string, data []byte) (won bool, err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".master.key-*")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return false, err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	switch err := os.Link(tmp.Name(), path); {
	case err == nil:
		return true, nil
	case errors.Is(err, os.ErrExist):
		return false, nil
	default:
		return false, err
	}
}
