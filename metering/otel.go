package metering

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/tollgate/tollgate/registry"
)

// Instrument names: the OTel GenAI client metrics (wire-formats.md §10) and
// tollgate's own. Prometheus exposes them with dots turned into underscores
// and unit suffixes added; see docs/grafana-finance.json.
const (
	MetricTokenUsage        = "gen_ai.client.token.usage"                   // histogram, {token}
	MetricOperationDuration = "gen_ai.client.operation.duration"            // histogram, s
	MetricTimeToFirstChunk  = "gen_ai.client.operation.time_to_first_chunk" // histogram, s; streams only
	// MetricCost counts US dollars as a float. Dollars rather than integer
	// micro-USD because every Prometheus sample is a float64 anyway and
	// dashboards then need no scaling; the exact amount is in the records.
	MetricCost     = "tollgate.cost"           // counter, {USD}
	MetricRequests = "tollgate.requests"       // counter, {request}
	MetricOverhead = "tollgate.proxy.overhead" // histogram, s: time in tollgate, upstream wait excluded
	// MetricLabelsFolded counts requests whose labels were reported as
	// "_OTHER" because a cardinality budget was spent, by tollgate.dimension.
	MetricLabelsFolded = "tollgate.metrics.labels.folded" // counter, {request}
	// MetricAuthRefusals counts refused authentications, which get no usage
	// record, by tollgate.refusal.reason (Prometheus:
	// tollgate_auth_refusals_total).
	MetricAuthRefusals = "tollgate.auth.refusals" // counter, {request}
	// MetricGovernanceRefusals counts requests governance refused (the
	// record's Governance), by AttrGovernanceKind (Prometheus:
	// tollgate_governance_refusals_total{kind}).
	MetricGovernanceRefusals = "tollgate.governance.refusals" // counter, {request}
	// MetricServerToolUses counts provider-side tool uses billed per use
	// (the Usage buckets with a Tool), by AttrTool (Prometheus:
	// tollgate_server_tool_uses_total{tool}). They are not tokens, so they
	// stay out of MetricTokenUsage.
	MetricServerToolUses = "tollgate.server_tool.uses" // counter, {use}
	// Writer health (RegisterWriter).
	MetricMeteringRecords = "tollgate.metering.records"       // observable counter, {record}, by tollgate.disposition
	MetricStoreRetries    = "tollgate.metering.store.retries" // observable counter, {error}
	MetricSpoolUsage      = "tollgate.metering.spool.usage"   // observable gauge, By
	MetricQueueSize       = "tollgate.metering.queue.size"    // observable gauge, {record}
)

// Metric attribute keys. The gen_ai.* ones are the semantic conventions;
// tollgate.* ones are bounded enums or ids subject to LabelConfig.
const (
	AttrOperation = "gen_ai.operation.name"
	AttrProvider  = "gen_ai.provider.name"
	AttrReqModel  = "gen_ai.request.model"
	AttrRespModel = "gen_ai.response.model"
	AttrTokenType = "gen_ai.token.type"
	AttrErrorType = "error.type"

	AttrHarness        = "tollgate.harness"
	AttrProject        = "tollgate.project"
	AttrCredentialTier = "tollgate.credential_tier"
	AttrUsageSource    = "tollgate.usage_source"
	AttrEndReason      = "tollgate.end_reason"
	// AttrCostStatus is priced, unpriced (tokens but no price) or none (no
	// tokens), on the request counter, so unknown costs stay visible.
	AttrCostStatus = "tollgate.cost_status"
	// AttrUser and AttrWorkspace are ids: unbounded, never on by default.
	AttrUser      = "tollgate.user"
	AttrWorkspace = "tollgate.workspace"
	// AttrDisposition says what became of records in MetricMeteringRecords.
	AttrDisposition = "tollgate.disposition"
	// AttrDimension says which budget MetricLabelsFolded's requests hit:
	// FoldModel (their project's own) or FoldProject (the global one).
	AttrDimension = "tollgate.dimension"
)

// Values of AttrDimension.
const (
	// FoldModel: the project had spent its own budget, so its models, user
	// and workspace were folded; the project itself kept its name.
	FoldModel = "model"
	// FoldProject: the global budget was spent, so the project was folded too.
	FoldProject = "project"
)

