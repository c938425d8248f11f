package proxy

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"regexp"
	"strings"

	"github.com/tollgate/tollgate/resolver"
)

// keyLike matches strings shaped like provider keys, in any case, so a
// provider's error body that echoes some other key does not reach the
// client. The word boundary and the length keep "task-management" and a
// mention of the "sk-ant-api03-" format intact; echoes of tollgate's own
// key, shorter ones included, are echoesSecret's job.
var keyLike = regexp.MustCompile(`(?i)\b(?:sk-|sk_|gsk_|tgw_|aiza)[a-z0-9_\-]{16,}`)

// publicKeyPrefixes are the fixed, documented starts of provider keys
// (folded): a window wholly inside one names the key format, not the key.
var publicKeyPrefixes = []string{"sk-ant-api03-", "sk-ant-admin01-", "sk-proj-", "sk-svcacct-", "sk-or-v1-", "sk-", "gsk_", "aiza", "xai-", "tgw_"}

// gram is the echo length that counts as the key: 8 folded characters of a
// key are about 41 bits, far beyond chance, while a "last 4" mask passes.
const gram = 8

// redactErrorBody returns a provider's error body fit for the client. The
// credential itself and anything key-shaped are replaced in place. Echoes
// only visible once decoded — JSON \u escapes, %XX, another case, the key
// without its prefix, base64 — cannot be cut out of the raw bytes, so the
// body is then replaced by tollgate's envelope with the provider's status.
func redactErrorBody(body []byte, s resolver.Secret, shape string, status int) []byte {
	k := s.Reveal()
	if len(k) >= 4 {
		body = bytes.ReplaceAll(body, []byte(k), []byte("[redacted]"))
	}
	body = keyLike.ReplaceAll(body, []byte("[redacted]"))
	if !echoesSecret(body, k) {
		return body
	}
	return providerErrorEnvelope(shape, status, "the provider's error message was withheld because it quoted the credential (HTTP %d)", status)
}

// providerErrorEnvelope renders tollgate's envelope in place of a provider's
// error body; the caller keeps the provider's status.
func providerErrorEnvelope(shape string, status int, format string, args ...any) []byte {
	e := newError(kindBadRequest, format, args...)
	if status >= 500 {
		e.kind = kindUnavailable
	}
	return errorBody(shape, e)
}

// echoesSecret reports whether b, once normalised, holds gram consecutive
// characters of the key outside its public prefix, the key's base64 form,
// or something else key-shaped.
func echoesSecret(b []byte, key string) bool { return newSecretMatcher(key).echoed(b) }

// secretMatcher holds what echoesSecret looks for, built once per key.
type secretMatcher struct {
	key    string
	grams  map[uint64]struct{} // gram-byte windows of the folded key outside its public prefix
	base64 [][]byte            // the key's base64 forms at the three alignments, both alphabets
}

func newSecretMatcher(key string) *secretMatcher {
	m := &secretMatcher{key: key}
	if len(key) < gram+4 {
		return m
	}
	folded := []byte(strings.ToLower(key))
	pub := 0
	for _, p := range publicKeyPrefixes {
		if bytes.HasPrefix(folded, []byte(p)) && len(p) > pub {
			pub = len(p)
		}
	}
	m.grams = make(map[uint64]struct{}, len(folded))
	for i := max(pub-gram+1, 0); i+gram <= len(folded); i++ {
		m.grams[binary.LittleEndian.Uint64(folded[i:])] = struct{}{}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
		for o := range 3 {
			if n := (len(key) - o) / 3 * 3; n >= 9 {
				m.base64 = append(m.base64, []byte(enc.EncodeToString([]byte(key[o:o+n]))))
			}
		}
	}
	return m
}

func (m *secretMatcher) echoed(b []byte) bool {
	norm := normaliseForMatch(b)
	if keyLike.Match(norm) {
		return true
	}
	for i := 0; m.grams != nil && i+gram <= len(norm); i++ {
		if _, ok := m.grams[binary.LittleEndian.Uint64(norm[i:])]; ok {
			return true
		}
	}
	for _, f := range m.base64 {
		if bytes.Contains(b, f) {
			return true
		}
	}
	return false
}

