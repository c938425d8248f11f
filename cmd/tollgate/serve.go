package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tollgate/tollgate/audit"
	"github.com/tollgate/tollgate/console"
	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/health"
	"github.com/tollgate/tollgate/internal/hotfile"
	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/ledger"
	"github.com/tollgate/tollgate/proxy"
	"github.com/tollgate/tollgate/registry"
	"github.com/tollgate/tollgate/resolver"
)

// Shutdown step bounds (house rule 14): each step has its own deadline.
const (
	reloadPollInterval  = 2 * time.Second
	shutdownCancelBound = 5 * time.Second
	flushBound          = 10 * time.Second
)

// deps are the pieces every database-backed command opens.
type deps struct {
	log      *slog.Logger
	db       *store.DB
	registry *registry.Holder
	resolver *resolver.Service
	// masterKey is the decoded key the resolver was opened with.
	masterKey []byte
}

func (d *deps) Close() {
	if d.resolver != nil {
		d.resolver.Close()
	}
	if d.db != nil {
		d.db.Close()
	}
}

// openDeps opens the registry, the database and the resolver.
func openDeps(ctx context.Context, o *options, log *slog.Logger) (*deps, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	d := &deps{log: log}
	reg, err := openRegistry(o, log)
	if err != nil {
		return nil, err
	}
	d.registry = reg
	db, err := store.Open(ctx, o.DB)
	if err != nil {
		return nil, err
	}
	d.db = db
	keyText, err := o.masterKey(log, func(path string) error { return refuseNewKey(ctx, db, o.DB, path) })
	if err != nil {
		d.Close()
		return nil, err
	}
	key, err := resolver.ParseMasterKey(keyText)
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("master key: %w", err)
	}
	var prev [][]byte
	for _, s := range splitList(o.PreviousKeys) {
		k, err := resolver.ParseMasterKey(s)
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("previous master key: %w", err)
		}
		prev = append(prev, k)
	}
	svc, err := resolver.New(ctx, resolver.Config{
		MasterKey:        key,
		PreviousKeys:     prev,
		AllowHTTPBaseURL: o.AllowHTTPBaseURL,
		MaxStaleness:     o.MaxStaleness,
		PollOnly:         o.PGNotify == "off",

		AllowPrivateBaseURL: o.AllowPrivateBaseURL,
	}, resolver.Deps{DB: db, Registry: reg, Log: log})
	if err != nil {
		d.Close()
		return nil, err
	}
	d.resolver = svc
	d.masterKey = key
	return d, nil
}

// openRegistry returns the registry o asks for: none for commands that
// did not register --harnesses, the file (hot-reloaded by serve), or the
// built-in one when the default file is absent.
func openRegistry(o *options, log *slog.Logger) (*registry.Holder, error) {
	if !o.needRegistry {
		return registry.NewStatic(&registry.Registry{}), nil
	}
	r, err := builtInRegistry(o.Harnesses, func(s string) { log.Warn(s) })
	if err != nil || r != nil {
		return registry.NewStatic(r), err
	}
	return registry.NewHolder(o.Harnesses, log)
}

// refuseNewKey stops a generated key from replacing a lost one: the new key
// would be written first and the start would then fail with "wrong master
// key", leaving a key file that reads nothing beside the database.
func refuseNewKey(ctx context.Context, db *store.DB, dsn, keyPath string) error {
	u, err := resolver.StoredKeyUse(ctx, db)
	if err != nil {
		return err
	}
	if u.KeyID == "" && u.Credentials == 0 {
		return nil
	}
	return fmt.Errorf("%s is missing, but the database %s holds %d encrypted credentials and its tokens under master key %s; "+
		"a new key could read none of them, so none was written. Restore %s from a backup, or set TOLLGATE_MASTER_KEY or "+
		"TOLLGATE_MASTER_KEY_FILE to the key the database was written with", keyPath, dsn, u.Credentials, u.KeyID, keyPath)
}