// Token types on MetricTokenUsage. input and output are the conventions'
// (input includes cache reads and writes, output includes reasoning); the
// others are custom values that overlap them, so never sum across types.
const (
	TokenInput              = "input"
	TokenOutput             = "output"
	TokenCachedInput        = "cached_input"
	TokenCacheCreationInput = "cache_creation_input"
	TokenReasoning          = "reasoning"
)

// otelOther replaces attribute values past the cardinality bound, and is
// error.type's fallback (per the conventions).
const otelOther = "_OTHER"

// DefaultMaxAttributeSets bounds the distinct identities (operation,
// provider, models and the enabled tollgate.* labels) Instruments creates
// series for; the bounded enums multiply it by a small constant.
const DefaultMaxAttributeSets = 2000

// DefaultMaxAttributeSetsPerProject bounds the identities one project may
// create, so a single token sending thousands of model names folds only its
// own series into "_OTHER" and never spends every other tenant's budget.
const DefaultMaxAttributeSetsPerProject = 200

// Bucket boundaries from wire-formats.md §10.
var (
	tokenBuckets    = []float64{1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864}
	durationBuckets = []float64{0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92}
	// overheadBuckets cover tollgate's own time: sub-millisecond when
	// healthy, up to a second when something is wrong.
	overheadBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}
)

// DefaultLabels are the optional attributes used when LabelConfig.Labels is nil.
var DefaultLabels = []string{AttrHarness, AttrProject}

// optionalLabels are the attributes LabelConfig.Labels may name.
var optionalLabels = map[string]bool{
	AttrHarness: true, AttrProject: true, AttrCredentialTier: true, AttrUsageSource: true,
	AttrEndReason: true, AttrUser: true, AttrWorkspace: true,
}

// LabelConfig chooses the optional metric attributes.
type LabelConfig struct {
	// Labels lists the optional tollgate.* attributes put on every
	// instrument: AttrHarness, AttrProject, AttrCredentialTier,
	// AttrUsageSource, AttrEndReason, and — only when named here — AttrUser
	// and AttrWorkspace, which are unbounded ids. Nil means DefaultLabels;
	// an empty non-nil slice means none.
	Labels []string
	// MaxAttributeSets bounds the distinct combinations of operation,
	// provider, models and enabled tollgate.* labels. Past it,
	// new combinations report project, models, user and workspace as
	// "_OTHER" (and a warning is logged once), so a flood of model names
	// cannot blow up the metrics backend. Default DefaultMaxAttributeSets.
	MaxAttributeSets int
	// MaxAttributeSetsPerProject bounds the combinations one project (the
	// record's project, whether or not it is a label) may add. Past it, that
	// project's new combinations report models, user and workspace as
	// "_OTHER"; other projects are unaffected. Default
	// DefaultMaxAttributeSetsPerProject, at most MaxAttributeSets.
	MaxAttributeSetsPerProject int
	// Logger receives the cardinality warning. Default slog.Default().
	Logger *slog.Logger
	// Registry maps a record's provider to gen_ai.provider.name through its
	// otel_name (gemini is gcp.gemini), read per request so a reload
	// applies. Nil reports the provider's registry name.
	Registry *registry.Holder
}

// Validate reports every unknown label and bad bound, each naming its item.
func (c LabelConfig) Validate() error {
	var errs []error
	for _, l := range c.Labels {
		if !optionalLabels[l] {
			errs = append(errs, fmt.Errorf("metering labels: unknown label %q", l))
		}
	}
	if c.MaxAttributeSets < 0 {
		errs = append(errs, fmt.Errorf("metering labels: MaxAttributeSets is negative (%d)", c.MaxAttributeSets))
	}
	if c.MaxAttributeSetsPerProject < 0 {
		errs = append(errs, fmt.Errorf("metering labels: MaxAttributeSetsPerProject is negative (%d)", c.MaxAttributeSetsPerProject))
	}
	return errors.Join(errs...)
}

