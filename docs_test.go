package tollgate

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestMakeHelpAgreesWithReadme: a target's time in `make help` (the
// Makefile's "## … ~N min" text) is the time the README's targets table
// gives it, so a newcomer does not read two figures for one command
// (issue 15 B14).
func TestMakeHelpAgreesWithReadme(t *testing.T) {
	mk, err := os.ReadFile("Makefile")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	target := regexp.MustCompile(`(?m)^([a-z0-9-]+):.*## (.*)$`)
	figure := regexp.MustCompile(`~[0-9.]+ (?:min|s)\b`)
	checked := 0
	for _, m := range target.FindAllStringSubmatch(string(mk), -1) {
		name, help := m[1], m[2]
		fig := figure.FindString(help)
		if fig == "" {
			continue
		}
		row := regexp.MustCompile("(?m)^\\| `make " + regexp.QuoteMeta(name) + "`.*$").FindString(string(readme))
		if row == "" {
			t.Errorf("make %s (%s in make help) has no row in the README's targets table", name, fig)
			continue
		}
		cells := strings.Split(strings.TrimSuffix(row, "|"), "|")
		if last := strings.TrimSpace(cells[len(cells)-1]); !strings.HasPrefix(last, fig) {
			t.Errorf("make %s: make help says %s, the README says %q", name, fig, last)
		}
		checked++
	}
	if checked < 4 {
		t.Fatalf("checked %d targets: the Makefile's help format changed?", checked)
	}
}
