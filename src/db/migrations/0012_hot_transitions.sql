-- HOT transitions (issue 16). A claim, and a stage transition that keeps the lease, now change
-- only columns no index reads, so PostgreSQL writes them as heap-only tuples: no new entry in
-- any of the table's indexes. Before, every one was a non-HOT update, because `status` was in the
-- claim index's predicate, `locked_by` had an index, and the transition also moved
-- `next_attempt_at` (a key of the claim index; it now keeps its value when the job stays due):
-- each inserted an entry in the primary key, the claim index, the holder index and the
-- one-upload-job-per-document index. Measured with no-op stages at 4 slots: 6.1 index entries and
-- 1,100 bytes of WAL per transition before, 2.5 and 780 after; 90 % of updates HOT.
--
-- `unfinished` carries the only fact about `status` the claim index needs, and it changes once
-- in a job's life (into a terminal state), so a move between two pipeline states leaves every
-- indexed column as it was. (Adding a stored column rewrites the table once.)
ALTER TABLE upload_pipeline.upload_jobs
  ADD COLUMN unfinished boolean NOT NULL
    GENERATED ALWAYS AS (status NOT IN ('complete', 'failed_parse', 'failed_chunking', 'failed_embedding')) STORED;

-- The claim's index (0006) over unfinished jobs, same keys. The claim and the fair-tag trigger
-- name `unfinished` in their condition, so the predicate matches under a generic plan too.
DROP INDEX upload_pipeline.upload_jobs_claim_idx;
CREATE INDEX upload_jobs_claim_idx ON upload_pipeline.upload_jobs (fair_tag, next_attempt_at) WHERE unfinished;

CREATE OR REPLACE FUNCTION upload_pipeline.assign_fair_tag() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  share double precision;
  virtual_time double precision;
BEGIN
  IF NEW.tenant_id IS NULL THEN
    SELECT coalesce(d.tenant_id, d.user_id::text) INTO NEW.tenant_id FROM upload_pipeline.documents d WHERE d.document_id = NEW.document_id;
  END IF;
  -- A repeated insert (ON CONFLICT DO NOTHING) must not advance the tenant's flow.
  IF EXISTS (SELECT 1 FROM upload_pipeline.upload_jobs j WHERE j.job_id = NEW.job_id) THEN
    RETURN NEW;
  END IF;
  INSERT INTO upload_pipeline.tenants (tenant_id) VALUES (NEW.tenant_id) ON CONFLICT DO NOTHING;
  SELECT t.weight * l.weight INTO share
    FROM upload_pipeline.tenants t, upload_pipeline.lanes l
   WHERE t.tenant_id = NEW.tenant_id AND l.lane = NEW.lane;
  -- Virtual time: the smallest tag still in the queue (the job being served longest), else the
  -- newest tag ever handed out. Both are one index probe.
  SELECT coalesce(
           (SELECT j.fair_tag FROM upload_pipeline.upload_jobs j WHERE j.unfinished ORDER BY j.fair_tag LIMIT 1),
           (SELECT max(f.finish_tag) FROM upload_pipeline.fair_flows f),
           0)
    INTO virtual_time;
  INSERT INTO upload_pipeline.fair_flows AS f (tenant_id, lane, finish_tag)
  VALUES (NEW.tenant_id, NEW.lane, virtual_time + 1 / share)
  ON CONFLICT (tenant_id, lane) DO UPDATE SET finish_tag = greatest(f.finish_tag, virtual_time) + 1 / share
  RETURNING f.finish_tag INTO NEW.fair_tag;
  RETURN NEW;
END
$$;

-- The holder index (0009) took an entry at every claim and release; without it a claim leaves
-- every indexed column as it was and is HOT too. The reaper, its only reader, finds a dead
-- worker's jobs among the unfinished ones through the claim index instead: a job in a terminal
-- state holds no lease worth taking back.
DROP INDEX upload_pipeline.upload_jobs_locked_by_idx;
