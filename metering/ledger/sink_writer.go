package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/metering"
)

// Writer defaults. Each bound says what it protects.
const (
	// DefaultQueueSize bounds the records held in memory between Record and
	// the batching goroutine (about 1 KiB each).
	DefaultQueueSize = 4096
	// DefaultBatchSize caps one store transaction. On SQLite a record costs
	// 16-20 µs of CPU in batches of 64 and 13 µs in batches of 256
	// (BenchmarkStoreInsertBatch); 512 rows saved little more.
	DefaultBatchSize = 256
	// DefaultMinBatch and DefaultMinBatchAge: a batch that holds at least
	// DefaultMinBatch records and is at least DefaultMinBatchAge old is
	// committed as soon as the queue is empty, without waiting to fill. A
	// batch runs on the proxy's cores, and on one P a goroutine the network
	// made ready waits for the whole batch: runtime.Gosched does not poll
	// the network while the writer is still runnable. So light load commits
	// small batches (S2 at 500 req/s: added p99 1.6 ms with 256-row
	// batches, about 0.6 ms with these), and heavy load, which fills a batch
	// within the age, still commits full ones (S1: small batches cost 15%
	// more CPU per request).
	DefaultMinBatch    = 16
	DefaultMinBatchAge = 10 * time.Millisecond
	// DefaultBatchInterval is the longest a record waits for its batch to fill.
	DefaultBatchInterval = 200 * time.Millisecond
	// DefaultSyncInterval is the group-commit period of the spool: the window
	// in which an OS crash or power loss can lose accepted records.
	DefaultSyncInterval = 50 * time.Millisecond
	// DefaultSegmentBytes rotates spool segments so committed ones can be
	// deleted while the store keeps up.
	DefaultSegmentBytes = 4 << 20
	// DefaultMaxSpoolBytes bounds the spool on disk during a store outage:
	// about a million records.
	DefaultMaxSpoolBytes = 1 << 30
	// DefaultRetryMin and DefaultRetryMax bound the backoff between failed
	// store transactions.
	DefaultRetryMin = 100 * time.Millisecond
	DefaultRetryMax = 30 * time.Second
	// DefaultProbeInterval is how often the writer pings a store it cannot
	// reach, and so about how long it takes to notice the store is back.
	// RetryMax applies only while the store answers.
	DefaultProbeInterval = time.Second
	// replayEvery lets spool catch-up progress under sustained load: after
	// this many queue batches, one spool segment is replayed even if the
	// queue is not empty.
	replayEvery = 16
)

// WriterConfig configures a Writer. The zero value of every field but
// SpoolDir selects its default.
type WriterConfig struct {
	// SpoolDir is the directory of the durable spool. Required. One Writer
	// per directory: a lock file makes a second one fail with ErrSpoolLocked.
	SpoolDir string
	// QueueSize bounds the in-memory queue. When it is full, Record leaves
	// the record in the spool only (a spill) and the writer catches up from
	// disk. Default DefaultQueueSize.
	QueueSize int
	// BatchSize caps the records per store transaction. Default DefaultBatchSize.
	BatchSize int
	// MinBatch and MinBatchAge: a batch this large and this old is
	// committed once the queue is empty. Defaults DefaultMinBatch (capped at
	// BatchSize) and DefaultMinBatchAge.
	MinBatch    int
	MinBatchAge time.Duration
	// BatchInterval is the longest a queued record waits for its batch to
	// fill before the batch is written anyway. Default DefaultBatchInterval.
	BatchInterval time.Duration
	// SyncInterval is how often the spool is fsync'd when records were
	// appended (group commit). Ignored when SyncEveryRecord is set. Default
	// DefaultSyncInterval.
	SyncInterval time.Duration
	// SyncEveryRecord makes Record wait for an fsync covering its line before
	// returning; concurrent callers share one fsync. It closes the power-loss
	// window at the cost of an fsync latency (0.3 ms on a local virtio disk,
	// milliseconds on network disks) per Record.
	SyncEveryRecord bool
	// SegmentBytes is the size past which the active spool segment is
	// rotated. Default DefaultSegmentBytes.
	SegmentBytes int64
	// MaxSpoolBytes bounds the spool on disk. Past it Record can no longer
	// make records durable: it queues them in memory if there is room, else
	// drops them, counting and logging each in full. Default DefaultMaxSpoolBytes.
	MaxSpoolBytes int64
	// RetryMin and RetryMax bound the exponential backoff (with jitter)
	// between failed store transactions. Defaults DefaultRetryMin and
	// DefaultRetryMax; RetryMax must not be below RetryMin.
	RetryMin, RetryMax time.Duration
	// ProbeInterval caps the backoff while the store cannot be reached (a
	// lost connection, or a failed Ping): the writer then pings it this
	// often and retries as soon as a ping succeeds, however long the
	// outage lasted. Default DefaultProbeInterval.
	ProbeInterval time.Duration
	// Logger receives store and spool errors. Default slog.Default().
	Logger *slog.Logger
}

