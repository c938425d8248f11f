package upstreamtest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
)

// errorKind classifies a provider error body by its own envelope, failing
// when the body is not in dialect d's shape.
func errorKind(t *testing.T, d Dialect, status int, body []byte) string {
	t.Helper()
	m := obj(t, string(body))
	switch d {
	case Anthropic:
		if str(m, "type") != "error" || str(m, "error.message") == "" {
			t.Errorf("not an Anthropic error: %s", body)
		}
		return str(m, "error.type")
	case Gemini:
		if num(m, "error.code") != int64(status) || str(m, "error.message") == "" {
			t.Errorf("not a Gemini error for %d: %s", status, body)
		}
		return str(m, "error.status")
	}
	if str(m, "error.message") == "" {
		t.Errorf("not an OpenAI error: %s", body)
	}
	return str(m, "error.type") + "/" + str(m, "error.code")
}

func withFault(c call, fault string) call {
	c.header = map[string]string{HeaderFault: fault}
	return c
}

func TestStatusFaultAnswersWithTheProvidersErrorBeforeAnyStream(t *testing.T) {
	want := map[Dialect]map[int]string{
		Anthropic:       {401: "authentication_error", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"},
		OpenAIChat:      {401: "invalid_request_error/invalid_api_key", 429: "requests/rate_limit_exceeded", 500: "server_error/", 529: "server_error/"},
		OpenAIResponses: {401: "invalid_request_error/invalid_api_key", 429: "requests/rate_limit_exceeded", 500: "server_error/", 529: "server_error/"},
		Gemini:          {401: "UNAUTHENTICATED", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 529: "UNAVAILABLE"},
	}
	s, base := MustStart(t, Config{})
	for _, d := range allDialects {
		for _, status := range []int{401, 429, 500, 529} {
			t.Run(string(d)+"/"+http.StatusText(status), func(t *testing.T) {
				resp, body := do(t, base, withFault(call{dialect: d, stream: true}, "status="+strconv.Itoa(status)))
				if resp.StatusCode != status {
					t.Fatalf("status %d, want %d", resp.StatusCode, status)
				}
				if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
					t.Errorf("Content-Type = %q, want JSON", ct)
				}
				if got := errorKind(t, d, status, body); got != want[d][status] {
					t.Errorf("error kind %q, want %q", got, want[d][status])
				}
				retry := resp.Header.Get("Retry-After")
				if (status == 429) != (retry == "1") {
					t.Errorf("Retry-After = %q on a %d", retry, status)
				}
				if status == 429 && d != Gemini {
					if resp.Header.Get("Anthropic-Ratelimit-Requests-Remaining")+resp.Header.Get("X-Ratelimit-Remaining-Requests") != "0" {
						t.Errorf("429 without an exhausted rate-limit header: %v", resp.Header)
					}
				}
			})
		}
	}
	if c := s.Counters(); c.Streams != 0 {
		t.Errorf("status faults began %d streams, want 0", c.Streams)
	}
}

