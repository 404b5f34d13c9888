-- Declarations: register_crm, sync_table, unsync_table, and the change-capture
-- triggers they generate. Every check runs before anything is written, and each
-- function is one statement, so a failed declaration leaves nothing behind.

CREATE FUNCTION etlify.register_crm(
    name            text,
    adapter         text,
    config          jsonb    DEFAULT '{}',
    secret          text     DEFAULT NULL,
    enabled         boolean  DEFAULT true,
    rate_limit      int      DEFAULT NULL,
    rate_period     interval DEFAULT '10 seconds',
    max_sync_errors int      DEFAULT 3,
    batch_size      int      DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_name   ALIAS FOR $1;
    v_config jsonb := coalesce($3, '{}');
BEGIN
    IF v_name IS NULL OR btrim(v_name) = '' THEN
        RAISE EXCEPTION 'etlify.register_crm: name must not be empty';
    END IF;
    IF $6 IS NOT NULL AND $6 <= 0 THEN
        RAISE EXCEPTION 'etlify.register_crm: rate_limit must be positive, got %', $6;
    END IF;
    IF $7 IS NULL OR $7 <= interval '0' THEN
        RAISE EXCEPTION 'etlify.register_crm: rate_period must be a positive interval, got %', $7;
    END IF;
    IF $8 IS NULL OR $8 <= 0 THEN
        RAISE EXCEPTION 'etlify.register_crm: max_sync_errors must be positive, got %', $8;
    END IF;
    -- adapter name, its config keys and the batch size it can take (Rust: etlify_core::validate)
    PERFORM etlify._validate_adapter($2, v_config, $9,
        $4 IS NOT NULL OR EXISTS (SELECT 1 FROM etlify.crm_secrets s WHERE s.crm = v_name));

    INSERT INTO etlify.crms AS c (name, adapter, config, enabled, rate_limit, rate_period, max_sync_errors, batch_size)
    VALUES (v_name, $2, v_config, coalesce($5, true), $6, $7, $8, $9)
    ON CONFLICT ON CONSTRAINT crms_pkey DO UPDATE
       SET adapter = EXCLUDED.adapter, config = EXCLUDED.config, enabled = EXCLUDED.enabled,
           rate_limit = EXCLUDED.rate_limit, rate_period = EXCLUDED.rate_period,
           max_sync_errors = EXCLUDED.max_sync_errors, batch_size = EXCLUDED.batch_size,
           updated_at = now();

    -- NULL keeps the stored secret, so re-registering to change a setting does not
    -- require the token again.
    IF $4 IS NOT NULL THEN
        INSERT INTO etlify.crm_secrets AS s (crm, secret) VALUES (v_name, $4)
        ON CONFLICT (crm) DO UPDATE SET secret = EXCLUDED.secret;
    END IF;
    PERFORM etlify._wake();
END
$$;

-- TRUNCATE of a source: every record with a CRM id is dirty (its row is gone, so
-- the drain archives it). Security definer: the truncating role cannot read
-- etlify.records.
CREATE FUNCTION etlify._enqueue_synced(p_mapping int) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    -- in key order, like every multi-row write of queue rows: two writers that lock
    -- the same rows in the same order cannot deadlock
    INSERT INTO etlify.queue AS q (mapping_id, key, change_seq)
    SELECT r.mapping_id, r.key, (SELECT nextval('etlify.change_seq'))
      FROM etlify.records r WHERE r.mapping_id = p_mapping AND r.crm_id IS NOT NULL
     ORDER BY r.key
    ON CONFLICT (mapping_id, key) DO UPDATE SET change_seq = EXCLUDED.change_seq;
$$;

-- Removes a mapping. Its queue rows and sync state are deleted later by the drain
-- (etlify._collect_forgotten): the mapping row is all the caller's DDL touches.
CREATE FUNCTION etlify._forget_mapping(p_mapping int) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM etlify.mappings WHERE id = p_mapping;
    INSERT INTO etlify.forgotten (mapping_id) VALUES (p_mapping) ON CONFLICT DO NOTHING;
$$;

-- The capture triggers of one mapping: etlify._capture (src/capture.rs), once per
-- event, with the mapping id, the key column and the watched columns as arguments
-- (no watched column: every column). Postgres allows transition tables only on
-- single-event triggers.
CREATE FUNCTION etlify._capture_events()
RETURNS TABLE (suffix text, event text, transition_tables text)
LANGUAGE sql IMMUTABLE
AS $$
    VALUES ('_ins',   'INSERT',   'REFERENCING NEW TABLE AS etlify_new'),
           ('_upd',   'UPDATE',   'REFERENCING OLD TABLE AS etlify_old NEW TABLE AS etlify_new'),
           ('_del',   'DELETE',   'REFERENCING OLD TABLE AS etlify_old'),
           ('_trunc', 'TRUNCATE', '');
$$;

CREATE FUNCTION etlify._install_capture(p_mapping etlify.mappings) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_trg  text := 'etlify_capture_' || p_mapping.id;
    v_args text;
    e      record;
BEGIN
    SELECT string_agg(quote_literal(a), ', ')
      INTO v_args
      FROM unnest(ARRAY[p_mapping.id::text, p_mapping.key_column::text] || coalesce(p_mapping.watch, '{}')) AS a;
    FOR e IN SELECT * FROM etlify._capture_events() LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s %s FOR EACH STATEMENT EXECUTE FUNCTION etlify._capture(%s)',
                       v_trg || e.suffix, e.event, p_mapping.source, e.transition_tables, v_args);
        -- Not extension members (pg_dump must still dump them with the user's
        -- table), but dropped with the extension so that no trigger outlives it.
        EXECUTE format('ALTER TRIGGER %I ON %s DEPENDS ON EXTENSION etlify', v_trg || e.suffix, p_mapping.source);
    END LOOP;
