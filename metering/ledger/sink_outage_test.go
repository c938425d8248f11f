package ledger

import (
	"context"
	"io"
	"net"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/metering"
)

// unreachableStore is a real store behind a switch: until its upAfter-th
// contact (a transaction or a ping) has failed, every contact fails as a
// refused TCP connection does; from then on the store answers. It marks
// when it came back and when the first transaction after that committed.
type unreachableStore struct {
	next    *Store
	upAfter int64

	contacts, pings             atomic.Int64
	downAt, upAt, resumedAt     atomic.Int64 // UnixNano; 0 until it happens
	insertsDown, insertsResumed atomic.Int64
}

func (u *unreachableStore) contact() error {
	n := u.contacts.Add(1)
	if u.upAt.Load() != 0 {
		return nil
	}
	now := time.Now().UnixNano()
	u.downAt.CompareAndSwap(0, now)
	if n == u.upAfter {
		u.upAt.Store(now)
	}
	return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
}

func (u *unreachableStore) InsertBatch(ctx context.Context, recs []*metering.Record) (int, error) {
	if err := u.contact(); err != nil {
		u.insertsDown.Add(1)
		return 0, err
	}
	n, err := u.next.InsertBatch(ctx, recs)
	if err == nil && u.resumedAt.CompareAndSwap(0, time.Now().UnixNano()) {
		u.insertsResumed.Add(1)
	}
	return n, err
}

func (u *unreachableStore) Ping(ctx context.Context) error {
	u.pings.Add(1)
	if err := u.contact(); err != nil {
		return err
	}
	return u.next.Ping(ctx)
}

// TestWriterResumesSoonAfterStoreReturns: after an outage long enough for
// the exponential backoff to have grown past a second, the writer resumes
// within about one probe interval of the store's return, not after the
// rest of its backoff sleep. The store comes back right after its ninth
// failed contact: without probing, the ninth failed transaction is
// followed by a sleep of at least 1.28 s (10 ms doubled eight times,
// halved by the jitter), which the bound below (0.5 s) excludes.
func TestWriterResumesSoonAfterStoreReturns(t *testing.T) {
	u := &unreachableStore{next: mustUsageStore(t, "sqlite"), upAfter: 9}
	cfg := fastWriterConfig(t.TempDir())
	cfg.RetryMin, cfg.RetryMax = 10*time.Millisecond, time.Minute
	cfg.ProbeInterval = 50 * time.Millisecond
	w := mustWriter(t, cfg, u)
	w.Record(usageRecordN("outage-0", 0, usageDay))
	testkit.Eventually(t, 20*time.Second, "the write resumed", func() bool { return u.resumedAt.Load() != 0 })
	down := time.Duration(u.upAt.Load() - u.downAt.Load())
	lag := time.Duration(u.resumedAt.Load() - u.upAt.Load())
	t.Logf("store down %v (%d failed transactions, %d pings); the write resumed %v after it returned",
		down.Round(time.Millisecond), u.insertsDown.Load(), u.pings.Load(), lag.Round(time.Millisecond))
	if bound := 10 * cfg.ProbeInterval; lag > bound {
		t.Errorf("the write resumed %v after the store returned, want within %v (probe interval %v)", lag, bound, cfg.ProbeInterval)
	}
	mustFlush(t, w)
	assertAllOnce(t, u.next, []string{"outage-0"})
}

// pgGate forwards TCP connections to PostgreSQL until cut: cutting closes
// every connection through it and refuses new ones (accepted and closed
// at once), as a database server that went away does.
type pgGate struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  map[net.Conn]struct{}
}

func newPGGate(t *testing.T, target string) *pgGate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &pgGate{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() { ln.Close(); g.set(true) })
	go g.serve()
	return g
}

func (g *pgGate) serve() {
	for {
		c, err := g.ln.Accept()
		if err != nil {
			return
		}
		g.mu.Lock()
		down := g.down
		g.mu.Unlock()
		if down {
			c.Close()
			continue
		}
		go g.forward(c)
	}
}

func (g *pgGate) forward(c net.Conn) {
	up, err := net.DialTimeout("tcp", g.target, 2*time.Second)
	if err != nil {
		c.Close()
		return
	}
	g.mu.Lock()
	g.conns[c], g.conns[up] = struct{}{}, struct{}{}
	g.mu.Unlock()
	go func() { io.Copy(up, c); up.Close() }()
	io.Copy(c, up)
	c.Close()
}

