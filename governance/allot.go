package governance

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/ledger"
)

// Replica allotments (governance.md §4.3, mitigation 2). A reservation per
// request is a database write transaction on the request path: on the
// embedded SQLite it queued behind the usage writer and cost a third of
// the throughput. Instead, a replica reserves a slice of a budget's
// headroom in the ledger as one reservation of its own (an allotment), and
// admits requests from it in memory. The invariant is the ledger's: every
// amount admitted is covered by an amount reserved in the database under
// the budget's predicate, so hard mode still never spends past the limit
// and soft mode's bound is unchanged (an allotment is granted under the
// hard predicate; only requests admitted directly can overshoot).
//
// The life of an allotment:
//   - granted and topped up in the background, under the same lock order
//     and predicate as a reservation, by at most half of the headroom left
//     divided among the live replicas, and only while that is several
//     requests' worth: near the limit every request reserves directly, so
//     the last dollar is shared exactly;
//   - a request takes holds from the allotments of all its budgets or from
//     none (then it reserves directly); finishing frees its hold and moves
//     its actual out of the allotment locally at once, while the usage
//     batch that stores its record moves the same actual from the
//     allotment to spent in the database, once per allotment and batch,
//     and only for records stored for the first time (SQLite knows them
//     after its insert; PostgreSQL settles before the insert, skipping
//     records already stored), so a replay settles nothing again;
//   - idle, outdated (a new window, an edited budget) or on shutdown, the
//     unused part goes back, and once nothing is held the allotment is
//     released: records still on their way then charge spent directly;
//   - a replica killed with an allotment has it reclaimed by the sweeper
//     like any reservation, at its whole remaining amount: the budget then
//     counts the allotment's unused part and its in-flight ceilings as
//     spent for that window (never less than was spent), until the replica
//     restarts on its spool and replays its records: then spent is
//     corrected to their actuals (replay.go). Allotments are sized to
//     about two seconds of the replica's demand, which bounds it.
//
// The cost is refusals while headroom sits unused in other replicas'
// allotments: at most one allotment each, which is why they shrink near
// the limit.

// Allotment sizing.
const (
	// allotSpan is how much of a replica's recent demand an allotment is
	// sized to hold.
	allotSpan = 2 * time.Second
	// allotMinRequests is the fewest largest-recent-charges an allotment
	// must hold to be worth granting; below it requests reserve directly.
	allotMinRequests = 4
	// allotIdle is how long an allotment may go unused before its unused
	// part goes back to the budget.
	allotIdle = 2 * time.Second
	// allotBackoff is how long a budget is reserved directly after a grant
	// was refused or failed.
	allotBackoff = time.Second
	// maxAllotments bounds the allotments one replica holds.
	maxAllotments = 1024
)

// allotKey is an allotment's budget and window (a rolling window's bucket).
type allotKey struct {
	budget string
	window int64
}

// allotment is one budget window's allotment in this replica. amount is
// the ledger's amount as this replica sees it (granted, minus the actuals
// of requests that finished); held is what requests in flight hold of it.
type allotment struct {
	id  string
	key allotKey
	// budget is the policy as granted: an edited budget stops using it.
	budget Budget
	w      window
	amount int64
	held   int64
	// maxCharge is the largest charge met since the last grant; demand
	// what was charged since demandFrom: the next grant's size.
	maxCharge  int64
	demand     int64
	demandFrom time.Time
	lastUse    time.Time
	// busy says a grant or return is in flight (single flight); noGrant
	// until when grants are not tried; dead that it takes no more holds.
	busy    bool
	noGrant time.Time
	dead    bool
}

// free is what can still be held.
func (a *allotment) free() int64 { return a.amount - a.held }

// sameBudget reports whether b is the policy a was granted under.
func (a *allotment) sameBudget(b Budget) bool {
	return a.budget.Limit == b.Limit && a.budget.Mode == b.Mode && a.budget.Window == b.Window &&
		a.budget.Metric == b.Metric && a.budget.UpdatedAt.Equal(b.UpdatedAt)
}

