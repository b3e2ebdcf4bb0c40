-- Supabase-native access: row-level security on every table in upload_pipeline, the roles and
-- auth.uid() that Supabase's PostgREST relies on, and (where pgvector exists) similarity search
-- with one HNSW index per embedding model.
--
-- The same SQL runs on Supabase and on a plain PostgreSQL (the embedded default, CI): Supabase
-- ships the roles `anon`, `authenticated` and `service_role` and the function auth.uid(); here
-- they are created only when absent, with Supabase's definitions, so policies mean the same thing
-- everywhere. The pipeline itself connects as the tables' owner (`postgres`), which row-level
-- security does not restrict (no FORCE), so the worker and the API are unaffected.

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
    CREATE ROLE anon NOLOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    CREATE ROLE authenticated NOLOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
    CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
  END IF;
END
$$;

DO $$
BEGIN
  IF to_regnamespace('auth') IS NULL THEN
    CREATE SCHEMA auth;
  END IF;
  -- Supabase's own definition: PostgREST puts the verified JWT's claims in request.jwt.claims
  -- (older versions in request.jwt.claim.sub) for the transaction that serves the request.
  IF to_regprocedure('auth.uid()') IS NULL THEN
    CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $fn$
      SELECT coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
      )::uuid
    $fn$;
    GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
    GRANT EXECUTE ON FUNCTION auth.uid() TO anon, authenticated, service_role;
  END IF;
END
$$;

-- Every table in the schema, including document_chunks where 0002 created it, and any table an
-- earlier migration added: RLS on, and nothing visible to a role without a policy.
DO $$
DECLARE t record;
BEGIN
  FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'upload_pipeline' LOOP
    EXECUTE format('ALTER TABLE upload_pipeline.%I ENABLE ROW LEVEL SECURITY', t.tablename);
  END LOOP;
END
$$;

-- ...and every table a later migration adds: an event trigger turns RLS on as the table is
-- created, so a new table is never readable by `authenticated` before someone writes its policy.
-- Creating an event trigger needs a superuser (or, on Supabase, the `postgres` role through
-- supautils); without that right this step is skipped with a notice, and
-- test/db/rls.test.ts's "every table" check is what catches a table left without RLS.
CREATE FUNCTION upload_pipeline.enable_rls_on_new_table() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE t record;
BEGIN
  FOR t IN SELECT object_identity FROM pg_event_trigger_ddl_commands()
            WHERE object_type = 'table' AND schema_name = 'upload_pipeline' LOOP
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t.object_identity);
  END LOOP;
END
$$;
DO $$
BEGIN
  CREATE EVENT TRIGGER upload_pipeline_enable_rls ON ddl_command_end WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
    EXECUTE FUNCTION upload_pipeline.enable_rls_on_new_table();
EXCEPTION WHEN insufficient_privilege THEN
  RAISE NOTICE 'no right to create an event trigger: tables added later need ENABLE ROW LEVEL SECURITY in their own migration';
END
$$;

-- The service role (the API's key, Supabase's dashboard) reads and writes everything; its
-- BYPASSRLS attribute skips the policies. `anon` gets nothing.
GRANT USAGE ON SCHEMA upload_pipeline TO service_role, authenticated;
GRANT ALL ON ALL TABLES IN SCHEMA upload_pipeline TO service_role;
GRANT ALL ON ALL SEQUENCES IN SCHEMA upload_pipeline TO service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA upload_pipeline GRANT ALL ON TABLES TO service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA upload_pipeline GRANT ALL ON SEQUENCES TO service_role;

-- A signed-in user reads their own documents and what hangs off them, and writes nothing (uploads
-- and retries go through the API). upload_jobs is granted column by column: webhook_secret and
-- the lease columns stay private.
GRANT SELECT ON upload_pipeline.documents, upload_pipeline.document_chunk_buffer,
  upload_pipeline.document_vector_buffer, upload_pipeline.job_events TO authenticated;
GRANT SELECT (job_id, document_id, status, progress, attempts, max_attempts, next_attempt_at,
  last_error, correlation_id, created_at, updated_at) ON upload_pipeline.upload_jobs TO authenticated;

-- `(SELECT auth.uid())` is evaluated once per statement, not per row (Supabase's advice).
CREATE POLICY documents_owner_read ON upload_pipeline.documents
  FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()));
CREATE POLICY upload_jobs_owner_read ON upload_pipeline.upload_jobs
  FOR SELECT TO authenticated USING (document_id IN (
    SELECT document_id FROM upload_pipeline.documents WHERE user_id = (SELECT auth.uid())));
CREATE POLICY chunk_buffer_owner_read ON upload_pipeline.document_chunk_buffer
  FOR SELECT TO authenticated USING (document_id IN (
    SELECT document_id FROM upload_pipeline.documents WHERE user_id = (SELECT auth.uid())));
CREATE POLICY vector_buffer_owner_read ON upload_pipeline.document_vector_buffer
  FOR SELECT TO authenticated USING (chunk_id IN (
    SELECT c.chunk_id FROM upload_pipeline.document_chunk_buffer c
      JOIN upload_pipeline.documents d USING (document_id) WHERE d.user_id = (SELECT auth.uid())));
