-- Item ingest (SPEC 5) in a single round trip: the scout check, the spam verdict, the
-- pause rule, the idempotent insert and the cross-instance wake-up run inside one
-- function call, which the server sends as one autocommitted statement (no BEGIN or
-- COMMIT trips, no transaction left idle waiting for the client).
--
-- Outcomes: 'not_found' (no such scout), 'disabled', 'spam' (archive set), 'duplicate'
-- (proposal_id of the earlier proposal), 'paused' (no device of the user seen within the
-- scout's window while at least one is registered), 'queued' (proposal_id of the new
-- proposal) and 'conflict' (the item collided with a proposal that was gone again by the
-- time it was looked up).
--
-- A duplicate wins over the pause rule: an item already queued answers 'duplicate' even
-- when the user's devices have gone quiet since. The insert comes before the lookup of an
-- existing proposal, so a new item costs one index probe less; under READ COMMITTED each
-- statement of this volatile function takes a fresh snapshot, so after ON CONFLICT DO
-- NOTHING (which waits for a concurrent insert of the same item to commit or abort) the
-- lookup sees the row that won. The NOTIFY is part of the statement's transaction:
-- listeners hear of the proposal when it commits, never before.
CREATE FUNCTION scouts_ingest(
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
            PERFORM pg_notify('steward_scouts', 'q|' || v_user);
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