// allotter is a Ledger's allotments.
type allotter struct {
	mu    sync.Mutex
	byKey map[allotKey]*allotment
	byID  map[string]*allotment
	// windows are the budgets' current windows, for Allotted.
	windows windowCache
	gen     uint64
	// wg counts grants in flight, for ReleaseAllotments.
	wg sync.WaitGroup
}

// Allotted takes holds for charges from this replica's allotments, all or
// nothing: ok is false when any budget has no allotment with room (the
// request then reserves directly, and a grant is started for next time).
// The holds go in the request's record (metering.Record.Allotted).
func (l *Ledger) Allotted(charges []Charge) (holds []metering.Hold, ok bool) {
	if !l.cfg.Allotments || len(charges) == 0 {
		return nil, false
	}
	now := l.cfg.Now()
	fresh := l.beatFresh(now)
	al := &l.allot
	al.mu.Lock()
	defer al.mu.Unlock()
	// On the stack for the usual few budgets: a planned is a Budget and a
	// window, about 320 bytes.
	var psBuf [4]planned
	var asBuf [4]*allotment
	ps := appendPlanned(psBuf[:0], charges, now, &al.windows)
	ok = fresh
	as := asBuf[:0]
	if len(ps) > len(asBuf) {
		as = make([]*allotment, 0, len(ps))
	}
	as = as[:len(ps)]
	for i, p := range ps {
		a := al.byKey[allotKey{p.Budget.ID, p.w.cur}]
		if a != nil && !a.dead && !a.sameBudget(p.Budget) {
			// The budget was edited: its allotment, granted under the old
			// limit, retires (the tidy gives back what it holds).
			a.dead = true
		}
		if a == nil || (a.dead && fresh) {
			// A retired allotment stays known by id until its holds end;
			// a new one takes its place for new requests.
			if !fresh || len(al.byID) >= maxAllotments || len(al.byKey) >= maxAllotments {
				ok = false
				continue
			}
			a = &allotment{key: allotKey{p.Budget.ID, p.w.cur}, budget: p.Budget, w: p.w, demandFrom: now}
			al.byKey[a.key] = a
		}
		as[i] = a
		a.maxCharge = max(a.maxCharge, p.Amount)
		a.demand += p.Amount
		a.lastUse = now
		if a.dead || a.free() < p.Amount {
			ok = false
		}
	}
	if ok {
		holds = make([]metering.Hold, len(ps))
		for i, p := range ps {
			as[i].held += p.Amount
			holds[i] = metering.Hold{Allotment: as[i].id, Amount: p.Amount}
		}
	}
	for _, a := range as {
		if a != nil && fresh {
			l.maybeGrant(a, now)
		}
	}
	return holds, ok
}

// windowCache remembers each budget's current window: windowOf is calendar
// arithmetic (about 150 ns for a month) that Allotted would otherwise do
// for every budget of every request. Not safe for concurrent use; the
// zero value is empty, and a nil *windowCache computes every window.
type windowCache struct {
	m map[string]cachedWindow
}

// cachedWindow is windowOf(b, t) for the budget's window as it was then,
// the same for every t from w.cur (its start, or its rolling bucket's) up
// to w.reset (none for a lifetime window).
type cachedWindow struct {
	kind Window
	w    window
}

// at is windowOf(b, now).
func (wc *windowCache) at(b Budget, now time.Time) window {
	if wc == nil {
		return windowOf(b, now)
	}
	if c, ok := wc.m[b.ID]; ok && c.kind == b.Window && c.w.cur <= now.Unix() && (c.w.reset.IsZero() || now.Before(c.w.reset)) {
		return c.w
	}
	w := windowOf(b, now)
	if wc.m == nil || len(wc.m) >= maxAllotments {
		wc.m = map[string]cachedWindow{}
	}
	wc.m[b.ID] = cachedWindow{kind: b.Window, w: w}
	return w
}

