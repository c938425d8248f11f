package metering

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/registry"
)

// otelPoint is one collected data point, flattened for assertions.
type otelPoint struct {
	name, unit string
	attrs      map[string]string
	value      float64 // sum for histograms and counters, value for gauges
	count      uint64  // histograms only
	bounds     []float64
}

func mustInstruments(tb testing.TB, cfg LabelConfig) (*Instruments, *sdkmetric.ManualReader) {
	tb.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	tb.Cleanup(func() { mp.Shutdown(context.Background()) })
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	in, err := NewInstruments(mp.Meter("github.com/tollgate/tollgate/metering"), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return in, reader
}

func collectPoints(tb testing.TB, reader *sdkmetric.ManualReader) []otelPoint {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		tb.Fatal(err)
	}
	var out []otelPoint
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Histogram[int64]:
				for _, p := range d.DataPoints {
					out = append(out, otelPoint{m.Name, m.Unit, attrMap(p.Attributes.ToSlice()), float64(p.Sum), p.Count, p.Bounds})
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					out = append(out, otelPoint{m.Name, m.Unit, attrMap(p.Attributes.ToSlice()), p.Sum, p.Count, p.Bounds})
				}
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					out = append(out, otelPoint{name: m.Name, unit: m.Unit, attrs: attrMap(p.Attributes.ToSlice()), value: float64(p.Value)})
				}
			case metricdata.Sum[float64]:
				for _, p := range d.DataPoints {
					out = append(out, otelPoint{name: m.Name, unit: m.Unit, attrs: attrMap(p.Attributes.ToSlice()), value: p.Value})
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					out = append(out, otelPoint{name: m.Name, unit: m.Unit, attrs: attrMap(p.Attributes.ToSlice()), value: float64(p.Value)})
				}
			default:
				tb.Fatalf("%s: unexpected aggregation %T", m.Name, m.Data)
			}
		}
	}
	return out
}

func attrMap(kvs []attribute.KeyValue) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value.String()
	}
	return m
}

func findPoints(ps []otelPoint, name string, attrs map[string]string) []otelPoint {
	var out []otelPoint
	for _, p := range ps {
		if p.name != name {
			continue
		}
		ok := true
		for k, v := range attrs {
			if p.attrs[k] != v {
				ok = false
			}
		}
		if ok {
			out = append(out, p)
		}
	}
	return out
}

// otelRecord is a streamed, priced Anthropic request.
func otelRecord() *Record {
	return &Record{
		RequestID: "r1", Start: usageDay, Duration: 2500 * time.Millisecond, TTFB: 400 * time.Millisecond,
		Workspace: "ws-secret", Project: "proj-a", User: "user-secret", TokenID: "tok", Session: "sess",
		Harness: "claude-code", Dialect: "anthropic", Operation: "chat", Provider: "anthropic", CredTier: "project",
		Stream: true, ModelRequest: "claude-sonnet", ModelServed: "claude-sonnet-20260101", Status: 200,
		Outcome: OutcomeOK, Source: SourceUpstream,
		Usage:        &Usage{InputUncached: 100, CacheRead: 1000, CacheWrite5m: 50, CacheWrite1h: 10, InputOther: 0, Output: 300, Reasoning: 120},
		CostMicroUSD: costPtr(12_345),
	}
}

