package ledger

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/metering"
)

// fastWriterConfig is a WriterConfig with short timers so tests never wait long.
func fastWriterConfig(dir string) WriterConfig {
	return WriterConfig{
		SpoolDir:      dir,
		BatchInterval: 5 * time.Millisecond,
		SyncInterval:  5 * time.Millisecond,
		RetryMin:      time.Millisecond,
		RetryMax:      20 * time.Millisecond,
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// mustWriter starts a Writer closed at cleanup (bounded).
func mustWriter(tb testing.TB, cfg WriterConfig, ins Inserter) *Writer {
	tb.Helper()
	w, err := NewWriter(cfg, ins)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		w.Close(ctx)
	})
	return w
}

func mustFlush(tb testing.TB, w *Writer) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.Flush(ctx); err != nil {
		tb.Fatalf("Flush: %v (stats %+v)", err, w.Stats())
	}
}

// writerEventually polls cond until it holds or fails tb after timeout.
func writerEventually(tb testing.TB, timeout time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("condition not met after %v", timeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// flakyInserter fails every transaction while down is set, like a store
// that is unreachable.
type flakyInserter struct {
	next  Inserter
	down  atomic.Bool
	fails atomic.Int64
}

func (f *flakyInserter) InsertBatch(ctx context.Context, recs []*metering.Record) (int, error) {
	if f.down.Load() {
		f.fails.Add(1)
		return 0, errors.New("store down")
	}
	return f.next.InsertBatch(ctx, recs)
}

// gateInserter blocks every transaction until open is closed (or ctx ends).
type gateInserter struct {
	next Inserter
	open chan struct{}
}

func (g *gateInserter) InsertBatch(ctx context.Context, recs []*metering.Record) (int, error) {
	select {
	case <-g.open:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return g.next.InsertBatch(ctx, recs)
}

// assertAllOnce checks every id has exactly one row and the rollup agrees
// with the raw rows.
func assertAllOnce(tb testing.TB, s *Store, ids []string) {
	tb.Helper()
	for _, id := range ids {
		if n := usageRowCount(tb, s, id); n != 1 {
			tb.Fatalf("rows for %s: got %d, want 1", id, n)
		}
	}
	raw, daily := usageSums(tb, s)
	if raw.requests != int64(len(ids)) {
		tb.Errorf("usage_records: got %d rows, want %d", raw.requests, len(ids))
	}
	if raw != daily {
		tb.Errorf("rollup disagrees with raw rows: raw %+v, daily %+v", raw, daily)
	}
}

func TestWriterWritesEveryRecordOnce(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			w := mustWriter(t, fastWriterConfig(t.TempDir()), s)
			const n, workers = 1000, 8
			var ids []string
			var wg sync.WaitGroup
			for g := range workers {
				wg.Go(func() {
					for i := g; i < n; i += workers {
						w.Record(usageRecordN(fmt.Sprintf("req-%d", i), i, usageDay.Add(time.Duration(i)*time.Minute)))
					}
				})
			}
			for i := range n {
				ids = append(ids, fmt.Sprintf("req-%d", i))
			}
			wg.Wait()
			mustFlush(t, w)
			assertAllOnce(t, s, ids)
			st := w.Stats()
			if st.Accepted != n || st.Inserted != n || st.Dropped != 0 {
				t.Errorf("stats: %+v; want %d accepted and inserted, 0 dropped", st, n)
			}
			// The rollup answers like the raw rows for every grouping.
			q := UsageQuery{From: usageDay, To: usageDay.AddDate(0, 0, 3), GroupBy: []string{GroupDay, GroupProject, GroupModel, GroupUser}}
			assertRollupMatchesRaw(t, s, q)
		})
	}
}

func TestWriterIgnoresRepeatedRequestID(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			dir := t.TempDir()
			w := mustWriter(t, fastWriterConfig(dir), s)
			r := usageRecordN("same", 0, usageDay.Add(time.Hour))
			w.Record(r)
			w.Record(usageRecordN("same", 0, usageDay.Add(time.Hour)))
			mustFlush(t, w)
			// A replay of the same spool (as after a crash) changes nothing.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := s.InsertBatch(ctx, []*metering.Record{r}); err != nil {
				t.Fatal(err)
			}
			assertAllOnce(t, s, []string{"same"})
			if st := w.Stats(); st.Inserted != 1 || st.Duplicates != 1 {
				t.Errorf("stats: inserted %d duplicates %d, want 1 and 1", st.Inserted, st.Duplicates)
			}
		})
	}
}

