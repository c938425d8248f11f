package proxy

import (
	"context"
	"database/sql"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/ledger"
	"github.com/tollgate/tollgate/metering/meteringtest"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// inflightCall is one call the proxy made on an InflightSink.
type inflightCall struct {
	kind string // begin, progress, record
	rec  metering.Record
}

// inflightRecorder is an InflightSink that notes every call, in order,
// then passes it on to next if set.
type inflightRecorder struct {
	*meteringtest.Sink
	next InflightSink

	mu    sync.Mutex
	calls []inflightCall
}

func (r *inflightRecorder) note(kind string, rec *metering.Record) {
	r.mu.Lock()
	r.calls = append(r.calls, inflightCall{kind, *rec})
	r.mu.Unlock()
}

func (r *inflightRecorder) Begin(rec *metering.Record) {
	r.note("begin", rec)
	if r.next != nil {
		r.next.Begin(rec)
	}
}

func (r *inflightRecorder) Progress(rec *metering.Record) {
	r.note("progress", rec)
	if r.next != nil {
		r.next.Progress(rec)
	}
}

func (r *inflightRecorder) Record(rec *metering.Record) {
	r.note("record", rec)
	r.Sink.Record(rec)
	if r.next != nil {
		r.next.Record(rec)
	}
}

// of returns the calls about one request id.
func (r *inflightRecorder) of(id string) []inflightCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []inflightCall
	for _, c := range r.calls {
		if c.rec.RequestID == id {
			out = append(out, c)
		}
	}
	return out
}

func (r *inflightRecorder) count(kind string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.calls {
		if c.kind == kind {
			n++
		}
	}
	return n
}

func kinds(calls []inflightCall) []string {
	out := make([]string, len(calls))
	for i, c := range calls {
		out[i] = c.kind
	}
	return out
}

// TestEveryForwardedRequestBeginsOnceBeforeItsRecord: a request sent to
// the provider is begun exactly once, with what its record will carry, and
// its record comes after; a stream whose usage appears mid-way (Anthropic
// message_start) reports it once, priced; requests refused before the
// provider are never begun.
func TestEveryForwardedRequestBeginsOnceBeforeItsRecord(t *testing.T) {
	rec := &inflightRecorder{}
	e := newEnv(t, envOptions{pricer: metering.DefaultPrices(), sink: func(s *meteringtest.Sink) Sink {
		rec.Sink = s
		return rec
	}})
	tok := e.token("ws", "p", "u", "")
	forwarded := []struct {
		name, path, body string
		stream, progress bool
	}{
		{"anthropic stream", "/anthropic/v1/messages", anthropicStreamBody, true, true},
		{"anthropic whole", "/anthropic/v1/messages", `{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`, false, false},
		{"chat stream", "/openai/v1/chat/completions", `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}`, true, false},
		{"provider error", "/anthropic/v1/messages", anthropicStreamBody, true, false},
	}
	for _, f := range forwarded {
		var hdr []string
		if f.name == "provider error" {
			hdr = []string{upstreamtest.HeaderFault, "status=529"}
		}
		resp := e.do("POST", f.path, tok, f.body, hdr...)
		readAll(t, resp.Body)
		resp.Body.Close()
		final := e.record(resp)
		calls := rec.of(final.RequestID)
		ks := kinds(calls)
		switch {
		case len(calls) < 2 || ks[0] != "begin" || ks[len(ks)-1] != "record":
			t.Errorf("%s: calls %v, want begin first and record last", f.name, ks)
			continue
		case f.progress && (len(calls) != 3 || ks[1] != "progress"):
			t.Errorf("%s: calls %v, want begin, progress, record", f.name, ks)
		case !f.progress && f.name != "chat stream" && len(calls) != 2:
			t.Errorf("%s: calls %v, want begin, record", f.name, ks)
		}
		b := calls[0].rec
		if b.Provider == "" || b.CredentialID == "" || b.TokenID != final.TokenID || b.ModelRequest == "" || b.Stream != f.stream || b.Dialect != final.Dialect || !b.Start.Equal(final.Start) {
			t.Errorf("%s: begun with %+v; want the identity, credential, model and stream of the record %+v", f.name, b, final)
		}
		if b.Usage != nil || b.Outcome != "" {
			t.Errorf("%s: begun with an outcome %q or usage %+v already", f.name, b.Outcome, b.Usage)
		}
		if f.progress {
			p := calls[1].rec
			if p.Source != metering.SourcePartial || p.Usage == nil || p.Usage.InputTotal() == 0 || p.CostMicroUSD == nil || p.Status != 200 || p.UpstreamID == "" {
				t.Errorf("%s: progress %+v, want partial usage with input tokens, priced, status 200, the provider's id", f.name, p)
			}
		}
	}

	// Refused before any upstream call: no begin.
	begins := rec.count("begin")
	for _, body := range []string{`{"model":`, `{"max_tokens":1}`} {
		resp := e.do("POST", "/anthropic/v1/messages", tok, body)
		resp.Body.Close()
		if r := e.record(resp); r.Outcome != metering.OutcomeRejected {
			t.Errorf("body %s: outcome %s, want rejected", body, r.Outcome)
		}
	}
	resp := e.do("POST", "/anthropic/v1/messages", "tg_not_a_token", anthropicStreamBody)
	resp.Body.Close()
	if n := rec.count("begin"); n != begins {
		t.Errorf("%d requests refused before the provider were begun", n-begins)
	}
}

// TestStreamOpenWhenTheWriterStopsIsRecordedInterrupted runs the proxy on
// a real ledger.Writer: a stream held after message_start is in the
// journal with its input tokens when the writer stops, and the next Writer
// on the spool records it as interrupted with that partial usage, under
// the request id the client was given.
func TestStreamOpenWhenTheWriterStopsIsRecordedInterrupted(t *testing.T) {
	dir := t.TempDir()
	db, err := store.Open(context.Background(), filepath.Join(dir, "usage.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	st, err := ledger.OpenStore(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	wcfg := ledger.WriterConfig{SpoolDir: filepath.Join(dir, "spool"), SyncInterval: 5 * time.Millisecond, BatchInterval: 5 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	w, err := ledger.NewWriter(wcfg, st)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(context.Background()) })
	gate := upstreamtest.NewGate()
	t.Cleanup(gate.Release)
	rec := &inflightRecorder{next: w}
	e := newEnv(t, envOptions{pricer: metering.DefaultPrices(), fake: upstreamtest.Config{Hold: gate.Hold}, sink: func(s *meteringtest.Sink) Sink {
		rec.Sink = s
		return rec
	}})
	resp := e.do("POST", "/anthropic/v1/messages", e.token("ws", "p", "u", ""), anthropicStreamBody)
	defer resp.Body.Close()
	id := resp.Header.Get(RequestIDHeader)
	testkit.Eventually(t, 5*time.Second, "the stream's progress", func() bool { return rec.count("progress") == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	w2, err := ledger.NewWriter(wcfg, st)
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close(context.Background())
	if err := w2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var outcome, source string
	var input, cost sql.NullInt64
	if err := db.QueryRowContext(ctx, `SELECT outcome, usage_source, input_uncached, cost_micro_usd FROM usage_records WHERE request_id = $1`, id).
		Scan(&outcome, &source, &input, &cost); err != nil {
		t.Fatalf("record of %s: %v", id, err)
	}
	if outcome != metering.OutcomeInterrupted || source != metering.SourcePartial || input.Int64 == 0 || !cost.Valid {
		t.Errorf("stream open at the stop: %s/%s input %v cost %v; want interrupted/partial with the input tokens, priced", outcome, source, input, cost)
	}
}