func TestInstrumentsRecordGenAIMetrics(t *testing.T) {
	in, reader := mustInstruments(t, LabelConfig{})
	in.Observe(otelRecord(), 700*time.Microsecond)
	ps := collectPoints(t, reader)
	base := map[string]string{
		AttrOperation: "chat", AttrProvider: "anthropic", AttrReqModel: "claude-sonnet",
		AttrRespModel: "claude-sonnet-20260101", AttrHarness: "claude-code", AttrProject: "proj-a",
	}
	merge := func(extra ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(extra); i += 2 {
			m[extra[i]] = extra[i+1]
		}
		return m
	}
	for _, tc := range []struct {
		name, metric, unit string
		attrs              map[string]string
		value              float64
		bounds             []float64
	}{
		{"InputIncludesCache", MetricTokenUsage, "{token}", merge(AttrTokenType, "input"), 1160, tokenBuckets},
		{"OutputIncludesReasoning", MetricTokenUsage, "{token}", merge(AttrTokenType, "output"), 300, tokenBuckets},
		{"CachedInput", MetricTokenUsage, "{token}", merge(AttrTokenType, "cached_input"), 1000, tokenBuckets},
		{"CacheCreation", MetricTokenUsage, "{token}", merge(AttrTokenType, "cache_creation_input"), 60, tokenBuckets},
		{"Reasoning", MetricTokenUsage, "{token}", merge(AttrTokenType, "reasoning"), 120, tokenBuckets},
		{"Duration", MetricOperationDuration, "s", base, 2.5, durationBuckets},
		{"TimeToFirstChunk", MetricTimeToFirstChunk, "s", base, 0.4, durationBuckets},
		{"Overhead", MetricOverhead, "s", base, 0.0007, overheadBuckets},
		{"CostInUSD", MetricCost, "{USD}", base, 0.012345, nil},
		{"Requests", MetricRequests, "{request}", merge(AttrEndReason, "ok", AttrUsageSource, "upstream", AttrCostStatus, "priced"), 1, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := findPoints(ps, tc.metric, nil)
			got = slices.DeleteFunc(got, func(p otelPoint) bool { return !reflect.DeepEqual(p.attrs, tc.attrs) })
			if len(got) != 1 {
				t.Fatalf("%s with %v: %d points; all points: %+v", tc.metric, tc.attrs, len(got), findPoints(ps, tc.metric, nil))
			}
			p := got[0]
			if p.unit != tc.unit {
				t.Errorf("unit: got %q, want %q", p.unit, tc.unit)
			}
			if diff := p.value - tc.value; diff > 1e-9 || diff < -1e-9 {
				t.Errorf("value: got %v, want %v", p.value, tc.value)
			}
			if tc.bounds != nil && !slices.Equal(p.bounds, tc.bounds) {
				t.Errorf("bounds: got %v, want %v", p.bounds, tc.bounds)
			}
		})
	}
	if n := len(findPoints(ps, MetricOperationDuration, map[string]string{AttrErrorType: ""})); n != 1 {
		t.Errorf("a successful call carries error.type")
	}
}

// TestInstrumentsCountEveryBucket: a bucket alone reaches the token
// histogram (input for an input bucket, its own type otherwise), so a new
// bucket cannot vanish from the metrics, and none is counted in input twice;
// a tool bucket reaches the tool-use counter instead, never the tokens.
func TestInstrumentsCountEveryBucket(t *testing.T) {
	for i, b := range Buckets {
		t.Run(b.Name, func(t *testing.T) {
			if b.TokenType == TokenInput {
				t.Fatalf("token type %q: the Input flag already counts it there", b.TokenType)
			}
			in, reader := mustInstruments(t, LabelConfig{})
			r := otelRecord()
			r.Usage = &Usage{}
			*Buckets[i].Of(r.Usage) = 7
			in.Observe(r, time.Millisecond)
			byType := map[string]float64{}
			for _, p := range findPoints(collectPoints(t, reader), MetricTokenUsage, nil) {
				byType[p.attrs[AttrTokenType]] += p.value
			}
			if want := map[bool]float64{true: 7}[b.Input]; byType[TokenInput] != want {
				t.Errorf("input %v, want %v", byType[TokenInput], want)
			}
			if b.TokenType != "" && byType[b.TokenType] != 7 {
				t.Errorf("%s %v, want 7", b.TokenType, byType[b.TokenType])
			}
			uses, total := map[string]float64{}, 0.0
			for _, p := range findPoints(collectPoints(t, reader), MetricServerToolUses, nil) {
				uses[p.attrs[AttrTool]] += p.value
				total += p.value
			}
			switch {
			case b.Tool != "":
				if byType[TokenInput] != 0 || byType[TokenOutput] != 0 || len(byType) != 2 {
					t.Errorf("tool uses counted as tokens: %v", byType)
				}
				if uses[b.Tool] != 7 || total != 7 {
					t.Errorf("tool uses %v, want %s 7", uses, b.Tool)
				}
			case total != 0:
				t.Errorf("tokens counted as tool uses: %v", uses)
			case !b.Input && b.TokenType == "":
				t.Errorf("counted under no token type: %v", byType)
			}
		})
	}
}

