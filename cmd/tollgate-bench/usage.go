package main

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"

	_ "modernc.org/sqlite" // the driver tollgate's own store uses

	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// usageCheck compares tollgate's usage_records with the fake provider's
// fixed usage (benchmark-method.md §6, usage exactness).
type usageCheck struct {
	Rows       int            `json:"rows"`
	Exact      int            `json:"exact"`
	Streams    int            `json:"streams"`
	ByOutcome  map[string]int `json:"by_outcome"`
	BytesOK    int            `json:"bytes_out_equal_to_direct"`
	Expected   map[string]int `json:"expected_tokens"`
	FirstBad   string         `json:"first_mismatch,omitempty"`
	SpoolBytes int64          `json:"spool_bytes_left"`
}

// checkUsage reads every usage record after tollgate exited.
func checkUsage(ctx context.Context, dbPath, spoolDir string, body, stream ref) (*usageCheck, error) {
	want := upstreamtest.DefaultUsage.Normalised(upstreamtest.OpenAIChat)
	uc := &usageCheck{ByOutcome: map[string]int{}, Expected: map[string]int{
		"input_uncached": int(want.InputUncached), "cache_read": int(want.CacheRead),
		"cache_write_5m": int(want.CacheWrite5m), "cache_write_1h": int(want.CacheWrite1h),
		"output": int(want.Output), "reasoning": int(want.Reasoning),
	}}
	_ = filepath.Walk(spoolDir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && filepath.Ext(fi.Name()) != ".lock" {
			uc.SpoolBytes += fi.Size()
		}
		return nil
	})
	db, err := sql.Open("sqlite", "file:"+dbPath+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		return uc, err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, `SELECT request_id, stream, status, outcome, usage_source,
		input_uncached, cache_read, cache_write_5m, cache_write_1h, input_other,
		output_tokens, reasoning_tokens, bytes_out FROM usage_records`)
	if err != nil {
		return uc, err
	}
	defer rows.Close()
	for rows.Next() {
		var (
			id, outcome, source                string
			isStream                           bool
			status                             int
			in, cr, cw5, cw1, other, out, reas sql.NullInt64
			bytesOut                           int64
		)
		if err := rows.Scan(&id, &isStream, &status, &outcome, &source, &in, &cr, &cw5, &cw1, &other, &out, &reas, &bytesOut); err != nil {
			return uc, err
		}
		uc.Rows++
		uc.ByOutcome[outcome]++
		if isStream {
			uc.Streams++
		}
		wantBytes := int64(body.size)
		if isStream {
			wantBytes = int64(stream.size)
		}
		if bytesOut == wantBytes {
			uc.BytesOK++
		}
		eq := func(v sql.NullInt64, w int64) bool { return (v.Valid && v.Int64 == w) || (!v.Valid && w == 0) }
		if status == 200 && outcome == "ok" && source == "upstream" &&
			eq(in, want.InputUncached) && eq(cr, want.CacheRead) && eq(cw5, want.CacheWrite5m) &&
			eq(cw1, want.CacheWrite1h) && eq(other, 0) && eq(out, want.Output) && eq(reas, want.Reasoning) {
			uc.Exact++
		} else if uc.FirstBad == "" {
			uc.FirstBad = fmt.Sprintf("%s: stream=%v status=%d outcome=%s source=%s in=%v cache_read=%v out=%v reasoning=%v",
				id, isStream, status, outcome, source, in, cr, out, reas)
		}
	}
	return uc, rows.Err()
}
