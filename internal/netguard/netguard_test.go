package netguard

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestPolicyAddresses(t *testing.T) {
	// want: "" admitted, "private" refused unless AllowPrivate, "never"
	// refused always.
	cases := []struct{ addr, want string }{
		{"8.8.8.8", ""},
		{"2606:4700::1111", ""},
		{"100.63.255.255", ""},
		{"172.32.0.1", ""},
		{"127.0.0.1", "private"},
		{"127.255.0.9", "private"},
		{"::1", "private"},
		{"10.1.2.3", "private"},
		{"172.16.0.1", "private"},
		{"172.31.255.255", "private"},
		{"192.168.1.1", "private"},
		{"fc00::1", "private"},
		{"fd12:3456::1", "private"},
		{"100.64.0.1", "private"},
		{"100.127.255.255", "private"},
		{"0.0.0.0", "private"},
		{"0.1.2.3", "private"},
		{"::", "private"},
		{"::ffff:127.0.0.1", "private"},
		{"169.254.169.254", "never"},
		{"169.254.170.2", "never"},
		{"169.254.0.1", "never"},
		{"fd00:ec2::254", "never"},
		{"fe80::1", "never"},
		{"::ffff:169.254.169.254", "never"},
		{"64:ff9b::a9fe:a9fe", "never"},
		{"64:ff9b::7f00:1", "private"},
		{"224.0.0.1", "never"},
		{"239.1.1.1", "never"},
		{"ff02::1", "never"},
		{"255.255.255.255", "never"},
		{"240.0.0.1", "never"},
	}
	for _, tc := range cases {
		a := netip.MustParseAddr(tc.addr)
		strict, lax := Policy{}.CheckAddr(a), Policy{AllowPrivate: true}.CheckAddr(a)
		var got string
		switch {
		case strict == nil && lax == nil:
			got = ""
		case strict != nil && lax == nil:
			got = "private"
		case strict != nil && lax != nil:
			got = "never"
		default:
			got = "admitted only when strict (bug)"
		}
		if got != tc.want {
			t.Errorf("%s: got %q, want %q (strict: %v, lax: %v)", tc.addr, got, tc.want, strict, lax)
		}
		if strict != nil && !errors.Is(strict, ErrRefused) {
			t.Errorf("%s: %v does not wrap ErrRefused", tc.addr, strict)
		}
		if tc.want == "private" && !strings.Contains(strict.Error(), AllowPrivateSetting) {
			t.Errorf("%s: %q does not name %s", tc.addr, strict, AllowPrivateSetting)
		}
	}
}

func TestPolicyHosts(t *testing.T) {
	for host, refused := range map[string]bool{
		"api.openai.com":    false,
		"metadata.internal": false, // a name: checked when dialled
		"localhost":         true,
		"LOCALHOST.":        true,
		"ollama.localhost":  true,
		"169.254.169.254":   true,
		"[fd00:ec2::254]":   true,
		"fd00:ec2::254":     true,
		"127.0.0.1":         true,
		"93.184.215.14":     false,
		"[2606:4700::1111]": false,
	} {
		err := Policy{}.CheckHost(host)
		if (err != nil) != refused {
			t.Errorf("CheckHost(%q) = %v, want refused %v", host, err, refused)
		}
	}
}

// TestControlRefusesBeforeConnect dials a listener on loopback through a
// net.Dialer whose Control is the policy: the strict policy must refuse
// without connecting, the lax one connect.
func TestControlRefusesBeforeConnect(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	strict := net.Dialer{Control: Policy{}.Control}
	if c, err := strict.Dial("tcp", "localhost:"+port); !errors.Is(err, ErrRefused) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("strict dial of localhost: got %v, want ErrRefused", err)
	}
	lax := net.Dialer{Control: Policy{AllowPrivate: true}.Control}
	c, err := lax.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}