// redactHeader returns v, or "[redacted]" when it quotes the key in any
// form the matcher knows.
func (m *secretMatcher) redactHeader(v []byte) []byte {
	if (len(m.key) >= 4 && bytes.Contains(v, []byte(m.key))) || keyLike.Match(v) || m.echoed(v) {
		return []byte("[redacted]")
	}
	return v
}

// normaliseForMatch is a copy of b for matching only: JSON escapes decoded
// (\uXXXX to its ASCII byte, \/ \\ \" to themselves), then %XX, then ASCII
// folded to lower case. Non-ASCII escapes become '?': keys are ASCII.
func normaliseForMatch(b []byte) []byte {
	j := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c == '\\' && i+1 < len(b) {
			switch n := b[i+1]; {
			case n == 'u' && i+5 < len(b):
				if v, ok := hexVal(b[i+2 : i+6]); ok {
					if v >= 0x80 {
						v = '?'
					}
					j = append(j, byte(v))
					i += 5
					continue
				}
			case n == '/' || n == '\\' || n == '"':
				j = append(j, n)
				i++
				continue
			}
		}
		j = append(j, c)
	}
	out := j[:0]
	for i := 0; i < len(j); i++ {
		c := j[i]
		if c == '%' && i+2 < len(j) {
			if v, ok := hexVal(j[i+1 : i+3]); ok {
				c = byte(v)
				i += 2
			}
		}
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		out = append(out, c)
	}
	return out
}

func hexVal(h []byte) (int, bool) {
	v := 0
	for _, c := range h {
		switch {
		case '0' <= c && c <= '9':
			v = v<<4 | int(c-'0')
		case 'a' <= c && c <= 'f':
			v = v<<4 | int(c-'a'+10)
		case 'A' <= c && c <= 'F':
			v = v<<4 | int(c-'A'+10)
		default:
			return 0, false
		}
	}
	return v, true
}

// upstreamErrorBody decodes a provider's error body from its
// Content-Encoding, at most limit bytes out, so redaction reads what the
// client would: the encoding header is not passed on, and redacting
// compressed bytes found nothing while the client could still gunzip the
// key out of them. What cannot be decoded becomes tollgate's envelope.
func upstreamErrorBody(raw, coding []byte, shape string, status, limit int) []byte {
	c := strings.ToLower(strings.TrimSpace(string(coding)))
	if c == "" || c == "identity" {
		return raw
	}
	out, err := decodeBody(raw, c, limit)
	if err != nil {
		return providerErrorEnvelope(shape, status, "the provider's error answer (HTTP %d) could not be decoded (Content-Encoding: %s)", status, truncateForMessage(c))
	}
	return out
}

// redactStreamLines returns the whole SSE lines p with every line that
// quotes the credential replaced: a data line by tollgate's error envelope
// of the dialect (it sits where the provider's error event put its
// payload), any other line by a comment. Providers' in-stream errors all
// carry the word "error", so other chunks cost one search.
func redactStreamLines(p []byte, s resolver.Secret, shape string) []byte {
	if !bytes.Contains(p, []byte("error")) {
		return p
	}
	k := s.Reveal()
	var out []byte
	for rest := p; len(rest) > 0; {
		n := bytes.IndexAny(rest, "\r\n")
		if n < 0 {
			n = len(rest)
		} else {
			n++
		}
		line := rest[:n]
		rest = rest[n:]
		content := bytes.TrimRight(line, "\r\n")
		hit := bytes.Contains(content, []byte("error")) &&
			((len(k) >= 4 && bytes.Contains(content, []byte(k))) || keyLike.Match(content) || echoesSecret(content, k))
		if !hit {
			if out != nil {
				out = append(out, line...)
			}
			continue
		}
		if out == nil {
			out = append(make([]byte, 0, len(p)), p[:len(p)-len(rest)-len(line)]...)
		}
		if bytes.HasPrefix(content, []byte("data:")) {
			out = append(out, "data: "...)
			out = append(out, errorBody(shape, newError(kindUnavailable, "the provider's error event was withheld because it quoted the credential"))...)
		} else {
			out = append(out, ": [redacted]"...)
		}
		out = append(out, line[len(content):]...)
	}
	if out == nil {
		return p
	}
	return out
}
