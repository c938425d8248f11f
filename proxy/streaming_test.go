package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go"
	anthropicopt "github.com/anthropics/anthropic-sdk-go/option"
	oai "github.com/openai/openai-go/v3"
	oaiopt "github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
	openai "github.com/sashabaranov/go-openai"

	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

const anthropicStreamBody = `{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}`

// readEvent reads one SSE event (up to its blank line) from r.
func readEvent(r *bufio.Reader) (string, error) {
	var b strings.Builder
	for {
		line, err := r.ReadString('\n')
		b.WriteString(line)
		if err != nil {
			return b.String(), err
		}
		if line == "\n" || line == "\r\n" {
			return b.String(), nil
		}
	}
}

// Test 1: each event reaches the client as it arrives. The upstream flushes
// headers and one event, then blocks; the client must see the status, the
// headers and that event before the block is released
// (after TestReverseProxyFlushIntervalHeaders).
func TestStreamDeliversEachEventBeforeTheNextExists(t *testing.T) {
	gate := upstreamtest.NewGate()
	e := newEnv(t, envOptions{fake: upstreamtest.Config{Hold: gate.Hold}})
	defer gate.Release()
	tok := e.token("ws", "p", "u", "")
	resp := e.do("POST", "/anthropic/v1/messages", tok, anthropicStreamBody)
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("status %d type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if resp.Header.Get("X-Accel-Buffering") != "no" {
		t.Errorf("X-Accel-Buffering = %q, want no", resp.Header.Get("X-Accel-Buffering"))
	}
	ev := make(chan string, 1)
	br := bufio.NewReader(resp.Body)
	go func() {
		s, _ := readEvent(br)
		ev <- s
	}()
	select {
	case s := <-ev:
		if !strings.Contains(s, "message_start") {
			t.Fatalf("first event = %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("first event did not arrive while the upstream was blocked")
	}
	// The fake flushes the event, then parks in the gate; the event can
	// win that race, so wait for the park rather than assume it.
	testkit.Eventually(t, 5*time.Second, "the upstream to park in the gate", func() bool { return gate.Waiting() == 1 })
	gate.Release()
	rest, err := io.ReadAll(br)
	if err != nil || !strings.Contains(string(rest), "message_stop") {
		t.Fatalf("rest of stream: %v %q", err, rest)
	}
}

// Test 2: a client that goes away cancels the upstream request within two
// event gaps, and the record says client_gone with the usage seen so far.
func TestClientDisconnectCancelsUpstream(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws", "p", "u", "")
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", e.URL+"/anthropic/v1/messages", strings.NewReader(anthropicStreamBody))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set(upstreamtest.HeaderGap, "50ms")
	req.Header.Set(upstreamtest.HeaderEvents, "200")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := readEvent(bufio.NewReader(resp.Body)); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	testkit.Eventually(t, 3*time.Second, "the upstream stream to be cancelled", func() bool {
		return e.fake.Counters().StreamsCancelled == 1
	})
	rec := e.record(resp)
	if rec.Outcome != metering.OutcomeClientGone {
		t.Errorf("outcome = %s, want client_gone", rec.Outcome)
	}
	if rec.Usage == nil || rec.Usage.InputUncached == 0 || rec.Source != metering.SourcePartial {
		t.Errorf("usage = %+v source %s, want message_start's input as partial", rec.Usage, rec.Source)
	}
}

// Test 3: a silent upstream is ended after the idle window; one that keeps
// trickling runs well past three windows.
func TestIdleTimeoutEndsSilentStreamsOnly(t *testing.T) {
	e := newEnv(t, envOptions{idle: 300 * time.Millisecond})
	tok := e.token("ws", "p", "u", "")
	t.Run("SilentUpstreamIsCut", func(t *testing.T) {
		start := time.Now()
		resp := e.do("POST", "/anthropic/v1/messages", tok, anthropicStreamBody, upstreamtest.HeaderFault, "silence")
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		// The error event ends the stream, cleanly; it is what tells the
		// client this answer is not complete.
		if err != nil {
			t.Errorf("read: %v", err)
		}
		if _, notice := lastEvent(string(body)); !strings.HasPrefix(notice, "event: error\ndata: ") || !strings.Contains(notice, "the provider sent nothing for 300ms, so tollgate ended the stream") {
			t.Errorf("last event %q, want the idle notice", notice)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("idle stream lasted %s", d)
		}
		rec := e.record(resp)
		if rec.Outcome != metering.OutcomeUpstreamIdle {
			t.Errorf("outcome = %s, want upstream_idle", rec.Outcome)
		}
	})
	t.Run("TricklingUpstreamContinues", func(t *testing.T) {
		resp := e.do("POST", "/anthropic/v1/messages", tok, anthropicStreamBody, upstreamtest.HeaderGap, "100ms", upstreamtest.HeaderEvents, "12")
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !strings.Contains(string(body), "message_stop") {
			t.Fatalf("trickling stream: %v", err)
		}
		if rec := e.record(resp); rec.Outcome != metering.OutcomeOK {
			t.Errorf("outcome = %s", rec.Outcome)
		}
	})
}

// Test 4: no total cap. A stream longer than every other timeout succeeds.
func TestNoTotalTimeoutOnStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 2.5 s")
	}
	e := newEnv(t, envOptions{idle: time.Second, headerWait: time.Second})
	tok := e.token("ws", "p", "u", "")
	start := time.Now()
	resp := e.do("POST", "/openai/v1/responses", tok, `{"model":"gpt-5","input":"hi","stream":true}`, upstreamtest.HeaderGap, "100ms", upstreamtest.HeaderEvents, "25")
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !strings.Contains(string(body), "response.completed") {
		t.Fatalf("long stream: %v", err)
	}
	if d := time.Since(start); d < 2*time.Second {
		t.Fatalf("stream lasted only %s; the test proves nothing", d)
	}
}

