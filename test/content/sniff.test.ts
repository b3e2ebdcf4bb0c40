/**
 * What a file is from its bytes: `file-type` signatures, then text (UTF-8 without binary control
 * characters) and HTML; whether a label fits; the type of an unlabelled part.
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it, vi } from "vitest";
import { contentMatches, sniffFile, typeOfUnlabelled } from "../../src/content/sniff.ts";

// file-type as shipped, except that it throws for files named *.explode (a parser tripping over
// hostile bytes), and with an fs error for *.missing-disk.
vi.mock("file-type", async (importOriginal) => {
  const real = await importOriginal<typeof import("file-type")>();
  return {
    ...real,
    fileTypeFromFile: async (path: string) => {
      if (path.endsWith(".explode")) throw new Error("End-Of-Stream");
      if (path.endsWith(".missing-disk")) throw Object.assign(new Error("EIO: i/o error, read"), { code: "EIO", syscall: "read" });
      return real.fileTypeFromFile(path);
    },
  };
});

const dir = mkdtempSync(join(tmpdir(), "sniff-test-"));
let n = 0;
function file(content: string | Uint8Array, suffix = ""): string {
  const path = join(dir, `f${n++}${suffix}`);
  writeFileSync(path, content);
  return path;
}

describe("sniffFile", () => {
  it.each([
    ["a PDF", "%PDF-1.7\n1 0 obj\n", "application/pdf"],
    ["Markdown", "# Title\n\nSome *text*.\n", "text/plain"],
    ["text with a BOM and tabs", "\uFEFFcol\tcol\r\nx\ty\r\n", "text/plain"],
    ["HTML with a doctype", "  <!DOCTYPE html><html><body>x</body></html>", "text/html"],
    ["HTML after a comment", "<!-- generated --><html lang=en>", "text/html"],
    ["text that mentions <html> later", "Use the <html> tag.", "text/plain"],
  ])("%s", async (_name, content, expected) => {
    expect(await sniffFile(file(content))).toBe(expected);
  });

  it("binary without a signature (NUL bytes, invalid UTF-8) is application/octet-stream", async () => {
    expect(await sniffFile(file(new Uint8Array([0x41, 0x00, 0x42])))).toBe("application/octet-stream");
    expect(await sniffFile(file(new Uint8Array([0xc3, 0x28, 0x41])))).toBe("application/octet-stream");
  });

  it("a multi-byte character cut by the 8 KiB probe is still text", async () => {
    const text = `${"a".repeat(8191)}é and more`;
    expect(Buffer.from(text).subarray(0, 8192).at(-1)).toBe(0xc3); // the probe ends mid-character
    expect(await sniffFile(file(text))).toBe("text/plain");
  });

  it("a parser error on hostile bytes means 'no known format'; a disk error is thrown", async () => {
    expect(await sniffFile(file("%PDF-1.7", ".explode"))).toBe("application/octet-stream");
    await expect(sniffFile(file("x", ".missing-disk"))).rejects.toMatchObject({ code: "EIO" });
  });
});

describe("contentMatches and typeOfUnlabelled", () => {
  it("a label fits the same type, or any text type for text", () => {
    expect(contentMatches("application/pdf", "application/pdf")).toBe(true);
    expect(contentMatches("text/markdown", "text/plain")).toBe(true);
    expect(contentMatches("text/plain", "text/html")).toBe(true);
    expect(contentMatches("application/pdf", "text/plain")).toBe(false);
    expect(contentMatches("text/markdown", "application/x-elf")).toBe(false);
  });

  it("text takes its type from the extension; binary keeps what its bytes show", () => {
    expect(typeOfUnlabelled("notes.MD", "text/plain")).toBe("text/markdown");
    expect(typeOfUnlabelled("page.htm", "text/plain")).toBe("text/html");
    expect(typeOfUnlabelled("README", "text/plain")).toBe("text/plain");
    expect(typeOfUnlabelled("scan.txt", "application/pdf")).toBe("application/pdf");
  });
});
