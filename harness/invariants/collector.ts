import { MAX_VIOLATIONS, type CheckResult } from "./types.ts";

/** Gathers one check's violations; keeps the first `MAX_VIOLATIONS` lines and counts the rest. */
export class Violations {
  readonly lines: string[] = [];
  count = 0;
  note: string | undefined;

  readonly name: string;
  readonly spec: string;

  constructor(name: string, spec: string) {
    this.name = name;
    this.spec = spec;
  }

  add(line: string): void {
    this.count += 1;
    if (this.lines.length < MAX_VIOLATIONS) this.lines.push(line);
  }

  result(): CheckResult {
    const violations = this.count > this.lines.length ? [...this.lines, `… and ${this.count - this.lines.length} more`] : [...this.lines];
    return {
      name: this.name,
      spec: this.spec,
      ok: this.count === 0,
      violations,
      violationCount: this.count,
      ...(this.note !== undefined ? { note: this.note } : {}),
    };
  }
}
