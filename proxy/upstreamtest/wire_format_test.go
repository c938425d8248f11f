package upstreamtest

import (
	"encoding/json"
	"strings"
	"testing"
)

// facts are what every response must show, whatever its dialect.
type facts struct {
	id, model, text string
	deltas          int
	terminal        string // the last event's type, or the finish reason
}

// streamFacts checks a stream's framing and pulls its facts: every data
// line is JSON (but [DONE]), event names match their data's type, and
// Responses sequence numbers count from 0.
func streamFacts(t *testing.T, d Dialect, evs []sseEvent) facts {
	t.Helper()
	var f facts
	var text strings.Builder
	for i, ev := range evs {
		if ev.data == "[DONE]" {
			if d != OpenAIChat || i != len(evs)-1 {
				t.Errorf("event %d: [DONE] out of place", i)
			}
			f.terminal = "[DONE]"
			continue
		}
		m := obj(t, ev.data)
		typ := str(m, "type")
		switch d {
		case Anthropic, OpenAIResponses:
			if ev.name == "" || ev.name != typ {
				t.Errorf("event %d: name %q, data type %q", i, ev.name, typ)
			}
			f.terminal = typ
		default:
			if ev.name != "" {
				t.Errorf("event %d: unexpected event name %q", i, ev.name)
			}
		}
		switch d {
		case Anthropic:
			switch typ {
			case "message_start":
				f.id, f.model = str(m, "message.id"), str(m, "message.model")
				if got := num(m, "message.usage.output_tokens"); got != 1 {
					t.Errorf("message_start output_tokens = %d, want the placeholder 1", got)
				}
			case "content_block_delta":
				f.deltas++
				text.WriteString(str(m, "delta.text"))
			case "message_delta":
				if got := str(m, "delta.stop_reason"); got != "end_turn" {
					t.Errorf("stop_reason = %q, want end_turn", got)
				}
			}
		case OpenAIChat:
			f.id, f.model = str(m, "id"), str(m, "model")
			if str(m, "object") != "chat.completion.chunk" {
				t.Errorf("event %d: object %q", i, str(m, "object"))
			}
			choices, _ := at(m, "choices").([]any)
			if len(choices) == 0 {
				continue
			}
			if at(choices[0], "delta.role") == nil && at(choices[0], "delta.content") != nil {
				f.deltas++
				text.WriteString(str(choices[0], "delta.content"))
			}
			if r := str(choices[0], "finish_reason"); r != "" && r != "stop" {
				t.Errorf("finish_reason = %q, want stop", r)
			}
		case OpenAIResponses:
			if got := num(m, "sequence_number"); got != int64(i) {
				t.Errorf("event %d: sequence_number %d", i, got)
			}
			if typ == "response.created" {
				f.id, f.model = str(m, "response.id"), str(m, "response.model")
			}
			if r := at(m, "response"); r != nil && typ != "response.completed" && at(r, "usage") != nil {
				t.Errorf("event %d (%s): usage before the terminal event", i, typ)
			}
			if typ == "response.output_text.delta" {
				f.deltas++
				text.WriteString(str(m, "delta"))
			}
		case Gemini:
			f.id, f.model = str(m, "responseId"), str(m, "modelVersion")
			f.deltas++
			c, _ := at(m, "candidates").([]any)
			parts, _ := at(c[0], "content.parts").([]any)
			text.WriteString(str(parts[0], "text"))
			f.terminal = str(c[0], "finishReason")
			if f.terminal == "" {
				u := at(m, "usageMetadata").(map[string]any)
				if len(u) != 2 || u["promptTokenCount"] == nil || u["totalTokenCount"] == nil {
					t.Errorf("event %d: intermediate usage %v, want prompt and total only", i, u)
				}
			}
		}
	}
	f.text = text.String()
	return f
}

// bodyFacts pulls the facts of a JSON response.
func bodyFacts(t *testing.T, d Dialect, body []byte) facts {
	t.Helper()
	m := obj(t, string(body))
	switch d {
	case Anthropic:
		c, _ := at(m, "content").([]any)
		return facts{id: str(m, "id"), model: str(m, "model"), text: str(c[0], "text"), terminal: str(m, "stop_reason")}
	case OpenAIChat:
		c, _ := at(m, "choices").([]any)
		return facts{id: str(m, "id"), model: str(m, "model"), text: str(c[0], "message.content"), terminal: str(c[0], "finish_reason")}
	case OpenAIResponses:
		out, _ := at(m, "output").([]any)
		parts, _ := at(out[0], "content").([]any)
		return facts{id: str(m, "id"), model: str(m, "model"), text: str(parts[0], "text"), terminal: str(m, "status")}
	}
	c, _ := at(m, "candidates").([]any)
	parts, _ := at(c[0], "content.parts").([]any)
	return facts{id: str(m, "responseId"), model: str(m, "modelVersion"), text: str(parts[0], "text"), terminal: str(c[0], "finishReason")}
}

