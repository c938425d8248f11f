package proxy

import (
	"context"
	"errors"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
)

// tcpPair is a loopback connection: the side tollgate would hold and the
// client's.
func tcpPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

// watchModes runs fn with the epoll watch (Linux) and the reading one.
func watchModes(t *testing.T, fn func(t *testing.T)) {
	for _, off := range []bool{false, true} {
		name := "epoll"
		if off {
			name = "reading"
		}
		t.Run(name, func(t *testing.T) {
			if !off && runtime.GOOS != "linux" {
				t.Skip("epoll watches are Linux only")
			}
			defer func(v bool) { departureEpollOff = v }(departureEpollOff)
			departureEpollOff = off
			fn(t)
		})
	}
}

// TestDepartureWatch: a client that closes cancels with errClientGone; a
// byte it sends (a pipelined request) ends the watch without a cancel and
// stays readable; a watch stopped before the client leaves never cancels.
func TestDepartureWatch(t *testing.T) {
	watchModes(t, func(t *testing.T) {
		t.Run("leave", func(t *testing.T) {
			server, client := tcpPair(t)
			ctx, cancel := context.WithCancelCause(context.Background())
			d := watchDeparture(server, cancel)
			if d == nil {
				t.Fatal("no watch on a TCP connection")
			}
			client.Close()
			select {
			case <-ctx.Done():
				if !errors.Is(context.Cause(ctx), errClientGone) {
					t.Errorf("cause %v, want errClientGone", context.Cause(ctx))
				}
			case <-time.After(2 * time.Second):
				t.Fatal("no cancel 2s after the client closed")
			}
			d.stop(time.Time{})
		})
		t.Run("pipelined", func(t *testing.T) {
			server, client := tcpPair(t)
			ctx, cancel := context.WithCancelCause(context.Background())
			d := watchDeparture(server, cancel)
			if _, err := client.Write([]byte("G")); err != nil {
				t.Fatal(err)
			}
			// The byte ends the watch; a close after it is not looked at.
			time.Sleep(100 * time.Millisecond)
			client.Close()
			time.Sleep(100 * time.Millisecond)
			d.stop(time.Now().Add(time.Second))
			if ctx.Err() != nil {
				t.Fatalf("cancelled (%v) by a pipelined byte", context.Cause(ctx))
			}
			b := make([]byte, 4)
			if n, err := server.Read(b); n != 1 || b[0] != 'G' {
				t.Fatalf("read %q, %v after the watch: want the byte it saw", b[:n], err)
			}
		})
		t.Run("stopped", func(t *testing.T) {
			server, client := tcpPair(t)
			ctx, cancel := context.WithCancelCause(context.Background())
			d := watchDeparture(server, cancel)
			d.stop(time.Time{})
			client.Close()
			time.Sleep(200 * time.Millisecond)
			if ctx.Err() != nil {
				t.Fatalf("cancelled (%v) after stop", context.Cause(ctx))
			}
		})
		t.Run("closed by tollgate", func(t *testing.T) {
			server, _ := tcpPair(t)
			ctx, cancel := context.WithCancelCause(context.Background())
			d := watchDeparture(server, cancel)
			server.Close()
			d.stop(time.Time{})
			if ctx.Err() != nil {
				t.Fatalf("cancelled (%v): tollgate closed, the client did not leave", context.Cause(ctx))
			}
		})
	})
}

// TestEpollWatchesHoldNoGoroutine: an open stream's watch is an entry in
// the shared epoll set, not a parked goroutine (S4's memory per stream).
func TestEpollWatchesHoldNoGoroutine(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("epoll watches are Linux only")
	}
	const n = 50
	var ds []*departure
	watchDeparture(nil, nil) // no socket: nil, and no goroutine either
	base := runtime.NumGoroutine()
	for range n {
		server, _ := tcpPair(t)
		_, cancel := context.WithCancelCause(context.Background())
		ds = append(ds, watchDeparture(server, cancel))
	}
	testkit.Eventually(t, 2*time.Second, "every watch in the epoll set", func() bool {
		departures.mu.Lock()
		defer departures.mu.Unlock()
		return len(departures.watches) == n
	})
	if g := runtime.NumGoroutine() - base; g > 2 {
		t.Errorf("%d goroutines more for %d watches", g, n)
	}
	for _, d := range ds {
		d.stop(time.Time{})
	}
	departures.mu.Lock()
	left := len(departures.watches)
	departures.mu.Unlock()
	if left != 0 {
		t.Errorf("%d watches left in the set after stop", left)
	}
}

// BenchmarkDepartureWatch is one short watch started and stopped on an
// idle connection, as every request does twice: with the shared epoll set
// (which a watch this short never reaches) and with a goroutine per watch.
func BenchmarkDepartureWatch(b *testing.B) {
	for _, off := range []bool{false, true} {
		name := "epoll"
		if off {
			name = "reading"
		}
		b.Run(name, func(b *testing.B) {
			defer func(v bool) { departureEpollOff = v }(departureEpollOff)
			departureEpollOff = off
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			client, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer client.Close()
			server, err := ln.Accept()
			if err != nil {
				b.Fatal(err)
			}
			defer server.Close()
			_, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			b.ReportAllocs()
			for b.Loop() {
				watchDeparture(server, cancel).stop(time.Time{})
			}
		})
	}
}
