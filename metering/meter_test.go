package metering

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/tollgate/tollgate/registry"
)

var update = flag.Bool("update", false, "rewrite testdata/sse/*.golden.json from the current code")

// sseDir holds the golden transcripts, shared with the proxy's tests.
const sseDir = "../testdata/sse"

var (
	registryOnce sync.Once
	registryVal  *registry.Registry
	registryErr  error
)

// mustRegistry loads the repository's harnesses.yaml: the usage rules under
// test are data there, not code here.
func mustRegistry(tb testing.TB) *registry.Registry {
	tb.Helper()
	registryOnce.Do(func() { registryVal, registryErr = registry.LoadFile("../harnesses.yaml") })
	if registryErr != nil {
		tb.Fatalf("load harnesses.yaml: %v", registryErr)
	}
	return registryVal
}

func mustDialect(tb testing.TB, name string) *registry.Dialect {
	tb.Helper()
	d, err := mustRegistry(tb).Dialect(name)
	if err != nil {
		tb.Fatalf("dialect %s: %v", name, err)
	}
	return d
}

// transcript is one golden capture: testdata/sse/<dialect>_<case>.txt.
type transcript struct {
	name    string // file name without .txt
	dialect string
	kase    string
	data    []byte
	// nousage is what the provider sends without include_usage, when a
	// <name>.nousage.txt sits beside the capture.
	nousage []byte
}

// how reads the stream's end from the case name: a capture cannot record
// whether the client left or a timer fired, so the name says it.
func (tr transcript) how() End {
	switch {
	case strings.HasSuffix(tr.kase, "client_gone"):
		return EndClientGone
	case strings.HasSuffix(tr.kase, "idle"):
		return EndIdle
	case strings.HasSuffix(tr.kase, "read_error"):
		return EndUpstreamError
	}
	return EndEOF
}

// filtered says whether the case runs in hidden-usage mode.
func (tr transcript) filtered() bool { return strings.Contains(tr.kase, "hidden") }

func mustTranscripts(tb testing.TB) []transcript {
	tb.Helper()
	paths, err := filepath.Glob(filepath.Join(sseDir, "*.txt"))
	if err != nil || len(paths) == 0 {
		tb.Fatalf("no transcripts in %s: %v", sseDir, err)
	}
	var out []transcript
	for _, p := range paths {
		base := strings.TrimSuffix(filepath.Base(p), ".txt")
		if strings.HasSuffix(base, ".nousage") {
			continue
		}
		dialect, kase, ok := strings.Cut(base, "_")
		if !ok {
			tb.Fatalf("%s: name is not <dialect>_<case>.txt", p)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			tb.Fatal(err)
		}
		tr := transcript{name: base, dialect: dialect, kase: kase, data: b}
		if nb, err := os.ReadFile(filepath.Join(sseDir, base+".nousage.txt")); err == nil {
			tr.nousage = nb
		} else if !errors.Is(err, fs.ErrNotExist) {
			tb.Fatal(err)
		}
		out = append(out, tr)
	}
	return out
}

// golden is the expected result of one transcript.
type golden struct {
	End  string `json:"end"`
	Mode string `json:"mode"`
	Settlement
	PriceProvider string `json:"price_provider"`
	CostMicroUSD  *int64 `json:"cost_micro_usd"`
	PriceVersion  string `json:"price_version"`
}

// priceProvider maps a dialect to the provider whose list prices apply.
func priceProvider(dialect string) string {
	switch dialect {
	case "anthropic-messages":
		return "anthropic"
	case "gemini":
		return "gemini"
	}
	return "openai"
}

// meterRun feeds chunks to a fresh Meter, in Observe or Filter mode, and
// returns the settlement and, in Filter mode, the forwarded bytes.
func meterRun(d *registry.Dialect, maxEventBytes int, chunks [][]byte, how End, filter bool) (Settlement, []byte) {
	m := NewMeter(d, maxEventBytes)
	var out []byte
	for _, c := range chunks {
		if filter {
			out = m.Filter(out, c)
		} else {
			m.Observe(c)
		}
	}
	if filter {
		out = m.FilterFlush(out)
	}
	return m.Settle(how), out
}

