package governance

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/ledger"
)

// Settling a killed replica's allotments from its records (issue 16). The
// sweeper reclaims a silent replica's allotment at its whole remaining
// amount: its unused part and the holds of the requests it had in flight,
// whose records it cannot wait for. When the replica restarts on the same
// spool directory, every request it forwarded is in its spool (final
// records) or its in-flight journal (a start line, written before the
// upstream call, replayed as an interrupted record), and the records it
// stored before the kill have settled already. So once the restarted
// process has stored all of them, what the allotment really cost is known,
// and spent is corrected to it:
//
//   - a late record of a reclaimed allotment adds its actual to the
//     item's late_actual instead of spent, once (the record is stored for
//     the first time: the settlement's usual dedupe), so a replay, or a
//     record replayed twice, adds nothing more;
//   - when the writer reports that the earlier processes' spool segments
//     and journal are stored (AfterReplay), settleReplayed moves each of
//     their reclaimed allotments to settled_late with spent += late_actual
//     − amount: amount is exactly what the reclaim charged (an allotment's
//     item amount already excludes the actuals settled before the kill,
//     and nothing moves it after the reclaim), so spent ends at the sum of
//     the records' actuals, never under what they settled at;
//   - an allotment of theirs still held (the restart came within the
//     lease) is released instead: its records settled through it as ever,
//     and what is left of it was never used;
//   - a record that still arrives afterwards (a quarantined one imported)
//     charges spent directly, as a released allotment's records do.
//
// Which allotments are the earlier processes'? A restarted replica takes a
// new random id (LedgerConfig.ReplicaID), so each process notes its id in
// the spool directory it locked (replicasFile) and reads the ids noted
// before it: processes that held that lock, so are gone. The records say
// it too (one naming another replica's allotment can only come from this
// spool: a writer stores its own process's records), which covers a
// spool written before the file existed; but a replica killed while all
// its requests reserved directly (the first ones do, while the grant is
// in flight) leaves records naming none of its allotments, hence the
// file. Every allotment of those replicas is settled, those no record
// named included: an allotment nobody used is released whole. A replica
// whose spool is lost, or that never comes back, keeps the sweeper's
// charge (never under what was spent); so does one that restarts under
// the same configured id, which cannot be told from its predecessor.
//
// The correction runs on a heartbeat after the replay, under the same
// counter lock order as settlement and the sweep, and every state change is
// conditional on the state it leaves: run twice, or racing a late record's
// settlement or a reclaim, it charges each amount once.

// replicasFile, in the spool directory, lists the replica ids of the
// processes that used it since their allotments were last settled, one a
// line.
const replicasFile = "budget-replicas"

// AfterReplay tells the ledger that done closes once the usage records the
// earlier processes on spool (the directory this process's usage writer
// locked) left are stored, in its segments and in-flight journal
// (ledger.Writer.Replayed): from then on each heartbeat settles those
// processes' allotments at their records. It reads their replica ids from
// spool and adds this one's; an error means it could not, and only the
// records will name them.
func (l *Ledger) AfterReplay(done <-chan struct{}, spool string) error {
	l.predMu.Lock()
	defer l.predMu.Unlock()
	l.replayed = done
	path := filepath.Join(spool, replicasFile)
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("budget ledger: earlier replicas on the spool: %w", err)
	}
	l.predFile = path
	for _, id := range strings.Fields(string(b)) {
		if id != l.cfg.ReplicaID && !slices.Contains(l.preds, id) && len(l.preds) < maxPredAllots {
			l.preds = append(l.preds, id)
		}
	}
	return l.writeReplicas()
}

// writeReplicas writes the predecessors not settled yet and this replica
// to predFile, atomically (predMu held).
func (l *Ledger) writeReplicas() error {
	if l.predFile == "" {
		return nil
	}
	text := strings.Join(append(slices.Clone(l.preds), l.cfg.ReplicaID), "\n") + "\n"
	tmp := l.predFile + ".tmp"
	if err := writeSynced(tmp, []byte(text)); err != nil {
		return fmt.Errorf("budget ledger: note the replica on the spool: %w", err)
	}
	if err := os.Rename(tmp, l.predFile); err != nil {
		return fmt.Errorf("budget ledger: note the replica on the spool: %w", err)
	}
	return nil
}

// writeSynced writes b to a new file at path and syncs it.
func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

