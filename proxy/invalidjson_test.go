package proxy

import (
	"bytes"
	"testing"

	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// TestInvalidJSON200IsAnUpstreamError: a 200 whose JSON body does not
// parse is the provider's failure with unknown usage, not a completed
// request; the client still gets the provider's bytes.
func TestInvalidJSON200IsAnUpstreamError(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws", "proj", "user", "")
	for _, tc := range dialectCases() {
		if tc.stream {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			resp := e.do("POST", tc.path, tok, tc.body, append([]string{upstreamtest.HeaderFault, "malformed"}, tc.hdr...)...)
			got := readAll(t, resp.Body)
			resp.Body.Close()
			up := e.lastFake()
			if resp.StatusCode != 200 || !bytes.Equal(got, up.Response) {
				t.Errorf("client got %d %q, provider sent %q", resp.StatusCode, got, up.Response)
			}
			rec := e.record(resp)
			if rec.Outcome != metering.OutcomeUpstreamError || rec.Source != metering.SourceMissing || rec.Usage != nil || rec.Status != 200 {
				t.Errorf("record outcome/source/usage/status = %s/%s/%v/%d, want upstream_error/missing/nil/200", rec.Outcome, rec.Source, rec.Usage, rec.Status)
			}
		})
	}
}