func TestCutBreaksTheConnectionBeforeTheTerminalEvent(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cut       string
		wantFirst int // events the client receives; -1: all but the terminal one
	}{
		{name: "AfterTwoEvents", cut: "cut=2", wantFirst: 2},
		{name: "BeforeAnyEvent", cut: "cut=0", wantFirst: 0},
		{name: "PastTheEndStillWithholdsTheTerminal", cut: "cut=1000", wantFirst: -1},
	} {
		for _, d := range allDialects {
			t.Run(tc.name+"/"+string(d), func(t *testing.T) {
				s, base := MustStart(t, Config{})
				_, full := do(t, base, call{dialect: d, stream: true})
				all := parseSSE(t, full)

				resp := send(t, base, withFault(call{dialect: d, stream: true}, tc.cut))
				got, err := io.ReadAll(resp.Body)
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("read error %v, want an unexpected EOF", err)
				}
				want := tc.wantFirst
				if want < 0 {
					want = len(all) - 1
				}
				if evs := parseSSE(t, got); len(evs) != want {
					t.Fatalf("received %d events, want %d", len(evs), want)
				}
				if !strings.HasPrefix(string(full), string(got)) {
					t.Errorf("cut stream is not a prefix of the full one")
				}
				testkit.Eventually(t, 2*time.Second, "the stream to be cut", func() bool { return s.Counters().StreamsCut == 1 })
				if r, _ := s.Last(); r.Outcome != OutcomeCut || string(r.Response) != string(got) {
					t.Errorf("record: outcome %q, %d bytes; want cut, %d bytes", r.Outcome, len(r.Response), len(got))
				}
			})
		}
	}
	t.Run("JSONBodyIsCutHalfway", func(t *testing.T) {
		_, base := MustStart(t, Config{})
		resp := send(t, base, withFault(call{dialect: OpenAIChat}, "cut=1"))
		got, err := io.ReadAll(resp.Body)
		if !errors.Is(err, io.ErrUnexpectedEOF) || json.Valid(got) {
			t.Errorf("read %d bytes, err %v; want a truncated body and an unexpected EOF", len(got), err)
		}
	})
}

func TestSilenceSendsTheFirstEventThenNothingUntilTheClientLeaves(t *testing.T) {
	s, base := MustStart(t, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/messages",
		strings.NewReader(call{dialect: Anthropic, stream: true}.body()))
	setAuth(req.Header, Anthropic, "k")
	req.Header.Set(HeaderFault, "silence")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if ev := readEvent(t, br); !strings.HasPrefix(ev, "event: message_start\n") {
		t.Fatalf("first event %q, want message_start", ev)
	}
	more := make(chan error, 1)
	go func() { _, err := br.ReadByte(); more <- err }()
	select {
	case err := <-more:
		t.Fatalf("received more after the first event (err %v)", err)
	case <-time.After(50 * time.Millisecond):
	}
	if c := s.Counters(); c.StreamsActive != 1 {
		t.Errorf("active streams %d, want 1", c.StreamsActive)
	}
	cancel()
	<-more
	testkit.Eventually(t, 2*time.Second, "the stream to be cancelled", func() bool {
		c := s.Counters()
		return c.StreamsCancelled == 1 && c.StreamsActive == 0
	})
}

func TestTrickleSendsOneEventPerGap(t *testing.T) {
	_, base := MustStart(t, Config{})
	// Events are paced against deadlines from the stream's start, so a
	// late first event lets the next ones catch up: only the total from
	// the request is a lower bound that cannot flake.
	start := time.Now()
	resp := send(t, base, call{dialect: OpenAIChat, stream: true,
		header: map[string]string{HeaderFault: "trickle", HeaderGap: "30ms"}})
	br := bufio.NewReader(resp.Body)
	for range 4 {
		readEvent(t, br)
	}
	if el := time.Since(start); el < 90*time.Millisecond {
		t.Errorf("4 events took %v, want at least 3 gaps of 30ms", el)
	}
	resp.Body.Close()

	resp = send(t, base, call{dialect: OpenAIChat, stream: true,
		header: map[string]string{HeaderFault: "trickle", HeaderGap: "1ms", HeaderEvents: "5"}})
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if evs := parseSSE(t, got); len(evs) != 8 {
		t.Errorf("trickle bounded to 5 deltas sent %d events, want 8 (role, 5 deltas, finish, [DONE])", len(evs))
	}
}

func TestGapAndTTFBDelayTheStream(t *testing.T) {
	_, base := MustStart(t, Config{})
	start := time.Now()
	resp := send(t, base, call{dialect: OpenAIChat, stream: true,
		header: map[string]string{HeaderTTFB: "40ms", HeaderGap: "10ms", HeaderEvents: "4"}})
	headers := time.Since(start)
	got, err := io.ReadAll(resp.Body)
	total := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if headers < 40*time.Millisecond {
		t.Errorf("headers after %v, want at least the 40ms TTFB", headers)
	}
	// 7 events (role, 4 deltas, finish, [DONE]) are 6 gaps after the first.
	if n := len(parseSSE(t, got)); n != 7 || total < 100*time.Millisecond {
		t.Errorf("%d events in %v, want 7 in at least 100ms", n, total)
	}
}