// Test 5: an upstream error before headers keeps its status and body; no
// event-stream content type is sent.
func TestUpstreamErrorBeforeHeadersKeepsStatus(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws", "p", "u", "")
	for _, tc := range []struct {
		name, path, body, fault string
		status                  int
	}{
		{"AnthropicRateLimited", "/anthropic/v1/messages", anthropicStreamBody, "status=429", 429},
		{"AnthropicOverloaded", "/anthropic/v1/messages", anthropicStreamBody, "status=529", 529},
		{"ChatServerError", "/openai/v1/chat/completions", `{"model":"gpt-4o","stream":true,"messages":[]}`, "status=500", 500},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := e.do("POST", tc.path, tok, tc.body, upstreamtest.HeaderFault, tc.fault)
			body := readAll(t, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if strings.Contains(resp.Header.Get("Content-Type"), "event-stream") {
				t.Errorf("error answer carries an event-stream content type")
			}
			up := e.lastFake()
			if !bytes.Equal(body, up.Response) {
				t.Errorf("error body changed:\n got %s\nwant %s", body, up.Response)
			}
			if tc.status == 429 && resp.Header.Get("Retry-After") == "" {
				t.Errorf("Retry-After not passed back")
			}
			rec := e.record(resp)
			if rec.Outcome != metering.OutcomeUpstreamError || rec.Source != metering.SourceNone || rec.Status != tc.status {
				t.Errorf("record = %s/%s/%d", rec.Outcome, rec.Source, rec.Status)
			}
		})
	}
}

// Test 6: an upstream that closes mid-stream yields a truncated record with
// the partial usage seen, never zero; the client's stream ends with an
// error event, not as if complete.
func TestTruncatedStreamIsRecordedWithPartialUsage(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws", "p", "u", "")
	resp := e.do("POST", "/anthropic/v1/messages", tok, anthropicStreamBody, upstreamtest.HeaderFault, "cut=3")
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if _, last := lastEvent(string(body)); !strings.HasPrefix(last, "event: error\n") {
		t.Errorf("a cut stream ended with %q, not an error event", last)
	}
	rec := e.record(resp)
	if rec.Outcome != metering.OutcomeTruncated || rec.Source != metering.SourcePartial {
		t.Errorf("record = %s/%s, want truncated/partial", rec.Outcome, rec.Source)
	}
	if rec.Usage == nil || rec.Usage.InputTotal() == 0 {
		t.Errorf("truncated record has no usage: %+v", rec.Usage)
	}
}

// Test 7: shutdown with a stream open returns within grace + 1 s once the
// base context is cancelled, and the stream is cut.
func TestShutdownEndsOpenStreams(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws", "p", "u", "")
	resp := e.do("POST", "/anthropic/v1/messages", tok, anthropicStreamBody, upstreamtest.HeaderFault, "trickle")
	br := bufio.NewReader(resp.Body)
	if _, err := readEvent(br); err != nil {
		t.Fatal(err)
	}
	const grace = 200 * time.Millisecond
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- e.srv.Shutdown(context.Background()) }()
	select {
	case <-done:
		t.Fatal("shutdown returned while a stream was open")
	case <-time.After(grace):
	}
	e.cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("shutdown: %v", err)
		}
	case <-time.After(time.Second):
		t.Fatal("shutdown did not return within grace + 1 s after cancelling streams")
	}
	if d := time.Since(start); d > grace+time.Second {
		t.Errorf("shutdown took %s", d)
	}
	rest, _ := io.ReadAll(br)
	if _, notice := lastEvent(string(rest)); !strings.Contains(notice, "tollgate is shutting down and ended the stream") {
		t.Errorf("last event %q, want the shutdown notice", notice)
	}
	resp.Body.Close()
	if rec := e.record(resp); rec.Outcome == metering.OutcomeOK {
		t.Errorf("cut stream recorded as ok")
	}
}

