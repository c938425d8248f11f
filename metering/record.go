// Package metering turns the bytes tollgate forwards into usage: it frames
// SSE streams, extracts token counts per dialect from rules in the registry,
// prices them, and builds the one usage Record of each request. Keeping the
// records (spool, store, queries) is package metering/ledger.
package metering

import (
	"time"
	"unsafe"
)

// Usage sources (wire-formats.md §8). A record never carries a silent zero:
// when nothing was reported the source says so and the token fields are nil.
const (
	SourceUpstream  = "upstream"  // complete usage from the provider
	SourcePartial   = "partial"   // stream ended early; last values seen
	SourceEstimated = "estimated" // tollgate's estimate, flagged as such
	SourceMissing   = "missing"   // no usage and no estimate: tokens NULL
	SourceNone      = "none"      // not a metered call (error, count_tokens)
)

// Outcomes of a request (the record's end reason).
const (
	OutcomeOK            = "ok"             // stream or body completed normally
	OutcomeIncomplete    = "incomplete"     // provider ended it early but billed (Responses incomplete)
	OutcomeTruncated     = "truncated"      // upstream EOF without the dialect's terminal event
	OutcomeClientGone    = "client_gone"    // the client went away mid-stream
	OutcomeUpstreamIdle  = "upstream_idle"  // the idle timer fired
	OutcomeUpstreamError = "upstream_error" // provider answered non-2xx, or failed mid-stream
	OutcomeUnreachable   = "unreachable"    // no answer from the provider (dial, TLS, timeout)
	OutcomeRejected      = "rejected"       // tollgate refused the request before any upstream call
	// OutcomeInterrupted: the request was forwarded to the provider and the
	// process died before it ended; its record is made on the next start
	// from the in-flight journal, with usage partial (last values seen) or
	// missing.
	OutcomeInterrupted = "interrupted"
)

// Usage is the normalised token count of one response, and the server-side
// tool uses billed with it. The token buckets are disjoint except that
// Reasoning is a subset of Output, so every bucket is priced exactly once
// (wire-formats.md §0); a tool bucket is a count of uses, priced per use.
type Usage struct {
	InputUncached int64 `json:"input_uncached"`
	CacheRead     int64 `json:"cache_read"`
	CacheWrite5m  int64 `json:"cache_write_5m"`
	CacheWrite1h  int64 `json:"cache_write_1h"`
	InputOther    int64 `json:"input_other"`
	Output        int64 `json:"output"`
	Reasoning     int64 `json:"reasoning"`
	// WebSearchRequests are the web searches a provider ran for the
	// response (Anthropic web_search, OpenAI web_search calls, Gemini
	// grounding queries). Omitted from JSON when zero, as most responses
	// use none.
	WebSearchRequests int64 `json:"web_search_requests,omitempty"`
}

// NumBuckets is the number of buckets in Usage.
const NumBuckets = 8

// Bucket describes one bucket of Usage once, for every layer that stores,
// sums or shows buckets (spool line, usage_records and usage_daily
// columns, usage reports). Buckets lists them in Usage's field order,
// which is also their JSON order. Adding a bucket is a field in Usage, an
// entry here, and a migration adding its columns (ledger/store.go); what
// a token bucket costs is a decision in price.go, a tool bucket costs its
// tool's fee per use.
type Bucket struct {
	// Name is the JSON key, in Usage, the spool and the reports.
	Name string
	// Column is the SQL column in usage_records and usage_daily.
	Column string
	// Input says the bucket is part of InputTotal (OTel's input).
	Input bool
	// Table is the column of the terminal table that shows it; buckets
	// sharing one are summed there.
	Table string
	// TokenType is the gen_ai.token.type it is also counted under on
	// OTel's token histogram, beside input for the Input buckets; buckets
	// sharing one are summed there, and none leaves it in input only.
	TokenType string
	// Tool is set on a bucket that counts uses of a provider's server-side
	// tool rather than tokens: it names the tool in the price table's
	// tool_fees (PriceTable.ToolFeeMicroUSD) and in the tool-use metric.
	// Such a bucket is neither Input nor a TokenType, and its JSON key is
	// omitted when zero.
	Tool string
	// off is the bucket's field's offset in Usage. An offset rather than
	// a func field: a pointer handed to a func value escapes, so every
	// InputTotal or Add on a Usage value allocated (two of the eight
	// allocations of a governed request); Of is a direct call and does not.
	off uintptr
}

