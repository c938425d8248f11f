package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// mustRun starts run with args on a pipe and returns the base URL it
// printed and a stop function that cancels it and returns its error.
func mustRun(tb testing.TB, args ...string) (string, func() error) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := run(ctx, args, pw, io.Discard)
		pw.CloseWithError(io.EOF)
		done <- err
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		cancel()
		tb.Fatalf("first line: %v (run: %v)", err, <-done)
	}
	base, ok := strings.CutPrefix(strings.TrimSpace(line), "listening on ")
	if !ok {
		cancel()
		tb.Fatalf("first line %q", line)
	}
	stopped := false
	stop := func() error {
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(defaultGrace + time.Second):
			tb.Fatal("run did not return after cancel")
			return nil
		}
	}
	tb.Cleanup(func() {
		if !stopped {
			_ = stop()
		}
	})
	return base, stop
}

func post(tb testing.TB, base, key string, header map[string]string) *http.Response {
	tb.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/chat/completions",
		strings.NewReader(`{"model":"gpt-5","stream":true,"stream_options":{"include_usage":true}}`))
	req.Header.Set("Authorization", "Bearer "+key)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { resp.Body.Close() })
	return resp
}

func TestRunServesTheFakeAndStopsOnCancel(t *testing.T) {
	base, stop := mustRun(t, "-keys", "k1,k2", "-events", "3", "-output", "9", "-reasoning", "0")
	resp := post(t, base, "k2", nil)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"completion_tokens":9`) || !strings.HasSuffix(string(body), "data: [DONE]\n\n") {
		t.Fatalf("status %d, body %s", resp.StatusCode, body)
	}
	if resp := post(t, base, "k3", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("unlisted key: status %d, want 401", resp.StatusCode)
	}
	r, err := http.Get(base + upstreamtest.CountersPath)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var c upstreamtest.Counters
	if err := json.NewDecoder(r.Body).Decode(&c); err != nil || c.Requests != 2 || c.StreamsCompleted != 1 {
		t.Errorf("counters %+v (%v), want 2 requests and 1 completed stream", c, err)
	}
	if err := stop(); err != nil {
		t.Errorf("run returned %v after cancel", err)
	}
}

func TestRunEndsHeldStreamsOnShutdown(t *testing.T) {
	base, stop := mustRun(t, "-grace", "50ms")
	resp := post(t, base, "any", map[string]string{upstreamtest.HeaderFault: "silence"})
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	start := time.Now()
	if err := stop(); err != nil {
		t.Errorf("run returned %v", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("shutdown took %v with a silent stream open", el)
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-events", "-3"},
		{"-fault", "explode"},
		{"-nope"},
		{"stray"},
	} {
		if err := run(context.Background(), args, io.Discard, io.Discard); err == nil {
			t.Errorf("%q: run succeeded", args)
		}
	}
}

// TestRunTracesKeysAndClientIDs: -key-tags marks the request id with the
// key's tag, and -client-ids counts each client request id, answered or
// not.
func TestRunTracesKeysAndClientIDs(t *testing.T) {
	base, _ := mustRun(t, "-key-tags", "-client-ids", "-events", "2")
	resp := post(t, base, "k1", map[string]string{clientIDHeader: "c-1"})
	io.Copy(io.Discard, resp.Body)
	if got := resp.Header.Get("X-Request-Id"); !strings.HasSuffix(got, "-"+KeyTag("k1")) || KeyTag("k1") == KeyTag("k2") {
		t.Errorf("X-Request-Id %q, want the tag %s of k1", got, KeyTag("k1"))
	}
	// A client that goes away mid-stream is seen, not answered.
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/chat/completions", strings.NewReader(`{"model":"gpt-5","stream":true}`))
	req.Header.Set("Authorization", "Bearer k2")
	req.Header.Set(clientIDHeader, "c-2")
	req.Header.Set(upstreamtest.HeaderFault, "silence")
	r2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	var got map[string]idCount
	ok := false
	for deadline := time.Now().Add(5 * time.Second); !ok && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		r, err := http.Get(base + ClientIDsPath)
		if err != nil {
			t.Fatal(err)
		}
		got = nil
		json.NewDecoder(r.Body).Decode(&got)
		r.Body.Close()
		ok = got["c-1"] == idCount{Seen: 1, Answered: 1} && got["c-2"] == idCount{Seen: 1}
	}
	if !ok {
		t.Errorf("client ids %v, want c-1 seen and answered, c-2 seen only", got)
	}
}
