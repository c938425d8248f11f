package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

// rawConn dials tollgate over plain TCP, for shapes a real client refuses
// to send.
func rawConn(t *testing.T, e *testEnv) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(e.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// readResponses reads every response on c until EOF and returns them.
func readResponses(t *testing.T, c net.Conn) []*http.Response {
	t.Helper()
	br := bufio.NewReader(c)
	var out []*http.Response
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF || strings.Contains(err.Error(), "reset") {
				return out
			}
			t.Fatalf("after %d responses: %v", len(out), err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		resp.Body = io.NopCloser(strings.NewReader(string(b)))
		out = append(out, resp)
	}
}

// TestSmuggledRequestBehindContentLengthAndChunkedIsNotAnswered: a request
// with both framings gets one 400 in the route's envelope, then EOF; the
// admin request hidden in its Content-Length span is never answered.
func TestSmuggledRequestBehindContentLengthAndChunkedIsNotAnswered(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws-1", "proj-1", "user-1", "")
	smuggled := "GET /admin/v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-secret\r\n\r\n"
	body := "0\r\n\r\n" + smuggled
	for _, order := range []string{"CLFirst", "TEFirst"} {
		t.Run(order, func(t *testing.T) {
			framing := fmt.Sprintf("Content-Length: %d\r\nTransfer-Encoding: chunked\r\n", len(body))
			if order == "TEFirst" {
				framing = fmt.Sprintf("Transfer-Encoding: chunked\r\nContent-Length: %d\r\n", len(body))
			}
			c := rawConn(t, e)
			fmt.Fprintf(c, "POST /anthropic/v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: %s\r\nContent-Type: application/json\r\n%s\r\n%s", tok, framing, body)
			resps := readResponses(t, c)
			if len(resps) != 1 {
				t.Fatalf("%d responses, want exactly 1 then EOF (the smuggled request was answered)", len(resps))
			}
			b, _ := io.ReadAll(resps[0].Body)
			if resps[0].StatusCode != http.StatusBadRequest {
				t.Fatalf("status %d, want 400: %s", resps[0].StatusCode, b)
			}
			if msg := checkEnvelope(t, "anthropic", b); !strings.Contains(msg, "Transfer-Encoding") {
				t.Errorf("message %q does not name the conflict", msg)
			}
		})
	}
	if n := e.fake.Counters().Requests; n != 0 {
		t.Errorf("%d requests reached the provider", n)
	}
}

// TestPrefaceOfHTTP2GetsAClearErrorAndClose: an h2c prior-knowledge client
// learns tollgate speaks HTTP/1.1, in an HTTP/1.1 answer, and the
// connection ends.
func TestPrefaceOfHTTP2GetsAClearErrorAndClose(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := rawConn(t, e)
	// The preface, then a SETTINGS frame as a real client sends it.
	_, _ = c.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"))
	resps := readResponses(t, c)
	if len(resps) != 1 {
		t.Fatalf("%d responses, want 1 then EOF", len(resps))
	}
	b, _ := io.ReadAll(resps[0].Body)
	if resps[0].StatusCode != http.StatusBadRequest || resps[0].ProtoMajor != 1 {
		t.Fatalf("got %s %d, want HTTP/1.1 400: %s", resps[0].Proto, resps[0].StatusCode, b)
	}
	if msg := checkEnvelope(t, "openai", b); !strings.Contains(msg, "HTTP/1.1 only") {
		t.Errorf("message %q does not say tollgate speaks HTTP/1.1 only", msg)
	}
}

// heapInuse is the live heap after a collection.
func heapInuse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestClaimedBodySizeReservesNoMemory: connections that declare a body just
// under the limit (and chunks as large) and send 10 bytes cost what they
// sent, not what they claimed.
func TestClaimedBodySizeReservesNoMemory(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws-1", "proj-1", "user-1", "")
	const conns = 8
	claimed := e.reg.Current().Limits.MaxBodyBytes - 1
	before := heapInuse()
	for i := range conns {
		c := rawConn(t, e)
		if i%2 == 0 {
			fmt.Fprintf(c, "POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{\"model\":", tok, claimed)
		} else {
			fmt.Fprintf(c, "POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n{\"model\":", tok, claimed)
		}
	}
	// Let the server read what was sent (old code: allocate what was claimed).
	time.Sleep(500 * time.Millisecond)
	after := heapInuse()
	grown := int64(after) - int64(before)
	t.Logf("heap in use grew %d KiB for %d connections claiming %d MiB each", grown>>10, conns, claimed>>20)
	if grown > 16<<20 {
		t.Errorf("heap grew %d MiB for %d connections that sent 10 bytes each: claimed sizes are reserved", grown>>20, conns)
	}
}

// TestClaimedBodyOverTheLimitIs413WithoutWaiting: a Content-Length over the
// live limit is refused from the headers, in the dialect's envelope, before
// any of the body arrives, and the connection closes.
func TestClaimedBodyOverTheLimitIs413WithoutWaiting(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws-1", "proj-1", "user-1", "")
	c := rawConn(t, e)
	start := time.Now()
	fmt.Fprintf(c, "POST /anthropic/v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: %s\r\nContent-Type: application/json\r\nContent-Length: 134000000\r\n\r\n{\"model\":", tok)
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	resps := readResponses(t, c)
	if len(resps) != 1 {
		t.Fatalf("%d responses within %s, want one 413 without waiting for the body", len(resps), time.Since(start))
	}
	b, _ := io.ReadAll(resps[0].Body)
	if resps[0].StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d, want 413: %s", resps[0].StatusCode, b)
	}
	if msg := checkEnvelope(t, "anthropic", b); !strings.Contains(msg, "at most") {
		t.Errorf("message %q does not give the limit", msg)
	}
}

