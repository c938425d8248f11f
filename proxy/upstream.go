package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpproxy"
	"golang.org/x/net/http/httpproxy"

	"github.com/tollgate/tollgate/internal/netguard"
	"github.com/tollgate/tollgate/registry"
)

// tollgate sends every upstream request through fasthttp's client. For a
// stream it asks for the body as a stream (Response.StreamBody) and reads
// it as the client response is written. fasthttp 1.74 made that safe to
// cancel from another goroutine (streaming-on-fiber.md R10; the fixes of
// valyala/fasthttp#2353 and #2379): closing a body stream closes the
// connection to unblock a Read in flight and waits for that Read before it
// pools anything. net/http's client, with a read and a write goroutine per
// connection, was about 25% of tollgate's CPU in the S1 profile; a held
// stream now needs one goroutine instead of three, and about 5 KB less
// (quick make bench, S4).
//
// Requests go out over HTTP/1.1 and honour HTTP_PROXY, HTTPS_PROXY and
// NO_PROXY.

// upstreamDialTimeout bounds one TCP connect, proxied or not.
const upstreamDialTimeout = 5 * time.Second

// fastUpstreamReadBuffer bounds one upstream response's headers; providers
// behind CDNs send a few KiB of them, near fasthttp's 4 KiB default. A
// held stream keeps this buffer, so it is not larger.
const fastUpstreamReadBuffer = 8 << 10

// errUpstreamClosed is what a dial returns once shutdown has begun.
var errUpstreamClosed = errors.New("upstream client closed")

// fastUpstream is the client plus the set of its connections, so that
// shutdown can end requests in flight: fasthttp has no cancellation, but a
// closed connection fails its Do or body Read at once.
type fastUpstream struct {
	client *fasthttp.Client
	dial   fasthttp.DialFunc
	guard  dialGuard

	mu     sync.Mutex
	conns  map[string]*trackedConn // by connKey
	closed bool
	// slots holds the abort slot of each call in flight (do), by request.
	slots map[*fasthttp.Request]*abortSlot
}

// connKey names a TCP connection by its two ends, which a fasthttp
// Response also knows (LocalAddr, RemoteAddr).
func connKey(local, remote net.Addr) string {
	if local == nil || remote == nil {
		return ""
	}
	return local.String() + ">" + remote.String()
}

// newFastUpstream builds the client. Hosts named by reg's provider base
// URLs are dialled as they are; any other host is a credential's base URL
// override and is dialled under policy (dialGuard).
func newFastUpstream(base context.Context, responseLimit int, reg *registry.Holder, policy netguard.Policy, log *slog.Logger) (*fastUpstream, error) {
	d := &fasthttpproxy.Dialer{
		TCPDialer:     fasthttp.TCPDialer{Concurrency: 0, DNSCacheDuration: time.Minute},
		Timeout:       upstreamDialTimeout,
		DialDualStack: true,
	}
	dial, err := d.GetDialFunc(true)
	if err != nil {
		return nil, err
	}
	u := &fastUpstream{dial: dial, conns: map[string]*trackedConn{}, slots: map[*fasthttp.Request]*abortSlot{}, guard: dialGuard{
		reg:     reg,
		policy:  policy,
		log:     log,
		proxyOf: httpproxy.FromEnvironment().ProxyFunc(),
		direct:  net.Dialer{Timeout: upstreamDialTimeout, Control: policy.Control},
	}}
	u.client = &fasthttp.Client{
		Dial:                u.trackedDial,
		MaxConnsPerHost:     1 << 16,
		MaxIdleConnDuration: 10 * time.Second,
		ReadBufferSize:      fastUpstreamReadBuffer,
		// The live registry's limit is checked per request (call.buffered);
		// this is the hard ceiling above it. Streams are not bounded.
		MaxResponseBodySize:           responseLimit,
		NoDefaultUserAgentHeader:      true,
		DisableHeaderNamesNormalizing: false,
		// Paths were checked as received (uncanonical) and must reach the
		// provider byte for byte.
		DisablePathNormalizing: true,
		RetryIfErr:             u.retryIf,
		// Lets a call be aborted on its own connection (transport.go).
		Transport: u,
	}
	context.AfterFunc(base, u.close)
	return u, nil
}

// retryIf is retryReplayable, except that an aborted call is never sent
// again: its abort surfaces as a closed connection, which fasthttp offers
// for a retry.
func (u *fastUpstream) retryIf(req *fasthttp.Request, attempts int, err error) (bool, bool) {
	if sl := u.slot(req); sl != nil && sl.isAborted() {
		return false, false
	}
	return retryReplayable(req, attempts, err)
}

