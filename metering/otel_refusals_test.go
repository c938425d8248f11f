package metering

import "testing"

func TestAuthRefusalsAreCountedByBoundedReason(t *testing.T) {
	in, reader := mustInstruments(t, LabelConfig{})
	for range 3 {
		in.Refused("invalid")
	}
	in.Refused("revoked")
	in.Refused("made-up-by-a-caller")
	ps := collectPoints(t, reader)
	for reason, want := range map[string]float64{"invalid": 3, "revoked": 1, "other": 1} {
		got := findPoints(ps, MetricAuthRefusals, map[string]string{AttrRefusalReason: reason})
		if len(got) != 1 || got[0].value != want {
			t.Errorf("%s{%s=%s}: %+v, want %v", MetricAuthRefusals, AttrRefusalReason, reason, got, want)
		}
	}
}

func TestGovernanceRefusalsAreCountedByBoundedKind(t *testing.T) {
	in, reader := mustInstruments(t, LabelConfig{})
	rec := func(kind string) *Record {
		return &Record{RequestID: "r", Operation: "chat", Provider: "anthropic", Outcome: OutcomeRejected, Source: SourceNone, Governance: kind}
	}
	for range 2 {
		in.Observe(rec("budget"), 0)
	}
	in.Observe(rec("rate_limit"), 0)
	in.Observe(rec("not-a-kind"), 0)
	in.Observe(rec(""), 0) // not a governance refusal
	ps := collectPoints(t, reader)
	want := map[string]float64{"budget": 2, "rate_limit": 1, "concurrency": 0, "model_policy": 0, "governance_unavailable": 0, "other": 1}
	for kind, n := range want {
		got := findPoints(ps, MetricGovernanceRefusals, map[string]string{AttrGovernanceKind: kind})
		if len(got) != 1 || got[0].value != n {
			t.Errorf("%s{kind=%s}: %+v, want %v", MetricGovernanceRefusals, kind, got, n)
		}
	}
	if all := findPoints(ps, MetricGovernanceRefusals, nil); len(all) != len(want) {
		t.Errorf("%d series, want exactly %d (the kinds and other)", len(all), len(want))
	}
}
