package proxy

import (
	"slices"
	"strings"

	"github.com/gofiber/fiber/v2"

	"github.com/tollgate/tollgate/audit"
)

// AuditTrail is audit.Trail: the naming of each admin write lives in
// package audit, so the console, which cannot import the proxy, records
// its writes through the same code as the admin API and the CLI.
type AuditTrail = audit.Trail

// trail is the server's AuditTrail: the admin token is never recorded.
func (s *Server) trail() AuditTrail {
	return AuditTrail{Log: s.cfg.Audit, Secrets: []string{s.cfg.AdminToken}}
}

// audited is the admin API's end of a write that succeeded: the entry is
// appended and a failure to append is logged, not answered. The write
// has committed; an error would read as "not done" and invite a retry
// that repeats it.
func (s *Server) audited(c *fiber.Ctx, err error) {
	if err != nil {
		s.log.Error("audit entry not recorded", "path", c.Path(), "method", c.Method(), "err", err)
	}
}

// auditActor names the admin API's caller for the entries its writes make:
// the admin token's fingerprint and the client's address. A caller that
// named itself already (the console, with its session) is kept.
func (s *Server) auditActor(c *fiber.Ctx) error {
	if _, _, ok := audit.ActorFrom(c.UserContext()); !ok {
		a := audit.Actor{Kind: audit.KindAPI, ID: audit.Fingerprint(s.cfg.AdminToken)}
		c.SetUserContext(audit.WithActor(c.UserContext(), a, c.Context().RemoteIP().String()))
	}
	return c.Next()
}

// auditLog serves GET /admin/v1/audit: the newest entries matching the
// query's filters (audit.Params), a page at a time. A parameter it does
// not know, or one given twice, is refused by name rather than ignored:
// an ignored filter would show more than was asked as if it were all.
func (s *Server) auditLog(c *fiber.Ctx) error {
	vals := map[string]string{}
	var twice []string
	c.Request().URI().QueryArgs().VisitAll(func(k, v []byte) {
		if _, ok := vals[string(k)]; ok && !slices.Contains(twice, string(k)) {
			twice = append(twice, string(k))
		}
		vals[string(k)] = string(v)
	})
	if len(twice) > 0 {
		return newError(kindBadRequest, "parameter %s given more than once: the audit log takes each once", strings.Join(twice, ", "))
	}
	f, err := audit.ParseFilter(vals)
	if err != nil {
		return err
	}
	p, err := s.cfg.Audit.Query(c.UserContext(), f)
	if err != nil {
		return err
	}
	return c.JSON(p)
}

// auditedDone answers a write as done does, recording it first when it
// succeeded.
func (s *Server) auditedDone(c *fiber.Ctx, err error, record func() error) error {
	if err == nil {
		s.audited(c, record())
	}
	return done(c, err)
}
