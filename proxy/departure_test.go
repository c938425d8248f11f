package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// holdingProvider accepts connections, reads what comes and never
// answers: a provider that hangs before its headers. It reports when each
// connection's request arrived and when tollgate closed it.
type holdingProvider struct {
	ln     net.Listener
	mu     sync.Mutex
	open   int
	read   chan struct{} // one per request whose first bytes arrived
	closed chan time.Time
}

func startHoldingProvider(t *testing.T) *holdingProvider {
	t.Helper()
	h := &holdingProvider{read: make(chan struct{}, 64), closed: make(chan time.Time, 64)}
	h.ln = serveTCP(t, func(c net.Conn) {
		defer c.Close()
		h.mu.Lock()
		h.open++
		h.mu.Unlock()
		// The test's end closes whatever tollgate left open.
		stop := context.AfterFunc(t.Context(), func() { c.Close() })
		defer stop()
		buf := make([]byte, 4096)
		first := true
		for {
			n, err := c.Read(buf)
			if n > 0 && first {
				first = false
				h.read <- struct{}{}
			}
			if err != nil {
				h.mu.Lock()
				h.open--
				h.mu.Unlock()
				h.closed <- time.Now()
				return
			}
		}
	})
	return h
}

func (h *holdingProvider) URL() string { return "http://" + h.ln.Addr().String() }

func (h *holdingProvider) Open() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.open
}

// rawRequest is an inference request as bytes, for clients that must
// control their socket.
func rawRequest(tok string, stream bool) string {
	body := fmt.Sprintf(`{"model":"claude-sonnet-4-5","max_tokens":8,"stream":%v,"messages":[{"role":"user","content":"hi"}]}`, stream)
	return "POST /anthropic/v1/messages HTTP/1.1\r\nHost: tollgate\r\nAuthorization: Bearer " + tok +
		"\r\nContent-Type: application/json\r\nContent-Length: " + fmt.Sprint(len(body)) + "\r\n\r\n" + body
}

// sendRaw dials addr and writes raw; the test's end closes the conn.
func sendRaw(t *testing.T, addr, raw string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	return c
}

// waitRecord waits for the only usage record the sink holds.
func waitRecord(t *testing.T, e *testEnv, within time.Duration) metering.Record {
	t.Helper()
	var rec metering.Record
	testkit.Eventually(t, within, "a usage record", func() bool {
		rs := e.sink.Records()
		if len(rs) == 1 {
			rec = rs[0]
		}
		return len(rs) == 1
	})
	return rec
}

// TestClientLeavingBeforeHeadersFreesTheUpstream: the provider reads the
// request and never answers; the client closes 200 ms later. tollgate
// closes its upstream connection within a second, instead of holding it to
// the header timeout, and records client_gone, not unreachable.
func TestClientLeavingBeforeHeadersFreesTheUpstream(t *testing.T) {
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			h := startHoldingProvider(t)
			e := newEnv(t, envOptions{upstreamURL: h.URL(), headerWait: 30 * time.Second})
			tok := e.token("ws-1", "proj-1", "user-1", "")
			c := sendRaw(t, strings.TrimPrefix(e.URL, "http://"), rawRequest(tok, stream))
			select {
			case <-h.read:
			case <-time.After(5 * time.Second):
				t.Fatal("the request never reached the provider")
			}
			time.Sleep(200 * time.Millisecond)
			left := time.Now()
			c.Close()
			select {
			case at := <-h.closed:
				if d := at.Sub(left); d > time.Second {
					t.Errorf("upstream connection closed %v after the client left, want within 1s", d)
				}
			case <-time.After(3 * time.Second):
				t.Fatal("the upstream connection is still open 3s after the client left")
			}
			rec := waitRecord(t, e, 2*time.Second)
			if rec.Outcome != metering.OutcomeClientGone || rec.Status != statusClientClosed {
				t.Errorf("record outcome %q status %d, want %q %d", rec.Outcome, rec.Status, metering.OutcomeClientGone, statusClientClosed)
			}
			if rec.Duration > 2*time.Second {
				t.Errorf("record duration %v, want the time up to the leave", rec.Duration)
			}
		})
	}
}

