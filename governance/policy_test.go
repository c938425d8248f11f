package governance

import (
	"strings"
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

func TestWindowBoundsInZone(t *testing.T) {
	utc := func(y int, m time.Month, d, h, min int) time.Time { return time.Date(y, m, d, h, min, 0, 0, time.UTC) }
	cases := []struct {
		name        string
		w           string
		now         time.Time
		start, next time.Time
		hours       float64
	}{
		// 2026-03-29: Berlin springs from 02:00 to 03:00, a 23-hour day.
		{"BerlinSpringForwardDay", "day@Europe/Berlin", utc(2026, 3, 29, 12, 0), utc(2026, 3, 28, 23, 0), utc(2026, 3, 29, 22, 0), 23},
		// 2026-10-25: Berlin falls back from 03:00 to 02:00, a 25-hour day.
		{"BerlinFallBackDay", "day@Europe/Berlin", utc(2026, 10, 25, 12, 0), utc(2026, 10, 24, 22, 0), utc(2026, 10, 25, 23, 0), 25},
		{"NewYorkSpringForwardDay", "day@America/New_York", utc(2026, 3, 8, 12, 0), utc(2026, 3, 8, 5, 0), utc(2026, 3, 9, 4, 0), 23},
		{"NewYorkFallBackDay", "day@America/New_York", utc(2026, 11, 1, 12, 0), utc(2026, 11, 1, 4, 0), utc(2026, 11, 2, 5, 0), 25},
		// 02:00 UTC on 3 March is still 2 March in New York.
		{"NewYorkDayBehindUTC", "day@America/New_York", utc(2026, 3, 3, 2, 0), utc(2026, 3, 2, 5, 0), utc(2026, 3, 3, 5, 0), 24},
		// 2026-09-06: Santiago springs from 24:00 to 01:00, so that day
		// starts at 01:00 local (04:00 UTC), not at the 23:00 before.
		{"SantiagoSkippedMidnight", "day@America/Santiago", utc(2026, 9, 6, 12, 0), utc(2026, 9, 6, 4, 0), utc(2026, 9, 7, 3, 0), 23},
		{"SantiagoDayBeforeSkippedMidnight", "day@America/Santiago", utc(2026, 9, 5, 12, 0), utc(2026, 9, 5, 4, 0), utc(2026, 9, 6, 4, 0), 24},
		// The week holding Berlin's spring-forward Sunday: Monday 23 March
		// 00:00 +01:00 to Monday 30 March 00:00 +02:00.
		{"BerlinWeekAcrossDST", "week@Europe/Berlin", utc(2026, 3, 29, 12, 0), utc(2026, 3, 22, 23, 0), utc(2026, 3, 29, 22, 0), 167},
		// Sunday 29 November 23:30 UTC is Monday 08:30 in Tokyo: a new
		// local week, while the UTC week began on the 23rd.
		{"TokyoWeekStartsMondayLocal", "week@Asia/Tokyo", utc(2026, 11, 29, 23, 30), utc(2026, 11, 29, 15, 0), utc(2026, 12, 6, 15, 0), 168},
		// 30 November 23:30 UTC is 1 December 00:30 in Berlin.
		{"BerlinMonthAheadOfUTC", "month@Europe/Berlin", utc(2026, 11, 30, 23, 30), utc(2026, 11, 30, 23, 0), utc(2026, 12, 31, 23, 0), 31 * 24},
		{"BerlinMonthAcrossFallBack", "month@Europe/Berlin", utc(2026, 10, 15, 0, 0), utc(2026, 9, 30, 22, 0), utc(2026, 10, 31, 23, 0), 31*24 + 1},
		{"TokyoMonthAheadOfUTC", "month@Asia/Tokyo", utc(2026, 12, 31, 15, 0), utc(2026, 12, 31, 15, 0), utc(2027, 1, 31, 15, 0), 31 * 24},
		// 1 December 03:00 UTC is still 30 November in New York.
		{"NewYorkMonthBehindUTC", "month@America/New_York", utc(2026, 12, 1, 3, 0), utc(2026, 11, 1, 4, 0), utc(2026, 12, 1, 5, 0), 30*24 + 1},
		{"UTCNamedIsDefault", "month@UTC", utc(2026, 11, 30, 23, 30), utc(2026, 11, 1, 0, 0), utc(2026, 12, 1, 0, 0), 30 * 24},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, err := ParseWindow(tc.w)
			if err != nil {
				t.Fatal(err)
			}
			s, n := w.Bounds(tc.now)
			if !s.Equal(tc.start) || !n.Equal(tc.next) {
				t.Errorf("%s at %s: bounds %s – %s, want %s – %s", tc.w, tc.now, s.UTC(), n.UTC(), tc.start, tc.next)
			}
			if got := n.Sub(s).Hours(); got != tc.hours {
				t.Errorf("%s: window of %v hours, want %v", tc.w, got, tc.hours)
			}
			if s.After(tc.now) || !n.After(tc.now) {
				t.Errorf("%s: %s is not inside %s – %s", tc.w, tc.now, s, n)
			}
			// Shown in the zone: a start at local midnight reads as one.
			if w.Zone != "" && tc.name != "SantiagoSkippedMidnight" && (s.Hour() != 0 || s.Minute() != 0 || s.Location().String() != w.Zone) {
				t.Errorf("%s: start %s is not local midnight in %s", tc.w, s, w.Zone)
			}
			// The next window starts where this one ends.
			if s2, _ := w.Bounds(n); !s2.Equal(n) {
				t.Errorf("%s: the window after starts at %s, want %s", tc.w, s2, n)
			}
		})
	}
}

