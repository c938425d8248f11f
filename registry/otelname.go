package registry

// OTelName is the gen_ai.provider.name metrics report for the named
// provider: its otel_name (load defaults it to the name). A provider this
// registry does not know keeps its own name, so a record from before a
// reload still gets a label.
func (r *Registry) OTelName(provider string) string {
	if p, ok := r.providers[provider]; ok && p.OTelName != "" {
		return p.OTelName
	}
	return provider
}
