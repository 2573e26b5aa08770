// A small shop API on Hono + pg + ioredis, used by the README's quick start.
//   DATABASE_URL=postgres://... REDIS_URL=redis://... flux serve examples/app.ts
import { Hono } from "npm:hono@4";
import pg from "npm:pg@8";
import Redis from "npm:ioredis@5";

const db = new pg.Pool({ connectionString: Deno.env.get("DATABASE_URL"), max: 4 });
const cache = new Redis(Deno.env.get("REDIS_URL") ?? "redis://127.0.0.1:6379");

await db.query(`CREATE TABLE IF NOT EXISTS products (
  id uuid PRIMARY KEY,
  sku text UNIQUE NOT NULL,
  name text NOT NULL,
  price_cents integer NOT NULL CHECK (price_cents >= 0),
  created_at timestamptz NOT NULL
)`);

const app = new Hono();

app.get("/products", async (c) => {
  const { rows } = await db.query("SELECT id, sku, name, price_cents FROM products ORDER BY sku");
  await cache.incr("stats:list");
  return c.json(rows);
});

app.get("/products/:sku", async (c) => {
  const sku = c.req.param("sku");
  const cached = await cache.get(`product:${sku}`);
  if (cached) return c.json({ ...JSON.parse(cached), cached: true });
  const { rows } = await db.query("SELECT id, sku, name, price_cents FROM products WHERE sku = $1", [sku]);
  if (rows.length === 0) return c.json({ error: "not found" }, 404);
  await cache.set(`product:${sku}`, JSON.stringify(rows[0]), "EX", 60);
  return c.json(rows[0]);
});

app.post("/products", async (c) => {
  const body = await c.req.json();
  console.log("creating product", body.sku);
  const { rows } = await db.query(
    "INSERT INTO products (id, sku, name, price_cents, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING *",
    [crypto.randomUUID(), body.sku, body.name, body.price_cents, new Date()],
  );
  return c.json(rows[0], 201);
});

app.get("/price/:sku", async (c) => {
  const { rows } = await db.query("SELECT price_cents FROM products WHERE sku = $1", [c.req.param("sku")]);
  // Bug on purpose: an unknown SKU has no row, and this throws a TypeError.
  return c.json({ sku: c.req.param("sku"), euros: rows[0].price_cents / 100 });
});

Deno.serve({ port: 3000 }, app.fetch);
