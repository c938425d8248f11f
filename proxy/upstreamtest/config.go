package upstreamtest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Request headers that choose pacing and faults per request. A request
// header overrides the matching Config default; an unparseable value is
// answered with 400 in the dialect's error shape, so a typo in a test fails
// loudly instead of silently running the happy path.
const (
	// HeaderEvents is the number of content deltas in the response.
	HeaderEvents = "X-Fake-Events"
	// HeaderGap is the pause between stream events, as a Go duration ("20ms").
	HeaderGap = "X-Fake-Gap"
	// HeaderTTFB is the delay before the response headers, as a Go duration.
	HeaderTTFB = "X-Fake-TTFB"
	// HeaderChunkBytes is the size of each content delta's text in bytes.
	HeaderChunkBytes = "X-Fake-Chunk-Bytes"
	// HeaderFault is a comma-separated list of faults; see Config.Fault.
	HeaderFault = "X-Fake-Fault"
)

// Defaults applied by New to zero Config fields.
const (
	// DefaultEvents is the number of content deltas per response.
	DefaultEvents = 4
	// DefaultChunkBytes is the size of each delta's text.
	DefaultChunkBytes = 16
	// DefaultRecordLimit is how many requests the server remembers.
	DefaultRecordLimit = 1024
)

// Bounds on what a request header can ask for, so one bad header cannot make
// the fake allocate gigabytes or hold a goroutine for hours.
const (
	maxEvents     = 100_000
	maxChunkBytes = 1 << 20
	maxOversized  = 64 << 20
	maxDelay      = 10 * time.Minute
	// maxBodyBytes matches tollgate's own request body limit (harnesses.yaml).
	maxBodyBytes = 32 << 20
	// trickleGap and trickleEvents make "trickle" slow and long by default:
	// 1000 events 100 ms apart keep a stream alive for 100 s unless the test
	// bounds it with X-Fake-Events.
	trickleGap    = 100 * time.Millisecond
	trickleEvents = 1000
)

// ErrInvalidConfig is returned by Config.Validate and New when a field is out
// of range or Config.Fault does not parse; the message lists every problem.
var ErrInvalidConfig = errors.New("invalid fake provider config")

// Config is the fake provider's behaviour. The zero value is usable: every
// dialect answers, any non-empty key is accepted, and usage is DefaultUsage.
type Config struct {
	// Keys are the provider keys accepted. Empty accepts any non-empty key.
	// Ignored when Accept is set.
	Keys []string
	// Accept, if set, decides whether a key is valid, instead of Keys. It is
	// called concurrently.
	Accept func(key string) bool

	// Usage is reported by every generation response, mapped into each
	// dialect's fields (see Usage.Normalised). The zero value means
	// DefaultUsage; use the "no-usage" fault to omit usage instead.
	Usage Usage

	// Events is the default number of content deltas. Zero means
	// DefaultEvents; a request may override it with X-Fake-Events, including
	// with 0.
	Events int
	// ChunkBytes is the default size of each delta's text. Zero means
	// DefaultChunkBytes.
	ChunkBytes int
	// Gap is the default pause between stream events. Events are paced
	// against deadlines counted from the stream's start, so gaps do not
	// drift under load.
	Gap time.Duration
	// TTFB is the default delay before response headers, for every response.
	TTFB time.Duration
	// Fault is the default fault list, used when a request has no
	// X-Fake-Fault header. It is a comma-separated list of:
	//   status=N         answer N (400-599) with the dialect's error body
	//                    before any stream; 429 adds Retry-After: 1
	//   cut=N            abort the connection after N stream events, never
	//                    sending the terminal event (N is capped just before
	//                    it); a JSON body is cut halfway
	//   silence          stream: headers and the first event, then nothing
	//                    until the client goes away; JSON: no headers at all
	//   trickle          Gap defaults to 100ms and Events to 1000
	//   oversized=BYTES  the first content delta carries BYTES of text
	//   malformed        a data line that is not JSON after the first event;
	//                    a JSON response gets a truncated body
	//   json-for-stream  answer a stream request with the JSON body
	//   midstream-error  the dialect's in-stream error after the first delta,
	//                    and no terminal event
	//   incomplete       the dialect's "stopped at max tokens" ending
	//                    (Responses: response.incomplete)
	//   no-usage         omit usage everywhere
	Fault string

	// UsageOnFinishChunk makes OpenAI Chat streams put the usage on the
	// finish_reason chunk (non-empty choices) instead of a separate
	// usage-only chunk, as several compatible backends do. It only applies
	// when the request asked for stream_options.include_usage.
	UsageOnFinishChunk bool
	// NullUsageOnlyOnRequest makes OpenAI Chat chunks carry "usage":null
	// only when include_usage was requested, as api.openai.com does. By
	// default every chunk carries it, so a stream with and without
	// include_usage differs only by the usage chunk.
	NullUsageOnlyOnRequest bool

	// ServedModel maps the requested model to the one reported in responses
	// (a dated snapshot, say). Nil reports the requested model. An empty
	// requested model is replaced by the dialect's default model first.
	ServedModel func(requested string) string
	// Models lists the ids served by the model-listing endpoints. Empty
	// lists the dialect's default model.
	Models []string

	// Hold, if set, is called on every stream after the headers and the
	// first event are flushed; the stream goes on when it returns, or ends
	// as cancelled if ctx (the request's context) is done by then. Gate.Hold
	// fits here. It is not called for JSON responses.
	Hold func(ctx context.Context, r *http.Request)

	// RecordLimit is how many recent requests Requests returns. Zero means
	// DefaultRecordLimit; negative records nothing, which saves a copy of
	// every body under benchmark load.
	RecordLimit int
}

// withDefaults returns c with zero fields replaced by their defaults.
func (c Config) withDefaults() Config {
	if c.Usage == (Usage{}) {
		c.Usage = DefaultUsage
	}
	if c.Events == 0 {
		c.Events = DefaultEvents
	}
	if c.ChunkBytes == 0 {
		c.ChunkBytes = DefaultChunkBytes
	}
	if c.RecordLimit == 0 {
		c.RecordLimit = DefaultRecordLimit
	}
	return c
}

// Validate reports every out-of-range field of c in one error wrapping
// ErrInvalidConfig.
func (c Config) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.Events < 0 || c.Events > maxEvents {
		add("events %d is outside [0, %d]", c.Events, maxEvents)
	}
	if c.ChunkBytes < 0 || c.ChunkBytes > maxChunkBytes {
		add("chunk bytes %d is outside [0, %d]", c.ChunkBytes, maxChunkBytes)
	}
	if c.Gap < 0 || c.Gap > maxDelay {
		add("gap %v is outside [0, %v]", c.Gap, maxDelay)
	}
	if c.TTFB < 0 || c.TTFB > maxDelay {
		add("ttfb %v is outside [0, %v]", c.TTFB, maxDelay)
	}
	if err := c.Usage.validate(); err != nil {
		add("usage: %v", err)
	}
	if _, err := parseFault(c.Fault); err != nil {
		add("fault: %v", err)
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
}
