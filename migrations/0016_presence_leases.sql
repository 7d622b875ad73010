-- Presence by instance lease (docs/architecture.md, "Delivery in detail"). Before this,
-- every instance pushed devices.connected_until forward for every device it held, every
-- heartbeat_s/2: with 100,000 devices that was the main idle load. Now a device names the
-- instance holding a socket of it (devices.host, set by its hello and cleared when the
-- last socket there closes), and the instance renews one lease row of its own instead.
-- A device is online while its host's lease has not lapsed, so a crashed instance's
-- devices drop offline together when its lease does.
--
-- connected_until stays: instances of the previous version still write it during a
-- rolling upgrade, so every reader counts a device online when either says so.

-- One row per instance (its random id, as in the cross-instance notifications), renewed
-- every heartbeat_s/2 to now() + 2 x heartbeat_s + 10 s; rows lapsed for a day are
-- pruned by the renewals of the living instances.
CREATE TABLE device_hosts (
    instance    text PRIMARY KEY CHECK (length(instance) BETWEEN 1 AND 64),
    lease_until timestamptz NOT NULL
);

-- The instance holding a socket of the device (NULL: none). No foreign key: a hello
-- never waits on the lease row, and a row pruned under a dead instance's devices leaves
-- them offline, as a lapsed lease does.
ALTER TABLE devices ADD COLUMN host text;
-- A shutdown clears its own devices, and a prune those of the instances it removes.
CREATE INDEX devices_host ON devices (host) WHERE host IS NOT NULL;

-- The ingest function of 0009_notify.sql, unchanged but for the pause rule: a device
-- counts as seen when registered (last_seen_at), while connected through an instance of
-- the previous version (connected_until) and while its host's lease runs; a lapsed lease
-- counts as the device's last sighting (until the prune folds it into last_seen_at).
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
    -- A device counts as seen when registered (last_seen_at), while connected (its
    -- host's lease, or connected_until of a previous version), and until its host's
    -- lease lapsed.
    SELECT count(*) > 0 AND NOT coalesce(bool_or(
               d.last_seen_at >= now() - make_interval(days => v_pause_days)
               OR d.connected_until > now()
               OR h.lease_until >= now() - make_interval(days => v_pause_days)), false)
      INTO v_paused
      FROM devices d LEFT JOIN device_hosts h ON h.instance = d.host
     WHERE d.user_id = v_user;
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

-- The notification of an ack (a|instance|proposal|device|user, through steward_notify),
-- sent only when another device of the user is held by another instance (its host's lease
-- runs, or connected_until of a previous version): only there are sessions to tell that
-- the proposal is resolved. Returns whether it was sent. PL/pgSQL and VOLATILE, so that
-- under READ COMMITTED the check takes a snapshot of its own after the ack's UPDATE (which
-- waits for a delivery pass holding the proposal's row): a device whose hello committed
-- before that pass marked the proposal delivered to it is seen here.
CREATE FUNCTION scouts_ack_notify(p_instance text, p_proposal text, p_device text,
                                  p_user text) RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM devices d LEFT JOIN device_hosts h ON h.instance = d.host
                    WHERE d.user_id = p_user AND d.id <> p_device::uuid
                      AND ((d.host <> p_instance AND h.lease_until > now())
                           OR d.connected_until > now())) THEN
        RETURN false;
    END IF;
    PERFORM steward_notify('a', p_instance, p_proposal, p_device, p_user);
    RETURN true;
END
$$;
