package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tollgate/tollgate/metering"
)

// TestTransportPoolsLikeFasthttps: tollgate's RoundTripper keeps
// fasthttp's pool accounting. Whole and streamed answers read to their end
// reuse one keep-alive connection; an answer with Connection: close is not
// pooled, so the next request dials afresh and succeeds.
func TestTransportPoolsLikeFasthttps(t *testing.T) {
	var conns, requests atomic.Int64
	ln := serveTCP(t, func(c net.Conn) {
		defer c.Close()
		conns.Add(1)
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			b, _ := io.ReadAll(req.Body)
			requests.Add(1)
			closing := strings.Contains(string(b), "close-after")
			hdr := ""
			if closing {
				hdr = "Connection: close\r\n"
			}
			if strings.Contains(string(b), `"stream":true`) {
				body := "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n" +
					"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\ndata: [DONE]\n\n"
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\n%sContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", hdr, len(body), body)
			} else {
				body := `{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}`
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", hdr, len(body), body)
			}
			if closing {
				return
			}
		}
	})
	e := newEnv(t, envOptions{upstreamURL: "http://" + ln.Addr().String()})
	tok := e.token("ws", "p", "u", "")
	send := func(body string) {
		t.Helper()
		resp := e.do("POST", "/openai/v1/chat/completions", tok, body)
		b := readAll(t, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d %s", resp.StatusCode, b)
		}
		if rec := e.record(resp); rec.Outcome != metering.OutcomeOK {
			t.Errorf("outcome %q, want ok", rec.Outcome)
		}
	}
	stream := `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	for range 3 {
		send(chatJSON)
		send(stream)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("6 answers read to their end took %d upstream connections, want 1", n)
	}
	send(`{"model":"gpt-4o","messages":[{"role":"user","content":"close-after"}]}`)
	send(chatJSON)
	send(`{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"close-after"}]}`)
	send(stream)
	if n, r := conns.Load(), requests.Load(); n != 3 || r != 10 {
		t.Errorf("after two Connection: close answers: %d connections, %d requests; want 3 and 10", n, r)
	}
}
