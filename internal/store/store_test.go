package store

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"testing"
)

// testDSNs returns the engines to run against: always a SQLite file, and
// PostgreSQL when TOLLGATE_TEST_POSTGRES names a database.
func testDSNs(t *testing.T) map[string]string {
	m := map[string]string{SQLite: filepath.Join(t.TempDir(), "t.db")}
	if pg := os.Getenv("TOLLGATE_TEST_POSTGRES"); pg != "" {
		m[Postgres] = pg
	}
	return m
}

func TestMigrateAppliesOnceInOrder(t *testing.T) {
	for engine, dsn := range testDSNs(t) {
		t.Run(engine, func(t *testing.T) {
			ctx := context.Background()
			db, err := Open(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			comp := "storetest_" + engine
			db.ExecContext(ctx, `DROP TABLE IF EXISTS storetest_kv`)
			db.ExecContext(ctx, `DELETE FROM schema_migrations WHERE component = $1`, comp)
			migs := []string{
				"CREATE TABLE storetest_kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL)",
				"INSERT INTO storetest_kv (k, v) VALUES ('a', 1);\nINSERT INTO storetest_kv (k, v) VALUES ('b', 2)",
			}
			for i := 0; i < 2; i++ {
				if err := db.Migrate(ctx, comp, migs); err != nil {
					t.Fatalf("run %d: %v", i, err)
				}
			}
			var n, sum int
			if err := db.QueryRowContext(ctx, `SELECT COUNT(*), SUM(v) FROM storetest_kv WHERE v >= $1`, 1).Scan(&n, &sum); err != nil {
				t.Fatal(err)
			}
			if n != 2 || sum != 3 {
				t.Fatalf("got %d rows summing %d, want 2 rows summing 3 (migrations applied more than once?)", n, sum)
			}
			if err := db.Migrate(ctx, comp, append(migs, "NOT SQL")); err == nil {
				t.Fatal("a broken migration was accepted")
			}
		})
	}
}

// Every SQLite connection gets the same settings, not just the first: the
// pool opens more under concurrency, and a connection without WAL or the
// busy timeout fails writes with "database is locked".
func TestSQLiteConnectionSettings(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	conns := make([]*sql.Conn, 3)
	for i := range conns {
		if conns[i], err = db.Conn(ctx); err != nil {
			t.Fatal(err)
		}
		defer conns[i].Close()
	}
	for i, c := range conns {
		for pragma, want := range map[string]string{"cache_size": "-128", "journal_mode": "wal", "busy_timeout": "10000", "foreign_keys": "1", "synchronous": "1"} {
			var got string
			if err := c.QueryRowContext(ctx, "PRAGMA "+pragma).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("connection %d: PRAGMA %s = %s, want %s", i, pragma, got, want)
			}
		}
	}
}