func (c WriterConfig) withDefaults() WriterConfig {
	if c.QueueSize == 0 {
		c.QueueSize = DefaultQueueSize
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.MinBatch == 0 {
		c.MinBatch = DefaultMinBatch
	}
	c.MinBatch = min(c.MinBatch, c.BatchSize)
	if c.MinBatchAge == 0 {
		c.MinBatchAge = DefaultMinBatchAge
	}
	if c.BatchInterval == 0 {
		c.BatchInterval = DefaultBatchInterval
	}
	if c.SyncInterval == 0 {
		c.SyncInterval = DefaultSyncInterval
	}
	if c.SegmentBytes == 0 {
		c.SegmentBytes = DefaultSegmentBytes
	}
	if c.MaxSpoolBytes == 0 {
		c.MaxSpoolBytes = DefaultMaxSpoolBytes
	}
	if c.RetryMin == 0 {
		c.RetryMin = DefaultRetryMin
	}
	if c.RetryMax == 0 {
		c.RetryMax = DefaultRetryMax
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = DefaultProbeInterval
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Validate reports every problem of c (after defaults), each naming its field.
func (c WriterConfig) Validate() error {
	c = c.withDefaults()
	var errs []error
	if c.SpoolDir == "" {
		errs = append(errs, errors.New("metering writer: SpoolDir is required"))
	}
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"QueueSize", int64(c.QueueSize)}, {"BatchSize", int64(c.BatchSize)}, {"MinBatch", int64(c.MinBatch)}, {"MinBatchAge", int64(c.MinBatchAge)},
		{"BatchInterval", int64(c.BatchInterval)}, {"SyncInterval", int64(c.SyncInterval)},
		{"SegmentBytes", c.SegmentBytes}, {"MaxSpoolBytes", c.MaxSpoolBytes},
		{"RetryMin", int64(c.RetryMin)}, {"RetryMax", int64(c.RetryMax)}, {"ProbeInterval", int64(c.ProbeInterval)},
	} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("metering writer: %s is negative (%d)", f.name, f.v))
		}
	}
	if c.RetryMax < c.RetryMin {
		errs = append(errs, fmt.Errorf("metering writer: RetryMax %v is below RetryMin %v", c.RetryMax, c.RetryMin))
	}
	return errors.Join(errs...)
}