// maybeGrant starts a grant when a has less than half its next size free.
// Called with al.mu held.
func (l *Ledger) maybeGrant(a *allotment, now time.Time) {
	if a.busy || a.dead || now.Before(a.noGrant) {
		return
	}
	want := l.allotSize(a, now)
	if a.free() >= want/2 {
		return
	}
	a.busy = true
	l.allot.wg.Add(1)
	go func() {
		defer l.allot.wg.Done()
		l.grant(a, want-a.freeLocked(&l.allot.mu))
	}()
}

// freeLocked reads free under mu.
func (a *allotment) freeLocked(mu *sync.Mutex) int64 {
	mu.Lock()
	defer mu.Unlock()
	return a.free()
}

// allotSize is the size an allotment aims at: allotSpan of the demand it
// has seen, and at least allotMinRequests of its largest charge.
func (l *Ledger) allotSize(a *allotment, now time.Time) int64 {
	el := now.Sub(a.demandFrom)
	rate := float64(a.demand) / max(el, 100*time.Millisecond).Seconds()
	return max(int64(rate*allotSpan.Seconds()), allotMinRequests*a.maxCharge)
}

// grant tops a up by up to want in the ledger.
func (l *Ledger) grant(a *allotment, want int64) {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	al := &l.allot
	al.mu.Lock()
	id, b, w, minGrant := a.id, a.budget, a.w, allotMinRequests*a.maxCharge/2
	if id == "" {
		al.gen++
		id = fmt.Sprintf("allot:%s:%s:%d:%d", l.cfg.ReplicaID, a.key.budget, a.key.window, al.gen)
	}
	al.mu.Unlock()

	var got int64
	var gone bool
	err := error(nil)
	if want > 0 {
		err = l.inTx(ctx, true, func(tx *sql.Tx) error {
			var err error
			got, gone, err = l.grantTx(ctx, tx, id, b, w, want, minGrant)
			if err == nil && got == 0 {
				return errRollback
			}
			return err
		})
	}
	now := l.cfg.Now()
	al.mu.Lock()
	defer al.mu.Unlock()
	a.busy = false
	switch {
	case err != nil:
		l.cfg.Log.Warn("budget allotment grant failed; requests reserve directly", "budget", b.ID, "err", err)
		a.noGrant = now.Add(allotBackoff)
	case gone:
		// The sweeper reclaimed it (this replica looked dead): nothing
		// more may be held in it.
		a.dead = true
		l.dropLocked(a)
	case got == 0:
		a.noGrant = now.Add(allotBackoff)
	default:
		if a.id == "" {
			a.id = id
			al.byID[id] = a
		}
		a.amount += got
		a.demand, a.demandFrom, a.maxCharge = 0, now, 0
	}
}

// dropLocked forgets a (al.mu held); its ledger rows stay as they are.
func (l *Ledger) dropLocked(a *allotment) {
	al := &l.allot
	if al.byKey[a.key] == a {
		delete(al.byKey, a.key)
	}
	if a.id != "" && al.byID[a.id] == a {
		delete(al.byID, a.id)
	}
}

