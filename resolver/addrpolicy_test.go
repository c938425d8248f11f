package resolver

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/internal/netguard"
)

// TestBaseURLAddressPolicy: a base URL naming the metadata service, or a
// loopback or private address without AllowPrivateBaseURL, is refused when
// the credential is written, with the setting named; one written by a
// process that allowed it is refused at use by one that does not.
func TestBaseURLAddressPolicy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := filepath.Join(t.TempDir(), "t.db")
	strict := mustService(t, dsn, withConfig(func(c *Config) { c.AllowPrivateBaseURL = false })).svc
	lax := mustService(t, dsn).svc
	for _, tc := range []struct {
		url            string
		strict, lax    bool // refused
		namesAllowFlag bool
	}{
		{"http://169.254.169.254", true, true, false},
		{"http://169.254.169.254/latest/meta-data", true, true, false},
		{"http://[fd00:ec2::254]", true, true, false},
		{"http://[::ffff:169.254.169.254]", true, true, false},
		{"http://127.0.0.1:8080", true, false, true},
		{"http://localhost:11434", true, false, true},
		{"https://10.0.0.5", true, false, true},
		{"https://[::1]:8443", true, false, true},
		{"http://0.0.0.0:80", true, false, true},
		{"https://llm.example.com/v1", false, false, false},
	} {
		for _, s := range []struct {
			name    string
			svc     *Service
			refused bool
		}{{"strict", strict, tc.strict}, {"lax", lax, tc.lax}} {
			_, err := s.svc.CreateCredential(ctx, CredentialSpec{Provider: "anthropic", Secret: NewSecret("sk-addr-policy-00000"), BaseURL: tc.url})
			if (err != nil) != s.refused {
				t.Errorf("%s %s: got %v, want refused %v", s.name, tc.url, err, s.refused)
				continue
			}
			if err == nil {
				continue
			}
			if !errors.Is(err, ErrInvalidArgument) || !errors.Is(err, netguard.ErrRefused) {
				t.Errorf("%s %s: %v is not an invalid-argument address refusal", s.name, tc.url, err)
			}
			if got := strings.Contains(err.Error(), netguard.AllowPrivateSetting); got != tc.namesAllowFlag {
				t.Errorf("%s %s: %q names %s: %v, want %v", s.name, tc.url, err, netguard.AllowPrivateSetting, got, tc.namesAllowFlag)
			}
		}
	}

	c, err := lax.CreateCredential(ctx, CredentialSpec{Provider: "anthropic", Secret: NewSecret("sk-local-endpoint-001"), BaseURL: "http://127.0.0.1:8080"})
	if err != nil {
		t.Fatal(err)
	}
	mustBind(t, lax, BindingKey{Tier: TierPlatform, Dialect: "anthropic-messages"}, c.ID)
	if _, err := lax.Resolve(ctx, ccAnthropic); err != nil {
		t.Fatal(err)
	}
	_, err = strict.Resolve(ctx, ccAnthropic)
	var re *ResolveError
	if !errors.As(err, &re) || re.Reason != ReasonCredentialUnusable {
		t.Fatalf("loopback base URL at use without AllowPrivateBaseURL: got %v, want credential-unusable", err)
	}
}
