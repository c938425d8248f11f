package proxy

import (
	"context"
	"net/http"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
)

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
	// race detector caught it). The console's work runs under the
	// operator context instead (operatorContext: shutdown, departure,
	// operatorTimeout).
	h := adaptor.HTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, ok := r.Context().Value(operatorCtxKey).(context.Context)
		if !ok { // not mounted behind operatorContext: still bounded
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(context.WithoutCancel(r.Context()), operatorTimeout)
			defer cancel()
		}
		console.ServeHTTP(w, r.WithContext(ctx))
	}))
	r.Use(consolePrefix, s.operatorContext, func(c *fiber.Ctx) error {
		// fiber's routes match with or without the trailing slash; the
		// console's paths all have it.
		if string(c.Request().URI().Path()) == consolePrefix {
			return c.Redirect(consolePrefix+"/", fiber.StatusMovedPermanently)
		}
		return h(c)
	})
}
