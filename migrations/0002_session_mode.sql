-- How MCP sessions share the server: 'shared' (one container for all sessions) or
-- 'isolated' (one container per session, made on initialize, removed when it ends).
ALTER TABLE deployments ADD COLUMN session_mode TEXT NOT NULL DEFAULT 'shared';