// grantTx adds up to want to allotment id in tx, capped at half the
// headroom left divided among the live replicas; it grants nothing when
// that is under minGrant. gone reports an allotment the sweeper reclaimed.
func (l *Ledger) grantTx(ctx context.Context, tx *sql.Tx, id string, b Budget, w window, want, minGrant int64) (got int64, gone bool, err error) {
	ms := l.cfg.Now().UnixMilli()
	p := planned{Charge: Charge{Budget: b}, w: w}
	ps := []planned{p}
	if _, err := l.exec(ctx, tx, `INSERT INTO gov_counters (budget_id, window_start, spent, reserved, updated_at) VALUES ($1, $2, 0, 0, $3)
		ON CONFLICT (budget_id, window_start) DO NOTHING`, b.ID, w.cur, ms); err != nil {
		return 0, false, err
	}
	sums, err := l.readCounters(ctx, tx, ps)
	if err != nil {
		return 0, false, err
	}
	var state string
	switch err := tx.QueryRowContext(ctx, `SELECT state FROM gov_reservations WHERE request_id = $1`, id).Scan(&state); {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return 0, false, err
	case state != stateHeld:
		return 0, true, nil
	}
	got = want
	if b.Mode != ModeAlert {
		s := sums[b.ID]
		headroom := b.Limit - s.spent - s.reserved
		got = min(want, headroom/int64(2*l.Replicas()))
		if got < max(minGrant, 1) {
			return 0, false, nil
		}
	}
	// The predicate again, though the rows are locked (PostgreSQL) or the
	// database is (SQLite): the grant must never be what breaks the limit.
	res, err := l.exec(ctx, tx, `UPDATE gov_counters SET reserved = reserved + $1, updated_at = $2
		WHERE budget_id = $3 AND window_start = $4 AND ($5 OR spent + reserved + $1 + $6 <= $7)`,
		got, ms, b.ID, w.cur, b.Mode == ModeAlert, sums[b.ID].other, b.Limit)
	if err != nil {
		return 0, false, err
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return 0, false, err
	}
	if state == "" {
		if _, err := l.exec(ctx, tx, `INSERT INTO gov_reservations (request_id, replica_id, created_at, updated_at, state) VALUES ($1, $2, $3, $3, 'held')`,
			id, l.cfg.ReplicaID, ms); err != nil {
			return 0, false, err
		}
		_, err = l.exec(ctx, tx, `INSERT INTO gov_reservation_items (request_id, budget_id, window_start, metric, amount) VALUES ($1, $2, $3, $4, $5)`,
			id, b.ID, w.cur, string(b.Metric), got)
	} else {
		_, err = l.exec(ctx, tx, `UPDATE gov_reservation_items SET amount = amount + $1 WHERE request_id = $2`, got, id)
	}
	return got, false, err
}

// Unhold gives holds back: their request was not forwarded.
func (l *Ledger) Unhold(holds []metering.Hold) {
	l.finishHolds(holds, nil)
}

// FinishHolds ends a forwarded request's holds once its record is final:
// its hold frees, and its actual (the settlement rule's, or the hold when
// unknown) leaves the allotment, as the record's settlement will in the
// ledger.
func (l *Ledger) FinishHolds(holds []metering.Hold, rec *metering.Record) {
	l.finishHolds(holds, rec)
}

func (l *Ledger) finishHolds(holds []metering.Hold, rec *metering.Record) {
	if len(holds) == 0 {
		return
	}
	var cost, tokens int64
	var costOK, tokensOK bool
	if rec != nil {
		// settleView: an unpriced model under unpriced: fallback moves
		// what the database will settle (its fallback price), not the
		// whole hold, out of this replica's view of the allotment.
		cost, tokens, costOK, tokensOK = actuals(l.settleView(rec))
	}
	al := &l.allot
	al.mu.Lock()
	defer al.mu.Unlock()
	for _, h := range holds {
		a := al.byID[h.Allotment]
		if a == nil {
			continue
		}
		a.held -= h.Amount
		if rec == nil {
			continue
		}
		x := h.Amount
		if a.budget.Metric == MetricCost && costOK {
			x = cost
		} else if a.budget.Metric == MetricTokens && tokensOK {
			x = tokens
		}
		a.amount -= x
	}
}

