-- OpenTelemetry: the W3C traceparent of the document's trace, so any worker that takes the job
-- (after a retry or a crash) continues the same trace. NULL until tracing first sees the job.
ALTER TABLE upload_pipeline.upload_jobs ADD COLUMN traceparent text;
