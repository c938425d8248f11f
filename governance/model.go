package governance

// SKELETON (h5 owns this file): model policy.

// ResolveModel applies sc's model rules to a request for model: an alias
// (project first, then platform) names the model to send, then every
// level with allow rules must allow it and no level may deny it. It
// returns the model to send, or a *Refusal of kind RefuseModel whose message
// names the model, the scope and what is allowed.
func ResolveModel(rules []ModelRule, sc Scope, model string) (string, *Refusal) {
	return model, nil
}

// RewriteModel returns body with its top-level "model" string replaced by
// model and every other byte unchanged, so the provider's prompt cache
// still matches (a re-encoded body would not). It never edits body in
// place.
func RewriteModel(body []byte, model string) ([]byte, error) {
	return body, nil
}