// Writer is the durable Sink: Record appends the record to a local spool
// and enqueues it; one goroutine writes batches to the store, one fsyncs
// the spool. Both stop in Close.
//
// Durability. Record writes the record's line to the spool with one
// write(2) before it returns: from then on the record survives the process
// being killed (SIGKILL, OOM, panic). It survives an OS crash or power loss
// once fsync'd: within SyncInterval (default 50 ms), or before Record
// returns with SyncEveryRecord (group commit; one fsync per Record latency).
// A spool segment is deleted only after all its records are committed, and
// on SQLite each batch commits with synchronous=FULL so the deletion cannot
// outrun the database's own durability. Inserts are idempotent by request
// id, so replaying a segment (after a crash, a spill or an outage) never
// counts a request twice.
//
// Back-pressure. Record never waits for the store. When the queue is full
// the record stays in the spool only (Stats().Spilled) and the writer reads
// the segment back once it catches up. When the spool cannot take a record
// (write error, MaxSpoolBytes reached during a long outage) it goes to the
// queue only (Unspooled: lost if the process then dies), and if the queue
// is full too it is dropped (Dropped). Every unspooled or dropped record is
// logged at error level with the full record; an unspooled one still in
// memory when Close gives up on the store is logged and counted as dropped.
//
// Poison records. A batch the store keeps refusing is split; a single
// record refused quarantineAfter times is appended to quarantine.jsonl in
// the spool directory (Quarantined) instead of stalling every later record.
// Refusing means an error that is the record's fault (a constraint, a data
// exception; see classifyStoreErr), or an unclassified one while the store
// answers Ping. A store that cannot take any record (disk full, I/O error,
// locked, unreachable) never quarantines: the records wait in the spool
// until it recovers. ImportQuarantine replays the file once fixed.
type Writer struct {
	cfg  WriterConfig
	ins  Inserter
	sp   *spool
	jr   *journal
	q    chan queued
	log  *slog.Logger
	bufs sync.Pool

	// mu makes Close wait for Records in flight, so no record enters the
	// queue after the batching goroutine has drained it for the last time.
	mu     sync.RWMutex
	closed bool

	flushReq  chan chan struct{}
	stop      chan struct{}
	stopOnce  sync.Once
	cancel    context.CancelFunc
	done      chan struct{}
	syncStop  chan struct{}
	syncDone  chan struct{}
	closeErr  error
	closeOnce sync.Once

	accepted, spilled, unspooled, dropped   atomic.Uint64
	inserted, duplicates, retries, replayed atomic.Uint64
	tornLines, badLines, quarantined        atomic.Uint64
	syncErrors, batchesSince                atomic.Uint64
	journalErrors                           atomic.Uint64
	// caughtUp closes once the earlier processes' records are stored
	// (Replayed); only run closes it.
	caughtUp     chan struct{}
	caughtUpDone bool
}

type queued struct {
	r   *metering.Record
	seg uint64 // spool segment holding r; 0 when r is only in memory
	n   int64  // bytes of r's spool line
}

// NewWriter opens (and locks) the spool in cfg.SpoolDir, and starts the
// batching and fsync goroutines, which Close stops. Segments left by a
// previous process are replayed into ins first; the store may be down, in
// which case they are retried with backoff.
func NewWriter(cfg WriterConfig, ins Inserter) (*Writer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if ins == nil {
		return nil, errors.New("metering writer: nil Inserter")
	}
	cfg = cfg.withDefaults()
	sp, err := openSpool(cfg.SpoolDir, cfg.SegmentBytes, cfg.MaxSpoolBytes)
	if err != nil {
		return nil, err
	}
	if d, ok := ins.(durabler); ok {
		sp.beforeDelete = func() error { return d.Durable(context.Background()) }
	}
	jr, jst, err := openJournal(cfg.SpoolDir, func(path string, off int64, torn bool, err error) {
		if torn {
			cfg.Logger.Warn("metering: torn last in-flight journal line skipped (crash mid-write)", "file", path, "offset", off)
		} else {
			cfg.Logger.Error("metering: unreadable in-flight journal line skipped", "file", path, "offset", off, "err", err)
		}
	})
	if err != nil {
		sp.release()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &Writer{
		cfg: cfg, ins: ins, sp: sp, jr: jr, log: cfg.Logger,
		q:        make(chan queued, cfg.QueueSize),
		flushReq: make(chan chan struct{}),
		stop:     make(chan struct{}),
		cancel:   cancel,
		done:     make(chan struct{}),
		syncStop: make(chan struct{}),
		syncDone: make(chan struct{}),
		caughtUp: make(chan struct{}),
	}
	w.bufs.New = func() any { return new([]byte) }
	w.tornLines.Add(uint64(jst.torn))
	w.badLines.Add(uint64(jst.corrupt))
	go w.run(ctx)
	go w.syncLoop()
	return w, nil
}

// Record makes r durable in the spool and enqueues it for the store. It
// never blocks on the store: when the queue is full the record stays in the
// spool only and the writer reads it back later (counted in Spilled). If
// the spool cannot take it (disk error, MaxSpoolBytes) the record is queued
// in memory (Unspooled) or, failing that, dropped — counted in Dropped and
// logged at error level with the whole record so it can be recovered from
// the logs. After Close every record is dropped that way. Nothing is
// dropped silently. A record without a RequestID is given one.
func (w *Writer) Record(r *metering.Record) {
	if r == nil {
		return
	}
	w.accepted.Add(1)
	if r.RequestID == "" {
		// The request id is the idempotency key: records sharing "" would
		// collapse into one row. Name it here, before it is spooled, so a
		// replay keeps the same id.
		r.RequestID = "tollgate-noid-" + strconv.FormatUint(rand.Uint64(), 36)
		w.log.Warn("metering: usage record without request id; generated one", "request_id", r.RequestID)
	}
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		w.drop(r, "writer closed")
		return
	}
	b := w.bufs.Get().(*[]byte)
	line, err := appendSpoolLine((*b)[:0], r)
	var seg, lineNo uint64
	n := int64(len(line))
	if err == nil {
		seg, lineNo, err = w.sp.append(line)
		*b = line
	}
	if err == nil {
		// The record is in the spool: its request may leave the journal.
		// (One only memory holds leaves it once committed.)
		w.jr.end(r.RequestID)
	}
	if cap(*b) <= 64<<10 { // don't keep a pathological buffer pooled
		w.bufs.Put(b)
	}
	if err == nil && w.cfg.SyncEveryRecord {
		if serr := w.sp.syncTo(lineNo); serr != nil {
			w.syncErrors.Add(1)
			w.log.Error("metering: spool fsync failed", "err", serr)
		}
	}
	select {
	case w.q <- queued{r: r, seg: seg, n: n}:
		if err != nil {
			// The whole record: if the store cannot take it before the
			// process ends, this line is its only copy.
			w.unspooled.Add(1)
			w.log.Error("metering: spool append failed; record held in memory only", "request_id", r.RequestID, "err", err, "record", recordForLog(r))
		}
	default:
		if err != nil {
			w.drop(r, "queue full and spool append failed: "+err.Error())
			return
		}
		w.spilled.Add(1)
		w.sp.markSpilled(seg)
	}
}