// TestClaimedBodyPipelinedAfterASmallBodyIsStillServed: reading bodies
// whole keeps keep-alive and pipelining working for honest clients.
func TestClaimedBodyPipelinedAfterASmallBodyIsStillServed(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws-1", "proj-1", "user-1", "")
	chat := `{"model":"gpt-4o","messages":[]}`
	c := rawConn(t, e)
	req := fmt.Sprintf("POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", tok, len(chat), chat)
	fmt.Fprint(c, req+req+"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	resps := readResponses(t, c)
	if len(resps) != 3 {
		t.Fatalf("%d responses, want 3", len(resps))
	}
	for i, r := range resps {
		if r.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(r.Body)
			t.Errorf("response %d: %d %s", i, r.StatusCode, b)
		}
	}
}

// TestClaimedBodyThatDoesNotArriveIsCut: a body that stalls after its
// first bytes is cut at its own deadline (bodyGrace for a small body), not
// held for the whole read timeout.
func TestClaimedBodyThatDoesNotArriveIsCut(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the body deadline")
	}
	e := newEnv(t, envOptions{})
	tok := e.token("ws-1", "proj-1", "user-1", "")
	c := rawConn(t, e)
	start := time.Now()
	fmt.Fprintf(c, "POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"model\":", tok)
	_ = c.SetReadDeadline(time.Now().Add(bodyDeadline(100000) + 5*time.Second))
	resps := readResponses(t, c)
	took := time.Since(start)
	if len(resps) != 1 {
		t.Fatalf("%d responses after %s, want one refusal at the body deadline", len(resps), took)
	}
	b, _ := io.ReadAll(resps[0].Body)
	if resps[0].StatusCode != http.StatusBadRequest || !strings.Contains(checkEnvelope(t, "openai", b), "in time") {
		t.Errorf("got %d %s, want 400 saying it did not arrive in time", resps[0].StatusCode, b)
	}
	if want := bodyDeadline(100000); took < want-time.Second || took > want+3*time.Second {
		t.Errorf("cut after %s, want about %s", took, want)
	}
}

// TestUnauthenticatedBodyIsNeverRead: a caller without a valid token is
// refused from its headers while its body is still arriving, and the
// connection closes, so the unread rest (here holding a request line) is
// never parsed as a request.
func TestUnauthenticatedBodyIsNeverRead(t *testing.T) {
	e := newEnv(t, envOptions{})
	for _, tc := range []struct{ name, framing, first string }{
		{"Length", "Content-Length: 1000000", `{"model":"gpt-4o","messages":[{"role":"user","content":"`},
		{"Chunked", "Transfer-Encoding: chunked", "f4240\r\n" + `{"model":"gpt-4o","messages":[{"role":"user","content":"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rawConn(t, e)
			fmt.Fprintf(c, "POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tgw_not-a-real-token-at-all\r\nContent-Type: application/json\r\n%s\r\n\r\n%s", tc.framing, tc.first)
			// Past fasthttp's 8 KiB prefetch, a request line inside the body.
			fmt.Fprint(c, strings.Repeat("x", 9000)+"\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
			_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
			resps := readResponses(t, c)
			if len(resps) != 1 {
				t.Fatalf("%d responses, want one 401 before the body is complete, then EOF", len(resps))
			}
			b, _ := io.ReadAll(resps[0].Body)
			if resps[0].StatusCode != http.StatusUnauthorized {
				t.Fatalf("status %d, want 401: %s", resps[0].StatusCode, b)
			}
			checkEnvelope(t, "openai", b)
		})
	}
}