// set cuts (true) or restores (false) the gate.
func (g *pgGate) set(down bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.down = down
	if down {
		for c := range g.conns {
			c.Close()
		}
		clear(g.conns)
	}
}

// TestWriterResumesAfterPostgresReturns: the same, on real PostgreSQL
// through a gate the test cuts for 3 s: real pgx errors (a connection
// reset, then refused) put the writer into probing, and it writes within a
// few probe intervals of the gate reopening.
func TestWriterResumesAfterPostgresReturns(t *testing.T) {
	pg := os.Getenv("TOLLGATE_TEST_POSTGRES")
	if pg == "" {
		t.Skip("TOLLGATE_TEST_POSTGRES not set")
	}
	u, err := url.Parse(testkit.PostgresSchema(t, pg, "writer_outage_"))
	if err != nil {
		t.Fatal(err)
	}
	gate := newPGGate(t, u.Host)
	u.Host = gate.ln.Addr().String()
	ctx := context.Background()
	db, err := store.Open(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s, err := OpenStore(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	cfg := fastWriterConfig(t.TempDir())
	cfg.RetryMin, cfg.RetryMax = 10*time.Millisecond, time.Minute
	cfg.ProbeInterval = 100 * time.Millisecond
	w := mustWriter(t, cfg, s)
	w.Record(usageRecordN("pg-outage-0", 0, usageDay))
	mustFlush(t, w)

	gate.set(true)
	w.Record(usageRecordN("pg-outage-1", 1, usageDay))
	testkit.Eventually(t, 10*time.Second, "a failed write", func() bool { return w.Stats().Retries > 0 })
	time.Sleep(3 * time.Second)
	gate.set(false)
	up := time.Now()
	testkit.Eventually(t, 30*time.Second, "the write after the outage", func() bool { return w.Stats().Inserted == 2 })
	lag := time.Since(up)
	t.Logf("PostgreSQL back; the write resumed %v later (%d retries)", lag.Round(time.Millisecond), w.Stats().Retries)
	if bound := 10 * cfg.ProbeInterval; lag > bound {
		t.Errorf("the write resumed %v after PostgreSQL returned, want within %v", lag, bound)
	}
	assertAllOnce(t, s, []string{"pg-outage-0", "pg-outage-1"})
}

// answeringStore fails every transaction with an error of its own (a full
// disk) while it answers Ping.
type answeringStore struct{ attempts atomic.Int64 }

func (a *answeringStore) InsertBatch(context.Context, []*metering.Record) (int, error) {
	a.attempts.Add(1)
	return 0, &pgconn.PgError{Code: "53100", Message: "could not extend file: No space left on device"}
}

func (a *answeringStore) Ping(context.Context) error { return nil }

// TestWriterBacksOffFromAStoreThatAnswers: the probe interval caps the
// backoff only for a store that cannot be reached; one that answers each
// transaction with an error keeps the exponential backoff. In one second
// from 10 ms, that is at most 9 attempts (the sleeps, halved by jitter,
// add up past a second by then); probing every 5 ms would be over 100.
func TestWriterBacksOffFromAStoreThatAnswers(t *testing.T) {
	a := &answeringStore{}
	cfg := fastWriterConfig(t.TempDir())
	cfg.RetryMin, cfg.RetryMax = 10*time.Millisecond, time.Minute
	cfg.ProbeInterval = 5 * time.Millisecond
	w := mustWriter(t, cfg, a)
	w.Record(usageRecordN("answering-0", 0, usageDay))
	testkit.Eventually(t, 5*time.Second, "a first attempt", func() bool { return a.attempts.Load() > 0 })
	time.Sleep(time.Second)
	if n := a.attempts.Load(); n > 10 {
		t.Errorf("%d attempts in about a second against a store that answers; want exponential backoff (at most 10)", n)
	}
	if st := w.Stats(); st.Quarantined != 0 {
		t.Errorf("quarantined %d records for a full disk", st.Quarantined)
	}
	// The record stays in the spool; Close need not wait out the backoff.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	w.Close(ctx)
}
