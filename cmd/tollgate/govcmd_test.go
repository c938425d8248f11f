package main

import (
	"context"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

var policyID = regexp.MustCompile(`^(created|updated|unchanged) ((bud|lim|rule)_[a-z2-7]{16}): `)

// mustPolicy runs a set command and returns the id it names and its verb.
func mustPolicy(t *testing.T, c *cli, args ...string) (id, verb string) {
	t.Helper()
	out, errs, code := c.run(context.Background(), "", args...)
	m := policyID.FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("%v: exit %d, out %q, stderr %s", args, code, out, errs)
	}
	return m[2], m[1]
}

// TestPolicyCommands: set, list, show and delete for each kind; a second
// set of the same selector updates (one budget, same id) instead of adding
// one; resolve shows the policies in force.
func TestPolicyCommands(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { testPolicyCommands(t, "") })
	t.Run("postgres", func(t *testing.T) {
		pg := os.Getenv("TOLLGATE_TEST_POSTGRES")
		if pg == "" {
			t.Skip("TOLLGATE_TEST_POSTGRES is not set")
		}
		testPolicyCommands(t, testkit.PostgresSchema(t, pg, "gov_cmd_"))
	})
}

func testPolicyCommands(t *testing.T, dbURL string) {
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	c := newCLI(t, fakeURL)
	if dbURL != "" {
		c.env["TOLLGATE_DB"] = dbURL
	}
	ctx := context.Background()

	bud, verb := mustPolicy(t, c, "budget", "set", "--project", "acme", "--cost", "50", "--window", "month")
	if verb != "created" {
		t.Errorf("first set: %s", verb)
	}
	again, verb := mustPolicy(t, c, "budget", "set", "--project", "acme", "--cost", "75.5", "--window", "month", "--mode", "hard")
	if again != bud || verb != "updated" {
		t.Errorf("second set of the same selector: %s %s, want updated %s", verb, again, bud)
	}
	// Another window is another budget.
	day, _ := mustPolicy(t, c, "budget", "set", "--project", "acme", "--tokens", "1000000", "--window", "day", "--model", "claude-*")
	if day == bud {
		t.Error("a tokens budget per day replaced the cost budget per month")
	}
	// Without --mode the update keeps hard.
	mustPolicy(t, c, "budget", "set", "--project", "acme", "--cost", "80", "--window", "month")
	// The same set again changes nothing and says so.
	if again, verb := mustPolicy(t, c, "budget", "set", "--project", "acme", "--cost", "80", "--window", "month"); again != bud || verb != "unchanged" {
		t.Errorf("identical set: %s %s, want unchanged %s", verb, again, bud)
	}

	out, errs, code := c.run(ctx, "", "budget", "list", "--format", "json")
	var bs []governance.Budget
	if err := json.Unmarshal([]byte(out), &bs); code != 0 || err != nil || len(bs) != 2 {
		t.Fatalf("budget list: %d %v %s %s", code, err, out, errs)
	}
	for _, b := range bs {
		if b.ID == bud && (b.Limit != 80_000_000 || b.Mode != governance.ModeHard || b.Window.Kind != governance.WindowMonth) {
			t.Errorf("updated budget: %+v", b)
		}
	}
	out, _, _ = c.run(ctx, "", "budget", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID ") || !strings.Contains(out, "$80.00") || !strings.Contains(out, "1000000 tokens") {
		t.Errorf("budget list table:\n%s", out)
	}
	if out, _, _ := c.run(ctx, "", "budget", "list", "--user", "ann"); strings.Count(out, "\n") != 1 {
		t.Errorf("budget list --user ann shows others':\n%s", out)
	}
	if out, errs, code := c.run(ctx, "", "budget", "show", bud); code != 0 || !strings.Contains(out, bud) || strings.Contains(out, day) {
		t.Errorf("budget show: %d %s %s", code, out, errs)
	}

	lim, _ := mustPolicy(t, c, "limit", "set", "--workspace", "ws-42", "--rpm", "60", "--tpm", "200000")
	if again, verb := mustPolicy(t, c, "limit", "set", "--workspace", "ws-42", "--concurrency", "4"); again != lim || verb != "updated" {
		t.Errorf("limit set again: %s %s", verb, again)
	}
	out, _, _ = c.run(ctx, "", "limit", "show", lim, "--format", "json")
	var ls []governance.Limit
	if err := json.Unmarshal([]byte(out), &ls); err != nil || len(ls) != 1 || ls[0].RPM != 60 || ls[0].TPM != 200000 || ls[0].Concurrency != 4 {
		t.Errorf("limit show: %v %s", err, out)
	}

	allow, _ := mustPolicy(t, c, "models", "allow", "--project", "acme", "claude-sonnet-*")
	if again, verb := mustPolicy(t, c, "models", "allow", "--project", "acme", "claude-sonnet-*"); again != allow || verb != "unchanged" {
		t.Errorf("models allow twice: %s %s", verb, again)
	}
	alias, _ := mustPolicy(t, c, "models", "alias", "--project", "acme", "fast", "gpt-5-mini")
	if again, verb := mustPolicy(t, c, "models", "alias", "--project", "acme", "fast", "gpt-5"); again != alias || verb != "updated" {
		t.Errorf("alias again: %s %s", verb, again)
	}
	out, _, _ = c.run(ctx, "", "models", "list", "--project", "acme")
	if strings.Count(out, "\n") != 3 || !strings.Contains(out, "gpt-5\n") && !strings.Contains(out, "gpt-5 ") {
		t.Errorf("models list:\n%s", out)
	}

	out, errs, code = c.run(ctx, "", "resolve", "--project", "acme", "--user", "ann")
	for _, want := range []string{bud, day, allow, alias, "$80.00 per month, hard", "alias fast -> gpt-5"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("resolve does not show %q: %d\n%s%s", want, code, out, errs)
		}
	}
	if strings.Contains(out, lim) {
		t.Errorf("resolve for a project shows a workspace's limit:\n%s", out)
	}
	out, _, _ = c.run(ctx, "", "resolve", "--project", "acme", "--user", "ann", "--format", "json")
	var rv struct {
		Resolutions []any                    `json:"resolutions"`
		Policies    []governance.PolicyState `json:"policies"`
	}
	if err := json.Unmarshal([]byte(out), &rv); err != nil || len(rv.Policies) != 4 || len(rv.Resolutions) == 0 {
		t.Errorf("resolve json: %v %d policies\n%s", err, len(rv.Policies), out)
	}

	for _, d := range []struct{ group, id string }{{"budget", bud}, {"budget", day}, {"limit", lim}, {"models", allow}, {"models", alias}} {
		if out, errs, code := c.run(ctx, "", d.group, "delete", d.id); code != 0 || out != "deleted "+d.id+"\n" {
			t.Errorf("%s delete %s: %d %q %s", d.group, d.id, code, out, errs)
		}
		if _, errs, code := c.run(ctx, "", d.group, "delete", d.id); code == 0 || !strings.Contains(errs, "not found") {
			t.Errorf("%s delete %s twice: %d %s", d.group, d.id, code, errs)
		}
	}
	if out, _, _ := c.run(ctx, "", "resolve", "--project", "acme", "--user", "ann"); !strings.Contains(out, "no budget, rate limit or model rule applies") {
		t.Errorf("resolve with no policy:\n%s", out)
	}
}