// Test 8: after 100 streams with mixed endings, goroutines return to the
// baseline.
func TestStreamsLeaveNoGoroutines(t *testing.T) {
	e := newEnv(t, envOptions{idle: 200 * time.Millisecond})
	tok := e.token("ws", "p", "u", "")
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	run := func(fault string, abandon bool) {
		req, _ := http.NewRequest("POST", e.URL+"/anthropic/v1/messages", strings.NewReader(anthropicStreamBody))
		req.Header.Set("Authorization", "Bearer "+tok)
		if fault != "" {
			req.Header.Set(upstreamtest.HeaderFault, fault)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if abandon {
			readEvent(bufio.NewReader(resp.Body))
		} else {
			io.Copy(io.Discard, resp.Body)
		}
		resp.Body.Close()
	}
	run("", false) // warm up pools before the baseline
	testkit.Eventually(t, 5*time.Second, "the warm-up record", func() bool { return e.sink.Len() == 1 })
	base := runtime.NumGoroutine()
	faults := []string{"", "cut=2", "silence", "status=500", "midstream-error"}
	for i := 0; i < 100; i++ {
		run(faults[i%len(faults)], i%7 == 3)
	}
	testkit.Eventually(t, 10*time.Second, "101 records", func() bool { return e.sink.Len() == 101 })
	client.CloseIdleConnections()
	testkit.Eventually(t, 10*time.Second, "goroutines back to baseline", func() bool {
		return runtime.NumGoroutine() <= base+2
	})
}

// Test 10: usage tollgate injected stays invisible. A go-openai streaming
// client that did not ask for usage receives exactly what the provider
// sends without include_usage, while the record has the exact usage.
func TestInjectedUsageIsInvisibleToTheClient(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws", "p", "u", "")
	cfg := openai.DefaultConfig(tok)
	cfg.BaseURL = e.URL + "/openai/v1"
	cli := openai.NewClientWithConfig(cfg)
	st, err := cli.CreateChatCompletionStream(context.Background(), openai.ChatCompletionRequest{
		Model:    "gpt-4o",
		Messages: []openai.ChatCompletionMessage{{Role: "user", Content: "hi"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	for {
		ch, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(ch.Choices) == 0 {
			t.Fatalf("client received a chunk without choices (the injected usage chunk): %+v", ch)
		}
		if ch.Usage != nil {
			t.Errorf("client received usage it did not ask for")
		}
		text.WriteString(ch.Choices[0].Delta.Content)
	}
	st.Close()
	up := e.lastFake()
	if !up.IncludeUsage {
		t.Fatalf("tollgate did not inject include_usage upstream")
	}
	if text.Len() == 0 {
		t.Errorf("no text received")
	}
	rec := waitLast(t, e)
	if !rec.Injected || rec.Source != metering.SourceUpstream || rec.Usage == nil || *rec.Usage != asMetering(upstreamtest.DefaultUsage.Normalised(upstreamtest.OpenAIChat)) {
		t.Errorf("record injected=%v source=%s usage=%+v", rec.Injected, rec.Source, rec.Usage)
	}

	// Byte level: the client stream is the provider's minus the usage-only
	// chunk, and nothing else.
	resp := e.do("POST", "/openai/v1/chat/completions", tok, `{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":false},"messages":[]}`)
	got := readAll(t, resp.Body)
	resp.Body.Close()
	up = e.lastFake()
	want := dropUsageOnlyChunk(t, up.Response)
	if !bytes.Equal(got, want) {
		t.Errorf("client bytes:\n%q\nwant provider bytes minus the usage chunk:\n%q", got, want)
	}
	if r := e.record(resp); !r.Injected || r.Usage == nil {
		t.Errorf("explicit false: record injected=%v usage=%+v", r.Injected, r.Usage)
	}
}

func waitLast(t *testing.T, e *testEnv) metering.Record {
	t.Helper()
	testkit.Eventually(t, 5*time.Second, "a record", func() bool { return e.sink.Len() > 0 })
	rs := e.sink.Records()
	return rs[len(rs)-1]
}

func dropUsageOnlyChunk(t *testing.T, b []byte) []byte {
	t.Helper()
	var out []byte
	dropped := 0
	for _, ev := range bytes.SplitAfter(b, []byte("\n\n")) {
		if bytes.Contains(ev, []byte(`"choices":[]`)) && bytes.Contains(ev, []byte(`"usage":{`)) {
			dropped++
			continue
		}
		out = append(out, ev...)
	}
	if dropped != 1 {
		t.Fatalf("provider stream had %d usage-only chunks, want 1", dropped)
	}
	return out
}

// TestProviderOptOutOfUsageInjection: a backend that rejects stream_options
// gets the body unchanged; with no usage in the stream the record says
// missing, never zero.
func TestProviderOptOutOfUsageInjection(t *testing.T) {
	e := newEnv(t, envOptions{registryEdit: func(y string) string {
		return strings.Replace(y, "  openai:\n    base_url:", "  openai:\n    include_usage: false\n    base_url:", 1)
	}})
	tok := e.token("ws", "p", "u", "")
	const body = `{"model":"gpt-4o","stream":true,"messages":[]}`
	resp := e.do("POST", "/openai/v1/chat/completions", tok, body)
	got := readAll(t, resp.Body)
	resp.Body.Close()
	up := e.lastFake()
	if string(up.Body) != body || up.IncludeUsage {
		t.Errorf("body was edited for an opted-out provider: %s", up.Body)
	}
	if !bytes.Equal(got, up.Response) {
		t.Errorf("client bytes differ from the provider's")
	}
	rec := e.record(resp)
	if rec.Injected || rec.Usage != nil || rec.Source != metering.SourceMissing || rec.Outcome != metering.OutcomeOK {
		t.Errorf("record injected=%v usage=%+v source=%s outcome=%s", rec.Injected, rec.Usage, rec.Source, rec.Outcome)
	}
}

// burstUpstream answers every request with one SSE stream sent in a single
// write: headers and every event, each event its own chunk, the way a
// provider's events arrive when they were produced faster than read. With
// cut, the body's last chunk is left out and the connection closed.
func burstUpstream(t *testing.T, events []string, cut bool) string {
	var body strings.Builder
	for _, ev := range events {
		fmt.Fprintf(&body, "%x\r\n%s\r\n", len(ev), ev)
	}
	if !cut {
		body.WriteString("0\r\n\r\n")
	}
	resp := "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + body.String()
	ln := serveTCP(t, func(c net.Conn) {
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			if _, err := io.WriteString(c, resp); err != nil || cut {
				return
			}
		}
	})
	return "http://" + ln.Addr().String()
}

// rawChunks sends one request over a bare connection and returns the
// response body's chunks as they were framed on the wire.
func rawChunks(t *testing.T, url, path, token, body string) []string {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", path, token, len(body), body)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || len(resp.TransferEncoding) == 0 {
		t.Fatalf("status %d, transfer-encoding %v", resp.StatusCode, resp.TransferEncoding)
	}
	// ReadResponse leaves the chunked body unread in br.
	var chunks []string
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("chunk header: %v", err)
		}
		var n int
		if _, err := fmt.Sscanf(strings.TrimSpace(line), "%x", &n); err != nil {
			t.Fatalf("chunk header %q: %v", line, err)
		}
		if n == 0 {
			return chunks
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(br, b); err != nil {
			t.Fatal(err)
		}
		chunks = append(chunks, string(b[:n]))
	}
}

// Events that reach tollgate together leave it together: one client write
// for the burst, not one per upstream chunk. Each write costs a syscall and
// a packet; S3 spent a third of its CPU in them. Held back is only what is
// already in hand (TestStreamDeliversEachEventBeforeTheNextExists).
func TestBurstOfEventsIsOneClientWrite(t *testing.T) {
	anthropic := []string{"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n"}
	chat := []string{}
	for i := 0; i < 18; i++ {
		// One event is several times tollgate's read buffer.
		text := fmt.Sprintf("w%d ", i)
		if i == 9 {
			text = strings.Repeat("long ", 1000)
		}
		anthropic = append(anthropic, fmt.Sprintf("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"%s\"}}\n\n", text))
		chat = append(chat, fmt.Sprintf("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"%s\"}}]}\n\n", text))
	}
	anthropic = append(anthropic, "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":18}}\n\n", "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
	usageChunk := "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":18,\"total_tokens\":25}}\n\n"
	chat = append(chat, usageChunk, "data: [DONE]\n\n")

	for _, tc := range []struct {
		name, path, body string
		events           []string
		want             string // what the client must receive
		usage            metering.Usage
	}{
		{"passthrough", "/anthropic/v1/messages", anthropicStreamBody, anthropic, strings.Join(anthropic, ""),
			metering.Usage{InputUncached: 7, Output: 18}},
		{"hidden usage", "/openai/v1/chat/completions", `{"model":"gpt-4o","stream":true,"messages":[]}`, chat,
			strings.Replace(strings.Join(chat, ""), usageChunk, "", 1), metering.Usage{InputUncached: 7, Output: 18}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{upstreamURL: burstUpstream(t, tc.events, false)})
			tok := e.token("ws", "p", "u", "")
			chunks := rawChunks(t, e.URL, tc.path, tok, tc.body)
			if got := strings.Join(chunks, ""); got != tc.want {
				t.Fatalf("client got\n%q\nwant\n%q", got, tc.want)
			}
			if len(chunks) != 1 {
				t.Errorf("%d upstream chunks reached the client in %d writes, want 1", len(tc.events), len(chunks))
			}
			testkit.Eventually(t, 5*time.Second, "the usage record", func() bool { return e.sink.Len() == 1 })
			rec := e.sink.Records()[0]
			if rec.Outcome != metering.OutcomeOK || rec.Usage == nil || *rec.Usage != tc.usage || rec.BytesOut != int64(len(tc.want)) {
				t.Errorf("record outcome %s usage %+v bytes_out %d, want ok %+v %d", rec.Outcome, rec.Usage, rec.BytesOut, tc.usage, len(tc.want))
			}
		})
	}
}