func TestWindowZoneText(t *testing.T) {
	for in, want := range map[string]string{
		"month@Europe/Berlin": "month@Europe/Berlin", "day@America/New_York": "day@America/New_York",
		"week@Asia/Tokyo": "week@Asia/Tokyo", "month@UTC": "month", "day": "day",
	} {
		w, err := ParseWindow(in)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if w.String() != want {
			t.Errorf("%s reads back as %q, want %q", in, w.String(), want)
		}
		var back Window
		if err := back.UnmarshalText([]byte(w.String())); err != nil || back != w {
			t.Errorf("%s: text round trip gives %+v, %v", in, back, err)
		}
	}
	for in, want := range map[string]string{
		"month@Mars/Olympus_Mons":  `window "month@Mars/Olympus_Mons": unknown time zone "Mars/Olympus_Mons": not an IANA zone name`,
		"month@":                   `window "month@" names no time zone after the @`,
		"month@Local":              `time zone "Local" is this machine's own`,
		"month@../etc/passwd":      `unknown time zone "../etc/passwd"`,
		"rolling:5h@Europe/Berlin": `window "rolling:5h@Europe/Berlin": time zone "Europe/Berlin" applies to day, week and month windows only: a rolling window counts back from the present instant`,
		"lifetime@Europe/Berlin":   `time zone "Europe/Berlin" applies to day, week and month windows only: a lifetime window never resets`,
		"hour@Europe/Berlin":       `window "hour@Europe/Berlin" is not day, week, month`,
	} {
		if _, err := ParseWindow(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseWindow(%q) = %v, want an error containing %q", in, err, want)
		}
	}
	month := Window{Kind: WindowMonth}
	if w, err := month.InZone("Europe/Berlin"); err != nil || w.String() != "month@Europe/Berlin" {
		t.Errorf("month in Europe/Berlin: %v, %v", w, err)
	}
	if w, err := (Window{Kind: WindowMonth, Zone: "Asia/Tokyo"}).InZone("Europe/Berlin"); err == nil || !strings.Contains(err.Error(), "differs from the window's own, Asia/Tokyo") {
		t.Errorf("a second, different zone: %v, %v", w, err)
	}
	b := Budget{Selector: Selector{ScopeType: ScopeProject, ScopeID: "acme"}, Metric: MetricCost, Limit: 1, Window: Window{Kind: WindowDay, Zone: "Nowhere/Town"}}
	if err := b.Validate(); err == nil || !strings.Contains(err.Error(), `window: unknown time zone "Nowhere/Town"`) {
		t.Errorf("Validate of an unknown zone: %v", err)
	}
}
