package store_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/internal/testkit"
)

// listenDSN returns the test PostgreSQL DSN with an application_name of the
// test's own, so the test can find its listener's backend in
// pg_stat_activity (as app+"-listen") without touching anyone else's.
func listenDSN(t *testing.T) (dsn, app string) {
	t.Helper()
	pg := os.Getenv("TOLLGATE_TEST_POSTGRES")
	if pg == "" {
		t.Skip("TOLLGATE_TEST_POSTGRES not set")
	}
	app = "h5test" + randHex()
	u, err := url.Parse(pg)
	if err != nil {
		t.Fatalf("TOLLGATE_TEST_POSTGRES: %v", err)
	}
	q := u.Query()
	q.Set("application_name", app)
	u.RawQuery = q.Encode()
	return u.String(), app
}

func randHex() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func openPG(t *testing.T, dsn string) *store.DB {
	t.Helper()
	db, err := store.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

type note struct {
	payload string
	at      time.Time
}

// recorder is a ListenHandler's other end: what Listen reported, and when.
type recorder struct {
	mu       sync.Mutex
	connects int
	downs    []error
	notes    chan note
	logs     testkit.LogBuffer
}

func newRecorder() *recorder { return &recorder{notes: make(chan note, 1000)} }

func (r *recorder) handler() store.ListenHandler {
	return store.ListenHandler{
		OnNotify: func(p string) { r.notes <- note{p, time.Now()} },
		OnConnect: func() {
			r.mu.Lock()
			r.connects++
			r.mu.Unlock()
		},
		OnDown: func(err error) {
			r.mu.Lock()
			r.downs = append(r.downs, err)
			r.mu.Unlock()
		},
		Log: slog.New(slog.NewTextHandler(&r.logs, nil)),
	}
}

func (r *recorder) counts() (connects, downs int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.connects, len(r.downs)
}

// next returns the next notification, failing the test after a generous
// bound.
func (r *recorder) next(t *testing.T) note {
	t.Helper()
	select {
	case n := <-r.notes:
		return n
	case <-time.After(10 * time.Second):
		t.Fatal("no notification within 10s")
		return note{}
	}
}

// startListen runs Listen until the returned cancel (or the test's end).
func startListen(t *testing.T, db *store.DB, channel string, h store.ListenHandler) (context.CancelFunc, <-chan error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ended := make(chan struct{})
	go func() {
		done <- db.Listen(ctx, channel, h)
		close(ended)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-ended:
		case <-time.After(10 * time.Second):
			t.Error("Listen did not return within 10s of its context ending")
		}
	})
	return cancel, done
}

// stopListen cancels a Listen started by startListen and fails unless it
// returns nil within 5 s; it reports how long the return took.
func stopListen(t *testing.T, cancel context.CancelFunc, done <-chan error, what string) time.Duration {
	t.Helper()
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: Listen returned %v after its context ended, want nil", what, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: Listen still running 5s after its context ended", what)
	}
	return time.Since(start)
}

func waitConnects(t *testing.T, r *recorder, n int) {
	t.Helper()
	testkit.Eventually(t, 15*time.Second, "OnConnect #"+strconv.Itoa(n), func() bool {
		c, _ := r.counts()
		return c >= n
	})
}