// Instruments holds the OTel instruments, created once, and a cache of
// attribute sets so a steady-state Observe allocates nothing for them.
type Instruments struct {
	meter    metric.Meter
	log      *slog.Logger
	reg      *registry.Holder
	labels   map[string]bool
	maxSets  int64
	maxPer   int64
	tokens   metric.Int64Histogram
	duration metric.Float64Histogram
	ttfc     metric.Float64Histogram
	overhead metric.Float64Histogram
	cost     metric.Float64Counter
	requests metric.Int64Counter
	folded   metric.Int64Counter
	refused  metric.Int64Counter
	governed metric.Int64Counter
	toolUses metric.Int64Counter
	// toolOpts are the attribute options of toolUses, by bucket; nil for
	// the token buckets.
	toolOpts [NumBuckets][]metric.AddOption
	// governedOpts are the attribute options of governed, by kind.
	governedOpts map[string][]metric.AddOption
	// refusedOpts are the attribute options of refused, by reason.
	refusedOpts map[string][]metric.AddOption
	// foldOpts are the attribute options of folded, by dimension.
	foldModel, foldProject []metric.AddOption

	sets     sync.Map // attrKey → *attrEntry
	ids      sync.Map // attrID → struct{}
	nids     atomic.Int64
	warnOnce sync.Once
	tenants  sync.Map // project → *tenantBudget
}

// tenantBudget counts the identities one project has added.
type tenantBudget struct {
	n        atomic.Int64
	warnOnce sync.Once
}

// NewInstruments creates the instruments on meter. Call it once per meter:
// the SDK treats a second registration as a duplicate.
func NewInstruments(meter metric.Meter, cfg LabelConfig) (*Instruments, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	labels := cfg.Labels
	if labels == nil {
		labels = DefaultLabels
	}
	in := &Instruments{meter: meter, log: cfg.Logger, reg: cfg.Registry, labels: map[string]bool{}, maxSets: int64(cfg.MaxAttributeSets)}
	if in.log == nil {
		in.log = slog.Default()
	}
	if in.maxSets == 0 {
		in.maxSets = DefaultMaxAttributeSets
	}
	in.maxPer = int64(cfg.MaxAttributeSetsPerProject)
	if in.maxPer == 0 {
		in.maxPer = DefaultMaxAttributeSetsPerProject
	}
	in.maxPer = min(in.maxPer, in.maxSets)
	for _, l := range labels {
		in.labels[l] = true
	}
	var errs [10]error
	in.tokens, errs[0] = meter.Int64Histogram(MetricTokenUsage,
		metric.WithUnit("{token}"),
		metric.WithDescription("Number of input and output tokens used, per request and token type."),
		metric.WithExplicitBucketBoundaries(tokenBuckets...))
	in.duration, errs[1] = meter.Float64Histogram(MetricOperationDuration,
		metric.WithUnit("s"),
		metric.WithDescription("Duration of the upstream GenAI operation, including the whole stream."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	in.ttfc, errs[2] = meter.Float64Histogram(MetricTimeToFirstChunk,
		metric.WithUnit("s"),
		metric.WithDescription("Time to the first chunk of a streamed response."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	in.overhead, errs[3] = meter.Float64Histogram(MetricOverhead,
		metric.WithUnit("s"),
		metric.WithDescription("Time spent inside tollgate per request, excluding the wait for the provider."),
		metric.WithExplicitBucketBoundaries(overheadBuckets...))
	in.cost, errs[4] = meter.Float64Counter(MetricCost,
		metric.WithUnit("{USD}"),
		metric.WithDescription("Cost of priced requests in US dollars; unpriced requests add nothing and are counted in tollgate.requests with tollgate.cost_status=unpriced."))
	in.requests, errs[5] = meter.Int64Counter(MetricRequests,
		metric.WithUnit("{request}"),
		metric.WithDescription("Requests by end reason, usage source and cost status."))
	in.folded, errs[6] = meter.Int64Counter(MetricLabelsFolded,
		metric.WithUnit("{request}"),
		metric.WithDescription("Requests whose metric labels were reported as _OTHER because a cardinality budget was spent: model (the project's own) or project (the global one)."))
	in.refused, errs[7] = meter.Int64Counter(MetricAuthRefusals,
		metric.WithUnit("{request}"),
		metric.WithDescription("Refused authentications (no, unknown, expired or revoked token, wrong harness, throttled); they have no usage record."))
	in.governed, errs[8] = meter.Int64Counter(MetricGovernanceRefusals,
		metric.WithUnit("{request}"),
		metric.WithDescription("Requests refused by governance before any upstream call, by kind: rate_limit, concurrency, budget, model_policy, governance_unavailable."))
	in.toolUses, errs[9] = meter.Int64Counter(MetricServerToolUses,
		metric.WithUnit("{use}"),
		metric.WithDescription("Server-side tool uses the provider bills per use (web_search: Anthropic web searches, OpenAI web_search calls, Gemini grounding queries), by tool."))
	if err := errors.Join(errs[:]...); err != nil {
		return nil, fmt.Errorf("metering instruments: %w", err)
	}
	for i, b := range &Buckets {
		if b.Tool != "" {
			in.toolOpts[i] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String(AttrTool, b.Tool)))}
			in.toolUses.Add(context.Background(), 0, in.toolOpts[i]...)
		}
	}
	in.refusedOpts = map[string][]metric.AddOption{}
	for _, r := range append(slices.Clip(AuthRefusalReasons), refusalOther) {
		in.refusedOpts[r] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String(AttrRefusalReason, r)))}
	}
	in.governedOpts = map[string][]metric.AddOption{}
	for _, k := range append(slices.Clip(GovernanceRefusalKinds), refusalOther) {
		in.governedOpts[k] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String(AttrGovernanceKind, k)))}
		// Zeros, so a rate over any kind has a series before its first
		// refusal.
		in.governed.Add(context.Background(), 0, in.governedOpts[k]...)
	}
	in.foldModel = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String(AttrDimension, FoldModel)))}
	in.foldProject = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String(AttrDimension, FoldProject)))}
	// Zeros so both series exist before the first fold and alerts on their
	// rate have something to read.
	in.folded.Add(context.Background(), 0, in.foldModel...)
	in.folded.Add(context.Background(), 0, in.foldProject...)
	return in, nil
}