// TestPolicyCommandMistakes: each bad use names the flag at fault and
// stores nothing.
func TestPolicyCommandMistakes(t *testing.T) {
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	c := newCLI(t, fakeURL)
	ctx := context.Background()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"budget", "set", "--cost", "5", "--window", "day"}, "exactly one of --platform"},
		{[]string{"budget", "set", "--project", "a", "--user", "u", "--cost", "5", "--window", "day"}, "exactly one of --platform"},
		{[]string{"budget", "set", "--project", "a", "--window", "day"}, "one of --cost USD or --tokens N"},
		{[]string{"budget", "set", "--project", "a", "--cost", "5", "--tokens", "5", "--window", "day"}, "one of --cost USD or --tokens N"},
		{[]string{"budget", "set", "--project", "a", "--cost", "five", "--window", "day"}, "--cost"},
		{[]string{"budget", "set", "--project", "a", "--tokens", "-3", "--window", "day"}, `--tokens "-3"`},
		{[]string{"budget", "set", "--project", "a", "--cost", "5"}, "needs --window"},
		{[]string{"budget", "set", "--project", "a", "--cost", "5", "--window", "fortnight"}, `--window: window "fortnight"`},
		{[]string{"budget", "set", "--project", "a", "--cost", "5", "--window", "day", "--mode", "strict"}, `mode "strict"`},
		{[]string{"budget", "set", "--project", "a", "--cost", "5", "--window", "day", "--alerts", "50,lots"}, "--alerts"},
		{[]string{"budget", "set", "--project", "a", "--cost", "5", "--window", "day", "--id", "bud_nope"}, "--id: policy not found"},
		{[]string{"budget", "set", "--project", "a", "--cost", "5", "--window", "day", "--rpm", "5"}, "-rpm"},
		{[]string{"budget", "show"}, "one policy id"},
		{[]string{"budget", "frobnicate"}, `unknown budget subcommand "frobnicate"`},
		{[]string{"limit", "set", "--platform"}, "at least one of --rpm N"},
		{[]string{"limit", "set", "--platform", "--rpm", "abc"}, `--rpm "abc"`},
		{[]string{"limit", "set", "--platform", "--rpm", "5", "--mode", "alert"}, `mode "alert"`},
		{[]string{"models", "allow", "--project", "a"}, "one model PATTERN"},
		{[]string{"models", "alias", "--project", "a", "fast"}, "NAME and TARGET"},
		{[]string{"models", "alias", "--user", "u", "fast", "gpt-5"}, "-user"},
		{[]string{"models", "deny", "--project", "a", "[bad"}, `pattern "[bad"`},
		{[]string{"models", "list", "--format", "yaml"}, `unknown format "yaml"`},
	} {
		out, errs, code := c.run(ctx, "", tc.args...)
		if code == 0 || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: exit %d, out %q, stderr %q; want an error with %q", tc.args, code, out, errs, tc.want)
		}
	}
	// Every flag at fault at once, not one per attempt.
	_, errs, _ := c.run(ctx, "", "budget", "set", "--cost", "five", "--window", "fortnight", "--alerts", "x")
	for _, want := range []string{"exactly one of --platform", "--cost", `--window: window "fortnight"`, "--alerts"} {
		if !strings.Contains(errs, want) {
			t.Errorf("budget set with four mistakes: %q does not say %q", errs, want)
		}
	}
	for _, g := range []string{"budget", "limit", "models"} {
		out, errs, code := c.run(ctx, "", g, "list", "--format", "json")
		if code != 0 || strings.TrimSpace(out) != "[]" {
			t.Errorf("%s list after refused commands: %d %q %s", g, code, out, errs)
		}
	}
}