func TestWriterRidesOutStoreOutage(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			flaky := &flakyInserter{next: s}
			cfg := fastWriterConfig(t.TempDir())
			cfg.QueueSize = 32 // small, so the outage overflows it into the spool
			cfg.SegmentBytes = 16 << 10
			w := mustWriter(t, cfg, flaky)
			var ids []string
			record := func(from, to int) {
				for i := from; i < to; i++ {
					id := fmt.Sprintf("out-%d", i)
					ids = append(ids, id)
					w.Record(usageRecordN(id, i, usageDay.Add(time.Duration(i)*time.Second)))
				}
			}
			record(0, 50)
			flaky.down.Store(true)
			record(50, 300)
			writerEventually(t, 5*time.Second, func() bool { return flaky.fails.Load() >= 3 })
			record(300, 350)
			if st := w.Stats(); st.Spilled == 0 || st.Retries == 0 {
				t.Fatalf("during the outage: %+v; want spills and retries", st)
			}
			// Flush cannot finish while the store is down; it is bounded by ctx.
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			if err := w.Flush(ctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Flush during outage: got %v, want deadline exceeded", err)
			}
			cancel()
			flaky.down.Store(false)
			record(350, 400)
			mustFlush(t, w)
			assertAllOnce(t, s, ids)
			st := w.Stats()
			if st.Dropped != 0 || st.Unspooled != 0 {
				t.Errorf("stats: %+v; want nothing dropped or unspooled", st)
			}
			if st.Inserted != uint64(len(ids)) {
				t.Errorf("inserted %d, want %d", st.Inserted, len(ids))
			}
			// Every spilled segment was read back and deleted; only the
			// active one may remain.
			if st.Segments > 1 {
				t.Errorf("spool segments after recovery: %d, want at most 1", st.Segments)
			}
		})
	}
}

func TestWriterFullQueueSpillsToSpool(t *testing.T) {
	s := mustUsageStore(t, "sqlite")
	gate := &gateInserter{next: s, open: make(chan struct{})}
	cfg := fastWriterConfig(t.TempDir())
	cfg.QueueSize = 8
	cfg.BatchSize = 4
	w := mustWriter(t, cfg, gate)
	const n = 200
	start := time.Now()
	for i := range n {
		w.Record(usageRecordN(fmt.Sprintf("bp-%d", i), i, usageDay))
	}
	// Record never waits for the store: 200 records against a blocked
	// store return in far less than one batch interval per record.
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Record blocked: %v for %d records", d, n)
	}
	st := w.Stats()
	// At most the queue plus one batch in flight went through memory.
	if want := uint64(n - cfg.QueueSize - cfg.BatchSize); st.Spilled < want {
		t.Errorf("spilled %d, want at least %d", st.Spilled, want)
	}
	if st.Dropped != 0 {
		t.Errorf("dropped %d, want 0: a spill is not a drop", st.Dropped)
	}
	close(gate.open)
	mustFlush(t, w)
	var ids []string
	for i := range n {
		ids = append(ids, fmt.Sprintf("bp-%d", i))
	}
	assertAllOnce(t, s, ids)
}

func TestWriterDropsOnlyWhenSpoolAndQueueAreFull(t *testing.T) {
	s := mustUsageStore(t, "sqlite")
	gate := &gateInserter{next: s, open: make(chan struct{})}
	var logs testkit.LogBuffer
	cfg := fastWriterConfig(t.TempDir())
	cfg.QueueSize = 2
	cfg.BatchSize = 1
	cfg.MaxSpoolBytes = 8 << 10 // a handful of records
	cfg.Logger = slogTo(&logs)
	w := mustWriter(t, cfg, gate)
	for i := range 50 {
		w.Record(usageRecordN(fmt.Sprintf("full-%d", i), i, usageDay))
	}
	st := w.Stats()
	if st.Dropped == 0 || st.Accepted != 50 {
		t.Fatalf("stats: %+v; want drops once spool and queue are full", st)
	}
	got := strings.Count(logs.String(), `"msg":"metering: usage record dropped"`)
	hasRecord := strings.Contains(logs.String(), `\"request_id\":\"full-49\"`)
	if got != int(st.Dropped) || !hasRecord {
		t.Errorf("drop logs: %d lines (want %d), last record logged in full: %v", got, st.Dropped, hasRecord)
	}
	close(gate.open)
	mustFlush(t, w)
	raw, _ := usageSums(t, s)
	if want := int64(st.Accepted - st.Dropped); raw.requests != want {
		t.Errorf("rows: got %d, want accepted-dropped = %d", raw.requests, want)
	}
}

// slogTo returns a JSON logger writing to l.
func slogTo(l *testkit.LogBuffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(l, nil))
}

