package governance

import (
	"testing"
	"time"
)

func TestFormatUSD(t *testing.T) {
	for micro, want := range map[int64]string{
		0: "$0.00", 1: "$0.000001", 9_423: "$0.009423", 10_000: "$0.01", 1_500_000: "$1.50",
		2_805_000: "$2.81", 50_000_000: "$50.00", 123_450_000: "$123.45", -1_500_000: "-$1.50",
	} {
		if got := FormatUSD(micro); got != want {
			t.Errorf("FormatUSD(%d) = %q, want %q", micro, got, want)
		}
	}
}

func TestParseUSD(t *testing.T) {
	for in, want := range map[string]int64{"50": 50_000_000, "0.25": 250_000, "$1.50": 1_500_000, "0.000001": 1, ".5": 500_000} {
		if got, err := ParseUSD(in); err != nil || got != want {
			t.Errorf("ParseUSD(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1", "1.0000001", "abc", "1e6", "$"} {
		if _, err := ParseUSD(bad); err == nil {
			t.Errorf("ParseUSD(%q) accepted", bad)
		}
	}
}

func TestWindowBounds(t *testing.T) {
	now := time.Date(2026, 12, 3, 13, 14, 15, 0, time.UTC) // a Thursday
	cases := []struct {
		w           string
		start, next time.Time
	}{
		{"day", time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC), time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)},
		{"week", time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC), time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)},
		{"month", time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"rolling:5h", now.Add(-5 * time.Hour), now},
		{"lifetime", time.Unix(0, 0).UTC(), time.Time{}},
	}
	for _, tc := range cases {
		w, err := ParseWindow(tc.w)
		if err != nil {
			t.Fatal(err)
		}
		if s, n := w.Bounds(now); !s.Equal(tc.start) || !n.Equal(tc.next) {
			t.Errorf("%s: bounds %v – %v, want %v – %v", tc.w, s, n, tc.start, tc.next)
		}
		if w.String() != tc.w {
			t.Errorf("%s reads back as %q", tc.w, w.String())
		}
	}
	for _, bad := range []string{"", "hour", "rolling:30s", "rolling:9000h", "5"} {
		if _, err := ParseWindow(bad); err == nil {
			t.Errorf("window %q accepted", bad)
		}
	}
}
