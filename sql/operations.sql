-- The drain's SQL half: claim a batch and serialize it, record outcomes, log
-- requests. The Rust half (src/engine) decides what to send and talks to the CRM
-- between these calls, with no transaction open when it runs in the worker.

-- Moves up to p_limit rows of etlify.changes into the keyed queue, one new change
-- number for all of them: a key that is in flight gets a number its claimer did not
-- see, so its claimer leaves it dirty (never lose a change). Returns the rows moved.
CREATE FUNCTION etlify._absorb(p_limit int) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_moved bigint;
BEGIN
    WITH moved AS (
        DELETE FROM etlify.changes c
         WHERE c.ctid = ANY (ARRAY(SELECT x.ctid FROM etlify.changes x LIMIT p_limit FOR UPDATE SKIP LOCKED))
        RETURNING c.mapping_id, c.keys, c.at
    ), counted AS (
        SELECT count(*) AS n FROM moved
    ), dirty AS (
        SELECT m.mapping_id, k.key, min(m.at) AS at
          FROM moved m CROSS JOIN LATERAL unnest(m.keys) AS k(key)
         WHERE EXISTS (SELECT 1 FROM etlify.mappings mm WHERE mm.id = m.mapping_id)
         GROUP BY m.mapping_id, k.key
    ), ins AS (
        INSERT INTO etlify.queue AS q (mapping_id, key, change_seq, enqueued_at)
        SELECT d.mapping_id, d.key, (SELECT nextval('etlify.change_seq')), d.at FROM dirty d
         ORDER BY d.mapping_id, d.key  -- key order: see etlify._enqueue_synced
        ON CONFLICT (mapping_id, key) DO UPDATE SET change_seq = EXCLUDED.change_seq
        RETURNING 1
    )
    SELECT counted.n INTO v_moved FROM counted, (SELECT count(*) FROM ins) i;
    RETURN v_moved;
END
$$;

-- Claims up to p_limit ready keys of a mapping (or exactly p_keys), then loads and
-- serializes them in one statement as the mapping's owner.
--   p_claimer: the worker's claim token (committed before HTTP so that other claimers
--   skip the keys); NULL for inline callers, who hold row locks in their own
--   transaction instead.
-- One row per claimed key. present: the source row exists; included: sync_if holds;
-- error: the serializer failed for this row (the others are unaffected).
-- No SET search_path here (everything below is qualified): serializers and sync_if
-- resolve names with the session's search_path, as they would in a query.
CREATE FUNCTION etlify._claim(p_mapping int, p_limit int, p_claimer text, p_keys text[] DEFAULT NULL)
RETURNS TABLE (key text, change_seq bigint, state text, crm_id text, digest bytea,
               present boolean, included boolean, payload jsonb, error text)
