package proxy

import (
	"net"

	"github.com/gofiber/fiber/v2"
)

// The admin listener serves the admin API and /metrics apart from the
// proxy: metrics name every project, model and what each spent, and the
// proxy port is open to every workspace. Bind it where only operators
// and the metrics scraper reach (TOLLGATE_ADMIN_ADDR, by default
// loopback).

// adminListenerRoutes are the admin listener's: health, metrics, the admin
// API and a 404 that names what this listener serves. No proxy route.
func (s *Server) adminListenerRoutes() {
	s.healthRoutes(s.admin)
	s.operatorRoutes(s.admin)
	s.admin.Use(func(c *fiber.Ctx) error {
		return newError(kindNotFound, "the admin listener serves only /admin/v1, /ui/ (the console, when the admin API is on), /metrics, /healthz and /readyz: inference is on the proxy port (TOLLGATE_ADDR)")
	})
}

// ServeAdmin serves the admin API and /metrics on ln until Shutdown.
func (s *Server) ServeAdmin(ln net.Listener) error { return s.admin.Listener(ln) }
