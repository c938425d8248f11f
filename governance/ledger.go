package governance

import (
	"cmp"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/ledger"
)

// The budget ledger (governance.md §4.3). Counters are rows keyed by
// (budget_id, window_start): a new window is a new row, so nothing resets
// and an edited limit keeps its spend. A reservation locks every counter it
// touches, in key order, then one conditional UPDATE admits it against all
// of them or none. Settlement moves the reservation to spent in the usage
// batch's transaction; every state change is conditional on the state it
// leaves, so a replay changes nothing.
//
// Lock order, on PostgreSQL: every transaction that changes counters or
// reservation states (reserve, release, settle, reclaim) first locks the
// counter rows involved with one SELECT … ORDER BY budget_id, window_start
// FOR UPDATE, and only then touches a reservation. Transactions therefore
// queue on their lowest shared counter and cannot deadlock, and a
// reservation's state cannot change under a transaction that holds its
// counters. SQLite serializes writers anyway (BEGIN IMMEDIATE).

// ledgerMigrations are the ledger's tables. Append only. Times are Unix
// milliseconds and window starts Unix seconds (UTC), so one text runs on
// both engines and compares as integers.
//
// gov_counters.reserved is what held reservations of that window claim;
// gov_reservation_items fixes the window each amount was admitted in, so a
// request admitted at 23:59:59 settles into that day (N14). actual is what
// settlement charged (NULL until then).
var ledgerMigrations = []string{
	`CREATE TABLE gov_counters (
	budget_id TEXT NOT NULL,
	window_start BIGINT NOT NULL,
	spent BIGINT NOT NULL,
	reserved BIGINT NOT NULL,
	updated_at BIGINT NOT NULL,
	PRIMARY KEY (budget_id, window_start)
);
CREATE TABLE gov_reservations (
	request_id TEXT PRIMARY KEY,
	replica_id TEXT NOT NULL,
	created_at BIGINT NOT NULL,
	updated_at BIGINT NOT NULL,
	state TEXT NOT NULL
);
CREATE INDEX gov_reservations_held ON gov_reservations (created_at) WHERE state = 'held';
CREATE TABLE gov_reservation_items (
	request_id TEXT NOT NULL,
	budget_id TEXT NOT NULL,
	window_start BIGINT NOT NULL,
	metric TEXT NOT NULL,
	amount BIGINT NOT NULL,
	actual BIGINT,
	PRIMARY KEY (request_id, budget_id, window_start)
);
CREATE TABLE gov_replicas (
	replica_id TEXT PRIMARY KEY,
	started_at BIGINT NOT NULL,
	last_seen BIGINT NOT NULL
)`,
	// Headroom sums a budget window's allotments.
	`CREATE INDEX gov_reservation_items_budget ON gov_reservation_items (budget_id, window_start)`,
	// Prune finds the reservations that left held, oldest first; held ones,
	// the only kind the request path looks up by age, stay out of it.
	`CREATE INDEX gov_reservations_done ON gov_reservations (updated_at) WHERE state <> 'held'`,
	// late_actual is what the records of a reclaimed allotment settled at
	// after the reclaim (settleReplayed).
	`ALTER TABLE gov_reservation_items ADD COLUMN late_actual BIGINT NOT NULL DEFAULT 0`,
}

// Reservation states.
const (
	stateHeld        = "held"
	stateSettled     = "settled"
	stateReleased    = "released"
	stateReclaimed   = "reclaimed"
	stateSettledLate = "settled_late"
)

// Defaults of LedgerConfig.
const (
	DefaultLease     = 30 * time.Second
	DefaultHeartbeat = 5 * time.Second
)

// rollingBuckets is how many buckets a rolling window is kept in: its
// position is exact to 1/rollingBuckets of its length.
const rollingBuckets = 24

// sweepLockKey is the transaction advisory lock the sweeper takes on
// PostgreSQL (without waiting), so one replica reclaims at a time: the
// bytes "tollswep", distinct from store.MigrateLockKey.
const sweepLockKey int64 = 0x746f6c6c73776570

// sweepBatch bounds the reservations one sweep reclaims.
const sweepBatch = 500

// Pruning (issue 16): every reservation ends settled, released, reclaimed
// or settled_late, and its rows would otherwise stay forever. A record
// settles through its reservation's row only while that row is held or
// reclaimed (transition), and through an allotment's in every state (held,
// released and settled_late charge spent; reclaimed counts towards its
// correction, late_actual: allotSettleStatements); a replayed record that
// finds no row changes nothing, exactly as one that finds a final row. So
// rows no record can move any more go soon, and the rest wait for the
// records that may still come.
const (
	// pruneFinalAfter is how long rows no record can move are kept:
	// settled, released and settled_late reservations. Deleting them
	// changes no replay's outcome; the hour keeps recent ones to inspect.
	pruneFinalAfter = time.Hour
	// pruneLateAfter is how long rows a record still on its way moves are
	// kept: a reclaimed reservation (its late record corrects the ceiling
	// to the actual), and an allotment reclaimed (its late records count
	// towards the correction settleReplayed makes), released or settled
	// late (the records of its holds not stored yet charge spent through
	// it). Such records wait in a replica's spool or in-flight journal
	// while the database is unreachable or the replica is down, however
	// long; the lease (30 s) and the writer's retries (at most 30 s apart)
	// bound nothing more. 31 days covers a month-long outage: a record
	// later than that leaves a reclaimed reservation or allotment at what
	// the sweeper charged (never under), and charges a released
	// allotment's budget nothing (the record itself is stored, and
	// priced, as ever).
	pruneLateAfter = 31 * 24 * time.Hour
	// pruneEvery is how often a replica prunes; pruneBatch bounds the
	// reservations one transaction deletes (SQLite's writer is held for
	// no longer than that), prunePass the batches of one heartbeat, so a
	// backlog is worked off over heartbeats rather than in one statement.
	pruneEvery = time.Hour
	pruneBatch = 1000
	prunePass  = 10
)

// LedgerConfig configures a Ledger. Zero values take the defaults named.
type LedgerConfig struct {
	// ReplicaID names this process's reservations; "" picks a random one.
	// A restarted replica takes a new id.
	ReplicaID string
	// Lease is how long a replica may be silent before its held
	// reservations are reclaimed at their ceiling (default 30 s).
	Lease time.Duration
	// Heartbeat is how often the replica proves it is alive (default 5 s).
	Heartbeat time.Duration
	// Now is the clock (tests inject one); default time.Now.
	Now func() time.Time
	Log *slog.Logger
	// Allotments admits requests from slices of headroom this replica
	// reserves ahead (allot.go) instead of a reservation per request.
	Allotments bool
	// Prices is the price table settlement reads (the serving one, with
	// its reloads); nil settles an unpriced record at what it reserved. A
	// record of a model the table does not price settles its cost budgets
	// at the table's fallback rates (settleView).
	Prices func() *metering.PriceTable
}

