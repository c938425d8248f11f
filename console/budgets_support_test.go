package console

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/audit"
	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/ledger"
	"github.com/tollgate/tollgate/proxy"
)

// govEnv is an env whose console also has the governance store, the
// budget ledger (settled by the usage store, as in serve), the policy
// watcher and the audit log, all on the env's database.
type govEnv struct {
	*env
	st    *governance.Store
	l     *governance.Ledger
	usage *ledger.Store
	w     *governance.Watcher
	log   *audit.Log
	trail audit.Trail
}

func newGovEnv(t *testing.T) *govEnv {
	t.Helper()
	return newGovEnvOn(t, filepath.Join(t.TempDir(), "tollgate.db"))
}

// forEachGovEngine runs f on SQLite, and on PostgreSQL when
// TOLLGATE_TEST_POSTGRES is set.
func forEachGovEngine(t *testing.T, f func(t *testing.T, g *govEnv)) {
	t.Run("sqlite", func(t *testing.T) { f(t, newGovEnv(t)) })
	t.Run("postgres", func(t *testing.T) {
		pg := os.Getenv("TOLLGATE_TEST_POSTGRES")
		if pg == "" {
			t.Skip("TOLLGATE_TEST_POSTGRES is not set")
		}
		f(t, newGovEnvOn(t, testkit.PostgresSchema(t, pg, "console_gov_")))
	})
}

func newGovEnvOn(t *testing.T, dsn string) *govEnv {
	t.Helper()
	ctx := context.Background()
	g := &govEnv{env: newEnvOn(t, dsn)}
	var err error
	if g.st, err = governance.OpenStore(ctx, g.db); err != nil {
		t.Fatal(err)
	}
	if g.l, err = governance.OpenLedger(ctx, g.db, governance.LedgerConfig{ReplicaID: "console-test", Now: g.clock.now, Log: slog.New(slog.NewTextHandler(g.logs, nil))}); err != nil {
		t.Fatal(err)
	}
	if g.usage, err = ledger.OpenStore(ctx, g.db); err != nil {
		t.Fatal(err)
	}
	g.usage.SetSettler(g.l)
	g.w = governance.NewWatcher(g.st, governance.WatchConfig{PollOnly: true})
	g.log = g.audit
	g.trail = audit.Trail{Log: g.log, Secrets: []string{testAdminToken}}
	c, err := New(ctx, Config{AdminToken: testAdminToken, DB: g.db, Registry: g.reg, Resolver: g.svc,
		Policies: g.st, Ledger: g.l, PolicyWatcher: g.w, Audit: g.trail, ProxyURL: testProxyURL,
		Usage: g.usage, Pricer: metering.DefaultPrices(),
		FailDelay: -1, Logger: slog.New(slog.NewTextHandler(g.logs, nil)), now: g.clock.now})
	if err != nil {
		t.Fatal(err)
	}
	g.con, g.srv = c, httptest.NewServer(c)
	t.Cleanup(g.srv.Close)
	return g
}

func (g *govEnv) setBudget(b governance.Budget) governance.Budget {
	g.t.Helper()
	b, _, err := g.st.SetBudget(context.Background(), b)
	if err != nil {
		g.t.Fatal(err)
	}
	return b
}

// spend reserves amounts against budgets, as the proxy does when it
// admits a request, and, when cost is not nil, stores the request's usage
// record through the usage store, which settles the reservation to its
// actual cost and tokens in the same transaction.
func (g *govEnv) spend(id string, charges []governance.Charge, cost *int64, in, out int64) {
	g.t.Helper()
	ctx := context.Background()
	ref, err := g.l.Reserve(ctx, id, charges)
	if err != nil || ref != nil {
		g.t.Fatalf("reserve %s: %v %v", id, ref, err)
	}
	if cost == nil {
		return
	}
	rec := &metering.Record{RequestID: id, Start: g.clock.now(), Outcome: metering.OutcomeOK, Source: metering.SourceUpstream, Status: 200,
		Usage: &metering.Usage{InputUncached: in, Output: out}, CostMicroUSD: cost, Reserved: true}
	if _, err := g.usage.InsertBatch(ctx, []*metering.Record{rec}); err != nil {
		g.t.Fatal(err)
	}
}

func (g *govEnv) headroom(bs ...governance.Budget) []governance.Headroom {
	g.t.Helper()
	hs, err := g.l.Headroom(context.Background(), bs)
	if err != nil {
		g.t.Fatal(err)
	}
	return hs
}

// entries is the whole audit log, newest first.
func (g *govEnv) entries() []audit.Entry {
	g.t.Helper()
	p, err := g.log.Query(context.Background(), audit.Filter{Limit: audit.MaxLimit})
	if err != nil {
		g.t.Fatal(err)
	}
	return p.Entries
}

// adminAPI serves the proxy's admin API on 127.0.0.1 over the env's
// resolver, policy store, watcher and audit log, and returns its URL.
func (g *govEnv) adminAPI() string {
	g.t.Helper()
	srv, err := proxy.New(proxy.Config{Registry: g.reg, Auth: g.svc, Resolver: g.svc, Admin: g.svc, Sink: discardSink{},
		AdminToken: testAdminToken, Policies: g.st, PolicyWatcher: g.w, Audit: g.log, Logger: slog.New(slog.NewTextHandler(g.logs, nil))})
	if err != nil {
		g.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		g.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeAdmin(ln) }()
	g.t.Cleanup(func() {
		_ = srv.Shutdown(context.Background())
		<-done
	})
	return "http://" + ln.Addr().String()
}

// admin sends an admin API request with the admin token and returns the
// status and body.
func (g *govEnv) admin(base, method, path, body string) (int, string) {
	g.t.Helper()
	req, err := http.NewRequest(method, base+"/admin/v1"+path, strings.NewReader(body))
	if err != nil {
		g.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		g.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
