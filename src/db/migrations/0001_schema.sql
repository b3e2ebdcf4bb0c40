-- upload-pipeline schema, SPEC §3. Shipped migrations are never edited: add a new file.
-- Valid on PostgreSQL 15 (Supabase) and newer: gen_random_uuid() is core since 13.

CREATE SCHEMA IF NOT EXISTS upload_pipeline;

CREATE TABLE upload_pipeline.documents (
  document_id   uuid PRIMARY KEY,              -- uuidv5(ns, "{user_id}:{file_sha256}")
  user_id       uuid NOT NULL,
  filename      text NOT NULL,
  mime          text NOT NULL,
  bytes         bigint NOT NULL CHECK (bytes >= 0),
  file_sha256   text NOT NULL CHECK (file_sha256 ~ '^[0-9a-f]{64}$'),
  raw_path      text NOT NULL,
  parsed_path   text,
  parsed_sha256 text CHECK (parsed_sha256 ~ '^[0-9a-f]{64}$'),
  -- SHA-256 of the normalized markdown: documents with equal content share one parsed_path.
  normalized_sha256 text CHECK (normalized_sha256 ~ '^[0-9a-f]{64}$'),
  created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX documents_user_idx ON upload_pipeline.documents (user_id);
-- Deduplication of parsed content looks documents up by their normalized hash.
CREATE INDEX documents_normalized_sha_idx ON upload_pipeline.documents (normalized_sha256) WHERE normalized_sha256 IS NOT NULL;

CREATE TABLE upload_pipeline.upload_jobs (
  job_id           uuid PRIMARY KEY,
  document_id      uuid NOT NULL UNIQUE REFERENCES upload_pipeline.documents (document_id) ON DELETE CASCADE,
  status           text NOT NULL CHECK (status IN (
                     'uploaded', 'parse_queued', 'parsed', 'parse_validated', 'chunking',
                     'chunks_stored', 'embedding_queued', 'embedding_in_progress',
                     'embeddings_stored', 'complete',
                     'failed_parse', 'failed_chunking', 'failed_embedding')),
  progress         jsonb NOT NULL DEFAULT jsonb_build_object(
                     'chunks_total', 0, 'chunks_done', 0, 'vectors_total', 0, 'vectors_done', 0,
                     'batches_done', 0, 'tokens', 0, 'cost_usd', 0),
  attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  max_attempts     integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
  next_attempt_at  timestamptz NOT NULL DEFAULT now(),
  locked_by        text,
  lease_expires_at timestamptz,
  lease_token      uuid,                         -- fencing token: every write names it
  last_error       jsonb,
  webhook_secret   text,
  parse_job_id     text,                         -- LlamaParse's job id
  correlation_id   uuid NOT NULL,
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now(),
  CHECK ((locked_by IS NULL) = (lease_token IS NULL) AND (lease_token IS NULL) = (lease_expires_at IS NULL))
);
-- The claim query's index: actionable (non-terminal) jobs in due order.
CREATE INDEX upload_jobs_actionable_idx ON upload_pipeline.upload_jobs (next_attempt_at, created_at)
  WHERE status NOT IN ('complete', 'failed_parse', 'failed_chunking', 'failed_embedding');
-- Wake idle workers at once (LISTEN upload_pipeline_jobs) whenever a job becomes claimable:
-- created, released, retried. Polling with backoff stays as the fallback.
CREATE FUNCTION upload_pipeline.notify_job_ready() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('upload_pipeline_jobs', NEW.job_id::text);
  RETURN NULL;
END
$$;
CREATE TRIGGER upload_jobs_ready AFTER INSERT OR UPDATE OF status, locked_by, next_attempt_at ON upload_pipeline.upload_jobs
  FOR EACH ROW WHEN (NEW.locked_by IS NULL AND NEW.status NOT IN ('complete', 'failed_parse', 'failed_chunking', 'failed_embedding'))
  EXECUTE FUNCTION upload_pipeline.notify_job_ready();
CREATE INDEX upload_jobs_parse_job_idx ON upload_pipeline.upload_jobs (parse_job_id) WHERE parse_job_id IS NOT NULL;

CREATE TABLE upload_pipeline.document_chunk_buffer (
  chunk_id        uuid PRIMARY KEY,              -- uuidv5(ns, "{document_id}:{chunker_name}:{chunker_version}:{chunk_ord}")
  document_id     uuid NOT NULL REFERENCES upload_pipeline.documents (document_id) ON DELETE CASCADE,
  chunker_name    text NOT NULL,
  chunker_version text NOT NULL,
  chunk_ord       integer NOT NULL CHECK (chunk_ord >= 0),
  text            text NOT NULL,
  chunk_sha       text NOT NULL CHECK (chunk_sha ~ '^[0-9a-f]{64}$'),
  token_count     integer NOT NULL CHECK (token_count >= 0),
  meta            jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at      timestamptz NOT NULL DEFAULT now(),
  UNIQUE (document_id, chunker_name, chunker_version, chunk_ord)
);

CREATE TABLE upload_pipeline.document_vector_buffer (
  chunk_id      uuid NOT NULL REFERENCES upload_pipeline.document_chunk_buffer (chunk_id) ON DELETE CASCADE,
  embed_model   text NOT NULL,
  embed_version text NOT NULL,
  embedding     real[] NOT NULL,
  vector_sha    text NOT NULL CHECK (vector_sha ~ '^[0-9a-f]{64}$'),
  batch_id      uuid NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  UNIQUE (chunk_id, embed_model, embed_version)
);

CREATE TABLE upload_pipeline.webhook_log (
  id           bigserial PRIMARY KEY,
  delivery_key text NOT NULL UNIQUE,             -- LlamaParse's event_id: a replay is refused
  job_id       uuid REFERENCES upload_pipeline.upload_jobs (job_id) ON DELETE CASCADE,
  parse_job_id text NOT NULL,
  event_type   text NOT NULL,
  event_ts     double precision NOT NULL,        -- the body's Unix timestamp (seconds)
  body_sha256  text NOT NULL,                    -- same event_id + same bytes = a duplicate; other bytes = a replay
  outcome      text NOT NULL,
  received_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE upload_pipeline.job_events (
  id             bigserial PRIMARY KEY,          -- id order is causal order
  job_id         uuid NOT NULL REFERENCES upload_pipeline.upload_jobs (job_id) ON DELETE CASCADE,
  from_status    text,
  to_status      text NOT NULL,
  worker_id      text,
  lease_token    uuid,                           -- null for the webhook handler and the operator
  attempt        integer NOT NULL DEFAULT 0,
  correlation_id uuid,
  at             timestamptz NOT NULL DEFAULT clock_timestamp(),
  detail         jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX job_events_job_idx ON upload_pipeline.job_events (job_id, id);
