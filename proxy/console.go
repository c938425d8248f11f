package proxy

import (
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
	h := adaptor.HTTPHandler(s.cfg.Console)
	r.Use(consolePrefix, func(c *fiber.Ctx) error {
		// fiber's routes match with or without the trailing slash; the
		// console's paths all have it.
		if string(c.Request().URI().Path()) == consolePrefix {
			return c.Redirect(consolePrefix+"/", fiber.StatusMovedPermanently)
		}
		return h(c)
	})
}
