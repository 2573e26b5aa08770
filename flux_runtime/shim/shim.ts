// Flux worker shim, loaded with `deno run --preload shim.ts APP`.
//
// It runs before the app and, without the app knowing:
//  * forces the listen address of the app's HTTP server (Deno.serve in every call form,
//    node:http Server#listen, and `export default {fetch}` modules, which it serves itself);
//  * for each request tagged by the Flux front with `x-flux-execution-id` (stripped before the
//    app sees it) captures console output, the request's error, and every value of time and
//    randomness the request observed — or, in replay mode, feeds recorded values back;
//  * reports all of it to the Python runtime over a loopback control connection, one JSON line
//    per finished request, so the HTTP response itself is never touched.
//
// Environment: FLUX_CONTROL_PORT, FLUX_WORKER_TOKEN, FLUX_WORKER_PORT, FLUX_WORKER_HOST,
// FLUX_MODE (record | replay). Without FLUX_CONTROL_PORT the shim does nothing.

import nodeHttp from "node:http";

const HEADER = "x-flux-execution-id";
const REMOTE_HEADER = "x-flux-remote-addr"; // the client's address, as "host:port"
const SHIM_URL = import.meta.url;
const CONSOLE_CAP = 1024 * 1024; // characters of console text recorded per request
// Values of time and randomness recorded per request: a hot loop of Math.random() must not
// make a report of hundreds of megabytes. Past it, values are real and only counted.
const DETERMINISM_CAP = 100_000;

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type ErrorInfo = { name: string; message: string; stack: string };
type ConsoleLine = { seq: number; offset: number; level: string; text: string };
type Entry = { kind: string; value: Json };

type RequestContext = {
  id: string;
  startedAt: number; // real performance.now() when the shim saw the request
  console: ConsoleLine[];
  consoleBytes: number; // text kept so far, against CONSOLE_CAP
  consoleDropped: number; // lines printed after the cap, counted only
  determinismDropped: number; // values observed after DETERMINISM_CAP, counted only
  error: ErrorInfo | null;
  determinism: Entry[];
  replay: Map<string, Json[]> | null; // per kind, values still to be fed back
  fallbacks: Record<string, number>; // per kind, values asked for after the log ran out
  finished: boolean;
};

// Originals, taken before anything is patched; the shim itself only uses these.
const realDate = Date;
const realDateNow = Date.now;
const realPerformanceNow = performance.now.bind(performance);
const realMathRandom = Math.random;
const realRandomUUID = crypto.randomUUID.bind(crypto);
const realGetRandomValues = crypto.getRandomValues.bind(crypto);
const realConsole: Record<string, (...args: unknown[]) => void> = {};
const encoder = new TextEncoder();
const decoder = new TextDecoder();

const env = (name: string): string | undefined => Deno.env.get(name);
const controlPort = Number(env("FLUX_CONTROL_PORT") ?? "0");
const workerToken = env("FLUX_WORKER_TOKEN") ?? "";
const forcedPort = Number(env("FLUX_WORKER_PORT") ?? "0");
const forcedHost = env("FLUX_WORKER_HOST") ?? "127.0.0.1";
const replayMode = env("FLUX_MODE") === "replay";
// The app's environment is the user's: Flux's own variables leave before the app runs.
for (const name of ["FLUX_CONTROL_PORT", "FLUX_WORKER_TOKEN", "FLUX_WORKER_PORT",
                    "FLUX_WORKER_HOST", "FLUX_MODE"]) {
  if (controlPort > 0) Deno.env.delete(name);
}

let current: RequestContext | null = null;
const primed = new Map<string, Entry[]>(); // replay logs received ahead of their request
let serverClaimed = false; // the first server the app starts gets the worker's port

// ---------------------------------------------------------------- control channel

let control: Deno.TcpConn | null = null;
let writeChain: Promise<void> = Promise.resolve();

