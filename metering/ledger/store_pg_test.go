package ledger

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/metering"
)

// usageRecordsAllKinds varies usageRecordN so that every rollup counter
// counts something: rejected requests, unmetered ones, service tiers, two
// days.
func usageRecordsAllKinds(prefix string, n int) []*metering.Record {
	recs := make([]*metering.Record, n)
	for i := range recs {
		r := usageRecordN(fmt.Sprintf("%s-%d", prefix, i), i, usageDay.Add(time.Duration(i)*37*time.Minute))
		r.ServiceTier = []string{"", "flex", "priority"}[i%3]
		switch i % 13 {
		case 4:
			r.Outcome, r.Source, r.Usage, r.CostMicroUSD = metering.OutcomeRejected, metering.SourceNone, nil, nil
		case 9:
			r.Source, r.Usage, r.CostMicroUSD, r.ModelServed = metering.SourceNone, nil, nil, ""
		}
		recs[i] = r
	}
	return recs
}

// dailyAll returns every usage_daily row, every column, as text in key
// order.
func dailyAll(tb testing.TB, s *Store) []string {
	tb.Helper()
	cols := append(slices.Clip(dailyKeyColumns), dailySums...)
	rows, err := s.db.QueryContext(context.Background(), "SELECT "+strings.Join(cols, ", ")+" FROM usage_daily")
	if err != nil {
		tb.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		k := make([]string, len(dailyKeyColumns))
		var v dailyAgg
		dest := make([]any, 0, len(cols))
		for i := range k {
			dest = append(dest, &k[i])
		}
		for i := range v {
			dest = append(dest, &v[i])
		}
		if err := rows.Scan(dest...); err != nil {
			tb.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%q %v", k, v))
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	// Sorted here, in byte order, so the engines' collations do not differ.
	slices.Sort(out)
	return out
}

// wantDaily is dailyAll computed in Go from the records, each request id
// once.
func wantDaily(recs []*metering.Record) []string {
	agg := map[dailyKey]*dailyAgg{}
	seen := map[string]bool{}
	for _, r := range recs {
		if seen[r.RequestID] {
			continue
		}
		seen[r.RequestID] = true
		k := dailyKeyOf(r)
		if agg[k] == nil {
			agg[k] = new(dailyAgg)
		}
		agg[k].add(r)
	}
	var out []string
	for k, a := range agg {
		key := [...]string{k.day, k.project, k.user, k.workspace, k.harness, k.provider, k.model, k.tier}
		out = append(out, fmt.Sprintf("%q %v", key, *a))
	}
	slices.Sort(out)
	return out
}

// Both engines store the same rollup, every counter included, and a replayed
// batch (the spool after a crash) inserts nothing and adds nothing.
func TestStoreRollupIsExactAndReplayAddsNothing(t *testing.T) {
	recs := usageRecordsAllKinds("ra", 120)
	want := wantDaily(recs)
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			ctx := context.Background()
			// Two batches, the second overlapping the first, then the whole
			// set again.
			if n, err := s.InsertBatch(ctx, recs[:80]); err != nil || n != 80 {
				t.Fatalf("first batch: inserted %d, %v; want 80", n, err)
			}
			if n, err := s.InsertBatch(ctx, recs[40:]); err != nil || n != 40 {
				t.Fatalf("overlapping batch: inserted %d, %v; want 40", n, err)
			}
			got := dailyAll(t, s)
			if !slices.Equal(got, want) {
				t.Fatalf("rollup:\n got %q\nwant %q", got, want)
			}
			if n, err := s.InsertBatch(ctx, recs); err != nil || n != 0 {
				t.Fatalf("replay: inserted %d, %v; want 0", n, err)
			}
			if again := dailyAll(t, s); !slices.Equal(again, got) {
				t.Errorf("replay changed the rollup:\nbefore %q\nafter  %q", got, again)
			}
			if raw, _ := usageSums(t, s); raw.requests != int64(len(recs)) {
				t.Errorf("usage_records: %d rows, want %d", raw.requests, len(recs))
			}
		})
	}
}

