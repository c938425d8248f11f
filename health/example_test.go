package health_test

import (
	"fmt"

	"github.com/tollgate/tollgate/health"
)

// The proxy's attempt loop: Check before each attempt, skip a refused
// credential, and report every attempt with the verdict's Probe.
func Example() {
	tr := health.New(health.Config{})
	for range 3 {
		tr.Observe(health.Observation{CredentialID: "cred_a", Provider: "anthropic", Status: 529, Failed: true})
	}
	for _, id := range []string{"cred_a", "cred_b"} {
		v := tr.Check(id)
		if !v.OK {
			fmt.Println(id, "skipped:", v.Reason)
			continue
		}
		// … the attempt …
		tr.Observe(health.Observation{CredentialID: id, Provider: "anthropic", Status: 200, Probe: v.Probe})
		fmt.Println(id, "used")
	}
	s, _ := tr.State("cred_a")
	fmt.Println(s.Circuit, s.Failures)
	// Output:
	// cred_a skipped: cooldown
	// cred_b used
	// open 3
}