// Of returns the bucket's field in u.
func (b *Bucket) Of(u *Usage) *int64 {
	return (*int64)(unsafe.Add(unsafe.Pointer(u), b.off))
}

// Buckets are Usage's buckets in field order.
var Buckets = [NumBuckets]Bucket{
	{"input_uncached", "input_uncached", true, "input", "", "", unsafe.Offsetof(Usage{}.InputUncached)},
	{"cache_read", "cache_read", true, "cache_read", TokenCachedInput, "", unsafe.Offsetof(Usage{}.CacheRead)},
	{"cache_write_5m", "cache_write_5m", true, "cache_write", TokenCacheCreationInput, "", unsafe.Offsetof(Usage{}.CacheWrite5m)},
	{"cache_write_1h", "cache_write_1h", true, "cache_write", TokenCacheCreationInput, "", unsafe.Offsetof(Usage{}.CacheWrite1h)},
	{"input_other", "input_other", true, "input", "", "", unsafe.Offsetof(Usage{}.InputOther)},
	{"output", "output_tokens", false, "output", TokenOutput, "", unsafe.Offsetof(Usage{}.Output)},
	{"reasoning", "reasoning_tokens", false, "reasoning", TokenReasoning, "", unsafe.Offsetof(Usage{}.Reasoning)},
	{"web_search_requests", "web_search_requests", false, "web_search", "", ToolWebSearch, unsafe.Offsetof(Usage{}.WebSearchRequests)},
}

// ToolWebSearch is the provider-side web search tool (Anthropic
// web_search, OpenAI web_search, Gemini grounding with Google Search).
const ToolWebSearch = "web_search"

// InputTotal is OTel's input: uncached, cache reads and writes, and other input.
func (u Usage) InputTotal() int64 {
	var n int64
	for _, b := range Buckets {
		if b.Input {
			n += *b.Of(&u)
		}
	}
	return n
}

// Add adds o's buckets to u.
func (u *Usage) Add(o *Usage) {
	for _, b := range Buckets {
		*b.Of(u) += *b.Of(o)
	}
}

