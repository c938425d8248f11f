package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrListenUnsupported means the database cannot push change notifications
// to this process: it is SQLite, or NOTIFY never reaches the listening
// session (PgBouncer in transaction mode, a proxy that drops asynchronous
// messages). The caller then relies on polling alone.
var ErrListenUnsupported = errors.New("store: LISTEN/NOTIFY unsupported here, poll only")

// MaxNotifyPayload is the longest payload PostgreSQL's NOTIFY takes at the
// default 8 kB block size; 8000 bytes fail with 22023.
const MaxNotifyPayload = 7999

// selfTestPrefix marks the nonce a listener sends itself at connect. Every
// replica listens on the same channel, so each one skips all of them, not
// only its own.
const selfTestPrefix = "tollgate-selftest:"

// Timings of the listen loop. The wait deadline bounds how long a silently
// dead connection goes unnoticed: a bare read never sees it (jackc/pgx#40)
// and TCP keepalive takes minutes, so each timeout is followed by a ping.
const (
	listenWait        = 2 * time.Second
	listenPing        = 1 * time.Second
	listenSelfTest    = 1 * time.Second
	listenConnect     = 5 * time.Second // when the DSN sets no connect_timeout
	listenBackoffMin  = 100 * time.Millisecond
	listenBackoffMax  = 5 * time.Second
	listenCloseBudget = 1 * time.Second
)

// ListenHandler receives the events of Listen. Its functions run on
// Listen's goroutine, one at a time, so they must return quickly (a
// non-blocking send to a buffered channel of 1 coalesces bursts). Any of
// them may be nil.
type ListenHandler struct {
	OnNotify  func(payload string) // each notification on the channel
	OnConnect func()               // after every (re)connect + LISTEN: the caller must poll (catch-up)
	OnDown    func(err error)      // the listening connection was lost or could not be made, once per outage
	Log       *slog.Logger         // nil: slog.Default()
}