// Ledger keeps budget counters and reservations in the SQL database: one
// atomic conditional update admits a request against every budget at once,
// so no replica can overspend a shared budget (governance.md §4.3).
type Ledger struct {
	db       *store.DB
	cfg      LedgerConfig
	started  time.Time
	replicas atomic.Int64
	start    sync.Once
	// stmts are SQLite's prepared ledger statements by text: parsing was
	// 40% of a reservation's CPU. PostgreSQL's driver caches its own.
	knownMu sync.Mutex
	known   map[counterKey]bool
	stmtMu  sync.Mutex
	stmts   map[string]*sql.Stmt
	// sqliteTurn (one slot) queues this process's ledger transactions on
	// SQLite, where the database takes one writer at a time anyway:
	// waiting here is a handoff, where SQLite's busy handler would sleep
	// and poll, and it gives up when the request does.
	sqliteTurn chan struct{}
	// lastBeat is the Unix milliseconds of the last heartbeat that
	// succeeded; allotments are used only while it is recent.
	lastBeat atomic.Int64
	// nextPrune is the Unix milliseconds the next prune is due at.
	nextPrune atomic.Int64
	allot     allotter
	// predMu guards the replay of earlier processes on this replica's
	// spool (settleReplayed): replayed closes once their records are
	// stored (AfterReplay); preds are their replica ids, as predFile
	// lists them; predAllots are the allotments of other replicas the
	// records settled so far named, at most maxPredAllots.
	predMu     sync.Mutex
	replayed   <-chan struct{}
	preds      []string
	predFile   string
	predAllots map[string]bool
}

// maxPredAllots bounds the allotments of earlier processes remembered
// from their replayed records. settleReplayed ends every allotment of the
// replicas they name, so one each would do; past the bound a replica named
// only by the allotments left out keeps its allotments as the sweeper
// charged them (never under).
const maxPredAllots = 4096

// OpenLedger applies the ledger's migrations and returns it.
func OpenLedger(ctx context.Context, db *store.DB, cfg LedgerConfig) (*Ledger, error) {
	if cfg.ReplicaID == "" {
		var b [8]byte
		rand.Read(b[:])
		cfg.ReplicaID = "r-" + hex.EncodeToString(b[:])
	}
	cfg.Lease = cmp.Or(cfg.Lease, DefaultLease)
	cfg.Heartbeat = cmp.Or(cfg.Heartbeat, DefaultHeartbeat)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Lease <= cfg.Heartbeat {
		return nil, fmt.Errorf("budget ledger: lease %s must be longer than the heartbeat %s", cfg.Lease, cfg.Heartbeat)
	}
	if err := db.Migrate(ctx, "governance_ledger", ledgerMigrations); err != nil {
		return nil, err
	}
	l := &Ledger{db: db, cfg: cfg, started: cfg.Now(), sqliteTurn: make(chan struct{}, 1)}
	l.allot.byKey, l.allot.byID = map[allotKey]*allotment{}, map[string]*allotment{}
	l.replicas.Store(1)
	return l, nil
}

// ReplicaID is the id this ledger's reservations are held under.
func (l *Ledger) ReplicaID() string { return l.cfg.ReplicaID }

// Replicas is how many replicas heartbeat within the lease, this one
// included, as of the last heartbeat (at least 1): the share a per-replica
// fallback limiter takes is limit/Replicas.
func (l *Ledger) Replicas() int { return int(max(1, l.replicas.Load())) }

// maxStmts bounds the prepared statements kept: their texts vary only with
// the number of budgets a request meets and their modes.
const maxStmts = 256

// stmt is q prepared for tx on SQLite, nil elsewhere or once the cache is
// full.
func (l *Ledger) stmt(ctx context.Context, tx *sql.Tx, q string) *sql.Stmt {
	if l.db.Engine != store.SQLite {
		return nil
	}
	l.stmtMu.Lock()
	defer l.stmtMu.Unlock()
	st := l.stmts[q]
	if st == nil {
		if len(l.stmts) >= maxStmts {
			return nil
		}
		var err error
		if st, err = l.db.PrepareContext(ctx, q); err != nil {
			return nil // the unprepared call reports the error
		}
		if l.stmts == nil {
			l.stmts = map[string]*sql.Stmt{}
		}
		l.stmts[q] = st
	}
	return tx.StmtContext(ctx, st)
}

func (l *Ledger) exec(ctx context.Context, tx *sql.Tx, q string, args ...any) (sql.Result, error) {
	if st := l.stmt(ctx, tx, q); st != nil {
		return st.ExecContext(ctx, args...)
	}
	return tx.ExecContext(ctx, q, args...)
}

func (l *Ledger) query(ctx context.Context, tx *sql.Tx, q string, args ...any) (*sql.Rows, error) {
	if st := l.stmt(ctx, tx, q); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return tx.QueryContext(ctx, q, args...)
}

// Charge is what one request reserves against one budget, in the budget's
// unit (micro-USD or tokens).
type Charge struct {
	Budget Budget
	Amount int64
}

// window is where a budget stands at one instant.
type window struct {
	// cur is the counter row a reservation goes into (the window's start,
	// or a rolling window's current bucket); lo is the first row that
	// still counts (lo == cur except for rolling windows).
	cur, lo int64
	// start is the window's start as shown; reset when it next frees
	// headroom: the next calendar window, the next rolling bucket, or
	// zero for a lifetime budget.
	start, reset time.Time
}

// windowOf places b's window at now. A rolling window of length E is the
// current bucket (E/24, at least a minute) plus the 23 before it, so its
// span is between 23/24 E and E; buckets are aligned to the epoch.
func windowOf(b Budget, now time.Time) window {
	if b.Window.Kind == WindowRolling {
		size := max(int64(b.Window.Every/rollingBuckets/time.Second), 60)
		n := (int64(b.Window.Every/time.Second) + size - 1) / size
		cur := now.Unix() / size * size
		if now.Unix() < 0 && now.Unix()%size != 0 {
			cur -= size
		}
		lo := cur - (n-1)*size
		return window{cur: cur, lo: lo, start: time.Unix(lo, 0).UTC(), reset: time.Unix(cur+size, 0).UTC()}
	}
	start, next := b.Window.Bounds(now)
	return window{cur: start.Unix(), lo: start.Unix(), start: start, reset: next}
}

// unit is the Refusal unit of b's amounts.
func (b Budget) unit() string {
	if b.Metric == MetricCost {
		return "micro_usd"
	}
	return "tokens"
}

// amountText renders an amount of b: dollars for cost, tokens otherwise.
func (b Budget) amountText(v int64) string {
	if b.Metric == MetricCost {
		return FormatUSD(v)
	}
	return strconv.FormatInt(v, 10) + " tokens"
}