// notePredecessors remembers the allotments of other replicas that recs
// hold: records an earlier process on this spool left.
func (l *Ledger) notePredecessors(recs []*metering.Record) {
	own := l.cfg.ReplicaID
	var locked bool
	for _, r := range recs {
		for _, h := range r.Allotted {
			a := h.Allotment
			if rest, ok := strings.CutPrefix(a, "allot:"); !ok || (strings.HasPrefix(rest, own) && len(rest) > len(own) && rest[len(own)] == ':') {
				continue
			}
			if !locked {
				l.predMu.Lock()
				defer l.predMu.Unlock()
				locked = true
			}
			if l.predAllots == nil {
				l.predAllots = map[string]bool{}
			}
			if len(l.predAllots) < maxPredAllots {
				l.predAllots[a] = true
			}
		}
	}
}

// settleReplayed, once the replay AfterReplay waits for is done, corrects
// the reclaimed allotments of the replicas the replayed records named to
// their records' actuals and releases their held ones. It returns how
// many it released and corrected.
func (l *Ledger) settleReplayed(ctx context.Context) (released, corrected int, err error) {
	l.predMu.Lock()
	done, named, preds := l.replayed, slices.Collect(maps.Keys(l.predAllots)), slices.Clone(l.preds)
	l.predMu.Unlock()
	if done == nil || len(named)+len(preds) == 0 {
		return 0, 0, nil
	}
	select {
	case <-done:
	default:
		return 0, 0, nil
	}
	slices.Sort(named)
	ms := l.cfg.Now().UnixMilli()
	err = l.inTx(ctx, false, func(tx *sql.Tx) error {
		released, corrected = 0, 0
		replicas := slices.Clone(preds)
		if len(named) > 0 {
			in, arg := idList(l.db.Engine, named)
			by, err := queryStrings(ctx, tx, `SELECT DISTINCT replica_id FROM gov_reservations WHERE request_id IN `+in, arg)
			if err != nil {
				return err
			}
			replicas = append(replicas, by...)
		}
		in, arg := idList(l.db.Engine, slices.DeleteFunc(replicas, func(id string) bool { return id == l.cfg.ReplicaID }))
		ids, err := queryStrings(ctx, tx, `SELECT request_id FROM gov_reservations
			WHERE request_id LIKE 'allot:%' AND state IN ('held', 'reclaimed') AND replica_id IN `+in+`
			ORDER BY request_id`, arg)
		if err != nil {
			return err
		}
		if len(ids) == 0 {
			return nil
		}
		// One lock of every counter, in key order (late's first
		// statement on PostgreSQL); each part then acts only on the
		// allotments in the state it leaves, read under that lock.
		late := l.transition(l.db.Engine, ids, nil, nil, ms, transAllotLate)
		rel := l.transition(l.db.Engine, ids, nil, nil, ms, transAllotRelease)
		if l.db.Engine == store.Postgres {
			rel = rel[1:]
		}
		if corrected, err = l.execAll(ctx, tx, late); err != nil {
			return err
		}
		released, err = l.execAll(ctx, tx, rel)
		return err
	})
	if err != nil {
		return 0, 0, fmt.Errorf("budget ledger: settle replayed allotments: %w", err)
	}
	l.predMu.Lock()
	defer l.predMu.Unlock()
	for _, a := range named {
		delete(l.predAllots, a)
	}
	if len(preds) > 0 {
		l.preds = slices.DeleteFunc(l.preds, func(id string) bool { return slices.Contains(preds, id) })
		if err := l.writeReplicas(); err != nil {
			// Settled all the same: the next process finds nothing of
			// theirs left to settle.
			l.cfg.Log.Warn("budget ledger: settled the earlier replicas' allotments", "err", err)
		}
	}
	return released, corrected, nil
}

// queryStrings runs q in tx and returns its one text column.
func queryStrings(ctx context.Context, tx *sql.Tx, q string, args ...any) ([]string, error) {
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// execAll runs sts in tx and returns the rows the last one changed.
func (l *Ledger) execAll(ctx context.Context, tx *sql.Tx, sts []ledger.Statement) (int, error) {
	var n int64
	for _, st := range sts {
		res, err := tx.ExecContext(ctx, st.SQL, st.Args...)
		if err != nil {
			return 0, err
		}
		if n, err = res.RowsAffected(); err != nil {
			return 0, err
		}
	}
	return int(n), nil
}

// idList is ids as the right side of an IN: an array (unnest) on
// PostgreSQL, a JSON array (json_each) on SQLite, so the text is the same
// for any number of ids.
func idList(engine string, ids []string) (in string, arg any) {
	if engine == store.Postgres {
		return "(SELECT unnest($1::text[]))", ids
	}
	js, _ := json.Marshal(ids) // strings always encode
	return "(SELECT value FROM json_each($1))", string(js)
}
