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
// without taking bytes: it parks in the netpoller on the client's socket
// and, once the socket is readable, peeks one byte (peekGone). End of file
// or an error means the client left, and the request's context is
// cancelled with errClientGone; a byte means a pipelined request, which is
// left for fasthttp, and the watch ends. A half-close counts as leaving,
// as in net/http. TLS terminated in front of tollgate is fine; a front
// proxy must close its side when its client leaves (nginx does).
//
// While parked the watcher holds the socket's read lock, so it must be
// stopped before anything reads the connection: the request body, or
// fasthttp's next request.

// departure is one watch of a client connection.
type departure struct {
	conn     net.Conn
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

// stop ends the watch and waits for it, then sets the connection's read
// deadline to deadline (zero: none; fasthttp sets its own before it reads
// the next request). Safe on a nil departure.
func (d *departure) stop(deadline time.Time) {
	if d == nil {
		return
	}
	d.stopping.Store(true)
	// Wakes the parked watcher; its Read then fails with a timeout.
	_ = d.conn.SetReadDeadline(time.Now())
	<-d.done
	_ = d.conn.SetReadDeadline(deadline)
}
