// Package upstreamtest is tollgate's fake AI provider: a net/http handler
// that speaks Anthropic Messages, OpenAI Chat Completions, OpenAI Responses
// and Gemini generateContent faithfully enough for proxy tests, the
// end-to-end harness runs and the benchmark (benchmark-method.md §2).
//
// Dialects are matched by path suffix, so a base URL with a prefix
// ("/anthropic/v1/messages") works. Usage is a fixed Config.Usage mapped
// into each dialect's fields; Usage.Normalised says what a correct meter
// records. Pacing and faults are chosen per request by X-Fake-* headers
// over Config defaults. Bodies are pre-serialised and cached, so the fake
// costs little per request. Every exchange is recorded, bytes included, and
// counters say how streams ended.
package upstreamtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// CountersPath answers GET with the Counters as JSON, so scripts driving
// cmd/fakeprovider can check client-disconnect cases from the upstream side.
// Requests to it are neither counted nor recorded.
const CountersPath = "/_fake/counters"

// Server is the fake provider. It is an http.Handler; its methods are safe
// for concurrent use.
type Server struct {
	cfg   Config
	fault fault // cfg.Fault, parsed once
	keys  map[string]struct{}
	rn    *renderer
	log   ring

	// Pre-serialised bodies of the endpoints that do not depend on the
	// request.
	countBodies map[Dialect][]byte
	listBodies  map[Dialect][]byte

	requests         atomic.Int64
	streams          atomic.Int64
	streamsCompleted atomic.Int64
	streamsCancelled atomic.Int64
	streamsCut       atomic.Int64
	streamsActive    atomic.Int64
}

// New returns a fake provider for cfg, with defaults applied to its zero
// fields. It returns an error wrapping ErrInvalidConfig when cfg is out of
// range.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	f, _ := parseFault(cfg.Fault) // validated above
	s := &Server{cfg: cfg, fault: f, rn: newRenderer(&cfg)}
	if len(cfg.Keys) > 0 {
		s.keys = make(map[string]struct{}, len(cfg.Keys))
		for _, k := range cfg.Keys {
			s.keys[k] = struct{}{}
		}
	}
	s.log.limit = max(cfg.RecordLimit, 0)
	in := cfg.Usage.InputTotal()
	s.countBodies = map[Dialect][]byte{
		Anthropic: mustJSON(map[string]int64{"input_tokens": in}),
		OpenAIResponses: mustJSON(struct {
			Object      string `json:"object"`
			InputTokens int64  `json:"input_tokens"`
		}{"response.input_tokens", in}),
		Gemini: mustJSON(struct {
			TotalTokens         int64            `json:"totalTokens"`
			PromptTokensDetails []geminiModality `json:"promptTokensDetails"`
		}{in, []geminiModality{{"TEXT", in}}}),
	}
	s.listBodies = make(map[Dialect][]byte)
	for _, d := range []Dialect{Anthropic, OpenAIChat, Gemini} {
		ids := cfg.Models
		if len(ids) == 0 {
			ids = []string{defaultModels[d]}
		}
		s.listBodies[d] = modelList(d, ids)
	}
	return s, nil
}

// MustStart starts a fake provider for cfg on an httptest server that is
// closed when tb's test ends, and returns it with the server's base URL.
func MustStart(tb testing.TB, cfg Config) (*Server, string) {
	tb.Helper()
	s, err := New(cfg)
	if err != nil {
		tb.Fatalf("upstreamtest: %v", err)
	}
	ts := httptest.NewServer(s)
	tb.Cleanup(ts.Close)
	return s, ts.URL
}

// Requests returns copies of the recorded requests, oldest first: the last
// Config.RecordLimit of them, in-flight ones included as written so far.
func (s *Server) Requests() []Request {
	es := s.log.all()
	out := make([]Request, len(es))
	for i, e := range es {
		out[i] = e.snapshot()
	}
	return out
}

// Last returns a copy of the most recent recorded request, and false when
// none is recorded.
func (s *Server) Last() (Request, bool) {
	es := s.log.all()
	if len(es) == 0 {
		return Request{}, false
	}
	return es[len(es)-1].snapshot(), true
}

