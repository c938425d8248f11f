package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/metering/ledger"
	"github.com/tollgate/tollgate/registry"
	"github.com/tollgate/tollgate/resolver"
)

// UsageQuerier answers the usage API.
type UsageQuerier interface {
	Query(ctx context.Context, q ledger.UsageQuery) ([]ledger.UsageRow, error)
}

// adminPrefix is where the admin API lives.
const adminPrefix = "/admin/v1"

// adminRoutes mounts the admin API. It calls the same resolver methods as
// the CLI, so the two cannot drift.
func (s *Server) adminRoutes(r fiber.Router) {
	a := s.cfg.Admin
	t := s.trail()
	r.Use(s.auditActor)
	g := &adminMux{r: r}
	defer g.fallback()
	g.Post("/tokens", func(c *fiber.Ctx) error {
		var in struct {
			Workspace string `json:"workspace"`
			Project   string `json:"project"`
			User      string `json:"user"`
			Harness   string `json:"harness"`
			TTL       string `json:"ttl"`
			Model     string `json:"model"`
		}
		if err := decodeJSON(c, &in); err != nil {
			return err
		}
		// Every problem is reported at once, before a token exists: a token
		// is shown once, so it must not be issued into an answer that then
		// fails.
		var probs []string
		var ttl time.Duration
		if in.TTL != "" {
			d, err := time.ParseDuration(in.TTL)
			if err != nil {
				probs = append(probs, fmt.Sprintf("ttl %q is not a duration such as 24h", in.TTL))
			}
			ttl = d
		}
		spec := resolver.TokenSpec{Workspace: in.Workspace, Project: in.Project, User: in.User, Harness: in.Harness, TTL: ttl}
		if err := a.CheckTokenSpec(spec); err != nil {
			probs = append(probs, err.Error())
		}
		reg := s.cfg.Registry.Current()
		if in.Harness != "" {
			_, err := reg.Setup(in.Harness, registry.EnvOptions{ProxyURL: s.cfg.PublicURL, Token: "tgw_", Model: in.Model})
			if err != nil && !errors.Is(err, registry.ErrUnknownHarness) {
				probs = append(probs, err.Error())
			}
		}
		if len(probs) > 0 {
			return newError(kindBadRequest, "%s", strings.Join(probs, "; "))
		}
		tok, info, err := a.IssueToken(c.UserContext(), spec)
		if err != nil {
			return err
		}
		s.audited(c, t.TokenIssued(c.UserContext(), info, tok))
		out := struct {
			Token string             `json:"token"`
			Info  resolver.TokenInfo `json:"info"`
			// Setups holds the environment for the token's harness, or for
			// every harness when the token is not tied to one.
			Setups []*registry.Setup `json:"setups"`
		}{Token: tok, Info: info}
		if out.Setups, err = reg.TokenSetups(in.Harness, registry.EnvOptions{ProxyURL: s.cfg.PublicURL, Token: tok, Model: in.Model}); err != nil {
			return err
		}
		return c.Status(fiber.StatusCreated).JSON(out)
	})
	g.Get("/tokens", func(c *fiber.Ctx) error {
		toks, err := a.ListTokens(c.UserContext(), resolver.TokenFilter{
			Workspace: c.Query("workspace"), Project: c.Query("project"), User: c.Query("user"),
			IncludeRevoked: c.QueryBool("all"),
		})
		if err != nil {
			return err
		}
		return c.JSON(fiber.Map{"tokens": nonNil(toks)})
	})
	g.Delete("/tokens/:id", func(c *fiber.Ctx) error {
		if err := a.RevokeToken(c.UserContext(), c.Params("id")); err != nil {
			return err
		}
		s.audited(c, t.TokenRevoked(c.UserContext(), c.Params("id")))
		return c.JSON(fiber.Map{"revoked": c.Params("id")})
	})

	g.Post("/credentials", func(c *fiber.Ctx) error {
		var in struct {
			Name     string `json:"name"`
			Provider string `json:"provider"`
			Key      string `json:"key"`
			BaseURL  string `json:"base_url"`
		}
		if err := decodeJSON(c, &in); err != nil {
			return err
		}
		cr, err := a.CreateCredential(c.UserContext(), resolver.CredentialSpec{
			Name: in.Name, Provider: in.Provider, Secret: resolver.NewSecret(in.Key), BaseURL: in.BaseURL,
		})
		if err != nil {
			return err
		}
		s.audited(c, t.CredentialCreated(c.UserContext(), cr, in.Key))
		return c.Status(fiber.StatusCreated).JSON(cr)
	})
	g.Put("/platform-keys/:provider", func(c *fiber.Ctx) error {
		var in struct {
			Key string `json:"key"`
		}
		if err := decodeJSON(c, &in); err != nil {
			return err
		}
		cr, err := a.SetPlatformKey(c.UserContext(), c.Params("provider"), resolver.NewSecret(in.Key))
		if err != nil {
			return err
		}
		s.audited(c, t.PlatformKeySet(c.UserContext(), cr, in.Key))
		return c.JSON(cr)
	})
	g.Delete("/platform-keys/:provider", func(c *fiber.Ctx) error {
		cr, err := a.DeletePlatformKey(c.UserContext(), c.Params("provider"))
		if err != nil {
			return err
		}
		s.audited(c, t.PlatformKeyDeleted(c.UserContext(), cr))
		return c.SendStatus(fiber.StatusNoContent)
	})
	g.Get("/credentials", func(c *fiber.Ctx) error {
		crs, err := a.ListCredentials(c.UserContext())
		if err != nil {
			return err
		}
		return c.JSON(fiber.Map{"credentials": nonNil(crs)})
	})
	g.Post("/credentials/:id/disable", func(c *fiber.Ctx) error {
		return s.auditedDone(c, a.DisableCredential(c.UserContext(), c.Params("id")), func() error {
			return t.CredentialChanged(c.UserContext(), "disable", c.Params("id"))
		})
	})
	g.Post("/credentials/:id/enable", func(c *fiber.Ctx) error {
		return s.auditedDone(c, a.EnableCredential(c.UserContext(), c.Params("id")), func() error {
			return t.CredentialChanged(c.UserContext(), "enable", c.Params("id"))
		})
	})
	g.Delete("/credentials/:id", func(c *fiber.Ctx) error {
		return s.auditedDone(c, a.DeleteCredential(c.UserContext(), c.Params("id")), func() error {
			return t.CredentialChanged(c.UserContext(), "delete", c.Params("id"))
		})
	})

	g.Post("/bindings", func(c *fiber.Ctx) error {
		var in bindingIn
		if err := decodeJSON(c, &in); err != nil {
			return err
		}
		cands, err := in.candidates()
		if err != nil {
			return err
		}
		// One transaction: bound and then deactivated would be live, and
		// cacheable by another replica, in between.
		b, err := a.BindCandidates(c.UserContext(), in.BindingKey, cands, resolver.BindOptions{Inactive: in.Active != nil && !*in.Active})
		if err != nil {
			return err
		}
		s.audited(c, t.Bound(c.UserContext(), b))
		return c.Status(fiber.StatusCreated).JSON(b)
	})
	g.Get("/bindings", func(c *fiber.Ctx) error {
		bs, err := a.ListBindings(c.UserContext(), resolver.BindingFilter{
			Tier: c.Query("tier"), ScopeID: c.Query("scope_id"), Dialect: c.Query("dialect"), CredentialID: c.Query("credential_id"),
		})
		if err != nil {
			return err
		}
		return c.JSON(fiber.Map{"bindings": nonNil(bs)})
	})
	bindingOp := func(verb string, op func(ctx context.Context, k resolver.BindingKey) error) fiber.Handler {
		return func(c *fiber.Ctx) error {
			var k resolver.BindingKey
			if err := decodeJSON(c, &k); err != nil {
				return err
			}
			return s.auditedDone(c, op(c.UserContext(), k), func() error { return t.BindingChanged(c.UserContext(), verb, k) })
		}
	}
	g.Post("/bindings/unbind", bindingOp("unbind", a.Unbind))
	g.Post("/bindings/activate", bindingOp("activate", func(ctx context.Context, k resolver.BindingKey) error {
		return a.SetBindingActive(ctx, k, true)
	}))
	g.Post("/bindings/deactivate", bindingOp("deactivate", func(ctx context.Context, k resolver.BindingKey) error {
		return a.SetBindingActive(ctx, k, false)
	}))

	g.Get("/resolution", func(c *fiber.Ctx) error {
		if c.Query("project") == "" || c.Query("user") == "" {
			return newError(kindBadRequest, "resolution needs ?project= and ?user=")
		}
		rows, err := a.ResolutionView(c.UserContext(), c.Query("project"), c.Query("user"))
		if err != nil {
			return err
		}
		s.fillHealth(rows)
		out := fiber.Map{"project": c.Query("project"), "user": c.Query("user"), "resolutions": nonNil(rows)}
		if s.cfg.Policies != nil || s.cfg.Governor != nil {
			ps, err := s.effectivePolicies(c.UserContext(), governance.Scope{Project: c.Query("project"), User: c.Query("user")}, "")
			if err != nil {
				return err
			}
			out["policies"] = ps
		}
		return c.JSON(out)
	})
	if s.cfg.Policies != nil {
		s.governanceRoutes(g)
	}

	if s.cfg.Usage != nil {
		g.Get("/usage", s.usage)
		s.usageAnalyticsRoutes(g)
	}
	if s.cfg.Audit != nil {
		g.Get("/audit", s.auditLog)
	}
}