// lastEvent splits an SSE body at blank lines and returns its last event
// and everything before it.
func lastEvent(body string) (before, last string) {
	evs := strings.SplitAfter(strings.TrimSuffix(body, "\n\n"), "\n\n")
	last = evs[len(evs)-1]
	return strings.Join(evs[:len(evs)-1], ""), strings.TrimSuffix(last, "\n\n") + "\n\n"
}

// A stream the provider cuts before its terminal event ends, for every
// dialect, with that dialect's error event after the provider's bytes. The
// event is the dialect's terminal event for a failed stream, so the stream
// ends there, cleanly, except where the registry says its clients need the
// connection cut as well (Gemini).
func TestCutStreamEndsWithTheDialectsErrorEvent(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws", "p", "u", "")
	const why = "the provider's stream broke off before its end; the answer is incomplete"
	for _, tc := range []struct {
		name, path, body string
		prefix           string // the notice's lines before its JSON
		message          string // the path to the message in the notice's JSON
		cut              bool   // the connection is cut after the notice
	}{
		{"anthropic", "/anthropic/v1/messages", anthropicStreamBody, "event: error\ndata: ", "error.message", false},
		{"chat", "/openai/v1/chat/completions", `{"model":"gpt-4o","stream":true,"messages":[]}`, "data: ", "error.message", false},
		{"responses", "/openai/v1/responses", `{"model":"gpt-5","input":"hi","stream":true}`, "event: response.failed\ndata: ", "response.error.message", false},
		{"gemini", "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", `{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}`, "data: ", "error.message", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := e.do("POST", tc.path, tok, tc.body, upstreamtest.HeaderFault, "cut=3")
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if (err != nil) != tc.cut {
				t.Errorf("read error %v, want a cut connection: %v", err, tc.cut)
			}
			up := e.lastFake()
			if !bytes.HasPrefix(got, up.Response) {
				t.Fatalf("client bytes do not start with the provider's:\n%q\n%q", got, up.Response)
			}
			before, notice := lastEvent(string(got))
			if before != string(up.Response) || !strings.HasPrefix(notice, tc.prefix) {
				t.Fatalf("after the provider's bytes the client got %q, want one event starting %q", got[len(up.Response):], tc.prefix)
			}
			var doc map[string]any
			if err := json.Unmarshal([]byte(strings.TrimSuffix(strings.TrimPrefix(notice, tc.prefix), "\n\n")), &doc); err != nil {
				t.Fatalf("notice %q: %v", notice, err)
			}
			v := any(doc)
			for _, k := range strings.Split(tc.message, ".") {
				m, _ := v.(map[string]any)
				v = m[k]
			}
			if v != why {
				t.Errorf("notice %s: message %v, want %q", notice, v, why)
			}
			if rec := e.record(resp); rec.Outcome != metering.OutcomeTruncated || rec.BytesOut != int64(len(up.Response)) {
				t.Errorf("record outcome %s bytes_out %d, want truncated %d", rec.Outcome, rec.BytesOut, len(up.Response))
			}
		})
	}
}

