/**
 * What the Storage mock keeps: buckets and their objects, in memory.
 */
import { seededUuid, sha256Hex } from "../shared/rng.ts";

/** One stored object. */
export interface StoredObject {
  id: string;
  bucket: string;
  /** The object's path inside its bucket (`user/raw/doc.pdf`). */
  name: string;
  bytes: Uint8Array;
  contentType: string;
  cacheControl: string;
  /** User metadata (`x-metadata` or the multipart `metadata` field). */
  userMetadata: Record<string, unknown> | null;
  etag: string;
  version: string;
  createdAt: string;
  updatedAt: string;
}

/** One bucket. */
export interface StoredBucket {
  id: string;
  name: string;
  public: boolean;
  fileSizeLimit: number | null;
  allowedMimeTypes: string[] | null;
  createdAt: string;
  updatedAt: string;
  objects: Map<string, StoredObject>;
}

/** A bucket's upload limits, as `createBucket` takes them (`file_size_limit`, `allowed_mime_types`). */
export interface BucketLimits {
  fileSizeLimit?: number | null;
  allowedMimeTypes?: string[] | null;
}

/** Buckets and objects, with deterministic ids. */
export class StorageState {
  readonly buckets = new Map<string, StoredBucket>();
  #counter = 0;

  private readonly seed: number;
  private readonly now: () => number;
  private readonly initialBuckets: readonly string[];
  private readonly initialLimits: BucketLimits;

  constructor(seed: number, now: () => number, initialBuckets: readonly string[] = [], initialLimits: BucketLimits = {}) {
    this.seed = seed;
    this.now = now;
    this.initialBuckets = initialBuckets;
    this.initialLimits = initialLimits;
    this.reset();
  }

  /** Drops everything and re-creates the initial buckets (with their limits). */
  reset(): void {
    this.buckets.clear();
    this.#counter = 0;
    for (const name of this.initialBuckets) this.createBucket({ name, ...this.initialLimits });
  }

  #iso(): string {
    return new Date(this.now()).toISOString();
  }

  createBucket(input: { name: string; public?: boolean; fileSizeLimit?: number | null; allowedMimeTypes?: string[] | null }): StoredBucket {
    const at = this.#iso();
    const bucket: StoredBucket = {
      id: input.name,
      name: input.name,
      public: input.public ?? false,
      fileSizeLimit: input.fileSizeLimit ?? null,
      allowedMimeTypes: input.allowedMimeTypes ?? null,
      createdAt: at,
      updatedAt: at,
      objects: new Map(),
    };
    this.buckets.set(input.name, bucket);
    return bucket;
  }

  /** Writes (or overwrites) an object; the caller has already checked `upsert`. */
  put(
    bucket: StoredBucket,
    name: string,
    bytes: Uint8Array,
    meta: { contentType: string; cacheControl: string; userMetadata: Record<string, unknown> | null },
  ): StoredObject {
    const at = this.#iso();
    const previous = bucket.objects.get(name);
    const n = ++this.#counter;
    const object: StoredObject = {
      id: previous?.id ?? seededUuid(this.seed, "storage-object", bucket.name, name),
      bucket: bucket.name,
      name,
      bytes,
      contentType: meta.contentType,
      cacheControl: meta.cacheControl,
      userMetadata: meta.userMetadata,
      etag: `"${sha256Hex(bytes).slice(0, 32)}"`,
      version: seededUuid(this.seed, "storage-version", bucket.name, name, n),
      createdAt: previous?.createdAt ?? at,
      updatedAt: at,
    };
    bucket.objects.set(name, object);
    return object;
  }

  /** Counts for the stats. */
  totals(): { buckets: number; objects: number; bytes: number } {
    let objects = 0;
    let bytes = 0;
    for (const b of this.buckets.values()) {
      objects += b.objects.size;
      for (const o of b.objects.values()) bytes += o.bytes.byteLength;
    }
    return { buckets: this.buckets.size, objects, bytes };
  }
}

/** The `metadata` object storage returns for a file in listings. */
export function fileMetadata(o: StoredObject) {
  return {
    eTag: o.etag,
    size: o.bytes.byteLength,
    mimetype: o.contentType,
    cacheControl: o.cacheControl,
    lastModified: o.updatedAt,
    contentLength: o.bytes.byteLength,
    httpStatusCode: 200,
  };
}
