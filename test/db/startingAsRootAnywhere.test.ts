/**
 * Issue 17 item 10, "starting as root anywhere": a checkout inside a folder only root may enter
 * (`mktemp -d` is 0700, so is /root). As root the server runs as `postgres`, which cannot reach
 * binaries in there; the server must start anyway, or say in one line what to change.
 * CI and the black-box testers run as root; as another user the folder is ours and the server
 * runs as us, which the same test then covers.
 */
import { spawnSync } from "node:child_process";
import { cp, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir, arch, platform } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../../src/db/provision.ts";
import { defaultBuild, runnableNative, serverUser, startPostgres, type PostgresBuild } from "../../src/db/postgresServer.ts";

let hidden: string;
let build: PostgresBuild;

beforeAll(async () => {
  const real = await defaultBuild();
  // A private folder (0700, like `mktemp -d`) holding a copy of the binaries under a version of
  // its own, so the copy-once cache this test makes is its own too.
  hidden = await mkdtemp(join(tmpdir(), "upload-pipeline-checkout-"));
  await cp(real.native, join(hidden, "native"), { recursive: true, verbatimSymlinks: true });
  const version = `${real.version}-test-${process.pid}`;
  await writeFile(join(hidden, "package.json"), JSON.stringify({ version }));
  build = { native: join(hidden, "native"), version };
}, 60_000);

afterAll(async () => {
  await rm(hidden, { recursive: true, force: true });
  await rm(join(tmpdir(), `upload-pipeline-postgres-${build.version}-${platform()}-${arch()}`), { recursive: true, force: true });
});

describe("starting as root anywhere", () => {
  it("starts PostgreSQL from binaries inside a folder the server's user cannot enter", async () => {
    const user = serverUser();
    if (user) {
      // The failure this guards against: the postgres user cannot run the binaries in place.
      const inPlace = spawnSync(join(build.native, "bin", "initdb"), ["--version"], { ...user });
      expect(inPlace.error?.message).toMatch(/EACCES/);
    }
    const server = await startPostgres({ build, port: await freePort() });
    try {
      const client = new pg.Client(server.url);
      await client.connect();
      const { rows } = await client.query<{ user: string }>("SELECT current_user AS user");
      expect(rows[0]!.user).toBe("postgres");
      await client.end();
    } finally {
      await server.stop();
    }
  }, 60_000);

  it("copies the binaries once per version: a second start reuses the copy", async () => {
    const user = serverUser();
    const first = await runnableNative(build, user);
    const second = await runnableNative(build, user);
    expect(second).toBe(first);
    expect(first).toBe(user ? join(tmpdir(), `upload-pipeline-postgres-${build.version}-${platform()}-${arch()}`) : build.native);
  });

  it("when even the copy is out of the user's reach, stops with one line naming the folder and the fix", async () => {
    const user = serverUser() ?? { uid: 65534, gid: 65534 };
    const previous = process.env.TMPDIR;
    process.env.TMPDIR = hidden;
    try {
      const err = await runnableNative(build, user).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(err?.message).toMatch(new RegExp(`cannot run ${hidden}/upload-pipeline-postgres-.*/bin/initdb .*chmod o\\+x.*TMPDIR=/tmp.*DATABASE_URL`));
      expect(err?.message).not.toContain("\n");
    } finally {
      if (previous === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = previous;
    }
  });
});
