package ledger

import (
	"context"
	"fmt"
)

// ObjectRef names a stored provider object by the upstream id a request's
// answer carried, and the kind of credential it was created with.
type ObjectRef struct {
	UpstreamID string
	Provider   string
	Dialect    string
	// CredTier is the credential tier of the creating request: objects
	// live in the account of the key that made them.
	CredTier string
}

// ownersSQL reads at most two projects: one is an owner, two is a
// conflict the caller must refuse, and more would only cost a scan.
// The test for a non-empty id repeats the partial index's condition
// (usage_records_upstream): SQLite uses it only when the query implies it.
const ownersSQL = `SELECT DISTINCT project FROM usage_records
	WHERE upstream_id = $1 AND upstream_id <> '' AND provider = $2 AND dialect = $3 AND credential_tier = $4
	LIMIT 2`

// Owners returns the projects whose requests created ref: none when no
// record names it, more than one when records disagree.
func (s *Store) Owners(ctx context.Context, ref ObjectRef) ([]string, error) {
	if ref.UpstreamID == "" {
		return nil, nil
	}
	rows, err := s.db.QueryContext(ctx, ownersSQL, ref.UpstreamID, ref.Provider, ref.Dialect, ref.CredTier)
	if err != nil {
		return nil, fmt.Errorf("metering owners: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			return nil, fmt.Errorf("metering owners: %w", err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("metering owners: %w", err)
	}
	return out, nil
}
