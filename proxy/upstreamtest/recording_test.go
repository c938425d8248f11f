package upstreamtest

import (
	"encoding/json"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
)

func TestRecordsEachRequestAndTheExactBytesWritten(t *testing.T) {
	s, base := MustStart(t, Config{})
	c := call{dialect: Anthropic, stream: true, key: "sk-rec",
		rawPath: "/anthropic/v1/messages?beta=true", header: map[string]string{"X-Trace": "t1"}}
	resp, body := do(t, base, c)
	r, ok := s.Last()
	if !ok {
		t.Fatal("nothing recorded")
	}
	for _, f := range []struct{ name, got, want string }{
		{"method", r.Method, "POST"},
		{"path", r.Path, "/anthropic/v1/messages"},
		{"query", r.RawQuery, "beta=true"},
		{"header", r.Header.Get("X-Trace"), "t1"},
		{"body", string(r.Body), c.body()},
		{"key", r.Key, "sk-rec"},
		{"model", r.Model, "claude-opus-4-1"},
		{"dialect", string(r.Dialect), string(Anthropic)},
		{"outcome", string(r.Outcome), string(OutcomeCompleted)},
		{"response", string(r.Response), string(body)},
		{"response header", r.ResponseHeader.Get("Request-Id"), resp.Header.Get("Request-Id")},
	} {
		if f.got != f.want {
			t.Errorf("%s = %q, want %q", f.name, f.got, f.want)
		}
	}
	if r.Status != 200 || !r.Stream || r.Seq != 1 {
		t.Errorf("status %d, stream %v, seq %d; want 200, true, 1", r.Status, r.Stream, r.Seq)
	}

	do(t, base, call{dialect: OpenAIChat, stream: true, includeUsage: true})
	if r, _ := s.Last(); !r.IncludeUsage || r.Seq != 2 {
		t.Errorf("include_usage %v, seq %d; want true, 2", r.IncludeUsage, r.Seq)
	}
	if resp2, _ := do(t, base, call{dialect: Anthropic}); resp2.Header.Get("Request-Id") == resp.Header.Get("Request-Id") {
		t.Error("two requests share a request id")
	}
}

func TestRecordKeepsOnlyTheLastRequests(t *testing.T) {
	s, base := MustStart(t, Config{RecordLimit: 3})
	for range 5 {
		do(t, base, call{dialect: Gemini})
	}
	rs := s.Requests()
	if len(rs) != 3 || rs[0].Seq != 3 || rs[2].Seq != 5 {
		t.Fatalf("kept %d records from seq %d, want 3 from seq 3", len(rs), rs[0].Seq)
	}
	rs[0].Body[0] = 'X'
	if s.Requests()[0].Body[0] == 'X' {
		t.Error("Requests returns the server's own slices")
	}
}

func TestNegativeRecordLimitRecordsNothing(t *testing.T) {
	s, base := MustStart(t, Config{RecordLimit: -1})
	do(t, base, call{dialect: OpenAIChat})
	if _, ok := s.Last(); ok || len(s.Requests()) != 0 {
		t.Error("recorded a request with recording off")
	}
	if s.Counters().Requests != 1 {
		t.Error("counters stopped with recording off")
	}
}

func TestCountersAddUpAcrossStreamEndings(t *testing.T) {
	s, base := MustStart(t, Config{})
	do(t, base, call{dialect: OpenAIChat, stream: true}) // completed
	do(t, base, call{dialect: OpenAIChat})               // not a stream
	cut := send(t, base, withFault(call{dialect: OpenAIChat, stream: true}, "cut=1"))
	if _, err := io.ReadAll(cut.Body); err == nil {
		t.Error("a cut stream read cleanly")
	}
	do(t, base, withFault(call{dialect: OpenAIChat, stream: true}, "status=429"))
	resp := send(t, base, withFault(call{dialect: OpenAIChat, stream: true}, "silence"))
	testkit.Eventually(t, 2*time.Second, "one active stream", func() bool { return s.Counters().StreamsActive == 1 })
	resp.Body.Close() // the client leaves a silent stream
	want := Counters{Requests: 5, Streams: 3, StreamsCompleted: 1, StreamsCut: 1, StreamsCancelled: 1}
	testkit.Eventually(t, 2*time.Second, "the counters to settle", func() bool { return s.Counters() == want })

	// The counters endpoint serves the same numbers and does not count itself.
	r, err := http.Get(base + CountersPath)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var got Counters
	if err := json.NewDecoder(r.Body).Decode(&got); err != nil || got != want {
		t.Errorf("counters endpoint = %+v (%v), want %+v", got, err, want)
	}

	s.Reset()
	if c := s.Counters(); c != (Counters{}) || len(s.Requests()) != 0 {
		t.Errorf("after Reset: %+v, %d records", c, len(s.Requests()))
	}
}

func TestRecordsAreSafeToReadWhileStreaming(t *testing.T) {
	s, base := MustStart(t, Config{Gap: time.Millisecond})
	var wg sync.WaitGroup
	for i := range 16 {
		c := call{dialect: allDialects[i%len(allDialects)], stream: true, includeUsage: true}
		req, _ := http.NewRequest(http.MethodPost, base+c.path(), strings.NewReader(c.body()))
		setAuth(req.Header, c.dialect, "k")
		wg.Go(func() {
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			_, _ = io.Copy(io.Discard, resp.Body)
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for {
		for _, r := range s.Requests() {
			_ = len(r.Response) + len(r.Header)
		}
		_ = s.Counters()
		select {
		case <-done:
			if c := s.Counters(); c.StreamsCompleted != 16 || c.StreamsActive != 0 {
				t.Errorf("counters %+v, want 16 completed", c)
			}
			return
		default:
			runtime.Gosched()
		}
	}
}