// policyName is b's x-tollgate-limit name: "project:acme/budget".
func (b Budget) policyName() string {
	if b.ScopeID == "" {
		return string(b.ScopeType) + "/budget"
	}
	return string(b.ScopeType) + ":" + b.ScopeID + "/budget"
}

// planned is one budget's part of a reservation.
type planned struct {
	Charge
	w window
}

// planCharges merges charges per budget (a budget is reserved once) and
// sorts them by budget id, the lock order.
func planCharges(charges []Charge, now time.Time) []planned {
	return appendPlanned(nil, charges, now, nil)
}

// appendPlanned is planCharges into ps, its windows from wc when not nil.
func appendPlanned(ps []planned, charges []Charge, now time.Time, wc *windowCache) []planned {
	for _, c := range charges {
		if i := slices.IndexFunc(ps, func(p planned) bool { return p.Budget.ID == c.Budget.ID }); i >= 0 {
			ps[i].Amount += c.Amount
			continue
		}
		ps = append(ps, planned{Charge: c, w: wc.at(c.Budget, now)})
	}
	slices.SortFunc(ps, func(a, b planned) int { return cmp.Compare(a.Budget.ID, b.Budget.ID) })
	return ps
}

// retryable reports a PostgreSQL deadlock or serialization failure, which
// the lock order should make impossible; one retry covers the rest.
func retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001")
}