func settlementJSON(tb testing.TB, s Settlement) string {
	tb.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

func checkSettlement(tb testing.TB, s Settlement) {
	tb.Helper()
	if (s.Usage == nil) != (s.Source == SourceMissing) {
		tb.Fatalf("usage %v with source %s: nil usage must mean missing and nothing else", s.Usage, s.Source)
	}
	if u := s.Usage; u != nil {
		for _, v := range []int64{u.InputUncached, u.CacheRead, u.CacheWrite5m, u.CacheWrite1h, u.InputOther, u.Output, u.Reasoning} {
			if v < 0 || v > maxTokenCount {
				tb.Fatalf("usage out of range: %+v", *u)
			}
		}
		if u.Reasoning > u.Output {
			tb.Fatalf("reasoning %d above output %d", u.Reasoning, u.Output)
		}
	}
}

// TestGolden replays every capture in testdata/sse in one read, byte by
// byte and in random splits, and compares the settlement (and its list
// price) with <name>.golden.json. Chat captures also run through Filter,
// which must meter the same and forward exactly <name>.nousage.txt, or the
// capture itself when it has no usage-only chunk.
func TestGolden(t *testing.T) {
	prices := DefaultPrices()
	for _, tr := range mustTranscripts(t) {
		t.Run(tr.name, func(t *testing.T) {
			d := mustDialect(t, tr.dialect)
			how := tr.how()
			got, fwd := meterRun(d, 0, oneChunk(tr.data), how, tr.filtered())
			checkSettlement(t, got)
			for _, split := range []struct {
				name   string
				chunks [][]byte
			}{{"ByteByByte", byteChunks(tr.data)}, {"Random1", splitChunks(tr.data, 1)}, {"Random2", splitChunks(tr.data, 2)}} {
				s, out := meterRun(d, 0, split.chunks, how, tr.filtered())
				if settlementJSON(t, s) != settlementJSON(t, got) {
					t.Errorf("%s: settlement %s, one read gave %s", split.name, settlementJSON(t, s), settlementJSON(t, got))
				}
				if !bytes.Equal(out, fwd) {
					t.Errorf("%s: forwarded bytes differ from one read", split.name)
				}
			}
			if d.Name == "openai-chat" {
				want := tr.data
				if tr.nousage != nil {
					want = tr.nousage
				}
				for _, chunks := range [][][]byte{oneChunk(tr.data), byteChunks(tr.data), splitChunks(tr.data, 3)} {
					s, out := meterRun(d, 0, chunks, how, true)
					if !bytes.Equal(out, want) {
						t.Errorf("Filter forwarded:\n%s\nwant:\n%s", out, want)
					}
					if settlementJSON(t, s) != settlementJSON(t, got) {
						t.Errorf("Filter metered %s, Observe %s", settlementJSON(t, s), settlementJSON(t, got))
					}
				}
			}

			g := golden{End: how.String(), Mode: "observe", Settlement: got, PriceProvider: priceProvider(tr.dialect)}
			if tr.filtered() {
				g.Mode = "filter"
			}
			if got.Usage != nil {
				g.CostMicroUSD, g.PriceVersion = prices.Cost(g.PriceProvider, got.ModelServed, got.ServiceTier, *got.Usage)
			}
			gotJSON, err := json.MarshalIndent(g, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			gotJSON = append(gotJSON, '\n')
			path := filepath.Join(sseDir, tr.name+".golden.json")
			if *update {
				if err := os.WriteFile(path, gotJSON, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./metering -update to create it)", err)
			}
			if !bytes.Equal(gotJSON, want) {
				t.Errorf("settlement differs from %s:\n got: %s\nwant: %s", path, gotJSON, want)
			}
		})
	}
}

// stream builds an SSE stream from data payloads.
func stream(payloads ...string) []byte {
	var b bytes.Buffer
	for _, p := range payloads {
		fmt.Fprintf(&b, "data: %s\n\n", p)
	}
	return b.Bytes()
}

func settle(t *testing.T, dialect string, in []byte, how End) Settlement {
	t.Helper()
	s, _ := meterRun(mustDialect(t, dialect), 0, oneChunk(in), how, false)
	checkSettlement(t, s)
	return s
}

func TestMeterRules(t *testing.T) {
	for _, tc := range []struct {
		name    string
		dialect string
		in      []byte
		how     End
		want    Settlement
	}{
		{
			name:    "AnthropicDeltaAssignsNotAdds",
			dialect: "anthropic-messages",
			in: stream(`{"type":"message_start","message":{"id":"msg_1","model":"claude-haiku-4-5","usage":{"input_tokens":10,"output_tokens":1}}}`,
				`{"type":"message_delta","usage":{"output_tokens":5}}`,
				`{"type":"message_delta","usage":{"output_tokens":40,"input_tokens":null}}`,
				`{"type":"message_stop"}`),
			want: Settlement{Outcome: OutcomeOK, Source: SourceUpstream, Usage: &Usage{InputUncached: 10, Output: 40}, ModelServed: "claude-haiku-4-5", UpstreamID: "msg_1"},
		},
		{
			name:    "AnthropicPartialSplitLeavesRestAt5m",
			dialect: "anthropic-messages",
			in: stream(`{"type":"message_start","message":{"usage":{"input_tokens":1,"cache_creation_input_tokens":100,"cache_creation":{"ephemeral_1h_input_tokens":60},"output_tokens":1}}}`,
				`{"type":"message_stop"}`),
			want: Settlement{Outcome: OutcomeOK, Source: SourceUpstream, Usage: &Usage{InputUncached: 1, CacheWrite5m: 40, CacheWrite1h: 60, Output: 1}},
		},
		{
			name:    "AnthropicStartOnlyIsPartial",
			dialect: "anthropic-messages",
			in:      stream(`{"type":"message_start","message":{"usage":{"input_tokens":7,"output_tokens":1}}}`),
			how:     EndUpstreamError,
			want:    Settlement{Outcome: OutcomeTruncated, Source: SourcePartial, Usage: &Usage{InputUncached: 7, Output: 1}},
		},
		{
			name:    "ChatLastNonNullUsageWins",
			dialect: "openai-chat",
			in: stream(`{"id":"c1","model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1}}`,
				`{"id":"c1","model":"m","choices":[{"index":0,"delta":{}}],"usage":null}`,
				`{"id":"c1","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":9}}`,
				`[DONE]`),
			want: Settlement{Outcome: OutcomeOK, Source: SourceUpstream, Usage: &Usage{InputUncached: 5, Output: 9}, ModelServed: "m", UpstreamID: "c1"},
		},
		{
			name:    "ChatEmptyUsageObjectIgnored",
			dialect: "openai-chat",
			in:      stream(`{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}`, `{"choices":[],"usage":{}}`, `[DONE]`),
			want:    Settlement{Outcome: OutcomeOK, Source: SourceUpstream, Usage: &Usage{InputUncached: 5, Output: 2}},
		},
		{
			name:    "ChatCachedAboveInputClampsToZero",
			dialect: "openai-chat",
			in:      stream(`{"choices":[],"usage":{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":9},"completion_tokens":-3}}`, `[DONE]`),
			want:    Settlement{Outcome: OutcomeOK, Source: SourceUpstream, Usage: &Usage{CacheRead: 9}},
		},
		{
			name:    "ChatHugeCountsClamp",
			dialect: "openai-chat",
			in:      stream(`{"choices":[],"usage":{"prompt_tokens":1e300,"completion_tokens":"12","completion_tokens_details":{"reasoning_tokens":99}}}`, `[DONE]`),
			want:    Settlement{Outcome: OutcomeOK, Source: SourceUpstream, Usage: &Usage{InputUncached: maxTokenCount, Output: 12, Reasoning: 12}},
		},
		{
			name:    "ChatErrorThenDoneStaysFailed",
			dialect: "openai-chat",
			in:      stream(`{"id":"c2","choices":[{"index":0,"delta":{"content":"a"}}]}`, `{"error":{"message":"boom"}}`, `[DONE]`),
			want:    Settlement{Outcome: OutcomeUpstreamError, Source: SourceMissing, UpstreamID: "c2"},
		},
		{
			name:    "ChatNoUsageCompletedIsMissingNotZero",
			dialect: "openai-chat",
			in:      stream(`{"id":"c3","model":"m","choices":[{"index":0,"delta":{"content":"a"}}]}`, `[DONE]`),
			want:    Settlement{Outcome: OutcomeOK, Source: SourceMissing, ModelServed: "m", UpstreamID: "c3"},
		},
		{
			name:    "ResponsesFailedWithUsageIsUpstream",
			dialect: "openai-responses",
			in:      stream(`{"type":"response.failed","response":{"id":"resp_1","model":"gpt-5","usage":{"input_tokens":10,"output_tokens":2}}}`),
			want:    Settlement{Outcome: OutcomeUpstreamError, Source: SourceUpstream, Usage: &Usage{InputUncached: 10, Output: 2}, ModelServed: "gpt-5", UpstreamID: "resp_1"},
		},
		{
			name:    "ResponsesTerminalAfterClientGoneStillOK",
			dialect: "openai-responses",
			in:      stream(`{"type":"response.completed","response":{"id":"resp_2","model":"gpt-5","usage":{"input_tokens":10,"output_tokens":2}}}`),
			how:     EndClientGone,
			want:    Settlement{Outcome: OutcomeOK, Source: SourceUpstream, Usage: &Usage{InputUncached: 10, Output: 2}, ModelServed: "gpt-5", UpstreamID: "resp_2"},
		},
		{
			name:    "GeminiOutputAddsThoughts",
			dialect: "gemini",
			in:      stream(`{"candidates":[{"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":10,"cachedContentTokenCount":4,"candidatesTokenCount":5,"thoughtsTokenCount":348,"toolUsePromptTokenCount":3}}`),
			want:    Settlement{Outcome: OutcomeOK, Source: SourceUpstream, Usage: &Usage{InputUncached: 6, CacheRead: 4, InputOther: 3, Output: 353, Reasoning: 348}},
		},
		{
			name:    "GeminiIdleIsPartial",
			dialect: "gemini",
			in:      stream(`{"candidates":[{}],"usageMetadata":{"promptTokenCount":10}}`),
			how:     EndIdle,
			want:    Settlement{Outcome: OutcomeUpstreamIdle, Source: SourcePartial, Usage: &Usage{InputUncached: 10}},
		},
		{
			name:    "FinalLineWithoutBlankLineIsMetered",
			dialect: "gemini",
			in:      []byte("data: {\"candidates\":[{\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":2}}\n"),
			want:    Settlement{Outcome: OutcomeOK, Source: SourceUpstream, Usage: &Usage{InputUncached: 3, Output: 2}},
		},
		{
			name:    "NothingAtAllIsMissing",
			dialect: "anthropic-messages",
			in:      nil,
			want:    Settlement{Outcome: OutcomeTruncated, Source: SourceMissing},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := settle(t, tc.dialect, tc.in, tc.how)
			if settlementJSON(t, got) != settlementJSON(t, tc.want) {
				t.Errorf("got  %s\nwant %s", settlementJSON(t, got), settlementJSON(t, tc.want))
			}
		})
	}
}

