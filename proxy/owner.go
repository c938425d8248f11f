package proxy

import (
	"context"
	"strings"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/tidwall/gjson"

	"github.com/tollgate/tollgate/metering/ledger"
	"github.com/tollgate/tollgate/registry"
	"github.com/tollgate/tollgate/resolver"
)

// OwnerLookup says which projects created a stored provider object, from
// the usage records (ledger.Store).
type OwnerLookup interface {
	Owners(ctx context.Context, ref ledger.ObjectRef) ([]string, error)
}

// ownerIndexSize bounds the in-memory owner index: about 100 bytes an
// entry. It only has to cover the ids not yet flushed to the ledger, plus
// the recent ones a harness reads back; older ids cost one indexed query.
const ownerIndexSize = 16 << 10

// previousResponseField chains a Responses request onto a stored response:
// addressing one by id in a body, as GET /v1/responses/{id} does in a path.
const previousResponseField = "previous_response_id"

// ownerKey names a stored object: ids are the provider's, and objects of
// one dialect are not addressable through another.
type ownerKey struct {
	provider, dialect, id string
}

// ownerConflict marks an id that two projects' records claim; it belongs
// to neither.
const ownerConflict = ""

// owners answers who created a stored object made on a platform key. On
// the platform tier every project shares one provider account, so the
// provider cannot tell them apart and tollgate must; on a project or user
// key the provider's account boundary already does.
type owners struct {
	// recent is filled when a response's id is metered, so a GET right
	// after the POST works before the usage writer has flushed the record.
	recent *lru.Cache[ownerKey, string]
	ledger OwnerLookup
}

func newOwners(l OwnerLookup) *owners {
	c, _ := lru.New[ownerKey, string](ownerIndexSize) // errors only on size <= 0
	return &owners{recent: c, ledger: l}
}

// note records that project created the object k.
func (o *owners) note(k ownerKey, project string) {
	if prev, ok := o.recent.Peek(k); ok && prev != project {
		project = ownerConflict
	}
	o.recent.Add(k, project)
}

// owner returns the one project that created k; ok is false when none did
// or several claim it.
func (o *owners) owner(ctx context.Context, k ownerKey) (project string, ok bool, err error) {
	if p, hit := o.recent.Get(k); hit {
		return p, p != ownerConflict, nil
	}
	if o.ledger == nil {
		return "", false, nil
	}
	ps, err := o.ledger.Owners(ctx, ledger.ObjectRef{UpstreamID: k.id, Provider: k.provider, Dialect: k.dialect, CredTier: resolver.TierPlatform})
	if err != nil || len(ps) != 1 {
		return "", false, err
	}
	o.recent.Add(k, ps[0])
	return ps[0], true, nil
}

// storedObjectID returns the object id a request on path p addresses: the
// placeholder right after one of its dialect's metered paths
// (/v1/responses/{id}, /v1/responses/{id}/cancel). Such a path reads or
// changes what the metered path created.
func storedObjectID(d *registry.Dialect, p *registry.Path, rest string) (id, noun string, ok bool) {
	for i := range d.Paths {
		mp := &d.Paths[i]
		if !mp.Metered || !strings.HasPrefix(p.Pattern, mp.Pattern+"/{") {
			continue
		}
		after, found := strings.CutPrefix(rest, mp.Pattern+"/")
		if !found {
			continue
		}
		id, _, _ = strings.Cut(after, "/")
		return id, objectNoun(mp.Pattern), id != ""
	}
	return "", "", false
}

// storesObjects reports whether d has a path addressing what its metered
// paths create.
func storesObjects(d *registry.Dialect) bool {
	for i := range d.Paths {
		for j := range d.Paths {
			if d.Paths[j].Metered && strings.HasPrefix(d.Paths[i].Pattern, d.Paths[j].Pattern+"/{") {
				return true
			}
		}
	}
	return false
}

// objectNoun names what a metered path creates: "/v1/responses" makes a
// response.
func objectNoun(pattern string) string {
	return strings.TrimSuffix(pattern[strings.LastIndexByte(pattern, '/')+1:], "s")
}

// checkOwner refuses a request on a platform key that addresses a stored
// object another project created (or nobody did), by path or by
// previous_response_id, as 404: the answer must not tell a foreign object
// from a missing one.
func (s *Server) checkOwner(ctx context.Context, cl *call, rest string, body []byte) error {
	if cl.rec.CredTier != resolver.TierPlatform || !storesObjects(cl.dialect) {
		return nil
	}
	id, noun, ok := storedObjectID(cl.dialect, cl.path, rest)
	if !ok {
		v := gjson.GetBytes(body, previousResponseField)
		if v.Type != gjson.String || v.Str == "" {
			// Absent, or malformed, which the provider refuses on its own.
			return nil
		}
		id, noun = v.Str, "previous response"
	}
	project, ok, err := s.owners.owner(ctx, ownerKey{provider: cl.rec.Provider, dialect: cl.dialect.Name, id: id})
	if err != nil {
		return lookupError(ctx, &apiError{kind: kindUnavailable, msg: "tollgate could not check which project this " + noun + " belongs to; try again shortly", cause: err})
	}
	if !ok || project != cl.rec.Project {
		return newError(kindNotFound, "No %s found with id %q.", noun, id)
	}
	return nil
}

// noteOwner remembers the project that created the object id names, when
// it was made on a platform key. It reports whether there was an id.
func (cl *call) noteOwner(id string) bool {
	if id == "" {
		return false
	}
	if cl.rec.CredTier == resolver.TierPlatform && storesObjects(cl.dialect) {
		cl.s.owners.note(ownerKey{provider: cl.rec.Provider, dialect: cl.dialect.Name, id: id}, cl.rec.Project)
	}
	return true
}
