package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
)

// emfileListener fails its first n Accepts as accept4 does when the process
// is out of descriptors, then accepts for real. It avoids lowering
// RLIMIT_NOFILE in the shared test process.
type emfileListener struct {
	net.Listener
	fail atomic.Int32
}

func (l *emfileListener) Accept() (net.Conn, error) {
	if l.fail.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// serveOn serves e's server on a second listener, wrapped as cmd does, and
// returns its address and Serve's result channel.
func serveWrapped(t *testing.T, e *testEnv, inner net.Listener, cfg ListenerConfig) (string, *Listener, chan error) {
	t.Helper()
	ln := NewListener(inner, cfg)
	done := make(chan error, 1)
	go func() { done <- e.srv.Serve(ln) }()
	return inner.Addr().String(), ln, done
}

// TestListenerAcceptSurvivesEMFILE: out-of-descriptor accept errors slow
// the accept loop instead of ending Serve (fasthttp treats them as
// permanent), and the server then serves a legitimate client.
func TestListenerAcceptSurvivesEMFILE(t *testing.T) {
	e := newEnv(t, envOptions{})
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &emfileListener{Listener: inner}
	fl.fail.Store(5)
	addr, ln, done := serveWrapped(t, e, fl, ListenerConfig{Logger: e.srv.log})
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + addr + "/healthz")
	if err != nil {
		select {
		case err := <-done:
			t.Fatalf("Serve returned on a temporary accept error: %v", err)
		default:
		}
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	select {
	case err := <-done:
		t.Fatalf("Serve returned: %v", err)
	default:
	}
	if n := ln.AcceptErrors(); n != 5 {
		t.Errorf("%d accept errors retried, want 5", n)
	}
}

// TestListenerCapsOpenConnections: over the cap a connection gets a 503 and
// is closed at once; closing one frees its slot.
func TestListenerCapsOpenConnections(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  ListenerConfig
	}{
		{"PerIP", ListenerConfig{MaxConns: -1, MaxConnsPerIP: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{})
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			tc.cfg.Logger = e.srv.log
			addr, ln, _ := serveWrapped(t, e, inner, tc.cfg)
			var held []net.Conn
			for range 2 {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				held = append(held, c)
			}
			testkit.Eventually(t, 2*time.Second, "two open connections", func() bool { return ln.Open() == 2 })
			over, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer over.Close()
			_ = over.SetReadDeadline(time.Now().Add(2 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(over), nil)
			if err != nil {
				t.Fatalf("over the cap: %v, want a 503", err)
			}
			if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
				t.Errorf("over the cap: %d, want 503 with Retry-After", resp.StatusCode)
			}
			if _, err := io.ReadAll(resp.Body); err != nil {
				t.Fatal(err)
			}
			if _, err := over.Read(make([]byte, 1)); err == nil {
				t.Error("the connection over the cap stayed open")
			}
			if ln.Refused() != 1 {
				t.Errorf("refused %d, want 1", ln.Refused())
			}
			// Each held connection still serves; closing one frees a slot.
			held[0].Close()
			testkit.Eventually(t, 2*time.Second, "the slot to free", func() bool { return ln.Open() == 1 })
			resp2, err := http.Get("http://" + addr + "/healthz")
			if err != nil {
				t.Fatal(err)
			}
			resp2.Body.Close()
			if resp2.StatusCode != http.StatusOK {
				t.Errorf("after a slot freed: %d", resp2.StatusCode)
			}
		})
	}
}