// wantText is the content of events deltas of size bytes each.
func wantText(events, size int) string {
	return strings.Repeat(pangram, events*size/len(pangram)+1)[:events*size]
}

func TestEveryDialectAnswersWellFormedWithConfiguredUsage(t *testing.T) {
	cfg := Config{Events: 5, ChunkBytes: 7}
	_, base := MustStart(t, cfg)
	want := map[Dialect]struct {
		id, model, streamTerminal, bodyTerminal string
	}{
		Anthropic:       {AnthropicMessageID, "claude-opus-4-1", "message_stop", "end_turn"},
		OpenAIChat:      {ChatCompletionID, "gpt-5", "[DONE]", "stop"},
		OpenAIResponses: {ResponseID, "gpt-5", "response.completed", "completed"},
		Gemini:          {GeminiResponseID, "gemini-2.5-pro", "STOP", "STOP"},
	}
	for _, d := range allDialects {
		for _, stream := range []bool{false, true} {
			name := string(d) + "/json"
			if stream {
				name = string(d) + "/stream"
			}
			t.Run(name, func(t *testing.T) {
				c := call{dialect: d, stream: stream, includeUsage: true}
				resp, body := do(t, base, c)
				if resp.StatusCode != 200 {
					t.Fatalf("status %d: %s", resp.StatusCode, body)
				}
				ct := resp.Header.Get("Content-Type")
				if stream != strings.HasPrefix(ct, "text/event-stream") {
					t.Errorf("Content-Type = %q for stream=%v", ct, stream)
				}
				if resp.Header.Get("Cache-Control") != "no-cache" {
					t.Errorf("Cache-Control = %q", resp.Header.Get("Cache-Control"))
				}
				var f facts
				w := want[d]
				wantTerminal := w.bodyTerminal
				if stream {
					f = streamFacts(t, d, parseSSE(t, body))
					wantTerminal = w.streamTerminal
					if f.deltas != cfg.Events {
						t.Errorf("%d content deltas, want %d", f.deltas, cfg.Events)
					}
				} else {
					f = bodyFacts(t, d, body)
				}
				if f.id != w.id || f.model != w.model {
					t.Errorf("id, model = %q, %q; want %q, %q", f.id, f.model, w.id, w.model)
				}
				if f.terminal != wantTerminal {
					t.Errorf("terminal = %q, want %q", f.terminal, wantTerminal)
				}
				if f.text != wantText(cfg.Events, cfg.ChunkBytes) {
					t.Errorf("text = %q, want %q", f.text, wantText(cfg.Events, cfg.ChunkBytes))
				}
				got, ok := extractUsage(t, d, stream, body)
				if !ok {
					t.Fatal("no usage in the response")
				}
				if want := DefaultUsage.Normalised(d); got != want {
					t.Errorf("usage = %+v, want %+v", got, want)
				}
			})
		}
	}
}

func TestConfiguredUsageIsMappedIntoEveryDialect(t *testing.T) {
	u := Usage{InputUncached: 7, CacheRead: 11, CacheWrite5m: 13, CacheWrite1h: 17, Output: 19, Reasoning: 5}
	_, base := MustStart(t, Config{Usage: u})
	for _, d := range allDialects {
		t.Run(string(d), func(t *testing.T) {
			_, body := do(t, base, call{dialect: d, stream: true, includeUsage: true})
			got, _ := extractUsage(t, d, true, body)
			if want := u.Normalised(d); got != want {
				t.Errorf("usage = %+v, want %+v", got, want)
			}
			if got.InputUncached+got.CacheRead+got.CacheWrite5m+got.CacheWrite1h != u.InputTotal() {
				t.Errorf("input total %+v differs from the configured %d", got, u.InputTotal())
			}
		})
	}
}

func TestGeminiStreamWithoutAltSSEIsAJSONArray(t *testing.T) {
	_, base := MustStart(t, Config{Events: 3})
	resp, body := do(t, base, call{dialect: Gemini, stream: true,
		rawPath: "/v1beta/models/gemini-2.5-pro:streamGenerateContent"})
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var chunks []map[string]any
	if err := json.Unmarshal(body, &chunks); err != nil {
		t.Fatalf("not a JSON array: %v\n%s", err, body)
	}
	if len(chunks) != 3 {
		t.Fatalf("%d chunks, want 3", len(chunks))
	}
	last := chunks[len(chunks)-1]
	c, _ := at(last, "candidates").([]any)
	if str(c[0], "finishReason") != "STOP" || num(last, "usageMetadata.thoughtsTokenCount") != DefaultUsage.Reasoning {
		t.Errorf("last chunk lacks the finish reason or full usage: %v", last)
	}
}