func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := newFlags("serve", stderr)
	o.bindServe(fs)
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := o.check(); err != nil {
		return err
	}
	adminToken, err := o.adminToken()
	if err != nil {
		return err
	}
	metricsToken, err := o.metricsToken()
	if err != nil {
		return err
	}
	log := o.logger(stderr)

	d, err := openDeps(ctx, &o, log)
	if err != nil {
		return err
	}
	defer d.Close()

	// The base context of every upstream request: cancelling it is what
	// ends open streams at shutdown (streaming-on-fiber.md R3).
	baseCtx, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	bg, stopBG := context.WithCancel(context.Background())
	defer stopBG()

	if err := d.resolver.Start(bg); err != nil {
		return err
	}

	prices, err := loadPrices(&o, log)
	if err != nil {
		return err
	}
	usage, err := ledger.OpenStore(ctx, d.db)
	if err != nil {
		return err
	}
	auditLog, err := audit.Open(ctx, d.db)
	if err != nil {
		return err
	}
	if o.AuditRetention > 0 {
		// Its own context: it stops, and is waited for, before the
		// database closes, whatever order the rest of bg stops in.
		actx, stopAudit := context.WithCancel(bg)
		auditDone := make(chan struct{})
		go func() { defer close(auditDone); auditLog.Keep(actx, o.AuditRetention, log) }()
		defer func() { stopAudit(); <-auditDone }()
	}
	gov, err := startGovernance(ctx, bg, &o, d, prices, usage, log)
	if err != nil {
		return err
	}
	// After the shutdown sequence (writer drained: settlement needs only
	// the ledger's tables), stop the background work, then wait for it.
	defer gov.stop(stopBG)
	writer, err := ledger.NewWriter(ledger.WriterConfig{SpoolDir: o.Spool, Logger: log}, usage)
	if err != nil {
		return err
	}
	// Once a killed predecessor's records are all stored, its reclaimed
	// allotments settle at them (governance/replay.go).
	if err := gov.ledger.AfterReplay(writer.Replayed(), o.Spool); err != nil {
		log.Warn("budget allotments of a killed predecessor may stay charged whole", "err", err)
	}
	// Authentication refusals are counted per minute, not recorded one by
	// one (proxy.Config.Refusals).
	refusals := ledger.NewRefusalCounter(usage, log)
	refusals.Start()
	tel, err := newTelemetry(ctx, splitList(o.MetricLabels), d.registry, log)
	if err != nil {
		return err
	}

	if err := tel.registerStaleness(d.resolver); err != nil {
		return err
	}
	unregister, err := tel.instruments.RegisterWriter(writer)
	if err != nil {
		return err
	}
	defer unregister()
	// A nil *RedisLimiter (no TOLLGATE_REDIS_URL) exports no Redis gauge.
	unregisterGov, err := tel.registerGovernance(bg, gov.watcher, gov.ledger, gov.redis, gov.alerter, log)
	if err != nil {
		return err
	}
	defer unregisterGov()
	// One tracker for the process: failover reads and feeds it, the
	// resolution view and the gauges show it.
	credHealth := health.New(o.healthConfig())
	unregisterHealth, err := tel.registerHealth(credHealth)
	if err != nil {
		return err
	}
	defer unregisterHealth()

	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	// Out of descriptors, accept backs off instead of ending Serve, and the
	// caps keep it from getting there (proxy.Listener).
	nofile, nofileMax, err := proxy.RaiseFileLimit()
	if err != nil {
		log.Warn("cannot read the descriptor limit", "err", err)
	}
	capped := proxy.NewListener(ln, proxy.ListenerConfig{MaxConns: o.MaxConns, MaxConnsPerIP: o.MaxConnsPerIP, Logger: log})
	log.Info("connection caps", "nofile", nofile, "nofile_max", nofileMax, "max_conns", capped.MaxConns(), "max_conns_per_ip", o.MaxConnsPerIP)
	adminRaw, err := listenAdmin(&o, metricsToken != "", log)
	if err != nil {
		ln.Close()
		return err
	}
	// The admin listener survives running out of descriptors too; it is
	// for operators and scrapers, so a small total cap and no per-IP one.
	var adminLn net.Listener
	if adminRaw != nil {
		adminLn = proxy.NewListener(adminRaw, proxy.ListenerConfig{MaxConns: 256, MaxConnsPerIP: -1, Logger: log})
	}
	publicURL := o.PublicURL
	if publicURL == "" {
		publicURL = "http://" + ln.Addr().String()
	}
	// The console signs in with the admin token and is served beside the
	// admin API, so it is on exactly when the API is.
	var con http.Handler
	if adminToken != "" && o.AdminAddr != adminAddrOff {
		c, err := console.New(ctx, console.Config{AdminToken: adminToken, DB: d.db, Registry: d.registry, Resolver: d.resolver, Health: credHealth, PublicURL: o.PublicURL, Logger: log,
			Usage: usage, Pricer: pricer{prices},
			ProxyURL: publicURL, Audit: audit.Trail{Log: auditLog, Secrets: []string{adminToken}},
			Policies: gov.store, Ledger: gov.ledger, PolicyWatcher: gov.watcher})
		if err != nil {
			ln.Close()
			if adminRaw != nil {
				adminRaw.Close()
			}
			return err
		}
		con = c
	}
	authLimits := proxy.AuthLimitConfig{Burst: o.AuthFailureBurst, PerMinute: o.AuthFailuresPerMin, GlobalPerSecond: o.AuthFailuresGlobal}
	srv, err := proxy.New(proxy.Config{
		Registry:          d.registry,
		Auth:              d.resolver,
		Resolver:          d.resolver,
		Admin:             d.resolver,
		Usage:             usage,
		Audit:             auditLog,
		Owners:            usage,
		Sink:              writer,
		Refusals:          refusalSinks{refusals, tel.instruments},
		AuthLimits:        authLimits,
		Pricer:            pricer{prices},
		Observer:          tel.instruments,
		Freshness:         d.resolver,
		Governor:          gov.governor,
		Policies:          gov.store,
		PolicyWatcher:     gov.watcher,
		Metrics:           tel.handler,
		MetricsToken:      metricsToken,
		AdminOnProxy:      o.AdminAddr == adminAddrSame,
		AdminToken:        adminToken,
		Console:           con,
		PublicURL:         publicURL,
		BaseContext:       baseCtx,
		StreamIdleTimeout: o.StreamIdle,
		Failover:          o.failover(),
		Health:            credHealth,
		Logger:            log,

		AllowPrivateBaseURL: o.AllowPrivateBaseURL,
	})
	if err != nil {
		return err
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	regHUP, priceHUP := make(chan os.Signal, 1), make(chan os.Signal, 1)
	go func() {
		for {
			select {
			case <-bg.Done():
				return
			case s := <-hup:
				// A reload already pending covers this signal too.
				for _, ch := range []chan os.Signal{regHUP, priceHUP} {
					select {
					case ch <- s:
					default:
					}
				}
			}
		}
	}()
	go d.registry.Watch(bg, reloadPollInterval, regHUP)
	go prices.Watch(bg, reloadPollInterval, priceHUP)

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(capped) }()
	// nil without an admin listener: that case of the select never fires.
	var adminErr chan error
	adminAddr := o.AdminAddr
	if adminLn != nil {
		adminErr = make(chan error, 1)
		go func() { adminErr <- srv.ServeAdmin(adminLn) }()
		adminAddr = adminLn.Addr().String()
	}
	fmt.Fprintf(stdout, "listening on http://%s\n", ln.Addr())
	if adminLn != nil {
		fmt.Fprintf(stdout, "admin API and metrics on http://%s\n", adminLn.Addr())
	}
	log.Info("tollgate serving", "addr", ln.Addr().String(), "admin_addr", adminAddr, "db_engine", d.db.Engine,
		"registry_version", d.registry.Current().Version, "admin_api", adminToken != "" && o.AdminAddr != adminAddrOff, "version", versionString())

	select {
	case err := <-serveErr:
		// Records in flight still need the flush: shut down, then fail.
		log.Error("serve stopped; shutting down", "err", err)
		return errors.Join(fmt.Errorf("serve: %w", err), shutdown(srv, o.ShutdownGrace, cancelBase, writer, refusals, tel, log))
	case err := <-adminErr:
		log.Error("admin listener stopped; shutting down", "err", err)
		return errors.Join(fmt.Errorf("serve admin: %w", err), shutdown(srv, o.ShutdownGrace, cancelBase, writer, refusals, tel, log))
	case <-ctx.Done():
	}
	return shutdown(srv, o.ShutdownGrace, cancelBase, writer, refusals, tel, log)
}

