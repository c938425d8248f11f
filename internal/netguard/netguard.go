// Package netguard decides which network addresses a credential's base URL
// may reach. A base URL is set per credential by users of the admin API, so
// without it tollgate would send a provider key, and the caller's prompt,
// to whatever the URL names: the cloud metadata service, a database on
// loopback, a host on the private network. The registry's own provider
// URLs are an operator's choice and are not checked here.
package netguard

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
)

// AllowPrivateSetting is the setting that lets base URLs reach private and
// loopback addresses; refusals name it so an operator knows the way out.
const AllowPrivateSetting = "TOLLGATE_ALLOW_PRIVATE_BASE_URL=true"

// ErrRefused is wrapped by every refusal, at write time and at dial time.
var ErrRefused = errors.New("address refused for a credential base URL")

// Policy is what a credential's base URL may reach. The zero value admits
// public addresses only.
type Policy struct {
	// AllowPrivate admits loopback, private (RFC 1918, IPv6 ULA), CGNAT
	// and unspecified addresses: local model servers and tests. It never
	// admits link-local addresses, where cloud metadata services answer
	// (169.254.169.254, fd00:ec2::254) and hand out the host's cloud
	// credentials to any local caller; nor multicast and reserved ones,
	// which no provider uses.
	AllowPrivate bool
}

// class is why an address is not public; "" means public.
type class string

const (
	public      class = ""
	loopback    class = "loopback"
	private     class = "private"
	cgnat       class = "shared (CGNAT)"
	unspecified class = "unspecified"
	linkLocal   class = "link-local (cloud metadata)"
	multicast   class = "multicast"
	reserved    class = "reserved"
)

var (
	// AWS's IPv6 metadata address lies in the ULA range, which AllowPrivate
	// admits; it is refused as link-local is.
	awsMetadataV6 = netip.MustParseAddr("fd00:ec2::254")
	cgnatRange    = netip.MustParsePrefix("100.64.0.0/10")
	zeroNetwork   = netip.MustParsePrefix("0.0.0.0/8")
	classE        = netip.MustParsePrefix("240.0.0.0/4")
	// NAT64 gateways translate these to the IPv4 address in the low bits,
	// so 64:ff9b::a9fe:a9fe is the metadata service.
	nat64 = netip.MustParsePrefix("64:ff9b::/96")
)

func classify(a netip.Addr) class {
	a = a.Unmap()
	if nat64.Contains(a) {
		b := a.As16()
		a = netip.AddrFrom4([4]byte(b[12:]))
	}
	switch {
	case a == awsMetadataV6, a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast():
		return linkLocal
	case a.IsMulticast():
		return multicast
	case a.IsLoopback():
		return loopback
	case a.IsUnspecified(), zeroNetwork.Contains(a):
		return unspecified
	case a.IsPrivate():
		return private
	case cgnatRange.Contains(a):
		return cgnat
	case classE.Contains(a), !a.IsGlobalUnicast():
		return reserved
	}
	return public
}

// CheckAddr refuses a that p does not admit.
func (p Policy) CheckAddr(a netip.Addr) error {
	c := classify(a)
	switch c {
	case public:
		return nil
	case loopback, private, cgnat, unspecified:
		if p.AllowPrivate {
			return nil
		}
		return fmt.Errorf("%w: %s is a %s address; set %s to allow private and loopback base URLs", ErrRefused, a.Unmap(), c, AllowPrivateSetting)
	}
	return fmt.Errorf("%w: %s is a %s address, which credential base URLs may never reach", ErrRefused, a.Unmap(), c)
}

// CheckHost refuses a URL host (without port) that is an address p does
// not admit, or a localhost name (RFC 6761: always loopback) when p does
// not admit loopback. Other names are checked when they are dialled: what
// they resolve to now says nothing about what they resolve to then.
func (p Policy) CheckHost(host string) error {
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return p.CheckAddr(netip.AddrFrom4([4]byte{127, 0, 0, 1}))
	}
	a, err := netip.ParseAddr(strings.Trim(h, "[]"))
	if err != nil {
		return nil
	}
	return p.CheckAddr(a)
}

// Control is a net.Dialer Control function: it runs after name resolution
// and before connect, with the address actually dialled, so a name that
// resolved to a public address when the credential was written and to the
// metadata service now (DNS rebinding) is still refused.
func (p Policy) Control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot parse dialled address", ErrRefused)
	}
	return p.CheckAddr(ap.Addr())
}