// TestBudgetTimeZoneCommands: budget set --tz stores the zone in the
// window (the same budget as --window month@Europe/Berlin), list and show
// print it, resolve shows the reset at local midnight beside the UTC
// time, and a zone the window cannot have is refused naming the flag.
func TestBudgetTimeZoneCommands(t *testing.T) {
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	c := newCLI(t, fakeURL)
	ctx := context.Background()
	bud, verb := mustPolicy(t, c, "budget", "set", "--project", "acme", "--cost", "50", "--window", "month", "--tz", "Europe/Berlin")
	if verb != "created" {
		t.Errorf("set --tz: %s", verb)
	}
	if again, verb := mustPolicy(t, c, "budget", "set", "--project", "acme", "--cost", "50", "--window", "month@Europe/Berlin"); again != bud || verb != "unchanged" {
		t.Errorf("the zone inside --window: %s %s, want unchanged %s", verb, again, bud)
	}
	if utc, _ := mustPolicy(t, c, "budget", "set", "--project", "acme", "--cost", "50", "--window", "month"); utc == bud {
		t.Error("a UTC month budget updated the Berlin one")
	}
	out, errs, code := c.run(ctx, "", "budget", "show", bud, "--format", "json")
	var bs []governance.Budget
	if err := json.Unmarshal([]byte(out), &bs); code != 0 || err != nil || len(bs) != 1 || bs[0].Window.String() != "month@Europe/Berlin" {
		t.Fatalf("budget show json: %d %v %s %s", code, err, out, errs)
	}
	if out, _, _ := c.run(ctx, "", "budget", "list"); !strings.Contains(out, "month@Europe/Berlin") {
		t.Errorf("budget list does not show the zone:\n%s", out)
	}
	out, errs, code = c.run(ctx, "", "resolve", "--project", "acme", "--user", "ann")
	reset := regexp.MustCompile(`\$50\.00 per month@Europe/Berlin, soft.*\d{4}-\d\d-\d\d \d\d:00 \(\d{4}-\d\d-01 00:00 Europe/Berlin\)`)
	if code != 0 || !reset.MatchString(out) {
		t.Errorf("resolve does not show the local reset: %d\n%s%s", code, out, errs)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--window", "month", "--tz", "Mars/Olympus_Mons"}, `--tz: unknown time zone "Mars/Olympus_Mons"`},
		{[]string{"--window", "month@Mars/Olympus_Mons"}, `--window: window "month@Mars/Olympus_Mons": unknown time zone "Mars/Olympus_Mons"`},
		{[]string{"--window", "rolling:5h", "--tz", "Europe/Berlin"}, `--tz: time zone "Europe/Berlin" applies to day, week and month windows only: a rolling window counts back`},
		{[]string{"--window", "lifetime", "--tz", "Europe/Berlin"}, "a lifetime window never resets"},
		{[]string{"--window", "week@Asia/Tokyo", "--tz", "Europe/Berlin"}, "differs from the window's own, Asia/Tokyo"},
	} {
		args := append([]string{"budget", "set", "--project", "other", "--cost", "5"}, tc.args...)
		if out, errs, code := c.run(ctx, "", args...); code == 0 || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: exit %d, out %q, stderr %q; want an error with %q", tc.args, code, out, errs, tc.want)
		}
	}
	if out, _, _ := c.run(ctx, "", "budget", "list", "--project", "other"); strings.Count(out, "\n") != 1 {
		t.Errorf("refused sets stored a budget:\n%s", out)
	}
}
