-- The Batch API lane (issue 14): bulk jobs embed through OpenAI's Batch API at half the price.
-- Each OpenAI batch a job submits is a row here, written BEFORE the call it stands for: the
-- intent (which chunks, under a deterministic key), then the uploaded input file's id, then the
-- batch's id, then the outcome once its output is ingested. A worker that crashes after
-- files.create or batches.create finds the file by its name (`<intent_key>.jsonl`) or the batch by
-- its metadata (`intent_key`) instead of creating a second one. The job stays in
-- `embedding_in_progress` throughout and is released between polls (no slot, no lease held).
CREATE TABLE upload_pipeline.embedding_batches (
  -- uuidv5("{document_id}:openai-batch:{model}:{version}:{round}"): the batch's metadata key.
  intent_key    uuid PRIMARY KEY,
  job_id        uuid NOT NULL REFERENCES upload_pipeline.upload_jobs (job_id) ON DELETE CASCADE,
  document_id   uuid NOT NULL REFERENCES upload_pipeline.documents (document_id) ON DELETE CASCADE,
  embed_model   text NOT NULL,
  embed_version text NOT NULL,
  -- 1 for the job's first batch under this model/version; a re-submission of what a batch left
  -- out (failed lines, an expired batch) is the next round.
  round         integer NOT NULL CHECK (round >= 1),
  -- The chunks this batch embeds (one request line each, custom_id = chunk_id).
  chunk_ids     uuid[] NOT NULL CHECK (cardinality(chunk_ids) >= 1),
  -- intent → uploaded (input_file_id) → submitted (batch_id) → ingested (outcome)
  status        text NOT NULL DEFAULT 'intent' CHECK (status IN ('intent', 'uploaded', 'submitted', 'ingested')),
  -- Set (fenced) just before files.create / batches.create: a later attempt that finds it set
  -- looks the file or batch up (by name, by metadata) from this time on before calling again.
  upload_started_at timestamptz,
  input_file_id text,
  submit_started_at timestamptz,
  batch_id      text,
  -- OpenAI's terminal status: completed, expired, failed or cancelled.
  outcome       text CHECK (outcome IN ('completed', 'expired', 'failed', 'cancelled')),
  -- Request lines that produced a vector, and those that did not (re-queued in the next round).
  succeeded     integer,
  failed        integer,
  -- What the ingested lines billed, at the Batch API's price.
  tokens        bigint,
  cost_usd      numeric,
  polls         integer NOT NULL DEFAULT 0,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  UNIQUE (job_id, embed_model, embed_version, round),
  CHECK (status = 'intent' OR input_file_id IS NOT NULL),
  CHECK (status IN ('intent', 'uploaded') OR batch_id IS NOT NULL),
  CHECK ((status = 'ingested') = (outcome IS NOT NULL))
);
-- At most one open batch per job and embedding: the lane works one batch at a time.
CREATE UNIQUE INDEX embedding_batches_one_open_idx ON upload_pipeline.embedding_batches (job_id, embed_model, embed_version)
  WHERE status <> 'ingested';
CREATE INDEX embedding_batches_document_idx ON upload_pipeline.embedding_batches (document_id);

-- Like every table in the schema (migration 0007): RLS on. A signed-in user reads the batches of
-- their own documents; nobody but the pipeline (owner) and the service role writes.
ALTER TABLE upload_pipeline.embedding_batches ENABLE ROW LEVEL SECURITY;
CREATE POLICY embedding_batches_owner_read ON upload_pipeline.embedding_batches FOR SELECT TO authenticated
  USING (EXISTS (SELECT 1 FROM upload_pipeline.documents d WHERE d.document_id = embedding_batches.document_id AND d.user_id = auth.uid()));
GRANT SELECT ON upload_pipeline.embedding_batches TO authenticated;
GRANT ALL ON upload_pipeline.embedding_batches TO service_role;
