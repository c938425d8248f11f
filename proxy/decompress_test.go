package proxy

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"context"
	"errors"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/valyala/fasthttp"
)

func gzipBytes(tb testing.TB, b []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if _, err := zw.Write(b); err != nil {
		tb.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// gzipBomb is a gzip body of n MiB of zeros: one compressed MiB repeated
// as n members, which gzip readers decode as one stream (RFC 1952 §2.2).
func gzipBomb(tb testing.TB, n int) []byte {
	tb.Helper()
	return bytes.Repeat(gzipBytes(tb, make([]byte, 1<<20)), n)
}

// allocatedBy reports the bytes the process allocated while f ran.
func allocatedBy(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestGzipBombIsCutAtTheLimit: fiber's c.Body() inflated every listed coding
// without a bound, so a small body could take a gibibyte before the 413.
func TestGzipBombIsCutAtTheLimit(t *testing.T) {
	const limit = 1 << 20
	e := newEnv(t, envOptions{registryEdit: func(y string) string {
		return strings.Replace(y, "max_body_bytes: 33554432", "max_body_bytes: 1048576", 1)
	}})
	tok := e.token("ws-1", "proj-1", "user-1", "")
	bomb := gzipBomb(t, 64)
	if len(bomb) > limit/4 {
		t.Fatalf("bomb is %d bytes", len(bomb))
	}
	for _, tc := range []struct {
		name, token, coding string
		body                []byte
		status              int
		wantMsg             string
	}{
		{"Gzip", tok, "gzip", bomb, 413, "decodes (Content-Encoding: gzip) to more than 1048576 bytes"},
		{"GzipGzip", tok, "gzip, gzip", gzipBytes(t, bomb), 415, `"gzip, gzip" stacks 2 codings`},
		{"BadTokenDecodesNothing", "tgw_not-a-real-token-at-all", "gzip", bomb, 401, "not valid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var resp *http.Response
			var took time.Duration
			alloc := allocatedBy(func() {
				start := time.Now()
				resp = e.do("POST", "/openai/v1/chat/completions", tc.token, string(tc.body), "Content-Encoding", tc.coding)
				took = time.Since(start)
			})
			body := readAll(t, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if msg := checkEnvelope(t, "openai", body); !strings.Contains(msg, tc.wantMsg) {
				t.Errorf("message %q does not say %q", msg, tc.wantMsg)
			}
			// Decoding stops at limit+1 bytes; the buffer doubles, so a few
			// times the limit. Unbounded, this is over 64 MiB.
			if alloc > 16<<20 {
				t.Errorf("the request allocated %d MiB", alloc>>20)
			}
			if took > 2*time.Second {
				t.Errorf("refusal took %s", took)
			}
		})
	}
}

// TestDecompressCodings: one coding is decoded and the provider gets the
// plain JSON without Content-Encoding (as before); stacks, unknown codings
// and corrupt data are refused in the dialect's envelope.
func TestDecompressCodings(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws-1", "proj-1", "user-1", "")
	msgs := []byte(`{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}`)
	var zl bytes.Buffer
	zw := zlib.NewWriter(&zl)
	zw.Write(msgs)
	zw.Close()
	zenc, _ := zstd.NewWriter(nil)
	zst := zenc.EncodeAll(msgs, nil)
	zenc.Close()
	corrupt := gzipBytes(t, msgs)
	corrupt[len(corrupt)/2] ^= 0xff
	for _, tc := range []struct {
		name, coding string
		body         []byte
		status       int
		wantMsg      string
	}{
		{"Gzip", "gzip", gzipBytes(t, msgs), 200, ""},
		{"GzipUpperCaseWithIdentity", "identity, GZIP", gzipBytes(t, msgs), 200, ""},
		{"Deflate", "deflate", zl.Bytes(), 200, ""},
		{"Brotli", "br", fasthttp.AppendBrotliBytes(nil, msgs), 200, ""},
		{"Zstd", "zstd", zst, 200, ""},
		{"Identity", "identity", msgs, 200, ""},
		{"Stacked", "gzip, br", gzipBytes(t, msgs), 415, "stacks 2 codings"},
		{"Unknown", "compress", msgs, 415, `"compress" is not supported`},
		{"Corrupt", "gzip", corrupt, 400, "not valid gzip data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := e.do("POST", "/anthropic/v1/messages", tok, string(tc.body), "Content-Encoding", tc.coding)
			body := readAll(t, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if tc.status != 200 {
				msg := checkEnvelope(t, "anthropic", body)
				if !strings.Contains(msg, tc.wantMsg) {
					t.Errorf("message %q does not say %q", msg, tc.wantMsg)
				}
				if strings.Contains(msg, "flate:") || strings.Contains(msg, "gzip:") || strings.Contains(msg, "checksum") {
					t.Errorf("message carries the decoder's text: %q", msg)
				}
				if tc.status == 415 && !strings.Contains(resp.Header.Get("Accept-Encoding"), "gzip") {
					t.Errorf("415 without Accept-Encoding: %v", resp.Header)
				}
				return
			}
			up := e.lastFake()
			if !bytes.Equal(up.Body, msgs) {
				t.Errorf("provider got %q, want the decoded JSON", up.Body)
			}
			if ce := up.Header.Get("Content-Encoding"); ce != "" {
				t.Errorf("provider got Content-Encoding %q with a decoded body", ce)
			}
		})
	}
}

// TestDecodeBudgetBoundsConcurrentDecodes: the budget is what keeps many
// concurrent bombs, each stopping at the limit, from adding up (make
// test-hostile measured 1 GB for 20 of them without it). A decode that
// finds no room is refused with a 503 once its wait ends, and room comes
// back when a body is released.
func TestDecodeBudgetBoundsConcurrentDecodes(t *testing.T) {
	b := newDecodeBudget(100)
	first, err := b.reserve(context.Background(), 59)
	if err != nil || first != 60 {
		t.Fatalf("first reserve: %d, %v", first, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = b.reserve(ctx, 59)
	var ae *apiError
	if !errors.As(err, &ae) || ae.kind != kindUnavailable {
		t.Fatalf("second reserve over the budget: %v, want a 503", err)
	}
	b.release(first)
	if n, err := b.reserve(context.Background(), 59); err != nil || n != 60 {
		t.Fatalf("after release: %d, %v", n, err)
	}
	// A limit past the whole budget reserves the budget, never blocks forever.
	b.release(60)
	if n, err := b.reserve(context.Background(), 1000); err != nil || n != 100 {
		t.Fatalf("limit over the budget: %d, %v", n, err)
	}
	var nilBudget *decodeBudget
	if n, err := nilBudget.reserve(ctx, 1<<30); n != 0 || err != nil {
		t.Fatalf("nil budget: %d, %v", n, err)
	}
	nilBudget.release(5)
}

// TestReadBoundedAcrossChunks: a body decoded over several growing chunks
// comes back whole and in order, exactly at the limit too; one byte over
// is refused.
func TestReadBoundedAcrossChunks(t *testing.T) {
	body := make([]byte, 3*decodeChunk+12345)
	for i := range body {
		body[i] = byte(i * 7)
	}
	got, err := readBounded(bytes.NewReader(body), len(body), 100)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("at the limit: %d bytes, %v; want the body back whole", len(got), err)
	}
	if _, err := readBounded(bytes.NewReader(body), len(body)-1, 100); !errors.Is(err, fasthttp.ErrBodyTooLarge) {
		t.Fatalf("one byte over: %v, want ErrBodyTooLarge", err)
	}
	if got, err := readBounded(bytes.NewReader(nil), 10, 0); err != nil || len(got) != 0 {
		t.Fatalf("empty: %q, %v", got, err)
	}
}
