// A JS-driver client for tests/pg/test_replay_js_drivers.py: postgres.js or node-postgres.
// It runs in phases; before each it prints `PHASE <name>` and waits for a line on stdin, so
// the test can tag the proxy (boot / an earlier request / the request). It ends by printing
// `RESULT <json>`: what the driver gave back.
//
// Variants (comma-separated): `fresh` skips the earlier request that prepared the statements
// (a new worker in replay), `changed` sends one other parameter, `extra` an unrecorded query.
import postgres from "npm:postgres@3";
import pg from "npm:pg@8";

const url = Deno.env.get("DATABASE_URL")!;
const [driver, variantArg = ""] = Deno.args;
const variant = new Set(variantArg.split(","));
const input = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).getReader();

async function phase(name: string): Promise<void> {
  console.log(`PHASE ${name}`);
  await input.read();
}

const failure = (e: unknown) => ({
  code: (e as { code?: string }).code ?? null,
  message: String((e as Error).message),
});

async function postgresJs(): Promise<unknown[]> {
  await phase("boot");
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  const unprepared = postgres(url, { max: 1, prepare: false, onnotice: () => {} });
  await sql`CREATE TABLE IF NOT EXISTS js_notes (id serial PRIMARY KEY, body text NOT NULL)`;
  if (!variant.has("fresh")) {
    await phase("earlier");
    await sql`SELECT ${1}::int AS n, ${"label"}::text AS label`;
  }
  await phase("request");
  const out: unknown[] = [];
  out.push(await sql`SELECT ${variant.has("changed") ? 3 : 2}::int AS n, ${"label"}::text AS label`);
  out.push(await sql.begin(async (tx) => {
    const [row] = await tx`INSERT INTO js_notes (body) VALUES (${"hello"}) RETURNING id, body`;
    const [{ count }] = await tx`SELECT count(*)::int AS count FROM js_notes`;
    return { ...row, count };
  }));
  out.push(await Promise.all([sql`SELECT ${5}::int AS v`, sql`SELECT ${6}::int AS v`]));
  out.push(await sql`SELECT * FROM js_missing`.catch(failure));
  out.push(await unprepared`SELECT ${7}::int * 2 AS doubled`);
  await phase("done");
  return out;
}

async function nodePostgres(): Promise<unknown[]> {
  await phase("boot");
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  await client.query("CREATE TABLE IF NOT EXISTS js_rows (id int PRIMARY KEY, v text)");
  const byId = { name: "by-id", text: "SELECT id, v FROM js_rows WHERE id = $1" };
  if (!variant.has("fresh")) {
    await phase("earlier");
    await client.query({ ...byId, values: [1] });
  }
  await phase("request");
  const out: unknown[] = [];
  const result = (r: pg.QueryResult) => ({ command: r.command, rowCount: r.rowCount, rows: r.rows });
  out.push(result(await client.query(
    "INSERT INTO js_rows VALUES ($1, $2) ON CONFLICT DO NOTHING", [1, "one"])));
  if (variant.has("extra")) {
    out.push(await client.query("SELECT v FROM js_rows WHERE id = $1", [404]).catch(failure));
  }
  out.push(result(await client.query({ ...byId, values: [1] })));
  out.push(await client.query("SELECT $1::int AS n", ["abc"]).catch(failure));
  await client.query("BEGIN");
  out.push(await client.query("INSERT INTO js_rows VALUES (1, 'again')").catch(failure));
  out.push(await client.query("SELECT 1").catch(failure));
  await client.query("ROLLBACK");
  const both = await client.query("SELECT 1 AS a; SELECT 'two' AS b") as unknown as
    pg.QueryResult[];
  out.push(both.map(result));
  await phase("done");
  return out;
}

const out = driver === "postgres.js" ? await postgresJs() : await nodePostgres();
console.log(`RESULT ${JSON.stringify(out)}`);
Deno.exit(0);