// tidyAllotments returns the unused part of idle, outdated or retired
// allotments (every one when every is set), and releases those nothing
// holds. It runs every second while the ledger is started.
func (l *Ledger) tidyAllotments(ctx context.Context, every bool) {
	now := l.cfg.Now()
	al := &l.allot
	al.mu.Lock()
	var todo []*allotment
	all := slices.Collect(maps.Values(al.byID))
	for _, a := range al.byKey {
		if a.id == "" {
			all = append(all, a)
		}
	}
	for _, a := range all {
		if a.busy {
			continue
		}
		cur := windowOf(a.budget, now).cur
		stale := every || a.dead || cur != a.w.cur || now.Sub(a.lastUse) >= allotIdle
		if stale && a.id == "" {
			// Never granted (a grant refused near the limit): only its
			// backoff and demand were kept.
			l.dropLocked(a)
			continue
		}
		if stale {
			a.dead = true
			a.busy = true
			todo = append(todo, a)
		}
	}
	al.mu.Unlock()
	for _, a := range todo {
		l.giveBack(ctx, a)
	}
}

// giveBack returns a's unused part to its budget and, when nothing holds
// it any more, releases it. a is dead and busy.
func (l *Ledger) giveBack(ctx context.Context, a *allotment) {
	al := &l.allot
	al.mu.Lock()
	free, held := a.free(), a.held
	if free > 0 {
		a.amount -= free
	}
	al.mu.Unlock()
	ms := l.cfg.Now().UnixMilli()
	err := l.inTx(ctx, true, func(tx *sql.Tx) error {
		if held == 0 {
			// Everything left in the ledger (the unused part, and the
			// actuals of records still on their way) leaves reserved;
			// those records then charge spent directly.
			for _, st := range l.transition(l.db.Engine, []string{a.id}, nil, nil, ms, transAllotRelease) {
				if _, err := l.exec(ctx, tx, st.SQL, st.Args...); err != nil {
					return err
				}
			}
			return nil
		}
		if free <= 0 {
			return nil
		}
		if l.db.Engine == store.Postgres {
			if _, err := tx.ExecContext(ctx, `SELECT 1 FROM gov_counters WHERE budget_id = $1 AND window_start = $2 FOR UPDATE`, a.key.budget, a.key.window); err != nil {
				return err
			}
		}
		res, err := l.exec(ctx, tx, `UPDATE gov_reservation_items SET amount = amount - $1
			WHERE request_id = $2 AND EXISTS (SELECT 1 FROM gov_reservations r WHERE r.request_id = $2 AND r.state = 'held')`, free, a.id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil // reclaimed meanwhile: the sweeper charged it
		}
		_, err = l.exec(ctx, tx, `UPDATE gov_counters SET reserved = reserved - $1, updated_at = $2 WHERE budget_id = $3 AND window_start = $4`,
			free, ms, a.key.budget, a.key.window)
		return err
	})
	al.mu.Lock()
	defer al.mu.Unlock()
	a.busy = false
	if err != nil {
		// The amount stays reserved in the ledger: safe, and the next tidy
		// or the sweeper (after a crash) deals with it.
		a.amount += free
		l.cfg.Log.Warn("budget allotment return failed", "budget", a.key.budget, "err", err)
		return
	}
	if held == 0 {
		l.dropLocked(a)
	}
}

// ReturnUnused gives back, at once, the unused part of this replica's
// allotments of the budgets a direct reservation was just refused by, and
// reports whether there was any: the caller then tries once more, so a
// replica never refuses a request for headroom it holds itself. The
// allotments retire; new ones are granted only while headroom allows.
func (l *Ledger) ReturnUnused(ctx context.Context, charges []Charge) bool {
	if !l.cfg.Allotments {
		return false
	}
	now := l.cfg.Now()
	al := &l.allot
	al.mu.Lock()
	var todo []*allotment
	for _, p := range planCharges(charges, now) {
		a := al.byKey[allotKey{p.Budget.ID, p.w.cur}]
		if a == nil || a.id == "" || a.busy || a.free() <= 0 {
			continue
		}
		a.dead, a.busy = true, true
		todo = append(todo, a)
	}
	al.mu.Unlock()
	for _, a := range todo {
		l.giveBack(ctx, a)
	}
	return len(todo) > 0
}

