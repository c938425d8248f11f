package upstreamtest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// call is one request to the fake: which dialect endpoint, stream or not.
type call struct {
	dialect Dialect
	stream  bool
	// includeUsage adds stream_options.include_usage to Chat streams.
	includeUsage bool
	key          string
	header       map[string]string
	// noAuth sends no credential at all.
	noAuth bool
	// rawPath replaces the dialect's usual path (prefixes, queries).
	rawPath string
}

// path returns the endpoint path for c.
func (c call) path() string {
	if c.rawPath != "" {
		return c.rawPath
	}
	switch c.dialect {
	case Anthropic:
		return "/v1/messages"
	case OpenAIChat:
		return "/v1/chat/completions"
	case OpenAIResponses:
		return "/v1/responses"
	}
	if c.stream {
		return "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
	}
	return "/v1beta/models/gemini-2.5-pro:generateContent"
}

// body returns a minimal request body for c.
func (c call) body() string {
	switch c.dialect {
	case Anthropic:
		return `{"model":"claude-opus-4-1","max_tokens":100,"stream":` + boolJSON(c.stream) + `,"messages":[{"role":"user","content":"hi"}]}`
	case OpenAIChat:
		opts := ""
		if c.includeUsage {
			opts = `,"stream_options":{"include_usage":true}`
		}
		return `{"model":"gpt-5","stream":` + boolJSON(c.stream) + opts + `,"messages":[{"role":"user","content":"hi"}]}`
	case OpenAIResponses:
		return `{"model":"gpt-5","stream":` + boolJSON(c.stream) + `,"input":"hi"}`
	}
	return `{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}`
}

func boolJSON(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

// setAuth puts key in the dialect's own auth header.
func setAuth(h http.Header, d Dialect, key string) {
	switch d {
	case Anthropic:
		h.Set("x-api-key", key)
		h.Set("anthropic-version", "2023-06-01")
	case Gemini:
		h.Set("x-goog-api-key", key)
	default:
		h.Set("Authorization", "Bearer "+key)
	}
}

// do sends c to base and returns the response with its body read.
func do(tb testing.TB, base string, c call) (*http.Response, []byte) {
	tb.Helper()
	resp := send(tb, base, c)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("read %s: %v", c.path(), err)
	}
	return resp, b
}

// send sends c to base and returns the response with its body unread; it is
// closed when the test ends.
func send(tb testing.TB, base string, c call) *http.Response {
	tb.Helper()
	req, err := http.NewRequest(http.MethodPost, base+c.path(), strings.NewReader(c.body()))
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	key := c.key
	if key == "" {
		key = "sk-test"
	}
	if !c.noAuth {
		setAuth(req.Header, c.dialect, key)
	}
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("%s: %v", c.path(), err)
	}
	tb.Cleanup(func() { resp.Body.Close() })
	return resp
}

// sseEvent is one parsed SSE event.
type sseEvent struct {
	name string
	data string
}

// parseSSE splits a stream body into events, failing on anything that is
// not "event:"/"data:" lines ended by a blank line.
func parseSSE(tb testing.TB, body []byte) []sseEvent {
	tb.Helper()
	if len(body) > 0 && !bytes.HasSuffix(body, []byte("\n\n")) {
		tb.Fatalf("stream does not end with a blank line: %q", tail(body))
	}
	var out []sseEvent
	for raw := range strings.SplitSeq(strings.TrimSuffix(string(body), "\n\n"), "\n\n") {
		if raw == "" {
			continue
		}
		var ev sseEvent
		for line := range strings.SplitSeq(raw, "\n") {
			switch {
			case strings.HasPrefix(line, "event: "):
				ev.name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				ev.data = strings.TrimPrefix(line, "data: ")
			default:
				tb.Fatalf("unexpected SSE line %q", line)
			}
		}
		out = append(out, ev)
	}
	return out
}

// readEvent reads one SSE event (up to a blank line) from r.
func readEvent(tb testing.TB, r *bufio.Reader) string {
	tb.Helper()
	var b strings.Builder
	for {
		line, err := r.ReadString('\n')
		b.WriteString(line)
		if err != nil {
			tb.Fatalf("read event: %v (got %q)", err, b.String())
		}
		if line == "\n" {
			return b.String()
		}
	}
}

func tail(b []byte) []byte {
	if len(b) > 80 {
		return b[len(b)-80:]
	}
	return b
}

