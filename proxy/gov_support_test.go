package proxy

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/ledger"
	"github.com/tollgate/tollgate/metering/meteringtest"
)

// staticPolicies is a PolicySource a test swaps whole; the store and its
// watcher are h1's and tested there.
type staticPolicies struct {
	p atomic.Pointer[governance.Policies]
}

func (s *staticPolicies) Current() *governance.Policies { return s.p.Load() }

func (s *staticPolicies) set(p governance.Policies) {
	for i := range p.Budgets {
		p.Budgets[i].Normalize()
	}
	for i := range p.Limits {
		p.Limits[i].Normalize()
	}
	s.p.Store(&p)
}

// teeSink keeps a copy of each record for assertions and hands it to the
// real usage writer, which stores it and settles its reservation.
type teeSink struct {
	mem *meteringtest.Sink
	w   *ledger.Writer
}

// Record hands the writer the record before the copy is visible, so a
// test that saw the copy and then flushes the writer finds it stored.
func (s teeSink) Record(r *metering.Record) {
	c := *r
	s.w.Record(r)
	s.mem.Record(&c)
}

func (s teeSink) Begin(r *metering.Record)    { s.w.Begin(r) }
func (s teeSink) Progress(r *metering.Record) { s.w.Progress(r) }

// govRig is a tollgate with a governor over the real SQLite budget ledger,
// whose usage writer settles each record in its insert transaction.
type govRig struct {
	*testEnv
	db     *store.DB
	ledger *governance.Ledger
	writer *ledger.Writer
	pol    *staticPolicies
}

func newGovRig(t *testing.T, o envOptions) *govRig {
	t.Helper()
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(t.TempDir(), "gov.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	led, err := governance.OpenLedger(ctx, db, governance.LedgerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	us, err := ledger.OpenStore(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	us.SetSettler(led)
	w, err := ledger.NewWriter(ledger.WriterConfig{SpoolDir: t.TempDir(), BatchInterval: 5 * time.Millisecond}, us)
	if err != nil {
		t.Fatal(err)
	}
	// Registered before newEnv's cleanup, so it runs after the server stops.
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = w.Close(cctx)
	})
	pol := &staticPolicies{}
	pol.set(governance.Policies{})
	o.governor = governance.New(governance.Config{
		Policies: pol, Ledger: led, Prices: metering.DefaultPrices(),
		Limiter: governance.NewLocalLimiter(governance.LocalConfig{MaxWait: -1}),
	})
	o.sink = func(m *meteringtest.Sink) Sink { return teeSink{mem: m, w: w} }
	e := newEnv(t, o)
	return &govRig{testEnv: e, db: db, ledger: led, writer: w, pol: pol}
}

// settled waits until the writer has stored (and so settled) everything
// recorded so far.
func (g *govRig) settled() {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.writer.Flush(ctx); err != nil {
		g.t.Fatalf("flush usage: %v", err)
	}
}

// reservation returns a request's reservation state ("" if none) and the
// budgets it holds items against, with what settlement charged each (-1
// while unsettled).
func (g *govRig) reservation(id string) (string, map[string]int64) {
	g.t.Helper()
	ctx := context.Background()
	var state string
	err := g.db.QueryRowContext(ctx, `SELECT state FROM gov_reservations WHERE request_id = $1`, id).Scan(&state)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		g.t.Fatal(err)
	}
	rows, err := g.db.QueryContext(ctx, `SELECT budget_id, COALESCE(actual, -1) FROM gov_reservation_items WHERE request_id = $1`, id)
	if err != nil {
		g.t.Fatal(err)
	}
	defer rows.Close()
	items := map[string]int64{}
	for rows.Next() {
		var b string
		var a int64
		if err := rows.Scan(&b, &a); err != nil {
			g.t.Fatal(err)
		}
		items[b] = a
	}
	return state, items
}

// headroom returns budget b's spent and reserved in its current window.
func (g *govRig) headroom(b governance.Budget) (spent, reserved int64) {
	g.t.Helper()
	b.Normalize()
	hs, err := g.ledger.Headroom(context.Background(), []governance.Budget{b})
	if err != nil {
		g.t.Fatal(err)
	}
	return hs[0].Spent, hs[0].Reserved
}

// tokenBudget is a day budget of limit tokens on a selector.
func tokenBudget(id string, sel governance.Selector, limit int64, mode governance.Mode) governance.Budget {
	return governance.Budget{ID: id, Selector: sel, Metric: governance.MetricTokens, Limit: limit,
		Window: governance.Window{Kind: governance.WindowDay}, Mode: mode}
}

func projectSel(p string) governance.Selector {
	return governance.Selector{ScopeType: governance.ScopeProject, ScopeID: p}
}