// TestListenerShedsIdleConnectionsFirst: at the total cap, a connection
// that serves nobody (idle, or half-open: headers never finished) is closed
// to admit the new one, so holding connections cannot lock clients out; a
// connection inside a handler is never shed, and when every one is, the new
// one is refused.
func TestListenerShedsIdleConnectionsFirst(t *testing.T) {
	e := newEnv(t, envOptions{})
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr, ln, _ := serveWrapped(t, e, inner, ListenerConfig{MaxConns: 2, MaxConnsPerIP: -1, Logger: e.srv.log})
	half, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	fmt.Fprintf(half, "GET /healthz HTTP/1.1\r\nHost: x\r\n") // never finished
	testkit.Eventually(t, 2*time.Second, "one open connection", func() bool { return ln.Open() == 1 })
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	testkit.Eventually(t, 2*time.Second, "two open connections", func() bool { return ln.Open() == 2 })

	// At the cap: the half-open connection, accepted first, is shed.
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("a client at the cap: %v, want the half-open connection shed for it", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("a client at the cap: %d", resp.StatusCode)
	}
	if ln.Shed() != 1 || ln.Refused() != 0 {
		t.Errorf("shed %d, refused %d; want 1 shed, 0 refused", ln.Shed(), ln.Refused())
	}
	_ = half.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := half.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the half-open connection was not shed: %v", err)
	}

	// A connection inside a handler is never chosen; the longest idle is.
	l := NewListener(inner, ListenerConfig{MaxConns: 3, MaxConnsPerIP: -1})
	busy, older, newer := &countedConn{l: l}, &countedConn{l: l}, &countedConn{l: l}
	busy.busy.Store(true)
	busy.since.Store(1)
	older.since.Store(2)
	newer.since.Store(3)
	l.conns[busy] = struct{}{}
	if got := l.idlest(); got != nil {
		t.Errorf("idlest among busy connections: %p, want none (the new client is refused)", got)
	}
	l.conns[newer], l.conns[older] = struct{}{}, struct{}{}
	if got := l.idlest(); got != older {
		t.Errorf("idlest: %p, want the one idle longest (%p)", got, older)
	}
}

func TestListenerDefaultCapFollowsTheDescriptorBudget(t *testing.T) {
	for _, tc := range []struct {
		nofile uint64
		want   int
	}{{0, DefaultMaxConns}, {1024, 384}, {1 << 20, DefaultMaxConns}, {100, 16}} {
		if got := DefaultMaxConnsFor(tc.nofile); got != tc.want {
			t.Errorf("DefaultMaxConnsFor(%d) = %d, want %d", tc.nofile, got, tc.want)
		}
	}
}

// TestListenerKeysClientsByIPv4AddressOrIPv6Slash64: a host rotating
// addresses inside its /64 shares one per-IP budget; IPv4-mapped addresses
// count as the IPv4 address.
func TestListenerKeysClientsByIPv4AddressOrIPv6Slash64(t *testing.T) {
	key := func(ip string) string {
		p, ok := clientPrefix(&net.TCPAddr{IP: net.ParseIP(ip), Port: 1})
		if !ok {
			t.Fatalf("no key for %s", ip)
		}
		return p.String()
	}
	if a, b := key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"); a != b {
		t.Errorf("one /64, two keys: %s, %s", a, b)
	}
	if a, b := key("2001:db8:1:2::1"), key("2001:db8:1:3::1"); a == b {
		t.Errorf("two /64s, one key %s", a)
	}
	if a, b := key("::ffff:192.0.2.7"), key("192.0.2.7"); a != b {
		t.Errorf("IPv4-mapped %s is not IPv4 %s", a, b)
	}
	if a, b := key("192.0.2.7"), key("192.0.2.8"); a == b {
		t.Errorf("two IPv4 addresses, one key %s", a)
	}
}

// TestListenerConnKeepsTheSocket: the wrapper still exposes the socket.
func TestListenerConnKeepsTheSocket(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := NewListener(inner, ListenerConfig{})
	defer ln.Close()
	go func() {
		if c, err := net.Dial("tcp", inner.Addr().String()); err == nil {
			defer c.Close()
			time.Sleep(200 * time.Millisecond)
		}
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, ok := c.(syscall.Conn)
	if !ok {
		t.Fatal("accepted conn hides SyscallConn")
	}
	if _, err := sc.SyscallConn(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	c.Close()
	if ln.Open() != 0 {
		t.Errorf("open %d after a double close, want 0", ln.Open())
	}
}