// Begin notes that r's request is being sent to the provider: its start
// line goes to the in-flight journal with one write(2), so that if the
// process dies before r's record is made, the next Writer on the spool
// records the request as interrupted (with usage missing, or what Progress
// last saw), under r's request id. Record of the same id ends it. r is read
// and not kept. Begin never waits for the disk to sync (it rides the group
// fsync, even with SyncEveryRecord) nor for the store.
func (w *Writer) Begin(r *metering.Record) {
	if r != nil {
		w.journalErr(w.jr.begin(r))
	}
}

// Progress notes the usage r's open request has shown so far (r.Usage, and
// its cost), replacing what an interrupted record would carry. The caller
// rate-limits it; it costs one write(2). r is read and not kept.
func (w *Writer) Progress(r *metering.Record) {
	if r != nil {
		w.journalErr(w.jr.progress(r))
	}
}

// journalErr logs a failed journal write: the first, then every 1000th.
// The request is not failed for it; only its crash record is at risk.
func (w *Writer) journalErr(err error) {
	if err == nil {
		return
	}
	if n := w.journalErrors.Add(1); n == 1 || n%1000 == 0 {
		w.log.Error("metering: in-flight journal write failed; a crash now may leave these requests without a record", "errors", n, "err", err)
	}
}

func (w *Writer) drop(r *metering.Record, why string) {
	w.dropped.Add(1)
	w.log.Error("metering: usage record dropped", "reason", why, "request_id", r.RequestID, "record", recordForLog(r))
}

// recordForLog is r whole for a log line, from which it can be recovered
// by hand: its JSON, or Go's rendering of it when it has none (a start
// time past year 9999). Records hold no secret (ids, not keys or tokens).
func recordForLog(r *metering.Record) string {
	if b, err := json.Marshal(r); err == nil {
		return string(b)
	}
	return fmt.Sprintf("%+v", *r)
}

// Flush returns once every record accepted before the call is committed to
// the store (including spilled ones), or with ctx's error. A store outage
// makes Flush wait until ctx expires; the records stay in the spool.
func (w *Writer) Flush(ctx context.Context) error {
	reply := make(chan struct{}, 1)
	select {
	case w.flushReq <- reply:
	case <-w.done:
		return ErrWriterClosed
	case <-ctx.Done():
		return fmt.Errorf("metering flush: %w", ctx.Err())
	}
	select {
	case <-reply:
		return nil
	case <-w.done:
		return ErrWriterClosed
	case <-ctx.Done():
		return fmt.Errorf("metering flush: %w", ctx.Err())
	}
}