func TestMeterOverflowFlagged(t *testing.T) {
	d := mustDialect(t, "anthropic-messages")
	in := stream(`{"type":"message_start","message":{"usage":{"input_tokens":7,"output_tokens":1}}}`,
		`{"type":"content_block_delta","delta":{"type":"text_delta","text":"`+strings.Repeat("x", 200)+`"}}`,
		`{"type":"message_delta","usage":{"output_tokens":9}}`,
		`{"type":"message_stop"}`)
	s, _ := meterRun(d, 128, splitChunks(in, 5), EndEOF, false)
	want := Settlement{Outcome: OutcomeOK, Source: SourceUpstream, Usage: &Usage{InputUncached: 7, Output: 9}, Overflow: true}
	if settlementJSON(t, s) != settlementJSON(t, want) {
		t.Errorf("got %s, want %s", settlementJSON(t, s), settlementJSON(t, want))
	}
}

func TestMeterNilDialect(t *testing.T) {
	m := NewMeter(nil, 0)
	m.Observe([]byte("data: {\"usage\":{}}\n\n"))
	m.Body([]byte(`{"usage":{"input_tokens":1}}`))
	if s := m.Settle(EndEOF); s.Source != SourceMissing || s.Usage != nil {
		t.Errorf("nil dialect settled %+v", s)
	}
}

