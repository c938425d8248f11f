package upstreamtest

import (
	"bytes"
	"errors"
	"net/http"
	"strings"
	"testing"
)

func TestPathsMatchBySuffixUnderAnyPrefix(t *testing.T) {
	s, base := MustStart(t, Config{})
	for _, tc := range []struct {
		name   string
		d      Dialect
		path   string
		stream bool
	}{
		{"AnthropicUnderPrefixWithBetaQuery", Anthropic, "/anthropic/v1/messages?beta=true", false},
		{"ChatUnderPrefix", OpenAIChat, "/api/openai/v1/chat/completions", false},
		{"ResponsesUnderPrefix", OpenAIResponses, "/openai/v1/responses", false},
		{"GeminiUnderPrefix", Gemini, "/gemini/v1beta/models/gemini-2.5-pro:generateContent", false},
		{"GeminiV1", Gemini, "/v1/models/gemini-2.5-pro:generateContent", false},
		{"GeminiVertexStyle", Gemini, "/v1/projects/p/locations/l/publishers/google/models/gemini-2.5-pro:streamGenerateContent?alt=sse", true},
		{"TrailingSlash", OpenAIChat, "/v1/chat/completions/", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := do(t, base, call{dialect: tc.d, stream: tc.stream, rawPath: tc.path})
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if r, _ := s.Last(); r.Dialect != tc.d {
				t.Errorf("served as %q, want %q", r.Dialect, tc.d)
			}
			if _, ok := extractUsage(t, tc.d, tc.stream, body); !ok {
				t.Error("no usage")
			}
		})
	}
}

func TestCountTokensAnswersTheInputTotal(t *testing.T) {
	s, base := MustStart(t, Config{})
	want := DefaultUsage.InputTotal()
	for _, tc := range []struct {
		name  string
		d     Dialect
		path  string
		field string
	}{
		{"Anthropic", Anthropic, "/v1/messages/count_tokens?beta=true", "input_tokens"},
		{"Responses", OpenAIResponses, "/v1/responses/input_tokens", "input_tokens"},
		{"Gemini", Gemini, "/v1beta/models/gemini-2.5-pro:countTokens", "totalTokens"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := do(t, base, call{dialect: tc.d, rawPath: tc.path})
			if resp.StatusCode != 200 || num(obj(t, string(body)), tc.field) != want {
				t.Errorf("status %d, body %s; want %s %d", resp.StatusCode, body, tc.field, want)
			}
		})
	}
	if s.Counters().Streams != 0 {
		t.Error("count endpoints began streams")
	}
}

func TestModelEndpointsTakeTheShapeOfTheAskingDialect(t *testing.T) {
	_, base := MustStart(t, Config{Models: []string{"m-one", "m-two"}})
	for _, tc := range []struct {
		name  string
		d     Dialect
		path  string
		check func(m map[string]any) bool
	}{
		{"AnthropicList", Anthropic, "/v1/models?limit=1000", func(m map[string]any) bool {
			data, _ := m["data"].([]any)
			return len(data) == 2 && str(data[0], "type") == "model" && str(m, "last_id") == "m-two"
		}},
		{"OpenAIList", OpenAIChat, "/openai/v1/models", func(m map[string]any) bool {
			data, _ := m["data"].([]any)
			return str(m, "object") == "list" && len(data) == 2 && str(data[1], "id") == "m-two"
		}},
		{"GeminiList", Gemini, "/v1beta/models", func(m map[string]any) bool {
			ms, _ := m["models"].([]any)
			return len(ms) == 2 && str(ms[0], "name") == "models/m-one"
		}},
		{"AnthropicModel", Anthropic, "/v1/models/m-one", func(m map[string]any) bool {
			return str(m, "type") == "model" && str(m, "id") == "m-one"
		}},
		{"OpenAIModel", OpenAIChat, "/v1/models/m-one", func(m map[string]any) bool {
			return str(m, "object") == "model" && str(m, "id") == "m-one"
		}},
		{"GeminiModel", Gemini, "/v1beta/models/m-one", func(m map[string]any) bool {
			return str(m, "name") == "models/m-one"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, base+tc.path, nil)
			setAuth(req.Header, tc.d, "k")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var b bytes.Buffer
			if _, err := b.ReadFrom(resp.Body); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 200 || !tc.check(obj(t, b.String())) {
				t.Errorf("status %d, body %s", resp.StatusCode, b.String())
			}
		})
	}
}

func TestServedModelReplacesTheRequestedOne(t *testing.T) {
	s, base := MustStart(t, Config{ServedModel: func(m string) string { return m + "-20260101" }})
	for _, d := range allDialects {
		t.Run(string(d), func(t *testing.T) {
			_, body := do(t, base, call{dialect: d})
			f := bodyFacts(t, d, body)
			r, _ := s.Last()
			if f.model != r.Model+"-20260101" {
				t.Errorf("served %q for requested %q", f.model, r.Model)
			}
		})
	}
}

func TestRequestsTheFakeCannotServeAreRejected(t *testing.T) {
	_, base := MustStart(t, Config{})
	for _, tc := range []struct {
		name string
		c    call
		want int
	}{
		{"UnknownPathIsNotFound", call{dialect: OpenAIChat, rawPath: "/v1/embeddings"}, 404},
		{"UnknownGeminiMethodIsNotFound", call{dialect: Gemini, rawPath: "/v1beta/models/g:embedContent"}, 404},
		{"InvalidJSONIsBadRequest", call{dialect: Anthropic, rawPath: "/v1/messages?body=broken"}, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want == 400 {
				req, _ := http.NewRequest(http.MethodPost, base+tc.c.rawPath, strings.NewReader("{not json"))
				setAuth(req.Header, tc.c.dialect, "k")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != 400 {
					t.Errorf("status %d, want 400", resp.StatusCode)
				}
				return
			}
			if resp, _ := do(t, base, tc.c); resp.StatusCode != tc.want {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
}

func TestNewRejectsAnInvalidConfigListingEveryProblem(t *testing.T) {
	_, err := New(Config{Events: -1, Gap: -1, Fault: "boom", Usage: Usage{Output: 1, Reasoning: 2}})
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("err %v, want ErrInvalidConfig", err)
	}
	for _, want := range []string{"events", "gap", "fault", "reasoning"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}
