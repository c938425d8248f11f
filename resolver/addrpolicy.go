package resolver

import "github.com/tollgate/tollgate/internal/netguard"

// baseURLPolicy is what a credential's base URL may reach. checkBaseURL
// applies it to address literals and localhost names, when a credential is
// written and again at use; the proxy applies the same policy to the
// address it dials, which is where names are judged.
func (s *Service) baseURLPolicy() netguard.Policy {
	return netguard.Policy{AllowPrivate: s.cfg.AllowPrivateBaseURL}
}