// ReleaseAllotments returns every allotment's unused part and releases the
// allotments nothing holds; call it on shutdown once requests drained. A
// replica that does not (killed) has its allotments reclaimed.
func (l *Ledger) ReleaseAllotments(ctx context.Context) {
	if !l.cfg.Allotments {
		return
	}
	l.allot.wg.Wait()
	l.tidyAllotments(ctx, true)
}

// AllotmentStats is what this replica's allotments hold, for tests and
// metrics: how many, their amount and what requests hold of it.
func (l *Ledger) AllotmentStats() (n int, amount, held int64) {
	al := &l.allot
	al.mu.Lock()
	defer al.mu.Unlock()
	for _, a := range al.byID {
		n++
		amount += a.amount
		held += a.held
	}
	return n, amount, held
}

// retireAllotments stops every allotment taking holds; the tidy gives
// back what is left of them.
func (l *Ledger) retireAllotments() {
	al := &l.allot
	al.mu.Lock()
	defer al.mu.Unlock()
	for _, a := range al.byKey {
		a.dead = true
	}
}

// beatFresh reports whether this replica's last heartbeat is recent enough
// that no peer can have reclaimed its allotments: within half the lease.
func (l *Ledger) beatFresh(now time.Time) bool {
	last := l.lastBeat.Load()
	return last != 0 && now.Sub(time.UnixMilli(last)) < l.cfg.Lease/2
}

