-- One rate budget for the whole fleet, and fair scheduling across tenants and lanes (issue 12).
-- Valid on PostgreSQL 15 (Supabase) and newer.

-- ---------------------------------------------------------------------------------------------
-- The governor: the RPM/TPM budget of each (provider, key, model), shared by every worker.
-- A token bucket per dimension whose level may go negative: a reservation always succeeds and
-- gets the time it may send at (when the level is back at zero), so callers queue first come,
-- first served across processes with one statement and no lock held across the HTTP call.
CREATE TABLE upload_pipeline.rate_budgets (
  budget_key     text PRIMARY KEY,                 -- "openai:<sha256(key)[:16]>:<model>": never the key itself
  requests_level double precision NOT NULL,        -- requests left; negative = promised to waiting callers
  tokens_level   double precision NOT NULL,
  refilled_at    timestamptz NOT NULL,             -- the levels are as of this instant
  server_rpm     integer CHECK (server_rpm > 0),   -- x-ratelimit-limit-*: the key's own limits, which cap
  server_tpm     integer CHECK (server_tpm > 0),   -- the deployment's ceiling (OPENAI_RPM/OPENAI_TPM)
  paused_until   timestamptz NOT NULL DEFAULT '-infinity', -- retry-after from any worker's 429
  updated_at     timestamptz NOT NULL DEFAULT now()
);

-- What each worker took, until it settles with the answer's usage (or the row expires: a crashed
-- worker's reservation stays spent, since it may have been sent, and stops counting as in flight).
-- Settled rows are kept until they expire: an answer's x-ratelimit-remaining-* has not counted the
-- requests granted after it, and those rows say how much that is.
CREATE TABLE upload_pipeline.rate_reservations (
  reservation_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- grant order
  budget_key     text NOT NULL REFERENCES upload_pipeline.rate_budgets (budget_key) ON DELETE CASCADE,
  holder         text NOT NULL,                    -- worker id, for the operator
  requests       integer NOT NULL CHECK (requests >= 0),
  tokens         integer NOT NULL CHECK (tokens >= 0),
  send_at        timestamptz NOT NULL,
  expires_at     timestamptz NOT NULL,
  settled_tokens integer CHECK (settled_tokens >= 0),
  settled_at     timestamptz
);
CREATE INDEX rate_reservations_budget_idx ON upload_pipeline.rate_reservations (budget_key, reservation_id);
CREATE INDEX rate_reservations_expiry_idx ON upload_pipeline.rate_reservations (budget_key, expires_at);

-- ---------------------------------------------------------------------------------------------
-- Fair scheduling: weighted fair queueing by finish tag. Each (tenant, lane) is a flow; a new job
-- gets fair_tag = max(the flow's last tag, the queue's virtual time) + 1 / (tenant weight × lane
-- weight), and the claim takes the due job with the smallest tag. A tenant with 10,000 queued
-- jobs has tags far ahead; one that uploads now starts at the virtual time and is served next.

-- Lanes: interactive (the default) ahead of bulk; bulk's smaller weight still gives it a share.
CREATE TABLE upload_pipeline.lanes (
  lane   text PRIMARY KEY CHECK (lane ~ '^[a-z][a-z0-9_]{0,31}$'),
  weight double precision NOT NULL CHECK (weight > 0)
);
INSERT INTO upload_pipeline.lanes (lane, weight) VALUES ('interactive', 1), ('bulk', 0.25);

-- Tenants: a document's user_id, or a tenant_id given by a service-role caller. Weight 1 unless
-- an operator sets another (UPDATE upload_pipeline.tenants SET weight = 4 WHERE tenant_id = …).
CREATE TABLE upload_pipeline.tenants (
  tenant_id  text PRIMARY KEY,
  weight     double precision NOT NULL DEFAULT 1 CHECK (weight > 0),
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE upload_pipeline.fair_flows (
  tenant_id  text NOT NULL REFERENCES upload_pipeline.tenants (tenant_id),
  lane       text NOT NULL REFERENCES upload_pipeline.lanes (lane),
  finish_tag double precision NOT NULL,            -- the tag of the flow's latest job
  PRIMARY KEY (tenant_id, lane)
);
-- The virtual time of an empty queue is the newest tag handed out.
CREATE INDEX fair_flows_finish_idx ON upload_pipeline.fair_flows (finish_tag);

-- What the upload asked for (the signed-upload flow creates the job later, at finalize).
ALTER TABLE upload_pipeline.documents
  ADD COLUMN tenant_id text,                       -- null: the tenant is user_id
  ADD COLUMN lane text NOT NULL DEFAULT 'interactive' REFERENCES upload_pipeline.lanes (lane);

ALTER TABLE upload_pipeline.upload_jobs
  ADD COLUMN tenant_id text,
  ADD COLUMN lane text NOT NULL DEFAULT 'interactive' REFERENCES upload_pipeline.lanes (lane),
  ADD COLUMN fair_tag double precision NOT NULL DEFAULT 0;
UPDATE upload_pipeline.upload_jobs j SET tenant_id = d.user_id::text
  FROM upload_pipeline.documents d WHERE d.document_id = j.document_id;
ALTER TABLE upload_pipeline.upload_jobs ALTER COLUMN tenant_id SET NOT NULL;

-- The claim's index: non-terminal jobs in fair order. next_attempt_at is a key column so that
-- "due" is checked inside the index (jobs waiting for a webhook or a backoff are skipped without
-- reading the table). The predicate is spelled exactly as the claim spells it, as constants, so
-- it matches under a generic plan too.
CREATE INDEX upload_jobs_claim_idx ON upload_pipeline.upload_jobs (fair_tag, next_attempt_at)
  WHERE status NOT IN ('complete', 'failed_parse', 'failed_chunking', 'failed_embedding');
-- Replaced by upload_jobs_claim_idx; keeping it would cost a write per transition for nothing.
DROP INDEX upload_pipeline.upload_jobs_actionable_idx;

CREATE FUNCTION upload_pipeline.assign_fair_tag() RETURNS trigger LANGUAGE plpgsql AS $$
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
           (SELECT j.fair_tag FROM upload_pipeline.upload_jobs j
             WHERE j.status NOT IN ('complete', 'failed_parse', 'failed_chunking', 'failed_embedding')
             ORDER BY j.fair_tag LIMIT 1),
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
CREATE TRIGGER upload_jobs_fair_tag BEFORE INSERT ON upload_pipeline.upload_jobs
  FOR EACH ROW EXECUTE FUNCTION upload_pipeline.assign_fair_tag();