// Close stops accepting records (later ones are dropped and logged), writes
// everything queued or spilled to the store, fsyncs and closes the spool.
// If ctx expires first, the store writes are abandoned and the remaining
// records stay in the spool, replayed by the next Writer on the directory;
// the error says how many bytes were left. Close is the shutdown step
// "flush metering"; calling it again returns the first result.
func (w *Writer) Close(ctx context.Context) error {
	w.closeOnce.Do(func() {
		w.mu.Lock()
		w.closed = true
		w.mu.Unlock()
		w.stopOnce.Do(func() { close(w.stop) })
		var ctxErr error
		select {
		case <-w.done:
		case <-ctx.Done():
			ctxErr = ctx.Err()
			w.cancel()
			<-w.done // run returns promptly once its context is cancelled
		}
		w.cancel()
		close(w.syncStop)
		<-w.syncDone
		ends := w.jr.takeEnds()
		err := w.sp.close()
		// After the spool's last fsync, so no end outlives its record.
		err = errors.Join(err, w.jr.close(ends))
		if ctxErr != nil {
			n, _, segs := w.sp.stats()
			err = errors.Join(fmt.Errorf("metering close: %d bytes in %d spool segments left for replay: %w", n, segs, ctxErr), err)
		}
		w.closeErr = err
	})
	return w.closeErr
}

// Stats returns the writer's counters.
func (w *Writer) Stats() metering.WriterStats {
	disk, backlog, n := w.sp.stats()
	return metering.WriterStats{
		Accepted: w.accepted.Load(), Spilled: w.spilled.Load(), Unspooled: w.unspooled.Load(),
		Dropped: w.dropped.Load(), Inserted: w.inserted.Load(), Duplicates: w.duplicates.Load(),
		Retries: w.retries.Load(), Replayed: w.replayed.Load(), TornLines: w.tornLines.Load(),
		BadLines: w.badLines.Load(), SyncErrors: w.syncErrors.Load(), Quarantined: w.quarantined.Load(), Queued: len(w.q), SpoolBytes: backlog, SpoolDisk: disk, Segments: n,
	}
}

func (w *Writer) syncLoop() {
	defer close(w.syncDone)
	t := time.NewTicker(w.cfg.SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			// Ends taken before the spool's fsync are of records it covers.
			ends := w.jr.takeEnds()
			if err := w.sp.syncAll(); err != nil {
				w.syncErrors.Add(1)
				w.log.Error("metering: spool fsync failed", "err", err)
			}
			w.journalErr(w.jr.writeEnds(ends))
			if err := w.jr.sync(); err != nil {
				w.syncErrors.Add(1)
				w.log.Error("metering: in-flight journal fsync failed", "err", err)
			}
		case <-w.syncStop:
			return
		}
	}
}

// run is the batching goroutine. It owns batch and all store writes.
func (w *Writer) run(ctx context.Context) {
	defer close(w.done)
	batch := make([]queued, 0, w.cfg.BatchSize)
	defer func() { w.dropUnspooled(batch) }()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var timerC <-chan time.Time
	var opened time.Time // when the batch got its first record
	commit := func() bool {
		timerC = nil
		timer.Stop()
		if len(batch) == 0 {
			return true
		}
		if !w.commitQueued(ctx, batch) {
			return false
		}
		clear(batch)
		batch = batch[:0]
		return true
	}
	for {
		if ctx.Err() != nil {
			return
		}
		// Catch up from the spool when the queue is idle, and now and then
		// under load so spills and a previous process's records progress.
		if len(batch) == 0 && (len(w.q) == 0 || w.batchesSince.Load() >= replayEvery) {
			w.batchesSince.Store(0)
			if w.replayOne(ctx) || w.settleInterrupted(ctx) {
				continue
			}
			w.noteCaughtUp()
		}
		select {
		case q := <-w.q:
			batch = append(batch, q)
			if len(batch) == 1 {
				timer.Reset(w.cfg.BatchInterval)
				timerC = timer.C
				opened = time.Now()
			}
			full := len(batch) == w.cfg.BatchSize ||
				(len(batch) >= w.cfg.MinBatch && len(w.q) == 0 && time.Since(opened) >= w.cfg.MinBatchAge)
			if full && !commit() {
				return
			}
		case <-timerC:
			if !commit() {
				return
			}
		case reply := <-w.flushReq:
			if !commit() || !w.drain(ctx, &batch) {
				return
			}
			reply <- struct{}{}
		case <-w.stop:
			if commit() {
				w.drain(ctx, &batch)
			}
			return
		case <-ctx.Done():
			return
		}
	}
}