// listenAdmin opens the listener of the admin API and /metrics that
// TOLLGATE_ADMIN_ADDR names; none for off, and for same, whose routes the
// proxy listener then serves.
func listenAdmin(o *options, metricsToken bool, log *slog.Logger) (net.Listener, error) {
	switch o.AdminAddr {
	case adminAddrOff:
		log.Info("admin listener off: no admin HTTP API and no /metrics", "setting", "TOLLGATE_ADMIN_ADDR="+adminAddrOff)
		return nil, nil
	case adminAddrSame:
		log.Warn("the admin API and /metrics are served on the proxy port, which every workspace reaches: metrics name every project, model and cost",
			"setting", "TOLLGATE_ADMIN_ADDR="+adminAddrSame, "metrics_token", metricsToken)
		return nil, nil
	}
	ln, err := net.Listen("tcp", o.AdminAddr)
	if err != nil {
		return nil, fmt.Errorf("admin listen (TOLLGATE_ADMIN_ADDR): %w", err)
	}
	return ln, nil
}

// shutdown runs the ordered, bounded sequence of house rule 14: stop
// accepting and let streams finish within the grace period; then cancel the
// base context so the rest end at once; then flush metering and telemetry.
func shutdown(srv *proxy.Server, grace time.Duration, cancelBase context.CancelFunc, w *ledger.Writer, refusals *ledger.RefusalCounter, tel *telemetry, log *slog.Logger) error {
	// Unready first: load balancers stop sending new work while the open
	// streams drain.
	srv.Unready()
	log.Info("shutting down", "grace", grace.String())
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(context.Background()) }()
	select {
	case <-done:
	case <-time.After(grace):
		log.Warn("grace period over; ending open streams")
		cancelBase()
		select {
		case <-done:
		case <-time.After(shutdownCancelBound):
			log.Error("connections still open after cancelling streams")
		}
	}
	cancelBase()
	fctx, cancel := context.WithTimeout(context.Background(), flushBound)
	defer cancel()
	var errs []error
	if err := w.Close(fctx); err != nil {
		errs = append(errs, fmt.Errorf("flush usage: %w", err))
	}
	if err := refusals.Close(fctx); err != nil {
		errs = append(errs, fmt.Errorf("flush refusal counts: %w", err))
	}
	if err := tel.shutdown(fctx); err != nil {
		errs = append(errs, fmt.Errorf("flush telemetry: %w", err))
	}
	log.Info("stopped")
	return errors.Join(errs...)
}