// bindingIn is the body of POST /bindings: one credential_id, as before
// bindings had several, or credentials in the order to try them.
type bindingIn struct {
	resolver.BindingKey
	CredentialID string `json:"credential_id"`
	Credentials  []struct {
		ID string `json:"id"`
		// Priority defaults to the entry's index, so a plain list is a
		// failover chain; equal priorities share traffic by weight.
		Priority *int `json:"priority"`
		// Weight defaults to 1; an explicit 0 is refused, not defaulted.
		Weight *int `json:"weight"`
	} `json:"credentials"`
	Active *bool `json:"active"`
}

// candidates turns the body into the resolver's candidates; the resolver
// checks the rest (ids, ranges, duplicates, dialects), as for the CLI.
func (in *bindingIn) candidates() ([]resolver.BindCandidate, error) {
	switch {
	case in.CredentialID != "" && in.Credentials != nil:
		return nil, newError(kindBadRequest, "give credential_id or credentials, not both")
	case in.Credentials == nil:
		return []resolver.BindCandidate{{CredentialID: in.CredentialID}}, nil
	case len(in.Credentials) == 0:
		return nil, newError(kindBadRequest, "credentials must name at least one credential")
	}
	var probs []string
	out := make([]resolver.BindCandidate, len(in.Credentials))
	for i, c := range in.Credentials {
		out[i] = resolver.BindCandidate{CredentialID: c.ID, Priority: i, Weight: 1}
		if c.Priority != nil {
			out[i].Priority = *c.Priority
		}
		if c.Weight != nil {
			if *c.Weight == 0 {
				probs = append(probs, fmt.Sprintf("credentials[%d]: weight must be at least 1 (give a standby a later priority instead)", i))
			}
			out[i].Weight = *c.Weight
		}
	}
	if len(probs) > 0 {
		return nil, newError(kindBadRequest, "%s", strings.Join(probs, "; "))
	}
	return out, nil
}

