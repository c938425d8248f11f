package proxy

import (
	"bytes"
	"errors"
	"io"
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/klauspost/compress/zstd"
	"github.com/valyala/fasthttp"
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
func requestBody(c *fiber.Ctx, limit int) ([]byte, error) {
	req := c.Request()
	raw, err := rawBody(req, limit)
	if err != nil {
		return nil, err
	}
	coding, err := contentCoding(&req.Header)
	if err != nil || coding == "" {
		if err != nil {
			c.Set(fiber.HeaderAcceptEncoding, acceptedEncodings)
		}
		return raw, err
	}
	out, err := decodeBody(raw, coding, limit)
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge), errors.Is(err, zstd.ErrDecoderSizeExceeded):
		return nil, newError(kindTooLarge, "request body decodes (Content-Encoding: %s) to more than %d bytes, the most this gateway accepts", coding, limit)
	case err != nil:
		return nil, &apiError{kind: kindBadRequest, msg: "request body is not valid " + coding + " data (Content-Encoding: " + coding + ")", cause: err}
	}
	req.SetBodyRaw(out)
	req.Header.Del(fiber.HeaderContentEncoding)
	return out, nil
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
	// fasthttp's bounded decoders hang off a message's body; this one only
	// lends them raw.
	m := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseResponse(m)
	m.SetBodyRaw(raw)
	switch coding {
	case "gzip", "x-gzip":
		return m.BodyGunzipWithLimit(limit)
	case "deflate":
		return m.BodyInflateWithLimit(limit)
	case "br":
		return m.BodyUnbrotliWithLimit(limit)
	case "zstd":
		return unzstdWithLimit(raw, limit)
	}
	return nil, fasthttp.ErrContentEncodingUnsupported
}

// unzstdWithLimit decodes a zstd body with bounded window and memory:
// fasthttp's own decoder uses the library defaults (windows up to gigabytes).
func unzstdWithLimit(raw []byte, limit int) ([]byte, error) {
	d, err := zstd.NewReader(bytes.NewReader(raw),
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxWindow(zstdMaxWindow),
		zstd.WithDecoderMaxMemory(uint64(limit)+1))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	var buf bytes.Buffer
	n, err := buf.ReadFrom(io.LimitReader(d, int64(limit)+1))
	if err != nil {
		return nil, err
	}
	if n > int64(limit) {
		return nil, fasthttp.ErrBodyTooLarge
	}
	return buf.Bytes(), nil
}