LANGUAGE plpgsql
-- plans fit the tables as they are now (a plan cached while etlify.records was
-- empty would scan it for every batch once it is large)
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    m          etlify.mappings;
    v_keys     text[];
    v_seqs     bigint[];
    v_present  boolean[];
    v_included boolean[];
    v_payloads jsonb[];
    v_errors   text[];
    r          record;
    i          int;
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
    EXCEPTION WHEN undefined_table THEN
        RETURN;  -- dropped while we waited: its mapping is gone with it
    END;

    IF p_keys IS NULL THEN
        -- no ORDER BY: a sort would read the whole backlog on every claim. The
        -- update goes by ctid (a TID scan), not by a join over the queue.
        WITH u AS (
            UPDATE etlify.queue q SET claimed_by = p_claimer, claimed_at = now()
             WHERE q.ctid = ANY (ARRAY(
                   SELECT x.ctid FROM etlify.queue x
                    WHERE x.mapping_id = p_mapping AND x.not_before <= now() AND x.claimed_by IS NULL
                    LIMIT p_limit
                      FOR UPDATE SKIP LOCKED))
            RETURNING q.key, q.change_seq
        )
        SELECT array_agg(u.key), array_agg(u.change_seq) INTO v_keys, v_seqs FROM u;
    ELSE
        -- named keys (etlify.sync / etlify.delete), dirty or not. A queue row that
        -- another claimer holds is left alone: its own claimer will finish it.
        WITH c AS (
            SELECT q.key FROM etlify.queue q
             WHERE q.mapping_id = p_mapping AND q.key = ANY (p_keys) AND q.claimed_by IS NULL
               FOR UPDATE
        ), u AS (
            UPDATE etlify.queue q SET claimed_by = p_claimer, claimed_at = now()
              FROM c WHERE q.mapping_id = p_mapping AND q.key = c.key
            RETURNING q.key, q.change_seq
        )
        SELECT array_agg(k.key), array_agg(u.change_seq) INTO v_keys, v_seqs
          FROM unnest(p_keys) AS k(key) LEFT JOIN u ON u.key = k.key;
    END IF;
    IF v_keys IS NULL THEN
        RETURN;
    END IF;
    SELECT array_agg(k.key ORDER BY k.key), array_agg(k.seq ORDER BY k.key) INTO v_keys, v_seqs
      FROM unnest(v_keys, v_seqs) AS k(key, seq);

    -- Serializer and sync_if run as the role that declared the mapping, never as
    -- the (superuser) worker.
    EXECUTE format('SET LOCAL ROLE %s', m.owner);
    BEGIN
        -- ordered by key on both sides: the join inside fetch_sql may reorder rows
        EXECUTE 'SELECT array_agg(f.present ORDER BY f.key), array_agg(f.included ORDER BY f.key), '
                || 'array_agg(f.payload ORDER BY f.key) FROM (' || m.fetch_sql || ') f'
           INTO v_present, v_included, v_payloads
          USING v_keys;
        v_errors := array_fill(NULL::text, ARRAY[cardinality(v_keys)]);
    EXCEPTION WHEN OTHERS THEN
        -- one row's serializer failed: redo the batch row by row to blame only it
        v_present := '{}'; v_included := '{}'; v_payloads := '{}'; v_errors := '{}';
        FOR i IN 1 .. cardinality(v_keys) LOOP
            BEGIN
                EXECUTE m.fetch_sql INTO r USING ARRAY[v_keys[i]];
                v_present := v_present || r.present;
                v_included := v_included || r.included;
                v_payloads := v_payloads || r.payload;
                v_errors := v_errors || NULL::text;
            EXCEPTION WHEN OTHERS THEN
                v_present := v_present || true;
                v_included := v_included || true;
                v_payloads := v_payloads || NULL::jsonb;
                v_errors := v_errors || ('serializer failed: ' || SQLERRM);
            END;
        END LOOP;
    END;
    RESET ROLE;

    RETURN QUERY
        SELECT k.key, k.seq, rec.state, rec.crm_id, rec.digest, k.present, k.included, k.payload, k.error
          FROM unnest(v_keys, v_seqs, v_present, v_included, v_payloads, v_errors)
               AS k(key, seq, present, included, payload, error)
          LEFT JOIN etlify.records rec ON rec.mapping_id = p_mapping AND rec.key = k.key;
END
$$;

-- Records the outcome of one claimed batch, set-based. p_results is a JSON array of
-- {key, seq, outcome, crm_id, digest (hex), error, retry_ms} where outcome is one of
-- synced, not_modified, skipped, deleted, noop, disabled (done: the queue row is
-- cleared if nothing changed since the claim), failed (the record's fault: counted,
-- backed off, parked at max_sync_errors), retry (not the record's fault: backed off
-- by retry_ms, not counted), stale (the CRM forgot crm_id: upsert again at once).
CREATE TYPE etlify._result AS (
    key text, seq bigint, outcome text, crm_id text, digest text, error text, retry_ms bigint
);

CREATE FUNCTION etlify._record(p_mapping int, p_claimer text, p_results jsonb) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    v_max  int;
    v_base interval := current_setting('etlify.retry_backoff')::interval;
    v_cap  interval := current_setting('etlify.retry_backoff_max')::interval;
    v_results etlify._result[];
