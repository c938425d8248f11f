//go:build e2e

package main_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
)

// failoverProject's bindings name an overloaded credential first (every
// answer 529) and a working one after it.
const failoverProject = "e2e-failover"

// TestHarnessFailover runs each real CLI of TestHarness in a project whose
// first credential, on a provider that answers every request with 529,
// never answers: the turn must complete anyway, without the CLI seeing the
// 529 (tollgate fails over before the first byte), every request being
// recorded as answered by the second credential, with both attempts
// listed unless credential health already skips the first. TOLLGATE_E2E_HARNESSES (comma separated names) narrows the run,
// and what npm installs for it, to those CLIs.
func TestHarnessFailover(t *testing.T) {
	cases := harnessCases
	if only := os.Getenv("TOLLGATE_E2E_HARNESSES"); only != "" {
		names := strings.Split(only, ",")
		cases = slices.DeleteFunc(slices.Clone(cases), func(hc harnessCase) bool { return !slices.Contains(names, hc.name) })
	}
	var pkgs []npmPackage
	for _, hc := range cases {
		pkgs = append(pkgs, hc.pkg)
		if hc.name == "opencode" {
			pkgs = append(pkgs, pkgOpenCodePlugin)
		}
	}
	prefixes, nodeDir := mustInstallHarnesses(t, pkgs...)
	s := startStack(t)

	keys := make([]string, 0, len(s.canaries))
	for _, k := range s.canaries {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	over := mustStartDaemon(t, "fakeprovider -fault status=529", filepath.Join(filepath.Dir(s.bin), "fakeprovider"), []string{
		"-addr", "127.0.0.1:0", "-keys", strings.Join(keys, ","), "-fault", "status=529",
	}, []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()})
	overURL := over.mustListenURL(t)

	good := map[string]string{} // provider → the working credential's id
	for provider, dialects := range map[string][]string{
		"anthropic": {"anthropic-messages"},
		"openai":    {"openai-chat", "openai-responses"},
		"gemini":    {"gemini"},
	} {
		bad := strings.TrimSpace(s.tollgate(t, s.canaries[provider], "credential", "add", "--provider", provider,
			"--name", "overloaded-"+provider, "--base-url", overURL, "--key-stdin"))
		good[provider] = strings.TrimSpace(s.tollgate(t, s.canaries[provider], "credential", "add", "--provider", provider,
			"--name", "working-"+provider, "--key-stdin"))
		for _, d := range dialects {
			s.tollgate(t, "", "credential", "bind", "--credential", bad, "--fallback", good[provider], "--dialect", d, "--project", failoverProject)
		}
	}

	for _, hc := range cases {
		t.Run(hc.name, func(t *testing.T) {
			workspace := "e2e-failover-" + hc.name
			run := s.prepareHarness(t, hc, workspace, failoverProject, prefixes, nodeDir)
			beforeOver, before := s.fakeCounters(t, overURL), s.fakeCounters(t, s.fakeURL)
			res := runCLI(run.home.work, run.env, cliTimeout, run.bin, hc.args...)
			out := "stdout:\n" + tail(res.stdout, 3000) + "\nstderr:\n" + tail(res.stderr, 3000)
			overloaded := s.fakeCounters(t, overURL).Requests - beforeOver.Requests
			answered := s.fakeCounters(t, s.fakeURL).Requests - before.Requests
			t.Logf("%s: %v in %v; %d requests met the 529s, %d were answered", hc.pkg.Bin, errOr(res.err, "exit 0"),
				res.elapsed.Round(100*time.Millisecond), overloaded, answered)
			if res.err != nil {
				t.Fatalf("%s failed while its first credential answered 529: %v\n%s", hc.pkg.Bin, res.err, out)
			}
			if !strings.Contains(res.stdout, pangram) {
				t.Errorf("%s's output lacks the fake provider's text %q\n%s", hc.pkg.Bin, pangram, out)
			}
			if strings.Contains(res.stdout+res.stderr, "529") || strings.Contains(strings.ToLower(res.stdout+res.stderr), "overloaded") {
				t.Errorf("%s saw the 529\n%s", hc.pkg.Bin, out)
			}
			// After three 529s in a row the overloaded credential's circuit
			// opens (credential health), and requests go straight to the
			// working one for a while: fewer 529s than answers then.
			if answered < 1 || overloaded < 1 || overloaded > answered {
				t.Errorf("%d requests met the overloaded credential and %d the working one", overloaded, answered)
			}
			var recs []failoverRecord
			testkit.Poll(recordWait, 100*time.Millisecond, func() bool {
				recs = s.failoverRecords(t, workspace)
				return int64(len(recs)) >= answered
			})
			if int64(len(recs)) != answered {
				t.Fatalf("tollgate recorded %d requests, the working credential answered %d", len(recs), answered)
			}
			failedOver := int64(0)
			for i, r := range recs {
				t.Logf("record %d: %d %s via %s, attempts %s", i, r.status, r.outcome, r.credID, r.attempts)
				var as []struct {
					CredentialID string `json:"credential_id"`
					Status       int    `json:"status"`
				}
				_ = json.Unmarshal([]byte(r.attempts), &as)
				if r.status != 200 || r.outcome != "ok" || r.tier != "project" || r.credID != good[r.provider] {
					t.Errorf("record %d: %d %s via %s/%s, want 200 ok via the working project credential", i, r.status, r.outcome, r.tier, r.credID)
				}
				switch {
				case len(as) == 2 && as[0].Status == 529 && as[1].Status == 200 && as[1].CredentialID == r.credID:
					failedOver++
				case r.attempts != "":
					t.Errorf("record %d: attempts %s, want the 529 then the answer, or none", i, r.attempts)
				}
			}
			if failedOver != overloaded {
				t.Errorf("%d records list a failover, %d requests met the 529s", failedOver, overloaded)
			}
			for provider, k := range s.canaries {
				if strings.Contains(res.stdout+res.stderr, k) {
					t.Errorf("the %s canary key reached %s's output", provider, hc.pkg.Bin)
				}
			}
		})
	}
	s.checkNoSecretsLogged(t)
}

type failoverRecord struct {
	provider, tier, credID, outcome, attempts string
	status                                    int
}

func (s *stack) failoverRecords(tb testing.TB, workspace string) []failoverRecord {
	tb.Helper()
	rows, err := s.db.Query(`SELECT provider, credential_tier, credential_id, outcome, attempts, status
		FROM usage_records WHERE workspace = $1 ORDER BY started_at`, workspace)
	if err != nil {
		tb.Fatalf("query usage_records: %v", err)
	}
	defer rows.Close()
	var out []failoverRecord
	for rows.Next() {
		var r failoverRecord
		if err := rows.Scan(&r.provider, &r.tier, &r.credID, &r.outcome, &r.attempts, &r.status); err != nil {
			tb.Fatalf("scan usage_records: %v", err)
		}
		out = append(out, r)
	}
	return out
}