// obj decodes one JSON object, failing the test when it is not valid.
func obj(tb testing.TB, s string) map[string]any {
	tb.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		tb.Fatalf("invalid JSON %q: %v", s, err)
	}
	return m
}

// at walks a dotted path through decoded JSON; it returns nil when absent.
func at(v any, path string) any {
	for p := range strings.SplitSeq(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

// num reads a number at path, 0 when absent.
func num(v any, path string) int64 {
	f, _ := at(v, path).(float64)
	return int64(f)
}

func str(v any, path string) string {
	s, _ := at(v, path).(string)
	return s
}

// extractUsage is a reference meter written from wire-formats.md alone: it
// merges each dialect's usage by its documented rule and normalises it. It
// reports false when the response carried no usage.
func extractUsage(tb testing.TB, d Dialect, stream bool, body []byte) (Usage, bool) {
	tb.Helper()
	var last any // the usage object in force after the merge rule
	if !stream {
		m := obj(tb, string(body))
		switch d {
		case Gemini:
			last = at(m, "usageMetadata")
		default:
			last = at(m, "usage")
		}
	} else {
		for _, ev := range parseSSE(tb, body) {
			if ev.data == "[DONE]" {
				continue
			}
			m := obj(tb, ev.data)
			switch d {
			case Anthropic:
				switch str(m, "type") {
				case "message_start":
					last = at(m, "message.usage")
				case "message_delta":
					u, _ := at(m, "usage").(map[string]any)
					base, _ := last.(map[string]any)
					if u != nil && base != nil {
						merged := map[string]any{}
						for k, v := range base {
							merged[k] = v
						}
						for k, v := range u {
							if v != nil {
								merged[k] = v
							}
						}
						last = merged
					}
				}
			case OpenAIChat:
				if u := at(m, "usage"); u != nil {
					last = u
				}
			case OpenAIResponses:
				switch str(m, "type") {
				case "response.completed", "response.incomplete", "response.failed":
					last = at(m, "response.usage")
				}
			case Gemini:
				if u := at(m, "usageMetadata"); u != nil {
					last = u
				}
			}
		}
	}
	if last == nil {
		return Usage{}, false
	}
	switch d {
	case Anthropic:
		u := Usage{
			InputUncached: num(last, "input_tokens"),
			CacheRead:     num(last, "cache_read_input_tokens"),
			CacheWrite5m:  num(last, "cache_creation.ephemeral_5m_input_tokens"),
			CacheWrite1h:  num(last, "cache_creation.ephemeral_1h_input_tokens"),
			Output:        num(last, "output_tokens"),
		}
		if total := num(last, "cache_creation_input_tokens"); total != u.CacheWrite5m+u.CacheWrite1h {
			tb.Errorf("cache_creation_input_tokens %d is not the sum of its split", total)
		}
		return u, true
	case OpenAIChat:
		cached := num(last, "prompt_tokens_details.cached_tokens")
		u := Usage{
			InputUncached: num(last, "prompt_tokens") - cached,
			CacheRead:     cached,
			Output:        num(last, "completion_tokens"),
			Reasoning:     num(last, "completion_tokens_details.reasoning_tokens"),
		}
		if total := num(last, "total_tokens"); total != num(last, "prompt_tokens")+u.Output {
			tb.Errorf("total_tokens %d is not prompt + completion", total)
		}
		return u, true
	case OpenAIResponses:
		cached := num(last, "input_tokens_details.cached_tokens")
		u := Usage{
			InputUncached: num(last, "input_tokens") - cached,
			CacheRead:     cached,
			Output:        num(last, "output_tokens"),
			Reasoning:     num(last, "output_tokens_details.reasoning_tokens"),
		}
		if total := num(last, "total_tokens"); total != num(last, "input_tokens")+u.Output {
			tb.Errorf("total_tokens %d is not input + output", total)
		}
		return u, true
	}
	cached := num(last, "cachedContentTokenCount")
	thoughts := num(last, "thoughtsTokenCount")
	u := Usage{
		InputUncached: num(last, "promptTokenCount") - cached,
		CacheRead:     cached,
		Output:        num(last, "candidatesTokenCount") + thoughts,
		Reasoning:     thoughts,
	}
	if total := num(last, "totalTokenCount"); total != num(last, "promptTokenCount")+u.Output {
		tb.Errorf("totalTokenCount %d is not prompt + candidates + thoughts", total)
	}
	return u, true
}

var allDialects = []Dialect{Anthropic, OpenAIChat, OpenAIResponses, Gemini}
