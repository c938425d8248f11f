// Package registry is tollgate's vocabulary: the dialects agents speak, the
// providers that serve them and the harnesses that send them, loaded from
// harnesses.yaml into immutable values. It does no network I/O.
package registry

import (
	"errors"
	"sort"
	"strings"
)

// Sentinel errors returned by lookups.
var (
	// ErrUnknownHarness is returned when a harness name is not in the registry.
	ErrUnknownHarness = errors.New("unknown harness")
	// ErrUnknownProvider is returned when a provider name is not in the registry.
	ErrUnknownProvider = errors.New("unknown provider")
	// ErrUnknownDialect is returned when a dialect name is not in the registry.
	ErrUnknownDialect = errors.New("unknown dialect")
)

// Auth styles: where a provider expects its key.
const (
	AuthXAPIKey     = "x-api-key"
	AuthBearer      = "bearer"
	AuthXGoogAPIKey = "x-goog-api-key"
)

// Error shapes: the envelope tollgate's own errors take on a dialect's routes.
const (
	ShapeOpenAI    = "openai"
	ShapeAnthropic = "anthropic"
	ShapeGemini    = "gemini"
)

// How a dialect's client is told, mid-stream, that tollgate ended the
// stream before the provider's terminal event (harness-clients.md §7.3).
const (
	// StreamErrorEvent: "event: error" and the error_shape envelope (Anthropic).
	StreamErrorEvent = "event"
	// StreamErrorChunk: a data-only event holding the envelope (Chat, Gemini).
	StreamErrorChunk = "chunk"
	// StreamErrorResponseFailed: a Responses "response.failed" event.
	StreamErrorResponseFailed = "response.failed"
)

// Stream modes: how a request says it wants a stream.
const (
	// StreamBody reads the boolean "stream" field of the JSON body.
	StreamBody = "body"
	// StreamAlways marks a path that always streams (Gemini streamGenerateContent).
	StreamAlways = "always"
	// StreamNever marks a path that never streams.
	StreamNever = "never"
)

// Merge strategies for usage found in a stream.
const (
	// MergeReplace replaces every bucket with the event's usage object.
	MergeReplace = "replace"
	// MergeAssign assigns only the buckets present and non-null in the event.
	MergeAssign = "assign"
)

// Stream ends a usage rule can declare.
const (
	EndCompleted  = "completed"
	EndIncomplete = "incomplete"
	EndFailed     = "failed"
)

// Registry is one loaded, validated harnesses.yaml. It is immutable: a reload
// builds a new Registry, so a request keeps the one it started with.
type Registry struct {
	// Version is a short hash of the source bytes, for logs and usage records.
	Version   string
	Limits    Limits
	dialects  map[string]*Dialect
	providers map[string]*Provider
	harnesses map[string]*Harness
	// byRoute maps a route segment ("openai") to the dialects served under it.
	byRoute map[string][]*Dialect
	// harnessOrder and dialectOrder keep the file's order for listings.
	harnessOrder []string
	dialectOrder []string
}

// Limits bounds what one request may cost the proxy.
type Limits struct {
	// MaxBodyBytes caps a request body; larger bodies get 413. Default 32 MiB,
	// since agent contexts are large.
	MaxBodyBytes int `yaml:"max_body_bytes"`
	// MaxErrorBodyBytes caps how much of an upstream error body is read and
	// passed on. Default 1 MiB.
	MaxErrorBodyBytes int `yaml:"max_error_body_bytes"`
	// MaxResponseBodyBytes caps a non-streamed upstream body tollgate reads
	// in order to meter it. Default 64 MiB.
	MaxResponseBodyBytes int `yaml:"max_response_body_bytes"`
	// MaxEventBytes caps one SSE event kept for metering; larger events pass
	// through to the client unmetered and the record is flagged. Default 10 MiB.
	MaxEventBytes int `yaml:"max_event_bytes"`
}

