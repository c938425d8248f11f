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
