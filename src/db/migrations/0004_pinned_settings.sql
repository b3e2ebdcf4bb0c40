-- The settings that decide a job's chunks and vectors (chunk size and overlap, embedding model and
-- dimensions), pinned on the job by the first stage that needs them. A rolling deploy that changes
-- CHUNK_MAX_TOKENS or EMBED_MODEL then finishes old jobs as they began: a worker with other
-- settings resumes them with the pinned ones, instead of failing chunks_mismatch or
-- vectors_incomplete forever. NULL: not pinned yet (the stage pins its worker's settings).
ALTER TABLE upload_pipeline.upload_jobs ADD COLUMN IF NOT EXISTS settings jsonb;