// Listen blocks until ctx ends, holding a dedicated pgx connection (not from
// the database/sql pool) that LISTENs on channel, reconnecting with
// jittered backoff 100 ms..5 s. Returns ErrListenUnsupported at once on
// SQLite, or when the self-test NOTIFY never arrives (PgBouncer transaction
// mode): the caller then polls only. It returns nil when ctx ends, having
// closed its connection.
//
// The connection stays outside the pool because pooled connections are
// reset, recycled and sometimes inside a transaction, which holds
// notifications back (jackc/pgx#1121). Notifications sent while it is down
// are lost for good, which is why OnConnect comes after LISTEN: a poll from
// there on sees everything the notifications would have announced.
func (db *DB) Listen(ctx context.Context, channel string, h ListenHandler) error {
	if db.Engine != Postgres || db.pgConfig == nil {
		return ErrListenUnsupported
	}
	l := &listener{channel: channel, h: h, log: h.Log}
	if l.log == nil {
		l.log = slog.Default()
	}
	l.log = l.log.With("channel", channel)
	base := db.pgConfig.Copy()
	app := base.RuntimeParams["application_name"]
	if app == "" {
		app = defaultAppName
	}
	base.RuntimeParams["application_name"] = app + "-listen"

	backoff := listenBackoffMin
	var downSince time.Time // zero while connected (or before the first try)
	for {
		// A fresh connection on every try: reusing a dead one loops
		// forever on its error (hatchet#2772).
		upAt, err := l.session(ctx, base.Copy(), func() {
			if !downSince.IsZero() {
				l.log.Info("listen: reconnected", "down_for", time.Since(downSince).Round(time.Millisecond))
				downSince = time.Time{}
			}
		})
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrListenUnsupported) {
			return err
		}
		// A session that lasted resets the backoff; one that dies at
		// once keeps it growing, so a flapping server is not hammered.
		if !upAt.IsZero() && time.Since(upAt) >= listenBackoffMax {
			backoff = listenBackoffMin
		}
		if downSince.IsZero() {
			downSince = time.Now()
			l.log.Warn("listen: connection lost, reconnecting (polling covers the gap)", "err", err)
			if h.OnDown != nil {
				h.OnDown(err)
			}
		}
		// Equal jitter: replicas cut off together do not return together.
		sleep := backoff/2 + mrand.N(backoff/2+1)
		backoff = min(backoff*2, listenBackoffMax)
		t := time.NewTimer(sleep)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

type listener struct {
	channel string
	h       ListenHandler
	log     *slog.Logger
}

// session runs one connection from connect to its first error (or ctx's
// end), and reports when it was established (zero if it never was).
// connected runs once it is, before OnConnect.
func (l *listener) session(ctx context.Context, cfg *pgx.ConnConfig, connected func()) (upAt time.Time, err error) {
	timeout := cfg.ConnectTimeout
	if timeout == 0 {
		timeout = listenConnect
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	conn, err := pgx.ConnectConfig(cctx, cfg)
	cancel()
	if err != nil {
		return time.Time{}, fmt.Errorf("listen on %s: connect: %w", l.channel, err)
	}
	defer func() {
		// Not ctx: it may be over, and the Terminate message is what
		// ends the backend at once rather than when it notices EOF.
		cctx, cancel := context.WithTimeout(context.Background(), listenCloseBudget)
		conn.Close(cctx)
		cancel()
	}()

	if err := l.setUp(ctx, conn, timeout); err != nil {
		return time.Time{}, err
	}
	upAt = time.Now()
	connected()
	if l.h.OnConnect != nil {
		l.h.OnConnect()
	}
	for {
		wctx, cancel := context.WithTimeout(ctx, listenWait)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		if n != nil && n.Channel == l.channel && !strings.HasPrefix(n.Payload, selfTestPrefix) && l.h.OnNotify != nil {
			l.h.OnNotify(n.Payload)
		}
		switch {
		case ctx.Err() != nil:
			return upAt, nil
		case err == nil:
		case pgconn.Timeout(err) && !conn.IsClosed():
			// A deadline leaves the connection usable; a ping proves the
			// server still answers.
			pctx, cancel := context.WithTimeout(ctx, listenPing)
			err = conn.Ping(pctx)
			cancel()
			if err != nil && ctx.Err() == nil {
				return upAt, fmt.Errorf("listen on %s: ping: %w", l.channel, err)
			}
		default:
			return upAt, fmt.Errorf("listen on %s: %w", l.channel, err)
		}
	}
}

// setUp LISTENs and checks, by notifying itself a nonce, that notifications
// do reach this session. PgBouncer in transaction mode accepts LISTEN and
// then never delivers, so only the round trip tells.
func (l *listener) setUp(ctx context.Context, conn *pgx.Conn, timeout time.Duration) error {
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := conn.Exec(sctx, "LISTEN "+pgx.Identifier{l.channel}.Sanitize()); err != nil {
		return fmt.Errorf("listen on %s: LISTEN: %w", l.channel, err)
	}
	var b [8]byte
	rand.Read(b[:])
	nonce := selfTestPrefix + hex.EncodeToString(b[:])
	if _, err := conn.Exec(sctx, "SELECT pg_notify($1, $2)", l.channel, nonce); err != nil {
		return fmt.Errorf("listen on %s: self-test NOTIFY: %w", l.channel, err)
	}
	tctx, cancel := context.WithTimeout(ctx, listenSelfTest)
	defer cancel()
	for {
		// Other notifications before the nonce are dropped: OnConnect's
		// catch-up poll, which comes next, covers what they announce.
		n, err := conn.WaitForNotification(tctx)
		if n != nil && n.Channel == l.channel && n.Payload == nonce {
			return nil
		}
		if err == nil {
			continue
		}
		if pgconn.Timeout(err) && ctx.Err() == nil && !conn.IsClosed() {
			l.log.Warn("listen: a NOTIFY to this session never arrived (PgBouncer in transaction mode?); polling only",
				"waited", listenSelfTest)
			return ErrListenUnsupported
		}
		return fmt.Errorf("listen on %s: self-test: %w", l.channel, err)
	}
}

// Notify queues payload on channel inside tx (pg_notify; delivered only if
// tx commits). No-op on SQLite. The payload limit is checked on both
// engines so a payload too long for PostgreSQL fails in SQLite tests too.
func (db *DB) Notify(ctx context.Context, tx *sql.Tx, channel, payload string) error {
	if len(payload) > MaxNotifyPayload {
		return fmt.Errorf("notify %s: payload of %d bytes exceeds PostgreSQL's NOTIFY limit of %d bytes", channel, len(payload), MaxNotifyPayload)
	}
	if db.Engine != Postgres {
		return nil
	}
	if _, err := tx.ExecContext(ctx, "SELECT pg_notify($1, $2)", channel, payload); err != nil {
		return fmt.Errorf("notify %s: %w", channel, err)
	}
	return nil
}