func TestOversizedPutsTheRequestedBytesInTheFirstDelta(t *testing.T) {
	const size = 200_000
	_, base := MustStart(t, Config{})
	for _, d := range allDialects {
		t.Run(string(d), func(t *testing.T) {
			_, body := do(t, base, withFault(call{dialect: d, stream: true, includeUsage: true}, "oversized="+strconv.Itoa(size)))
			longest := 0
			for _, ev := range parseSSE(t, body) {
				longest = max(longest, len(ev.data))
			}
			if longest < size || longest > size+1000 {
				t.Errorf("largest event data %d bytes, want just over %d", longest, size)
			}
			if got, ok := extractUsage(t, d, true, body); !ok || got != DefaultUsage.Normalised(d) {
				t.Errorf("usage %+v after an oversized event", got)
			}
		})
	}
}

func TestMalformedSendsOneDataLineThatIsNotJSON(t *testing.T) {
	_, base := MustStart(t, Config{})
	for _, d := range allDialects {
		t.Run(string(d), func(t *testing.T) {
			_, body := do(t, base, withFault(call{dialect: d, stream: true}, "malformed"))
			var bad []int
			evs := parseSSE(t, body)
			for i, ev := range evs {
				if ev.data != "[DONE]" && !json.Valid([]byte(ev.data)) {
					bad = append(bad, i)
				}
			}
			if len(bad) != 1 || bad[0] != 1 {
				t.Errorf("invalid data at events %v, want only event 1", bad)
			}
		})
	}
	t.Run("JSONBody", func(t *testing.T) {
		resp, body := do(t, base, withFault(call{dialect: Anthropic}, "malformed"))
		if resp.StatusCode != 200 || json.Valid(body) {
			t.Errorf("status %d, body %q; want 200 with invalid JSON", resp.StatusCode, body)
		}
	})
}

func TestJSONForStreamAnswersAStreamRequestWithJSON(t *testing.T) {
	_, base := MustStart(t, Config{})
	for _, d := range allDialects {
		t.Run(string(d), func(t *testing.T) {
			resp, body := do(t, base, withFault(call{dialect: d, stream: true}, "json-for-stream"))
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type = %q", ct)
			}
			if got, ok := extractUsage(t, d, false, body); !ok || got != DefaultUsage.Normalised(d) {
				t.Errorf("usage %+v, ok %v", got, ok)
			}
		})
	}
}

func TestMidstreamErrorEndsTheStreamWithTheDialectsError(t *testing.T) {
	_, base := MustStart(t, Config{})
	for _, tc := range []struct {
		d     Dialect
		check func(t *testing.T, last sseEvent)
	}{
		{Anthropic, func(t *testing.T, last sseEvent) {
			if last.name != "error" || str(obj(t, last.data), "error.type") != "overloaded_error" {
				t.Errorf("last event %+v, want an overloaded_error", last)
			}
		}},
		{OpenAIChat, func(t *testing.T, last sseEvent) {
			if str(obj(t, last.data), "error.type") != "server_error" {
				t.Errorf("last event %+v, want an error object", last)
			}
		}},
		{OpenAIResponses, func(t *testing.T, last sseEvent) {
			m := obj(t, last.data)
			if last.name != "response.failed" || str(m, "response.status") != "failed" || at(m, "response.error") == nil {
				t.Errorf("last event %+v, want response.failed", last)
			}
		}},
		{Gemini, func(t *testing.T, last sseEvent) {
			if str(obj(t, last.data), "error.status") != "UNAVAILABLE" {
				t.Errorf("last event %+v, want an UNAVAILABLE error", last)
			}
		}},
	} {
		t.Run(string(tc.d), func(t *testing.T) {
			_, body := do(t, base, withFault(call{dialect: tc.d, stream: true, includeUsage: true}, "midstream-error"))
			evs := parseSSE(t, body)
			tc.check(t, evs[len(evs)-1])
			if strings.Contains(string(body), "[DONE]") || strings.Contains(string(body), "message_stop") ||
				strings.Contains(string(body), "response.completed") || strings.Contains(string(body), `"finishReason"`) {
				t.Errorf("a failed stream carries a completion marker:\n%s", body)
			}
			if tc.d == OpenAIResponses {
				if got, ok := extractUsage(t, tc.d, true, body); !ok || got != DefaultUsage.Normalised(tc.d) {
					t.Errorf("response.failed usage %+v, ok %v", got, ok)
				}
			}
		})
	}
}