function send(message: Record<string, Json>): void {
  if (control === null) return;
  const bytes = encoder.encode(JSON.stringify(message) + "\n");
  const conn = control;
  writeChain = writeChain.then(async () => {
    let written = 0;
    while (written < bytes.length) written += await conn.write(bytes.subarray(written));
  }).catch(() => {
    control = null; // the runtime went away; keep serving, stop reporting
  });
}

async function readControl(conn: Deno.TcpConn): Promise<void> {
  let buffered = "";
  const chunk = new Uint8Array(64 * 1024);
  while (true) {
    let n: number | null;
    try {
      n = await conn.read(chunk);
    } catch {
      break;
    }
    if (n === null) break;
    buffered += decoder.decode(chunk.subarray(0, n), { stream: true });
    let newline: number;
    while ((newline = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
      if (!line.trim()) continue;
      try {
        onControlMessage(JSON.parse(line));
      } catch {
        // a line the shim does not understand is ignored, never fatal to the app
      }
    }
  }
  // The runtime is gone (stopped, or killed without a chance to stop us): a worker without its
  // runtime would serve nobody, so it leaves rather than linger as an orphan.
  Deno.exit(0);
}

function onControlMessage(message: { type: string; id?: string; determinism?: Entry[] }): void {
  if (message.type === "prime" && message.id) {
    primed.set(message.id, message.determinism ?? []);
    send({ type: "primed", id: message.id });
  }
}

if (controlPort > 0) {
  control = await Deno.connect({ hostname: "127.0.0.1", port: controlPort });
  control.setNoDelay(true);
  control.unref(); // the control connection alone must not keep the app alive
  send({ type: "hello", token: workerToken, pid: Deno.pid, deno: Deno.version.deno });
  readControl(control);
}

// ---------------------------------------------------------------- per-request context

function begin(id: string): RequestContext {
  const log = replayMode ? primed.get(id) : undefined;
  primed.delete(id);
  let replay: Map<string, Json[]> | null = null;
  if (log !== undefined) {
    replay = new Map();
    for (const entry of log) {
      if (!replay.has(entry.kind)) replay.set(entry.kind, []);
      replay.get(entry.kind)!.push(entry.value);
    }
  }
  current = {
    id,
    startedAt: realPerformanceNow(),
    console: [],
    consoleBytes: 0,
    consoleDropped: 0,
    determinismDropped: 0,
    error: null,
    determinism: [],
    replay,
    fallbacks: {},
    finished: false,
  };
  return current;
}

function finish(ctx: RequestContext, crashed = false): void {
  if (ctx.finished) return;
  send(report(ctx, crashed));
}

/** The request's report, once: the request is over for the shim from here on. */
function report(ctx: RequestContext, crashed: boolean): Record<string, Json> {
  ctx.finished = true;
  if (current === ctx) current = null;
  if (ctx.consoleDropped > 0) {
    ctx.console.push({
      seq: ctx.console.length,
      offset: (realPerformanceNow() - ctx.startedAt) / 1000,
      level: "warn",
      text: `[flux: ${ctx.consoleDropped} more console lines were printed but not recorded]`,
    });
  }
  const unused: Record<string, number> = {};
  for (const [kind, values] of ctx.replay ?? []) if (values.length) unused[kind] = values.length;
  return {
    type: "done",
    id: ctx.id,
    console: ctx.console,
    error: ctx.error,
    determinism: ctx.determinism,
    replayed: ctx.replay !== null,
    fallbacks: ctx.fallbacks,
    unused,
    crashed,
    determinism_dropped: ctx.determinismDropped,
  };
}

// Frames of the shim's own wrappers are not part of the app's story.
const withoutShimFrames = (text: string): string =>
  text.includes(SHIM_URL) ? text.split("\n").filter((l) => !l.includes(SHIM_URL)).join("\n") : text;

function errorInfo(value: unknown): ErrorInfo {
  if (value instanceof Error) {
    return { name: value.name, message: value.message, stack: withoutShimFrames(value.stack ?? "") };
  }
  return { name: "Error", message: String(value), stack: "" };
}

// A stack trace logged as text, as express's final handler ("TypeError: x\n    at ...") and
// koa's default error handler (the same, indented) print it. node-postgres names its
// DatabaseError plain "error" ("error: relation \"x\" does not exist\n    at ...").
const LOGGED_STACK = /^\s*([A-Za-z_$][\w$]*(?:Error|Exception)|error): ([^\n]*)\n\s+at /;

function errorFromConsole(args: unknown[]): ErrorInfo | null {
  for (const arg of args) {
    if (arg instanceof Error) return errorInfo(arg);
  }
  for (const arg of args) {
    if (typeof arg !== "string") continue;
    const match = LOGGED_STACK.exec(arg);
    if (match) return { name: match[1], message: match[2], stack: withoutShimFrames(arg.trim()) };
  }
  return null;
}

// ---------------------------------------------------------------- console

function formatArgs(args: unknown[]): string {
  const show = (value: unknown): string =>
    typeof value === "string" ? value : Deno.inspect(value, { colors: false, depth: 4 });
  if (typeof args[0] !== "string" || !args[0].includes("%")) return args.map(show).join(" ");
  const rest = args.slice(1);
  const head = args[0].replace(/%([sdifoOjc%])/g, (whole, spec: string) => {
    if (spec === "%") return "%";
    if (rest.length === 0) return whole;
    const value = rest.shift();
    switch (spec) {
      case "s":
        return typeof value === "string" ? value : show(value);
      case "d":
      case "i":
        return String(spec === "i" ? Math.trunc(Number(value)) : Number(value));
      case "f":
        return String(Number(value));
      case "j":
        return JSON.stringify(value);
      case "c":
        return "";
      default:
        return show(value);
    }
  });
  return [head, ...rest.map(show)].join(" ");
}

const CONSOLE_LEVELS: Record<string, string> = {
  log: "log",
  info: "info",
  warn: "warn",
  error: "error",
  debug: "debug",
  trace: "debug",
};

if (controlPort > 0) {
  const target = console as unknown as Record<string, (...args: unknown[]) => void>;
  for (const [method, level] of Object.entries(CONSOLE_LEVELS)) {
    const original = target[method];
    realConsole[method] = original;
    target[method] = function (...args: unknown[]): void {
      const ctx = current;
      if (ctx !== null) {
        const formatted = withoutShimFrames(formatArgs(args));
        const text = method === "trace" ? "Trace: " + formatted : formatted;
        if (ctx.consoleBytes < CONSOLE_CAP) {
          ctx.consoleBytes += text.length;
          ctx.console.push({
            seq: ctx.console.length,
            offset: (realPerformanceNow() - ctx.startedAt) / 1000,
            level,
            text: text.length > CONSOLE_CAP ? text.slice(0, CONSOLE_CAP) + " […]" : text,
          });
        } else {
          ctx.consoleDropped += 1;
        }
        if (level === "error" && ctx.error === null) ctx.error = errorFromConsole(args);
      }
      return original.apply(console, args);
    };
  }
}

// ---------------------------------------------------------------- time and randomness

/** Keeps a value the request observed, up to DETERMINISM_CAP of them. */
function record(ctx: RequestContext, kind: string, value: Json): void {
  if (ctx.determinism.length < DETERMINISM_CAP) ctx.determinism.push({ kind, value });
  else ctx.determinismDropped += 1;
}

function observe<T extends Json>(kind: string, real: () => T): T {
  const ctx = current;
  if (ctx === null) return real();
  let value: T;
  const queue = ctx.replay?.get(kind);
  if (queue && queue.length) {
    value = queue.shift() as T;
  } else {
    if (ctx.replay !== null) ctx.fallbacks[kind] = (ctx.fallbacks[kind] ?? 0) + 1;
    value = real();
  }
  record(ctx, kind, value);
  return value;
}

function base64Encode(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function base64Decode(text: string): Uint8Array {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

const now = (): number => observe("date_now", realDateNow);

function installDeterminism(): void {
  // `Date` keeps its prototype, statics and `instanceof`; only "now" is observed.
  const FluxDate = function (this: unknown, ...args: unknown[]): unknown {
    if (new.target === undefined) return new realDate(now()).toString();
    const ctorArgs = args.length === 0 ? [now()] : args;
    return Reflect.construct(realDate, ctorArgs, new.target);
  } as unknown as DateConstructor;
  Object.setPrototypeOf(FluxDate, realDate);
  Object.defineProperty(FluxDate, "prototype", { value: realDate.prototype, writable: false });
  Object.defineProperty(FluxDate, "name", { value: "Date" });
  Object.defineProperty(FluxDate, "length", { value: 7 });
  Object.defineProperty(FluxDate, "now", { value: now, writable: true, configurable: true });
  Object.defineProperty(realDate.prototype, "constructor", {
    value: FluxDate,
    writable: true,
    configurable: true,
  });
  Object.defineProperty(globalThis, "Date", { value: FluxDate, writable: true, configurable: true });

  Object.defineProperty(performance, "now", {
    value: () => observe("performance_now", realPerformanceNow),
    writable: true,
    configurable: true,
  });
  Math.random = () => observe("math_random", realMathRandom);
  Object.defineProperty(crypto, "randomUUID", {
    value: () => observe("random_uuid", realRandomUUID) as `${string}-${string}-${string}-${string}-${string}`,
    writable: true,
    configurable: true,
  });
  Object.defineProperty(crypto, "getRandomValues", {
    value: <T extends ArrayBufferView | null>(array: T): T => {
      const ctx = current;
      if (ctx === null || array === null) return realGetRandomValues(array as never) as T;
      const view = new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
      const queue = ctx.replay?.get("get_random_values");
      const recorded = queue?.length ? base64Decode(queue.shift() as string) : null;
      if (recorded !== null && recorded.length === view.length) {
        view.set(recorded);
      } else {
        if (ctx.replay !== null) {
          ctx.fallbacks.get_random_values = (ctx.fallbacks.get_random_values ?? 0) + 1;
        }
        realGetRandomValues(array as never);
      }
      if (ctx.determinism.length < DETERMINISM_CAP) {
        record(ctx, "get_random_values", base64Encode(view));
      } else {
        ctx.determinismDropped += 1;
      }
      return array;
    },
    writable: true,
    configurable: true,
  });
}

if (controlPort > 0) installDeterminism();

// ---------------------------------------------------------------- listen address

type ListenTarget = { port: number; hostname: string };

/** The first server gets the worker's port; any further one an ephemeral loopback port. */
function claimListenTarget(): ListenTarget {
  if (serverClaimed) return { port: 0, hostname: "127.0.0.1" };
  serverClaimed = true;
  return { port: forcedPort, hostname: forcedHost };
}

function reportListening(kind: string, port: number, forced: boolean): void {
  if (forced) send({ type: "listening", kind, port });
}

// ---------------------------------------------------------------- Deno.serve

type Handler = (request: Request, info: Deno.ServeHandlerInfo) => Response | Promise<Response>;

/**
 * The request as the app would have seen it without Flux. Deno's request headers are immutable
 * and copying the Request reads its `signal` (which makes Deno warn), so the app gets a proxy
 * whose `headers` lack the Flux header; everything else is the original request.
 */
function withoutFluxHeader(request: Request): Request {
  const headers = new Headers(request.headers);
  headers.delete(HEADER);
  headers.delete(REMOTE_HEADER);
  return new Proxy(request, {
    get(target, property) {
      if (property === "headers") return headers;
      const value = Reflect.get(target, property, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

/** "host:port" (IPv6 hosts keep their colons) as the address Deno would have reported. */
function parseRemote(value: string | null | undefined): { hostname: string; port: number } | null {
  if (!value) return null;
  const colon = value.lastIndexOf(":");
  if (colon <= 0) return null;
  return { hostname: value.slice(0, colon), port: Number(value.slice(colon + 1)) };
}

/** The handler info with the client's address instead of the Flux front's. */
function withClientAddress(info: Deno.ServeHandlerInfo, remote: string | null): Deno.ServeHandlerInfo {
  const address = parseRemote(remote);
  if (address === null) return info;
  const remoteAddr = { transport: "tcp" as const, ...address };
  return new Proxy(info, {
    get(target, property) {
      if (property === "remoteAddr") return remoteAddr;
      const value = Reflect.get(target, property, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

function wrapHandler(handler: Handler): Handler {
  return async (request, info) => {
    const id = request.headers.get(HEADER);
    if (id === null) return await handler(request, info);
    const ctx = begin(id);
    const completed = (info as { completed?: Promise<void> }).completed;
    const end = () => {
      if (completed) completed.then(() => finish(ctx), () => finish(ctx));
      else setTimeout(() => finish(ctx), 0);
    };
    try {
      const clientInfo = withClientAddress(info, request.headers.get(REMOTE_HEADER));
      const response = await handler(withoutFluxHeader(request), clientInfo);
      end();
      return response;
    } catch (error) {
      ctx.error = errorInfo(error); // the uncaught error wins over a logged one
      end();
      throw error; // Deno's (or the app's) onError answers it, as without Flux
    }
  };
}

const realServe = Deno.serve;

function fluxServe(...args: unknown[]): Deno.HttpServer {
  let options: Record<string, unknown> = {};
  let source: Record<string, unknown> | undefined;
  let handler: Handler | undefined;
  for (const arg of args) {
    if (typeof arg === "function") handler = arg as Handler;
    else if (arg !== null && typeof arg === "object") {
      source = arg as Record<string, unknown>;
      options = { ...source };
    }
  }
  // Deno's `{handler}` init, or an object with a `fetch` method (a Hono app, `{fetch}`).
  for (const method of ["handler", "fetch"]) {
    if (handler === undefined && source && typeof source[method] === "function") {
      const app = source as Record<string, Handler>;
      handler = (request, info) => app[method](request, info);
    }
  }
  if (handler === undefined) return (realServe as (...a: unknown[]) => Deno.HttpServer)(...args);
  for (const key of ["handler", "fetch", "path", "cert", "key", "transport", "reusePort"]) {
    delete options[key];
  }
  const forced = !serverClaimed;
  const target = claimListenTarget();
  const userOnListen = options.onListen as ((addr: Deno.NetAddr) => void) | undefined;
  options.port = target.port;
  options.hostname = target.hostname;
  options.onListen = (addr: Deno.NetAddr) => {
    reportListening("deno.serve", addr.port, forced);
    if (userOnListen) userOnListen(addr);
    else realConsole.log?.(`Listening on http://${addr.hostname}:${addr.port}/`);
  };
  return realServe(options as Deno.ServeTcpOptions, wrapHandler(handler));
}

if (controlPort > 0) {
  Object.defineProperty(Deno, "serve", { value: fluxServe, writable: true, configurable: true });
}

// ---------------------------------------------------------------- node:http (express, ...)

type NodeServer = nodeHttp.Server & { emit: (event: string, ...args: unknown[]) => boolean };

function installNodeHttp(): void {
  const proto = nodeHttp.Server.prototype as unknown as NodeServer;
  const realListen = proto.listen;
  const realEmit = proto.emit;

  proto.listen = function (this: NodeServer, ...args: unknown[]) {
    const callback = typeof args.at(-1) === "function" ? args.pop() as () => void : undefined;
    const forced = !serverClaimed;
    const target = claimListenTarget();
    this.once("listening", () => {
      const address = this.address();
      const port = typeof address === "object" && address ? address.port : target.port;
      reportListening("node:http", port, forced);
    });
    return realListen.call(this, target.port, target.hostname, callback);
  } as typeof proto.listen;

  proto.emit = function (this: NodeServer, event: string, ...args: unknown[]): boolean {
    if (event !== "request") return realEmit.call(this, event, ...args);
    const [request, response] = args as [nodeHttp.IncomingMessage, nodeHttp.ServerResponse];
    const id = request.headers[HEADER];
    if (typeof id !== "string") return realEmit.call(this, event, ...args);
    const remote = parseRemote(request.headers[REMOTE_HEADER] as string | undefined);
    delete request.headers[HEADER];
    delete request.headers[REMOTE_HEADER];
    const raw = request.rawHeaders;
    for (let i = raw.length - 2; i >= 0; i -= 2) {
      const name = raw[i].toLowerCase();
      if (name === HEADER || name === REMOTE_HEADER) raw.splice(i, 2);
    }
    if (remote !== null && request.socket) {
      // one request at a time per worker: the shared front connection shows this client
      for (const [key, value] of [["remoteAddress", remote.hostname], ["remotePort", remote.port]]) {
        Object.defineProperty(request.socket, key, { value, configurable: true });
      }
    }
    const ctx = begin(id);
    const end = () => setTimeout(() => finish(ctx), 0);
    response.once("finish", end);
    response.once("close", end);
    try {
      return realEmit.call(this, event, ...args);
    } catch (error) {
      ctx.error = errorInfo(error);
      throw error;
    }
  };
}

if (controlPort > 0) installNodeHttp();

// ---------------------------------------------------------------- fatal errors

// An uncaught error while serving kills the worker, as it would kill the app. Before it does,
// the request's report (console, the error with its stack) is sent, so the crash record is whole.
// If the app's own listener handles the event, nothing changes.
function onFatal(event: Event, error: unknown, inPromise: boolean): void {
  const ctx = current;
  if (ctx === null || event.defaultPrevented) return;
  let appHandled = false;
  const prevent = event.preventDefault.bind(event);
  Object.defineProperty(event, "preventDefault", {
    value: () => {
      appHandled = true;
      prevent();
    },
    configurable: true,
  });
  prevent();
  queueMicrotask(() => { // every listener has run by now
    if (appHandled) return;
    ctx.error = errorInfo(error);
    finish(ctx, true);
    const shown = error instanceof Error ? withoutShimFrames(error.stack ?? String(error))
      : Deno.inspect(error);
    const text = `error: Uncaught ${inPromise ? "(in promise) " : ""}${shown}\n`;
    writeChain.finally(() => {
      Deno.stderr.writeSync(encoder.encode(text));
      Deno.exit(1);
    });
  });
}

if (controlPort > 0) {
  globalThis.addEventListener("error", (event) => onFatal(event, event.error, false));
  globalThis.addEventListener(
    "unhandledrejection",
    (event) => onFatal(event, event.reason, true),
  );
}

// `Deno.exit` ends the process before an asynchronous write could go out, so the report of the
// request being served (console lines printed just before, above all) is written synchronously
// to stderr as one marked line, which the runtime takes out of the worker's output.
function installExit(): void {
  const realExit = Deno.exit;
  const marker = `\x1eflux-report ${workerToken} `;
  const exit = (code?: number): never => {
    const ctx = current;
    if (ctx !== null && !ctx.finished) {
      try {
        Deno.stderr.writeSync(encoder.encode(marker + JSON.stringify(report(ctx, true)) + "\n"));
      } catch {
        // stderr closed: the exit goes on, the record says only that the worker died
      }
    }
    return realExit(code);
  };
  Object.defineProperty(Deno, "exit", { value: exit, writable: true, configurable: true });
}

if (controlPort > 0) installExit();

// ---------------------------------------------------------------- export default { fetch }

// `deno serve` ignores --preload (Deno 2.9), so such apps run under `deno run` and the shim
// serves their default export itself once the main module has been evaluated ("load").
if (controlPort > 0) {
  globalThis.addEventListener("load", async () => {
    if (serverClaimed) return;
    const module = await import(Deno.mainModule);
    const app = module.default as { fetch?: Handler; onListen?: (addr: Deno.NetAddr) => void };
    if (serverClaimed || typeof app?.fetch !== "function") {
      if (!serverClaimed) send({ type: "no_server" });
      return;
    }
    const options: Record<string, unknown> = { handler: app.fetch.bind(app) };
    if (typeof app.onListen === "function") options.onListen = app.onListen.bind(app);
    fluxServe(options);
  });
}