// retryReplayable sends a request a second time only if it is replayable
// in net/http's sense: an idempotent method, or an Idempotency-Key. A POST
// that reached the provider is never sent twice: it may be billed twice.
// net/http also spots a pooled connection the provider closed while idle
// before writing to it; fasthttp does not, so MaxIdleConnDuration stays
// below providers' idle timeouts instead.
func retryReplayable(req *fasthttp.Request, attempts int, err error) (bool, bool) {
	if attempts > 1 || errors.Is(err, fasthttp.ErrTimeout) {
		return false, false
	}
	switch string(req.Header.Method()) {
	case fasthttp.MethodGet, fasthttp.MethodHead, fasthttp.MethodOptions:
		return false, true
	}
	return false, len(req.Header.Peek("Idempotency-Key")) > 0 || len(req.Header.Peek("X-Idempotency-Key")) > 0
}

func (u *fastUpstream) trackedDial(addr string) (net.Conn, error) {
	u.mu.Lock()
	closed := u.closed
	u.mu.Unlock()
	if closed {
		return nil, errUpstreamClosed
	}
	c, err := u.guard.dial(addr, u.dial)
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, u: u, key: connKey(c.LocalAddr(), c.RemoteAddr())}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		c.Close()
		return nil, errUpstreamClosed
	}
	u.conns[tc.key] = tc
	return tc, nil
}

// dialGuard keeps credential base URL overrides off the addresses
// netguard refuses. A base URL is checked when it is written, but a name
// can resolve elsewhere by the time it is dialled (DNS rebinding), so the
// address actually connected to is checked too, after resolution and
// before connect. Only hosts in the registry, which the operator wrote,
// are dialled unchecked: the test fakes on 127.0.0.1, a self-hosted
// provider on the private network.
type dialGuard struct {
	reg     *registry.Holder
	policy  netguard.Policy
	log     *slog.Logger
	proxyOf func(*url.URL) (*url.URL, error)
	direct  net.Dialer
}

func (g *dialGuard) dial(addr string, dial fasthttp.DialFunc) (net.Conn, error) {
	if g.registryHost(addr) {
		return dial(addr)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if err := g.policy.CheckHost(host); err != nil {
		return nil, g.refused(addr, err)
	}
	scheme := "http"
	if port == "443" {
		scheme = "https"
	}
	if px, err := g.proxyOf(&url.URL{Scheme: scheme, Host: addr}); err == nil && px != nil {
		// The proxy resolves the name and connects, so tollgate cannot
		// see the address; it refuses what it resolves the name to now,
		// and a name it cannot resolve is left to the proxy's policy.
		if err := g.checkResolved(host); err != nil {
			return nil, g.refused(addr, err)
		}
		return dial(addr)
	}
	c, err := g.direct.Dial("tcp", addr)
	if errors.Is(err, netguard.ErrRefused) {
		return nil, g.refused(addr, err)
	}
	return c, err
}

func (g *dialGuard) checkResolved(host string) error {
	ctx, cancel := context.WithTimeout(context.Background(), upstreamDialTimeout)
	defer cancel()
	r := g.direct.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	addrs, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil
	}
	for _, a := range addrs {
		if err := g.policy.CheckAddr(a); err != nil {
			return err
		}
	}
	return nil
}

// refused logs the refusal with the address, which the caller is not
// told, and returns an error that is still netguard.ErrRefused.
func (g *dialGuard) refused(addr string, err error) error {
	g.log.Warn("credential base URL refused at dial", "addr", addr, "err", err.Error())
	return fmt.Errorf("dial %s: %w", addr, err)
}