// A provider cut inside a line: the client gets every whole line, not the
// broken start of the next (which it could never parse), then the notice,
// whose blank line ends the unfinished event; the record counts what the
// client got. In one upstream chunk with the cut, and as separate chunks.
func TestCutInsideALineDropsItsStart(t *testing.T) {
	start := "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n"
	delta := "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\r\n\r\n"
	lines := "event: content_block_delta\n"
	partial := "data: {\"type\":\"content_bl"
	for name, parts := range map[string][]string{
		"separate chunks": {start, delta, lines + partial},
		"one chunk":       {start + delta + lines + partial},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, envOptions{upstreamURL: burstUpstream(t, parts, true)})
			resp := e.do("POST", "/anthropic/v1/messages", e.token("ws", "p", "u", ""), anthropicStreamBody)
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			want := start + delta + lines + "\n\nevent: error\ndata: "
			if !strings.HasPrefix(string(got), want) || !strings.HasSuffix(string(got), "}\n\n") || strings.Contains(string(got), "content_bl\"") {
				t.Errorf("client got %q, want it to start %q and end the notice's event", got, want)
			}
			if rec := e.record(resp); rec.BytesOut != int64(len(start+delta+lines)) {
				t.Errorf("bytes_out %d, want %d (what the client got before the notice)", rec.BytesOut, len(start+delta+lines))
			}
		})
	}
}

