// One query per request: the "simple request" of the replay benchmark.
import pg from "npm:pg@8";

const db = new pg.Pool({ connectionString: Deno.env.get("DATABASE_URL"), max: 1 });

Deno.serve({ port: 3000 }, async () => {
  const { rows } = await db.query("SELECT 41 + $1::int AS answer", [1]);
  return Response.json(rows[0]);
});