// refusalSinks counts each refused authentication in the refusals table
// and in tollgate_auth_refusals_total.
type refusalSinks struct {
	counter *ledger.RefusalCounter
	metrics *metering.Instruments
}

func (r refusalSinks) Add(f ledger.Refusal) {
	r.counter.Add(f)
	r.metrics.Refused(f.Reason)
}

// pricer adapts the hot-reloaded price table to proxy.Pricer.
type pricer struct {
	v *hotfile.Value[metering.PriceTable]
}

func (p pricer) Cost(provider, model, serviceTier string, u metering.Usage) (*int64, string) {
	return p.v.Current().Cost(provider, model, serviceTier, u)
}

func loadPrices(o *options, log *slog.Logger) (*hotfile.Value[metering.PriceTable], error) {
	if o.Prices == "" {
		return hotfile.Static(metering.DefaultPrices()), nil
	}
	return hotfile.Load("prices", o.Prices, metering.LoadPrices, log)
}

// governanceDeps are serve's budget, rate-limit and policy pieces.
type governanceDeps struct {
	store    *governance.Store
	watcher  *governance.Watcher
	ledger   *governance.Ledger
	limiter  governance.Limiter
	redis    *governance.RedisLimiter
	alerter  *governance.Alerter
	governor *governance.Governor
}