// Dialect is one wire API: its route segment, its paths and where its usage lives.
type Dialect struct {
	Name string `yaml:"-"`
	// Route is the first path segment under which tollgate serves the dialect,
	// without slashes ("anthropic" serves /anthropic/v1/messages).
	Route string `yaml:"route"`
	// ErrorShape is the envelope of tollgate's own errors on this dialect.
	ErrorShape string `yaml:"error_shape"`
	// StreamError is the event that ends a stream tollgate had to cut: event,
	// chunk or response.failed. Default event for the anthropic error shape,
	// chunk otherwise.
	StreamError string `yaml:"stream_error"`
	// CutAfterStreamError also breaks the connection after that event, for
	// clients that take a clean end as a finished answer whatever came
	// before it.
	CutAfterStreamError bool `yaml:"cut_after_stream_error"`
	// Operation is the gen_ai.operation.name of metered calls ("chat").
	Operation string `yaml:"operation"`
	// Paths are the upstream paths forwarded, relative to the route.
	Paths []Path `yaml:"paths"`
	// Usage says where usage lives in bodies and streams.
	Usage Usage `yaml:"usage"`
	// Refusals override, for every client of the dialect, the built-in
	// answers to governance refusals of its error shape (refusal.go).
	Refusals Refusals `yaml:"refusals"`
}

// Path is one forwarded path pattern. Segments may be literal or a
// placeholder: "{model}" captures the model, "{id}" any one segment. A
// placeholder may carry a literal suffix ("{model}:generateContent").
type Path struct {
	Pattern string   `yaml:"path"`
	Methods []string `yaml:"methods"`
	// Metered paths produce token usage; others (count_tokens, models) only
	// a request record with usage_source none.
	Metered bool `yaml:"metered"`
	// Stream is how a request on this path asks for a stream: body, always
	// or never. Default body.
	Stream string `yaml:"stream"`
	// IncludeUsage marks an OpenAI-chat-style path where tollgate injects
	// stream_options.include_usage (wire-formats.md §7).
	IncludeUsage bool `yaml:"include_usage"`
	// Upgrade426 answers a WebSocket upgrade on this path with 426 at once,
	// before authentication, so Codex falls back to HTTP without a retry loop.
	Upgrade426 bool `yaml:"upgrade_426"`

	segments []segment
}

// Usage locates usage in a dialect's bodies and streams, as data.
type Usage struct {
	// Fields maps each bucket to a gjson path inside a usage object.
	Fields UsageFields `yaml:"fields"`
	// InputIncludesCache is true when the input count already contains cache
	// reads and writes (OpenAI, Gemini) and false when it does not (Anthropic).
	InputIncludesCache bool `yaml:"input_includes_cache"`
	// OutputIncludesReasoning is true when the output count already contains
	// reasoning tokens; false (Gemini) adds reasoning to output.
	OutputIncludesReasoning bool `yaml:"output_includes_reasoning"`
	// Body says where usage, model and id sit in a non-streamed response.
	Body Locator `yaml:"body"`
	// Stream lists the rules applied to each SSE data payload, in order.
	Stream StreamRules `yaml:"stream"`
}

// UsageFields are gjson paths relative to a usage object. Empty means the
// dialect does not report that bucket.
type UsageFields struct {
	Input        string `yaml:"input"`
	CacheRead    string `yaml:"cache_read"`
	CacheWrite   string `yaml:"cache_write"`
	CacheWrite5m string `yaml:"cache_write_5m"`
	CacheWrite1h string `yaml:"cache_write_1h"`
	InputOther   string `yaml:"input_other"`
	Output       string `yaml:"output"`
	Reasoning    string `yaml:"reasoning"`
	// WebSearch counts the server-side web searches the provider bills per
	// use. Unlike the token paths it is relative to the object holding the
	// usage object (the message, response or chunk), because OpenAI and
	// Gemini report searches beside usage, not in it; it may use gjson
	// queries to count items.
	WebSearch string `yaml:"web_search"`
}

// Locator names gjson paths, relative to a JSON document, of the usage
// object, the served model, the provider's response id and the service tier
// that served it (which selects the price row).
type Locator struct {
	Usage       string `yaml:"usage"`
	Model       string `yaml:"model"`
	ID          string `yaml:"id"`
	ServiceTier string `yaml:"service_tier"`
}

// StreamRules describe a dialect's SSE stream.
type StreamRules struct {
	// TypePath is the gjson path of the event type inside a data payload
	// ("type"); empty for dialects whose events carry no type.
	TypePath string `yaml:"type_path"`
	// Done is a literal data payload that ends the stream ("[DONE]").
	Done string `yaml:"done"`
	// Events are applied in order; every matching rule applies.
	Events []EventRule `yaml:"events"`
}

