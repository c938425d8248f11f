package governance

import "context"

// Requests to paths that produce no usage (count_tokens, model lists) are
// never budget-gated, and they must not take an inference request's place
// under an RPM limit: Claude Code sizes large contexts with count_tokens,
// and a gateway that counted those against the requests per minute
// refused the turns themselves (peer-behaviours.md, SAM). Yet a token must
// not be able to hammer them without bound. So they get a light bucket of
// their own (governance.md §0.11, §3.2): each RPM limit that applies to the
// request caps its scope's non-metered requests at the same rate, counted
// apart from its metered ones. TPM and concurrency do not apply (no tokens
// are produced, and the calls are short), nor does model policy: the
// request names no model that would be served, or only one to count
// tokens for.

// unmeteredSuffix keys an RPM limit's bucket of non-metered requests
// apart from its own.
const unmeteredSuffix = "#unmetered"

// admitUnmetered checks a non-metered request against the light buckets
// of the RPM limits that apply to it, and returns a *Refusal when one is
// spent (or ctx's error if the caller left while waiting). It holds
// nothing afterwards, so there is no Admission to finish.
func (g *Governor) admitUnmetered(ctx context.Context, req Request) error {
	p := g.policies()
	if p == nil || len(p.Limits) == 0 {
		return nil
	}
	var limits []Limit
	for _, l := range p.Limits {
		if l.RPM > 0 && l.Matches(req.Scope, req.Model) {
			limits = append(limits, Limit{ID: limitKey(l) + unmeteredSuffix, Selector: l.Selector, RPM: l.RPM, Mode: l.Mode})
		}
	}
	if len(limits) == 0 {
		return nil
	}
	permit, ref, err := g.limiter.Acquire(ctx, req.RequestID, limits, 0)
	switch {
	case ref != nil:
		return ref
	case err != nil && ctx.Err() != nil:
		return ctx.Err()
	case err != nil:
		g.log.Warn("rate limiter failed on a non-metered request", "request_id", req.RequestID, "err", err)
		return &Refusal{Kind: RefuseUnavailable, RetryAfter: UnavailableRetryAfter,
			Message: "tollgate: cannot check this request's rate limits right now; retry shortly"}
	}
	// An RPM-only permit holds no slot and no tokens.
	if permit != nil {
		permit.Release(0)
	}
	return nil
}