// Three replicas write overlapping batches into one PostgreSQL at once: no
// deadlock, each request once, and the rollup is exactly the records'.
func TestStoreConcurrentWritersOnPostgres(t *testing.T) {
	if os.Getenv("TOLLGATE_TEST_POSTGRES") == "" {
		t.Skip("TOLLGATE_TEST_POSTGRES not set")
	}
	ctx := context.Background()
	dsn := testkit.PostgresSchema(t, os.Getenv("TOLLGATE_TEST_POSTGRES"), "metering_test_")
	var stores []*Store
	for range 3 {
		db, err := store.Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		s, err := OpenStore(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		stores = append(stores, s)
	}
	recs := usageRecordsAllKinds("cw", 600)
	var wg sync.WaitGroup
	errs := make(chan error, len(stores))
	for w, s := range stores {
		wg.Go(func() {
			// Every writer writes every record, in 16-row batches starting
			// at a different offset, so batches overlap and conflict.
			for off := 0; off < len(recs); off += 16 {
				i := (off + w*200) % len(recs)
				if _, err := s.InsertBatch(ctx, recs[i:min(i+16, len(recs))]); err != nil {
					errs <- fmt.Errorf("writer %d: %w", w, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got, want := dailyAll(t, stores[0]), wantDaily(recs); !slices.Equal(got, want) {
		t.Errorf("rollup:\n got %q\nwant %q", got, want)
	}
	if raw, daily := usageSums(t, stores[0]); raw.requests != int64(len(recs)) || raw != daily {
		t.Errorf("raw %+v, daily %+v; want %d requests and equal sums", raw, daily, len(recs))
	}
}

// PostgreSQL commits the writer's batches without waiting for the WAL
// flush; Durable must return only once everything committed before it is
// flushed.
func TestStoreDurableFlushesPostgresCommits(t *testing.T) {
	if os.Getenv("TOLLGATE_TEST_POSTGRES") == "" {
		t.Skip("TOLLGATE_TEST_POSTGRES not set")
	}
	s := mustUsageStore(t, store.Postgres)
	ctx := context.Background()
	for i := range 20 {
		if _, err := s.InsertBatch(ctx, usageRecordsAllKinds(fmt.Sprintf("df%d", i), 16)); err != nil {
			t.Fatal(err)
		}
		var committed string
		if err := s.db.QueryRowContext(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&committed); err != nil {
			t.Fatal(err)
		}
		if err := s.Durable(ctx); err != nil {
			t.Fatal(err)
		}
		var flushed bool
		if err := s.db.QueryRowContext(ctx, `SELECT pg_current_wal_flush_lsn() >= $1::pg_lsn`, committed).Scan(&flushed); err != nil {
			t.Fatal(err)
		}
		if !flushed {
			t.Fatalf("batch %d: WAL up to %s not flushed when Durable returned", i, committed)
		}
	}
	var left int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM metering_durable`).Scan(&left); err != nil || left != 0 {
		t.Errorf("metering_durable holds %d rows (%v), want 0", left, err)
	}
}

// blockingDurable is a Store whose Durable waits for release, and notes
// the spool segments on disk when it is entered.
type blockingDurable struct {
	*Store
	dir     string
	entered chan []string
	release chan struct{}
	once    sync.Once
}

func (d *blockingDurable) Durable(ctx context.Context) error {
	segs, _ := filepath.Glob(filepath.Join(d.dir, "*.spool"))
	d.once.Do(func() { d.entered <- segs })
	<-d.release
	return d.Store.Durable(ctx)
}

// No spool segment is deleted while the store's Durable has not returned,
// even though every record of it is committed: on both engines those
// commits may not be on disk yet.
func TestWriterKeepsSegmentsUntilDurableReturns(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			dir := t.TempDir()
			s := mustUsageStore(t, engine)
			d := &blockingDurable{Store: s, dir: dir, entered: make(chan []string, 1), release: make(chan struct{})}
			cfg := fastWriterConfig(dir)
			cfg.SegmentBytes = 2 << 10 // a few records per segment
			w, err := NewWriter(cfg, d)
			if err != nil {
				t.Fatal(err)
			}
			recs := usageRecordsAllKinds("kd", 40)
			for _, r := range recs {
				w.Record(r)
			}
			var before []string
			select {
			case before = <-d.entered:
			case <-time.After(10 * time.Second):
				t.Fatal("Durable not called with sealed segments committed")
			}
			if len(before) < 2 {
				t.Fatalf("%d segments on disk at Durable, want a sealed one and more", len(before))
			}
			// The writer is inside Durable; give a delete every chance.
			time.Sleep(100 * time.Millisecond)
			after, _ := filepath.Glob(filepath.Join(dir, "*.spool"))
			for _, p := range before {
				if !slices.Contains(after, p) {
					t.Errorf("segment %s deleted before Durable returned", filepath.Base(p))
				}
			}
			close(d.release)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := w.Close(ctx); err != nil {
				t.Fatal(err)
			}
			if left, _ := filepath.Glob(filepath.Join(dir, "*.spool")); len(left) != 0 {
				t.Errorf("%d segments left after Durable returned and the writer closed", len(left))
			}
			if got, want := dailyAll(t, s), wantDaily(recs); !slices.Equal(got, want) {
				t.Errorf("rollup:\n got %q\nwant %q", got, want)
			}
		})
	}
}