// EventRule applies to data payloads whose type equals Type (any type when
// empty) and, when Has is set, in which the gjson path Has exists and is not
// null.
type EventRule struct {
	Type string `yaml:"type"`
	Has  string `yaml:"has"`
	// Locator finds usage, model and id inside the payload.
	Locator `yaml:",inline"`
	// Merge is replace or assign. Default replace.
	Merge string `yaml:"merge"`
	// End marks the stream as ended: completed, incomplete or failed.
	End string `yaml:"end"`
	// Final marks the usage as final even if the end event never comes
	// (Anthropic message_delta).
	Final bool `yaml:"final"`
}

// Provider is an upstream that serves one or more dialects.
type Provider struct {
	Name string `yaml:"-"`
	// BaseURL is joined with the client's path after the route segment; it
	// excludes the /v1 the dialect paths carry.
	BaseURL string `yaml:"base_url"`
	// Dialects this provider speaks; a credential for it binds only to these.
	Dialects []string `yaml:"dialects"`
	// Auth is where the key goes: x-api-key, bearer or x-goog-api-key.
	Auth string `yaml:"auth"`
	// Headers are set upstream when the client did not send them
	// (anthropic-version: 2023-06-01).
	Headers map[string]string `yaml:"headers"`
	// ForwardHeaders are further client headers passed upstream to this
	// provider, beyond tollgate's allow-list (a compatible backend's own
	// routing header, say). Credential-carrying headers are refused.
	ForwardHeaders []string `yaml:"forward_headers"`
	// OTelName is gen_ai.provider.name; default the provider's name.
	OTelName string `yaml:"otel_name"`
	// IncludeUsage, when false, stops tollgate injecting
	// stream_options.include_usage for backends that reject it. Default true.
	IncludeUsage *bool `yaml:"include_usage"`
	// ModelMap renames the model a request sends when it goes to this
	// provider (failover across providers of one dialect: "claude-sonnet-5"
	// → "anthropic/claude-sonnet-5"). Models not in it pass unchanged. A key
	// ending in "*" maps every model it prefixes; the longest such key wins
	// and an exact key beats them all. A "*" ending the value stands for
	// the part the key's "*" matched. The map applies once: its results are
	// not looked up again.
	ModelMap map[string]string `yaml:"model_map"`
	// Usage overrides the dialect's usage semantics for this provider (an
	// Anthropic-compatible backend that counts cache inside input_tokens);
	// nil keeps the dialect's.
	Usage *UsageOverride `yaml:"usage"`
}

// UsageOverride is a provider's deviation from its dialect's usage rules.
// A nil field keeps the dialect's value.
type UsageOverride struct {
	// InputIncludesCache: see Usage.InputIncludesCache. Kimi's
	// Anthropic-compatible endpoint counts cache reads inside input_tokens
	// (maximhq/bifrost#5510), native Anthropic does not.
	InputIncludesCache *bool `yaml:"input_includes_cache"`
	// OutputIncludesReasoning: see Usage.OutputIncludesReasoning. Some
	// OpenAI-compatible translators of Gemini leave reasoning_tokens out
	// of completion_tokens (router-for-me/CLIProxyAPI#5733), where OpenAI
	// counts them in.
	OutputIncludesReasoning *bool `yaml:"output_includes_reasoning"`
}

// MapModel is the model to send to p for the client's model m.
func (p *Provider) MapModel(m string) string {
	if to, ok := p.ModelMap[m]; ok {
		return to
	}
	// Maps are a handful of entries, so a scan costs less than keeping a
	// compiled index in step with a map callers may build themselves.
	best, to := -1, ""
	for k, v := range p.ModelMap {
		pre, glob := strings.CutSuffix(k, "*")
		if !glob || len(pre) <= best || !strings.HasPrefix(m, pre) {
			continue
		}
		best, to = len(pre), v
		if head, ok := strings.CutSuffix(v, "*"); ok {
			to = head + m[len(pre):]
		}
	}
	if best < 0 {
		return m
	}
	return to
}

