-- Embedding profiles (issue 14): a profile names a chunker (name, version, settings) and an
-- embedding (model, dimensions, version). Exactly one profile is `active` (it serves search and
-- GET /jobs); during a model migration one more is the `target`, re-embedded side by side. The
-- active profile is written at first start from the worker's configuration (src/profiles/), so an
-- existing deployment needs nothing.
CREATE TABLE upload_pipeline.embedding_profiles (
  profile_id           text PRIMARY KEY CHECK (profile_id ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
  chunker_name         text NOT NULL,
  chunker_version      text NOT NULL,
  chunk_max_tokens     integer NOT NULL CHECK (chunk_max_tokens > 0),
  chunk_overlap_tokens integer NOT NULL CHECK (chunk_overlap_tokens >= 0),
  embed_model          text NOT NULL,
  embed_dimensions     integer NOT NULL CHECK (embed_dimensions > 0),
  embed_version        text NOT NULL,
  role                 text NOT NULL CHECK (role IN ('active', 'target', 'retired')),
  created_at           timestamptz NOT NULL DEFAULT now(),
  activated_at         timestamptz
);
CREATE UNIQUE INDEX embedding_profiles_one_active ON upload_pipeline.embedding_profiles ((true)) WHERE role = 'active';
CREATE UNIQUE INDEX embedding_profiles_one_target ON upload_pipeline.embedding_profiles ((true)) WHERE role = 'target';
GRANT SELECT ON upload_pipeline.embedding_profiles TO authenticated;
ALTER TABLE upload_pipeline.embedding_profiles ENABLE ROW LEVEL SECURITY;
-- Which profile serves search is no secret: match_chunks (SECURITY INVOKER) reads it as the user.
CREATE POLICY embedding_profiles_read ON upload_pipeline.embedding_profiles FOR SELECT TO authenticated USING (true);

-- A migration job re-embeds one document into one profile: a second upload_jobs row for the
-- document, `profile_id` set, in the bulk lane. The upload's own job keeps profile_id NULL and
-- stays the one per document that uploads, GET /jobs and the dead letter see.
ALTER TABLE upload_pipeline.upload_jobs
  ADD COLUMN profile_id text REFERENCES upload_pipeline.embedding_profiles (profile_id) ON DELETE CASCADE;
ALTER TABLE upload_pipeline.upload_jobs DROP CONSTRAINT upload_jobs_document_id_key;
CREATE UNIQUE INDEX upload_jobs_upload_document_idx ON upload_pipeline.upload_jobs (document_id) WHERE profile_id IS NULL;
CREATE UNIQUE INDEX upload_jobs_profile_document_idx ON upload_pipeline.upload_jobs (profile_id, document_id) WHERE profile_id IS NOT NULL;

-- pgvector: rows per profile. Rows promoted before profiles existed belong to the profile the
-- first start derives from the configuration, named `default`.
DO $do$
BEGIN
  IF to_regclass('upload_pipeline.document_chunks') IS NULL THEN
    RETURN;
  END IF;
  ALTER TABLE upload_pipeline.document_chunks ADD COLUMN profile_id text NOT NULL DEFAULT 'default';
  ALTER TABLE upload_pipeline.document_chunks ALTER COLUMN profile_id DROP DEFAULT;
  ALTER TABLE upload_pipeline.document_chunks DROP CONSTRAINT document_chunks_pkey;
  ALTER TABLE upload_pipeline.document_chunks ADD PRIMARY KEY (profile_id, chunk_id);

  -- Search serves the active profile (or filter.profile_id): its model and width are written into
  -- the query as literals, so the planner uses that model's partial HNSW index (0007) or the
  -- profile's own (created by `migrate-model start`). A query vector of another width is a
  -- caller's mistake, named as such.
  EXECUTE $fn$
    CREATE OR REPLACE FUNCTION upload_pipeline.match_chunks(query_embedding vector, match_count integer DEFAULT 10, filter jsonb DEFAULT '{}')
    RETURNS TABLE (chunk_id uuid, document_id uuid, chunk_ord integer, text text, meta jsonb, embed_model text, similarity double precision)
    LANGUAGE plpgsql STABLE SECURITY INVOKER AS $body$
    DECLARE
      p record;
      dims integer := vector_dims(query_embedding);
      kind text := CASE WHEN vector_dims(query_embedding) > 2000 THEN 'halfvec' ELSE 'vector' END;
    BEGIN
      IF match_count IS NULL OR match_count < 1 OR match_count > 1000 THEN
        RAISE EXCEPTION 'match_count must be between 1 and 1000, got %', match_count USING ERRCODE = '22023';
      END IF;
      IF filter IS NULL OR jsonb_typeof(filter) <> 'object' THEN
        RAISE EXCEPTION 'filter must be a JSON object such as {"document_id": "…"}' USING ERRCODE = '22023';
      END IF;
      SELECT e.profile_id, e.embed_model, e.embed_dimensions INTO p FROM upload_pipeline.embedding_profiles e
       WHERE CASE WHEN filter ? 'profile_id' THEN e.profile_id = filter ->> 'profile_id' ELSE e.role = 'active' END;
      IF p.profile_id IS NULL THEN
        RAISE EXCEPTION 'no embedding profile %', coalesce(filter ->> 'profile_id', 'is active yet (a worker writes it at its first start)') USING ERRCODE = '22023';
      END IF;
      IF filter ? 'embed_model' AND filter ->> 'embed_model' <> p.embed_model THEN
        RAISE EXCEPTION 'profile % embeds with %, not %', p.profile_id, p.embed_model, filter ->> 'embed_model' USING ERRCODE = '22023';
      END IF;
      IF dims <> p.embed_dimensions THEN
        RAISE EXCEPTION 'query_embedding has % dimensions; profile % embeds with % at %', dims, p.profile_id, p.embed_model, p.embed_dimensions USING ERRCODE = '22023';
      END IF;
      RETURN QUERY EXECUTE format(
        'SELECT c.chunk_id, c.document_id, c.chunk_ord, c.text, c.meta, c.embed_model,
                1 - (c.embedding::%1$s(%2$s) <=> $1::%1$s(%2$s)) AS similarity
           FROM upload_pipeline.document_chunks c
          WHERE c.profile_id = %4$L AND c.embed_model = %3$L AND vector_dims(c.embedding) = %2$s
            AND c.meta @> ($3 - ''embed_model'' - ''document_id'' - ''profile_id'')
            AND ($3 ->> ''document_id'' IS NULL OR c.document_id = ($3 ->> ''document_id'')::uuid)
          ORDER BY c.embedding::%1$s(%2$s) <=> $1::%1$s(%2$s)
          LIMIT $2', kind, dims, p.embed_model, p.profile_id)
        USING query_embedding, match_count, filter;
    END
    $body$
  $fn$;
END
$do$;