// TestInstrumentsSkipAbsentCustomTokenTypes: input and output always get a
// sample; the custom types only when the request had such tokens.
func TestInstrumentsSkipAbsentCustomTokenTypes(t *testing.T) {
	in, reader := mustInstruments(t, LabelConfig{})
	r := otelRecord()
	r.Usage = &Usage{InputUncached: 5}
	in.Observe(r, time.Millisecond)
	var types []string
	for _, p := range findPoints(collectPoints(t, reader), MetricTokenUsage, nil) {
		types = append(types, p.attrs[AttrTokenType])
	}
	slices.Sort(types)
	if !slices.Equal(types, []string{TokenInput, TokenOutput}) {
		t.Errorf("token types %v, want input and output only", types)
	}
}

func TestInstrumentsNeverLabelIDsByDefault(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cfg       LabelConfig
		wantUser  bool
		wantProj  bool
		wantExtra []string
	}{
		{"Default", LabelConfig{}, false, true, nil},
		{"ProjectDropped", LabelConfig{Labels: []string{AttrHarness}}, false, false, nil},
		{"EnumsAdded", LabelConfig{Labels: []string{AttrHarness, AttrCredentialTier, AttrUsageSource, AttrEndReason}}, false, false,
			[]string{AttrCredentialTier, AttrUsageSource, AttrEndReason}},
		{"IDsExplicitlyEnabled", LabelConfig{Labels: []string{AttrUser, AttrWorkspace}}, true, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, reader := mustInstruments(t, tc.cfg)
			in.Observe(otelRecord(), time.Millisecond)
			ps := collectPoints(t, reader)
			if len(ps) == 0 {
				t.Fatal("no points")
			}
			for _, p := range ps {
				if p.name == MetricLabelsFolded || p.name == MetricGovernanceRefusals || p.name == MetricServerToolUses {
					continue // about the labels, or only by kind or tool
				}
				_, hasUser := p.attrs[AttrUser]
				_, hasWS := p.attrs[AttrWorkspace]
				_, hasProj := p.attrs[AttrProject]
				if hasUser != tc.wantUser || hasWS != tc.wantUser {
					t.Errorf("%s: user/workspace labels %v/%v, want %v", p.name, hasUser, hasWS, tc.wantUser)
				}
				if hasProj != tc.wantProj {
					t.Errorf("%s: project label %v, want %v", p.name, hasProj, tc.wantProj)
				}
				for _, k := range tc.wantExtra {
					if _, ok := p.attrs[k]; !ok {
						t.Errorf("%s lacks %s: %v", p.name, k, p.attrs)
					}
				}
				if !tc.wantUser {
					for k, v := range p.attrs {
						if strings.Contains(v, "secret") || k == "tollgate.session" {
							t.Errorf("%s leaks an id: %s=%s", p.name, k, v)
						}
					}
				}
			}
		})
	}
}

func TestInstrumentsFailuresAndRejections(t *testing.T) {
	in, reader := mustInstruments(t, LabelConfig{})
	r := otelRecord()
	r.Outcome, r.Status, r.Source, r.Usage, r.CostMicroUSD, r.Stream = OutcomeUpstreamError, 429, SourceNone, nil, nil, false
	in.Observe(r, time.Millisecond)
	idle := otelRecord()
	idle.Outcome, idle.Source = OutcomeUpstreamIdle, SourcePartial
	in.Observe(idle, time.Millisecond)
	rej := otelRecord()
	rej.Outcome, rej.Source, rej.Usage, rej.CostMicroUSD, rej.ModelServed = OutcomeRejected, SourceNone, nil, nil, ""
	in.Observe(rej, time.Millisecond)
	ps := collectPoints(t, reader)

	durs := findPoints(ps, MetricOperationDuration, nil)
	var errTypes []string
	for _, p := range durs {
		errTypes = append(errTypes, p.attrs[AttrErrorType])
	}
	slices.Sort(errTypes)
	if want := []string{"429", "upstream_idle"}; !slices.Equal(errTypes, want) {
		t.Errorf("duration error.type values: %q, want %q (rejected requests have no upstream call)", errTypes, want)
	}
	for _, p := range findPoints(ps, MetricTokenUsage, nil) {
		if p.attrs[AttrErrorType] != "" {
			t.Errorf("error.type on token usage: %v", p.attrs)
		}
	}
	for _, want := range []map[string]string{
		{AttrEndReason: "upstream_error", AttrUsageSource: "none", AttrCostStatus: "none"},
		{AttrEndReason: "upstream_idle", AttrUsageSource: "partial", AttrCostStatus: "priced"},
		{AttrEndReason: "rejected", AttrUsageSource: "none", AttrCostStatus: "none"},
	} {
		if got := findPoints(ps, MetricRequests, want); len(got) != 1 || got[0].value != 1 {
			t.Errorf("requests %v: %+v", want, got)
		}
	}
	// Tokens without a price are unpriced, not zero-cost.
	in2, reader2 := mustInstruments(t, LabelConfig{})
	up := otelRecord()
	up.CostMicroUSD, up.Unpriced = nil, true
	in2.Observe(up, 0)
	ps2 := collectPoints(t, reader2)
	if got := findPoints(ps2, MetricCost, nil); len(got) != 0 {
		t.Errorf("unpriced request added cost points: %+v", got)
	}
	if got := findPoints(ps2, MetricRequests, map[string]string{AttrCostStatus: "unpriced"}); len(got) != 1 {
		t.Errorf("unpriced request not counted as unpriced: %+v", findPoints(ps2, MetricRequests, nil))
	}
	if got := findPoints(ps2, MetricOverhead, nil); len(got) != 0 {
		t.Errorf("zero overhead recorded: %+v", got)
	}
}

