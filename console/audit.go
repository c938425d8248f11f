package console

import (
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/tollgate/tollgate/audit"
)

// auditPageSize is a screenful; ?limit= asks for another, within
// audit.MaxLimit.
const auditPageSize = 50

type auditRow struct {
	ID, At, ActorKind, Actor, Source, Action, Target string
	Change                                           []changeField
}

type changeField struct{ Name, Value string }

type auditData struct {
	// The filter as typed, shown again in the form.
	ActorKind, Actor, Action, Target, From, To string
	Kinds                                      []string
	Rows                                       []auditRow
	NextURL, FirstURL                          string
	Paged                                      bool
}

// auditFilterParams are the form's fields: audit.Params less the paging
// ones, which the page's links carry.
var auditFilterParams = []string{"actor_kind", "actor", "action", "target", "from", "to"}

func (c *Console) auditPage(w http.ResponseWriter, r *http.Request, s session) {
	if c.cfg.Audit.Log == nil {
		c.unavailable(w, r, s, "Audit log", "audit", "The audit log")
		return
	}
	q := r.URL.Query()
	d := auditData{ActorKind: q.Get("actor_kind"), Actor: q.Get("actor"), Action: q.Get("action"), Target: q.Get("target"),
		From: q.Get("from"), To: q.Get("to"), Kinds: []string{audit.KindAPI, audit.KindCLI, audit.KindConsole, audit.KindUnknown}}
	// One reading of the filter for the page, the API and the CLI
	// (audit.ParseFilter); empty fields are no filter.
	vals := map[string]string{}
	for _, k := range append(slices.Clone(auditFilterParams), "limit", "cursor") {
		if v := q.Get(k); v != "" {
			vals[k] = v
		}
	}
	if vals["limit"] == "" {
		vals["limit"] = strconv.Itoa(auditPageSize)
	}
	p := page{Title: "Audit log", Nav: "audit", SignedIn: true, CSRF: s.csrf}
	status := http.StatusOK
	f, err := audit.ParseFilter(vals)
	var res audit.Page
	if err == nil {
		res, err = c.cfg.Audit.Log.Query(r.Context(), f)
	}
	switch {
	case errors.Is(err, audit.ErrInvalidQuery):
		p.Error = err.Error()
		status = http.StatusBadRequest
	case err != nil:
		c.fail(w, r, s, err)
		return
	}
	for _, e := range res.Entries {
		d.Rows = append(d.Rows, auditRow{ID: e.ID, At: e.At.UTC().Format(time.DateTime), ActorKind: e.Actor.Kind, Actor: e.Actor.ID,
			Source: e.Source, Action: e.Action, Target: e.Target, Change: changeFields(e.Change)})
	}
	// Links keep the filter and the page size; the next page adds the
	// cursor the log returned.
	keep := url.Values{}
	for k, v := range vals {
		if k != "cursor" && (k != "limit" || v != strconv.Itoa(auditPageSize)) {
			keep.Set(k, v)
		}
	}
	d.FirstURL = Prefix + "audit?" + keep.Encode()
	d.Paged = q.Get("cursor") != ""
	if res.Next != "" {
		keep.Set("cursor", res.Next)
		d.NextURL = Prefix + "audit?" + keep.Encode()
	}
	p.Data = d
	c.render(w, r, status, "audit", p)
}

// changeFields lists an entry's change by field name; a value that is
// not a string is shown as its JSON. The log has redacted what a secret
// could be (package audit); the page shows only what it holds.
func changeFields(m map[string]any) []changeField {
	out := make([]changeField, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		v, ok := m[k].(string)
		if !ok {
			b, err := json.Marshal(m[k])
			if err != nil {
				v = "?"
			} else {
				v = string(b)
			}
		}
		out = append(out, changeField{Name: k, Value: v})
	}
	return out
}
