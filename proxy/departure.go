package proxy

import (
	"context"
	"net"
	"sync/atomic"
	"syscall"
	"time"
)

// fasthttp runs the handler on the connection's goroutine and reads
// nothing meanwhile, so nothing notices a client that leaves while
// tollgate waits for a store or a provider: RequestCtx.Done() ends only at
// shutdown (valyala/fasthttp#468, #965; gofiber/fiber#1718). net/http
// learns it from a background read. A departure watcher does the same
// without taking bytes: once the client's socket is readable, it peeks one
// byte (peekGone). End of file or an error means the client left, and the
// request's context is cancelled with errClientGone; a byte means a
// pipelined request, which is left for fasthttp, and the watch ends. A
// half-close counts as leaving, as in net/http. TLS terminated in front of
// tollgate is fine; a front proxy must close its side when its client
// leaves (nginx does).
//
// On Linux the socket is added to one epoll set that all watches share
// (departure_linux.go), once the watch has lasted departureArmDelay: a
// short watch costs a timer, a long one two epoll_ctl calls, and neither
// a goroutine, which matters because every request is watched twice and
// every open stream for its whole life. Elsewhere, or without epoll, a
// goroutine parks in the netpoller on the socket (watchByReading); it
// holds the socket's read lock meanwhile. Either way the watch must be
// stopped before anything reads the connection: the request body, or
// fasthttp's next request.

// departure is one watch of a client connection.
type departure struct {
	conn net.Conn
	// polled is the epoll watch, or nil for a reading one.
	polled *polledWatch
	// A reading watch: its goroutine ends by done.
	stopping atomic.Bool
	done     chan struct{}
}

// watchDeparture starts watching conn and calls cancel(errClientGone) if
// the client leaves. It returns nil when conn exposes no socket to watch
// (then nothing is detected, as before). The caller must stop it.
func watchDeparture(conn net.Conn, cancel context.CancelCauseFunc) *departure {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	if w := watchPolled(rc, cancel); w != nil {
		return &departure{conn: conn, polled: w}
	}
	return watchByReading(conn, rc, cancel)
}

// watchByReading parks a goroutine on the socket until it is readable.
func watchByReading(conn net.Conn, rc syscall.RawConn, cancel context.CancelCauseFunc) *departure {
	d := &departure{conn: conn, done: make(chan struct{})}
	// fasthttp's read deadline for this request (the body's, or
	// ReadTimeout) would end the watch in the middle of a long wait.
	_ = conn.SetReadDeadline(time.Time{})
	go func() {
		defer close(d.done)
		gone := false
		err := rc.Read(func(fd uintptr) bool {
			if d.stopping.Load() {
				return true
			}
			var wait bool
			gone, wait = peekGone(fd)
			return !wait
		})
		if gone && err == nil && !d.stopping.Load() {
			cancel(errClientGone)
		}
	}()
	return d
}

// stop ends the watch and waits for a cancel it started, then sets the
// connection's read deadline to deadline. A zero deadline leaves the
// connection's as it is (none after a reading watch, fasthttp's own after
// an epoll one): fasthttp sets its own before it reads the next request.
// Safe on a nil departure.
func (d *departure) stop(deadline time.Time) {
	if d == nil {
		return
	}
	if d.polled != nil {
		d.polled.stop()
		if !deadline.IsZero() {
			_ = d.conn.SetReadDeadline(deadline)
		}
		return
	}
	d.stopping.Store(true)
	// Wakes the parked watcher; its Read then fails with a timeout.
	_ = d.conn.SetReadDeadline(time.Now())
	<-d.done
	_ = d.conn.SetReadDeadline(deadline)
}