// notify sends payload in a transaction that commits or rolls back, and
// returns when the commit was called and how long it took.
func notify(t *testing.T, db *store.DB, channel, payload string, commit bool) (time.Time, time.Duration) {
	t.Helper()
	ctx := context.Background()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Notify(ctx, tx, channel, payload); err != nil {
		tx.Rollback()
		t.Fatal(err)
	}
	start := time.Now()
	if !commit {
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		return start, 0
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return start, time.Since(start)
}

func listenBackends(t *testing.T, db *store.DB, app string) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1`, app+"-listen").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A notification is delivered when its transaction commits and not before;
// one in a transaction that rolls back never is. The channel name needs
// quoting in LISTEN (upper case, '-', '.') and must still match pg_notify's.
// Another replica's self-test on the channel is not passed on.
func TestNotifyDeliveredOnlyOnCommit(t *testing.T) {
	dsn, _ := listenDSN(t)
	db := openPG(t, dsn)
	channel := "H5-Test." + randHex()
	r := newRecorder()
	startListen(t, db, channel, r.handler())
	waitConnects(t, r, 1)
	other := newRecorder()
	startListen(t, db, channel, other.handler())
	waitConnects(t, other, 1)

	notify(t, db, channel, "rolled back", false)
	ctx := context.Background()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Notify(ctx, tx, channel, "committed"); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-r.notes:
		t.Fatalf("got %q before the commit", n.payload)
	case <-time.After(300 * time.Millisecond):
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	// Notifications arrive in commit order, so a delivered rollback would
	// come first.
	if n := r.next(t); n.payload != "committed" {
		t.Fatalf("first notification %q, want %q", n.payload, "committed")
	}
	notify(t, db, channel, "second", true)
	if n := r.next(t); n.payload != "second" {
		t.Fatalf("got %q, want %q", n.payload, "second")
	}
	if c, d := r.counts(); c != 1 || d != 0 {
		t.Fatalf("OnConnect %d times, OnDown %d times; want 1 and 0", c, d)
	}
}

// Prints the latency from the Commit call to OnNotify (no bound asserted:
// the machine is shared); asserts every notification arrives, in order.
func TestListenLatency(t *testing.T) {
	dsn, _ := listenDSN(t)
	db := openPG(t, dsn)
	channel := "h5test_" + randHex()
	r := newRecorder()
	startListen(t, db, channel, r.handler())
	waitConnects(t, r, 1)

	const n = 200
	lat := make([]time.Duration, 0, n)
	commits := make([]time.Duration, 0, n)
	for i := range n {
		start, took := notify(t, db, channel, strconv.Itoa(i), true)
		got := r.next(t)
		if got.payload != strconv.Itoa(i) {
			t.Fatalf("notification %d: payload %q", i, got.payload)
		}
		lat = append(lat, got.at.Sub(start))
		commits = append(commits, took)
	}
	slices.Sort(lat)
	slices.Sort(commits)
	q := func(d []time.Duration, p float64) time.Duration { return d[int(p*float64(len(d)-1))] }
	t.Logf("%d notifies, commit call -> OnNotify: p50 %v p99 %v max %v (commit itself p50 %v p99 %v)",
		n, q(lat, 0.5), q(lat, 0.99), lat[n-1], q(commits, 0.5), q(commits, 0.99))
}

// A terminated listener backend is noticed, reported once through OnDown,
// replaced by a fresh connection, and OnConnect runs again so the caller's
// catch-up poll covers what was sent while it was down (PostgreSQL keeps
// none of it). Old backends do not linger, and the outage is logged once.
func TestListenReconnectsAfterTerminate(t *testing.T) {
	dsn, app := listenDSN(t)
	db := openPG(t, dsn)
	channel := "h5test_" + randHex()
	r := newRecorder()
	startListen(t, db, channel, r.handler())
	waitConnects(t, r, 1)
	if got := listenBackends(t, db, app); got != 1 {
		t.Fatalf("%d backends named %s-listen, want 1", got, app)
	}

	for round := 2; round <= 3; round++ {
		var killed int
		start := time.Now()
		if err := db.QueryRowContext(context.Background(),
			`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1`, app+"-listen").Scan(&killed); err != nil {
			t.Fatal(err)
		}
		if killed != 1 {
			t.Fatalf("terminated %d listener backends, want 1", killed)
		}
		waitConnects(t, r, round)
		t.Logf("round %d: terminate -> OnConnect again in %v", round, time.Since(start).Round(time.Millisecond))
		if c, d := r.counts(); c != round || d != round-1 {
			t.Fatalf("OnConnect %d times, OnDown %d times; want %d and %d", c, d, round, round-1)
		}
		r.mu.Lock()
		down := r.downs[len(r.downs)-1]
		r.mu.Unlock()
		if !strings.Contains(down.Error(), "57P01") {
			t.Errorf("OnDown(%v), want the termination (57P01)", down)
		}
		if got := listenBackends(t, db, app); got != 1 {
			t.Fatalf("%d backends named %s-listen after reconnecting, want 1", got, app)
		}
		p := "after-" + strconv.Itoa(round)
		notify(t, db, channel, p, true)
		if n := r.next(t); n.payload != p {
			t.Fatalf("got %q, want %q", n.payload, p)
		}
	}
	logs := r.logs.String()
	if lost, back := strings.Count(logs, "connection lost"), strings.Count(logs, "reconnected"); lost != 2 || back != 2 {
		t.Fatalf("logged %d losses and %d reconnects for 2 outages, want 2 and 2:\n%s", lost, back, logs)
	}
}

// Cancelling ctx makes Listen return nil promptly and end its backend.
func TestListenCancelClosesConnection(t *testing.T) {
	dsn, app := listenDSN(t)
	db := openPG(t, dsn)
	r := newRecorder()
	cancel, done := startListen(t, db, "h5test_"+randHex(), r.handler())
	waitConnects(t, r, 1)
	if got := listenBackends(t, db, app); got != 1 {
		t.Fatalf("%d backends named %s-listen, want 1", got, app)
	}
	took := stopListen(t, cancel, done, "idle")
	t.Logf("Listen returned %v after cancel", took.Round(time.Microsecond))
	testkit.Eventually(t, 5*time.Second, "the listener's backend to end", func() bool { return listenBackends(t, db, app) == 0 })
	if _, d := r.counts(); d != 0 {
		t.Fatalf("OnDown called %d times for a cancel, want 0", d)
	}
}

// pgProxy stands between Listen and PostgreSQL so a test can take the
// server away (connections cut, then every new one closed at once, then
// the port closed) and bring it back on the same port, freeze it (bytes
// vanish but connections stay open, as when a network path dies), or drop
// the asynchronous NotificationResponse messages as PgBouncer in
// transaction mode does in effect.
type pgProxy struct {
	target     string
	dropNotify bool

	mu      sync.Mutex
	ln      net.Listener
	addr    string
	refuse  bool // accept and close at once
	frozen  atomic.Bool
	conns   []net.Conn
	accepts []time.Time // while refusing
}

func newPGProxy(t *testing.T, target string, dropNotify bool) *pgProxy {
	p := &pgProxy{target: target, dropNotify: dropNotify}
	p.open(t, "127.0.0.1:0")
	t.Cleanup(p.closePort)
	return p
}

func (p *pgProxy) open(t *testing.T, addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.ln, p.addr, p.refuse = ln, ln.Addr().String(), false
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.refuse {
				p.accepts = append(p.accepts, time.Now())
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns = append(p.conns, c)
			p.mu.Unlock()
			go p.forward(c)
		}
	}()
}

func (p *pgProxy) forward(c net.Conn) {
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, s)
	p.mu.Unlock()
	go func() {
		p.pipe(s, c, false)
		s.Close()
		c.Close()
	}()
	p.pipe(c, s, p.dropNotify)
	c.Close()
	s.Close()
}

// pipe copies src to dst, except while the proxy is frozen (then bytes
// vanish, as on a dead network path), and except, with dropNotify, the
// NotificationResponse messages. Backend messages after startup (no
// SSLRequest with sslmode=disable) are all a type byte and a length that
// counts itself.
func (p *pgProxy) pipe(dst io.Writer, src io.Reader, dropNotify bool) {
	br := bufio.NewReader(src)
	hdr := make([]byte, 5)
	buf := make([]byte, 32<<10)
	for {
		var msg []byte
		if dropNotify {
			if _, err := io.ReadFull(br, hdr); err != nil {
				return
			}
			body := make([]byte, binary.BigEndian.Uint32(hdr[1:])-4)
			if _, err := io.ReadFull(br, body); err != nil {
				return
			}
			if hdr[0] == 'A' {
				continue
			}
			msg = append(hdr, body...)
		} else {
			n, err := br.Read(buf)
			if err != nil {
				return
			}
			msg = buf[:n]
		}
		if p.frozen.Load() {
			continue
		}
		if _, err := dst.Write(msg); err != nil {
			return
		}
	}
}

// down cuts every connection and closes each new one at once.
func (p *pgProxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *pgProxy) closePort() {
	p.down()
	p.mu.Lock()
	p.ln.Close()
	p.mu.Unlock()
}

// dsn is base with its host:port replaced by the proxy's.
func (p *pgProxy) dsn(t *testing.T, base string) string {
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("sslmode", "disable")
	u.RawQuery = q.Encode()
	u.Host = p.addr
	return u.String()
}

func proxiedDB(t *testing.T, dropNotify bool) (*store.DB, *pgProxy) {
	dsn, _ := listenDSN(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	p := newPGProxy(t, u.Host, dropNotify)
	return openPG(t, p.dsn(t, dsn)), p
}

// With the server gone (every connection closed on accept, then the port
// closed), Listen keeps retrying with a growing backoff, reports the outage
// once, reconnects when the server is back, and returns when ctx ends.
func TestListenRetriesWhileUnreachable(t *testing.T) {
	db, p := proxiedDB(t, false)
	r := newRecorder()
	cancel, done := startListen(t, db, "h5test_"+randHex(), r.handler())
	waitConnects(t, r, 1)

	p.down()
	time.Sleep(3 * time.Second)
	p.mu.Lock()
	accepts := slices.Clone(p.accepts)
	p.mu.Unlock()
	// pgx dials twice per connect when the first is closed during
	// startup, so dials under 20 ms apart are one attempt.
	var attempts []time.Time
	for _, a := range accepts {
		if len(attempts) == 0 || a.Sub(attempts[len(attempts)-1]) > 20*time.Millisecond {
			attempts = append(attempts, a)
		}
	}
	gaps := make([]string, 0, len(attempts))
	for i := 1; i < len(attempts); i++ {
		gaps = append(gaps, attempts[i].Sub(attempts[i-1]).Round(time.Millisecond).String())
	}
	t.Logf("%d connection attempts (%d dials) in 3s while the server refused, gaps %v", len(attempts), len(accepts), gaps)
	// Bounds wide enough for a loaded machine: 100 ms doubling with
	// jitter makes about 5; a loop without backoff would make thousands.
	if len(attempts) < 2 || len(attempts) > 30 {
		t.Fatalf("%d connection attempts in 3s, want 2..30 (retrying with backoff)", len(attempts))
	}

	addr := p.addr
	p.closePort()
	time.Sleep(1 * time.Second) // connection refused for a while
	if c, d := r.counts(); c != 1 || d != 1 {
		t.Fatalf("OnConnect %d times, OnDown %d times during one outage; want 1 and 1", c, d)
	}
	p.open(t, addr)
	waitConnects(t, r, 2)
	logs := r.logs.String()
	if lost, back := strings.Count(logs, "connection lost"), strings.Count(logs, "reconnected"); lost != 1 || back != 1 {
		t.Fatalf("logged %d losses and %d reconnects for one outage of many attempts, want 1 and 1:\n%s", lost, back, logs)
	}

	p.closePort()
	time.Sleep(500 * time.Millisecond)
	took := stopListen(t, cancel, done, "retrying")
	t.Logf("Listen returned %v after cancel while retrying", took.Round(time.Microsecond))
}

// A connection that goes silent without closing (a dead network path,
// unseen by a bare read for minutes of TCP keepalive) is caught by the ping
// after each wait times out, then replaced once the path is back.
func TestListenDetectsSilentConnection(t *testing.T) {
	db, p := proxiedDB(t, false)
	r := newRecorder()
	startListen(t, db, "h5test_"+randHex(), r.handler())
	waitConnects(t, r, 1)

	start := time.Now()
	p.frozen.Store(true)
	testkit.Eventually(t, 15*time.Second, "OnDown for the silent connection", func() bool {
		_, d := r.counts()
		return d == 1
	})
	t.Logf("silent connection reported down after %v", time.Since(start).Round(time.Millisecond))
	p.frozen.Store(false)
	waitConnects(t, r, 2)
	t.Logf("reconnected %v after the freeze began", time.Since(start).Round(time.Millisecond))
}

// When notifications never reach the session (here a proxy drops them, as
// PgBouncer in transaction mode does in effect), Listen says so once and
// gives up with ErrListenUnsupported instead of retrying: the caller polls.
func TestListenUnsupportedWhenNotificationsNeverArrive(t *testing.T) {
	db, _ := proxiedDB(t, true)
	r := newRecorder()
	_, done := startListen(t, db, "h5test_"+randHex(), r.handler())
	select {
	case err := <-done:
		if !errors.Is(err, store.ErrListenUnsupported) {
			t.Fatalf("Listen returned %v, want ErrListenUnsupported", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Listen still running 10s in, though the self-test cannot succeed")
	}
	if c, d := r.counts(); c != 0 || d != 0 {
		t.Fatalf("OnConnect %d times, OnDown %d times; want 0 and 0", c, d)
	}
	if got := strings.Count(r.logs.String(), "polling only"); got != 1 {
		t.Fatalf("logged the fallback %d times, want once:\n%s", got, r.logs.String())
	}
}

// SQLite has no LISTEN: Listen says so at once, and Notify is a no-op
// that still rejects what PostgreSQL would.
func TestListenSQLite(t *testing.T) {
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Listen(ctx, "tollgate_changes", store.ListenHandler{}); !errors.Is(err, store.ErrListenUnsupported) {
		t.Fatalf("Listen on SQLite: %v, want ErrListenUnsupported", err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if err := db.Notify(ctx, tx, "tollgate_changes", "1:token"); err != nil {
		t.Fatalf("Notify on SQLite: %v", err)
	}
	if err := db.Notify(ctx, tx, "tollgate_changes", strings.Repeat("x", 8000)); err == nil || !strings.Contains(err.Error(), "7999") {
		t.Fatalf("Notify of 8000 bytes on SQLite: %v, want an error naming the 7999-byte limit", err)
	}
}

// 7999 bytes is PostgreSQL's real limit: it is delivered whole; 8000 is
// refused with an error naming the limit.
func TestNotifyPayloadLimit(t *testing.T) {
	dsn, _ := listenDSN(t)
	db := openPG(t, dsn)
	channel := "h5test_" + randHex()
	r := newRecorder()
	startListen(t, db, channel, r.handler())
	waitConnects(t, r, 1)

	big := strings.Repeat("x", store.MaxNotifyPayload)
	notify(t, db, channel, big, true)
	if n := r.next(t); n.payload != big {
		t.Fatalf("got %d bytes, want %d", len(n.payload), len(big))
	}
	ctx := context.Background()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if err := db.Notify(ctx, tx, channel, big+"x"); err == nil || !strings.Contains(err.Error(), "7999") {
		t.Fatalf("Notify of 8000 bytes: %v, want an error naming the 7999-byte limit", err)
	}
}

// Sessions without an application_name in the DSN are named "tollgate";
// one in the DSN is kept.
func TestOpenNamesPostgresSessions(t *testing.T) {
	pg := os.Getenv("TOLLGATE_TEST_POSTGRES")
	if pg == "" {
		t.Skip("TOLLGATE_TEST_POSTGRES not set")
	}
	dsn, app := listenDSN(t)
	for give, want := range map[string]string{pg: "tollgate", dsn: app} {
		db := openPG(t, give)
		var got string
		if err := db.QueryRowContext(context.Background(), "SHOW application_name").Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("application_name %q, want %q", got, want)
		}
	}
}