CREATE POLICY job_events_owner_read ON upload_pipeline.job_events
  FOR SELECT TO authenticated USING (job_id IN (
    SELECT j.job_id FROM upload_pipeline.upload_jobs j
      JOIN upload_pipeline.documents d USING (document_id) WHERE d.user_id = (SELECT auth.uid())));

-- pgvector (where 0002 created document_chunks).
DO $do$
BEGIN
  IF to_regclass('upload_pipeline.document_chunks') IS NULL THEN
    RETURN;
  END IF;

  GRANT SELECT ON upload_pipeline.document_chunks TO authenticated;
  CREATE POLICY document_chunks_owner_read ON upload_pipeline.document_chunks
    FOR SELECT TO authenticated USING (document_id IN (
      SELECT document_id FROM upload_pipeline.documents WHERE user_id = (SELECT auth.uid())));

  -- 0002 indexed every 1536-dimension vector in one HNSW index, whatever model made it: after a
  -- model change (text-embedding-3-large at dimensions=1536 and -3-small are both 1536 wide) one
  -- index would hold two incomparable vector spaces. One partial index per model instead, so no
  -- index ever holds two models; the finish stage keeps one model per document.
  DROP INDEX IF EXISTS upload_pipeline.document_chunks_embedding_hnsw;
  CREATE INDEX document_chunks_hnsw_3_small_1536 ON upload_pipeline.document_chunks
    USING hnsw ((embedding::vector(1536)) vector_cosine_ops)
    WHERE embed_model = 'text-embedding-3-small' AND vector_dims(embedding) = 1536;
  CREATE INDEX document_chunks_hnsw_ada_002_1536 ON upload_pipeline.document_chunks
    USING hnsw ((embedding::vector(1536)) vector_cosine_ops)
    WHERE embed_model = 'text-embedding-ada-002' AND vector_dims(embedding) = 1536;
  -- HNSW over `vector` stops at 2,000 dimensions; -3-large's native 3,072 is indexed as halfvec.
  CREATE INDEX document_chunks_hnsw_3_large_3072 ON upload_pipeline.document_chunks
    USING hnsw ((embedding::halfvec(3072)) halfvec_cosine_ops)
    WHERE embed_model = 'text-embedding-3-large' AND vector_dims(embedding) = 3072;
  CREATE INDEX document_chunks_document_idx ON upload_pipeline.document_chunks (document_id);

  -- Similarity search in the style of Supabase's match_documents: the caller's rights apply
  -- (SECURITY INVOKER), so under RLS a user only ever ranks their own documents' chunks. The
  -- query is built with the model and width as literals so the planner can use that model's
  -- partial HNSW index. `filter`: {"embed_model": …} (default text-embedding-3-small),
  -- {"document_id": …}, and anything else is matched against the chunk's meta (`meta @> …`).
  EXECUTE $fn$
    CREATE FUNCTION upload_pipeline.match_chunks(query_embedding vector, match_count integer DEFAULT 10, filter jsonb DEFAULT '{}')
    RETURNS TABLE (chunk_id uuid, document_id uuid, chunk_ord integer, text text, meta jsonb, embed_model text, similarity double precision)
    LANGUAGE plpgsql STABLE SECURITY INVOKER AS $body$
    DECLARE
      model text := coalesce(filter ->> 'embed_model', 'text-embedding-3-small');
      dims integer := vector_dims(query_embedding);
      kind text := CASE WHEN vector_dims(query_embedding) > 2000 THEN 'halfvec' ELSE 'vector' END;
    BEGIN
      IF match_count IS NULL OR match_count < 1 OR match_count > 1000 THEN
        RAISE EXCEPTION 'match_count must be between 1 and 1000, got %', match_count USING ERRCODE = '22023';
      END IF;
      IF filter IS NULL OR jsonb_typeof(filter) <> 'object' THEN
        RAISE EXCEPTION 'filter must be a JSON object such as {"document_id": "…"}' USING ERRCODE = '22023';
      END IF;
      RETURN QUERY EXECUTE format(
        'SELECT c.chunk_id, c.document_id, c.chunk_ord, c.text, c.meta, c.embed_model,
                1 - (c.embedding::%1$s(%2$s) <=> $1::%1$s(%2$s)) AS similarity
           FROM upload_pipeline.document_chunks c
          WHERE c.embed_model = %3$L AND vector_dims(c.embedding) = %2$s
            AND c.meta @> ($3 - ''embed_model'' - ''document_id'')
            AND ($3 ->> ''document_id'' IS NULL OR c.document_id = ($3 ->> ''document_id'')::uuid)
          ORDER BY c.embedding::%1$s(%2$s) <=> $1::%1$s(%2$s)
          LIMIT $2', kind, dims, model)
        USING query_embedding, match_count, filter;
    END
    $body$
  $fn$;
  REVOKE ALL ON FUNCTION upload_pipeline.match_chunks(vector, integer, jsonb) FROM PUBLIC;
  GRANT EXECUTE ON FUNCTION upload_pipeline.match_chunks(vector, integer, jsonb) TO authenticated, service_role;
END
$do$;