END
$$;

CREATE FUNCTION etlify._drop_capture(p_mapping etlify.mappings) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT * FROM etlify._capture_events() LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'etlify_capture_' || p_mapping.id || e.suffix, p_mapping.source);
    END LOOP;
END
$$;

CREATE FUNCTION etlify.sync_table(
    crm               text,
    source            regclass,
    object_type       text,
    id_property       text,
    serializer        regproc,
    watch             text[]  DEFAULT NULL,
    sync_if           text    DEFAULT NULL,
    dependencies      jsonb   DEFAULT NULL,
    sync_dependencies jsonb   DEFAULT NULL,
    backfill          boolean DEFAULT true
) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_crm      ALIAS FOR $1;
    v_source   ALIAS FOR $2;
    v_ser      ALIAS FOR $5;
    v_watch    ALIAS FOR $6;
    v_sync_if  ALIAS FOR $7;
    v_relkind  "char";
    v_rowtype  oid;
    v_pk       int2[];
    v_key_col  name;
    v_key_type regtype;
    v_proc     pg_proc;
    v_col      text;
    v_pred     text;
    v_fetch    text;
    v_mapping  etlify.mappings;
BEGIN
    IF v_crm IS NULL OR NOT EXISTS (SELECT 1 FROM etlify.crms c WHERE c.name = v_crm) THEN
        RAISE EXCEPTION 'etlify.sync_table: unknown CRM "%"', v_crm
            USING HINT = 'Register it first with etlify.register_crm().';
    END IF;
    IF v_source IS NULL THEN
        RAISE EXCEPTION 'etlify.sync_table: source must not be NULL';
    END IF;
    SELECT c.relkind, c.reltype INTO v_relkind, v_rowtype FROM pg_class c WHERE c.oid = v_source;
    IF v_relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'etlify.sync_table: source % is not a table', v_source;
    END IF;
    IF coalesce(btrim($3), '') = '' THEN
        RAISE EXCEPTION 'etlify.sync_table: object_type must not be empty (source %)', v_source;
    END IF;
    IF coalesce(btrim($4), '') = '' THEN
        RAISE EXCEPTION 'etlify.sync_table: id_property must not be empty (source %)', v_source;
    END IF;
    IF EXISTS (SELECT 1 FROM etlify.mappings m WHERE m.crm = v_crm AND m.source = v_source) THEN
        RAISE EXCEPTION 'etlify.sync_table: % is already synced to CRM "%"', v_source, v_crm
            USING HINT = 'Call etlify.unsync_table() first to change the declaration.';
    END IF;

    -- primary key: one column (its text form is the record's key)
    -- (int2vector casts to a 0-based array: go through text for a 1-based one)
    SELECT string_to_array(i.indkey::text, ' ')::int2[] INTO v_pk FROM pg_index i WHERE i.indrelid = v_source AND i.indisprimary;
    IF v_pk IS NULL THEN
        RAISE EXCEPTION 'etlify.sync_table: table % has no primary key', v_source
            USING HINT = 'etlify identifies records by their primary key; add one.';
    END IF;
    IF cardinality(v_pk) <> 1 THEN
        RAISE EXCEPTION 'etlify.sync_table: table % has a composite primary key, which is not supported yet', v_source;
    END IF;
    SELECT a.attname, a.atttypid::regtype INTO v_key_col, v_key_type
      FROM pg_attribute a WHERE a.attrelid = v_source AND a.attnum = v_pk[1];

    -- serializer: function(source_row_type) RETURNS jsonb
    IF v_ser IS NULL THEN
        RAISE EXCEPTION 'etlify.sync_table: serializer must not be NULL';
    END IF;
    SELECT * INTO v_proc FROM pg_proc p WHERE p.oid = v_ser;
    IF v_proc.pronargs <> 1 OR v_proc.proargtypes[0] <> v_rowtype
       OR v_proc.prorettype <> 'jsonb'::regtype OR v_proc.proretset OR v_proc.prokind <> 'f' THEN
        RAISE EXCEPTION 'etlify.sync_table: serializer % must be a function(%) RETURNS jsonb, but it is %(%) RETURNS %',
            v_ser, v_source, v_ser, pg_get_function_identity_arguments(v_ser),
            CASE WHEN v_proc.proretset THEN 'SETOF ' ELSE '' END || v_proc.prorettype::regtype::text;
    END IF;

    -- watched columns
    IF v_watch IS NOT NULL THEN
        IF cardinality(v_watch) = 0 THEN
            RAISE EXCEPTION 'etlify.sync_table: watch must not be empty (use NULL to watch every column of %)', v_source;
        END IF;
        FOREACH v_col IN ARRAY v_watch LOOP
            IF v_col IS NULL OR NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = v_source
                                             AND a.attname = v_col AND a.attnum > 0 AND NOT a.attisdropped) THEN
                RAISE EXCEPTION 'etlify.sync_table: watched column "%" does not exist in %', v_col, v_source;
            END IF;
        END LOOP;
    END IF;

    -- sync_if: a boolean predicate over the row; parse and type-check it now
    IF v_sync_if IS NOT NULL THEN
        IF btrim(v_sync_if) = '' THEN
            RAISE EXCEPTION 'etlify.sync_table: sync_if must not be empty (use NULL to sync every row of %)', v_source;
        END IF;
        BEGIN
            EXECUTE format('SELECT (%s)::boolean FROM %s t LIMIT 0', v_sync_if, v_source);
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'etlify.sync_table: sync_if "%" is not a valid predicate over %: %', v_sync_if, v_source, SQLERRM;
        END;
    END IF;

    IF $8 IS NOT NULL OR $9 IS NOT NULL THEN
        RAISE EXCEPTION 'etlify.sync_table: dependencies and sync_dependencies are not supported yet (source %)', v_source;
    END IF;

    -- One statement loads and serializes a batch of keys, as the mapping's owner
    -- (set by _claim). The serializer sits in the outer target list so that it runs
    -- once per joined row only: inside a lateral subquery the planner may flatten it
    -- into a scan that serializes the whole table before the join.
    v_pred := coalesce('(' || v_sync_if || ')', 'true');
    v_fetch := format(
        'SELECT k._etlify_key AS key, t.%4$I IS NOT NULL AS present, '
        't.%4$I IS NOT NULL AND coalesce(%1$s, false) AS included, '
        'CASE WHEN t.%4$I IS NOT NULL AND %1$s THEN %2$s(t) END AS payload '
        'FROM unnest($1::text[]) AS k(_etlify_key) '
        'LEFT JOIN %3$s t ON t.%4$I = k._etlify_key::%5$s',
        v_pred, v_ser::text, v_source, v_key_col, v_key_type);
    -- the generated statement must plan (catches a sync_if that only fails in context)
    BEGIN
        EXECUTE 'EXPLAIN ' || v_fetch USING ARRAY[]::text[];
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'etlify.sync_table: cannot load rows of % through serializer %: %', v_source, v_ser, SQLERRM;
    END;

    INSERT INTO etlify.mappings (crm, source, object_type, id_property, serializer, watch, sync_if,
                                 dependencies, sync_dependencies, owner, key_column, key_type, fetch_sql)
    VALUES (v_crm, v_source, $3, $4, v_ser::regprocedure::text, v_watch, v_sync_if, $8, $9,
            current_user::regrole, v_key_col, v_key_type, v_fetch)
    RETURNING * INTO v_mapping;

    PERFORM etlify._install_capture(v_mapping);

    IF coalesce($10, true) THEN
        EXECUTE format(
            'INSERT INTO etlify.queue (mapping_id, key, change_seq) '
            'SELECT %s, pg_catalog.format(''%%s'', t.%I), (SELECT pg_catalog.nextval(''etlify.change_seq'')) FROM %s t',
            v_mapping.id, v_key_col, v_source);
        PERFORM etlify._wake();
    END IF;