// Record is one request's usage row. Token fields are nil when Source is
// missing or none; CostMicroUSD is nil when the model has no price.
type Record struct {
	RequestID    string        `json:"request_id"`
	Start        time.Time     `json:"start"`
	Duration     time.Duration `json:"duration_ns"`
	TTFB         time.Duration `json:"ttfb_ns"`
	Workspace    string        `json:"workspace"`
	Project      string        `json:"project"`
	User         string        `json:"user"`
	TokenID      string        `json:"token_id"`
	Session      string        `json:"session,omitempty"`
	Harness      string        `json:"harness"`
	Dialect      string        `json:"dialect"`
	Operation    string        `json:"operation"`
	Path         string        `json:"path"`
	Provider     string        `json:"provider"`
	CredTier     string        `json:"credential_tier"`
	CredentialID string        `json:"credential_id"`
	Stream       bool          `json:"stream"`
	ModelRequest string        `json:"model_requested"`
	// ModelSent is the model forwarded when a model alias rewrote the
	// request (governance); empty when it is ModelRequest.
	ModelSent   string `json:"model_sent,omitempty"`
	ModelServed string `json:"model_served"`
	UpstreamID  string `json:"upstream_id"`
	// ServiceTier is the tier the provider says served the request
	// ("default", "standard", "priority", "flex"); empty when it says none.
	ServiceTier string `json:"service_tier,omitempty"`
	Status      int    `json:"status"`
	Outcome     string `json:"outcome"`
	Source      string `json:"usage_source"`
	Injected    bool   `json:"usage_injected"`
	// EventOverflow is set when an SSE event exceeded the framing bound and
	// was forwarded unmetered.
	EventOverflow bool   `json:"event_overflow,omitempty"`
	Usage         *Usage `json:"usage"`
	// CostMicroUSD is the price in millionths of a US dollar; nil when unpriced.
	CostMicroUSD *int64 `json:"cost_micro_usd"`
	// Unpriced is set when the model is not in the price table.
	Unpriced     bool   `json:"unpriced,omitempty"`
	PriceVersion string `json:"price_version"`
	BytesOut     int64  `json:"bytes_out"`
	// Reserved says a budget reservation is held under RequestID; storing
	// the record settles it (governance.Ledger).
	Reserved bool `json:"reserved,omitempty"`
	// ReservedMicroUSD is the cost ceiling reserved before forwarding.
	ReservedMicroUSD int64 `json:"reserved_micro_usd,omitempty"`
	// Governance is why governance refused the request (budget,
	// rate_limit, concurrency, model_policy, governance_unavailable);
	// empty when it did not.
	Governance string `json:"governance,omitempty"`
	// Allotted are the budget holds this request took from its replica's
	// allotments instead of a reservation of its own (governance): storing
	// the record settles them against the allotment.
	Allotted []Hold `json:"allotted,omitempty"`
	// Attempts are the upstream attempts made for this request, in order,
	// when there was more than one (failover). The one that answered has
	// no Error; when every attempt failed, the record's provider and
	// credential are those of the one whose answer the client got. Only
	// the answering attempt's usage is in Usage: a failed attempt the
	// provider may have billed says so (MayBill), its usage unknown.
	Attempts []Attempt `json:"attempts,omitempty"`
}

// Hold is one budget amount a request holds in a replica's allotment.
type Hold struct {
	// Allotment is the allotment's reservation id in the budget ledger.
	Allotment string `json:"allotment"`
	// Amount is what the request holds, in the budget's unit (micro-USD
	// or tokens): its ceiling.
	Amount int64 `json:"amount"`
}

// Attempt is one upstream attempt of a request.
type Attempt struct {
	CredentialID string `json:"credential_id"`
	Provider     string `json:"provider"`
	// Status is the provider's HTTP status, 0 when none came (connect,
	// TLS or header timeout).
	Status int `json:"status"`
	// Error says why the attempt failed, in a few words ("connect
	// refused", "header timeout", "429"); empty for the answering one.
	Error string `json:"error,omitempty"`
	// Duration is from the attempt's start to its headers or failure.
	Duration time.Duration `json:"duration_ns"`
	// MayBill is set on a failed attempt the provider may have billed: the
	// whole request was sent and then the answer never came or broke off.
	MayBill bool `json:"may_bill,omitempty"`
}

// Sink receives the one usage record of each request. The proxy calls Record
// once per request, after the response ended; Record must return quickly
// (a bounded enqueue) and never fails from the caller's point of view: an
// implementation that cannot keep a record counts and logs it.
//
// Record takes ownership of r: the caller must not modify it afterwards.
type Sink interface {
	Record(r *Record)
}

// CostUnknown says the request has tokens but no cost: its cost is unknown,
// not zero. Requests without tokens (errors, missing usage) are counted
// elsewhere.
func (r *Record) CostUnknown() bool {
	return r.Unpriced || (r.Usage != nil && r.CostMicroUSD == nil)
}

// Model is the model a request is reported and priced under: the served
// one, else the one sent (an alias's target), else the requested one
// (rejected or unreachable requests).
func (r *Record) Model() string {
	if r.ModelServed != "" {
		return r.ModelServed
	}
	if r.ModelSent != "" {
		return r.ModelSent
	}
	return r.ModelRequest
}