// UsageRules are d's usage rules as p reports them: the dialect's, with
// p's override applied. A nil p keeps the dialect's.
func (p *Provider) UsageRules(d *Dialect) Usage {
	u := d.Usage
	if p == nil || p.Usage == nil {
		return u
	}
	if o := p.Usage.InputIncludesCache; o != nil {
		u.InputIncludesCache = *o
	}
	if o := p.Usage.OutputIncludesReasoning; o != nil {
		u.OutputIncludesReasoning = *o
	}
	return u
}

// InjectsUsage reports whether tollgate may inject include_usage upstream.
func (p *Provider) InjectsUsage() bool { return p.IncludeUsage == nil || *p.IncludeUsage }

// Speaks reports whether p serves dialect d.
func (p *Provider) Speaks(d string) bool {
	for _, x := range p.Dialects {
		if x == d {
			return true
		}
	}
	return false
}

// Harness is an agent CLI: how it is pointed at tollgate and what it sends.
type Harness struct {
	Name string `yaml:"-"`
	// Dialects the harness speaks; the first is its default.
	Dialects []string `yaml:"dialects"`
	// Provider is the provider tag used when nothing narrower is configured.
	Provider string `yaml:"provider"`
	// BaseURLEnv is the variable the harness reads its base URL from; empty
	// when it reads a config file instead.
	BaseURLEnv string `yaml:"base_url_env"`
	// BaseURLSuffix is appended to tollgate's route URL ("/v1" for clients
	// whose base URL includes the version).
	BaseURLSuffix string `yaml:"base_url_suffix"`
	// KeyEnv is the variable that holds the scoped token.
	KeyEnv string `yaml:"key_env"`
	// KeyHeader is the header the harness sends the key in (documentation
	// and tests; tollgate accepts every carrier).
	KeyHeader string `yaml:"key_header"`
	// ModelEnv is the variable that picks the model, if any.
	ModelEnv string `yaml:"model_env"`
	// Env holds further variables to export, in order (to clear a competing
	// key variable, or to stop outside traffic).
	Env []EnvVar `yaml:"env"`
	// RequiresModel makes `tollgate env` insist on a model, for harnesses
	// whose config must name one.
	RequiresModel bool `yaml:"requires_model"`
	// UserAgentPrefix recognises the harness when the token is not tied to one.
	UserAgentPrefix string `yaml:"user_agent_prefix"`
	// Config is a config-file snippet for harnesses that need one.
	Config *ConfigSnippet `yaml:"config"`
	// Refusals are how this harness is told of a governance refusal, on
	// every dialect it speaks, over its dialect's (refusal.go): the shape
	// decides whether it backs off, stops, or loops (governance.md §6).
	Refusals Refusals `yaml:"refusals"`
}

// EnvVar is one exported variable; Value may use the template fields of
// ConfigSnippet.
type EnvVar struct {
	Name  string `yaml:"name" json:"name"`
	Value string `yaml:"value" json:"value"`
}

// ConfigSnippet is a template (template.go: a small part of text/template)
// rendered with .BaseURL, .Token, .KeyEnv, .Model and .Dialect.
type ConfigSnippet struct {
	// File is where the snippet goes, for the reader ("~/.codex/config.toml").
	File     string `yaml:"file"`
	Template string `yaml:"template"`
}

// SpeaksDialect reports whether h speaks dialect d.
func (h *Harness) SpeaksDialect(d string) bool {
	for _, x := range h.Dialects {
		if x == d {
			return true
		}
	}
	return false
}

// Dialect returns the named dialect.
func (r *Registry) Dialect(name string) (*Dialect, error) {
	if d, ok := r.dialects[name]; ok {
		return d, nil
	}
	return nil, ErrUnknownDialect
}

// Provider returns the named provider.
func (r *Registry) Provider(name string) (*Provider, error) {
	if p, ok := r.providers[name]; ok {
		return p, nil
	}
	return nil, ErrUnknownProvider
}

// Harness returns the named harness.
func (r *Registry) Harness(name string) (*Harness, error) {
	if h, ok := r.harnesses[name]; ok {
		return h, nil
	}
	return nil, ErrUnknownHarness
}

// Harnesses returns every harness in file order.
func (r *Registry) Harnesses() []*Harness {
	out := make([]*Harness, 0, len(r.harnessOrder))
	for _, n := range r.harnessOrder {
		out = append(out, r.harnesses[n])
	}
	return out
}