// inTx runs f in a transaction and commits it, retrying a deadlock or
// serialization failure up to txAttempts times after a short jittered
// pause (PostgreSQL rolled the loser back, so a retry is safe): under a
// 300-request race a reservation met the usage writer's settlement in a
// deadlock more than once, and a refusal for that is a fail-closed 429 the
// budget did not ask for. f returning errRollback rolls back without error.
func (l *Ledger) inTx(ctx context.Context, async bool, f func(tx *sql.Tx) error) error {
	var err error
	for attempt := 0; attempt < txAttempts; attempt++ {
		if attempt > 0 {
			select {
			case <-time.After(time.Duration(1+mrand.IntN(5*attempt)) * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		err = l.tryTx(ctx, async, f)
		if err == nil || errors.Is(err, errRollback) || !retryable(err) {
			break
		}
	}
	if errors.Is(err, errRollback) {
		return nil
	}
	return err
}

var errRollback = errors.New("rollback")

// txAttempts bounds inTx's tries of one transaction.
const txAttempts = 5

func (l *Ledger) tryTx(ctx context.Context, async bool, f func(tx *sql.Tx) error) error {
	if l.db.Engine == store.SQLite {
		select {
		case l.sqliteTurn <- struct{}{}:
			defer func() { <-l.sqliteTurn }()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if async && l.db.Engine == store.Postgres {
		// Losing the last reservations to a PostgreSQL crash only
		// under-reserves work in flight; settlement stays durable through
		// the spool (governance.md §4.3, mitigation 1).
		if _, err := tx.ExecContext(ctx, "SET LOCAL synchronous_commit = off"); err != nil {
			return err
		}
	}
	if err := f(tx); err != nil {
		return err
	}
	return tx.Commit()
}

// Reserve reserves every charge for requestID, all or nothing, in the
// window each budget is in now. A budget that does not admit it (hard: the
// amount does not fit; soft: spent + reserved is at the limit) makes the
// whole reservation fail with a *Refusal of kind RefuseBudget naming that
// budget, its spend and its reset; alert budgets account but never refuse.
// Other errors mean the ledger could not be reached.
//
// The amount is never cut down to the headroom left (N8): a request that
// does not fit is refused whole.
func (l *Ledger) Reserve(ctx context.Context, requestID string, charges []Charge) (*Refusal, error) {
	if len(charges) == 0 {
		return nil, nil
	}
	if requestID == "" {
		return nil, errors.New("budget ledger: reserve without a request id")
	}
	for _, c := range charges {
		if c.Amount < 0 || c.Budget.ID == "" {
			return nil, fmt.Errorf("budget ledger: bad charge %d against budget %q", c.Amount, c.Budget.ID)
		}
	}
	now := l.cfg.Now()
	ps := planCharges(charges, now)
	var refusal *Refusal
	for attempt := 0; ; attempt++ {
		var vanished bool
		err := l.inTx(ctx, true, func(tx *sql.Tx) error {
			var err error
			refusal, vanished, err = l.reserveTx(ctx, tx, requestID, ps, now)
			if err == nil && refusal != nil {
				return errRollback
			}
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("budget ledger: reserve: %w", err)
		}
		if refusal == nil {
			l.remember(ps)
			return nil, nil
		}
		if !vanished || attempt > 0 {
			return refusal, nil
		}
		// A row remembered as existing is gone (a restored database):
		// forget what this process knows and insert again.
		l.forget()
	}
}

// reserveTx reserves ps in tx. vanished reports a refusal by a budget
// whose current counter row does not exist (its insert was skipped).
func (l *Ledger) reserveTx(ctx context.Context, tx *sql.Tx, requestID string, ps []planned, now time.Time) (refusal *Refusal, vanished bool, err error) {
	ms := now.UnixMilli()
	// Missing counter rows first, so concurrent first requests of a new
	// window meet one row (N12). Rows are never deleted: one this process
	// has seen committed needs no insert.
	var missing []planned
	for _, p := range ps {
		if !l.isKnown(p) {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		q, args := sqlEach("INSERT INTO gov_counters (budget_id, window_start, spent, reserved, updated_at) VALUES ", ", ", nil, missing,
			func(p planned) (string, []any) { return "($%d, $%d, 0, 0, $%d)", []any{p.Budget.ID, p.w.cur, ms} })
		if _, err := l.exec(ctx, tx, q+" ON CONFLICT (budget_id, window_start) DO NOTHING", args...); err != nil {
			return nil, false, err
		}
	}

	// On PostgreSQL, lock and read every row that counts (the current
	// rows, a rolling window's earlier buckets) in key order: holding
	// them, the sums are exact, even against a peer whose clock is still
	// in the previous bucket, and transactions cannot deadlock. SQLite
	// holds the whole database already and reads only for rolling
	// windows, and for a refusal's message.
	read := l.db.Engine == store.Postgres || slices.ContainsFunc(ps, func(p planned) bool { return p.w.lo != p.w.cur })
	got := map[string]*counterSums{}
	for _, p := range ps {
		got[p.Budget.ID] = new(counterSums)
	}
	if read {
		var err error
		if got, err = l.readCounters(ctx, tx, ps); err != nil {
			return nil, false, err
		}
	}

	// One conditional UPDATE admits against every budget or reports which
	// ones refuse: the rows it returns are the budgets that admit.
	q, args := sqlEach("UPDATE gov_counters SET reserved = reserved + CASE", "", nil, ps,
		func(p planned) (string, []any) {
			return " WHEN budget_id = $%d THEN CAST($%d AS BIGINT)", []any{p.Budget.ID, p.Amount}
		})
	args = append(args, ms)
	q += fmt.Sprintf(" ELSE 0 END, updated_at = $%d WHERE ", len(args))
	q, args = sqlEach(q, " OR ", args, ps, func(p planned) (string, []any) {
		key := "(budget_id = $%d AND window_start = $%d"
		other := got[p.Budget.ID].other
		switch p.Budget.Mode {
		case ModeAlert:
			return key + ")", []any{p.Budget.ID, p.w.cur}
		case ModeHard:
			return key + " AND spent + reserved + CAST($%d AS BIGINT) <= CAST($%d AS BIGINT))", []any{p.Budget.ID, p.w.cur, p.Amount + other, p.Budget.Limit}
		}
		return key + " AND spent + reserved + CAST($%d AS BIGINT) < CAST($%d AS BIGINT))", []any{p.Budget.ID, p.w.cur, other, p.Budget.Limit}
	})
	// The reservation's rows, inserted only when every budget admits. On
	// PostgreSQL they ride in the UPDATE's statement (a round trip each
	// fewer while the counters are locked); a refusal rolls back anyway.
	resSQL := "INSERT INTO gov_reservations (request_id, replica_id, created_at, updated_at, state) "
	itemSQL := "INSERT INTO gov_reservation_items (request_id, budget_id, window_start, metric, amount) "
	item := func(p planned) (string, []any) {
		return "($%d, $%d, CAST($%d AS BIGINT), $%d, CAST($%d AS BIGINT))", []any{requestID, p.Budget.ID, p.w.cur, string(p.Budget.Metric), p.Amount}
	}
	combined := l.db.Engine == store.Postgres
	if combined {
		n := len(args)
		q = "WITH upd AS (" + q + " RETURNING budget_id), ok AS (SELECT COUNT(*) = " + strconv.Itoa(len(ps)) + " AS ok FROM upd), " +
			"res AS (" + resSQL + fmt.Sprintf("SELECT CAST($%d AS TEXT), CAST($%d AS TEXT), CAST($%d AS BIGINT), CAST($%d AS BIGINT), 'held' FROM ok WHERE ok.ok), ", n+1, n+2, n+3, n+3)
		args = append(args, requestID, l.cfg.ReplicaID, ms)
		q, args = sqlEach(q+"items AS ("+itemSQL+"SELECT v.* FROM ok, (VALUES ", ", ", args, ps, item)
		q += ") AS v (request_id, budget_id, window_start, metric, amount) WHERE ok.ok) SELECT budget_id FROM upd"
	} else {
		q += " RETURNING budget_id"
	}
	rows, err := l.query(ctx, tx, q, args...)
	if err != nil {
		return nil, false, err
	}
	admitted := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, false, err
		}
		admitted[id] = true
	}
	if err := rows.Close(); err != nil {
		return nil, false, err
	}
	for _, p := range ps {
		if !admitted[p.Budget.ID] {
			if !read {
				if got, err = l.readCounters(ctx, tx, ps); err != nil {
					return nil, false, err
				}
			}
			s := got[p.Budget.ID]
			return refusalFor(p, s.spent, s.reserved, now), !s.found, nil
		}
	}
	if combined {
		return nil, false, nil
	}
	if _, err := l.exec(ctx, tx, resSQL+"VALUES ($1, $2, $3, $3, 'held')", requestID, l.cfg.ReplicaID, ms); err != nil {
		return nil, false, err
	}
	q, args = sqlEach(itemSQL+"VALUES ", ", ", nil, ps, item)
	_, err = l.exec(ctx, tx, q, args...)
	return nil, false, err
}

// counterSums is a budget's counters in its window: other is what the
// rows before the current one (a rolling window's older buckets) hold.
// found says the current row exists.
type counterSums struct {
	spent, reserved, other int64
	found                  bool
}

// readCounters reads, and on PostgreSQL locks in key order, every counter
// row in the windows of ps.
func (l *Ledger) readCounters(ctx context.Context, tx *sql.Tx, ps []planned) (map[string]*counterSums, error) {
	q, args := sqlEach("SELECT budget_id, window_start, spent, reserved FROM gov_counters WHERE ", " OR ", nil, ps,
		func(p planned) (string, []any) {
			return "(budget_id = $%d AND window_start >= $%d AND window_start <= $%d)", []any{p.Budget.ID, p.w.lo, p.w.cur}
		})
	q += " ORDER BY budget_id, window_start"
	if l.db.Engine == store.Postgres {
		q += " FOR UPDATE"
	}
	got := map[string]*counterSums{}
	cur := map[string]int64{}
	for _, p := range ps {
		got[p.Budget.ID], cur[p.Budget.ID] = new(counterSums), p.w.cur
	}
	rows, err := l.query(ctx, tx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var ws, spent, reserved int64
		if err := rows.Scan(&id, &ws, &spent, &reserved); err != nil {
			return nil, err
		}
		s := got[id]
		s.spent += spent
		s.reserved += reserved
		if ws != cur[id] {
			s.other += spent + reserved
		} else {
			s.found = true
		}
	}
	return got, rows.Close()
}

// maxKnown bounds the counter rows remembered as existing; past it the
// set starts over (a few inserts that do nothing).
const maxKnown = 4096

type counterKey struct {
	budget string
	start  int64
}

func (l *Ledger) isKnown(p planned) bool {
	l.knownMu.Lock()
	defer l.knownMu.Unlock()
	return l.known[counterKey{p.Budget.ID, p.w.cur}]
}

func (l *Ledger) forget() {
	l.knownMu.Lock()
	l.known = nil
	l.knownMu.Unlock()
}

// remember notes that the current rows of ps exist, once committed.
func (l *Ledger) remember(ps []planned) {
	l.knownMu.Lock()
	defer l.knownMu.Unlock()
	if l.known == nil || len(l.known) >= maxKnown {
		l.known = map[counterKey]bool{}
	}
	for _, p := range ps {
		l.known[counterKey{p.Budget.ID, p.w.cur}] = true
	}
}

// sqlEach appends to head one group per plan, joined by sep: each group's
// format has a %d per argument, numbered on from the args already taken,
// and its arguments are appended to args.
func sqlEach(head, sep string, args []any, ps []planned, group func(planned) (string, []any)) (string, []any) {
	var q strings.Builder
	q.WriteString(head)
	for i, p := range ps {
		if i > 0 {
			q.WriteString(sep)
		}
		format, vals := group(p)
		nums := make([]any, len(vals))
		for j := range vals {
			nums[j] = len(args) + j + 1
		}
		fmt.Fprintf(&q, format, nums...)
		args = append(args, vals...)
	}
	return q.String(), args
}

// refusalFor is the refusal of budget p, which stood at spent and reserved
// in its window.
func refusalFor(p planned, spent, reserved int64, now time.Time) *Refusal {
	b := p.Budget
	r := &Refusal{
		Kind:      RefuseBudget,
		Policy:    b.policyName(),
		Limit:     b.Limit,
		Remaining: max(0, b.Limit-spent-reserved),
		Unit:      b.unit(),
		ResetAt:   p.w.reset,
	}
	if !r.ResetAt.IsZero() {
		r.RetryAfter = max(0, r.ResetAt.Sub(now)).Round(time.Second)
	}
	var when string
	switch {
	case b.Window.Kind == WindowLifetime:
		when = "it does not reset"
	case b.Window.Kind == WindowRolling:
		when = "the oldest spend leaves the window at " + r.ResetAt.Format(time.RFC3339)
	default:
		when = "it resets at " + r.ResetAt.Format(time.RFC3339)
	}
	in := ""
	if reserved > 0 {
		in = fmt.Sprintf(" (%s more held by requests in flight)", b.amountText(reserved))
	}
	need := ""
	if b.Mode == ModeHard {
		need = fmt.Sprintf("; this request needs up to %s", b.amountText(p.Amount))
	}
	r.Message = fmt.Sprintf("tollgate: budget exhausted for %s: %s spent of %s per %s%s%s; %s",
		b.Selector.String(), b.amountText(spent), b.amountText(b.Limit), b.Window.String(), in, need, when)
	return r
}

// Release drops requestID's reservation: the request was refused or failed
// before anything was sent upstream. Releasing twice, or a request that
// reserved nothing, is a no-op. A reservation the sweeper reclaimed in the
// meantime (this replica looked dead) gives its ceiling back off spent.
func (l *Ledger) Release(ctx context.Context, requestID string) error {
	ms := l.cfg.Now().UnixMilli()
	ids := []string{requestID}
	err := l.inTx(ctx, true, func(tx *sql.Tx) error {
		for _, st := range l.transition(l.db.Engine, ids, nil, nil, ms, transRelease) {
			if _, err := l.exec(ctx, tx, st.SQL, st.Args...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("budget ledger: release %s: %w", requestID, err)
	}
	return nil
}

// Headroom is one budget's state in its current window.
type Headroom struct {
	Budget      Budget    `json:"budget"`
	WindowStart time.Time `json:"window_start"`
	// ResetAt is when the window ends; zero for lifetime and rolling.
	ResetAt  time.Time `json:"reset_at,omitzero"`
	Spent    int64     `json:"spent"`
	Reserved int64     `json:"reserved"`
	// Allotted is the part of Reserved that replicas hold ahead as
	// allotments (their requests in flight included); the rest is held by
	// requests that reserved directly.
	Allotted int64 `json:"allotted"`
	Limit    int64 `json:"limit"`
}

// Headroom returns each budget's spent and reserved amounts in its current
// window.
func (l *Ledger) Headroom(ctx context.Context, budgets []Budget) ([]Headroom, error) {
	now := l.cfg.Now()
	out := make([]Headroom, 0, len(budgets))
	ws := make([]window, len(budgets))
	for i, b := range budgets {
		w := windowOf(b, now)
		ws[i] = w
		h := Headroom{Budget: b, WindowStart: w.start, Limit: b.Limit}
		if b.Window.Kind != WindowRolling {
			h.ResetAt = w.reset
		}
		out = append(out, h)
	}
	if len(budgets) == 0 {
		return out, nil
	}
	// One statement for every budget: the gauges and the alerter read all
	// of them every few seconds, and a query each cost a round trip each.
	q, args := headroomQuery(l.db.Engine, budgets, ws)
	rows, err := l.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("budget ledger: headroom: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var i int
		var spent, reserved, allotted int64
		if err := rows.Scan(&i, &spent, &reserved, &allotted); err != nil {
			return nil, fmt.Errorf("budget ledger: headroom: %w", err)
		}
		if i < 0 || i >= len(out) {
			return nil, fmt.Errorf("budget ledger: headroom: row for budget %d of %d", i, len(out))
		}
		out[i].Spent, out[i].Reserved, out[i].Allotted = spent, reserved, allotted
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("budget ledger: headroom: %w", err)
	}
	return out, nil
}

// headroomQuery sums each budget's counters in its window [lo, cur], and
// the amounts its held allotments claim there: one answer row per budget,
// keyed by its index in budgets. The
// windows come as arrays (unnest) on PostgreSQL and as a JSON array
// (json_each) on SQLite, like transition's, so the text is the same for
// any number of budgets and no parameter limit is reached. Rows are keyed
// by index, not budget id, so a budget listed twice is answered twice.
func headroomQuery(engine string, budgets []Budget, ws []window) (string, []any) {
	const sum = `, counted AS (SELECT q.i, SUM(c.spent) AS spent, SUM(c.reserved) AS reserved FROM q
	JOIN gov_counters c ON c.budget_id = q.budget_id AND c.window_start >= q.lo AND c.window_start <= q.cur
	GROUP BY q.i),
allotted AS (SELECT q.i, SUM(it.amount) AS amount FROM q
	JOIN gov_reservation_items it ON it.budget_id = q.budget_id AND it.window_start >= q.lo AND it.window_start <= q.cur
	JOIN gov_reservations r ON r.request_id = it.request_id
	WHERE r.state = 'held' AND it.request_id LIKE 'allot:%'
	GROUP BY q.i)
SELECT q.i, COALESCE(counted.spent, 0), COALESCE(counted.reserved, 0), COALESCE(allotted.amount, 0) FROM q
	LEFT JOIN counted ON counted.i = q.i LEFT JOIN allotted ON allotted.i = q.i`
	if engine == store.Postgres {
		ids, los, curs := make([]string, len(budgets)), make([]int64, len(budgets)), make([]int64, len(budgets))
		for i, b := range budgets {
			ids[i], los[i], curs[i] = b.ID, ws[i].lo, ws[i].cur
		}
		return `WITH q AS (SELECT t.ord - 1 AS i, t.budget_id, t.lo, t.cur
	FROM unnest($1::text[], $2::int8[], $3::int8[]) WITH ORDINALITY AS t(budget_id, lo, cur, ord))` + sum, []any{ids, los, curs}
	}
	var b strings.Builder
	b.WriteByte('[')
	for i, bud := range budgets {
		if i > 0 {
			b.WriteByte(',')
		}
		id, _ := json.Marshal(bud.ID) // a string always encodes
		fmt.Fprintf(&b, "[%s,%d,%d]", id, ws[i].lo, ws[i].cur)
	}
	b.WriteByte(']')
	return `WITH q AS (SELECT CAST(key AS INTEGER) AS i, json_extract(value, '$[0]') AS budget_id,
	json_extract(value, '$[1]') AS lo, json_extract(value, '$[2]') AS cur FROM json_each($1))` + sum, []any{b.String()}
}

// Start runs the heartbeat and the sweeper that reclaims the held
// reservations of replicas silent for longer than the lease, until ctx
// ends. The first heartbeat runs before it returns, and its error is
// returned; later failures are logged and retried.
func (l *Ledger) Start(ctx context.Context) error {
	first := l.tick(ctx)
	l.start.Do(func() {
		go func() {
			t := time.NewTicker(l.cfg.Heartbeat)
			defer t.Stop()
			tidy := time.NewTicker(time.Second)
			defer tidy.Stop()
			if !l.cfg.Allotments {
				tidy.Stop()
			}
			for {
				select {
				case <-ctx.Done():
					return
				case <-tidy.C:
					l.tidyAllotments(ctx, false)
				case <-t.C:
					if err := l.tick(ctx); err != nil && ctx.Err() == nil {
						l.cfg.Log.Warn("budget ledger heartbeat", "replica", l.cfg.ReplicaID, "err", err)
					}
				}
			}
		}()
	})
	return first
}

// tick heartbeats, counts the live replicas, sweeps and, when due, prunes.
func (l *Ledger) tick(ctx context.Context) error {
	if err := l.Heartbeat(ctx); err != nil {
		return err
	}
	n, err := l.Sweep(ctx)
	if n > 0 {
		l.cfg.Log.Warn("budget ledger reclaimed the reservations of silent replicas at their ceiling", "reservations", n)
	}
	if err == nil {
		held, late, rerr := l.settleReplayed(ctx)
		if held+late > 0 {
			l.cfg.Log.Info("budget ledger settled the allotments of the earlier processes on this spool at their records",
				"released", held, "corrected", late)
		}
		err = rerr
	}
	if now := l.cfg.Now(); now.UnixMilli() >= l.nextPrune.Load() {
		n, perr := l.Prune(ctx)
		if n > 0 {
			l.cfg.Log.Info("budget ledger pruned finished reservations", "reservations", n)
		}
		switch {
		case perr != nil:
			if ctx.Err() == nil {
				l.cfg.Log.Warn("budget ledger prune", "err", perr)
			}
			l.nextPrune.Store(now.Add(pruneEvery).UnixMilli())
		case n < prunePass*pruneBatch:
			l.nextPrune.Store(now.Add(pruneEvery).UnixMilli())
		}
		// A full pass leaves the prune due: the next heartbeat goes on.
	}
	return err
}

// Prune deletes, in batches of pruneBatch and at most prunePass of them,
// the rows of reservations no record can move any more (pruneFinalAfter),
// or none is likely to (pruneLateAfter), and replicas silent for
// pruneLateAfter. Held reservations are never deleted. Deleting is
// idempotent, so replicas prune at once without a lock. It returns the
// reservations deleted.
func (l *Ledger) Prune(ctx context.Context) (int, error) {
	now := l.cfg.Now()
	final, late := now.Add(-pruneFinalAfter).UnixMilli(), now.Add(-pruneLateAfter).UnixMilli()
	total := 0
	for range prunePass {
		var n int
		err := l.inTx(ctx, false, func(tx *sql.Tx) error {
			var err error
			n, err = l.pruneTx(ctx, tx, final, late)
			return err
		})
		if err != nil {
			return total, fmt.Errorf("budget ledger: prune: %w", err)
		}
		total += n
		if n < pruneBatch {
			break
		}
	}
	// A replica row is one per process start; the sweeper reads a missing
	// one as silent, which one silent this long is anyway.
	if _, err := l.db.ExecContext(ctx, `DELETE FROM gov_replicas WHERE replica_id IN
		(SELECT replica_id FROM gov_replicas WHERE last_seen < $1 LIMIT `+strconv.Itoa(pruneBatch)+`)`, late); err != nil {
		return total, fmt.Errorf("budget ledger: prune replicas: %w", err)
	}
	return total, nil
}

// pruneTx deletes one batch: the items first, then the reservations, the
// order settlement writes them in, so a settle and a prune of one row
// queue rather than deadlock. A row picked here cannot become held again.
func (l *Ledger) pruneTx(ctx context.Context, tx *sql.Tx, final, late int64) (int, error) {
	rows, err := l.query(ctx, tx, `SELECT request_id FROM gov_reservations
		WHERE state <> 'held' AND updated_at < $1 AND (updated_at < $2 OR NOT (
			state = 'reclaimed' OR (state IN ('released', 'settled_late') AND request_id LIKE 'allot:%')))
		ORDER BY updated_at LIMIT `+strconv.Itoa(pruneBatch), final, late)
	if err != nil {
		return 0, err
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, err
		}
		ids = append(ids, id)
	}
	if err := rows.Close(); err != nil {
		return 0, err
	}
	if len(ids) == 0 {
		return 0, nil
	}
	in, arg := idList(l.db.Engine, ids)
	if _, err := l.exec(ctx, tx, `DELETE FROM gov_reservation_items WHERE request_id IN `+in, arg); err != nil {
		return 0, err
	}
	res, err := l.exec(ctx, tx, `DELETE FROM gov_reservations WHERE state <> 'held' AND request_id IN `+in, arg)
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	return int(n), err
}

// Heartbeat records that this replica is alive and refreshes Replicas.
func (l *Ledger) Heartbeat(ctx context.Context) error {
	now := l.cfg.Now()
	ms := now.UnixMilli()
	if _, err := l.db.ExecContext(ctx, `INSERT INTO gov_replicas (replica_id, started_at, last_seen) VALUES ($1, $2, $3)
		ON CONFLICT (replica_id) DO UPDATE SET last_seen = excluded.last_seen`, l.cfg.ReplicaID, l.started.UnixMilli(), ms); err != nil {
		return fmt.Errorf("budget ledger: heartbeat: %w", err)
	}
	var n int64
	if err := l.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM gov_replicas WHERE last_seen >= $1`,
		now.Add(-l.cfg.Lease).UnixMilli()).Scan(&n); err != nil {
		return fmt.Errorf("budget ledger: count replicas: %w", err)
	}
	l.replicas.Store(max(1, n))
	if !l.beatFresh(now) {
		// Silent long enough that a peer may have reclaimed them: no
		// allotment of before may take a hold again.
		l.retireAllotments()
	}
	l.lastBeat.Store(ms)
	return nil
}

// Sweep reclaims, at their full amount, the held reservations older than
// the lease whose replica has been silent for longer than the lease (or
// never heartbeat): a crashed replica's requests were probably billed, and
// no record of them may ever come. A late record corrects the charge
// (settled_late); an allotment's late records do once the replica's
// successor on its spool has replayed them all (settleReplayed). It
// returns how many it reclaimed.
func (l *Ledger) Sweep(ctx context.Context) (int, error) {
	now := l.cfg.Now()
	cutoff := now.Add(-l.cfg.Lease).UnixMilli()
	var n int
	err := l.inTx(ctx, false, func(tx *sql.Tx) error {
		n = 0
		if l.db.Engine == store.Postgres {
			var ok bool
			if err := tx.QueryRowContext(ctx, `SELECT pg_try_advisory_xact_lock($1)`, sweepLockKey).Scan(&ok); err != nil {
				return err
			}
			if !ok {
				return errRollback // another replica is sweeping
			}
		}
		rows, err := tx.QueryContext(ctx, `SELECT r.request_id FROM gov_reservations r
			LEFT JOIN gov_replicas p ON p.replica_id = r.replica_id
			WHERE r.state = 'held' AND r.created_at < $1 AND (p.replica_id IS NULL OR p.last_seen < $1)
			ORDER BY r.created_at LIMIT `+strconv.Itoa(sweepBatch), cutoff)
		if err != nil {
			return err
		}
		var ids []string
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			ids = append(ids, id)
		}
		if err := rows.Close(); err != nil {
			return err
		}
		if len(ids) == 0 {
			return nil
		}
		// A reservation settled since the SELECT is left alone: the
		// transition's last statement, the state change, counts the others.
		for _, st := range l.transition(l.db.Engine, ids, nil, nil, now.UnixMilli(), transReclaim) {
			res, err := tx.ExecContext(ctx, st.SQL, st.Args...)
			if err != nil {
				return err
			}
			if c, err := res.RowsAffected(); err == nil {
				n = int(c)
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("budget ledger: sweep: %w", err)
	}
	return n, nil
}

// SettleStatements implements ledger.Settler: the statements that settle the
// reservations of recs (those with Reserved set) inside the transaction that
// stores them, so a record and its settlement commit together, once.
func (l *Ledger) SettleStatements(engine string, recs []*metering.Record) []ledger.Statement {
	recs = l.settleViews(recs)
	var ids []string
	var costs, tokens []*int64
	seen := map[string]bool{}
	for _, r := range recs {
		if !r.Reserved || r.RequestID == "" || seen[r.RequestID] {
			continue
		}
		seen[r.RequestID] = true
		c, t := Actuals(r)
		ids, costs, tokens = append(ids, r.RequestID), append(costs, c), append(tokens, t)
	}
	l.notePredecessors(recs)
	var allots []string
	var asts []ledger.Statement
	if engine == store.Postgres {
		// SQLite settles allotments from the fresh records (SettleFresh).
		allots, asts = l.allotSettleStatements(engine, recs, false)
	}
	var sts []ledger.Statement
	if len(ids) > 0 {
		sts = l.transition(engine, ids, costs, tokens, l.cfg.Now().UnixMilli(), transSettle)
	}
	if len(asts) == 0 {
		return sts
	}
	if engine == store.Postgres {
		// One lock of every counter either part touches, in key order:
		// two locks, each ordered, could deadlock with another replica's
		// batch.
		if len(sts) > 0 {
			sts = sts[1:]
		}
		lock := lockCounters(append(slices.Clip(ids), allots...))
		lock.BeforeInsert = true // the allotments settle before the insert
		sts = append([]ledger.Statement{lock}, sts...)
	}
	return append(sts, asts...)
}

// lockCounters locks, in key order, the counter rows of the reservations
// (or allotments) ids: the first statement of every PostgreSQL transaction
// that moves their amounts.
func lockCounters(ids []string) ledger.Statement {
	return ledger.Statement{SQL: `SELECT 1 FROM gov_counters WHERE (budget_id, window_start) IN
	(SELECT budget_id, window_start FROM gov_reservation_items WHERE request_id = ANY($1::text[]))
ORDER BY budget_id, window_start FOR UPDATE`, Args: []any{ids}}
}

// SettleFresh implements ledger.FreshSettler: on SQLite, the allotment
// holds of the records this batch stored for the first time, summed per
// allotment.
func (l *Ledger) SettleFresh(engine string, fresh []*metering.Record) []ledger.Statement {
	if engine == store.Postgres {
		return nil // settled before the insert, by SettleStatements
	}
	_, sts := l.allotSettleStatements(engine, l.settleViews(fresh), true)
	return sts
}

// settleViews is recs as settlement reads them (settleView), recs itself
// when none reads otherwise.
func (l *Ledger) settleViews(recs []*metering.Record) []*metering.Record {
	var out []*metering.Record
	for i, r := range recs {
		v := l.settleView(r)
		if v != r && out == nil {
			out = slices.Clone(recs)
		}
		if out != nil {
			out[i] = v
		}
	}
	if out == nil {
		return recs
	}
	return out
}

// settleView is r as settlement reads it. A record with usage of a model
// the price table does not know gets the cost its tokens come to at the
// table's fallback rates: under a cost budget, only `unpriced: fallback`
// admits such a model (refuse refuses it, alert reserves nothing), and it
// reserved at those rates, so that is what it settles at rather than its
// whole ceiling. The record stored is r, still unpriced: nobody's price is
// invented on it. A priced model whose record is unpriced (a tier or tool
// without a price) still settles at what it reserved, as does one without
// usage.
func (l *Ledger) settleView(r *metering.Record) *metering.Record {
	if r.CostMicroUSD != nil || r.Usage == nil || l.cfg.Prices == nil || (!r.Reserved && len(r.Allotted) == 0) {
		return r
	}
	pt := l.cfg.Prices()
	if _, known := pt.Lookup(r.Provider, r.Model()); known {
		return r
	}
	c := pt.FallbackCost(r.Provider, r.ServiceTier, *r.Usage)
	if c == nil {
		return r
	}
	v := *r
	v.CostMicroUSD = c
	return &v
}

var _ ledger.FreshSettler = (*Ledger)(nil)

// Actuals is what a record settles at, per the settlement rule: cost at
// its price; tokens at every input bucket plus output; 0 when nothing can
// have been billed (no usage, and tollgate refused the request, the
// provider was unreachable, or it answered with an error status); nil,
// meaning the amount reserved, when usage or price is unknown (truncated,
// client gone, interrupted without usage, unpriced).
//
// An upstream_error with a 2xx status failed mid-stream, after the
// provider may have billed: without usage it is charged the reservation.
// Settlement reads each record through settleView first, which gives an
// unknown model's record its cost at the fallback rates.
func Actuals(r *metering.Record) (cost, tokens *int64) {
	c, t, cok, tok := actuals(r)
	if cok {
		cost = &c
	}
	if tok {
		tokens = &t
	}
	return cost, tokens
}

// actuals is Actuals without allocating, for the request path: ok false
// where Actuals says nil.
func actuals(r *metering.Record) (cost, tokens int64, costOK, tokensOK bool) {
	billedNothing := r.Usage == nil && (r.Outcome == metering.OutcomeRejected ||
		r.Outcome == metering.OutcomeUnreachable ||
		(r.Outcome == metering.OutcomeUpstreamError && (r.Status < 200 || r.Status > 299)))
	switch {
	case r.CostMicroUSD != nil:
		cost, costOK = *r.CostMicroUSD, true
	case billedNothing:
		costOK = true
	}
	switch {
	case r.Usage != nil:
		tokens, tokensOK = r.Usage.InputTotal()+r.Usage.Output, true
	case billedNothing:
		tokensOK = true
	}
	return cost, tokens, costOK, tokensOK
}

// A transition moves reservations out of their state and their amounts in
// the counters: settle (held → settled, reclaimed → settled_late), release
// (held → released, reclaimed → settled_late at 0) or reclaim (held →
// reclaimed).
type transKind int

const (
	transSettle transKind = iota
	transRelease
	transReclaim
	// transAllotRelease ends an allotment (held → released): what is left
	// of it leaves reserved, and records still to come charge spent.
	transAllotRelease
	// transAllotLate corrects a reclaimed allotment to what its records
	// settled at (reclaimed → settled_late): the sweeper charged spent its
	// whole remaining amount, and its late records added their actuals
	// to late_actual instead of spent.
	transAllotLate
)

// actualExpr is what an item is charged at settlement: the record's
// actual in the item's metric, or its amount when that is unknown (NULL).
const actualExpr = "CASE WHEN i.metric = 'cost' THEN COALESCE(t.cost, i.amount) ELSE COALESCE(t.tokens, i.amount) END"

// transition returns the statements of kind k for the reservations ids
// (costs and tokens: their actuals, for settle), run in one transaction:
// on PostgreSQL, first the lock of every counter they touch in key order;
// then the counters move, reading the states the reservations are in;
// then the items record what was charged (settle); then the states change.
// Each step is conditional on the state left, so statements run twice
// change nothing the second time. The ids come as arrays (unnest) on
// PostgreSQL and as a JSON array (json_each) on SQLite, so the text is the
// same for any number of records.
func (l *Ledger) transition(engine string, ids []string, costs, tokens []*int64, nowMS int64, k transKind) []ledger.Statement {
	if costs == nil {
		costs, tokens = make([]*int64, len(ids)), make([]*int64, len(ids))
	}
	var src string
	var srcArgs []any
	if engine == store.Postgres {
		src = "t AS (SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[]) AS t(request_id, cost, tokens))"
		srcArgs = []any{ids, costs, tokens}
	} else {
		src = "t AS (SELECT json_extract(value, '$[0]') AS request_id, json_extract(value, '$[1]') AS cost, json_extract(value, '$[2]') AS tokens FROM json_each($1))"
		srcArgs = []any{jsonRows(ids, costs, tokens)}
	}
	nowP := "$" + strconv.Itoa(len(srcArgs)+1)
	withNow := append(slices.Clip(srcArgs), nowMS)

	var from, dspent, dres, to string
	switch k {
	case transSettle:
		from = "'held', 'reclaimed'"
		dspent = "CASE WHEN r.state = 'held' THEN " + actualExpr + " ELSE " + actualExpr + " - i.amount END"
		dres = "CASE WHEN r.state = 'held' THEN i.amount ELSE 0 END"
		to = "CASE WHEN state = 'held' THEN 'settled' ELSE 'settled_late' END"
	case transRelease:
		// A reservation reclaimed from a replica thought dead, then
		// released by it, was never forwarded: the ceiling comes back off.
		from = "'held', 'reclaimed'"
		dspent = "CASE WHEN r.state = 'held' THEN 0 ELSE -i.amount END"
		dres = "CASE WHEN r.state = 'held' THEN i.amount ELSE 0 END"
		to = "CASE WHEN state = 'held' THEN 'released' ELSE 'settled_late' END"
	case transReclaim:
		from, dspent, dres, to = "'held'", "i.amount", "i.amount", "'reclaimed'"
	case transAllotRelease:
		from, dspent, dres, to = "'held'", "0", "CASE WHEN i.amount > 0 THEN i.amount ELSE 0 END", "'released'"
	case transAllotLate:
		from, dspent, dres, to = "'reclaimed'", "i.late_actual - i.amount", "0", "'settled_late'"
	}
	var sts []ledger.Statement
	if engine == store.Postgres {
		sts = append(sts, lockCounters(ids))
	}
	sts = append(sts, ledger.Statement{SQL: "WITH " + src + `,
d AS (SELECT i.budget_id, i.window_start, SUM(` + dspent + `) AS dspent, SUM(` + dres + `) AS dres
	FROM t JOIN gov_reservations r ON r.request_id = t.request_id
	JOIN gov_reservation_items i ON i.request_id = t.request_id
	WHERE r.state IN (` + from + `)
	GROUP BY i.budget_id, i.window_start)
UPDATE gov_counters SET spent = gov_counters.spent + d.dspent, reserved = gov_counters.reserved - d.dres, updated_at = ` + nowP + `
FROM d WHERE gov_counters.budget_id = d.budget_id AND gov_counters.window_start = d.window_start`, Args: withNow})
	if k == transSettle {
		sts = append(sts, ledger.Statement{SQL: "WITH " + src + `
UPDATE gov_reservation_items SET actual = CASE WHEN gov_reservation_items.metric = 'cost' THEN COALESCE(t.cost, gov_reservation_items.amount)
	ELSE COALESCE(t.tokens, gov_reservation_items.amount) END
FROM t WHERE gov_reservation_items.request_id = t.request_id
	AND EXISTS (SELECT 1 FROM gov_reservations r WHERE r.request_id = t.request_id AND r.state IN (` + from + `))`, Args: srcArgs})
	}
	sts = append(sts, ledger.Statement{SQL: "WITH " + src + `
UPDATE gov_reservations SET state = ` + to + `, updated_at = ` + nowP + `
WHERE state IN (` + from + `) AND request_id IN (SELECT request_id FROM t)`, Args: withNow})
	return sts
}

// jsonRows encodes ids and their actuals as [["id",cost,tokens],…], null
// for an unknown actual.
func jsonRows(ids []string, costs, tokens []*int64) string {
	var b strings.Builder
	b.WriteByte('[')
	num := func(p *int64) {
		if p == nil {
			b.WriteString("null")
		} else {
			b.WriteString(strconv.FormatInt(*p, 10))
		}
	}
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('[')
		q, _ := json.Marshal(id) // a string always encodes
		b.Write(q)
		b.WriteByte(',')
		num(costs[i])
		b.WriteByte(',')
		num(tokens[i])
		b.WriteByte(']')
	}
	b.WriteByte(']')
	return b.String()
}