func TestBody(t *testing.T) {
	for _, tc := range []struct {
		name    string
		dialect string
		body    string
		want    Settlement
	}{
		{
			name:    "Anthropic",
			dialect: "anthropic-messages",
			body:    `{"id":"msg_9","type":"message","model":"claude-sonnet-4-5-20250929","content":[],"usage":{"input_tokens":3,"cache_creation_input_tokens":10,"cache_read_input_tokens":20,"output_tokens":7}}`,
			want:    Settlement{Outcome: OutcomeOK, Source: SourceUpstream, Usage: &Usage{InputUncached: 3, CacheRead: 20, CacheWrite5m: 10, Output: 7}, ModelServed: "claude-sonnet-4-5-20250929", UpstreamID: "msg_9"},
		},
		{
			name:    "Chat",
			dialect: "openai-chat",
			body:    `{"id":"chatcmpl-1","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":100,"prompt_tokens_details":{"cached_tokens":60},"completion_tokens":20,"completion_tokens_details":{"reasoning_tokens":5}}}`,
			want:    Settlement{Outcome: OutcomeOK, Source: SourceUpstream, Usage: &Usage{InputUncached: 40, CacheRead: 60, Output: 20, Reasoning: 5}, ModelServed: "gpt-4o", UpstreamID: "chatcmpl-1"},
		},
		{
			name:    "Responses",
			dialect: "openai-responses",
			body:    `{"id":"resp_1","status":"completed","model":"gpt-5-codex","usage":{"input_tokens":50,"input_tokens_details":{"cached_tokens":10},"output_tokens":8,"output_tokens_details":{"reasoning_tokens":4}}}`,
			want:    Settlement{Outcome: OutcomeOK, Source: SourceUpstream, Usage: &Usage{InputUncached: 40, CacheRead: 10, Output: 8, Reasoning: 4}, ModelServed: "gpt-5-codex", UpstreamID: "resp_1"},
		},
		{
			name:    "GeminiArrayLastUsageWins",
			dialect: "gemini",
			body:    `[{"usageMetadata":{"promptTokenCount":9},"modelVersion":"gemini-2.5-flash","responseId":"r1"},{"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":4,"thoughtsTokenCount":6},"responseId":"r1"}]`,
			want:    Settlement{Outcome: OutcomeOK, Source: SourceUpstream, Usage: &Usage{InputUncached: 9, Output: 10, Reasoning: 6}, ModelServed: "gemini-2.5-flash", UpstreamID: "r1"},
		},
		{
			name:    "NoUsageIsMissing",
			dialect: "openai-chat",
			body:    `{"id":"chatcmpl-2","choices":[]}`,
			want:    Settlement{Outcome: OutcomeOK, Source: SourceMissing, UpstreamID: "chatcmpl-2"},
		},
		{
			name:    "NotJSONIsAnUpstreamError",
			dialect: "openai-chat",
			body:    `<html>502</html>`,
			want:    Settlement{Outcome: OutcomeUpstreamError, Source: SourceMissing},
		},
		{
			// gjson reads counts out of a cut document; they are not the
			// provider's word, and the client cannot parse the answer.
			name:    "InvalidJSONWithUsageIsMissing",
			dialect: "openai-responses",
			body:    `{"id":"resp_1","status":"completed","usage":{"input_tokens":50,"output_tokens":8}`,
			want:    Settlement{Outcome: OutcomeUpstreamError, Source: SourceMissing},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMeter(mustDialect(t, tc.dialect), 0)
			m.Body([]byte(tc.body))
			got := m.Settle(EndEOF)
			checkSettlement(t, got)
			if settlementJSON(t, got) != settlementJSON(t, tc.want) {
				t.Errorf("got  %s\nwant %s", settlementJSON(t, got), settlementJSON(t, tc.want))
			}
		})
	}
}

