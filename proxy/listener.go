package proxy

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

// Listener bounds, each with its reason.
const (
	// acceptBackoffMin and acceptBackoffMax are net/http's backoff for
	// temporary accept errors: short enough to recover at once when a
	// descriptor frees, long enough not to spin a core while the listen fd
	// stays readable (oven-sh/bun#32705).
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
	// acceptLogEvery rate-limits the accept-error log line.
	acceptLogEvery = time.Second
	// fdReserve is kept back from the descriptor budget for the database,
	// spool, logs and DNS.
	fdReserve = 256
	// DefaultMaxConns is the ceiling of the default connection cap; the
	// descriptor budget may lower it (DefaultMaxConnsFor).
	DefaultMaxConns = 4096
	// DefaultMaxConnsPerIP keeps one client (an IPv4 address or an IPv6
	// /64) from holding the whole cap; agents behind one NAT share it.
	DefaultMaxConnsPerIP = 256
	// refuseWriteTimeout bounds the write of the 503 sent to a connection
	// over a cap: the accept loop must never wait on a client.
	refuseWriteTimeout = 50 * time.Millisecond
)

// refusedOverCap is written to a connection accepted over a cap before it is
// closed: a plain HTTP answer a client can act on, instead of a reset.
var refusedOverCap = func() []byte {
	body := `{"error":{"message":"tollgate has too many open connections; retry shortly","type":"server_error","code":"overloaded"}}`
	return []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\n\r\n" + body)
}()

// ListenerConfig configures NewListener. Zero values take the defaults.
type ListenerConfig struct {
	// MaxConns caps open client connections; 0 means DefaultMaxConnsFor the
	// current descriptor limit, negative means no cap.
	MaxConns int
	// MaxConnsPerIP caps open connections per client IPv4 address or IPv6
	// /64; 0 means DefaultMaxConnsPerIP, negative means no cap.
	MaxConnsPerIP int
	// Logger receives the rate-limited accept-error and over-cap lines.
	Logger *slog.Logger
}

// DefaultMaxConnsFor derives the connection cap from the descriptor limit:
// a proxied request holds a client and an upstream descriptor, and a cap
// below the budget means accept never meets EMFILE in the first place.
// 0 (unknown) gives DefaultMaxConns.
func DefaultMaxConnsFor(nofile uint64) int {
	if nofile == 0 {
		return DefaultMaxConns
	}
	if nofile <= fdReserve {
		return 16
	}
	return int(max(16, min(DefaultMaxConns, (nofile-fdReserve)/2)))
}

// Listener wraps the proxy's net.Listener so that running out of
// descriptors slows accepting instead of ending Serve: fasthttp retries only
// timeouts and treats EMFILE as permanent since valyala/fasthttp#1253. It
// also caps open connections, in total and per client.
type Listener struct {
	net.Listener
	maxConns, maxPerIP int
	log                *slog.Logger

	open  atomic.Int64
	mu    sync.Mutex
	perIP map[netip.Prefix]int
	// conns are the open connections, for shedding an idle one at the cap.
	conns map[*countedConn]struct{}
	// Shed counts idle or half-open connections closed to admit a new one.
	shed    atomic.Int64
	lastLog time.Time
	// AcceptErrors counts the temporary accept errors retried.
	acceptErrors atomic.Int64
	refused      atomic.Int64
}

// NewListener wraps ln.
func NewListener(ln net.Listener, cfg ListenerConfig) *Listener {
	if cfg.MaxConns == 0 {
		cfg.MaxConns = DefaultMaxConnsFor(FileLimit())
	}
	if cfg.MaxConnsPerIP == 0 {
		cfg.MaxConnsPerIP = DefaultMaxConnsPerIP
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Listener{Listener: ln, maxConns: cfg.MaxConns, maxPerIP: cfg.MaxConnsPerIP, log: cfg.Logger, perIP: map[netip.Prefix]int{}, conns: map[*countedConn]struct{}{}}
}

// MaxConns is the effective total cap (negative: none).
func (l *Listener) MaxConns() int { return l.maxConns }

// Open is the number of accepted connections not yet closed.
func (l *Listener) Open() int64 { return l.open.Load() }

// AcceptErrors is the number of temporary accept errors retried.
func (l *Listener) AcceptErrors() int64 { return l.acceptErrors.Load() }

// Shed is the number of idle or half-open connections closed at the total
// cap to admit a new one.
func (l *Listener) Shed() int64 { return l.shed.Load() }

// Refused is the number of connections closed at once for a cap.
func (l *Listener) Refused() int64 { return l.refused.Load() }

// Accept returns the next connection within the caps. Temporary errors are
// retried with backoff and never returned, so Serve only ends on Close.
func (l *Listener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if !temporaryAcceptError(err) {
				return nil, err
			}
			l.acceptErrors.Add(1)
			delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
			l.logRateLimited("accept failed; retrying", "err", err.Error(), "retry_in", delay.String(), "open_conns", l.open.Load())
			time.Sleep(delay)
			continue
		}
		delay = 0
		if tc, ok := l.admit(c); ok {
			return tc, nil
		}
	}
}

