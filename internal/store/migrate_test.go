package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/internal/testkit"
)

// raceMigrations is shaped like tollgate's own: tables, an index, a column
// added later and a row written by a migration, so a migration applied
// twice shows as a second row.
var raceMigrations = []string{
	"CREATE TABLE mig_items (id TEXT PRIMARY KEY, n INTEGER NOT NULL);\nCREATE INDEX mig_items_n ON mig_items (n)",
	"CREATE TABLE mig_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);\nINSERT INTO mig_meta (name, value) VALUES ('seeded', 'yes')",
	"ALTER TABLE mig_items ADD COLUMN note TEXT",
}

// freshPostgres returns a DSN whose search_path is a new, empty schema, or
// skips when TOLLGATE_TEST_POSTGRES is unset. The search_path is a startup
// parameter of every connection, so separately opened DBs share the schema.
func freshPostgres(t *testing.T) string {
	t.Helper()
	pg := os.Getenv("TOLLGATE_TEST_POSTGRES")
	if pg == "" {
		t.Skip("TOLLGATE_TEST_POSTGRES not set")
	}
	return testkit.PostgresSchema(t, pg, "migrate_test_")
}

// openN opens n separate *DB on dsn, each with its own connection pool, as
// n processes would.
func openN(t *testing.T, dsn string, n int) []*store.DB {
	t.Helper()
	dbs := make([]*store.DB, n)
	for i := range dbs {
		db, err := store.Open(context.Background(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		dbs[i] = db
	}
	return dbs
}

// raceMigrate releases one Migrate per db at the same moment and returns
// their errors.
func raceMigrate(dbs []*store.DB, component string, migrations []string) []error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errs := make([]error, len(dbs))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, db := range dbs {
		wg.Go(func() {
			<-start
			errs[i] = db.Migrate(ctx, component, migrations)
		})
	}
	close(start)
	wg.Wait()
	return errs
}

// assertAppliedOnce checks that component's versions 1..n are recorded once
// each and that the seeding migration ran once.
func assertAppliedOnce(t *testing.T, db *store.DB, component string, n int) {
	t.Helper()
	ctx := context.Background()
	var rows, distinct, top int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*), COUNT(DISTINCT version), COALESCE(MAX(version), 0) FROM schema_migrations WHERE component = $1`, component).Scan(&rows, &distinct, &top); err != nil {
		t.Fatal(err)
	}
	if rows != n || distinct != n || top != n {
		t.Fatalf("schema_migrations for %s: %d rows, %d distinct versions, max %d; want %d of each", component, rows, distinct, top, n)
	}
	var seeded int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM mig_meta`).Scan(&seeded); err != nil {
		t.Fatal(err)
	}
	if seeded != 1 {
		t.Fatalf("mig_meta holds %d rows, want 1: a migration ran twice", seeded)
	}
}

// TestMigrateRaceOnPostgres: 8 migrators (8 pools) released together on an
// empty schema, 10 times. Without a lock, most lose the catalog race
// (23505 on pg_type_typname_nsp_index) or re-run a migration a peer has
// just applied.
func TestMigrateRaceOnPostgres(t *testing.T) {
	const trials, migrators = 10, 8
	failed := 0
	for trial := range trials {
		// A subtest per trial closes its pools before the next opens.
		t.Run(fmt.Sprint("trial", trial), func(t *testing.T) {
			dbs := openN(t, freshPostgres(t), migrators)
			for i, err := range raceMigrate(dbs, "racetest", raceMigrations) {
				if err != nil {
					failed++
					t.Errorf("migrator %d: %v", i, err)
				}
			}
			if !t.Failed() {
				assertAppliedOnce(t, dbs[0], "racetest", len(raceMigrations))
			}
		})
	}
	if failed > 0 {
		t.Logf("%d of %d migrators failed", failed, trials*migrators)
	}
}

