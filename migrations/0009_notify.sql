-- One sender for the cross-instance notifications of the scouts module (their format
-- is described in src/scouts/scouts_notify.h). steward_notify('a', 'x', 'y') notifies
-- the channel steward_scouts with the payload 'a|x|y': the kind letter and the parts
-- joined with '|', byte for byte the text the statements built by hand before, so
-- instances of the previous version understand it during a rolling upgrade. A NULL
-- part makes the payload NULL, which pg_notify sends as an empty one (as the
-- concatenations did); listeners ignore it.
CREATE FUNCTION steward_notify(kind text, VARIADIC parts text[]) RETURNS void
LANGUAGE sql VOLATILE
AS $$
    SELECT pg_notify('steward_scouts',
                     CASE WHEN array_position(parts, NULL) IS NULL
                          THEN kind || '|' || array_to_string(parts, '|') END)
$$;

-- The ingest function of 0007_scouts_ingest.sql, unchanged but for its notification,
-- which now goes through steward_notify.
CREATE OR REPLACE FUNCTION scouts_ingest(
    p_scout_id uuid, p_source_msg_ref text, p_spam boolean, p_source_type text,
    p_reason text, p_subject text, p_snippet text, p_ttl_days integer,
    OUT outcome text, OUT proposal_id uuid, OUT archive boolean)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_user text;
    v_enabled boolean;
    v_pause_days integer;
    v_provider text;
    v_paused boolean;
BEGIN
    SELECT s.user_id, s.enabled, s.auto_trash_spam, s.device_inactivity_pause_days, s.provider
      INTO v_user, v_enabled, archive, v_pause_days, v_provider
      FROM scouts s WHERE s.id = p_scout_id;
    IF NOT FOUND THEN
        outcome := 'not_found';
        archive := NULL;
        RETURN;
    END IF;
    IF NOT v_enabled THEN
        outcome := 'disabled';
        archive := NULL;
        RETURN;
    END IF;
    IF p_spam THEN
        outcome := 'spam';
        RETURN;
    END IF;
    archive := NULL;
    -- A device counts as seen when registered (last_seen_at) and while connected.
    SELECT count(*) > 0 AND NOT coalesce(bool_or(
               d.last_seen_at >= now() - make_interval(days => v_pause_days)
               OR d.connected_until > now()), false)
      INTO v_paused
      FROM devices d WHERE d.user_id = v_user;
    IF NOT v_paused THEN
        INSERT INTO proposals (scout_id, user_id, source_type, source_msg_ref, reason,
                               raw_subject, raw_snippet, expires_at)
        VALUES (p_scout_id, v_user, coalesce(p_source_type, v_provider), p_source_msg_ref,
                p_reason, p_subject, p_snippet, now() + make_interval(days => p_ttl_days))
        ON CONFLICT (scout_id, source_msg_ref) DO NOTHING
        RETURNING id INTO proposal_id;
        IF proposal_id IS NOT NULL THEN
            PERFORM steward_notify('q', v_user);
            outcome := 'queued';
            RETURN;
        END IF;
    END IF;
    SELECT p.id INTO proposal_id FROM proposals p
     WHERE p.scout_id = p_scout_id AND p.source_msg_ref = p_source_msg_ref;
    IF FOUND THEN
        outcome := 'duplicate';
    ELSIF v_paused THEN
        outcome := 'paused';
    ELSE
        outcome := 'conflict';
    END IF;
END
$$;