func TestInstrumentsBoundCardinality(t *testing.T) {
	var logs testkit.LogBuffer
	in, reader := mustInstruments(t, LabelConfig{MaxAttributeSets: 3, Logger: slogTo(&logs)})
	for i := range 20 {
		r := otelRecord()
		r.Project = fmt.Sprintf("proj-%d", i)
		r.ModelRequest = fmt.Sprintf("model-%d", i)
		in.Observe(r, 0)
	}
	projects := map[string]bool{}
	var total float64
	for _, p := range findPoints(collectPoints(t, reader), MetricRequests, nil) {
		projects[p.attrs[AttrProject]] = true
		total += p.value
	}
	if len(projects) != 4 || !projects["_OTHER"] {
		t.Errorf("projects labelled: %v; want 3 and _OTHER", projects)
	}
	if total != 20 {
		t.Errorf("requests counted: %v, want all 20", total)
	}
	if !strings.Contains(logs.String(), "reached the bound") {
		t.Errorf("no warning when the bound was hit")
	}
}

// TestLabelBudgetIsPerProject: one token sending 2,100 model names used to
// spend the whole 2,000-set budget, so every later tenant showed as _OTHER.
func TestLabelBudgetIsPerProject(t *testing.T) {
	for _, tc := range []struct {
		name   string
		labels []string
	}{
		{"ProjectLabelled", nil},
		{"ProjectNotLabelled", []string{AttrHarness}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs testkit.LogBuffer
			in, reader := mustInstruments(t, LabelConfig{Labels: tc.labels, Logger: slogTo(&logs)})
			for i := range 2100 {
				r := otelRecord()
				r.Project, r.ModelRequest, r.ModelServed = "flood", fmt.Sprintf("model-%d", i), fmt.Sprintf("model-%d", i)
				in.Observe(r, 0)
			}
			quiet := otelRecord()
			quiet.Project, quiet.ModelRequest, quiet.ModelServed = "quiet", "claude-opus", "claude-opus-20261101"
			in.Observe(quiet, 0)
			ps := collectPoints(t, reader)

			if got := findPoints(ps, MetricRequests, map[string]string{AttrReqModel: "claude-opus", AttrRespModel: "claude-opus-20261101"}); len(got) != 1 {
				t.Errorf("the quiet project's model is not labelled by name: %+v", got)
			}
			var total float64
			flooded := map[string]bool{}
			for _, p := range findPoints(ps, MetricRequests, nil) {
				total += p.value
				flooded[p.attrs[AttrReqModel]] = true
			}
			if total != 2101 {
				t.Errorf("requests counted: %v, want all 2101", total)
			}
			if n := len(flooded); n > DefaultMaxAttributeSetsPerProject+2 || !flooded[otelOther] {
				t.Errorf("%d distinct request models labelled (want at most the project budget and _OTHER)", n)
			}
			if tc.labels == nil {
				if got := findPoints(ps, MetricRequests, map[string]string{AttrProject: "flood", AttrReqModel: otelOther}); len(got) != 1 {
					t.Errorf("the flooding project lost its own name when folded: %+v", got)
				}
			}
			fm := findPoints(ps, MetricLabelsFolded, map[string]string{AttrDimension: FoldModel})
			fp := findPoints(ps, MetricLabelsFolded, map[string]string{AttrDimension: FoldProject})
			if want := float64(2100 - DefaultMaxAttributeSetsPerProject); len(fm) != 1 || fm[0].value != want {
				t.Errorf("folded{model}: %+v, want %v", fm, want)
			}
			if len(fp) != 1 || fp[0].value != 0 {
				t.Errorf("folded{project}: %+v, want 0", fp)
			}
			if !strings.Contains(logs.String(), "flood") {
				t.Errorf("no warning naming the project that hit its budget: %s", logs.String())
			}
		})
	}
}