// TestMigrateRaceOnSQLite: two DBs on one new file (a server and a CLI
// started together). _txlock=immediate serialises the migration
// transactions; the version must be re-read inside them.
func TestMigrateRaceOnSQLite(t *testing.T) {
	const trials = 10
	for trial := range trials {
		t.Run(fmt.Sprint("trial", trial), func(t *testing.T) {
			dbs := openN(t, filepath.Join(t.TempDir(), "race.db"), 2)
			for i, err := range raceMigrate(dbs, "racetest", raceMigrations) {
				if err != nil {
					t.Errorf("migrator %d: %v", i, err)
				}
			}
			if !t.Failed() {
				assertAppliedOnce(t, dbs[0], "racetest", len(raceMigrations))
			}
		})
	}
}

// freshDSNs returns, per engine, a function giving a new empty database:
// a SQLite file always, a PostgreSQL schema when TOLLGATE_TEST_POSTGRES is set.
func freshDSNs(t *testing.T) map[string]func(t *testing.T) string {
	m := map[string]func(t *testing.T) string{
		store.SQLite: func(t *testing.T) string { return filepath.Join(t.TempDir(), "fresh.db") },
	}
	if os.Getenv("TOLLGATE_TEST_POSTGRES") != "" {
		m[store.Postgres] = freshPostgres
	}
	return m
}

func mustMigrate(t *testing.T, db *store.DB, component string, migrations []string) {
	t.Helper()
	if err := db.Migrate(context.Background(), component, migrations); err != nil {
		t.Fatal(err)
	}
}

// TestMigrateRefusesNewerSchema: a binary that knows fewer migrations than
// the database has applied refuses to start on it, naming the component and
// both versions.
func TestMigrateRefusesNewerSchema(t *testing.T) {
	for engine, fresh := range freshDSNs(t) {
		t.Run(engine, func(t *testing.T) {
			db := openN(t, fresh(t), 1)[0]
			mustMigrate(t, db, "metering", raceMigrations)
			err := db.Migrate(context.Background(), "metering", raceMigrations[:2])
			if !errors.Is(err, store.ErrSchemaNewer) {
				t.Fatalf("older binary on a newer schema: got %v, want ErrSchemaNewer", err)
			}
			want := "database schema for component metering is at version 3, this tollgate knows 2: run the newer tollgate"
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
			// Another component's version is its own.
			mustMigrate(t, db, "other", raceMigrations[:0])
		})
	}
}

// TestMigrateStatementErrorRollsBack: a migration whose second statement
// fails leaves nothing of its first one, is not recorded, and the error
// names the component and the version.
func TestMigrateStatementErrorRollsBack(t *testing.T) {
	for engine, fresh := range freshDSNs(t) {
		t.Run(engine, func(t *testing.T) {
			db := openN(t, fresh(t), 1)[0]
			broken := append(raceMigrations[:1:1], "CREATE TABLE mig_half (a INTEGER);\nNOT SQL")
			err := db.Migrate(context.Background(), "broken", broken)
			if err == nil || !strings.Contains(err.Error(), "migrate broken v2: ") {
				t.Fatalf("got %v, want an error naming migrate broken v2", err)
			}
			var top int
			if err := db.QueryRowContext(context.Background(), `SELECT MAX(version) FROM schema_migrations WHERE component = 'broken'`).Scan(&top); err != nil {
				t.Fatal(err)
			}
			if top != 1 {
				t.Errorf("version after the failed migration: %d, want 1", top)
			}
			if _, err := db.ExecContext(context.Background(), `SELECT COUNT(*) FROM mig_half`); err == nil {
				t.Error("mig_half exists: the failed migration's first statement was not rolled back")
			}
		})
	}
}

