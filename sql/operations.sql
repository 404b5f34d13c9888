-- The drain's SQL half: claim a batch and serialize it, record outcomes, log
-- requests. The Rust half (src/engine) decides what to send and talks to the CRM
-- between these calls, with no transaction open when it runs in the worker.

-- Records move with their rows: the CRM object of old key i now belongs to new
-- key i (one statement's moves, applied at once: a swap is a permutation). A new
-- key whose own record still holds another CRM object (its row was deleted and not
-- drained yet) keeps that one; the moving object then stays with the old key,
-- whose row is gone, and is archived.
CREATE FUNCTION etlify._apply_moves(p_mapping int, p_old text[], p_new text[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_from  text[];
    v_moved etlify.records[];
BEGIN
    SELECT array_agg(m.old),
           array_agg(ROW(p_mapping, m.new, rec.state, rec.crm_id, rec.digest, rec.last_synced_at,
                         rec.error_count, rec.last_error, now(), rec.waits_position, rec.waits_key)::etlify.records)
      INTO v_from, v_moved
      FROM unnest(p_old, p_new) AS m(old, new)
      JOIN etlify.records rec ON rec.mapping_id = p_mapping AND rec.key = m.old
     WHERE NOT EXISTS (SELECT 1 FROM etlify.records t
                        WHERE t.mapping_id = p_mapping AND t.key = m.new AND t.crm_id IS NOT NULL
                          AND NOT (t.key = ANY (p_old)));
    IF v_from IS NULL THEN
        RETURN;
    END IF;
    DELETE FROM etlify.records rec
     WHERE rec.mapping_id = p_mapping
       AND (rec.key = ANY (v_from) OR rec.key IN (SELECT x.key FROM unnest(v_moved) x));
    INSERT INTO etlify.records SELECT * FROM unnest(v_moved);
    -- the associations etlify made belong to the object, and move with it
    IF EXISTS (SELECT 1 FROM etlify.links l WHERE l.mapping_id = p_mapping) THEN
        WITH gone AS (
            DELETE FROM etlify.links l
             WHERE l.mapping_id = p_mapping
               AND (l.key = ANY (v_from) OR l.key IN (SELECT x.key FROM unnest(v_moved) x))
            RETURNING l.*
        )
        INSERT INTO etlify.links (mapping_id, key, position, from_id, to_id)
        SELECT g.mapping_id, m.new, g.position, g.from_id, g.to_id
          FROM gone g JOIN unnest(p_old, p_new) AS m(old, new) ON m.old = g.key
         WHERE m.old = ANY (v_from);
    END IF;
    -- an old key that no row took over shows as deleted: its row moved away (and a
    -- parked state went with the record, so its queue row is drained again)
    INSERT INTO etlify.records (mapping_id, key, state, last_synced_at)
    SELECT p_mapping, f.key, 'deleted', now() FROM unnest(v_from) AS f(key)
    ON CONFLICT (mapping_id, key) DO NOTHING;
    UPDATE etlify.queue q SET not_before = '-infinity'
     WHERE q.mapping_id = p_mapping AND q.key = ANY (v_from) AND q.not_before = 'infinity';
END
$$;

-- Marks keys dirty: a new change number for each, so that a claimer holding the key
-- leaves it dirty (never lose a change). In key order, like every multi-row write
-- of queue rows: two writers that lock the same rows in the same order cannot
-- deadlock. Keys that cannot be queued (NULL, too long for the index) are dropped.
CREATE FUNCTION etlify._dirty(p_mapping int, p_keys text[], p_at timestamptz) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO etlify.queue AS q (mapping_id, key, change_seq, enqueued_at)
    SELECT p_mapping, k.key, (SELECT nextval('etlify.change_seq')), p_at
      FROM (SELECT DISTINCT k.key FROM unnest(p_keys) AS k(key)
             WHERE k.key IS NOT NULL AND octet_length(k.key) <= 2000) k
     ORDER BY k.key
    ON CONFLICT (mapping_id, key) DO UPDATE SET change_seq = EXCLUDED.change_seq;
$$;

-- Moves writers' change rows into the keyed queue, one new change number for each
-- key: a key that is in flight gets a number its claimer did not see, so its
-- claimer leaves it dirty (never lose a change). Returns the rows absorbed.
--  1. Ordered rows (moves, truncates) first, in statement order, by one drain at a
--     time. A move of a key whose record is in flight waits until its result is
--     recorded, and so does every later change of that mapping.
--  2. Plain rows, in bounded batches. A row that cannot be absorbed is discarded
--     with a warning: it must never stall the drain.
CREATE FUNCTION etlify._absorb(p_limit int) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan
-- A queue row locked by another open transaction (an inline drain() or sync()
-- that has not committed) is waited for at most this long; its mapping's changes
-- then wait for the next round, and the other mappings go on.
SET lock_timeout = '1s'
AS $$
DECLARE
    v_done    bigint := 0;
    v_held    int[] := '{}';
    v_old     text[];
    v_new     text[];
    v_all     text[];
    v_dropped bigint;
    v_keys    text[];
    v_key     text;
    v_left    text[];
    -- 'mapping:key' of queue rows another open transaction holds
    v_locked  text[] := '{}';
    r         record;
BEGIN
    IF EXISTS (SELECT 1 FROM etlify.changes c WHERE c.seq IS NOT NULL) THEN
        PERFORM 1 FROM etlify.absorb_lock FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            -- another drain applies them: their mappings wait for it
            v_held := ARRAY(SELECT DISTINCT c.mapping_id FROM etlify.changes c WHERE c.seq IS NOT NULL);
        ELSE
            FOR r IN SELECT c.ctid AS tid, c.* FROM etlify.changes c WHERE c.seq IS NOT NULL ORDER BY c.seq LOOP
                CONTINUE WHEN r.mapping_id = ANY (v_held);
                IF NOT EXISTS (SELECT 1 FROM etlify.mappings m WHERE m.id = r.mapping_id) THEN
                    DELETE FROM etlify.changes c WHERE c.ctid = r.tid;
                    CONTINUE;
                END IF;
              BEGIN
                IF r.moves IS NOT NULL AND NOT EXISTS (
                       SELECT 1 FROM etlify.mappings m, etlify._capture_tables(m.source) t
                        WHERE m.id = r.mapping_id AND t.rel = r.rel) THEN
                    -- a trigger on another table, that passed this mapping's id:
                    -- its keys are re-checked like any, its moves are not applied
                    RAISE WARNING 'etlify: key moves of mapping % reported by a trigger on %, not on its source, were ignored',
                        r.mapping_id, coalesce(r.rel::text, 'an unknown table');
                    r.moves := NULL;
                END IF;
                IF r.moves IS NOT NULL THEN
                    v_old := ARRAY(SELECT r.moves[i] FROM generate_series(1, cardinality(r.moves) - 1, 2) AS i);
                    v_new := ARRAY(SELECT r.moves[i + 1] FROM generate_series(1, cardinality(r.moves) - 1, 2) AS i);
                    v_all := v_old || v_new;
                    -- in flight: claimed by a worker, or locked by an inline drain
                    IF EXISTS (SELECT 1 FROM etlify.queue q WHERE q.mapping_id = r.mapping_id
                                  AND q.key = ANY (v_all) AND q.claimed_by IS NOT NULL)
                       OR (SELECT count(*) FROM etlify.queue q WHERE q.mapping_id = r.mapping_id AND q.key = ANY (v_all))
                          <> (SELECT count(*) FROM (SELECT 1 FROM etlify.queue q WHERE q.mapping_id = r.mapping_id
                                                       AND q.key = ANY (v_all) FOR UPDATE SKIP LOCKED) x) THEN
                        v_held := v_held || r.mapping_id;
                        CONTINUE;
                    END IF;
                    PERFORM etlify._apply_moves(r.mapping_id, v_old, v_new);
                END IF;
                IF r.truncated THEN
                    -- every record may be gone, and claims in flight stay dirty
                    PERFORM etlify._dirty(r.mapping_id,
                        ARRAY(SELECT rec.key FROM etlify.records rec WHERE rec.mapping_id = r.mapping_id
                                 AND rec.state <> 'deleted'
                              UNION SELECT q.key FROM etlify.queue q WHERE q.mapping_id = r.mapping_id),
                        r.at);
                END IF;
                PERFORM etlify._dirty(r.mapping_id, r.keys, r.at);
                DELETE FROM etlify.changes c WHERE c.ctid = r.tid;
                v_done := v_done + 1;
              EXCEPTION WHEN lock_not_available THEN
                v_held := v_held || r.mapping_id;
              END;
            END LOOP;
        END IF;
    END IF;

    BEGIN
        WITH moved AS (
            DELETE FROM etlify.changes c
             WHERE c.ctid = ANY (ARRAY(SELECT x.ctid FROM etlify.changes x
                                        WHERE x.seq IS NULL AND NOT (x.mapping_id = ANY (v_held))
                                        LIMIT p_limit FOR UPDATE SKIP LOCKED))
            RETURNING c.mapping_id, c.keys, c.at
        ), counted AS (
            SELECT count(*) AS n, count(*) FILTER (WHERE EXISTS (
                       SELECT 1 FROM unnest(m.keys) AS k(key) WHERE k.key IS NULL OR octet_length(k.key) > 2000)) AS bad
              FROM moved m
        ), dirty AS (
            SELECT m.mapping_id, k.key, min(m.at) AS at
              FROM moved m CROSS JOIN LATERAL unnest(m.keys) AS k(key)
             WHERE EXISTS (SELECT 1 FROM etlify.mappings mm WHERE mm.id = m.mapping_id)
               AND k.key IS NOT NULL AND octet_length(k.key) <= 2000
             GROUP BY m.mapping_id, k.key
        ), ins AS (
            INSERT INTO etlify.queue AS q (mapping_id, key, change_seq, enqueued_at)
            SELECT d.mapping_id, d.key, (SELECT nextval('etlify.change_seq')), d.at FROM dirty d
             ORDER BY d.mapping_id, d.key  -- key order: see etlify._dirty
            ON CONFLICT (mapping_id, key) DO UPDATE SET change_seq = EXCLUDED.change_seq
            RETURNING 1
        )
        SELECT counted.n, counted.bad INTO r FROM counted, (SELECT count(*) FROM ins) i;
        v_done := v_done + r.n;
        v_dropped := r.bad;
    EXCEPTION WHEN OTHERS THEN
        -- one row breaks the batch, or waits on a queue row that another open
        -- transaction holds: absorb row by row, and key by key where a key is
        -- locked. Locked keys stay in etlify.changes for the next round; rows that
        -- cannot be queued at all are discarded.
        v_dropped := 0;
        PERFORM set_config('lock_timeout', '50ms', true);
        FOR r IN SELECT x.ctid AS tid, x.* FROM etlify.changes x
                  WHERE x.seq IS NULL AND NOT (x.mapping_id = ANY (v_held))
                  LIMIT p_limit FOR UPDATE SKIP LOCKED LOOP
            v_left := ARRAY(SELECT k.key FROM unnest(r.keys) AS k(key)
                             WHERE (r.mapping_id || ':' || k.key) = ANY (v_locked));
            v_keys := ARRAY(SELECT k.key FROM unnest(r.keys) AS k(key)
                             WHERE NOT coalesce((r.mapping_id || ':' || k.key) = ANY (v_locked), false));
            BEGIN
                IF EXISTS (SELECT 1 FROM etlify.mappings m WHERE m.id = r.mapping_id) THEN
                    PERFORM etlify._dirty(r.mapping_id, v_keys, r.at);
                END IF;
            EXCEPTION
                WHEN lock_not_available THEN
                    FOREACH v_key IN ARRAY v_keys LOOP
                        BEGIN
                            PERFORM etlify._dirty(r.mapping_id, ARRAY[v_key], r.at);
                        EXCEPTION WHEN lock_not_available THEN
                            v_locked := v_locked || (r.mapping_id || ':' || v_key);
                            v_left := v_left || v_key;
                        END;
                    END LOOP;
                WHEN OTHERS THEN
                    RAISE WARNING 'etlify: discarded a change row of mapping % that cannot be queued: %', r.mapping_id, SQLERRM;
            END;
            DELETE FROM etlify.changes c WHERE c.ctid = r.tid;
            IF cardinality(v_left) > 0 THEN
                INSERT INTO etlify.changes (mapping_id, keys, at) VALUES (r.mapping_id, v_left, r.at);
            END IF;
            v_done := v_done + 1;
        END LOOP;
    END;
    IF v_dropped > 0 THEN
        RAISE WARNING 'etlify: discarded keys of % change rows that cannot be queued (NULL, or longer than 2000 bytes)', v_dropped;
    END IF;
    RETURN v_done;
END
$$;

-- Claims up to p_limit ready keys of a mapping (or exactly p_keys): one row per
-- claimed key with its sync state. The rows are loaded and serialized next, as the
-- mapping's owner (etlify._fetch_plan, src/engine/store.rs).
--   p_claimer: the worker's claim token (committed before HTTP so that other claimers
--   skip the keys); NULL for inline callers, who hold row locks in their own
--   transaction instead.
--   shared: another record, not claimed here, holds the same CRM object (its row
--   must not lose it to this key's archive).
-- A source table that another transaction holds locked is skipped for this round.
CREATE FUNCTION etlify._claim(p_mapping int, p_limit int, p_claimer text, p_keys text[] DEFAULT NULL)
RETURNS TABLE (key text, change_seq bigint, state text, crm_id text, digest bytea, shared boolean,
               sending text, sent_ms float8)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- plans fit the tables as they are now (a plan cached while etlify.records was
-- empty would scan it for every batch once it is large)
SET plan_cache_mode = force_custom_plan
SET lock_timeout = '2s'
AS $$
#variable_conflict use_column
DECLARE
    m      etlify.mappings;
    v_keys text[];
    v_seqs bigint[];
    v_sending text[];
    v_sent timestamptz[];
BEGIN
    SELECT * INTO m FROM etlify.mappings mm WHERE mm.id = p_mapping;
    IF NOT FOUND THEN
        RETURN;
    END IF;

    -- Lock order: the source table before any queue row. DDL on the source (DROP
    -- TABLE, TRUNCATE) locks the table and then touches queue rows; claiming rows
    -- first and then waiting for the table to serialize them deadlocks with it.
    BEGIN
        EXECUTE format('LOCK TABLE %s IN ACCESS SHARE MODE', m.source);
    EXCEPTION
        WHEN undefined_table THEN
            RETURN;  -- dropped while we waited: its mapping is gone with it
        WHEN lock_not_available THEN
            RAISE WARNING 'etlify: table % is locked by another transaction; its records wait for the next round', m.source;
            RETURN;
    END;

    IF p_keys IS NULL THEN
        -- In key order, which the primary key gives without a sort, so that the
        -- plan is a walk of the mapping's part of the index that stops after
        -- p_limit rows, whatever the statistics say. Without it, statistics taken
        -- during a backlog of 100k made every later claim a sequential scan of
        -- the drained (dead) queue: 8 ms per claim, paid by every change after a
        -- large drain. The update goes by ctid (a TID scan), not by a join.
        WITH u AS (
            UPDATE etlify.queue q SET claimed_by = p_claimer, claimed_at = now()
             WHERE q.ctid = ANY (ARRAY(
                   SELECT x.ctid FROM etlify.queue x
                    WHERE x.mapping_id = p_mapping AND x.not_before <= now() AND x.claimed_by IS NULL
                    ORDER BY x.key
                    LIMIT p_limit
                      FOR UPDATE SKIP LOCKED))
            RETURNING q.key, q.change_seq, q.sending, q.sent_at
        )
        SELECT array_agg(u.key), array_agg(u.change_seq), array_agg(u.sending), array_agg(u.sent_at)
          INTO v_keys, v_seqs, v_sending, v_sent FROM u;
    ELSE
        -- named keys (etlify.sync / etlify.delete), dirty or not: each gets a queue
        -- row, so that the key is seen as in flight. A queue row that another
        -- claimer holds is left alone: its own claimer will finish it.
        INSERT INTO etlify.queue AS q (mapping_id, key, change_seq)
        SELECT p_mapping, k.key, nextval('etlify.change_seq') FROM unnest(p_keys) AS k(key) ORDER BY k.key
        ON CONFLICT (mapping_id, key) DO NOTHING;
        WITH c AS (
            SELECT q.key FROM etlify.queue q
             WHERE q.mapping_id = p_mapping AND q.key = ANY (p_keys) AND q.claimed_by IS NULL
             ORDER BY q.key
               FOR UPDATE
        ), u AS (
            UPDATE etlify.queue q SET claimed_by = p_claimer, claimed_at = now()
              FROM c WHERE q.mapping_id = p_mapping AND q.key = c.key
            RETURNING q.key, q.change_seq, q.sending, q.sent_at
        )
        SELECT array_agg(k.key), array_agg(u.change_seq), array_agg(u.sending), array_agg(u.sent_at)
          INTO v_keys, v_seqs, v_sending, v_sent
          FROM unnest(p_keys) AS k(key) LEFT JOIN u ON u.key = k.key;
    END IF;
    IF v_keys IS NULL THEN
        RETURN;
    END IF;

    RETURN QUERY
        SELECT k.key, k.seq, rec.state, rec.crm_id, rec.digest,
               rec.crm_id IS NOT NULL AND EXISTS (
                   SELECT 1 FROM etlify.records o
                    WHERE o.mapping_id = p_mapping AND o.crm_id = rec.crm_id AND NOT (o.key = ANY (v_keys))),
               k.sending, 1000 * extract(epoch FROM clock_timestamp() - k.sent_at)::float8
          FROM unnest(v_keys, v_seqs, v_sending, v_sent) AS k(key, seq, sending, sent_at)
          -- one index probe per key, whatever the statistics say (see etlify._record_tids)
          LEFT JOIN LATERAL (SELECT r.state, r.crm_id, r.digest FROM etlify.records r
                              WHERE r.mapping_id = p_mapping AND r.key = k.key LIMIT 1) rec ON true
         ORDER BY k.key;
END
$$;

-- Notes the id_property values about to be upserted for claimed keys that have no
-- CRM id (p_values[i] for p_keys[i]; NULL forgets the note). Until the answer is
-- recorded (etlify._record clears the note), the CRM may hold an object by that
-- value that etlify does not know the id of: a worker killed mid-request, or a
-- request that timed out. A later claim that finds the note, for a row that is
-- gone or whose value changed, looks the object up by the noted value (once it has
-- surely landed) to archive or update it, instead of leaving it orphaned.
CREATE FUNCTION etlify._unanswered(p_mapping int, p_keys text[], p_values text[]) RETURNS void
-- PL/pgSQL keeps the statement's plan for the session: a SQL function's is made
-- again at every call, and this runs in every claim that creates records
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- one index probe per key, then the row by its ctid, whatever the statistics
    -- say of a queue that a backlog has just filled (see etlify._record_tids)
    UPDATE etlify.queue q
       SET sending = n.value, sent_at = CASE WHEN n.value IS NOT NULL THEN clock_timestamp() END
      FROM (SELECT x.ctid AS tid, k.value FROM unnest(p_keys, p_values) AS k(key, value)
             CROSS JOIN LATERAL (SELECT qq.ctid FROM etlify.queue qq
                                  WHERE qq.mapping_id = p_mapping AND qq.key = k.key LIMIT 1) x) n
     WHERE q.ctid = n.tid;
END
$$;

-- Which of these CRM ids a record of the mapping holds: an object found by the value
-- of an unanswered upsert (etlify._unanswered) that another record holds is that
-- record's, never to be archived or taken over.
CREATE FUNCTION etlify._held(p_mapping int, p_ids text[]) RETURNS SETOF text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT DISTINCT r.crm_id FROM etlify.records r
     WHERE r.mapping_id = p_mapping AND r.crm_id = ANY (p_ids);
$$;

-- How to load and serialize a mapping's rows now: as whom, with which search_path,
-- and the statement (etlify._fetch_sql), with the one for the references of sync
-- dependencies (etlify._refs_sql); or why it cannot be done.
CREATE FUNCTION etlify._fetch_plan(p_mapping int, p_scan boolean DEFAULT false,
                                   OUT owner oid, OUT search_path text, OUT sql text, OUT problem text,
                                   OUT refs_sql text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m     etlify.mappings;
    v_ser regprocedure;
BEGIN
    SELECT * INTO m FROM etlify.mappings mm WHERE mm.id = p_mapping;
    IF NOT FOUND THEN
        problem := 'the mapping was removed';
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = m.owner) THEN
        problem := format('the owner of the mapping of %s (role %s) no longer exists; declare the mapping again',
                          m.source, m.owner::oid);
        RETURN;
    END IF;
    v_ser := etlify._serializer(m);
    IF v_ser IS NULL THEN
        problem := format('the capture triggers of %s and their serializer are gone; declare the mapping again', m.source);
        RETURN;
    END IF;
    owner := m.owner;
    search_path := m.search_path;
    sql := CASE WHEN p_scan THEN etlify._scan_sql(m, v_ser) ELSE etlify._fetch_sql(m, v_ser) END;
    refs_sql := etlify._refs_sql(m);
END
$$;

-- Records the outcome of one claimed batch, set-based. p_results is a JSON array of
-- {key, seq, outcome, crm_id, digest (hex), error, retry_ms} where outcome is one of
-- synced, not_modified, skipped, deleted, noop, disabled (done: the queue row is
-- cleared if nothing changed since the claim), failed (the record's fault: counted,
-- backed off, parked at max_sync_errors), retry (not the record's fault: backed off
-- by retry_ms, not counted), stale (the CRM forgot crm_id: upsert again at once),
-- buffered (waits for the record waits_key of sync dependency waits_position;
-- released by etlify._release). A failed or retried record may carry the crm_id
-- and digest of a payload the CRM took (an association failed after it).
CREATE TYPE etlify._result AS (
    key text, seq bigint, outcome text, crm_id text, digest text, error text, retry_ms bigint,
    waits_position int, waits_key text, refused boolean
);

-- The ctids of the records of a batch's results with one of `p_outcomes`: one
-- index probe per key (the LIMIT keeps the planner from turning the probes into a
-- scan of the mapping's records).
CREATE FUNCTION etlify._record_tids(p_mapping int, p_results etlify._result[], p_outcomes text[]) RETURNS tid[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ARRAY(SELECT x.ctid FROM unnest(p_results) r
                  CROSS JOIN LATERAL (SELECT rec.ctid FROM etlify.records rec
                                       WHERE rec.mapping_id = p_mapping AND rec.key = r.key LIMIT 1) x
                  WHERE r.outcome = ANY (p_outcomes));
$$;

-- Returns the seconds until the earliest retry it scheduled (NULL: none), so that
-- the worker wakes for it rather than up to a naptime later.
CREATE FUNCTION etlify._record(p_mapping int, p_claimer text, p_results jsonb) RETURNS float8
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    v_max  int;
    v_base interval := current_setting('etlify.retry_backoff')::interval;
    v_cap  interval := current_setting('etlify.retry_backoff_max')::interval;
    v_results etlify._result[];
    v_next timestamptz;
    v_kept text[];
    v_registered timestamptz;
BEGIN
    SELECT c.max_sync_errors, c.updated_at INTO v_max, v_registered
      FROM etlify.mappings m JOIN etlify.crms c ON c.name = m.crm WHERE m.id = p_mapping;
    IF NOT FOUND THEN
        -- unsynced (or its table dropped) while the batch was in flight: what is
        -- left of its claim goes, the rest is etlify._collect_forgotten's
        IF p_claimer IS NOT NULL THEN
            DELETE FROM etlify.queue q WHERE q.mapping_id = p_mapping AND q.claimed_by = p_claimer;
        END IF;
        RETURN NULL;
    END IF;

    v_results := ARRAY(SELECT jsonb_populate_recordset(NULL::etlify._result, p_results));

    -- sync state
    INSERT INTO etlify.records AS rec (mapping_id, key, state, crm_id, digest, last_synced_at)
    SELECT p_mapping, r.key, 'synced', r.crm_id, decode(r.digest, 'hex'), now()
      FROM unnest(v_results) r WHERE r.outcome = 'synced'
    ON CONFLICT (mapping_id, key) DO UPDATE
       SET state = 'synced', crm_id = EXCLUDED.crm_id, digest = EXCLUDED.digest,
           last_synced_at = EXCLUDED.last_synced_at, error_count = 0, last_error = NULL, updated_at = now();

    -- Updates go by ctid, found key by key (etlify._record_tids): joined to the
    -- results, the planner scanned every record of a mapping that had grown since
    -- the table's statistics were taken (measured: 0.9 s per batch of 1,000).
    -- (rows already synced and clean are not rewritten: a re-check of unchanged
    -- records writes nothing here)
    UPDATE etlify.records rec
       SET state = 'synced', error_count = 0, last_error = NULL, updated_at = now()
     WHERE rec.ctid = ANY (etlify._record_tids(p_mapping, v_results, '{not_modified}'))
       AND (rec.state <> 'synced' OR rec.error_count <> 0 OR rec.last_error IS NOT NULL);

    -- the buffered records this batch's syncs were waited for by
    IF EXISTS (SELECT 1 FROM unnest(v_results) r WHERE r.outcome = 'synced') THEN
        PERFORM etlify._release(p_mapping, ARRAY(SELECT r.key FROM unnest(v_results) r WHERE r.outcome = 'synced'));
    END IF;

    INSERT INTO etlify.records AS rec (mapping_id, key, state, last_error, waits_position, waits_key)
    SELECT p_mapping, r.key, 'buffered', r.error, r.waits_position, r.waits_key
      FROM unnest(v_results) r WHERE r.outcome = 'buffered'
    ON CONFLICT (mapping_id, key) DO UPDATE
       SET state = 'buffered', last_error = EXCLUDED.last_error, waits_position = EXCLUDED.waits_position,
           waits_key = EXCLUDED.waits_key, error_count = 0, updated_at = now();

    INSERT INTO etlify.records AS rec (mapping_id, key, state)
    SELECT p_mapping, r.key, 'skipped' FROM unnest(v_results) r WHERE r.outcome = 'skipped'
    ON CONFLICT (mapping_id, key) DO UPDATE
       SET state = 'skipped', error_count = 0, last_error = NULL, updated_at = now();

    UPDATE etlify.records rec
       SET state = 'deleted', crm_id = NULL, digest = NULL, error_count = 0, last_error = NULL,
           last_synced_at = now(), updated_at = now()
     WHERE rec.ctid = ANY (etlify._record_tids(p_mapping, v_results, '{deleted}'));
    UPDATE etlify.records rec
       SET state = 'deleted', crm_id = NULL, digest = NULL, error_count = 0, last_error = NULL,
           updated_at = now()
     WHERE rec.ctid = ANY (etlify._record_tids(p_mapping, v_results, '{noop}'));

    UPDATE etlify.records rec
       SET crm_id = NULL, digest = NULL, updated_at = now()
     WHERE rec.ctid = ANY (etlify._record_tids(p_mapping, v_results, '{stale}'));

    INSERT INTO etlify.records AS rec (mapping_id, key, state, error_count, last_error, crm_id, digest)
    SELECT p_mapping, r.key, CASE WHEN 1 >= v_max THEN 'parked' ELSE 'failed' END, 1, r.error,
           r.crm_id, decode(r.digest, 'hex')
      FROM unnest(v_results) r WHERE r.outcome = 'failed'
    ON CONFLICT (mapping_id, key) DO UPDATE
       SET error_count = rec.error_count + 1,
           state = CASE WHEN rec.error_count + 1 >= v_max THEN 'parked' ELSE 'failed' END,
           last_error = EXCLUDED.last_error, updated_at = now(),
           crm_id = coalesce(EXCLUDED.crm_id, rec.crm_id), digest = coalesce(EXCLUDED.digest, rec.digest);

    -- not the record's fault (the CRM paused, misconfigured, rate-limited): the
    -- record stays pending, its error counts nothing, and last_error says why
    INSERT INTO etlify.records AS rec (mapping_id, key, state, last_error, crm_id, digest)
    SELECT p_mapping, r.key, 'pending', r.error, r.crm_id, decode(r.digest, 'hex')
      FROM unnest(v_results) r WHERE r.outcome = 'retry' AND r.error IS NOT NULL
    ON CONFLICT (mapping_id, key) DO UPDATE
       SET last_error = EXCLUDED.last_error, updated_at = now(),
           crm_id = coalesce(EXCLUDED.crm_id, rec.crm_id), digest = coalesce(EXCLUDED.digest, rec.digest);

    -- an archived object took its associations with it
    IF EXISTS (SELECT 1 FROM etlify.links l WHERE l.mapping_id = p_mapping) THEN
        DELETE FROM etlify.links l
         USING unnest(v_results) r
         WHERE l.mapping_id = p_mapping AND l.key = r.key AND r.outcome IN ('deleted', 'noop');
    END IF;

    -- queue: done records leave it unless they changed since the claim
    DELETE FROM etlify.queue q
     WHERE q.ctid = ANY (ARRAY(
           SELECT x.ctid FROM unnest(v_results) r
            CROSS JOIN LATERAL (SELECT qq.ctid FROM etlify.queue qq
                                 WHERE qq.mapping_id = p_mapping AND qq.key = r.key AND qq.change_seq = r.seq
                                 LIMIT 1) x
            WHERE r.outcome IN ('synced', 'not_modified', 'skipped', 'deleted', 'noop', 'disabled', 'buffered')));

    -- failed and retried records stay (or become) dirty, backed off; parked ones wait
    -- for etlify.reset_errors
    WITH retried AS (
    INSERT INTO etlify.queue AS q (mapping_id, key, change_seq, not_before)
    SELECT p_mapping, r.key, coalesce(r.seq, nextval('etlify.change_seq')),
           CASE WHEN r.outcome = 'failed' THEN
                    CASE WHEN rec.state = 'parked' THEN 'infinity'::timestamptz
                         ELSE now() + least(v_base * power(2, greatest(rec.error_count - 1, 0))::float8, v_cap) END
                -- the CRM registered again or resumed while this batch was in
                -- flight: the pause its answers asked for is lifted (_lift_pause
                -- could not reach claimed rows)
                WHEN qq.claimed_at < v_registered THEN now()
                ELSE now() + make_interval(secs => coalesce(r.retry_ms, 0) / 1000.0) END
      FROM unnest(v_results) r
      LEFT JOIN etlify.records rec ON rec.mapping_id = p_mapping AND rec.key = r.key
      LEFT JOIN etlify.queue qq ON qq.mapping_id = p_mapping AND qq.key = r.key
     WHERE r.outcome IN ('failed', 'retry', 'stale')
    ON CONFLICT (mapping_id, key) DO UPDATE
       SET not_before = EXCLUDED.not_before, claimed_by = NULL, claimed_at = NULL
       -- never another claimer's: it is sending that key now, and records it itself
     WHERE q.claimed_by IS NULL OR q.claimed_by = p_claimer
    RETURNING q.not_before)
    SELECT min(not_before) INTO v_next FROM retried WHERE not_before < 'infinity';

    -- an upsert the CRM refused made no object: its note goes (etlify._unanswered)
    IF EXISTS (SELECT 1 FROM unnest(v_results) r WHERE r.refused) THEN
        UPDATE etlify.queue q SET sending = NULL, sent_at = NULL
         WHERE q.mapping_id = p_mapping AND q.sending IS NOT NULL
           AND q.key = ANY (ARRAY(SELECT r.key FROM unnest(v_results) r WHERE r.refused));
    END IF;

    -- release what is left of this claim (records changed while in flight). An
    -- answer the CRM gave settles an unanswered upsert (etlify._unanswered); an
    -- outcome that sent nothing leaves it as it was. (The rows deleted above took
    -- theirs with them; retried and stale ones keep theirs, and failed ones unless
    -- the CRM refused them.)
    v_kept := ARRAY(SELECT r.key FROM unnest(v_results) r WHERE r.outcome IN ('skipped', 'disabled', 'buffered'));
    IF p_claimer IS NOT NULL THEN
        UPDATE etlify.queue q SET claimed_by = NULL, claimed_at = NULL,
               sending = CASE WHEN q.key = ANY (v_kept) THEN q.sending END,
               sent_at = CASE WHEN q.key = ANY (v_kept) THEN q.sent_at END
         WHERE q.ctid = ANY (ARRAY(
               SELECT x.ctid FROM unnest(v_results) r
                CROSS JOIN LATERAL (SELECT qq.ctid FROM etlify.queue qq
                                     WHERE qq.mapping_id = p_mapping AND qq.key = r.key
                                       AND qq.claimed_by = p_claimer LIMIT 1) x));
    END IF;
    RETURN extract(epoch FROM v_next - clock_timestamp());
END
$$;

-- Appends request log entries ({operation, records, http_status, duration_ms, error})
-- and keeps the log bounded.
CREATE FUNCTION etlify._log(p_crm text, p_source regclass, p_entries jsonb) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO etlify.sync_log_entries (crm, source, operation, records, http_status, duration_ms, error)
    -- whole microseconds: a duration is not read to the femtosecond
    SELECT p_crm, p_source, e.operation, e.records, e.http_status, round(e.duration_ms::numeric, 3), e.error
      FROM jsonb_to_recordset(p_entries)
        AS e(operation text, records int, http_status int, duration_ms double precision, error text);
    -- rows another transaction is trimming (an open one that called drain()) are
    -- left to it: the trim never waits
    DELETE FROM etlify.sync_log_entries
     WHERE ctid = ANY (ARRAY(
           SELECT l.ctid FROM etlify.sync_log_entries l
            WHERE l.id <= (SELECT last_value FROM etlify.sync_log_entries_id_seq)
                          - current_setting('etlify.sync_log_size')::bigint
              FOR UPDATE SKIP LOCKED));
$$;

-- Deletes what removed mappings left behind (see etlify.forgotten), in the
-- drain's own transaction. Returns the number of mappings cleaned up.
CREATE FUNCTION etlify._collect_forgotten() RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id int;
    v_n  bigint := 0;
BEGIN
    FOR v_id IN SELECT f.mapping_id FROM etlify.forgotten f FOR UPDATE SKIP LOCKED LOOP
        -- a claimer still in flight records its batch when it is done, perhaps
        -- under a snapshot that still had the mapping: what it writes must be
        -- deleted after it, so the mapping waits for the next drain
        CONTINUE WHEN EXISTS (SELECT 1 FROM etlify.queue q
                               WHERE q.mapping_id = v_id AND q.claimed_by IS NOT NULL);
        DELETE FROM etlify.changes WHERE mapping_id = v_id;
        DELETE FROM etlify.queue WHERE mapping_id = v_id;
        DELETE FROM etlify.records WHERE mapping_id = v_id;
        DELETE FROM etlify.links WHERE mapping_id = v_id;
        DELETE FROM etlify.forgotten WHERE mapping_id = v_id;
        v_n := v_n + 1;
    END LOOP;
    RETURN v_n;
END
$$;

-- Notes keys about to be sent inline by transaction p_xid (see etlify.inline_sends).
-- Run by the note worker (src/inline_sends.rs) in a transaction of its own.
-- A lock the sender itself holds (it cannot release it while it waits for us)
-- must end in an error, not in two processes waiting for each other.
CREATE FUNCTION etlify._note_inline_sends(p_xid xid8, p_mapping int, p_keys text[], p_values text[])
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '5s'
AS $$
    INSERT INTO etlify.inline_sends (xid, mapping_id, key, sending)
    SELECT p_xid, p_mapping, n.key, n.value FROM unnest(p_keys, p_values) AS n(key, value);
$$;

-- Settles the notes of inline sends whose transaction has ended. Committed: the
-- records say what the CRM holds, the note goes. Rolled back (or too old to tell):
-- the CRM may hold what the records no longer say, so each record forgets its
-- digest and is dirty again; the next drain sends its row as it is. Transaction
-- ids past the current snapshot's horizon are left alone (pg_xact_status would
-- raise an error for an id it has not seen yet). A queue row another open
-- transaction holds makes this wait for the next call, never stall the caller.
CREATE FUNCTION etlify._settle_inline_sends() RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '100ms'
AS $$
DECLARE
    v_n bigint;
BEGIN
    WITH ended AS (
        DELETE FROM etlify.inline_sends s
         WHERE s.xid < pg_snapshot_xmax(pg_current_snapshot())
           AND pg_xact_status(s.xid) IS DISTINCT FROM 'in progress'
        RETURNING s.mapping_id, s.key, s.sending, pg_xact_status(s.xid) AS status
    ), lost AS (
        SELECT e.mapping_id, e.key, max(e.sending) AS sending FROM ended e
         WHERE e.status IS DISTINCT FROM 'committed'
           AND EXISTS (SELECT 1 FROM etlify.mappings m WHERE m.id = e.mapping_id)
         GROUP BY e.mapping_id, e.key
    ), forget AS (
        UPDATE etlify.records r SET digest = NULL
          FROM lost l
         WHERE r.mapping_id = l.mapping_id AND r.key = l.key
    )
    -- an upsert the rollback took the answer of: noted as unanswered (see
    -- etlify._unanswered), so that the object it made is not left behind
    INSERT INTO etlify.queue AS q (mapping_id, key, change_seq, sending, sent_at)
    SELECT l.mapping_id, l.key, (SELECT nextval('etlify.change_seq')), l.sending,
           CASE WHEN l.sending IS NOT NULL THEN clock_timestamp() END
      FROM lost l
     ORDER BY l.mapping_id, l.key
    ON CONFLICT (mapping_id, key) DO UPDATE
       SET change_seq = EXCLUDED.change_seq,
           sending = coalesce(EXCLUDED.sending, q.sending),
           sent_at = CASE WHEN EXCLUDED.sending IS NOT NULL THEN EXCLUDED.sent_at ELSE q.sent_at END;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
EXCEPTION WHEN lock_not_available THEN
    RETURN 0;
END
$$;

-- Crash recovery: claims a worker committed before dying are its own to undo.
CREATE FUNCTION etlify._release_claims(p_claimer text) RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH u AS (
        UPDATE etlify.queue SET claimed_by = NULL, claimed_at = NULL
         WHERE claimed_by = p_claimer RETURNING 1
    )
    SELECT count(*) FROM u;
$$;

-- What the drain works through: enabled and disabled mappings with their CRM's
-- settings (secrets included: only superusers can call this).
-- held: the CRM was registered in another database or cluster (this one is a
-- copy); nothing is sent to it until etlify.resume() or register_crm here.
CREATE FUNCTION etlify._work(p_crm text DEFAULT NULL)
RETURNS TABLE (mapping_id int, crm text, source regclass, source_name text, object_type text, id_property text,
               adapter text, config jsonb, secret text, enabled boolean, rate_limit int,
               rate_period_ms double precision, batch_size int, crm_version timestamptz, held boolean)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT m.id, m.crm, m.source, m.source::text, m.object_type, m.id_property, c.adapter, c.config, s.secret,
           c.enabled, c.rate_limit, extract(epoch FROM c.rate_period) * 1000, c.batch_size, c.updated_at,
           (c.home_system, c.home_database) IS DISTINCT FROM (h.system, h.database)
      FROM etlify.mappings m
      JOIN etlify.crms c ON c.name = m.crm
      LEFT JOIN etlify.crm_secrets s ON s.crm = c.name
      CROSS JOIN etlify._home() h
      -- referenced records first: a record and one it needs, both pending, go out
      -- in one round (sql/dependency_order.sql)
      LEFT JOIN etlify._depths() dp ON dp.mapping_id = m.id
     WHERE p_crm IS NULL OR m.crm = p_crm
     ORDER BY coalesce(dp.depth, 0), m.id;
$$;

-- Lifts a hold (this database is a copy, and the operator says it may write to the
-- CRM): this database becomes the CRM's home.
CREATE FUNCTION etlify.resume(crm text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    UPDATE etlify.crms c SET home_system = h.system, home_database = h.database, updated_at = now()
      FROM etlify._home() h WHERE c.name = $1;
    IF NOT FOUND THEN
        PERFORM etlify._raise('42704', format('etlify.resume: unknown CRM "%s"', $1));
    END IF;
    PERFORM etlify._lift_pause($1);
    PERFORM etlify._wake();
END
$$;

-- The mapping a user names and a `key` argument turned into the record's key: parsed
-- by the key's type in the caller's settings, spelled canonically (src/keys.rs).
-- The caller must be able to read the source.
CREATE FUNCTION etlify._record_key(p_crm text, p_source regclass, p_key text, p_what text,
                                   OUT m etlify.mappings, OUT k text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    m := etlify._mapping(p_crm, p_source);
    PERFORM etlify._require_select(p_source, p_what);
    IF p_key IS NULL THEN
        PERFORM etlify._raise('22004', format('%s: key must not be NULL (source %s)', p_what, p_source));
    END IF;
    BEGIN
        k := etlify._canonical_key(m.key_type, p_key);
    EXCEPTION WHEN OTHERS THEN
        PERFORM etlify._raise('22P02', format('%s: key "%s" is not a valid %s (the primary key of %s)', p_what, p_key, m.key_type, p_source));
    END;
END
$$;

CREATE FUNCTION etlify.enqueue(crm text, source regclass, key text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    r record := etlify._record_key($1, $2, $3, 'etlify.enqueue');
BEGIN
    -- an explicit enqueue means "now", except for parked records (reset_errors revives those)
    INSERT INTO etlify.queue AS q (mapping_id, key, change_seq)
    VALUES ((r.m).id, r.k, nextval('etlify.change_seq'))
    ON CONFLICT (mapping_id, key) DO UPDATE
       SET change_seq = EXCLUDED.change_seq,
           not_before = CASE WHEN q.not_before = 'infinity' THEN q.not_before ELSE '-infinity' END;
    PERFORM etlify._wake();
END
$$;

CREATE FUNCTION etlify.reset_errors(crm text, source regclass DEFAULT NULL, key text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_key   text;
    v_count bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM etlify.crms c WHERE c.name = $1) THEN
        PERFORM etlify._raise('42704', format('etlify.reset_errors: unknown CRM "%s"', $1));
    END IF;
    IF $2 IS NOT NULL THEN
        PERFORM etlify._mapping($1, $2);
        PERFORM etlify._require_select($2, 'etlify.reset_errors');
        IF $3 IS NOT NULL THEN
            v_key := (etlify._record_key($1, $2, $3, 'etlify.reset_errors')).k;
        END IF;
    ELSIF $3 IS NOT NULL THEN
        PERFORM etlify._raise('22023', 'etlify.reset_errors: a key needs its source');
    END IF;
    WITH t AS (
        UPDATE etlify.records r
           SET error_count = 0, last_error = NULL, state = 'pending', updated_at = now()
          FROM etlify.mappings m
         WHERE m.id = r.mapping_id AND m.crm = $1
           AND ($2 IS NULL OR m.source = $2) AND (v_key IS NULL OR r.key = v_key)
           AND has_table_privilege(etlify._caller(), m.source, 'SELECT')
           AND r.state IN ('failed', 'parked')
        RETURNING r.mapping_id, r.key
    ), q AS (
        INSERT INTO etlify.queue AS q (mapping_id, key, change_seq)
        SELECT t.mapping_id, t.key, nextval('etlify.change_seq') FROM t
         ORDER BY t.mapping_id, t.key
        ON CONFLICT (mapping_id, key) DO UPDATE SET not_before = '-infinity'
        RETURNING 1
    )
    SELECT count(*) INTO v_count FROM q;
    IF v_count > 0 THEN
        PERFORM etlify._wake();
    END IF;
    RETURN v_count;
END
$$;

-- For serializers (associations): the CRM id of another record, or NULL, for
-- roles that can read that record's table.
CREATE FUNCTION etlify.crm_id(crm text, source regclass, key text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    IF $3 IS NULL THEN
        RETURN NULL;  -- a NULL reference: no record, no id
    END IF;
    r := etlify._record_key($1, $2, $3, 'etlify.crm_id');
    RETURN (SELECT rec.crm_id FROM etlify.records rec WHERE rec.mapping_id = (r.m).id AND rec.key = r.k);
END
$$;

-- The keys sync_stale re-checks for a mapping: every row of the source, and every
-- record whose row is gone (read through a cursor by etlify._stale_scan).
-- p_gone_only: the second half alone.
CREATE FUNCTION etlify._stale_keys_sql(p_mapping etlify.mappings, p_gone_only boolean DEFAULT false) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format(
        CASE WHEN p_gone_only THEN '' ELSE 'SELECT t.%1$I::pg_catalog.text FROM %2$s %3$s t UNION ALL ' END ||
        'SELECT r.key FROM etlify.records r WHERE r.mapping_id OPERATOR(pg_catalog.=) %4$s '
        '   AND r.state OPERATOR(pg_catalog.<>) ''deleted'' '
        '   AND NOT EXISTS (SELECT FROM %2$s %3$s t WHERE t.%1$I OPERATOR(pg_catalog.=) r.key::%5$s)',
        p_mapping.key_column,
        etlify._only(p_mapping.source),
        p_mapping.source, p_mapping.id, p_mapping.key_type);
$$;

-- Re-checks every record of the chosen mappings: every row of the source, and
-- every record whose row is gone, is compared with what the CRM is known to hold
-- (its digest), in batches of batch_size, and only what differs is enqueued
-- (etlify._stale_scan, src/stale.rs). This repairs writes the triggers never saw
-- and serializer changes. force: forget the digests first, so every row is sent.
-- total counts the records checked, per_model those that differ, per table.
CREATE FUNCTION etlify._sync_stale(crm text, sources regclass[], async boolean, batch_size int,
                                   force boolean, caller_search_path text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    m        etlify.mappings;
    v_scan   jsonb;
    v_total  bigint := 0;
    v_per    jsonb := '{}';
    v_errors bigint := 0;
    v_differ bigint := 0;
    v_drain  jsonb;
BEGIN
    IF $1 IS NOT NULL AND NOT EXISTS (SELECT 1 FROM etlify.crms c WHERE c.name = $1) THEN
        PERFORM etlify._raise('42704', format('etlify.sync_stale: unknown CRM "%s"', $1));
    END IF;
    IF $4 IS NULL OR $4 <= 0 THEN
        PERFORM etlify._raise('22023', format('etlify.sync_stale: batch_size must be positive, got %s', $4));
    END IF;
    FOR m IN SELECT * FROM etlify.mappings mm
              WHERE ($1 IS NULL OR mm.crm = $1) AND ($2 IS NULL OR mm.source = ANY ($2))
                AND has_table_privilege(etlify._caller(), mm.source, 'SELECT')
              ORDER BY mm.id LOOP
        IF coalesce($5, false) THEN
            UPDATE etlify.records r SET digest = NULL WHERE r.mapping_id = m.id AND r.digest IS NOT NULL;
        END IF;
        v_scan := etlify._stale_scan(m.id, $4, coalesce($5, false));
        v_total := v_total + (v_scan ->> 'checked')::bigint;
        v_differ := v_differ + (v_scan ->> 'differ')::bigint;
        v_errors := v_errors + (v_scan ->> 'errors')::bigint;
        -- tables named as the caller's search_path shows them
        v_per := v_per || jsonb_build_object(etlify._name_in_path(m.source, $6), (v_scan ->> 'differ')::bigint);
    END LOOP;
    IF v_differ > 0 THEN
        PERFORM etlify._wake();
    END IF;
    IF NOT coalesce($3, true) AND v_differ > 0 THEN
        v_drain := etlify.drain($1, NULL);
        v_errors := coalesce((v_drain ->> 'failed')::bigint, 0);
    END IF;
    RETURN jsonb_build_object('total', v_total, 'per_model', v_per, 'errors', v_errors);
END
$$;

-- No SET search_path and SECURITY INVOKER: it hands the caller's search_path (for
-- the names in per_model) to etlify._sync_stale.
CREATE FUNCTION etlify.sync_stale(crm text DEFAULT NULL, sources regclass[] DEFAULT NULL,
                                  async boolean DEFAULT true, batch_size int DEFAULT 1000,
                                  force boolean DEFAULT false) RETURNS jsonb
LANGUAGE sql
AS $$
    SELECT etlify._sync_stale($1, $2, $3, $4, $5, pg_catalog.current_setting('search_path'));
$$;

-- Views ---------------------------------------------------------------------
-- Each shows only the mappings of tables the querying role can read.

-- Dirty records: the keyed queue plus changes not absorbed yet.
CREATE VIEW etlify._pending AS
SELECT p.mapping_id, p.key, min(p.enqueued_at) AS enqueued_at, max(p.not_before) AS not_before
  FROM (SELECT q.mapping_id, q.key, q.enqueued_at, q.not_before FROM etlify.queue q
        UNION ALL
        SELECT c.mapping_id, k.key, c.at, '-infinity'::timestamptz
          FROM etlify.changes c CROSS JOIN LATERAL unnest(c.keys) AS k(key)
         WHERE k.key IS NOT NULL) p
 GROUP BY p.mapping_id, p.key;

-- Every record's state, as the drain acts on it (internal: with the mapping id and
-- when a pending record became dirty).
CREATE VIEW etlify._status AS
SELECT coalesce(r.mapping_id, q.mapping_id) AS mapping_id,
       coalesce(r.key, q.key) AS key,
       CASE WHEN r.state = 'parked' THEN 'parked'
            WHEN q.key IS NOT NULL AND r.state = 'failed' THEN 'failed'
            WHEN q.key IS NOT NULL THEN 'pending'
            ELSE r.state END AS state,
       r.crm_id,
       r.last_synced_at,
       coalesce(r.error_count, 0) AS error_count,
       r.last_error,
       CASE WHEN q.not_before > '-infinity' AND q.not_before < 'infinity' THEN q.not_before END AS next_attempt_at,
       q.enqueued_at
  FROM etlify.records r
  FULL JOIN etlify._pending q ON q.mapping_id = r.mapping_id AND q.key = r.key;

CREATE VIEW etlify.sync_status AS
SELECT m.crm, m.source, s.key, s.state, s.crm_id, s.last_synced_at, s.error_count, s.last_error,
       s.next_attempt_at
  FROM etlify._status s
  JOIN etlify.mappings m ON m.id = s.mapping_id
 WHERE has_table_privilege(m.source, 'SELECT');

-- oldest_pending_at: when the oldest record that is pending (not failed, not
-- parked) became dirty; NULL when none is.
CREATE VIEW etlify.overview AS
SELECT m.crm,
       m.source,
       count(*) FILTER (WHERE s.state = 'synced')   AS synced,
       count(*) FILTER (WHERE s.state = 'pending')  AS pending,
       count(*) FILTER (WHERE s.state = 'buffered') AS buffered,
       count(*) FILTER (WHERE s.state = 'failed')   AS failed,
       count(*) FILTER (WHERE s.state = 'parked')   AS parked,
       count(*) FILTER (WHERE s.state = 'skipped')  AS skipped,
       min(s.enqueued_at) FILTER (WHERE s.state = 'pending') AS oldest_pending_at,
       max(s.last_synced_at) AS last_synced_at,
       count(*) FILTER (WHERE s.state = 'deleted')  AS deleted
  FROM etlify.mappings m
  LEFT JOIN etlify._status s ON s.mapping_id = m.id
 WHERE has_table_privilege(m.source, 'SELECT')
 GROUP BY m.id, m.crm, m.source;

-- A CRM registration's version as the engine and the shared per-CRM state know it
-- (budgets.rs): whole microseconds, the same text under any session settings.
CREATE FUNCTION etlify._version(p_updated_at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT (extract(epoch FROM p_updated_at) * 1000000)::bigint::text $$;

-- One row per CRM: whether the workers may send to it, and if not why and until
-- when; its rate limit (configured, else the CRM's own) and how much of it the
-- current period used; 429s and the daily quota. The live half comes from shared
-- memory (etlify._crm_budget): it starts empty with the server.
CREATE VIEW etlify.crm_status AS
SELECT c.name AS crm,
       c.adapter,
       c.enabled,
       CASE WHEN NOT c.enabled THEN 'disabled'
            WHEN (c.home_system, c.home_database) IS DISTINCT FROM (h.system, h.database) THEN 'held'
            ELSE coalesce(b.state, 'ok') END AS state,
       CASE WHEN c.enabled THEN b.paused_until END AS paused_until,
       CASE WHEN NOT c.enabled THEN NULL
            WHEN (c.home_system, c.home_database) IS DISTINCT FROM (h.system, h.database)
            THEN 'this database is a copy: the CRM was registered in another database or cluster; '
                 || 'run etlify.resume(' || quote_literal(c.name) || ') to let it write there'
            ELSE b.pause_reason
       END AS pause_reason,
       coalesce(c.rate_limit, b.learned_limit) AS rate_limit,
       CASE WHEN c.rate_limit IS NOT NULL THEN c.rate_period
            ELSE coalesce(make_interval(secs => b.learned_period_ms / 1000.0), c.rate_period) END AS rate_period,
       coalesce(b.requests_last_period, 0) AS requests_last_period,
       coalesce(b.throttled_total, 0) AS throttled_total,
       b.daily_used,
       b.daily_limit
  FROM etlify.crms c
 CROSS JOIN etlify._home() h
 CROSS JOIN LATERAL etlify._crm_budget(c.name, etlify._version(c.updated_at)) b;

CREATE VIEW etlify.sync_log AS
SELECT at, crm, source, operation, records, http_status, duration_ms, error
  FROM etlify.sync_log_entries l
 WHERE l.source IS NULL OR coalesce(has_table_privilege(l.source, 'SELECT'), false)
 ORDER BY id DESC;

CREATE FUNCTION etlify.sync(crm text, source regclass, key text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    r record := etlify._record_key($1, $2, $3, 'etlify.sync');
BEGIN
    RETURN etlify._sync_one((r.m).id, r.k, false);
END
$$;

CREATE FUNCTION etlify.delete(crm text, source regclass, key text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    r record := etlify._record_key($1, $2, $3, 'etlify.delete');
BEGIN
    RETURN etlify._sync_one((r.m).id, r.k, true);
END
$$;

-- Privileges -----------------------------------------------------------------
-- Nothing for PUBLIC (functions are executable by PUBLIC by default). The API is
-- for etlify_admin; internal functions are called by the API functions, which run
-- as the extension's owner, and by the worker.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA etlify FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA etlify FROM PUBLIC;
GRANT EXECUTE ON FUNCTION etlify.register_crm, etlify.sync_table, etlify.unsync_table, etlify.sync,
    etlify.delete, etlify.enqueue, etlify.drain, etlify.sync_stale, etlify.reset_errors, etlify.crm_id,
    etlify.resume, etlify.capture_on_subscriber
    TO etlify_admin;
-- sync_table and sync_stale hand over to them with the caller's search_path; they
-- check the caller themselves
GRANT EXECUTE ON FUNCTION etlify._declare_mapping, etlify._sync_stale TO etlify_admin;
-- etlify.crm_status calls it (a view's functions run with the querying role's rights)
GRANT EXECUTE ON FUNCTION etlify._home, etlify._version, etlify._crm_budget TO etlify_admin;
-- CREATE TRIGGER checks EXECUTE on the trigger function: a database owner who is a
-- member restores its tables' capture triggers from a dump
GRANT EXECUTE ON FUNCTION etlify._capture TO etlify_admin;
GRANT SELECT ON etlify.sync_status, etlify.overview, etlify.sync_log, etlify.crm_status TO etlify_admin;