// startGovernance opens the policy store and its watcher, the budget
// ledger (installed as the usage store's settler before any writer replays
// the spool: a replayed record must settle its reservation), the rate
// limiter and the alerter. Background work runs on bg.
func startGovernance(ctx, bg context.Context, o *options, d *deps, prices *hotfile.Value[metering.PriceTable], usage *ledger.Store, log *slog.Logger) (*governanceDeps, error) {
	g := &governanceDeps{}
	st, err := openPolicies(ctx, d.db)
	if err != nil {
		return nil, err
	}
	g.store = st
	g.watcher = governance.NewWatcher(st, governance.WatchConfig{
		Poll: resolver.DefaultPollInterval, PollOnly: o.PGNotify == "off", Log: log,
	})
	if err := g.watcher.Start(bg); err != nil {
		return nil, fmt.Errorf("governance policies: %w", err)
	}
	l, err := governance.OpenLedger(ctx, d.db, governance.LedgerConfig{
		ReplicaID: o.ReplicaID, Lease: o.BudgetLease, Heartbeat: o.BudgetHeartbeat, Log: log,
		Allotments: o.BudgetAllotments == "on", Prices: prices.Current,
	})
	if err != nil {
		return nil, err
	}
	g.ledger = l
	usage.SetSettler(l)
	if err := l.Start(bg); err != nil {
		// A ledger that cannot heartbeat now refuses capped requests
		// retryably later; the replica still serves uncapped ones.
		log.Warn("budget ledger: first heartbeat failed", "err", err)
	}
	maxWait := o.RateMaxWait
	if maxWait == 0 {
		maxWait = -1 // the limiters read 0 as the default, negative as never
	}
	if o.RedisURL != "" {
		r, err := governance.NewRedisLimiter(governance.RedisConfig{
			URL: o.RedisURL, Prefix: o.RedisPrefix, MaxWait: maxWait, Replicas: l.Replicas, Log: log,
		})
		if err != nil {
			return nil, err
		}
		g.redis, g.limiter = r, r
	} else {
		g.limiter = governance.NewLocalLimiter(governance.LocalConfig{MaxWait: maxWait})
	}
	if o.AlertWebhookURL != "" {
		secret, err := o.alertSecret()
		if err != nil {
			return nil, err
		}
		a, err := governance.NewAlerter(ctx, d.db, g.watcher, l, governance.AlertConfig{
			URL: o.AlertWebhookURL, Secret: []byte(secret), Log: log,
		})
		if err != nil {
			return nil, err
		}
		if err := a.Start(bg); err != nil {
			return nil, err
		}
		g.alerter = a
	}
	g.governor = governance.New(governance.Config{
		Policies: g.watcher, Ledger: l, Limiter: g.limiter,
		CurrentPrices: prices.Current, Log: log,
	})
	log.Info("governance", "rate_limits", g.governor.RateLimits(), "replica", l.ReplicaID(), "alerts", g.alerter != nil)
	return g, nil
}

// stop ends governance's background work (stopBG ends the watcher, the
// ledger's heartbeat and the alerter), waits for the watcher (bounded) and
// the alerter, and closes the Redis pool.
func (g *governanceDeps) stop(stopBG context.CancelFunc) {
	// Requests have drained: what this replica holds ahead goes back now,
	// not a lease later at its whole amount.
	ctx, cancel := context.WithTimeout(context.Background(), shutdownCancelBound)
	g.ledger.ReleaseAllotments(ctx)
	cancel()
	stopBG()
	select {
	case <-g.watcher.Done():
	case <-time.After(shutdownCancelBound):
	}
	if g.alerter != nil {
		g.alerter.Wait()
	}
	if g.redis != nil {
		_ = g.redis.Close()
	}
}