// Counters returns the running totals.
func (s *Server) Counters() Counters {
	return Counters{
		Requests:         s.requests.Load(),
		Streams:          s.streams.Load(),
		StreamsCompleted: s.streamsCompleted.Load(),
		StreamsCancelled: s.streamsCancelled.Load(),
		StreamsCut:       s.streamsCut.Load(),
		StreamsActive:    s.streamsActive.Load(),
	}
}

// Reset forgets the recorded requests and zeroes the counters. Call it only
// while no request is in flight, or the active count goes wrong.
func (s *Server) Reset() {
	s.log.reset()
	for _, c := range []*atomic.Int64{&s.requests, &s.streams, &s.streamsCompleted,
		&s.streamsCancelled, &s.streamsCut, &s.streamsActive} {
		c.Store(0)
	}
}

// endpoint is the kind of call a path names.
type endpoint uint8

const (
	epUnknown endpoint = iota
	epGenerate
	epStreamGenerate // Gemini's streamGenerateContent
	epCount
	epListModels
	epGetModel
	epStored  // a stored Responses response (stored.go)
	epCompact // POST /v1/responses/compact (compact.go)
)

// route is what a request's method and path name.
type route struct {
	dialect Dialect
	ep      endpoint
	model   string // Gemini's path model, or the id of a model lookup
	// id and action are a stored-response path's response id and what it
	// asks of it (stored.go).
	id, action string
}

// routeOf matches by path suffix, so any base-URL prefix works. The
// Anthropic and OpenAI model endpoints share /v1/models; the auth header
// the client sent tells them apart.
func routeOf(r *http.Request) route {
	p := strings.TrimSuffix(r.URL.Path, "/")
	if rt, ok := storedRoute(r.Method, p); ok {
		return rt
	}
	switch r.Method {
	case http.MethodPost:
		switch {
		case strings.HasSuffix(p, "/v1/messages"):
			return route{dialect: Anthropic, ep: epGenerate}
		case strings.HasSuffix(p, "/v1/messages/count_tokens"):
			return route{dialect: Anthropic, ep: epCount}
		case strings.HasSuffix(p, "/v1/chat/completions"):
			return route{dialect: OpenAIChat, ep: epGenerate}
		case strings.HasSuffix(p, "/v1/responses"):
			return route{dialect: OpenAIResponses, ep: epGenerate}
		case strings.HasSuffix(p, "/v1/responses/input_tokens"):
			return route{dialect: OpenAIResponses, ep: epCount}
		case strings.HasSuffix(p, "/v1/responses/compact"):
			return route{dialect: OpenAIResponses, ep: epCompact}
		}
		i := strings.LastIndex(p, "/models/")
		if i < 0 {
			return route{}
		}
		seg := p[i+len("/models/"):]
		j := strings.LastIndexByte(seg, ':')
		if j <= 0 || strings.ContainsRune(seg, '/') {
			return route{}
		}
		rt := route{dialect: Gemini, model: seg[:j]}
		switch seg[j+1:] {
		case "generateContent":
			rt.ep = epGenerate
		case "streamGenerateContent":
			rt.ep = epStreamGenerate
		case "countTokens":
			rt.ep = epCount
		default:
			return route{}
		}
		return rt
	case http.MethodGet:
		switch {
		case strings.HasSuffix(p, "/v1beta/models"):
			return route{dialect: Gemini, ep: epListModels}
		case strings.HasSuffix(p, "/v1/models"):
			return route{dialect: modelsDialect(r.Header), ep: epListModels}
		}
		i := strings.LastIndex(p, "/models/")
		if i < 0 {
			return route{}
		}
		id := p[i+len("/models/"):]
		if id == "" || strings.ContainsAny(id, "/:") {
			return route{}
		}
		switch {
		case strings.HasSuffix(p[:i], "/v1beta"):
			return route{dialect: Gemini, ep: epGetModel, model: id}
		case strings.HasSuffix(p[:i], "/v1"):
			return route{dialect: modelsDialect(r.Header), ep: epGetModel, model: id}
		}
	}
	return route{}
}

func modelsDialect(h http.Header) Dialect {
	switch {
	case h.Get("X-Goog-Api-Key") != "":
		return Gemini
	case h.Get("X-Api-Key") != "" || h.Get("Anthropic-Version") != "":
		return Anthropic
	}
	return OpenAIChat
}

