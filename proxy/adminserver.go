package proxy

import (
	"context"
	"net"
	"time"

	"github.com/gofiber/fiber/v2"
)

// operatorTimeout bounds one admin API or console request's store work:
// the 90-day usage queries are the slowest, at a few seconds on a
// million records.
const operatorTimeout = 30 * time.Second

// operatorCtxKey carries an operator request's context to the console,
// a net/http handler that sees fasthttp's RequestCtx as its context.
const operatorCtxKey = "tollgate.operator.ctx"

// operatorContext gives an admin API or console request the context its
// store queries run under: it ends at shutdown (BaseContext), when the
// client leaves (departure.go) or after operatorTimeout. fiber's
// UserContext is otherwise context.Background(). The edge has read the
// body already, so the departure watch may hold the socket until the
// handler returns.
func (s *Server) operatorContext(c *fiber.Ctx) error {
	ctx, leave := context.WithCancelCause(s.cfg.BaseContext)
	defer leave(nil)
	ctx, cancel := context.WithTimeout(ctx, operatorTimeout)
	defer cancel()
	watch := watchDeparture(c.Context().Conn(), leave)
	defer watch.stop(time.Time{})
	c.SetUserContext(ctx)
	c.Context().SetUserValue(operatorCtxKey, ctx)
	return c.Next()
}

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
func (s *Server) ServeAdmin(ln net.Listener) error {
	if !s.track(ln) {
		return nil
	}
	return s.admin.Listener(ln)
}