func TestWriterCloseLeavesUnwrittenRecordsForNextStart(t *testing.T) {
	s := mustUsageStore(t, "sqlite")
	dir := t.TempDir()
	gate := &gateInserter{next: s, open: make(chan struct{})}
	w, err := NewWriter(fastWriterConfig(dir), gate)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 50 {
		ids = append(ids, fmt.Sprintf("cl-%d", i))
		w.Record(usageRecordN(ids[i], i, usageDay))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := w.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close with the store blocked: got %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v past its 100ms context", d)
	}
	w.Record(usageRecordN("after-close", 0, usageDay)) // dropped and logged, not a panic
	if st := w.Stats(); st.Dropped != 1 {
		t.Errorf("record after Close: dropped %d, want 1", st.Dropped)
	}
	if err := w.Flush(context.Background()); !errors.Is(err, ErrWriterClosed) {
		t.Errorf("Flush after Close: got %v, want ErrWriterClosed", err)
	}
	// The next process replays the spool.
	w2 := mustWriter(t, fastWriterConfig(dir), s)
	mustFlush(t, w2)
	assertAllOnce(t, s, ids)
	if st := w2.Stats(); st.Replayed < 50 {
		t.Errorf("replayed %d, want at least 50", st.Replayed)
	}
}

func TestWriterCleanCloseEmptiesSpool(t *testing.T) {
	s := mustUsageStore(t, "sqlite")
	dir := t.TempDir()
	w, err := NewWriter(fastWriterConfig(dir), s)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		w.Record(usageRecordN(fmt.Sprintf("cc-%d", i), i, usageDay))
	}
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	segs, err := filepath.Glob(filepath.Join(dir, "*.spool"))
	if err != nil || len(segs) != 0 {
		t.Errorf("spool after a clean close: %v %v, want empty", segs, err)
	}
	raw, _ := usageSums(t, s)
	if raw.requests != 20 {
		t.Errorf("rows: %d, want 20", raw.requests)
	}
}

func TestWriterSyncEveryRecord(t *testing.T) {
	s := mustUsageStore(t, "sqlite")
	cfg := fastWriterConfig(t.TempDir())
	cfg.SyncEveryRecord = true
	w := mustWriter(t, cfg, s)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 25 {
				w.Record(usageRecordN(fmt.Sprintf("sync-%d-%d", g, i), i, usageDay))
			}
		})
	}
	wg.Wait()
	if w.sp.synced.Load() < 100 {
		t.Errorf("synced lines: %d, want all 100 fsync'd when Record returned", w.sp.synced.Load())
	}
	mustFlush(t, w)
	if raw, _ := usageSums(t, s); raw.requests != 100 {
		t.Errorf("rows: %d, want 100", raw.requests)
	}
}

func TestWriterConfigValidate(t *testing.T) {
	err := WriterConfig{QueueSize: -1, RetryMin: time.Second, RetryMax: time.Millisecond}.Validate()
	for _, want := range []string{"SpoolDir", "QueueSize", "RetryMax"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: got %v, want a problem naming %s", err, want)
		}
	}
	if err := fastWriterConfig("x").Validate(); err != nil {
		t.Errorf("valid config: %v", err)
	}
}

func TestWriterSpoolIsExclusive(t *testing.T) {
	dir := t.TempDir()
	s := mustUsageStore(t, "sqlite")
	mustWriter(t, fastWriterConfig(dir), s)
	if _, err := NewWriter(fastWriterConfig(dir), s); !errors.Is(err, ErrSpoolLocked) {
		t.Errorf("second writer on one spool: got %v, want ErrSpoolLocked", err)
	}
}

// discardInserter commits instantly, to measure the writer alone.
type discardInserter struct{}

func (discardInserter) InsertBatch(_ context.Context, recs []*metering.Record) (int, error) {
	return len(recs), nil
}

// BenchmarkWriterRecord measures the request-path cost of Record: encode,
// one append write(2) under a mutex, and a channel send.
func BenchmarkWriterRecord(b *testing.B) {
	cfg := fastWriterConfig(b.TempDir())
	cfg.QueueSize = 1 << 16
	w := mustWriter(b, cfg, discardInserter{})
	recs := make([]*metering.Record, 1024)
	for i := range recs {
		recs[i] = usageRecordN(fmt.Sprintf("bench-%d", i), i, usageDay)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		w.Record(recs[i%len(recs)])
	}
	b.StopTimer()
	if st := w.Stats(); st.Dropped != 0 {
		b.Fatalf("dropped %d", st.Dropped)
	}
}

