package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
)

// ClientIDsPath answers GET with, for each X-Client-Request-Id the fake
// saw (-client-ids), how often it arrived and how often its answer ended
// with the client still there, as JSON: {"id":{"seen":1,"answered":1}}.
// tollgate forwards that header, so a test driving several replicas can
// tell per request what the provider served, the way a provider bills.
const ClientIDsPath = "/_fake/client-ids"

// clientIDHeader is the request header ClientIDsPath counts.
const clientIDHeader = "X-Client-Request-Id"

// KeyTag is the tag -key-tags appends to the request-id response headers
// for a provider key: the first 8 hex digits of its SHA-256, so a test can
// tell which credential served a request without the key showing.
func KeyTag(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:4])
}

// idCount is one client request id's tally.
type idCount struct {
	Seen     int `json:"seen"`
	Answered int `json:"answered"`
}

// tracer wraps the fake with the opt-in per-request tracing flags.
type tracer struct {
	next    http.Handler
	keyTags bool
	ids     bool

	mu   sync.Mutex
	seen map[string]*idCount
}

func (tr *tracer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if tr.ids && r.URL.Path == ClientIDsPath && r.Method == http.MethodGet {
		tr.mu.Lock()
		b, err := json.Marshal(tr.seen)
		tr.mu.Unlock()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
		return
	}
	if tr.keyTags {
		if key := providerKey(r); key != "" {
			w = &taggingWriter{ResponseWriter: w, tag: KeyTag(key)}
		}
	}
	id := r.Header.Get(clientIDHeader)
	if !tr.ids || id == "" {
		tr.next.ServeHTTP(w, r)
		return
	}
	tr.count(id, func(c *idCount) { c.Seen++ })
	tr.next.ServeHTTP(w, r)
	// A cancelled context means the client (tollgate) went away before
	// the answer ended: a stream cut by a killed replica.
	if r.Context().Err() == nil {
		tr.count(id, func(c *idCount) { c.Answered++ })
	}
}

func (tr *tracer) count(id string, f func(*idCount)) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.seen == nil {
		tr.seen = map[string]*idCount{}
	}
	c := tr.seen[id]
	if c == nil {
		c = &idCount{}
		tr.seen[id] = c
	}
	f(c)
}

// providerKey is the key a request carries in any dialect's header.
func providerKey(r *http.Request) string {
	for _, h := range []string{"X-Api-Key", "X-Goog-Api-Key"} {
		if v := r.Header.Get(h); v != "" {
			return v
		}
	}
	if v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return v
	}
	return r.URL.Query().Get("key")
}

// taggingWriter appends a key tag to the request-id headers as the
// response headers go out.
type taggingWriter struct {
	http.ResponseWriter
	tag   string
	wrote bool
}

func (w *taggingWriter) WriteHeader(code int) {
	if !w.wrote {
		w.wrote = true
		h := w.Header()
		for _, name := range []string{"Request-Id", "X-Request-Id"} {
			if v := h.Get(name); v != "" {
				h.Set(name, v+"-"+w.tag)
			}
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *taggingWriter) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController (the fake's flushes) reach the
// connection.
func (w *taggingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