BEGIN
    SELECT c.max_sync_errors INTO v_max
      FROM etlify.mappings m JOIN etlify.crms c ON c.name = m.crm WHERE m.id = p_mapping;
    IF NOT FOUND THEN
        RETURN;  -- unsynced while the batch was in flight
    END IF;

    v_results := ARRAY(SELECT jsonb_populate_recordset(NULL::etlify._result, p_results));

    -- sync state
    INSERT INTO etlify.records AS rec (mapping_id, key, state, crm_id, digest, last_synced_at)
    SELECT p_mapping, r.key, 'synced', r.crm_id, decode(r.digest, 'hex'), now()
      FROM unnest(v_results) r WHERE r.outcome = 'synced'
    ON CONFLICT (mapping_id, key) DO UPDATE
       SET state = 'synced', crm_id = EXCLUDED.crm_id, digest = EXCLUDED.digest,
           last_synced_at = EXCLUDED.last_synced_at, error_count = 0, last_error = NULL, updated_at = now();

    -- (rows already synced and clean are not rewritten: a re-check of unchanged
    -- records writes nothing here)
    UPDATE etlify.records rec
       SET state = 'synced', error_count = 0, last_error = NULL, updated_at = now()
      FROM unnest(v_results) r
     WHERE r.outcome = 'not_modified' AND rec.mapping_id = p_mapping AND rec.key = r.key
       AND (rec.state <> 'synced' OR rec.error_count <> 0);

    INSERT INTO etlify.records AS rec (mapping_id, key, state)
    SELECT p_mapping, r.key, 'skipped' FROM unnest(v_results) r WHERE r.outcome = 'skipped'
    ON CONFLICT (mapping_id, key) DO UPDATE
       SET state = 'skipped', error_count = 0, last_error = NULL, updated_at = now();

    UPDATE etlify.records rec
       SET state = 'deleted', crm_id = NULL, digest = NULL, error_count = 0, last_error = NULL,
           last_synced_at = CASE WHEN r.outcome = 'deleted' THEN now() ELSE rec.last_synced_at END,
           updated_at = now()
      FROM unnest(v_results) r
     WHERE r.outcome IN ('deleted', 'noop') AND rec.mapping_id = p_mapping AND rec.key = r.key;

    UPDATE etlify.records rec
       SET crm_id = NULL, digest = NULL, updated_at = now()
      FROM unnest(v_results) r
     WHERE r.outcome = 'stale' AND rec.mapping_id = p_mapping AND rec.key = r.key;

    INSERT INTO etlify.records AS rec (mapping_id, key, state, error_count, last_error)
    SELECT p_mapping, r.key, CASE WHEN 1 >= v_max THEN 'parked' ELSE 'failed' END, 1, r.error
      FROM unnest(v_results) r WHERE r.outcome = 'failed'
    ON CONFLICT (mapping_id, key) DO UPDATE
       SET error_count = rec.error_count + 1,
           state = CASE WHEN rec.error_count + 1 >= v_max THEN 'parked' ELSE 'failed' END,
           last_error = EXCLUDED.last_error, updated_at = now();

    -- queue: done records leave it unless they changed since the claim
    DELETE FROM etlify.queue q USING unnest(v_results) r
     WHERE q.mapping_id = p_mapping AND q.key = r.key AND q.change_seq = r.seq
       AND r.outcome IN ('synced', 'not_modified', 'skipped', 'deleted', 'noop', 'disabled');

    -- failed and retried records stay (or become) dirty, backed off; parked ones wait
    -- for etlify.reset_errors
    INSERT INTO etlify.queue AS q (mapping_id, key, change_seq, not_before)
    SELECT p_mapping, r.key, coalesce(r.seq, nextval('etlify.change_seq')),
           CASE WHEN r.outcome = 'failed' THEN
                    CASE WHEN rec.state = 'parked' THEN 'infinity'::timestamptz
                         ELSE now() + least(v_base * power(2, greatest(rec.error_count - 1, 0))::float8, v_cap) END
                ELSE now() + make_interval(secs => coalesce(r.retry_ms, 0) / 1000.0) END
      FROM unnest(v_results) r
      LEFT JOIN etlify.records rec ON rec.mapping_id = p_mapping AND rec.key = r.key
     WHERE r.outcome IN ('failed', 'retry', 'stale')
    ON CONFLICT (mapping_id, key) DO UPDATE
       SET not_before = EXCLUDED.not_before, claimed_by = NULL, claimed_at = NULL;

    -- release what is left of this claim (records changed while in flight)
    IF p_claimer IS NOT NULL THEN
        UPDATE etlify.queue q SET claimed_by = NULL, claimed_at = NULL
          FROM unnest(v_results) r
         WHERE q.mapping_id = p_mapping AND q.key = r.key AND q.claimed_by = p_claimer;
    END IF;
