package audit

import (
	"context"
	"encoding/json"

	"github.com/tollgate/tollgate/resolver"
)

// Trail turns each admin write into its audit entry. The admin API, the
// CLI and the console call it after a write succeeds, so an action is
// named and described one way whichever door it came through; the actor is the
// one the caller put in ctx (WithActor). The resolver and governance
// commit their own transactions, so each entry is appended right after the
// write: a failed write records nothing, a crash in between loses the
// entry. A nil Log records nothing.
type Trail struct {
	Log *Log
	// Secrets are redacted from every entry besides those a write names
	// (the admin API's token).
	Secrets []string
}

func (t Trail) record(ctx context.Context, action, target string, change map[string]any, secrets ...string) error {
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
func (t Trail) TokenIssued(ctx context.Context, info resolver.TokenInfo, token string) error {
	return t.record(ctx, "token.issue", info.ID, map[string]any{
		"workspace": info.Workspace, "project": info.Project, "user": info.User, "harness": info.Harness,
		"expires_at": info.ExpiresAt,
	}, token)
}

// TokenRevoked records token.revoke.
func (t Trail) TokenRevoked(ctx context.Context, id string) error {
	return t.record(ctx, "token.revoke", id, nil)
}

// CredentialCreated records credential.create; secret is its key, redacted.
func (t Trail) CredentialCreated(ctx context.Context, cr resolver.Credential, secret string) error {
	return t.record(ctx, "credential.create", cr.ID, map[string]any{"name": cr.Name, "provider": cr.Provider, "base_url": cr.BaseURL}, secret)
}

// PlatformKeySet records platform_key.set; secret is the key, redacted.
func (t Trail) PlatformKeySet(ctx context.Context, cr resolver.Credential, secret string) error {
	return t.record(ctx, "platform_key.set", cr.ID, map[string]any{"provider": cr.Provider}, secret)
}

// PlatformKeyDeleted records platform_key.delete: cr is the removed key.
func (t Trail) PlatformKeyDeleted(ctx context.Context, cr resolver.Credential) error {
	return t.record(ctx, "platform_key.delete", cr.ID, map[string]any{"provider": cr.Provider})
}

// CredentialChanged records credential.VERB for disable, enable and delete.
func (t Trail) CredentialChanged(ctx context.Context, verb, id string) error {
	return t.record(ctx, "credential."+verb, id, nil)
}

// MasterKeyRotated records credential.rotate_key: every credential was
// re-encrypted with a new master key. Neither key is named.
func (t Trail) MasterKeyRotated(ctx context.Context, keys ...[]byte) error {
	var secrets []string
	for _, k := range keys {
		secrets = append(secrets, string(k))
	}
	return t.record(ctx, "credential.rotate_key", "*", map[string]any{"credentials": "all"}, secrets...)
}

// Bound records binding.bind with the credentials in the order tried.
func (t Trail) Bound(ctx context.Context, b resolver.Binding) error {
	creds := make([]any, len(b.Credentials))
	for i, c := range b.Credentials {
		creds[i] = map[string]any{"id": c.CredentialID, "priority": c.Priority, "weight": c.Weight}
	}
	return t.record(ctx, "binding.bind", bindingTarget(b.BindingKey), map[string]any{"credentials": creds, "active": b.Active})
}

// BindingChanged records binding.VERB for unbind, activate and deactivate.
func (t Trail) BindingChanged(ctx context.Context, verb string, k resolver.BindingKey) error {
	return t.record(ctx, "binding."+verb, bindingTarget(k), nil)
}

// PolicySet records NOUN.set (budget, limit, model_rule) with the policy
// as it was stored and what the write did: created, updated, unchanged,
// or replaced (a PUT). The target is the policy's id.
func (t Trail) PolicySet(ctx context.Context, noun string, policy any, result string) error {
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
func (t Trail) PolicyDeleted(ctx context.Context, noun, id string) error {
	return t.record(ctx, noun+".delete", id, nil)
}

func bindingTarget(k resolver.BindingKey) string {
	return BindingTarget(k.Tier, k.ScopeID, k.Dialect, k.Harness)
}
