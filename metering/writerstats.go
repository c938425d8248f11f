package metering

// WriterStats counts what the durable writer (package ledger) did since it
// started. Every record that Record accepted ends up Inserted or a
// Duplicate, or is still in the queue or the spool, or is Quarantined or
// Dropped (and logged in full).
type WriterStats struct {
	Accepted   uint64 // Record calls
	Spilled    uint64 // queue full: left in the spool for the writer to read back
	Unspooled  uint64 // spool write failed or spool full: held in memory only
	Dropped    uint64 // neither spool nor queue could take it; logged with the record
	Inserted   uint64 // rows newly inserted into the store
	Duplicates uint64 // records the store already had (spool replays, spills)
	Retries    uint64 // failed store transactions
	Replayed   uint64 // records read back from spool segments
	TornLines  uint64 // unterminated last spool lines skipped (crash mid-append)
	BadLines   uint64 // complete but unreadable spool lines skipped (segment kept as *.bad)
	SyncErrors uint64 // failed spool fsyncs
	// Quarantined records were rejected by a store that otherwise works
	// (e.g. bad data); they are in quarantine.jsonl in the spool directory
	// and in the error log, not in the store.
	Quarantined uint64
	Queued      int   // records in the queue now
	SpoolBytes  int64 // bytes of spooled records not yet in the store (the backlog)
	SpoolDisk   int64 // bytes of spool segments on disk now, committed records included
	Segments    int   // spool segments on disk now
}

// StatsReporter is what RegisterWriter reads: the durable writer's
// counters. The type lives here, not in package ledger, because ledger
// imports metering for the Record.
type StatsReporter interface {
	Stats() WriterStats
}