// keyOf returns the credential in dialect d's auth header.
func keyOf(d Dialect, h http.Header) string {
	switch d {
	case Anthropic:
		return h.Get("X-Api-Key")
	case Gemini:
		return h.Get("X-Goog-Api-Key")
	}
	scheme, tok, ok := strings.Cut(h.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(tok)
}

func (s *Server) accepts(key string) bool {
	switch {
	case key == "":
		return false
	case s.cfg.Accept != nil:
		return s.cfg.Accept(key)
	case s.keys == nil:
		return true
	}
	_, ok := s.keys[key]
	return ok
}

func missingKeyMessage(d Dialect) string {
	switch d {
	case Anthropic:
		return "x-api-key header is required"
	case Gemini:
		return "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API."
	}
	return "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
}

// generateRequest is the part of a generation request body the fake reads.
type generateRequest struct {
	Model         string `json:"model"`
	Stream        bool   `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

// ServeHTTP answers one request as the provider its path names.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == CountersPath && r.Method == http.MethodGet {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.Counters())
		return
	}
	seq := uint64(s.requests.Add(1))
	rt := routeOf(r)
	x := &exchange{s: s, w: w, r: r, rc: http.NewResponseController(w), dialect: rt.dialect, seq: seq}
	if s.log.limit > 0 {
		x.e = &entry{req: Request{
			Seq: seq, Received: time.Now(), Dialect: rt.dialect,
			Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery,
			Header: r.Header.Clone(), Model: rt.model,
		}}
		s.log.add(x.e)
	}
	defer x.finish()

	body, err := io.ReadAll(io.LimitReader(r.Body, maxBodyBytes+1))
	x.e.update(func(q *Request) { q.Body = body })
	if err != nil {
		x.outcome = OutcomeCancelled
		return
	}
	if rt.ep == epUnknown {
		x.dialect = OpenAIChat
		x.errorResponse(http.StatusNotFound, fmt.Sprintf("fake provider: no route for %s %s", r.Method, r.URL.Path))
		return
	}
	if len(body) > maxBodyBytes {
		x.errorResponse(http.StatusRequestEntityTooLarge, "")
		return
	}
	key := keyOf(rt.dialect, r.Header)
	x.e.update(func(q *Request) { q.Key = key })
	if !s.accepts(key) {
		msg := ""
		if key == "" {
			msg = missingKeyMessage(rt.dialect)
		}
		x.errorResponse(http.StatusUnauthorized, msg)
		return
	}
	p, err := planFor(r.Header, &s.cfg, s.fault)
	if err != nil {
		x.errorResponse(http.StatusBadRequest, "fake provider: "+err.Error())
		return
	}

	var sh shape
	switch rt.ep {
	case epGenerate, epStreamGenerate:
		var a asked
		sh, a, err = s.shapeOf(rt, r, body, p)
		if err != nil {
			x.errorResponse(http.StatusBadRequest, err.Error())
			return
		}
		x.e.update(func(q *Request) { q.Model, q.Stream, q.IncludeUsage = a.model, a.stream, a.includeUsage })
	case epCount:
		if !json.Valid(body) {
			x.errorResponse(http.StatusBadRequest, "fake provider: request body is not valid JSON")
			return
		}
	case epCompact:
		var req generateRequest
		if err := json.Unmarshal(body, &req); err != nil || req.Model == "" {
			x.errorResponse(http.StatusBadRequest, "fake provider: a compact request needs a JSON body with a model")
			return
		}
		x.e.update(func(q *Request) { q.Model = req.Model })
	}

	if p.fault.status != 0 {
		if !sleep(r.Context(), p.ttfb) {
			x.outcome = OutcomeCancelled
			return
		}
		x.errorResponse(p.fault.status, "")
		return
	}
	switch rt.ep {
	case epCount:
		x.json(p, s.countBodies[rt.dialect])
	case epListModels:
		x.json(p, s.listBodies[rt.dialect])
	case epGetModel:
		x.json(p, modelObject(rt.dialect, rt.model))
	case epStored:
		x.stored(p, rt)
	case epCompact:
		x.json(p, s.rn.compactBody(p))
	default:
		if sh.stream {
			x.stream(p, s.rn.get(sh).frames, sh)
			return
		}
		x.json(p, s.rn.get(sh).body)
	}
}

// asked is what a generation request asked for, as recorded.
type asked struct {
	model        string
	stream       bool
	includeUsage bool
}

// shapeOf reads a generation request into the shape of its response.
func (s *Server) shapeOf(rt route, r *http.Request, body []byte, p plan) (shape, asked, error) {
	var req generateRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return shape{}, asked{}, fmt.Errorf("fake provider: request body is not valid JSON: %w", err)
	}
	a := asked{model: req.Model, stream: req.Stream}
	if rt.dialect == Gemini {
		a.model, a.stream = rt.model, rt.ep == epStreamGenerate
	} else if rt.dialect == OpenAIChat && req.Stream && req.StreamOptions != nil {
		a.includeUsage = req.StreamOptions.IncludeUsage
	}
	sh := shape{
		dialect:      rt.dialect,
		stream:       a.stream && !p.fault.jsonForStream,
		includeUsage: a.includeUsage && !p.fault.jsonForStream,
		events:       p.events,
		chunkBytes:   p.chunkBytes,
		oversized:    p.fault.oversized,
		malformed:    p.fault.malformed,
		midError:     p.fault.midstreamError,
		incomplete:   p.fault.incomplete,
		noUsage:      p.fault.noUsage,
	}
	sh.geminiSSE = sh.stream && rt.dialect == Gemini && r.URL.Query().Get("alt") == "sse"
	sh.compaction = rt.dialect == OpenAIResponses && compactionTriggered(body)
	sh.model = a.model
	if sh.model == "" {
		sh.model = defaultModels[rt.dialect]
	}
	if s.cfg.ServedModel != nil {
		sh.model = s.cfg.ServedModel(sh.model)
	}
	return sh, a, nil
}

// sleep waits d, or until ctx is done; it reports whether d elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func modelList(d Dialect, ids []string) []byte {
	switch d {
	case Anthropic:
		type model struct {
			Type        string `json:"type"`
			ID          string `json:"id"`
			DisplayName string `json:"display_name"`
			CreatedAt   string `json:"created_at"`
		}
		l := struct {
			Data    []model `json:"data"`
			HasMore bool    `json:"has_more"`
			FirstID string  `json:"first_id"`
			LastID  string  `json:"last_id"`
		}{FirstID: ids[0], LastID: ids[len(ids)-1]}
		for _, id := range ids {
			l.Data = append(l.Data, model{"model", id, id, "2026-01-01T00:00:00Z"})
		}
		return mustJSON(l)
	case Gemini:
		l := struct {
			Models []json.RawMessage `json:"models"`
		}{}
		for _, id := range ids {
			l.Models = append(l.Models, modelObject(Gemini, id))
		}
		return mustJSON(l)
	}
	l := struct {
		Object string            `json:"object"`
		Data   []json.RawMessage `json:"data"`
	}{Object: "list"}
	for _, id := range ids {
		l.Data = append(l.Data, modelObject(OpenAIChat, id))
	}
	return mustJSON(l)
}

func modelObject(d Dialect, id string) []byte {
	switch d {
	case Anthropic:
		return mustJSON(struct {
			Type        string `json:"type"`
			ID          string `json:"id"`
			DisplayName string `json:"display_name"`
			CreatedAt   string `json:"created_at"`
		}{"model", id, id, "2026-01-01T00:00:00Z"})
	case Gemini:
		return mustJSON(struct {
			Name                       string   `json:"name"`
			Version                    string   `json:"version"`
			DisplayName                string   `json:"displayName"`
			InputTokenLimit            int      `json:"inputTokenLimit"`
			OutputTokenLimit           int      `json:"outputTokenLimit"`
			SupportedGenerationMethods []string `json:"supportedGenerationMethods"`
		}{"models/" + id, "001", id, 1048576, 65536, []string{"generateContent", "countTokens", "streamGenerateContent"}})
	}
	return mustJSON(struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}{id, "model", CreatedUnix, "openai"})
}
