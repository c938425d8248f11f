package proxy

import (
	"context"
	"net/http"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
)

// consoleTimeout bounds one console request's work (its queries): the
// 90-day usage page is the slowest, at a few seconds on a million records.
const consoleTimeout = 30 * time.Second

// consolePrefix is where Config.Console is mounted (console.Prefix; the
// proxy does not import the console, which knows no fiber).
const consolePrefix = "/ui"

// consoleRoutes mounts the web console, a net/http handler, wherever the
// admin API is served: it signs in with the admin token and writes what
// the admin API writes, so it is no more reachable than the API. The edge
// has read the body by then (bounded as the admin API's), which the
// adaptor hands over whole.
func (s *Server) consoleRoutes(r fiber.Router) {
	if s.cfg.Console == nil {
		return
	}
	console := s.cfg.Console
	// The adaptor hands the console fasthttp's RequestCtx as the request's
	// context, and database/sql watches a query's context from a goroutine
	// of its own: RequestCtx.Done races with the server's Shutdown (the
	// race detector caught it). The console's work gets a context of its
	// own instead: a client that leaves no longer cancels its queries,
	// which consoleTimeout bounds.
	h := adaptor.HTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), consoleTimeout)
		defer cancel()
		console.ServeHTTP(w, r.WithContext(ctx))
	}))
	r.Use(consolePrefix, func(c *fiber.Ctx) error {
		// fiber's routes match with or without the trailing slash; the
		// console's paths all have it.
		if string(c.Request().URI().Path()) == consolePrefix {
			return c.Redirect(consolePrefix+"/", fiber.StatusMovedPermanently)
		}
		return h(c)
	})
}
