package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zlib"
	"github.com/klauspost/compress/zstd"
	"github.com/valyala/fasthttp"
	"golang.org/x/sync/semaphore"
)

// acceptedEncodings answers a refused Content-Encoding (RFC 9110 §15.5.16).
const acceptedEncodings = "identity, gzip, deflate, br, zstd"

// zstdMaxWindow bounds the back-reference window a zstd body may demand;
// the library default accepts windows of gigabytes.
const zstdMaxWindow = 8 << 20

// requestBody returns the request body decoded from its Content-Encoding,
// never more than limit bytes before or after decoding. It replaces
// c.Body(), which decodes every listed coding with no bound, so a 2 KB
// `gzip, gzip` body became a gibibyte before the size check. Harness
// clients send plain JSON; one coding is accepted, a stack is not. The
// decoded body replaces the raw one and Content-Encoding is dropped, so
// nothing downstream decodes again and the provider gets what was metered.
//
// budget, when not nil, bounds what decoding holds across requests; the
// returned release gives back what this body still holds, when the request
// is done with it.
func requestBody(c *fiber.Ctx, limit int, budget *decodeBudget) ([]byte, func(), error) {
	body, held, err := decodeRequestBody(c, limit, budget)
	return body, func() { budget.release(held) }, err
}

func decodeRequestBody(c *fiber.Ctx, limit int, budget *decodeBudget) (_ []byte, held int64, _ error) {
	req := c.Request()
	raw, err := rawBody(req, limit)
	if err != nil {
		return nil, 0, err
	}
	coding, err := contentCoding(&req.Header)
	if err != nil || coding == "" {
		if err != nil {
			c.Set(fiber.HeaderAcceptEncoding, acceptedEncodings)
		}
		return raw, 0, err
	}
	reserved, err := budget.reserve(c.UserContext(), limit)
	if err != nil {
		c.Set(fiber.HeaderRetryAfter, "1")
		return nil, 0, err
	}
	out, err := decodeBody(raw, coding, limit)
	// Keep only what the decoded body holds (its capacity: the decoder's
	// buffer grows by doubling).
	held = min(reserved, int64(cap(out)))
	budget.release(reserved - held)
	if err != nil {
		budget.release(held)
		held = 0
	}
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge), errors.Is(err, zstd.ErrDecoderSizeExceeded):
		return nil, 0, newError(kindTooLarge, "request body decodes (Content-Encoding: %s) to more than %d bytes, the most this gateway accepts", coding, limit)
	case err != nil:
		return nil, 0, &apiError{kind: kindBadRequest, msg: "request body is not valid " + coding + " data (Content-Encoding: " + coding + ")", cause: err}
	}
	req.SetBodyRaw(out)
	req.Header.Del(fiber.HeaderContentEncoding)
	return out, held, nil
}

// decodeBudget bounds the memory decoded request bodies hold at once. One
// coding lets a few hundred KB claim max_body_bytes, so each decode stopping
// at the limit is not enough: 20 concurrent 256 KB gzip bombs took the
// process to 1 GB (make test-hostile). A decode reserves its route's limit
// before it starts, waiting up to decodeWait for room, and keeps what its
// body holds until the request ends; a caller that finds no room gets a
// 503 with Retry-After. Plain bodies cost their sender the bytes and are
// bounded per request only. nil is no budget.
type decodeBudget struct {
	sem  *semaphore.Weighted
	size int64
}

// decodeWait is how long a compressed body waits for room to decode.
const decodeWait = 5 * time.Second

// decodeBudgetMin is the least decode budget: two 32 MiB bodies at once.
const decodeBudgetMin = 64 << 20

func newDecodeBudget(size int64) *decodeBudget {
	return &decodeBudget{sem: semaphore.NewWeighted(size), size: size}
}

func (b *decodeBudget) reserve(ctx context.Context, limit int) (int64, error) {
	if b == nil {
		return 0, nil
	}
	n := min(int64(limit)+1, b.size)
	ctx, cancel := context.WithTimeout(ctx, decodeWait)
	defer cancel()
	if err := b.sem.Acquire(ctx, n); err != nil {
		return 0, &apiError{kind: kindUnavailable, msg: "too many compressed request bodies are being decoded at once; retry shortly, or send the body uncompressed", cause: err}
	}
	return n, nil
}

func (b *decodeBudget) release(n int64) {
	if b != nil && n > 0 {
		b.sem.Release(n)
	}
}