func filterAll(t *testing.T, maxEventBytes int, chunks ...string) string {
	t.Helper()
	m := NewMeter(mustDialect(t, "openai-chat"), maxEventBytes)
	var out []byte
	for _, c := range chunks {
		out = m.Filter(out, []byte(c))
	}
	return string(m.FilterFlush(out))
}

func TestFilter(t *testing.T) {
	const (
		content   = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\r\n\r\n"
		usageCRLF = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\r\n\r\n"
		done      = "data: [DONE]\r\n\r\n"
	)
	for _, tc := range []struct {
		name   string
		max    int
		chunks []string
		want   string
	}{
		{
			name:   "DropsUsageChunkSplitInsideCRLF",
			chunks: []string{content, usageCRLF[:len(usageCRLF)-1], "\n" + done},
			want:   content + done,
		},
		{
			name:   "KeepsLFAfterKeptFrameEndingInCR",
			chunks: []string{content[:len(content)-1], "\n", usageCRLF, done},
			want:   content + done,
		},
		{
			name:   "HoldsBackPartialFrame",
			chunks: []string{content + "data: {\"cho", "ices\":[]"},
			want:   content + "data: {\"choices\":[]",
		},
		{
			name:   "DropsTrailingUsageChunkWithoutBlankLine",
			chunks: []string{content, "data: {\"usage\":{\"prompt_tokens\":1}}\n"},
			want:   content,
		},
		{
			name:   "ForwardsCommentsAndMixedChunks",
			chunks: []string{": keep-alive\n\n", "data: {\"choices\":[{\"index\":0}],\"usage\":{\"prompt_tokens\":1}}\n\n", done},
			want:   ": keep-alive\n\n" + "data: {\"choices\":[{\"index\":0}],\"usage\":{\"prompt_tokens\":1}}\n\n" + done,
		},
		{
			name:   "ForwardsFramesOverTheBound",
			max:    16,
			chunks: []string{"data: {\"choices\":[],", "\"usage\":{\"prompt_tokens\":1}}\n\n"},
			want:   "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := filterAll(t, tc.max, tc.chunks...); got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

// FuzzMeter: any split gives the same settlement as one read, in every
// dialect and in both modes, and arbitrary bytes never panic or produce
// negative usage.
func FuzzMeter(f *testing.F) {
	for _, tr := range mustTranscripts(f) {
		f.Add(tr.data, uint64(len(tr.data)))
	}
	dialects := mustRegistry(f).Dialects()
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		for _, d := range dialects {
			for _, bound := range []int{0, 64} {
				for _, filter := range []bool{false, true} {
					want, _ := meterRun(d, bound, oneChunk(data), EndEOF, filter)
					checkSettlement(t, want)
					got, _ := meterRun(d, bound, splitChunks(data, seed), EndEOF, filter)
					if settlementJSON(t, got) != settlementJSON(t, want) {
						t.Fatalf("%s bound %d filter %v: split %s, one read %s", d.Name, bound, filter, settlementJSON(t, got), settlementJSON(t, want))
					}
				}
			}
		}
	})
}

// FuzzFilter: any split forwards the same bytes as one read, never more
// bytes than came in, and exactly the input when nothing was dropped.
func FuzzFilter(f *testing.F) {
	for _, tr := range mustTranscripts(f) {
		if tr.dialect == "openai-chat" {
			f.Add(tr.data, uint64(len(tr.data)))
		}
	}
	d := mustDialect(f, "openai-chat")
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		for _, bound := range []int{0, 64} {
			_, want := meterRun(d, bound, oneChunk(data), EndEOF, true)
			_, got := meterRun(d, bound, splitChunks(data, seed), EndEOF, true)
			if !bytes.Equal(got, want) {
				t.Fatalf("bound %d: split forwarded %q, one read %q", bound, got, want)
			}
			if len(want) > len(data) {
				t.Fatalf("forwarded %d bytes of %d", len(want), len(data))
			}
			if !bytes.Contains(data, []byte("usage")) && !bytes.Contains(data, []byte(`\`)) && !bytes.Equal(want, data) {
				t.Fatalf("nothing to drop, yet forwarded %q for %q", want, data)
			}
		}
	})
}

// eventsOf returns the frames of a transcript, each with its blank line,
// for per-event benchmarks.
func eventsOf(tb testing.TB, name string) [][]byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(sseDir, name+".txt"))
	if err != nil {
		tb.Fatal(err)
	}
	var out [][]byte
	f := NewFramer(0)
	for p := b; len(p) > 0; {
		n, ok := f.Next(p)
		if ok {
			out = append(out, p[:n])
		}
		p = p[n:]
	}
	return out
}

func TestObserveZeroAllocs(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation counts")
	}
	for _, tc := range []struct{ dialect, capture string }{
		{"anthropic-messages", "anthropic-messages_tool_use"},
		{"openai-chat", "openai-chat_tool_use"},
		{"openai-responses", "openai-responses_reasoning"},
		{"gemini", "gemini_thinking"},
	} {
		evs := eventsOf(t, tc.capture)
		m := NewMeter(mustDialect(t, tc.dialect), 0)
		for _, e := range evs {
			m.Observe(e) // warm buffers and the model and id copies
		}
		i := 0
		if n := testing.AllocsPerRun(200, func() {
			m.Observe(evs[i%len(evs)])
			i++
		}); n != 0 {
			t.Errorf("%s: %v allocations per event", tc.capture, n)
		}
	}
}

func benchObserve(b *testing.B, dialect, capture string) {
	evs := eventsOf(b, capture)
	m := NewMeter(mustDialect(b, dialect), 0)
	size := 0
	for _, e := range evs {
		size += len(e)
	}
	b.SetBytes(int64(size / len(evs)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		m.Observe(evs[i%len(evs)])
	}
}

// Each benchmark op is one SSE event of a realistic capture, cycling
// through the capture (usage events included).
func BenchmarkObserveAnthropic(b *testing.B) {
	benchObserve(b, "anthropic-messages", "anthropic-messages_tool_use")
}
func BenchmarkObserveChat(b *testing.B) { benchObserve(b, "openai-chat", "openai-chat_tool_use") }
func BenchmarkObserveResponses(b *testing.B) {
	benchObserve(b, "openai-responses", "openai-responses_reasoning")
}
func BenchmarkObserveGemini(b *testing.B) { benchObserve(b, "gemini", "gemini_thinking") }

func BenchmarkFilterChat(b *testing.B) {
	evs := eventsOf(b, "openai-chat_include_usage_hidden")
	m := NewMeter(mustDialect(b, "openai-chat"), 0)
	dst := make([]byte, 0, 4096)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		dst = m.Filter(dst[:0], evs[i%len(evs)])
	}
}

// FuzzJSONMembers: on valid JSON the one-pass member scan finds what gjson
// finds, for every plain member name.
func FuzzJSONMembers(f *testing.F) {
	for _, tr := range mustTranscripts(f) {
		fr := NewFramer(0)
		for p := tr.data; len(p) > 0; {
			n, ok := fr.Next(p)
			if ok && fr.Frame().HasData {
				f.Add(bytes.Clone(fr.Frame().Data))
			}
			p = p[n:]
		}
	}
	f.Add([]byte(`{"a":"x\"}","b":[1,{"c":"]"}],"a":2, "d" : null ,"e":-1.5e3}`))
	f.Fuzz(func(t *testing.T, doc []byte) {
		if !gjson.ValidBytes(doc) {
			var v [2]string
			jsonMembers(string(doc), []string{"a", "usage"}, v[:])
			return
		}
		s := string(doc)
		gjson.Parse(s).ForEach(func(k, _ gjson.Result) bool {
			name := k.Str
			if name == "" || strings.ContainsAny(name, "\\*?#@|!()=<>[]{}.\"") || strings.ContainsAny(k.Raw, `\`) {
				return true
			}
			var v [1]string
			jsonMembers(s, []string{name}, v[:])
			if want := gjson.Get(s, name).Raw; v[0] != want {
				t.Fatalf("member %q: scan %q, gjson %q", name, v[0], want)
			}
			return true
		})
	})
}
