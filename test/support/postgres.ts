import pg from "pg";

export interface ScopedPostgres {
  /** A connection URL whose `search_path` is a schema of its own, created empty. */
  readonly url: string;
  /** The schema's name, for queries that look inside it. */
  readonly schema: string;
  /** An open connection for assertions (`SELECT ... FROM "<schema>".table`). */
  readonly admin: pg.Client;
  /** Drops the schema and closes `admin`. */
  drop(): Promise<void>;
}

let serial = 0;

/**
 * A fresh schema on the test PostgreSQL server, selected through the URL's
 * `options=-c search_path=...`, so that tests running in parallel (and runs
 * on three Node versions in a row) never see each other's tables.
 */
export async function scopedPostgres(url: string, label: string): Promise<ScopedPostgres> {
  const schema = `tollgate_test_${label}_${process.pid}_${++serial}_${Date.now()}`;
  const admin = new pg.Client({ connectionString: url });
  await admin.connect();
  await admin.query(`CREATE SCHEMA "${schema}"`);
  const scoped = new URL(url);
  scoped.searchParams.set("options", `-c search_path=${schema}`);
  return {
    url: scoped.toString(),
    schema,
    admin,
    async drop() {
      await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
      await admin.end();
    },
  };
}