// TestClientLeavingDuringLookupCancelsIt: a client that leaves while the
// credential lookup waits on the store cancels the lookup's context, and
// its record says client_gone.
func TestClientLeavingDuringLookupCancelsIt(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws-1", "proj-1", "user-1", "")
	hung := hungStore{ctxs: make(chan context.Context, 1), testDone: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Registry: e.reg, Auth: e.svc, Resolver: hung, Sink: e.sink, Logger: e.srv.log})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Shutdown(context.Background())
	defer close(hung.testDone)

	c := sendRaw(t, ln.Addr().String(), rawRequest(tok, false))
	var ctx context.Context
	select {
	case ctx = <-hung.ctxs:
	case <-time.After(5 * time.Second):
		t.Fatal("the resolver was not called")
	}
	c.Close()
	select {
	case <-ctx.Done():
		if !errors.Is(context.Cause(ctx), errClientGone) {
			t.Errorf("lookup context ended with %v, want errClientGone", context.Cause(ctx))
		}
	case <-time.After(time.Second):
		t.Fatal("the lookup still runs a second after the client left")
	}
	rec := waitRecord(t, e, 2*time.Second)
	if rec.Outcome != metering.OutcomeClientGone {
		t.Errorf("record outcome %q, want %q", rec.Outcome, metering.OutcomeClientGone)
	}
}

// TestPipelinedRequestSurvivesTheWatcher: a second request sent on the
// same connection while tollgate waits for the first one's provider is
// neither taken for a departure nor consumed by the watcher: both are
// answered, in order.
func TestPipelinedRequestSurvivesTheWatcher(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws-1", "proj-1", "user-1", "")
	req := rawRequest(tok, false)
	slow := strings.Replace(req, "\r\nContent-Type:", "\r\nX-Fake-TTFB: 400ms\r\nContent-Type:", 1)
	c := sendRaw(t, strings.TrimPrefix(e.URL, "http://"), slow)
	// The first request is in the provider's wait when the second arrives.
	time.Sleep(150 * time.Millisecond)
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	for i := range 2 {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i+1, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("response %d: %d %s, want 200", i+1, resp.StatusCode, b)
		}
	}
	testkit.Eventually(t, 2*time.Second, "two records", func() bool { return len(e.sink.Records()) == 2 })
	for _, r := range e.sink.Records() {
		if r.Outcome != metering.OutcomeOK {
			t.Errorf("record %s outcome %q, want ok", r.RequestID, r.Outcome)
		}
	}
}

// TestClientLeavingASilentStreamEndsIt: a client that leaves a stream
// while the provider pauses between events (a reasoning model thinking)
// ends the stream within a second, not at the next event's write.
func TestClientLeavingASilentStreamEndsIt(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws", "p", "u", "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", e.URL+"/anthropic/v1/messages", strings.NewReader(anthropicStreamBody))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set(upstreamtest.HeaderGap, "20s")
	req.Header.Set(upstreamtest.HeaderEvents, "3")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := readEvent(bufio.NewReader(resp.Body)); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	testkit.Eventually(t, time.Second, "the upstream stream to be cancelled", func() bool {
		return e.fake.Counters().StreamsCancelled == 1
	})
	if rec := e.record(resp); rec.Outcome != metering.OutcomeClientGone {
		t.Errorf("outcome = %s, want client_gone", rec.Outcome)
	}
}

// TestClientLeavingDuringAWholeBodyFreesTheUpstream: a stream request
// answered whole (JSON) whose body stalls after its headers: the client
// leaving frees the upstream connection within a second, too.
func TestClientLeavingDuringAWholeBodyFreesTheUpstream(t *testing.T) {
	closed := make(chan time.Time, 1)
	ln := serveTCP(t, func(c net.Conn) {
		defer c.Close()
		stop := context.AfterFunc(t.Context(), func() { c.Close() })
		defer stop()
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
		_, _ = io.Copy(io.Discard, c)
		closed <- time.Now()
	})
	e := newEnv(t, envOptions{upstreamURL: "http://" + ln.Addr().String(), headerWait: 30 * time.Second, idle: 30 * time.Second})
	tok := e.token("ws-1", "proj-1", "user-1", "")
	c := sendRaw(t, strings.TrimPrefix(e.URL, "http://"), rawRequest(tok, true))
	time.Sleep(300 * time.Millisecond)
	left := time.Now()
	c.Close()
	select {
	case at := <-closed:
		if d := at.Sub(left); d > time.Second {
			t.Errorf("upstream connection closed %v after the client left, want within 1s", d)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the upstream connection is still open 3s after the client left")
	}
	if rec := waitRecord(t, e, 2*time.Second); rec.Outcome != metering.OutcomeClientGone {
		t.Errorf("record outcome %q, want %q", rec.Outcome, metering.OutcomeClientGone)
	}
}
