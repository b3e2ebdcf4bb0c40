-- A service that refuses the account (a wrong or rotated key, no quota, no LlamaParse credits, a
-- missing bucket) is a condition of the whole fleet, not of a document. Workers, whose breakers
-- see it, record each change here; the API's /healthz reads it. One row per service: the last
-- change any worker reported.
CREATE TABLE IF NOT EXISTS upload_pipeline.service_conditions (
  service      text PRIMARY KEY CHECK (service IN ('openai', 'llamaparse', 'storage')),
  refusing     boolean NOT NULL,
  -- The refused answer's stable code (e.g. openai_insufficient_quota) and message, never a secret.
  code         text,
  reason       text,
  since        timestamptz,
  reported_by  text NOT NULL,
  updated_at   timestamptz NOT NULL DEFAULT now()
);
