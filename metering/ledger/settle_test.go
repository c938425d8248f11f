package ledger

import (
	"context"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/metering"
)

// tallySettler settles by counting each reserved record in settle_test's
// table, one row per request id (a replay adds nothing), or fails when
// told to. governance.Ledger is the real Settler; its tests run it
// through InsertBatch.
type tallySettler struct {
	seen []string
	fail bool
}

func (ts *tallySettler) SettleStatements(engine string, recs []*metering.Record) []Statement {
	var out []Statement
	for _, r := range recs {
		if !r.Reserved {
			continue
		}
		ts.seen = append(ts.seen, r.RequestID)
		out = append(out, Statement{SQL: `INSERT INTO settle_test (request_id, reserved_micro_usd) VALUES ($1, $2) ON CONFLICT (request_id) DO NOTHING`,
			Args: []any{r.RequestID, r.ReservedMicroUSD}})
	}
	if ts.fail {
		out = append(out, Statement{SQL: `INSERT INTO settle_test (request_id) VALUES (NULL)`})
	}
	return out
}

func settledIDs(t *testing.T, s *Store) map[string]int64 {
	t.Helper()
	rows, err := s.db.QueryContext(context.Background(), `SELECT request_id, reserved_micro_usd FROM settle_test`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var id string
		var v int64
		if err := rows.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		out[id] = v
	}
	return out
}

// TestSettleRunsInTheBatchTransaction: the settler's statements commit
// with the batch, and a failing one rolls the records back with it, on
// both engines.
func TestSettleRunsInTheBatchTransaction(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			ctx := context.Background()
			if _, err := s.db.ExecContext(ctx, `CREATE TABLE settle_test (request_id TEXT PRIMARY KEY NOT NULL, reserved_micro_usd BIGINT)`); err != nil {
				t.Fatal(err)
			}
			ts := &tallySettler{}
			s.SetSettler(ts)
			a, b := usageRecordN("set-a", 1, usageDay), usageRecordN("set-b", 2, usageDay)
			a.Reserved, a.ReservedMicroUSD = true, 2_810_000
			if _, err := s.InsertBatch(ctx, []*metering.Record{a, b}); err != nil {
				t.Fatal(err)
			}
			if got := settledIDs(t, s); len(got) != 1 || got["set-a"] != 2_810_000 {
				t.Errorf("settled %v, want set-a at 2810000", got)
			}
			var stored int64
			s.db.QueryRowContext(ctx, `SELECT reserved_micro_usd FROM usage_records WHERE request_id = 'set-a'`).Scan(&stored)
			if stored != 2_810_000 {
				t.Errorf("usage_records.reserved_micro_usd %d", stored)
			}

			ts.fail = true
			c := usageRecordN("set-c", 3, usageDay)
			c.Reserved = true
			if _, err := s.InsertBatch(ctx, []*metering.Record{c}); err == nil {
				t.Fatal("a failing settle statement did not fail the batch")
			}
			var n int
			s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM usage_records WHERE request_id = 'set-c'`).Scan(&n)
			if n != 0 || len(settledIDs(t, s)) != 1 {
				t.Errorf("the failed batch left its record (%d) or settlement (%v)", n, settledIDs(t, s))
			}
		})
	}
}

// TestInterruptedRecordKeepsItsReservation: a request in flight at a
// crash comes back from the journal still marked reserved, with its
// ceiling and alias, so storing it settles the reservation.
func TestInterruptedRecordKeepsItsReservation(t *testing.T) {
	s := mustUsageStore(t, store.SQLite)
	ctx := context.Background()
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE settle_test (request_id TEXT PRIMARY KEY NOT NULL, reserved_micro_usd BIGINT)`); err != nil {
		t.Fatal(err)
	}
	ts := &tallySettler{}
	s.SetSettler(ts)
	dir := t.TempDir()
	cfg := fastWriterConfig(dir)
	cfg.SyncInterval = time.Hour
	w1 := mustWriter(t, cfg, s)
	r := startRecord("held")
	r.Reserved, r.ReservedMicroUSD, r.ModelSent = true, 1_500_000, "claude-x-target"
	w1.Begin(r)
	crash(w1)

	w2 := mustWriter(t, fastWriterConfig(dir), s)
	mustFlush(t, w2)
	if got := settledIDs(t, s); got["held"] != 1_500_000 {
		t.Errorf("settled %v, want the interrupted request at its 1500000 ceiling", got)
	}
	var outcome, sent string
	if err := s.db.QueryRowContext(ctx, `SELECT outcome, model_sent FROM usage_records WHERE request_id = 'held'`).Scan(&outcome, &sent); err != nil {
		t.Fatal(err)
	}
	if outcome != metering.OutcomeInterrupted || sent != "claude-x-target" {
		t.Errorf("stored %s / %q", outcome, sent)
	}
}
