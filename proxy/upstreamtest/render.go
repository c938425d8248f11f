package upstreamtest

import (
	"bytes"
	"encoding/json"
	"sync"
)

// Fixed identifiers and timestamps. Bodies are deterministic, so two equal
// requests get byte-identical bodies (only the request-id header differs),
// which lets proxy tests compare bytes and lets the server pre-serialise.
const (
	// AnthropicMessageID is the id of every Anthropic message.
	AnthropicMessageID = "msg_01FakeProvider000000000000"
	// ChatCompletionID is the id of every OpenAI Chat completion.
	ChatCompletionID = "chatcmpl-FakeProvider000000000000"
	// ResponseID is the id of every OpenAI Responses response.
	ResponseID = "resp_fakeprovider00000000000000000"
	// ResponseItemID is the id of the message item in every Responses output.
	ResponseItemID = "msg_fakeprovider00000000000000000"
	// GeminiResponseID is the responseId of every Gemini response.
	GeminiResponseID = "fakeProviderResponse000001"
	// CreatedUnix is the creation time reported in OpenAI bodies.
	CreatedUnix = 1767225600
)

// Default models per dialect, served when a request names none.
var defaultModels = map[Dialect]string{
	Anthropic:       "claude-sonnet-4-5",
	OpenAIChat:      "gpt-5",
	OpenAIResponses: "gpt-5",
	Gemini:          "gemini-2.5-flash",
}

// shape is everything that determines a response body, so equal shapes get
// the same pre-serialised bytes.
type shape struct {
	dialect      Dialect
	stream       bool
	geminiSSE    bool // Gemini stream framing: alt=sse rather than a JSON array
	includeUsage bool // Chat stream_options.include_usage
	model        string
	events       int
	chunkBytes   int
	oversized    int
	malformed    bool
	midError     bool
	incomplete   bool
	noUsage      bool
	// compaction: a Responses request ending in a compaction_trigger item,
	// answered with one compaction item (compact.go).
	compaction bool
}

// rendered is a pre-serialised response: a JSON body, or the frames of a
// stream (whole SSE events, terminal event last).
type rendered struct {
	body   []byte
	frames [][]byte
}

// Cache bounds: shapes vary only by model and the X-Fake-* headers, so a
// few hundred entries cover any test suite or benchmark. Big responses (the
// oversized fault, huge event counts) are rendered each time rather than
// pinned, and the whole cache stays under cacheBudget.
const (
	maxCachedShapes = 512
	maxCachedBytes  = 1 << 20
	cacheBudget     = 64 << 20
)

// renderer pre-serialises responses for one Config and caches them by shape.
type renderer struct {
	usage         Usage
	usageOnFinish bool
	nullUsageOnRq bool

	mu          sync.RWMutex
	cache       map[shape]*rendered
	cachedBytes int
}

func newRenderer(c *Config) *renderer {
	return &renderer{
		usage:         c.Usage,
		usageOnFinish: c.UsageOnFinishChunk,
		nullUsageOnRq: c.NullUsageOnlyOnRequest,
		cache:         make(map[shape]*rendered),
	}
}

// get returns the response for sh, rendering and caching it on first use.
func (rn *renderer) get(sh shape) *rendered {
	rn.mu.RLock()
	out, ok := rn.cache[sh]
	rn.mu.RUnlock()
	if ok {
		return out
	}
	out = rn.render(sh)
	if n := out.size(); sh.oversized == 0 && n <= maxCachedBytes {
		rn.mu.Lock()
		if _, ok := rn.cache[sh]; !ok && len(rn.cache) < maxCachedShapes && rn.cachedBytes+n <= cacheBudget {
			rn.cache[sh] = out
			rn.cachedBytes += n
		}
		rn.mu.Unlock()
	}
	return out
}

func (r *rendered) size() int {
	n := len(r.body)
	for _, f := range r.frames {
		n += len(f)
	}
	return n
}

func (rn *renderer) render(sh shape) *rendered {
	if !sh.stream {
		if sh.malformed {
			// A 200 whose JSON body stops short, as from a broken gateway.
			return &rendered{body: []byte(`{"id":"broken","object":`)}
		}
		switch sh.dialect {
		case Anthropic:
			return &rendered{body: rn.anthropicBody(sh)}
		case OpenAIChat:
			return &rendered{body: rn.chatBody(sh)}
		case OpenAIResponses:
			if sh.compaction {
				return &rendered{body: mustJSON(rn.compactionFinal(sh))}
			}
			return &rendered{body: rn.responsesBody(sh)}
		default:
			return &rendered{body: rn.geminiBody(sh)}
		}
	}
	var frames [][]byte
	var malformed []byte
	switch sh.dialect {
	case Anthropic:
		frames = rn.anthropicStream(sh)
		malformed = []byte("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\n\n")
	case OpenAIChat:
		frames = rn.chatStream(sh)
		malformed = []byte("data: {\"id\":\"" + ChatCompletionID + "\",\"object\":\"chat.completion.chunk\",\"choices\":[{\n\n")
	case OpenAIResponses:
		if sh.compaction {
			return &rendered{frames: rn.compactionStream(sh)}
		}
		frames = rn.responsesStream(sh)
		malformed = []byte("event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\n\n")
	default:
		frames = rn.geminiStream(sh)
		malformed = []byte("data: {\"candidates\":[{\"content\":\n\n")
		if !sh.geminiSSE {
			malformed = []byte(",\r\n{\"candidates\":[{\"content\":")
		}
	}
	if sh.malformed && len(frames) > 0 {
		frames = append(frames[:1], append([][]byte{malformed}, frames[1:]...)...)
	}
	return &rendered{frames: frames}
}

// pangram is the text deltas are cut from, cycling.
const pangram = "The quick brown fox jumps over the lazy dog. "

// deltas returns the text of each content delta: events pieces of
// chunkBytes cut from a cycling pangram, the first oversized if asked.
func (sh shape) deltas() []string {
	out := make([]string, sh.events)
	for i := range out {
		n := sh.chunkBytes
		if i == 0 && sh.oversized > 0 {
			n = sh.oversized
		}
		b := make([]byte, n)
		for j := range b {
			b[j] = pangram[(i*sh.chunkBytes+j)%len(pangram)]
		}
		out[i] = string(b)
	}
	return out
}

// text is the whole content: every delta joined.
func (sh shape) text() string {
	var b bytes.Buffer
	for _, d := range sh.deltas() {
		b.WriteString(d)
	}
	return b.String()
}

// mustJSON marshals a value built from this package's own types, which
// cannot fail; a failure is a bug in the fake.
func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("upstreamtest: marshal: " + err.Error())
	}
	return b
}

// eventFrame is one named SSE event: "event: name\ndata: {json}\n\n".
func eventFrame(name string, v any) []byte {
	j := mustJSON(v)
	b := make([]byte, 0, len("event: \ndata: \n\n")+len(name)+len(j))
	b = append(b, "event: "...)
	b = append(b, name...)
	b = append(b, "\ndata: "...)
	b = append(b, j...)
	return append(b, "\n\n"...)
}

// dataFrame is one unnamed SSE event: "data: {json}\n\n".
func dataFrame(v any) []byte {
	j := mustJSON(v)
	b := make([]byte, 0, len("data: \n\n")+len(j))
	b = append(b, "data: "...)
	b = append(b, j...)
	return append(b, "\n\n"...)
}