// The cut came after the terminal event's lines but before its blank
// line: the meter counts the event, so the client gets it ended and a
// clean end, not an event it never dispatches (and a retry it pays for).
func TestTerminalEventWithoutItsBlankLineThenCut(t *testing.T) {
	events := []string{
		"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n",
		"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":3}}\n\n",
		"event: message_stop\ndata: {\"type\":\"message_stop\"}\n",
	}
	e := newEnv(t, envOptions{upstreamURL: burstUpstream(t, events, true)})
	resp := e.do("POST", "/anthropic/v1/messages", e.token("ws", "p", "u", ""), anthropicStreamBody)
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := strings.Join(events, "") + "\n"; err != nil || string(got) != want {
		t.Errorf("client got %q, %v; want %q and a clean end", got, err, want)
	}
	if rec := e.record(resp); rec.Outcome != metering.OutcomeOK {
		t.Errorf("outcome %s, want ok", rec.Outcome)
	}
}

// A keep-alive comment line without a blank line after it (SSE allows
// one) reaches the client at once: only a line's start waits. The provider
// sends the rest only after the client has the comment, so holding it
// would hang the stream until the test's timeout.
func TestKeepAliveLineIsNotHeld(t *testing.T) {
	first := "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n"
	ping := ": keep-alive\n"
	rest := "data: [DONE]\n\n"
	seen := make(chan struct{})
	ln := serveTCP(t, func(c net.Conn) {
		defer c.Close()
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		chunk := func(s string) { fmt.Fprintf(c, "%x\r\n%s\r\n", len(s), s) }
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
		chunk(first)
		chunk(ping)
		select {
		case <-seen:
		case <-time.After(5 * time.Second):
		}
		chunk(rest)
		io.WriteString(c, "0\r\n\r\n")
	})
	e := newEnv(t, envOptions{upstreamURL: "http://" + ln.Addr().String()})
	resp := e.do("POST", "/openai/v1/chat/completions", e.token("ws", "p", "u", ""), `{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[]}`)
	defer resp.Body.Close()
	var got []byte
	buf := make([]byte, 4096)
	start := time.Now()
	for !strings.HasSuffix(string(got), ping) {
		n, err := resp.Body.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil || time.Since(start) > 4*time.Second {
			t.Fatalf("client has %q (%v), want the keep-alive line before the provider sends more", got, err)
		}
	}
	close(seen)
	tail, _ := io.ReadAll(resp.Body)
	if string(got)+string(tail) != first+ping+rest {
		t.Errorf("client got %q", string(got)+string(tail))
	}
}

// An event split over several upstream chunks reaches the client whole
// and in order, and a clean end passes a trailing partial event through.
func TestEventSplitAcrossChunksArrivesWhole(t *testing.T) {
	ev := "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n"
	parts := []string{ev[:10], ev[10:40], ev[40:], "data: [DONE]\n\n", ": trailing comment without its blank line"}
	e := newEnv(t, envOptions{upstreamURL: burstUpstream(t, parts, false)})
	resp := e.do("POST", "/openai/v1/chat/completions", e.token("ws", "p", "u", ""), `{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[]}`)
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(got) != strings.Join(parts, "") {
		t.Errorf("client got %q, %v; want %q", got, err, strings.Join(parts, ""))
	}
}

func TestLinesEnd(t *testing.T) {
	for _, c := range []struct {
		in         string
		from, want int
	}{
		{"", 0, 0},
		{"data: a", 0, 0},
		{"data: a\n", 0, 8},
		{"data: a\r", 0, 8},
		{"data: a\r\n", 0, 9},
		{"a\nb\nc", 0, 4},
		{"x\n\ny", 0, 3},
		{"abcdef\n", 3, 7},
		{"abcdef", 3, 0},
	} {
		if got := linesEnd([]byte(c.in), c.from); got != c.want {
			t.Errorf("linesEnd(%q, %d) = %d, want %d", c.in, c.from, got, c.want)
		}
	}
}