// AttrRefusalReason is the attribute of MetricAuthRefusals.
const AttrRefusalReason = "tollgate.refusal.reason"

// AuthRefusalReasons are the values of AttrRefusalReason; any other reason
// is counted as refusalOther, so the series stay bounded.
var AuthRefusalReasons = []string{"missing", "invalid", "expired", "revoked", "wrong_harness", "throttled"}

const refusalOther = "other"

// AttrTool is the attribute of MetricServerToolUses: a Bucket's Tool.
const AttrTool = "tool"

// AttrGovernanceKind is the attribute of MetricGovernanceRefusals.
const AttrGovernanceKind = "kind"

// GovernanceRefusalKinds are the values of AttrGovernanceKind: governance's
// RefusalKinds (metering cannot import governance; a test in cmd keeps the
// two lists equal). Any other value counts as "other", so the series stay
// bounded.
var GovernanceRefusalKinds = []string{"rate_limit", "concurrency", "budget", "model_policy", "governance_unavailable"}

// Refused counts one refused authentication.
func (in *Instruments) Refused(reason string) {
	opts, ok := in.refusedOpts[reason]
	if !ok {
		opts = in.refusedOpts[refusalOther]
	}
	in.refused.Add(context.Background(), 1, opts...)
}

// attrKey is everything an attribute set depends on; labels not enabled are
// left empty so they do not multiply the cache. The bounded enums sit
// beside the identity, which is what MaxAttributeSets counts.
type attrKey struct {
	attrID
	source, end, errType, cost string
}

// attrID is the potentially unbounded part of an attribute set.
type attrID struct {
	op, provider, reqModel, respModel, harness, project, tier, user, workspace string
}

// attrEntry holds the precomputed options of one key.
type attrEntry struct {
	base     []metric.RecordOption
	duration []metric.RecordOption
	tokens   [][]metric.RecordOption // per otelTokenTypes
	cost     []metric.AddOption
	requests []metric.AddOption
}

// otelTokenTypes are the token types Observe records: input (the Input
// buckets), then each bucket's TokenType once, in Buckets order;
// otelBucketType[i] is the index of Buckets[i]'s type, -1 for none.
var otelTokenTypes, otelBucketType = tokenTypesOf(&Buckets)

func tokenTypesOf(bs *[NumBuckets]Bucket) ([]string, [NumBuckets]int) {
	types := []string{TokenInput}
	var idx [NumBuckets]int
	for i, b := range bs {
		idx[i] = -1
		if b.TokenType == "" {
			continue
		}
		j := slices.Index(types, b.TokenType)
		if j < 0 {
			j = len(types)
			types = append(types, b.TokenType)
		}
		idx[i] = j
	}
	return types, idx
}

