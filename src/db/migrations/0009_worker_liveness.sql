-- Worker liveness: a SIGKILLed or OOM-killed worker's jobs are taken over within seconds instead
-- of after its lease (LEASE_SECONDS, 60 by default). Each worker process registers here and holds
-- a session-level advisory lock on its row's key on its long-lived LISTEN connection; Postgres
-- drops that lock the moment the session ends (the kernel closes a dead process's socket). Any
-- worker that can take the lock itself knows the holder is gone and releases its jobs (Que's
-- technique). A frozen but living process keeps its connection and its lock: the lease still
-- covers that case. Registrations from before the server's last start are never judged, since a
-- restart drops every lock; their workers register again when they reconnect.
CREATE TABLE upload_pipeline.workers (
  worker_id     text PRIMARY KEY,
  lock_key      integer NOT NULL UNIQUE,
  registered_at timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE upload_pipeline.worker_lock_key_seq AS integer CYCLE OWNED BY upload_pipeline.workers.lock_key;
-- Jobs are looked up by their holder when a dead worker is reaped.
CREATE INDEX upload_jobs_locked_by_idx ON upload_pipeline.upload_jobs (locked_by) WHERE locked_by IS NOT NULL;