// allotSettleStatements settles the holds of recs against their
// allotments, inside the usage batch's transaction: per allotment, the
// records' actuals move from reserved to spent while it is held, to spent
// alone once it is released or settled late (its rest already left
// reserved), and to its late_actual once it was reclaimed (the sweeper
// charged all of it; settleReplayed corrects that). They run before
// the batch's insert and count only records not stored yet, so a replayed
// record settles nothing twice. With fresh set, recs are records the batch
// has just stored for the first time (SQLite knows them): their holds are
// summed per allotment here, and the statements run after the insert with
// a row per allotment instead of one per record. It returns the
// allotments touched, whose counters the caller locks first on PostgreSQL.
func (l *Ledger) allotSettleStatements(engine string, recs []*metering.Record, fresh bool) ([]string, []ledger.Statement) {
	var reqs, allots []string
	var costs, tokens []*int64
	var amounts []int64
	seen := map[string]bool{}
	sums := map[string]int{} // allotment → its row, when fresh
	for _, r := range recs {
		if len(r.Allotted) == 0 || r.RequestID == "" || seen[r.RequestID] {
			continue
		}
		seen[r.RequestID] = true
		c, t := Actuals(r)
		for _, h := range r.Allotted {
			if !fresh {
				reqs, allots = append(reqs, r.RequestID), append(allots, h.Allotment)
				costs, tokens, amounts = append(costs, c), append(tokens, t), append(amounts, h.Amount)
				continue
			}
			// Both metrics' actual, the hold when unknown: the SQL picks
			// the allotment's.
			i, ok := sums[h.Allotment]
			if !ok {
				i = len(allots)
				sums[h.Allotment] = i
				reqs, allots = append(reqs, ""), append(allots, h.Allotment)
				costs, tokens, amounts = append(costs, new(int64(0))), append(tokens, new(int64(0))), append(amounts, 0)
			}
			*costs[i] += derefOr(c, h.Amount)
			*tokens[i] += derefOr(t, h.Amount)
		}
	}
	if len(allots) == 0 {
		return nil, nil
	}
	var src string
	var args []any
	if engine == store.Postgres {
		src = "t AS (SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[]) AS t(request_id, allot, cost, tokens, amount))"
		args = []any{reqs, allots, costs, tokens, amounts}
	} else {
		src = "t AS (SELECT json_extract(value, '$[0]') AS request_id, json_extract(value, '$[1]') AS allot, json_extract(value, '$[2]') AS cost, " +
			"json_extract(value, '$[3]') AS tokens, json_extract(value, '$[4]') AS amount FROM json_each($1))"
		args = []any{allotRows(reqs, allots, costs, tokens, amounts)}
	}
	now := "$" + strconv.Itoa(len(args)+1)
	withNow := append(slices.Clip(args), l.cfg.Now().UnixMilli())
	dedupe := "WHERE NOT EXISTS (SELECT 1 FROM usage_records u WHERE u.request_id = t.request_id)"
	if fresh {
		dedupe = ""
	}
	// e is, per allotment, what its records not stored yet charge to
	// spent, and the part of it that leaves reserved (never more than the
	// allotment holds).
	e := src + `,
d AS MATERIALIZED (SELECT i.request_id AS allot, i.budget_id, i.window_start, r.state, i.amount,
		SUM(CASE WHEN i.metric = 'cost' THEN COALESCE(t.cost, t.amount) ELSE COALESCE(t.tokens, t.amount) END) AS x
	FROM t JOIN gov_reservations r ON r.request_id = t.allot
	JOIN gov_reservation_items i ON i.request_id = t.allot
	` + dedupe + `
	GROUP BY i.request_id, i.budget_id, i.window_start, r.state, i.amount),
e AS MATERIALIZED (SELECT allot, budget_id, window_start,
		CASE WHEN state = 'reclaimed' THEN 0 ELSE x END AS dspent,
		CASE WHEN state <> 'held' THEN 0 WHEN x < amount THEN x WHEN amount > 0 THEN amount ELSE 0 END AS dres,
		CASE WHEN state = 'reclaimed' THEN x ELSE 0 END AS dlate
	FROM d)`
	// The counters first, while the items still hold what they held: the
	// second statement reads the same e.
	return slices.Compact(slices.Sorted(slices.Values(allots))), []ledger.Statement{
		{SQL: "WITH " + e + `,
c AS (SELECT budget_id, window_start, SUM(dspent) AS dspent, SUM(dres) AS dres FROM e GROUP BY budget_id, window_start)
UPDATE gov_counters SET spent = gov_counters.spent + c.dspent, reserved = gov_counters.reserved - c.dres, updated_at = ` + now + `
FROM c WHERE gov_counters.budget_id = c.budget_id AND gov_counters.window_start = c.window_start`, Args: withNow, BeforeInsert: !fresh},
		{SQL: "WITH " + e + `
UPDATE gov_reservation_items SET amount = gov_reservation_items.amount - e.dres, late_actual = gov_reservation_items.late_actual + e.dlate
FROM e WHERE gov_reservation_items.request_id = e.allot AND (e.dres <> 0 OR e.dlate <> 0)`, Args: args, BeforeInsert: !fresh},
	}
}

// derefOr is *p, or or when p is nil.
func derefOr(p *int64, or int64) int64 {
	if p == nil {
		return or
	}
	return *p
}

// allotRows encodes holds as [["request","allotment",cost,tokens,amount],…].
func allotRows(reqs, allots []string, costs, tokens []*int64, amounts []int64) string {
	var b strings.Builder
	b.WriteByte('[')
	num := func(p *int64) {
		if p == nil {
			b.WriteString("null")
		} else {
			b.WriteString(strconv.FormatInt(*p, 10))
		}
	}
	for i := range reqs {
		if i > 0 {
			b.WriteByte(',')
		}
		q1, _ := json.Marshal(reqs[i]) // a string always encodes
		q2, _ := json.Marshal(allots[i])
		b.WriteByte('[')
		b.Write(q1)
		b.WriteByte(',')
		b.Write(q2)
		b.WriteByte(',')
		num(costs[i])
		b.WriteByte(',')
		num(tokens[i])
		b.WriteString("," + strconv.FormatInt(amounts[i], 10) + "]")
	}
	b.WriteByte(']')
	return b.String()
}
