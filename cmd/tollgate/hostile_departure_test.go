//go:build hostile

package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// holdMarker in a request body makes the fake provider hold the request
// without answering; anything else gets a small Anthropic answer.
const holdMarker = "hold-me-forever"

// holdingProvider answers the legitimate client and holds the flood: it
// reads a held request whole, never answers, and counts the connection
// open until tollgate closes it.
type holdingProvider struct {
	ln   net.Listener
	held atomic.Int64
	wg   sync.WaitGroup
}

func startHoldingProvider(t *testing.T) *holdingProvider {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &holdingProvider{ln: ln}
	t.Cleanup(func() { ln.Close(); h.wg.Wait() })
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.wg.Add(1)
			go func() { defer h.wg.Done(); h.serve(t, c) }()
		}
	}()
	return h
}

func (h *holdingProvider) serve(t *testing.T, c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(t.Context(), func() { c.Close() })
	defer stop()
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		body, _ := io.ReadAll(req.Body)
		if bytes.Contains(body, []byte(holdMarker)) {
			h.held.Add(1)
			_, _ = io.Copy(io.Discard, br)
			h.held.Add(-1)
			return
		}
		const answer = `{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":2}}`
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(answer), answer)
	}
}

// TestHostileDepartingClientsFreeTheProvider: N clients each send a request
// to a provider that reads it and never answers, then leave after 200 ms.
// tollgate must close its connections to the provider within about a
// second of the leave, record client_gone, stay within its memory, and keep
// serving a legitimate client; before the departure watcher, every one
// stayed open to the 10-minute header timeout.
func TestHostileDepartingClientsFreeTheProvider(t *testing.T) {
	const clients = 60
	bin := hostileBinary(t)
	h := startHoldingProvider(t)
	c, tok := hostileCLI(t, "http://"+h.ln.Addr().String())
	ctx := context.Background()

	// At hostileNofile the default connection cap is 16; this descriptor
	// limit keeps the default caps (384 connections) above the flood.
	hs := startHostileAt(t, bin, 1024, c)
	base, addr, pid, logs := hs.base, hs.addr, hs.pid, hs.logs

	lctx, stopLegit := context.WithCancel(ctx)
	lc := &legitClient{}
	var lwg sync.WaitGroup
	lwg.Add(1)
	go func() { defer lwg.Done(); lc.run(lctx, base, tok) }()
	time.Sleep(500 * time.Millisecond)

	rssBefore := procStatusKiB(pid, "VmRSS")
	body := `{"model":"claude-sonnet-4-5","max_tokens":8,"metadata":{"user_id":"` + holdMarker + `"},"messages":[]}`
	var conns []net.Conn
	for i := range clients {
		conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		conns = append(conns, conn)
		fmt.Fprintf(conn, "POST /anthropic/v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", tok, len(body), body)
	}
	var heldPeak int64
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline) && heldPeak < clients; time.Sleep(10 * time.Millisecond) {
		heldPeak = max(heldPeak, h.held.Load())
	}
	time.Sleep(200 * time.Millisecond)
	rssDuring := procStatusKiB(pid, "VmRSS")
	left := time.Now()
	for _, conn := range conns {
		conn.Close()
	}
	freed, freedIn := time.Duration(-1), "never"
	for deadline := left.Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if h.held.Load() == 0 {
			freed = time.Since(left)
			freedIn = freed.Round(time.Millisecond).String()
			break
		}
	}
	stillHeld := h.held.Load()
	var gone int
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if gone = strings.Count(logs.String(), `client_gone`); gone >= clients {
			break
		}
	}
	unreachable := strings.Count(logs.String(), `unreachable`)
	time.Sleep(300 * time.Millisecond)
	stopLegit()
	lwg.Wait()
	hwm := procStatusKiB(pid, "VmHWM")

	ok, fail, p99 := lc.summary()
	report := fmt.Sprintf("hostile: departing clients: %d held at the provider (peak %d), all left after 200 ms; provider connections freed in %s (%d still open after 5 s)\n"+
		"hostile: departing clients: %d records client_gone, %d unreachable; RSS %d MiB before, %d MiB while held; peak RSS (VmHWM) %d MiB\n"+
		"hostile: departing clients: legitimate client %d ok, %d failed, p99 latency %s\n",
		clients, heldPeak, freedIn, stillHeld, gone, unreachable, rssBefore>>10, rssDuring>>10, hwm>>10, ok, fail, p99)
	fmt.Print(report)
	t.Log(report)

	if heldPeak < clients {
		t.Errorf("only %d of %d requests reached the provider: the run proves little\n%s", heldPeak, clients, logTail(logs.String(), 8))
	}
	if freed < 0 || freed > 1500*time.Millisecond {
		t.Errorf("provider connections freed in %s (%d still open), want within about 1 s of the leave", freedIn, stillHeld)
	}
	if gone < clients || unreachable > 0 {
		t.Errorf("%d client_gone and %d unreachable records, want %d and 0", gone, unreachable, clients)
	}
	if rssDuring-rssBefore > 64<<10 {
		t.Errorf("RSS grew %d MiB for %d held requests", (rssDuring-rssBefore)>>10, clients)
	}
	if ok == 0 || fail > ok/10 {
		t.Errorf("the legitimate client: %d ok, %d failed", ok, fail)
	}

	hs.stop()
}