// BenchmarkWriterRecordParallel is Record from many request goroutines.
func BenchmarkWriterRecordParallel(b *testing.B) {
	cfg := fastWriterConfig(b.TempDir())
	cfg.QueueSize = 1 << 16
	w := mustWriter(b, cfg, discardInserter{})
	r := usageRecordN("bench", 0, usageDay)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w.Record(r)
		}
	})
}

// BenchmarkWriterRecordSyncEvery is Record with SyncEveryRecord from 16
// concurrent callers: the price of closing the power-loss window, with
// group commit sharing fsyncs.
func BenchmarkWriterRecordSyncEvery(b *testing.B) {
	cfg := fastWriterConfig(b.TempDir())
	cfg.QueueSize = 1 << 16
	cfg.SyncEveryRecord = true
	w := mustWriter(b, cfg, discardInserter{})
	r := usageRecordN("bench", 0, usageDay)
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w.Record(r)
		}
	})
}

// BenchmarkWriterThroughputSQLite measures records per second, and process
// CPU per record, from Record to committed SQLite rows (spool, batching,
// insert, rollup). Run it with -cpu=1: production runs GOMAXPROCS=1, where
// the writer's CPU is taken from request handling.
func BenchmarkWriterThroughputSQLite(b *testing.B) {
	s := mustUsageStore(b, "sqlite")
	cfg := fastWriterConfig(b.TempDir())
	// Deep enough that the loop, faster than any store, does not spill:
	// this measures the store path, not spill catch-up.
	cfg.QueueSize = 1 << 20
	cfg.MaxSpoolBytes = 8 << 30
	// Production's fsync period: the test default of 5 ms would bill the
	// store path for ten times the spool fsyncs.
	cfg.SyncInterval = DefaultSyncInterval
	w := mustWriter(b, cfg, s)
	// Copies of a few templates keep record construction out of the CPU
	// figure; a proxy builds its records anyway.
	tmpl := make([]metering.Record, 64)
	for i := range tmpl {
		tmpl[i] = *usageRecordN("", i, usageDay.Add(time.Duration(i)*time.Second))
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	cpu0, _ := processCPU()
	for i := 0; i < b.N; i++ {
		r := new(metering.Record)
		*r = tmpl[i%len(tmpl)]
		r.RequestID = "tp-" + strconv.Itoa(i)
		w.Record(r)
	}
	mustFlush(b, w)
	cpu1, _ := processCPU()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "records/s")
	b.ReportMetric(float64(w.Stats().Spilled), "spilled")
	reportCPUPerRecord(b, cpu1-cpu0, b.N)
}

// poisonInserter rejects any batch holding the request id "poison" while
// the store itself answers, like a constraint the record violates.
type poisonInserter struct{ next *Store }

func (p poisonInserter) InsertBatch(ctx context.Context, recs []*metering.Record) (int, error) {
	for _, r := range recs {
		if r.RequestID == "poison" {
			return 0, errors.New("value violates a constraint")
		}
	}
	return p.next.InsertBatch(ctx, recs)
}

func (p poisonInserter) Ping(ctx context.Context) error { return p.next.Ping(ctx) }

func TestWriterQuarantinesARecordTheStoreRejects(t *testing.T) {
	s := mustUsageStore(t, "sqlite")
	dir := t.TempDir()
	cfg := fastWriterConfig(dir)
	cfg.RetryMax = 2 * time.Millisecond
	w := mustWriter(t, cfg, poisonInserter{s})
	var ids []string
	for i := range 40 {
		id := fmt.Sprint("ok-", i)
		if i == 17 {
			id = "poison"
		} else {
			ids = append(ids, id)
		}
		w.Record(usageRecordN(id, i, usageDay))
	}
	mustFlush(t, w)
	assertAllOnce(t, s, ids)
	if st := w.Stats(); st.Quarantined != 1 || st.Dropped != 0 {
		t.Errorf("stats %+v: want exactly the poison record quarantined", st)
	}
	b, err := os.ReadFile(filepath.Join(dir, quarantineName))
	if err != nil || !strings.Contains(string(b), `"request_id":"poison"`) || !strings.Contains(string(b), "violates") {
		t.Errorf("quarantine file: %q, %v", b, err)
	}
}

func TestStoreAcceptsTextPostgresWouldReject(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			r := usageRecordN("nul\x00id", 0, usageDay)
			r.ModelServed = "bad\xffutf8"
			n, err := s.InsertBatch(context.Background(), []*metering.Record{r})
			if err != nil || n != 1 {
				t.Fatalf("InsertBatch: %d, %v", n, err)
			}
			if got := usageRowCount(t, s, "nul\uFFFDid"); got != 1 {
				t.Errorf("sanitised id rows: %d, want 1", got)
			}
			if r.RequestID != "nul\x00id" {
				t.Error("InsertBatch modified the caller's record")
			}
		})
	}
}

