package proxy

import (
	"context"
	"encoding/json"
	"slices"
	"strings"

	"github.com/gofiber/fiber/v2"

	"github.com/tollgate/tollgate/audit"
	"github.com/tollgate/tollgate/resolver"
)

// AuditTrail turns each admin write into its audit entry. The admin API
// and the CLI both call it after a write succeeds, so an action is named
// and described one way whichever door it came through; the actor is the
// one the caller put in ctx (audit.WithActor). The resolver and governance
// commit their own transactions, so each entry is appended right after the
// write: a failed write records nothing, a crash in between loses the
// entry. A nil Log records nothing.
type AuditTrail struct {
	Log *audit.Log
	// Secrets are redacted from every entry besides those a write names
	// (the admin API's token).
	Secrets []string
}

func (t AuditTrail) record(ctx context.Context, action, target string, change map[string]any, secrets ...string) error {
	if t.Log == nil {
		return nil
	}
	for k, v := range change {
		if v == "" { // a field left unset is no change
			delete(change, k)
		}
	}
	return t.Log.Record(ctx, action, target, change, append(secrets, t.Secrets...)...)
}

// TokenIssued records token.issue; token is the issued token, redacted.
func (t AuditTrail) TokenIssued(ctx context.Context, info resolver.TokenInfo, token string) error {
	return t.record(ctx, "token.issue", info.ID, map[string]any{
		"workspace": info.Workspace, "project": info.Project, "user": info.User, "harness": info.Harness,
		"expires_at": info.ExpiresAt,
	}, token)
}

// TokenRevoked records token.revoke.
func (t AuditTrail) TokenRevoked(ctx context.Context, id string) error {
	return t.record(ctx, "token.revoke", id, nil)
}

// CredentialCreated records credential.create; secret is its key, redacted.
func (t AuditTrail) CredentialCreated(ctx context.Context, cr resolver.Credential, secret string) error {
	return t.record(ctx, "credential.create", cr.ID, map[string]any{"name": cr.Name, "provider": cr.Provider, "base_url": cr.BaseURL}, secret)
}

// PlatformKeySet records platform_key.set; secret is the key, redacted.
func (t AuditTrail) PlatformKeySet(ctx context.Context, cr resolver.Credential, secret string) error {
	return t.record(ctx, "platform_key.set", cr.ID, map[string]any{"provider": cr.Provider}, secret)
}

// CredentialChanged records credential.VERB for disable, enable and delete.
func (t AuditTrail) CredentialChanged(ctx context.Context, verb, id string) error {
	return t.record(ctx, "credential."+verb, id, nil)
}

// MasterKeyRotated records credential.rotate_key: every credential was
// re-encrypted with a new master key. Neither key is named.
func (t AuditTrail) MasterKeyRotated(ctx context.Context, keys ...[]byte) error {
	var secrets []string
	for _, k := range keys {
		secrets = append(secrets, string(k))
	}
	return t.record(ctx, "credential.rotate_key", "*", map[string]any{"credentials": "all"}, secrets...)
}

// Bound records binding.bind with the credentials in the order tried.
func (t AuditTrail) Bound(ctx context.Context, b resolver.Binding) error {
	creds := make([]any, len(b.Credentials))
	for i, c := range b.Credentials {
		creds[i] = map[string]any{"id": c.CredentialID, "priority": c.Priority, "weight": c.Weight}
	}
	return t.record(ctx, "binding.bind", bindingTarget(b.BindingKey), map[string]any{"credentials": creds, "active": b.Active})
}

// BindingChanged records binding.VERB for unbind, activate and deactivate.
func (t AuditTrail) BindingChanged(ctx context.Context, verb string, k resolver.BindingKey) error {
	return t.record(ctx, "binding."+verb, bindingTarget(k), nil)
}

// PolicySet records NOUN.set (budget, limit, model_rule) with the policy
// as it was stored and what the write did: created, updated, unchanged,
// or replaced (a PUT). The target is the policy's id.
func (t AuditTrail) PolicySet(ctx context.Context, noun string, policy any, result string) error {
	var change map[string]any
	if b, err := json.Marshal(policy); err != nil {
		return err
	} else if err := json.Unmarshal(b, &change); err != nil {
		return err
	}
	// The id is the target; the stamps say nothing the entry's time does not.
	id, _ := change["id"].(string)
	delete(change, "id")
	delete(change, "created_at")
	delete(change, "updated_at")
	change["result"] = result
	return t.record(ctx, noun+".set", id, change)
}

// PolicyDeleted records NOUN.delete.
func (t AuditTrail) PolicyDeleted(ctx context.Context, noun, id string) error {
	return t.record(ctx, noun+".delete", id, nil)
}

func bindingTarget(k resolver.BindingKey) string {
	return audit.BindingTarget(k.Tier, k.ScopeID, k.Dialect, k.Harness)
}

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
