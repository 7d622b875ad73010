-- The Observation Deck (docs/deck.md): sign-in sessions, and the indexes its views read
-- through so that a 5 s refresh does not scan the bond ledger.

-- A session is the SHA-256 of a random 256-bit id kept in an HttpOnly cookie; it lives
-- while its key is active and until expires_at. Deleting the key's row ends it too.
CREATE TABLE deck_sessions (
    id_hash    text PRIMARY KEY CHECK (id_hash ~ '^[0-9a-f]{64}$'),
    key_id     bigint NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    csrf_token text NOT NULL CHECK (csrf_token ~ '^[0-9a-f]{64}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
-- Pruning expired sessions, and ending a key's sessions.
CREATE INDEX deck_sessions_expires ON deck_sessions (expires_at);
CREATE INDEX deck_sessions_key ON deck_sessions (key_id);

-- The phase x risk grid of the overview: an index-only scan of two short columns.
CREATE INDEX bonds_phase_risk ON bonds (phase, risk_level);
-- Needs attention: users at today's cap, newest first.
CREATE INDEX bonds_at_cap ON bonds (last_updated DESC)
    WHERE daily_msg_cap > 0 AND daily_msg_count >= daily_msg_cap;
-- The bonds table's search by user id (a prefix, compared byte-wise).
CREATE INDEX bonds_user_prefix ON bonds (user_id text_pattern_ops);
-- Needs attention: users with queued proposals.
CREATE INDEX proposals_queued_user ON proposals (user_id) WHERE status = 'queued';