// Observe records one request's metrics; the proxy calls it once per
// request with the time spent inside tollgate (upstream wait excluded).
// Rejected requests never reached a provider: they count in
// tollgate.requests and the overhead only. Token usage is recorded when
// known (any usage_source), cost when priced.
func (in *Instruments) Observe(r *Record, overhead time.Duration) {
	if r == nil {
		return
	}
	ctx := context.Background()
	e := in.entry(in.keyOf(r), labelValue(r.Project))
	in.requests.Add(ctx, 1, e.requests...)
	if r.Governance != "" {
		opts, ok := in.governedOpts[r.Governance]
		if !ok {
			opts = in.governedOpts[refusalOther]
		}
		in.governed.Add(ctx, 1, opts...)
	}
	if overhead > 0 {
		in.overhead.Record(ctx, overhead.Seconds(), e.base...)
	}
	if r.Outcome == OutcomeRejected {
		return
	}
	in.duration.Record(ctx, r.Duration.Seconds(), e.duration...)
	if r.Stream && r.TTFB > 0 {
		in.ttfc.Record(ctx, r.TTFB.Seconds(), e.base...)
	}
	if u := r.Usage; u != nil {
		var n [NumBuckets + 1]int64 // per otelTokenTypes
		for i, b := range &Buckets {
			v := *b.Of(u)
			if b.Input {
				n[0] += v
			}
			if j := otelBucketType[i]; j >= 0 {
				n[j] += v
			}
			if in.toolOpts[i] != nil && v > 0 {
				in.toolUses.Add(ctx, v, in.toolOpts[i]...)
			}
		}
		for j, t := range otelTokenTypes {
			// The custom types only when present: a zero would add a
			// sample to every request and make their _count meaningless.
			if n[j] > 0 || t == TokenInput || t == TokenOutput {
				in.tokens.Record(ctx, n[j], e.tokens[j]...)
			}
		}
	}
	if r.CostMicroUSD != nil && *r.CostMicroUSD > 0 {
		in.cost.Add(ctx, float64(*r.CostMicroUSD)/1e6, e.cost...)
	}
}

// keyOf sanitises every value before the cardinality bookkeeping, so the
// cache key and the exported attributes agree: model names come from
// clients, and one value the exporter rejects fails every scrape (and every
// OTLP batch) for as long as the series lives.
func (in *Instruments) keyOf(r *Record) attrKey {
	k := attrKey{
		attrID: attrID{op: labelValue(r.Operation), provider: labelValue(in.providerName(r.Provider)),
			reqModel: labelValue(r.ModelRequest), respModel: labelValue(r.ModelServed)},
		end: labelValue(r.Outcome), source: labelValue(r.Source), errType: otelErrorType(r), cost: otelCostStatus(r),
	}
	if in.labels[AttrHarness] {
		k.harness = labelValue(r.Harness)
	}
	if in.labels[AttrProject] {
		k.project = labelValue(r.Project)
	}
	if in.labels[AttrCredentialTier] {
		k.tier = labelValue(r.CredTier)
	}
	if in.labels[AttrUser] {
		k.user = labelValue(r.User)
	}
	if in.labels[AttrWorkspace] {
		k.workspace = labelValue(r.Workspace)
	}
	return k
}

func (in *Instruments) providerName(p string) string {
	if in.reg == nil {
		return p
	}
	return in.reg.Current().OTelName(p)
}

// maxLabelBytes bounds one attribute value, "…" included.
const maxLabelBytes = 128

// labelValue makes v safe as a metric attribute: valid UTF-8 (invalid runs
// become U+FFFD, as the store keeps them), no control characters, at most
// maxLabelBytes cut at a rune boundary. A clean value is returned as is, so
// the steady state allocates nothing.
func labelValue(v string) string {
	if labelClean(v) {
		return v
	}
	v = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return utf8.RuneError
		}
		return r
	}, strings.ToValidUTF8(v, "\uFFFD"))
	if len(v) > maxLabelBytes {
		const ellipsis = "…"
		cut := maxLabelBytes - len(ellipsis)
		for cut > 0 && !utf8.RuneStart(v[cut]) {
			cut--
		}
		v = v[:cut] + ellipsis
	}
	return v
}