// Dialects returns every dialect in file order.
func (r *Registry) Dialects() []*Dialect {
	out := make([]*Dialect, 0, len(r.dialectOrder))
	for _, n := range r.dialectOrder {
		out = append(out, r.dialects[n])
	}
	return out
}

// Providers returns every provider sorted by name.
func (r *Registry) Providers() []*Provider {
	out := make([]*Provider, 0, len(r.providers))
	for _, p := range r.providers {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// HarnessByUserAgent returns the harness whose UserAgentPrefix starts ua, or nil.
func (r *Registry) HarnessByUserAgent(ua string) *Harness {
	for _, n := range r.harnessOrder {
		h := r.harnesses[n]
		if h.UserAgentPrefix != "" && strings.HasPrefix(ua, h.UserAgentPrefix) {
			return h
		}
	}
	return nil
}

// Match is the result of routing a request path.
type Match struct {
	Dialect *Dialect
	Path    *Path
	// Rest is the path after the route segment, starting with "/"; it is what
	// goes upstream after the provider's base URL.
	Rest string
	// Model is the model named in the path, for dialects that put it there.
	Model string
}

// Route finds the dialect and path pattern serving method and path (the
// request path as received, query excluded). ok is false when nothing matches.
func (r *Registry) Route(method, path string) (m Match, ok bool) {
	if len(path) < 2 || path[0] != '/' {
		return m, false
	}
	seg, rest, _ := strings.Cut(path[1:], "/")
	ds := r.byRoute[seg]
	if len(ds) == 0 {
		return m, false
	}
	rest = "/" + rest
	for _, d := range ds {
		for i := range d.Paths {
			p := &d.Paths[i]
			model, hit := p.match(rest)
			if !hit {
				continue
			}
			if !p.allows(method) {
				continue
			}
			return Match{Dialect: d, Path: p, Rest: rest, Model: model}, true
		}
	}
	return m, false
}

// RouteKnown reports whether path falls under a dialect's route segment at
// all, so a caller can tell "unknown route" from "wrong method".
func (r *Registry) RouteKnown(path string) (*Dialect, bool) {
	if len(path) < 2 || path[0] != '/' {
		return nil, false
	}
	seg, _, _ := strings.Cut(path[1:], "/")
	ds := r.byRoute[seg]
	if len(ds) == 0 {
		return nil, false
	}
	return ds[0], true
}

type segment struct {
	literal string
	param   string // "model" or another placeholder name
	suffix  string // literal after the placeholder, e.g. ":generateContent"
}

func parsePattern(p string) []segment {
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	out := make([]segment, 0, len(parts))
	for _, s := range parts {
		if strings.HasPrefix(s, "{") {
			if i := strings.IndexByte(s, '}'); i > 0 {
				out = append(out, segment{param: s[1:i], suffix: s[i+1:]})
				continue
			}
		}
		out = append(out, segment{literal: s})
	}
	return out
}

func (p *Path) match(rest string) (model string, ok bool) {
	s := rest[1:]
	for i, seg := range p.segments {
		var part string
		if j := strings.IndexByte(s, '/'); j >= 0 {
			part, s = s[:j], s[j+1:]
		} else {
			part, s = s, ""
			if i != len(p.segments)-1 {
				return "", false
			}
		}
		if seg.param == "" {
			if part != seg.literal {
				return "", false
			}
			continue
		}
		if !strings.HasSuffix(part, seg.suffix) || len(part) == len(seg.suffix) {
			return "", false
		}
		v := part[:len(part)-len(seg.suffix)]
		// A placeholder never spans a colon-suffixed method it was not
		// declared with: "{model}" must not swallow "gemini:generateContent".
		if seg.suffix == "" && strings.IndexByte(v, ':') >= 0 {
			return "", false
		}
		if seg.param == "model" {
			model = v
		}
	}
	if s != "" {
		return "", false
	}
	return model, true
}

func (p *Path) allows(method string) bool {
	for _, m := range p.Methods {
		if m == method {
			return true
		}
	}
	return false
}

// Streams reports whether a request on this path streams, given the body's
// "stream" field.
func (p *Path) Streams(bodyStream bool) bool {
	switch p.Stream {
	case StreamAlways:
		return true
	case StreamNever:
		return false
	}
	return bodyStream
}