// The provider's terminal event arrived, then its connection broke before
// the body's last chunk: the answer is whole, so the client's stream ends
// cleanly, with no notice, and nobody retries (and pays for) it.
func TestTerminalEventThenCutEndsCleanly(t *testing.T) {
	events := []string{
		"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n",
		"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":3}}\n\n",
		"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
	}
	e := newEnv(t, envOptions{upstreamURL: burstUpstream(t, events, true)})
	resp := e.do("POST", "/anthropic/v1/messages", e.token("ws", "p", "u", ""), anthropicStreamBody)
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(got) != strings.Join(events, "") {
		t.Errorf("client got %q, %v; want the provider's events and a clean end", got, err)
	}
	if rec := e.record(resp); rec.Outcome != metering.OutcomeOK {
		t.Errorf("outcome %s, want ok", rec.Outcome)
	}
}

// The service tier the provider says served a stream is recorded and picks
// the price row: a priority answer is unpriced, not costed at the standard
// rate (the shipped table has no priority rows).
func TestServiceTierIsRecordedAndPriced(t *testing.T) {
	chat := func(tier string) []string {
		return []string{
			`data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-2024-08-06","service_tier":"` + tier + `","choices":[{"index":0,"delta":{"content":"hi"}}]}` + "\n\n",
			`data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-2024-08-06","service_tier":"` + tier + `","choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":100,"total_tokens":1100}}` + "\n\n",
			"data: [DONE]\n\n",
		}
	}
	for _, tc := range []struct {
		tier   string
		priced bool
	}{{"default", true}, {"priority", false}} {
		t.Run(tc.tier, func(t *testing.T) {
			e := newEnv(t, envOptions{upstreamURL: burstUpstream(t, chat(tc.tier), false), pricer: metering.DefaultPrices()})
			resp := e.do("POST", "/openai/v1/chat/completions", e.token("ws", "p", "u", ""), `{"model":"gpt-4o","stream":true,"messages":[]}`)
			readAll(t, resp.Body)
			resp.Body.Close()
			rec := e.record(resp)
			if rec.ServiceTier != tc.tier || rec.Usage == nil || (rec.CostMicroUSD != nil) != tc.priced || rec.Unpriced == tc.priced {
				t.Errorf("record tier %q usage %+v cost %v unpriced %v; want tier %q, priced %v", rec.ServiceTier, rec.Usage, rec.CostMicroUSD, rec.Unpriced, tc.tier, tc.priced)
			}
		})
	}
}