// TestOtelProviderNameFromRegistry: otel_name in harnesses.yaml was parsed
// and never used, so Gemini's metrics said gemini, not gcp.gemini.
func TestOtelProviderNameFromRegistry(t *testing.T) {
	in, reader := mustInstruments(t, LabelConfig{Registry: registry.NewStatic(mustRegistry(t))})
	for _, p := range []string{"gemini", "deepseek-anthropic", "anthropic", "gone-since-reload"} {
		r := otelRecord()
		r.Provider = p
		in.Observe(r, time.Millisecond)
	}
	got := map[string]bool{}
	for _, p := range findPoints(collectPoints(t, reader), MetricRequests, nil) {
		got[p.attrs[AttrProvider]] = true
	}
	want := map[string]bool{"gcp.gemini": true, "deepseek": true, "anthropic": true, "gone-since-reload": true}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s values: %v, want %v", AttrProvider, got, want)
	}
}

func TestLabelConfigValidate(t *testing.T) {
	err := LabelConfig{Labels: []string{AttrHarness, "tollgate.session", "user"}, MaxAttributeSets: -1, MaxAttributeSetsPerProject: -2}.Validate()
	for _, want := range []string{`"tollgate.session"`, `"user"`, "MaxAttributeSets is", "MaxAttributeSetsPerProject is"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v, want a problem naming %s", err, want)
		}
	}
	if _, err := NewInstruments(nil, LabelConfig{Labels: []string{"nope"}}); err == nil {
		t.Error("NewInstruments accepted an unknown label")
	}
}

func TestInstrumentsRegisterWriter(t *testing.T) {
	in, reader := mustInstruments(t, LabelConfig{})
	unregister, err := in.RegisterWriter(&fixedStats{Accepted: 3, Inserted: 3, SpoolBytes: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer unregister()
	ps := collectPoints(t, reader)
	for disp, want := range map[string]float64{"accepted": 3, "inserted": 3, "dropped": 0, "spilled": 0} {
		got := findPoints(ps, MetricMeteringRecords, map[string]string{AttrDisposition: disp})
		if len(got) != 1 || got[0].value != want {
			t.Errorf("%s: %+v, want %v", disp, got, want)
		}
	}
	if got := findPoints(ps, MetricSpoolUsage, nil); len(got) != 1 || got[0].unit != "By" {
		t.Errorf("spool usage: %+v", got)
	}
}

func TestInstrumentsObserveDoesNotAllocateAttributes(t *testing.T) {
	in, _ := mustInstruments(t, LabelConfig{})
	r := otelRecord()
	in.Observe(r, time.Millisecond) // warm the attribute cache
	allocs := testing.AllocsPerRun(200, func() { in.Observe(r, time.Millisecond) })
	// The SDK's own aggregation may allocate a little; attribute sets must
	// not be rebuilt (that alone is dozens of allocations per call).
	if allocs > 4 {
		t.Errorf("Observe allocates %.0f times per call with a warm cache", allocs)
	}
}

// BenchmarkInstrumentsObserve measures Observe with a warm attribute cache
// on the real SDK.
func BenchmarkInstrumentsObserve(b *testing.B) {
	in, _ := mustInstruments(b, LabelConfig{})
	r := otelRecord()
	b.ReportAllocs()
	for b.Loop() {
		in.Observe(r, time.Millisecond)
	}
}
