package upstreamtest

import (
	"bytes"
	"net/http"
	"sync"
	"time"
)

// Outcome is how the fake's side of an exchange ended.
type Outcome string

// Outcomes of a request.
const (
	// OutcomeInFlight is a request still being answered.
	OutcomeInFlight Outcome = ""
	// OutcomeCompleted is a response written in full, faults included (a
	// midstream error or a 429 is a completed script).
	OutcomeCompleted Outcome = "completed"
	// OutcomeCancelled is a response the peer went away from before it was
	// written in full.
	OutcomeCancelled Outcome = "cancelled"
	// OutcomeCut is a response the fake aborted on purpose (the cut fault).
	OutcomeCut Outcome = "cut"
)

// Request is one recorded exchange. Slices and maps are the caller's own
// copies.
type Request struct {
	// Seq is the request's arrival number, from 1.
	Seq      uint64
	Received time.Time
	// Dialect is empty for a path the fake does not serve.
	Dialect  Dialect
	Method   string
	Path     string
	RawQuery string
	Header   http.Header
	Body     []byte
	// Key is the credential found in the dialect's auth header, or "".
	Key string
	// Model is the requested model (from the body, or Gemini's path).
	Model        string
	Stream       bool
	IncludeUsage bool

	// Status is 0 until the response headers are written.
	Status         int
	ResponseHeader http.Header
	// Response is every body byte written so far, exactly as written.
	Response []byte
	Outcome  Outcome
}

// Counters are the fake's running totals. A stream is a request the fake
// began to answer with a stream (after auth and status faults); it ends in
// exactly one of completed, cancelled or cut, so
// Streams = StreamsCompleted + StreamsCancelled + StreamsCut + StreamsActive.
type Counters struct {
	Requests         int64 `json:"requests"`
	Streams          int64 `json:"streams"`
	StreamsCompleted int64 `json:"streams_completed"`
	StreamsCancelled int64 `json:"streams_cancelled"`
	StreamsCut       int64 `json:"streams_cut"`
	StreamsActive    int64 `json:"streams_active"`
}

// entry is a Request being filled in by its handler while tests read it.
type entry struct {
	mu  sync.Mutex
	req Request
}

func (e *entry) update(f func(*Request)) {
	if e == nil {
		return
	}
	e.mu.Lock()
	f(&e.req)
	e.mu.Unlock()
}

func (e *entry) appendResponse(b []byte) {
	if e == nil {
		return
	}
	e.mu.Lock()
	e.req.Response = append(e.req.Response, b...)
	e.mu.Unlock()
}

func (e *entry) snapshot() Request {
	e.mu.Lock()
	defer e.mu.Unlock()
	r := e.req
	r.Header = r.Header.Clone()
	r.ResponseHeader = r.ResponseHeader.Clone()
	r.Body = bytes.Clone(r.Body)
	r.Response = bytes.Clone(r.Response)
	return r
}

// ring keeps the last limit entries.
type ring struct {
	mu    sync.Mutex
	limit int
	buf   []*entry
	next  int // where the next entry goes once buf is full
}

func (r *ring) add(e *entry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.buf) < r.limit {
		r.buf = append(r.buf, e)
		return
	}
	r.buf[r.next] = e
	r.next = (r.next + 1) % r.limit
}

// all returns the entries oldest first.
func (r *ring) all() []*entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*entry, 0, len(r.buf))
	out = append(out, r.buf[r.next:]...)
	return append(out, r.buf[:r.next]...)
}

func (r *ring) reset() {
	r.mu.Lock()
	r.buf, r.next = nil, 0
	r.mu.Unlock()
}