// TestMigrateServerAndCLIStartedTogether: a server migrating two
// components and a CLI migrating one of them, released at the same moment
// on a new database, both succeed.
func TestMigrateServerAndCLIStartedTogether(t *testing.T) {
	metering := []string{
		"CREATE TABLE mig_usage (id TEXT PRIMARY KEY);\nCREATE INDEX mig_usage_id ON mig_usage (id)",
		"ALTER TABLE mig_usage ADD COLUMN tokens INTEGER",
	}
	for engine, fresh := range freshDSNs(t) {
		t.Run(engine, func(t *testing.T) {
			for trial := range 5 {
				t.Run(fmt.Sprint("trial", trial), func(t *testing.T) {
					dbs := openN(t, fresh(t), 2)
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					start := make(chan struct{})
					var server, cli error
					var wg sync.WaitGroup
					wg.Go(func() {
						<-start
						if server = dbs[0].Migrate(ctx, "resolver", raceMigrations); server == nil {
							server = dbs[0].Migrate(ctx, "metering", metering)
						}
					})
					wg.Go(func() {
						<-start
						cli = dbs[1].Migrate(ctx, "resolver", raceMigrations)
					})
					close(start)
					wg.Wait()
					if server != nil || cli != nil {
						t.Fatalf("server: %v; CLI: %v", server, cli)
					}
					assertAppliedOnce(t, dbs[0], "resolver", len(raceMigrations))
				})
			}
		})
	}
}

// unlockedMigrate is the Migrate of tollgate before the migration lock, as
// a replica still running the old binary does it during a rollout.
func unlockedMigrate(ctx context.Context, db *store.DB, component string, migrations []string) error {
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		component TEXT NOT NULL, version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL,
		PRIMARY KEY (component, version))`); err != nil {
		return err
	}
	var have int
	if err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations WHERE component = $1`, component).Scan(&have); err != nil {
		return err
	}
	for v := have + 1; v <= len(migrations); v++ {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		for _, stmt := range strings.Split(migrations[v-1], ";\n") {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				tx.Rollback()
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (component, version, applied_at) VALUES ($1, $2, $3)`, component, v, time.Now().UTC()); err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	return nil
}

// TestMigrateBesideAnUnlockedPeer: during a rollout, old replicas migrate
// without the lock. They may lose the race themselves, but a new replica
// that meets the catalog race (23505, 42P07) re-reads the version and
// carries on when the peer applied the migration.
func TestMigrateBesideAnUnlockedPeer(t *testing.T) {
	const trials = 10
	peerFailed := 0
	for trial := range trials {
		t.Run(fmt.Sprint("trial", trial), func(t *testing.T) {
			dbs := openN(t, freshPostgres(t), 6)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			start := make(chan struct{})
			errs := make([]error, len(dbs))
			var wg sync.WaitGroup
			for i, db := range dbs {
				wg.Go(func() {
					<-start
					if i%2 == 0 {
						errs[i] = unlockedMigrate(ctx, db, "racetest", raceMigrations)
					} else {
						errs[i] = db.Migrate(ctx, "racetest", raceMigrations)
					}
				})
			}
			close(start)
			wg.Wait()
			for i, err := range errs {
				switch {
				case err != nil && i%2 == 1:
					t.Errorf("new migrator %d: %v", i, err)
				case err != nil:
					peerFailed++
				}
			}
			if !t.Failed() {
				assertAppliedOnce(t, dbs[0], "racetest", len(raceMigrations))
			}
		})
	}
	t.Logf("unlocked peers failed %d of %d times", peerFailed, trials*3)
}

// TestMigrateNamesTheLockHolder: while another session holds the migration
// lock, a current schema still migrates at once (the fast path takes no
// lock), and a pending migration that cannot get the lock before the
// deadline fails naming the holder.
func TestMigrateNamesTheLockHolder(t *testing.T) {
	dsn := freshPostgres(t)
	db := openN(t, dsn, 1)[0]
	mustMigrate(t, db, "racetest", raceMigrations[:2])

	holder := openN(t, dsn+"&application_name=tollgate-holder-test", 1)[0]
	tx, err := holder.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`SELECT pg_advisory_xact_lock($1)`, store.MigrateLockKey); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.Migrate(ctx, "racetest", raceMigrations[:2]); err != nil {
		t.Fatalf("current schema while the lock is held: %v", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err = db.Migrate(ctx, "racetest", raceMigrations)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("pending migration while the lock is held: got %v, want a deadline", err)
	}
	for _, want := range []string{"migrate racetest v3", `application_name "tollgate-holder-test"`, `state "idle in transaction"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	t.Log(err)
	tx.Rollback()
	mustMigrate(t, db, "racetest", raceMigrations)
}