// A provider's own error event ends the stream: tollgate adds nothing, and
// the end is clean except for dialects whose clients need the cut
// (Gemini, cut_after_stream_error).
func TestProvidersErrorEventEndsTheStream(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws", "p", "u", "")
	for _, tc := range []struct {
		name, path, body string
		cut              bool
	}{
		{"anthropic", "/anthropic/v1/messages", anthropicStreamBody, false},
		{"gemini", "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", `{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := e.do("POST", tc.path, tok, tc.body, upstreamtest.HeaderFault, "midstream-error")
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if (err != nil) != tc.cut {
				t.Errorf("read error %v, want a cut: %v", err, tc.cut)
			}
			if up := e.lastFake(); !bytes.Equal(got, up.Response) {
				t.Errorf("client got\n%q\nwant the provider's bytes only\n%q", got, up.Response)
			}
			if rec := e.record(resp); rec.Outcome != metering.OutcomeUpstreamError {
				t.Errorf("outcome %s, want upstream_error", rec.Outcome)
			}
		})
	}
}

// A provider that ends its stream cleanly without the terminal event (some
// compatible backends never send [DONE]) is passed through as it came: a
// notice there would turn a whole answer into an SDK error.
func TestCleanEndWithoutTerminalEventPassesThrough(t *testing.T) {
	events := []string{
		`data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"hi"}}]}` + "\n\n",
		`data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}` + "\n\n",
	}
	e := newEnv(t, envOptions{upstreamURL: burstUpstream(t, events, false)})
	resp := e.do("POST", "/openai/v1/chat/completions", e.token("ws", "p", "u", ""), `{"model":"gpt-4o","stream":true,"messages":[]}`)
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(got) != strings.Join(events, "") {
		t.Errorf("client got %q, %v; want the provider's events and a clean end", got, err)
	}
	if rec := e.record(resp); rec.Outcome != metering.OutcomeTruncated {
		t.Errorf("outcome %s, want truncated", rec.Outcome)
	}
}

// A provider that ends its stream cleanly without the terminal event its
// dialect's SDKs wait for (Anthropic message_stop, Responses
// response.completed): the client reads tollgate's reason, in the
// dialect's error event, instead of its SDK's own "stream ended without
// producing a Message", and the record says truncated.
func TestCleanEndWithoutTerminalEventGetsTollgatesReason(t *testing.T) {
	const why = "the provider ended the stream without its final event"
	ctx := context.Background()
	t.Run("anthropic-sdk-go", func(t *testing.T) {
		events := []string{
			"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n",
			"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
			"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
		}
		e := newEnv(t, envOptions{upstreamURL: burstUpstream(t, events, false)})
		cli := anthropic.NewClient(anthropicopt.WithBaseURL(e.URL+"/anthropic"), anthropicopt.WithAPIKey(e.token("ws", "p", "u", "")), anthropicopt.WithMaxRetries(0))
		st := cli.Messages.NewStreaming(ctx, anthropic.MessageNewParams{
			Model: "claude-sonnet-4-5", MaxTokens: 64,
			Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))},
		})
		var acc anthropic.Message
		for st.Next() {
			_ = acc.Accumulate(st.Current())
		}
		if err := st.Err(); err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("stream error = %v, want tollgate's %q", err, why)
		}
		st.Close()
		testkit.Eventually(t, 5*time.Second, "the record", func() bool { return e.sink.Len() == 1 })
		if rec := e.sink.Records()[0]; rec.Outcome != metering.OutcomeTruncated || rec.Source != metering.SourcePartial {
			t.Errorf("record %s/%s, want truncated/partial", rec.Outcome, rec.Source)
		}
	})
	t.Run("openai-go responses", func(t *testing.T) {
		events := []string{
			"event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"model\":\"gpt-5\",\"output\":[]}}\n\n",
			"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hi\"}\n\n",
		}
		e := newEnv(t, envOptions{upstreamURL: burstUpstream(t, events, false)})
		failed, err := responsesFailedEvent(e.URL, e.token("ws", "p", "u", ""))
		if failed == nil || !strings.Contains(failed.Response.Error.Message, why) || failed.Response.ID != "resp_1" {
			t.Errorf("response.failed event = %+v (stream error %v), want tollgate's %q", failed, err, why)
		}
		testkit.Eventually(t, 5*time.Second, "the record", func() bool { return e.sink.Len() == 1 })
		if rec := e.sink.Records()[0]; rec.Outcome != metering.OutcomeTruncated {
			t.Errorf("record outcome %s, want truncated", rec.Outcome)
		}
	})
}

// responsesFailedEvent streams a Responses request through tollgate at url
// with openai-go and returns the response.failed event it read, if any,
// and the stream's error.
func responsesFailedEvent(url, token string) (*responses.ResponseFailedEvent, error) {
	cli := oai.NewClient(oaiopt.WithBaseURL(url+"/openai/v1/"), oaiopt.WithAPIKey(token), oaiopt.WithMaxRetries(0))
	st := cli.Responses.NewStreaming(context.Background(), responses.ResponseNewParams{Model: "gpt-5", Input: responses.ResponseNewParamsInputUnion{OfString: oai.String("hi")}})
	defer st.Close()
	var failed *responses.ResponseFailedEvent
	for st.Next() {
		if ev := st.Current(); ev.Type == "response.failed" {
			f := ev.AsResponseFailed()
			failed = &f
		}
	}
	return failed, st.Err()
}

// A client that stops reading is gone once its writes have made no
// progress for the idle window: it no longer holds the stream and the
// provider's connection for good.
func TestStalledClientIsCut(t *testing.T) {
	e := newEnv(t, envOptions{idle: 300 * time.Millisecond})
	tok := e.token("ws", "p", "u", "")
	c, err := net.Dial("tcp", strings.TrimPrefix(e.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.(*net.TCPConn).SetReadBuffer(4096)
	// 40 MB of stream, far more than the sockets between can hold.
	fmt.Fprintf(c, "POST /anthropic/v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n%s: 10000\r\n%s: 4096\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		tok, upstreamtest.HeaderEvents, upstreamtest.HeaderChunkBytes, len(anthropicStreamBody), anthropicStreamBody)
	// Read nothing.
	testkit.Eventually(t, 10*time.Second, "the stalled stream's record", func() bool { return e.sink.Len() == 1 })
	if rec := e.sink.Records()[0]; rec.Outcome != metering.OutcomeClientGone {
		t.Errorf("outcome %s, want client_gone", rec.Outcome)
	}
	testkit.Eventually(t, 5*time.Second, "the provider's stream to be cancelled", func() bool { return e.fake.Counters().StreamsCancelled == 1 })
}