// usage serves GET /admin/v1/usage?from=&to=&group_by=&format=json|csv,
// filtered by project=, user=, workspace=, harness=, model=, service_tier=
// and session=.
func (s *Server) usage(c *fiber.Ctx) error {
	q, err := ledger.ParseUsageQuery(c.Query("from"), c.Query("to"), c.Query("group_by", "model"), s.cfg.timeNow())
	if err != nil {
		return err
	}
	q.Project, q.User, q.Workspace = c.Query("project"), c.Query("user"), c.Query("workspace")
	q.ServiceTier, q.Session = c.Query("service_tier"), c.Query("session")
	q.Harness, q.Model = c.Query("harness"), c.Query("model")
	rows, err := s.cfg.Usage.Query(c.UserContext(), q)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	switch c.Query("format", "json") {
	case "json":
		c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
		err = ledger.WriteJSON(&buf, q.GroupBy, rows)
	case "csv":
		c.Set(fiber.HeaderContentType, "text/csv; charset=utf-8")
		c.Set(fiber.HeaderContentDisposition, `attachment; filename="tollgate-usage.csv"`)
		err = ledger.WriteCSV(&buf, q.GroupBy, rows)
	default:
		return newError(kindBadRequest, "format must be json or csv")
	}
	if err != nil {
		return err
	}
	return c.Send(buf.Bytes())
}