func labelClean(v string) bool {
	if len(v) > maxLabelBytes {
		return false
	}
	for i, r := range v {
		if r < utf8.RuneSelf {
			if r < 0x20 || r == 0x7f {
				return false
			}
			continue
		}
		if r == utf8.RuneError {
			if _, w := utf8.DecodeRuneInString(v[i:]); w == 1 {
				return false
			}
		}
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// entry returns the cached options for k, creating them under the
// cardinality budgets: first the tenant's own (tenant is the record's
// project, labelled or not), then the global one.
func (in *Instruments) entry(k attrKey, tenant string) *attrEntry {
	if e, ok := in.sets.Load(k); ok {
		return e.(*attrEntry)
	}
	if _, known := in.ids.Load(k.attrID); !known {
		var budget *tenantBudget
		if b, ok := in.tenants.Load(tenant); ok {
			budget = b.(*tenantBudget)
		}
		fold := ""
		if budget != nil && budget.n.Load() >= in.maxPer {
			budget.warnOnce.Do(func() {
				in.log.Warn("metering: a project reached its metric attribute budget; its new models and ids are reported as _OTHER", "project", tenant, "max", in.maxPer)
			})
			foldIDs(&k, false)
			fold = FoldModel
			budget = nil // identities of the folded form are bounded by the enums
			_, known = in.ids.Load(k.attrID)
		}
		if !known && in.nids.Load() >= in.maxSets {
			in.warnOnce.Do(func() {
				in.log.Warn("metering: metric attribute sets reached the bound; new projects, models and ids are reported as _OTHER", "max", in.maxSets)
			})
			foldIDs(&k, true)
			fold = FoldProject
			budget = nil
		}
		switch fold {
		case FoldModel:
			in.folded.Add(context.Background(), 1, in.foldModel...)
		case FoldProject:
			in.folded.Add(context.Background(), 1, in.foldProject...)
		}
		if fold != "" {
			if e, ok := in.sets.Load(k); ok {
				return e.(*attrEntry)
			}
		} else if budget == nil {
			b, _ := in.tenants.LoadOrStore(tenant, &tenantBudget{})
			budget = b.(*tenantBudget)
		}
		// Collapsed identities are stored too: they are bounded by the
		// enums left in them, so the map stays bounded.
		if _, loaded := in.ids.LoadOrStore(k.attrID, struct{}{}); !loaded {
			in.nids.Add(1)
			if budget != nil {
				budget.n.Add(1)
			}
		}
	}
	e, _ := in.sets.LoadOrStore(k, in.newEntry(k))
	return e.(*attrEntry)
}

// foldIDs reports k's client- and id-valued labels as _OTHER, and its
// project too when project is set.
func foldIDs(k *attrKey, project bool) {
	fs := []*string{&k.reqModel, &k.respModel, &k.user, &k.workspace}
	if project {
		fs = append(fs, &k.project)
	}
	for _, f := range fs {
		if *f != "" {
			*f = otelOther
		}
	}
}

func (in *Instruments) newEntry(k attrKey) *attrEntry {
	base := []attribute.KeyValue{
		attribute.String(AttrOperation, k.op),
		attribute.String(AttrProvider, k.provider),
	}
	if k.reqModel != "" {
		base = append(base, attribute.String(AttrReqModel, k.reqModel))
	}
	if k.respModel != "" {
		base = append(base, attribute.String(AttrRespModel, k.respModel))
	}
	for _, l := range []struct {
		on   bool
		name string
		v    string
	}{
		{in.labels[AttrHarness], AttrHarness, k.harness},
		{in.labels[AttrProject], AttrProject, k.project},
		{in.labels[AttrCredentialTier], AttrCredentialTier, k.tier},
		{in.labels[AttrUsageSource], AttrUsageSource, k.source},
		{in.labels[AttrEndReason], AttrEndReason, k.end},
		{in.labels[AttrUser], AttrUser, k.user},
		{in.labels[AttrWorkspace], AttrWorkspace, k.workspace},
	} {
		if l.on {
			base = append(base, attribute.String(l.name, l.v))
		}
	}
	with := func(kv ...attribute.KeyValue) metric.MeasurementOption {
		s := attribute.NewSet(append(append([]attribute.KeyValue(nil), base...), kv...)...)
		return metric.WithAttributeSet(s)
	}
	e := &attrEntry{}
	b := with()
	e.base = []metric.RecordOption{b}
	e.cost = []metric.AddOption{b}
	e.duration = e.base
	if k.errType != "" {
		e.duration = []metric.RecordOption{with(attribute.String(AttrErrorType, k.errType))}
	}
	e.tokens = make([][]metric.RecordOption, len(otelTokenTypes))
	for i, t := range otelTokenTypes {
		e.tokens[i] = []metric.RecordOption{with(attribute.String(AttrTokenType, t))}
	}
	e.requests = []metric.AddOption{with(
		attribute.String(AttrEndReason, k.end),
		attribute.String(AttrUsageSource, k.source),
		attribute.String(AttrCostStatus, k.cost),
	)}
	return e
}

// otelErrorType is error.type for a failed call, "" for a successful one: the
// provider's HTTP status when it answered with an error, else the outcome.
func otelErrorType(r *Record) string {
	switch r.Outcome {
	case OutcomeOK, OutcomeIncomplete, OutcomeRejected:
		return ""
	case OutcomeUpstreamError:
		if r.Status >= 400 && r.Status <= 599 {
			return strconv.Itoa(r.Status)
		}
		return OutcomeUpstreamError
	case OutcomeTruncated, OutcomeClientGone, OutcomeUpstreamIdle, OutcomeUnreachable:
		return r.Outcome
	}
	return otelOther
}

func otelCostStatus(r *Record) string {
	switch {
	case r.CostMicroUSD != nil:
		return "priced"
	case r.CostUnknown():
		return "unpriced"
	}
	return "none"
}

// Dispositions on MetricMeteringRecords.
var writerDispositions = []struct {
	name string
	get  func(*WriterStats) uint64
}{
	{"accepted", func(s *WriterStats) uint64 { return s.Accepted }},
	{"spilled", func(s *WriterStats) uint64 { return s.Spilled }},
	{"unspooled", func(s *WriterStats) uint64 { return s.Unspooled }},
	{"dropped", func(s *WriterStats) uint64 { return s.Dropped }},
	{"inserted", func(s *WriterStats) uint64 { return s.Inserted }},
	{"duplicate", func(s *WriterStats) uint64 { return s.Duplicates }},
	{"replayed", func(s *WriterStats) uint64 { return s.Replayed }},
	{"torn", func(s *WriterStats) uint64 { return s.TornLines }},
	{"bad", func(s *WriterStats) uint64 { return s.BadLines }},
	{"quarantined", func(s *WriterStats) uint64 { return s.Quarantined }},
}

// RegisterWriter exports w's counters as observable instruments on the
// Instruments' meter, so a dropped or spilled record shows on dashboards.
// The returned function unregisters the callback; call it before w.Close.
func (in *Instruments) RegisterWriter(w StatsReporter) (unregister func() error, err error) {
	var errs [4]error
	var records, retries metric.Int64ObservableCounter
	var spool, queue metric.Int64ObservableGauge
	records, errs[0] = in.meter.Int64ObservableCounter(MetricMeteringRecords,
		metric.WithUnit("{record}"),
		metric.WithDescription("Usage records by disposition in the durable writer; dropped must stay 0."))
	retries, errs[1] = in.meter.Int64ObservableCounter(MetricStoreRetries,
		metric.WithUnit("{error}"),
		metric.WithDescription("Failed usage-store transactions, retried with backoff."))
	spool, errs[2] = in.meter.Int64ObservableGauge(MetricSpoolUsage,
		metric.WithUnit("By"),
		metric.WithDescription("Bytes of spooled usage records not yet in the store (the backlog, not the segment fill)."))
	queue, errs[3] = in.meter.Int64ObservableGauge(MetricQueueSize,
		metric.WithUnit("{record}"),
		metric.WithDescription("Usage records waiting in memory for the store."))
	if err := errors.Join(errs[:]...); err != nil {
		return nil, fmt.Errorf("metering writer instruments: %w", err)
	}
	opts := make([]metric.ObserveOption, len(writerDispositions))
	for i, d := range writerDispositions {
		opts[i] = metric.WithAttributeSet(attribute.NewSet(attribute.String(AttrDisposition, d.name)))
	}
	reg, err := in.meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		st := w.Stats()
		for i, d := range writerDispositions {
			o.ObserveInt64(records, int64(d.get(&st)), opts[i])
		}
		o.ObserveInt64(retries, int64(st.Retries))
		o.ObserveInt64(spool, st.SpoolBytes)
		o.ObserveInt64(queue, int64(st.Queued))
		return nil
	}, records, retries, spool, queue)
	if err != nil {
		return nil, fmt.Errorf("metering writer instruments: %w", err)
	}
	return reg.Unregister, nil
}