// rawBody returns the undecoded body, reading a streamed one through a
// bound rather than to its end.
func rawBody(req *fasthttp.Request, limit int) ([]byte, error) {
	tooLarge := func(n int) error {
		return newError(kindTooLarge, "request body is %d bytes; this gateway accepts at most %d", n, limit)
	}
	if !req.IsBodyStream() {
		b := req.Body()
		if len(b) > limit {
			return nil, tooLarge(len(b))
		}
		return b, nil
	}
	if cl := req.Header.ContentLength(); cl > limit {
		return nil, tooLarge(cl)
	}
	var buf bytes.Buffer
	n, err := buf.ReadFrom(io.LimitReader(req.BodyStream(), int64(limit)+1))
	if err != nil {
		return nil, &apiError{kind: kindBadRequest, msg: "request body could not be read", cause: err}
	}
	if n > int64(limit) {
		return nil, tooLarge(int(n))
	}
	req.SetBodyRaw(buf.Bytes())
	return buf.Bytes(), nil
}

// contentCoding returns the one content coding of the body, "" for none.
// Every Content-Encoding field line counts; identity is no coding.
func contentCoding(h *fasthttp.RequestHeader) (string, error) {
	var codings []string
	for _, v := range h.PeekAll(fiber.HeaderContentEncoding) {
		for _, c := range strings.Split(string(v), ",") {
			if c = strings.ToLower(strings.TrimSpace(c)); c != "" && c != "identity" {
				codings = append(codings, c)
			}
		}
	}
	switch {
	case len(codings) == 0:
		return "", nil
	case len(codings) > 1:
		return "", newError(kindUnsupportedMediaType, "Content-Encoding %q stacks %d codings; send the body uncompressed or with exactly one of gzip, deflate, br or zstd", strings.Join(codings, ", "), len(codings))
	}
	switch codings[0] {
	case "gzip", "x-gzip", "deflate", "br", "zstd":
		return codings[0], nil
	}
	return "", newError(kindUnsupportedMediaType, "Content-Encoding %q is not supported; send the body uncompressed or as gzip, deflate, br or zstd", truncateForMessage(codings[0]))
}

// truncateForMessage keeps a client-supplied token short in an error message.
func truncateForMessage(s string) string {
	if len(s) > 32 {
		return s[:32] + "…"
	}
	return s
}

// decodeBody decodes raw from one content coding into a new buffer of at
// most limit bytes; past it, fasthttp.ErrBodyTooLarge.
func decodeBody(raw []byte, coding string, limit int) ([]byte, error) {
	var r io.Reader
	var err error
	switch coding {
	case "gzip", "x-gzip":
		r, err = gzip.NewReader(bytes.NewReader(raw))
	case "deflate":
		// HTTP's "deflate" is the zlib format (RFC 9110 8.4.1.2).
		r, err = zlib.NewReader(bytes.NewReader(raw))
	case "br":
		// fasthttp's bounded brotli decoder; brotli bodies are rare here.
		m := fasthttp.AcquireResponse()
		defer fasthttp.ReleaseResponse(m)
		m.SetBodyRaw(raw)
		return m.BodyUnbrotliWithLimit(limit)
	case "zstd":
		d, zerr := zstd.NewReader(bytes.NewReader(raw),
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(zstdMaxWindow),
			zstd.WithDecoderMaxMemory(uint64(limit)+1))
		if zerr != nil {
			return nil, zerr
		}
		defer d.Close()
		r = d
	default:
		return nil, fasthttp.ErrContentEncodingUnsupported
	}
	if err != nil {
		return nil, err
	}
	return readBounded(r, limit, len(raw))
}

// decodeChunk is the largest step in which a decoded body grows; the
// first is a few times the compressed size, so a small body does not cost
// a whole chunk.
const decodeChunk = 1 << 20

// readBounded reads r to its end into one buffer, or
// fails with fasthttp.ErrBodyTooLarge past limit bytes. It reads in
// growing chunks rather than into a doubling buffer or a pooled one (fasthttp's
// decoders do both), so a bomb costs at most limit plus a chunk while it
// decodes, and nothing stays pooled after: measured by make test-hostile.
func readBounded(r io.Reader, limit, compressed int) ([]byte, error) {
	var chunks [][]byte
	total := 0
	step := min(decodeChunk, max(4<<10, 4*compressed))
	for {
		chunk := make([]byte, min(step, limit+1-total))
		step = min(2*step, decodeChunk)
		n, err := io.ReadFull(r, chunk)
		chunks = append(chunks, chunk[:n])
		total += n
		if total > limit {
			return nil, fasthttp.ErrBodyTooLarge
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	if len(chunks) == 1 {
		return chunks[0], nil
	}
	out := make([]byte, 0, total)
	for _, c := range chunks {
		out = append(out, c...)
	}
	return out, nil
}