END
$$;

CREATE FUNCTION etlify.unsync_table(crm text, source regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_mapping etlify.mappings;
BEGIN
    SELECT * INTO v_mapping FROM etlify.mappings m WHERE m.crm = $1 AND m.source = $2;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'etlify.unsync_table: % is not synced to CRM "%"', $2, $1;
    END IF;
    PERFORM etlify._drop_capture(v_mapping);
    PERFORM etlify._forget_mapping(v_mapping.id);
END
$$;

-- The mapping a user names by (crm, source), or an error naming both.
CREATE FUNCTION etlify._mapping(p_crm text, p_source regclass) RETURNS etlify.mappings
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_mapping etlify.mappings;
BEGIN
    SELECT * INTO v_mapping FROM etlify.mappings m WHERE m.crm = p_crm AND m.source = p_source;
    IF NOT FOUND THEN
        IF NOT EXISTS (SELECT 1 FROM etlify.crms c WHERE c.name = p_crm) THEN
            RAISE EXCEPTION 'etlify: unknown CRM "%"', p_crm;
        END IF;
        RAISE EXCEPTION 'etlify: % is not synced to CRM "%"', p_source, p_crm
            USING HINT = 'Declare it with etlify.sync_table().';
    END IF;
    RETURN v_mapping;
END
$$;

-- A dropped source table takes its mappings (and their state) with it, so that the
-- worker never works on a table that is gone.
CREATE FUNCTION etlify._on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_mapping etlify.mappings;
BEGIN
    FOR v_mapping IN
        SELECT m.* FROM etlify.mappings m
          JOIN pg_event_trigger_dropped_objects() d ON d.objid = m.source::oid
         WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0
    LOOP
        PERFORM etlify._forget_mapping(v_mapping.id);
    END LOOP;
END
$$;

CREATE EVENT TRIGGER etlify_sql_drop ON sql_drop EXECUTE FUNCTION etlify._on_sql_drop();
