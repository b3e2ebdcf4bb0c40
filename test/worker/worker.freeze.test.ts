import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { FREEZE_LINE } from "../../src/worker/faultPoints.ts";

/** The process state letter from /proc (T = stopped). */
const state = (pid: number) => readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]![0];

describe("freeze points (the scenario runner's SIGSTOP)", () => {
  it("a worker process stops itself at the nth hit of a freeze point, after one line, and goes on when continued", async () => {
    const child = spawn(process.execPath, ["test/worker/fixtures/freezeAt.ts"], {
      env: { ...process.env, UPLOAD_PIPELINE_FREEZE_AT: "x.y#2" },
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    const frozen = new Promise<void>((resolve) => child.stdout.on("data", (b: Buffer) => (out += b.toString()).includes(FREEZE_LINE) && resolve()));
    const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
    await frozen;
    await expect.poll(() => state(child.pid!)).toBe("T");
    await new Promise((r) => setTimeout(r, 300));
    expect(out).not.toContain("after");
    expect(JSON.parse(out.trim().split("\n")[0]!)).toMatchObject({ msg: FREEZE_LINE, point: "x.y#2" });
    child.kill("SIGCONT");
    expect(await exited).toBe(0);
    expect(out).toContain("after");
  });
});