// adminMux mounts admin routes and remembers them, so a known path asked
// with the wrong method gets 405 and its Allow header instead of falling
// through to the proxy's catch-all and a misleading 404.
type adminMux struct {
	r      fiber.Router
	routes []adminRoute
}

type adminRoute struct {
	method string
	// segs is the path split at '/'; ":x" matches any one segment.
	segs []string
}

func (m *adminMux) add(method, path string, h fiber.Handler) {
	m.r.Add(method, path, h)
	m.routes = append(m.routes, adminRoute{method: method, segs: strings.Split(strings.Trim(path, "/"), "/")})
	if method == fiber.MethodGet {
		// fiber answers HEAD on every GET route.
		m.r.Add(fiber.MethodHead, path, h)
		m.routes = append(m.routes, adminRoute{method: fiber.MethodHead, segs: m.routes[len(m.routes)-1].segs})
	}
}

func (m *adminMux) Get(path string, h fiber.Handler)    { m.add(fiber.MethodGet, path, h) }
func (m *adminMux) Post(path string, h fiber.Handler)   { m.add(fiber.MethodPost, path, h) }
func (m *adminMux) Put(path string, h fiber.Handler)    { m.add(fiber.MethodPut, path, h) }
func (m *adminMux) Delete(path string, h fiber.Handler) { m.add(fiber.MethodDelete, path, h) }

// fallback answers every admin request no route took: 405 naming the
// methods the path has, or 404 naming none.
func (m *adminMux) fallback() {
	prefix := adminPrefix
	m.r.Use(func(c *fiber.Ctx) error {
		rest := strings.TrimPrefix(string(c.Request().URI().Path()), prefix)
		segs := strings.Split(strings.Trim(rest, "/"), "/")
		var allow []string
		for _, r := range m.routes {
			if r.matches(segs) && !slices.Contains(allow, r.method) {
				allow = append(allow, r.method)
			}
		}
		if len(allow) == 0 {
			return newError(kindNotFound, "no admin endpoint %s%s; the admin API is described in the README", prefix, rest)
		}
		c.Set(fiber.HeaderAllow, strings.Join(allow, ", "))
		return newError(kindMethodNotAllowed, "%s %s%s is not allowed; use %s", c.Method(), prefix, rest, strings.Join(allow, ", "))
	})
}

func (r adminRoute) matches(segs []string) bool {
	if len(segs) != len(r.segs) {
		return false
	}
	for i, s := range r.segs {
		if !strings.HasPrefix(s, ":") && !strings.EqualFold(s, segs[i]) {
			return false
		}
	}
	return true
}

// decodeJSON strictly decodes the request body into v. An empty body is an
// empty object, so the answer names each missing field rather than "EOF".
func decodeJSON(c *fiber.Ctx, v any) error {
	// Not c.Body(): it would decode a Content-Encoding with no bound.
	// Admin bodies are at most adminBodyLimit decoded, from an admin:
	// no shared decode budget.
	body, _, err := requestBody(c, adminBodyLimit, nil)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return newError(kindBadRequest, "request body: %s", err.Error())
	}
	return nil
}

func done(c *fiber.Ctx, err error) error {
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"ok": true})
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
