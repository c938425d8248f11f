package upstreamtest

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// discard is a ResponseWriter that drops the body, so the benchmarks
// measure the fake's own cost per request.
type discard struct{ h http.Header }

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(b []byte) (int, error) { return len(b), nil }
func (d *discard) WriteHeader(int)             {}
func (d *discard) Flush()                      {}

func benchServe(b *testing.B, cfg Config, c call) {
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	body := []byte(c.body())
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest(http.MethodPost, c.path(), bytes.NewReader(body))
		setAuth(r.Header, c.dialect, "k")
		s.ServeHTTP(&discard{h: make(http.Header)}, r)
	}
}

func BenchmarkChatStream(b *testing.B) {
	benchServe(b, Config{RecordLimit: -1, Events: 20}, call{dialect: OpenAIChat, stream: true, includeUsage: true})
}

func BenchmarkChatStreamRecorded(b *testing.B) {
	benchServe(b, Config{Events: 20}, call{dialect: OpenAIChat, stream: true, includeUsage: true})
}

func BenchmarkAnthropicJSON(b *testing.B) {
	benchServe(b, Config{RecordLimit: -1}, call{dialect: Anthropic})
}

// BenchmarkLoopbackChatStream is one whole 20-delta stream over a real
// keep-alive connection, the unit of benchmark-method.md's S3.
func BenchmarkLoopbackChatStream(b *testing.B) {
	_, base := MustStart(b, Config{RecordLimit: -1, Events: 20})
	c := call{dialect: OpenAIChat, stream: true, includeUsage: true}
	body := []byte(c.body())
	b.ReportAllocs()
	for b.Loop() {
		req, _ := http.NewRequest(http.MethodPost, base+c.path(), bytes.NewReader(body))
		setAuth(req.Header, c.dialect, "k")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}