// admit counts c against the caps, or refuses it. Refusing at accept, not
// leaving it in the backlog, keeps the backlog draining.
func (l *Listener) admit(c net.Conn) (net.Conn, bool) {
	key, keyed := clientPrefix(c.RemoteAddr())
	l.mu.Lock()
	over := ""
	var victim *countedConn
	switch {
	case l.maxConns > 0 && l.open.Load() >= int64(l.maxConns):
		// Shed first what serves nobody: the connection idle longest, or
		// one that never finished sending its headers (a slow or half-open
		// client), so holding connections cannot lock everyone out.
		if victim = l.idlest(); victim == nil {
			over = "total"
		}
	case keyed && l.maxPerIP > 0 && l.perIP[key] >= l.maxPerIP:
		over = "per_ip"
	}
	cc := &countedConn{Conn: c, l: l, key: key, keyed: keyed}
	if over == "" {
		l.open.Add(1)
		if keyed {
			l.perIP[key]++
		}
		cc.since.Store(time.Now().UnixNano())
		l.conns[cc] = struct{}{}
	}
	l.mu.Unlock()
	if victim != nil {
		l.shed.Add(1)
		_ = victim.Close()
	}
	if over != "" {
		l.refused.Add(1)
		l.logRateLimited("connection refused over the cap", "cap", over, "client", key.String(), "open_conns", l.open.Load())
		_ = c.SetWriteDeadline(time.Now().Add(refuseWriteTimeout))
		_, _ = c.Write(refusedOverCap)
		_ = c.Close()
		return nil, false
	}
	return cc, true
}

// idlest is the open connection not in a handler that has waited longest
// since it was accepted or last finished a request; l.mu is held.
func (l *Listener) idlest() *countedConn {
	var best *countedConn
	var bestSince int64
	for c := range l.conns {
		if c.busy.Load() || c.closed.Load() {
			continue
		}
		if since := c.since.Load(); best == nil || since < bestSince {
			best, bestSince = c, since
		}
	}
	return best
}

func (l *Listener) release(c *countedConn) {
	l.mu.Lock()
	l.open.Add(-1)
	delete(l.conns, c)
	if c.keyed {
		if n := l.perIP[c.key] - 1; n > 0 {
			l.perIP[c.key] = n
		} else {
			delete(l.perIP, c.key)
		}
	}
	l.mu.Unlock()
}

// markBusy says c is in a handler: not to be shed. The edge middleware
// calls it for every request; fasthttp's StateIdle (connState) clears it.
func markBusy(c net.Conn) {
	if cc, ok := c.(*countedConn); ok {
		cc.busy.Store(true)
	}
}

// connState is fasthttp's connection-state hook for the listener's
// connections: one that finished its request is idle again, from now.
func connState(c net.Conn, st fasthttp.ConnState) {
	cc, ok := c.(*countedConn)
	if !ok || st != fasthttp.StateIdle {
		return
	}
	cc.since.Store(time.Now().UnixNano())
	cc.busy.Store(false)
}

func (l *Listener) logRateLimited(msg string, args ...any) {
	l.mu.Lock()
	now := time.Now()
	ok := now.Sub(l.lastLog) >= acceptLogEvery
	if ok {
		l.lastLog = now
	}
	l.mu.Unlock()
	if ok {
		l.log.Warn(msg, args...)
	}
}

// temporaryAcceptError reports the errors net/http's Serve retries that
// fasthttp does not: out of descriptors or kernel buffers. Go's poller
// already retries ECONNABORTED and EINTR.
func temporaryAcceptError(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// clientPrefix keys a client for the per-IP cap: the IPv4 address, or the
// IPv6 /64 (one host's usual allocation, so it cannot rotate addresses).
func clientPrefix(a net.Addr) (netip.Prefix, bool) {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ip = ip.Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, err := ip.Prefix(bits)
	return p, err == nil
}

// countedConn releases its slot once, on the first Close.
type countedConn struct {
	net.Conn
	l      *Listener
	key    netip.Prefix
	keyed  bool
	closed atomic.Bool
	// busy is set while a handler runs; since is when the connection was
	// accepted or last went idle (unix nanoseconds).
	busy  atomic.Bool
	since atomic.Int64
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	if c.closed.CompareAndSwap(false, true) {
		c.l.release(c)
	}
	return err
}

// SyscallConn exposes the socket, as the *net.TCPConn it wraps would: a
// wrapper that hides it blinds code that watches the client's fd.
func (c *countedConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	return sc.SyscallConn()
}