// dropUnspooled logs as dropped, each in full, the records of batch and of
// the queue that only memory holds, when the writer stops (Close's
// deadline) before the store took them. Spooled ones stay for the next
// Writer. A record a split batch already committed may be among them: a
// duplicate in the logs, not a loss.
func (w *Writer) dropUnspooled(batch []queued) {
	for _, q := range batch {
		if q.seg == 0 {
			w.drop(q.r, "writer stopped before the store took it, and it is not in the spool")
		}
	}
	for {
		select {
		case q := <-w.q:
			if q.seg == 0 {
				w.drop(q.r, "writer stopped before the store took it, and it is not in the spool")
			}
		default:
			return
		}
	}
}

// drain commits what is queued now and replays every pending spool segment
// (sealing the active one first if it holds spills). It returns false if
// ctx ended first.
func (w *Writer) drain(ctx context.Context, batch *[]queued) bool {
	for n := len(w.q); n > 0; n-- {
		*batch = append(*batch, <-w.q)
		if len(*batch) == w.cfg.BatchSize || n == 1 {
			if !w.commitQueued(ctx, *batch) {
				return false
			}
			clear(*batch)
			*batch = (*batch)[:0]
		}
	}
	for w.replayOne(ctx) {
	}
	w.settleInterrupted(ctx)
	w.noteCaughtUp()
	return ctx.Err() == nil
}

// Replayed is closed once every record the earlier processes on the spool
// directory left, in spool segments or as requests open in their in-flight
// journal, is in the store: what they did is then all accounted for (the
// budget ledger settles their reclaimed allotments from it). It stays
// open while the store cannot take them.
func (w *Writer) Replayed() <-chan struct{} { return w.caughtUp }

// noteCaughtUp closes caughtUp when nothing an earlier process left is
// still to be stored. Called by run only.
func (w *Writer) noteCaughtUp() {
	if w.caughtUpDone || w.sp.oldLeft() {
		return
	}
	if _, open := w.jr.interrupted(); open {
		return
	}
	w.caughtUpDone = true
	close(w.caughtUp)
}

// commitQueued writes one batch from the queue, retrying until it commits
// or ctx ends, then credits the spool segments.
func (w *Writer) commitQueued(ctx context.Context, batch []queued) bool {
	recs := make([]*metering.Record, len(batch))
	for i, q := range batch {
		recs[i] = q.r
	}
	if !w.insert(ctx, recs) {
		return false
	}
	w.batchesSince.Add(1)
	counts := make(map[uint64]segCommit, 2)
	for _, q := range batch {
		if q.seg == 0 {
			// Only memory held it, and now the store does.
			w.jr.end(q.r.RequestID)
		}
		if q.seg != 0 {
			c := counts[q.seg]
			c.records++
			c.bytes += q.n
			counts[q.seg] = c
		}
	}
	for _, err := range w.sp.commit(counts) {
		w.log.Error("metering: spool segment delete failed", "err", err)
	}
	return true
}

// durabler is implemented by inserters whose commits may not be on stable
// storage yet (*Store: SQLite skips the fsync per commit, PostgreSQL commits
// without waiting for the WAL flush); the spool keeps a segment until Durable
// returned without error.
type durabler interface {
	Durable(ctx context.Context) error
}

// pinger is implemented by inserters that can tell a store outage from a
// record the store rejects (*Store).
type pinger interface {
	Ping(ctx context.Context) error
}