func TestIncompleteEndsAtMaxTokensWithUsage(t *testing.T) {
	_, base := MustStart(t, Config{})
	for _, tc := range []struct {
		d      Dialect
		stream bool
		want   string // appears in the body
	}{
		{Anthropic, true, `"stop_reason":"max_tokens"`},
		{OpenAIChat, true, `"finish_reason":"length"`},
		{OpenAIResponses, true, "event: response.incomplete\n"},
		{OpenAIResponses, false, `"status":"incomplete","error":null,"incomplete_details":{"reason":"max_output_tokens"}`},
		{Gemini, true, `"finishReason":"MAX_TOKENS"`},
	} {
		t.Run(string(tc.d), func(t *testing.T) {
			_, body := do(t, base, withFault(call{dialect: tc.d, stream: tc.stream, includeUsage: true}, "incomplete"))
			if !strings.Contains(string(body), tc.want) {
				t.Errorf("body lacks %s:\n%s", tc.want, body)
			}
			if got, ok := extractUsage(t, tc.d, tc.stream, body); !ok || got != DefaultUsage.Normalised(tc.d) {
				t.Errorf("usage %+v, ok %v", got, ok)
			}
		})
	}
}

func TestNoUsageOmitsUsageEverywhere(t *testing.T) {
	_, base := MustStart(t, Config{})
	for _, d := range allDialects {
		for _, stream := range []bool{false, true} {
			t.Run(string(d)+"/stream="+strconv.FormatBool(stream), func(t *testing.T) {
				_, body := do(t, base, withFault(call{dialect: d, stream: stream, includeUsage: true}, "no-usage"))
				if got, ok := extractUsage(t, d, stream, body); ok {
					t.Errorf("usage %+v despite no-usage", got)
				}
			})
		}
	}
}

func TestBadFakeHeadersAreRejectedLoudly(t *testing.T) {
	_, base := MustStart(t, Config{})
	for _, h := range []map[string]string{
		{HeaderFault: "explode"},
		{HeaderFault: "cut"},
		{HeaderFault: "status=200"},
		{HeaderGap: "soon"},
		{HeaderEvents: "-1"},
	} {
		resp, body := do(t, base, call{dialect: Anthropic, stream: true, header: h})
		if resp.StatusCode != 400 || errorKind(t, Anthropic, 400, body) != "invalid_request_error" {
			t.Errorf("%v: status %d, body %s; want a 400 invalid_request_error", h, resp.StatusCode, body)
		}
	}
}

func TestConfigFaultIsTheDefaultAndHeadersOverrideIt(t *testing.T) {
	_, base := MustStart(t, Config{Fault: "status=503"})
	if resp, _ := do(t, base, call{dialect: OpenAIChat}); resp.StatusCode != 503 {
		t.Errorf("default fault: status %d, want 503", resp.StatusCode)
	}
	if resp, _ := do(t, base, withFault(call{dialect: OpenAIChat}, "no-usage")); resp.StatusCode != 200 {
		t.Errorf("header fault: status %d, want 200", resp.StatusCode)
	}
}
