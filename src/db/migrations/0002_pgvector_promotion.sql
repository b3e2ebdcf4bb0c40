-- Where the `vector` extension is available (Supabase, docker-compose.local.yml), finished
-- vectors are also promoted into `document_chunks` with a pgvector column and an HNSW index.
-- Elsewhere (the embedded default) this migration records itself and does nothing, so the
-- same migration history is valid on both.
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') THEN
    CREATE EXTENSION IF NOT EXISTS vector;
    CREATE TABLE IF NOT EXISTS upload_pipeline.document_chunks (
      chunk_id      uuid PRIMARY KEY REFERENCES upload_pipeline.document_chunk_buffer (chunk_id) ON DELETE CASCADE,
      document_id   uuid NOT NULL REFERENCES upload_pipeline.documents (document_id) ON DELETE CASCADE,
      chunk_ord     integer NOT NULL,
      text          text NOT NULL,
      meta          jsonb NOT NULL,
      embed_model   text NOT NULL,
      embedding     vector NOT NULL,
      created_at    timestamptz NOT NULL DEFAULT now()
    );
    -- HNSW needs a fixed dimension: index the default model's 1536 (text-embedding-3-small).
    CREATE INDEX IF NOT EXISTS document_chunks_embedding_hnsw
      ON upload_pipeline.document_chunks USING hnsw ((embedding::vector(1536)) vector_cosine_ops)
      WHERE vector_dims(embedding) = 1536;
  END IF;
END
$$;