// registryHost reports whether addr (host:port, as fasthttp dials it) is
// the host of one of the live registry's providers.
func (g *dialGuard) registryHost(addr string) bool {
	if g.reg == nil {
		return false
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	for _, p := range g.reg.Current().Providers() {
		u, err := url.Parse(p.BaseURL)
		if err != nil {
			continue
		}
		pp := u.Port()
		if pp == "" {
			pp = map[string]string{"http": "80", "https": "443"}[u.Scheme]
		}
		if pp == port && sameHost(u.Hostname(), host) {
			return true
		}
	}
	return false
}

// sameHost compares names case-insensitively and addresses by value, so
// [::1] and the dialled ::1 agree.
func sameHost(a, b string) bool {
	if x, err := netip.ParseAddr(a); err == nil {
		y, err := netip.ParseAddr(b)
		return err == nil && x == y
	}
	return strings.EqualFold(strings.TrimSuffix(a, "."), strings.TrimSuffix(b, "."))
}

// stream wraps a streamed answer's body. It lifts the deadline DoTimeout
// left on the connection, which bounded the wait for headers: a stream has
// an idle timeout only, never a total one (R1).
func (u *fastUpstream) stream(resp *fasthttp.Response, body io.Reader) *fastStream {
	u.mu.Lock()
	tc := u.conns[connKey(resp.LocalAddr(), resp.RemoteAddr())]
	u.mu.Unlock()
	if tc != nil {
		_ = tc.Conn.SetReadDeadline(time.Time{})
	}
	f := &fastStream{resp: resp, conn: tc, body: body, length: resp.Header.ContentLength()}
	if f.body == nil {
		f.body = resp.BodyStream()
	}
	if f.body == nil {
		f.body = bytes.NewReader(resp.Body())
	}
	return f
}

// close ends every request in flight and refuses new connections; it runs
// when the base context is cancelled (shutdown step 3).
func (u *fastUpstream) close() {
	u.mu.Lock()
	u.closed = true
	conns := u.conns
	u.conns = map[string]*trackedConn{}
	u.mu.Unlock()
	for _, c := range conns {
		c.Conn.Close()
	}
}

type trackedConn struct {
	net.Conn
	u    *fastUpstream
	key  string
	once sync.Once
	// peerClosed is set when a Read met the end of the connection.
	peerClosed atomic.Bool
	// hook, when set, runs before every socket Read. Only the goroutine
	// reading a stream's body sets and clears it, before the connection
	// goes back to fasthttp's pool.
	hook readHook
}

// readHook is told when fasthttp's read buffer is empty and the next read
// goes to the socket, where it may wait. An error fails that read.
type readHook interface{ beforeSocketRead() error }

func (c *trackedConn) Read(p []byte) (int, error) {
	if c.hook != nil {
		if err := c.hook.beforeSocketRead(); err != nil {
			return 0, err
		}
	}
	n, err := c.Conn.Read(p)
	if err == io.EOF {
		c.peerClosed.Store(true)
	}
	return n, err
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.u.mu.Lock()
		if c.u.conns[c.key] == c {
			delete(c.u.conns, c.key)
		}
		c.u.mu.Unlock()
	})
	return c.Conn.Close()
}

// fastStream is a streamed answer's body. Read and Close belong to the
// goroutine writing the client response; closeBody may also come from any
// other goroutine (the idle timer).
type fastStream struct {
	resp   *fasthttp.Response
	conn   *trackedConn // nil only if fasthttp dialled around trackedDial
	body   io.Reader
	length int // Content-Length, or -1 when chunked
	read   int
	// cut is set once Read has reported a cut body.
	cut bool
}

// Read reports a cut body as io.ErrUnexpectedEOF, as net/http does:
// fasthttp returns a plain io.EOF when the provider closes the connection
// between two chunks (streaming-on-fiber.md R10), which would pass a
// truncated stream off as complete.
func (f *fastStream) Read(p []byte) (int, error) {
	n, err := f.body.Read(p)
	f.read += n
	if err == io.EOF {
		switch {
		case f.length >= 0 && f.read < f.length:
			err = io.ErrUnexpectedEOF
		case f.length == -1 && f.conn != nil && f.conn.peerClosed.Load():
			err = io.ErrUnexpectedEOF
		}
		f.cut = err == io.ErrUnexpectedEOF
	}
	return n, err
}

// closeBody closes the body stream once: with a cause (the idle timer,
// from any goroutine) the connection is closed and a Read in flight returns
// an error; without one it is pooled if the body was read to its end.
func (f *fastStream) closeBody(cause error) {
	if c, ok := f.body.(interface{ CloseWithError(error) error }); ok {
		_ = c.CloseWithError(cause)
	}
}

// setReadHook puts h on the stream's connection, or takes it off (nil).
// It reports false when the connection is not one tollgate tracks.
func (f *fastStream) setReadHook(h readHook) bool {
	if f.conn == nil {
		return false
	}
	f.conn.hook = h
	return true
}

// Close ends the stream and releases the response; only the goroutine
// that reads may call it.
func (f *fastStream) Close() error {
	f.setReadHook(nil)
	if f.cut {
		// fasthttp took the EOF for the body's end and would pool the dead
		// connection; the next request on it would fail with a 502.
		f.closeBody(io.ErrUnexpectedEOF)
	} else {
		f.closeBody(nil)
	}
	fasthttp.ReleaseResponse(f.resp)
	return nil
}