// Poison handling: a record the store always rejects must not stall every
// record behind it. Only when the store answers pings is a failing batch
// split, and a single record that keeps failing set aside.
const (
	// splitAfter is the attempts after which a failing batch is split in halves.
	splitAfter = 3
	// quarantineAfter is the attempts after which a single failing record
	// is written to the quarantine file instead (about 13 s at the
	// default backoff).
	quarantineAfter = 8
	// quarantineName is the file, in the spool directory, of records the
	// store rejected: JSON lines with the error, for a human to fix and
	// re-import (ImportQuarantine, tollgate usage import-quarantine).
	// Replay ignores it.
	quarantineName = "quarantine.jsonl"
)

// insert retries one transaction with exponential backoff and jitter until
// it commits (true) or ctx ends (false; the records are still spooled).
// The backoff grows to RetryMax only while the store answers; a store that
// cannot be reached is pinged every ProbeInterval instead, and the
// transaction retried as soon as it answers.
func (w *Writer) insert(ctx context.Context, recs []*metering.Record) bool {
	delay := w.cfg.RetryMin
	for attempt := 1; ; attempt++ {
		n, err := w.ins.InsertBatch(ctx, recs)
		if err == nil {
			w.inserted.Add(uint64(n))
			w.duplicates.Add(uint64(len(recs) - n))
			if attempt > 1 {
				w.log.Info("metering: store write recovered", "attempts", attempt, "records", len(recs))
			}
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		w.retries.Add(1)
		fault := classifyStoreErr(err)
		// answers: the store was reached and said no, rather than not reached.
		answers := fault == faultRecord || (!store.Unreachable(err) && w.ping(ctx) == nil)
		sleep := delay/2 + rand.N(delay/2+1)
		if !answers {
			sleep = min(sleep, w.cfg.ProbeInterval)
		}
		// Log the first failure and then every tenth so an outage is visible
		// without one line per retry.
		if attempt == 1 || attempt%10 == 0 {
			w.log.Error("metering: store write failed; records stay in the spool", "attempt", attempt, "records", len(recs), "store_answers", answers, "retry_in", sleep, "err", err)
		}
		if w.refuses(fault, answers) {
			if len(recs) > 1 && attempt >= splitAfter {
				mid := len(recs) / 2
				return w.insert(ctx, recs[:mid]) && w.insert(ctx, recs[mid:])
			}
			if len(recs) == 1 && attempt >= quarantineAfter {
				if w.quarantine(recs[0], err) {
					return true
				}
				// Not set aside (the spool's disk is full too?): the
				// record stays in the spool and is retried.
			}
		}
		if !sleepCtx(ctx, sleep) || !answers && !w.awaitStore(ctx) {
			return false
		}
		delay = min(delay*2, w.cfg.RetryMax)
	}
}

// awaitStore pings a store that could not be reached, every ProbeInterval,
// until it answers (true) or ctx ends (false). An inserter without Ping
// is retried instead: its next transaction is the probe.
func (w *Writer) awaitStore(ctx context.Context) bool {
	since := time.Now()
	for probe := 1; ; probe++ {
		start := time.Now()
		err := w.ping(ctx)
		if err == nil || errors.Is(err, errNoPing) {
			return true
		}
		// The outage stays visible in the log without a line per probe.
		if probe%60 == 0 {
			w.log.Error("metering: store still unreachable; records stay in the spool", "for", time.Since(since).Round(time.Second), "probes", probe, "err", err)
		}
		if !sleepCtx(ctx, w.cfg.ProbeInterval-time.Since(start)) {
			return false
		}
	}
}

var errNoPing = errors.New("metering store has no Ping")

// ping asks the store whether it answers, within ProbeInterval: a store
// whose host is gone lets a connection attempt hang far longer.
func (w *Writer) ping(ctx context.Context) error {
	p, ok := w.ins.(pinger)
	if !ok {
		return errNoPing
	}
	ctx, cancel := context.WithTimeout(ctx, w.cfg.ProbeInterval)
	defer cancel()
	return p.Ping(ctx)
}

// sleepCtx sleeps d, or until ctx ends (false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// refuses says a failure of fault is the records' fault, not the store's:
// only then may a batch be split and a record quarantined. A disk-full,
// locked or unreachable store is never the records' fault, even while it
// answers Ping (SQLite on a full disk does): they wait in the spool. An
// unclassified error is the records' only while the store answers.
func (w *Writer) refuses(fault storeFault, answers bool) bool {
	switch fault {
	case faultStore:
		return false
	case faultRecord:
		return true
	}
	return answers
}

// quarantine sets aside a record the store keeps rejecting while it
// answers: appended and fsync'd to the quarantine file, and logged in full.
// It reports false when the file cannot be written: the record is then
// still in the spool, and dropping it would lose it to a full disk.
func (w *Writer) quarantine(r *metering.Record, cause error) bool {
	line, err := json.Marshal(quarantineEntry{cause.Error(), r})
	if err != nil {
		// No line to keep, and a retry would have none either.
		w.drop(r, "store rejects it ("+cause.Error()+") and it does not encode: "+err.Error())
		return true
	}
	if err := appendQuarantine(w.cfg.SpoolDir, append(line, '\n')); err != nil {
		w.log.Error("metering: store rejects usage record and quarantine failed; it stays in the spool", "request_id", r.RequestID, "err", cause, "quarantine_err", err, "record", string(line))
		return false
	}
	w.quarantined.Add(1)
	w.log.Error("metering: store rejects usage record; quarantined", "request_id", r.RequestID, "file", quarantineName, "err", cause, "record", string(line))
	return true
}

func appendSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	size := int64(-1)
	if st, serr := f.Stat(); serr == nil {
		size = st.Size()
	}
	if _, err = f.Write(b); err != nil && size >= 0 {
		// Cut a partial line off so the next attempt's line starts
		// on a line of its own.
		f.Truncate(size)
	}
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// replayOne reads back one spool segment flagged for replay and inserts its
// records (duplicates are ignored by the store). It reports whether there
// was one.
func (w *Writer) replayOne(ctx context.Context) bool {
	if err := w.sp.sealForReplay(); err != nil {
		w.log.Error("metering: spool seal failed", "err", err)
	}
	seq, path, ok := w.sp.nextReplay()
	if !ok {
		return false
	}
	st, err := readSpool(path, w.cfg.BatchSize, func(recs []*metering.Record) error {
		w.replayed.Add(uint64(len(recs)))
		if !w.insert(ctx, recs) {
			return ctx.Err()
		}
		return nil
	}, func(off int64, torn bool, err error) {
		if torn {
			w.log.Warn("metering: torn last spool line skipped (crash mid-write)", "segment", path, "offset", off)
		} else {
			w.log.Error("metering: unreadable spool line skipped", "segment", path, "offset", off, "err", err)
		}
	})
	w.tornLines.Add(uint64(st.torn))
	w.badLines.Add(uint64(st.corrupt))
	if err != nil {
		if ctx.Err() == nil {
			// An I/O error reading our own spool: leave the file, log, and
			// do not spin on it.
			w.log.Error("metering: spool replay failed; segment kept", "segment", path, "err", err)
			w.sp.replayed(seq, true)
		}
		return ctx.Err() == nil
	}
	if err := w.sp.replayed(seq, st.corrupt > 0); err != nil {
		w.log.Error("metering: spool segment delete failed", "err", err)
	}
	return true
}

// settleInterrupted records the requests an earlier process left in flight
// as interrupted, once its spool segments are replayed: a final record that
// made it to the spool wins, and one already committed makes the
// interrupted one a no-op (same request id). Then the journal files go.
// It reports whether there was anything to settle and it is done.
func (w *Writer) settleInterrupted(ctx context.Context) bool {
	recs, ok := w.jr.interrupted()
	if !ok || w.sp.oldLeft() {
		return false
	}
	before := w.inserted.Load()
	for chunk := range slices.Chunk(recs, w.cfg.BatchSize) {
		if !w.insert(ctx, chunk) {
			return false
		}
	}
	if err := w.sp.durable(); err != nil {
		w.log.Error("metering: interrupted requests recorded but the store is not synced; journal kept", "err", err)
		return false
	}
	if len(recs) > 0 {
		w.log.Warn("metering: requests in flight when the previous process ended recorded as interrupted",
			"requests", len(recs), "new_rows", w.inserted.Load()-before)
	}
	if err := w.jr.settled(); err != nil {
		w.log.Error("metering: in-flight journal delete failed", "err", err)
	}
	return true
}