func TestWriterNamesRecordsWithoutID(t *testing.T) {
	s := mustUsageStore(t, "sqlite")
	w := mustWriter(t, fastWriterConfig(t.TempDir()), s)
	a, b := usageRecordN("", 0, usageDay), usageRecordN("", 1, usageDay)
	w.Record(a)
	w.Record(b)
	mustFlush(t, w)
	if a.RequestID == "" || a.RequestID == b.RequestID {
		t.Fatalf("generated ids %q and %q", a.RequestID, b.RequestID)
	}
	assertAllOnce(t, s, []string{a.RequestID, b.RequestID})
}

// durableSpy wraps the store and notes, at each Durable call, how many
// spool segments are still on disk; it can be made to fail.
type durableSpy struct {
	*Store
	dir   string
	fail  atomic.Bool
	mu    sync.Mutex
	calls []int
}

func (d *durableSpy) Durable(ctx context.Context) error {
	segs, _ := filepath.Glob(filepath.Join(d.dir, "*.spool"))
	d.mu.Lock()
	d.calls = append(d.calls, len(segs))
	d.mu.Unlock()
	if d.fail.Load() {
		return errors.New("disk gone")
	}
	return d.Store.Durable(ctx)
}

// Commits are not fsync'd one by one; a spool segment is the only copy
// until the store has synced, so the store syncs before any segment is
// deleted, and a failed sync keeps every segment.
func TestWriterSyncsTheStoreBeforeDeletingSpool(t *testing.T) {
	dir := t.TempDir()
	spy := &durableSpy{Store: mustUsageStore(t, "sqlite"), dir: dir}
	spy.fail.Store(true)
	cfg := fastWriterConfig(dir)
	cfg.SegmentBytes = 2 << 10 // a few records per segment
	w, err := NewWriter(cfg, spy)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		w.Record(usageRecordN(fmt.Sprintf("sd-%d", i), i, usageDay))
	}
	mustFlush(t, w)
	segs, _ := filepath.Glob(filepath.Join(dir, "*.spool"))
	if len(segs) < 2 {
		t.Fatalf("%d segments on disk with the store unsynced, want them all kept", len(segs))
	}
	spy.fail.Store(false)
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	segs, _ = filepath.Glob(filepath.Join(dir, "*.spool"))
	if len(segs) != 0 {
		t.Errorf("%d segments left after a synced close, want 0", len(segs))
	}
	spy.mu.Lock()
	defer spy.mu.Unlock()
	if len(spy.calls) == 0 || spy.calls[len(spy.calls)-1] == 0 {
		t.Errorf("Durable calls saw %v segments on disk; the last must precede the deletes", spy.calls)
	}
	raw, _ := usageSums(t, spy.Store)
	if raw.requests != 40 {
		t.Errorf("rows: %d, want 40", raw.requests)
	}
}

// batchSizes records the size of every transaction.
type batchSizes struct {
	mu    sync.Mutex
	sizes []int
}

func (b *batchSizes) InsertBatch(_ context.Context, recs []*metering.Record) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sizes = append(b.sizes, len(recs))
	return len(recs), nil
}

func (b *batchSizes) get() []int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.sizes)
}

// Light load commits a batch once it holds MinBatch records, is
// MinBatchAge old and nothing is queued behind it, instead of waiting for
// BatchSize or BatchInterval; fewer records wait for the interval.
func TestWriterCommitsSmallBatchesUnderLightLoad(t *testing.T) {
	ins := &batchSizes{}
	cfg := fastWriterConfig(t.TempDir())
	cfg.BatchInterval = time.Hour
	cfg.BatchSize, cfg.MinBatch, cfg.MinBatchAge = 256, 4, time.Millisecond
	w := mustWriter(t, cfg, ins)
	for i := range 3 {
		w.Record(usageRecordN(fmt.Sprintf("lb-%d", i), i, usageDay))
		time.Sleep(2 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if got := ins.get(); len(got) != 0 {
		t.Fatalf("committed %v below MinBatch", got)
	}
	w.Record(usageRecordN("lb-3", 3, usageDay))
	writerEventually(t, 5*time.Second, func() bool { return len(ins.get()) == 1 })
	if got := ins.get(); got[0] != 4 {
		t.Errorf("batches %v, want one of 4", got)
	}
}