END
$$;

-- Appends request log entries ({operation, records, http_status, duration_ms, error})
-- and keeps the log bounded.
CREATE FUNCTION etlify._log(p_crm text, p_source regclass, p_entries jsonb) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO etlify.sync_log_entries (crm, source, operation, records, http_status, duration_ms, error)
    SELECT p_crm, p_source, e.operation, e.records, e.http_status, e.duration_ms, e.error
      FROM jsonb_to_recordset(p_entries)
        AS e(operation text, records int, http_status int, duration_ms double precision, error text);
    DELETE FROM etlify.sync_log_entries
     WHERE id <= (SELECT last_value FROM etlify.sync_log_entries_id_seq)
                 - current_setting('etlify.sync_log_size')::bigint;
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
        DELETE FROM etlify.changes WHERE mapping_id = v_id;
        DELETE FROM etlify.queue WHERE mapping_id = v_id;
        DELETE FROM etlify.records WHERE mapping_id = v_id;
        DELETE FROM etlify.forgotten WHERE mapping_id = v_id;
        v_n := v_n + 1;
    END LOOP;
    RETURN v_n;
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
CREATE FUNCTION etlify._work(p_crm text DEFAULT NULL)
RETURNS TABLE (mapping_id int, crm text, source regclass, source_name text, object_type text, id_property text,
               adapter text, config jsonb, secret text, enabled boolean, rate_limit int,
               rate_period_ms double precision, batch_size int, crm_version timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT m.id, m.crm, m.source, m.source::text, m.object_type, m.id_property, c.adapter, c.config, s.secret,
           c.enabled, c.rate_limit, extract(epoch FROM c.rate_period) * 1000, c.batch_size, c.updated_at
      FROM etlify.mappings m
      JOIN etlify.crms c ON c.name = m.crm
      LEFT JOIN etlify.crm_secrets s ON s.crm = c.name
     WHERE p_crm IS NULL OR m.crm = p_crm
     ORDER BY m.id;
$$;

-- Validates a key against the mapping's primary-key type; returns the mapping.
CREATE FUNCTION etlify._mapping_for_key(p_crm text, p_source regclass, p_key text) RETURNS etlify.mappings
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m etlify.mappings := etlify._mapping(p_crm, p_source);
BEGIN
    IF p_key IS NULL THEN
        RAISE EXCEPTION 'etlify: key must not be NULL (source %)', p_source;
    END IF;
    BEGIN
        EXECUTE format('SELECT $1::%s', m.key_type) USING p_key;
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'etlify: key "%" is not a valid % (the primary key of %)', p_key, m.key_type, p_source;
    END;
    RETURN m;
END
$$;

CREATE FUNCTION etlify.enqueue(crm text, source regclass, key text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    m etlify.mappings := etlify._mapping_for_key($1, $2, $3);
BEGIN
    -- an explicit enqueue means "now", except for parked records (reset_errors revives those)
    INSERT INTO etlify.queue AS q (mapping_id, key, change_seq)
    VALUES (m.id, $3, nextval('etlify.change_seq'))
    ON CONFLICT (mapping_id, key) DO UPDATE
       SET change_seq = EXCLUDED.change_seq,
           not_before = CASE WHEN q.not_before = 'infinity' THEN q.not_before ELSE '-infinity' END;
    PERFORM etlify._wake();
END
$$;

CREATE FUNCTION etlify.reset_errors(crm text, source regclass DEFAULT NULL, key text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_count bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM etlify.crms c WHERE c.name = $1) THEN
        RAISE EXCEPTION 'etlify.reset_errors: unknown CRM "%"', $1;
    END IF;
    IF $2 IS NOT NULL THEN
        PERFORM etlify._mapping($1, $2);
    END IF;
    WITH t AS (
        UPDATE etlify.records r
           SET error_count = 0, last_error = NULL, state = 'pending', updated_at = now()
          FROM etlify.mappings m
         WHERE m.id = r.mapping_id AND m.crm = $1
           AND ($2 IS NULL OR m.source = $2) AND ($3 IS NULL OR r.key = $3)
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

-- For serializers (associations): the CRM id of another record, or NULL. Security
-- definer because serializers run as the mapping's owner, who cannot read etlify's
-- tables.
CREATE FUNCTION etlify.crm_id(crm text, source regclass, key text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.crm_id FROM etlify.records r
     WHERE r.mapping_id = (etlify._mapping($1, $2)).id AND r.key = $3;
$$;

-- No SET search_path (not security definer, everything qualified): per_model names
-- tables as the caller's search_path shows them.
CREATE FUNCTION etlify.sync_stale(crm text DEFAULT NULL, sources regclass[] DEFAULT NULL,
                                  async boolean DEFAULT true, batch_size int DEFAULT 1000) RETURNS jsonb
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    m        etlify.mappings;
    v_n      bigint;
    v_total  bigint := 0;
    v_per    jsonb := '{}';
    v_errors bigint := 0;
    v_drain  jsonb;
BEGIN
    IF $1 IS NOT NULL AND NOT EXISTS (SELECT 1 FROM etlify.crms c WHERE c.name = $1) THEN
        RAISE EXCEPTION 'etlify.sync_stale: unknown CRM "%"', $1;
    END IF;
    IF $4 IS NULL OR $4 <= 0 THEN
        RAISE EXCEPTION 'etlify.sync_stale: batch_size must be positive, got %', $4;
    END IF;
    -- Stale: a row with no sync state yet, or whose record is not synced/skipped
    -- (a change that bypassed the triggers, or a restore). Unchanged rows cost no
    -- request: the drain compares digests.
    FOR m IN SELECT * FROM etlify.mappings mm
              WHERE ($1 IS NULL OR mm.crm = $1) AND ($2 IS NULL OR mm.source = ANY ($2))
              ORDER BY mm.id LOOP
        EXECUTE format(
            'WITH s AS (INSERT INTO etlify.queue AS q (mapping_id, key, change_seq) '
            'SELECT %1$s, pg_catalog.format(''%%s'', t.%2$I), (SELECT pg_catalog.nextval(''etlify.change_seq'')) FROM %3$s t '
            'LEFT JOIN etlify.records r ON r.mapping_id = %1$s AND r.key = pg_catalog.format(''%%s'', t.%2$I) '
            'WHERE r.key IS NULL OR r.state NOT IN (''synced'', ''skipped'', ''parked'') '
            'ON CONFLICT (mapping_id, key) DO NOTHING RETURNING 1) SELECT count(*) FROM s',
            m.id, m.key_column, m.source) INTO v_n;
        v_total := v_total + v_n;
        v_per := v_per || jsonb_build_object(m.source::text, v_n);
    END LOOP;
    IF v_total > 0 THEN
        PERFORM etlify._wake();
    END IF;
    IF NOT coalesce($3, true) THEN
        v_drain := etlify.drain($1, NULL);
        v_errors := coalesce((v_drain ->> 'failed')::bigint, 0);
    END IF;
    RETURN jsonb_build_object('total', v_total, 'per_model', v_per, 'errors', v_errors);
END
$$;

-- Views ---------------------------------------------------------------------

-- Dirty records: the keyed queue plus changes not absorbed yet.
CREATE VIEW etlify._pending AS
SELECT p.mapping_id, p.key, min(p.enqueued_at) AS enqueued_at, max(p.not_before) AS not_before
  FROM (SELECT q.mapping_id, q.key, q.enqueued_at, q.not_before FROM etlify.queue q
        UNION ALL
        SELECT c.mapping_id, k.key, c.at, '-infinity'::timestamptz
          FROM etlify.changes c CROSS JOIN LATERAL unnest(c.keys) AS k(key)) p
 GROUP BY p.mapping_id, p.key;

CREATE VIEW etlify.sync_status AS
SELECT m.crm,
       m.source,
       coalesce(r.key, q.key) AS key,
       CASE WHEN r.state = 'parked' THEN 'parked'
            WHEN q.key IS NOT NULL AND r.state = 'failed' THEN 'failed'
            WHEN q.key IS NOT NULL THEN 'pending'
            ELSE r.state END AS state,
       r.crm_id,
       r.last_synced_at,
       coalesce(r.error_count, 0) AS error_count,
       r.last_error,
       CASE WHEN q.not_before > '-infinity' AND q.not_before < 'infinity' THEN q.not_before END AS next_attempt_at
  FROM etlify.records r
  FULL JOIN etlify._pending q ON q.mapping_id = r.mapping_id AND q.key = r.key
  JOIN etlify.mappings m ON m.id = coalesce(r.mapping_id, q.mapping_id);

CREATE VIEW etlify.overview AS
SELECT m.crm,
       m.source,
       count(*) FILTER (WHERE s.state = 'synced')   AS synced,
       count(*) FILTER (WHERE s.state = 'pending')  AS pending,
       count(*) FILTER (WHERE s.state = 'buffered') AS buffered,
       count(*) FILTER (WHERE s.state = 'failed')   AS failed,
       count(*) FILTER (WHERE s.state = 'parked')   AS parked,
       count(*) FILTER (WHERE s.state = 'skipped')  AS skipped,
       (SELECT min(q.enqueued_at) FROM etlify._pending q WHERE q.mapping_id = m.id) AS oldest_pending_at,
       (SELECT max(r.last_synced_at) FROM etlify.records r WHERE r.mapping_id = m.id) AS last_synced_at
  FROM etlify.mappings m
  LEFT JOIN etlify.sync_status s ON s.crm = m.crm AND s.source = m.source
 GROUP BY m.id, m.crm, m.source;

CREATE VIEW etlify.sync_log AS
SELECT at, crm, source, operation, records, http_status, duration_ms, error
  FROM etlify.sync_log_entries
 ORDER BY id DESC;

-- (views, like tables, start with no PUBLIC privileges; bootstrap.sql granted
-- PUBLIC what the capture trigger needs, and that grant must stay)
REVOKE ALL ON FUNCTION etlify.register_crm, etlify.sync_table, etlify.unsync_table, etlify._claim, etlify._absorb,
    etlify._collect_forgotten,
    etlify._record, etlify._log, etlify._release_claims, etlify._work, etlify.enqueue,
    etlify.reset_errors, etlify.sync_stale FROM PUBLIC;

CREATE FUNCTION etlify.sync(crm text, source regclass, key text) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    RETURN etlify._sync_one((etlify._mapping_for_key($1, $2, $3)).id, $3, false);
END
$$;

CREATE FUNCTION etlify.delete(crm text, source regclass, key text) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    RETURN etlify._sync_one((etlify._mapping_for_key($1, $2, $3)).id, $3, true);
END
$$;

REVOKE ALL ON FUNCTION etlify.sync, etlify.delete, etlify.drain, etlify._sync_one,
    etlify._validate_adapter FROM PUBLIC;
