-- Declarations: register_crm, sync_table, unsync_table, and the change-capture
-- triggers they generate. Every check runs before anything is written, and each
-- function is one statement, so a failed declaration leaves nothing behind.
--
-- Who may do what: superusers and members of etlify_admin call these (grants in
-- operations.sql). The work that needs more than the caller's rights (catalog
-- rows, triggers) runs in SECURITY DEFINER functions with a pinned search_path,
-- which check the caller themselves: etlify._caller() is the role the session acts
-- as, outside every security-definer function.

-- 42501 unless the caller is a superuser or a member of the role owning p_source.
CREATE FUNCTION etlify._require_owner(p_source regclass, p_what text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_caller oid := etlify._caller();
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = v_caller AND r.rolsuper)
       AND NOT pg_has_role(v_caller, (SELECT c.relowner FROM pg_class c WHERE c.oid = p_source), 'USAGE') THEN
        PERFORM etlify._raise('42501', format('%s: permission denied: role "%s" does not own table %s', p_what, v_caller::regrole, p_source));
    END IF;
END
$$;

-- 42501 unless the caller may read p_source: sync state, CRM ids and operations on
-- a table's records are for those who can read it.
CREATE FUNCTION etlify._require_select(p_source regclass, p_what text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT has_table_privilege(etlify._caller(), p_source, 'SELECT') THEN
        PERFORM etlify._raise('42501', format('%s: permission denied for table %s', p_what, p_source));
    END IF;
END
$$;

-- Where this database is: the cluster's system identifier and the database's OID.
-- A CRM registered elsewhere (this is a restored or templated copy) is held.
CREATE FUNCTION etlify._home(OUT system text, OUT database oid)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (SELECT c.system_identifier::text FROM pg_control_system() c),
           (SELECT d.oid FROM pg_database d WHERE d.datname = current_database());
$$;

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
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_name   ALIAS FOR $1;
    v_config jsonb := coalesce($3, '{}');
    v_old    etlify.crms;
BEGIN
    IF v_name IS NULL OR btrim(v_name) = '' THEN
        PERFORM etlify._raise('22023', 'etlify.register_crm: name must not be empty');
    END IF;
    IF $6 IS NOT NULL AND $6 <= 0 THEN
        PERFORM etlify._raise('22023', format('etlify.register_crm: rate_limit must be positive, got %s', $6));
    END IF;
    IF $7 IS NULL OR $7 <= interval '0' THEN
        PERFORM etlify._raise('22023', format('etlify.register_crm: rate_period must be a positive interval, got %s', $7));
    END IF;
    IF $8 IS NULL OR $8 <= 0 THEN
        PERFORM etlify._raise('22023', format('etlify.register_crm: max_sync_errors must be positive, got %s', $8));
    END IF;
    SELECT * INTO v_old FROM etlify.crms c WHERE c.name = v_name;
    -- The stored token goes wherever adapter and config say: a role that is not a
    -- superuser may not point it elsewhere without knowing it.
    IF FOUND AND $4 IS NULL AND (v_old.adapter IS DISTINCT FROM $2 OR v_old.config IS DISTINCT FROM v_config)
       AND NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = etlify._caller() AND r.rolsuper) THEN
        PERFORM etlify._raise('42501', format('etlify.register_crm: give the secret of CRM "%s" again to change its adapter or config', v_name));
    END IF;
    -- adapter name, its config keys and the batch size it can take (Rust: etlify_core::validate)
    PERFORM etlify._validate_adapter($2, v_config, $9,
        $4 IS NOT NULL OR EXISTS (SELECT 1 FROM etlify.crm_secrets s WHERE s.crm = v_name), $4);

    -- registering (again) here makes this database the CRM's home: it lifts a hold
    INSERT INTO etlify.crms AS c (name, adapter, config, enabled, rate_limit, rate_period, max_sync_errors,
                                  batch_size, home_system, home_database)
    SELECT v_name, $2, v_config, coalesce($5, true), $6, $7, $8, $9, h.system, h.database FROM etlify._home() h
    ON CONFLICT ON CONSTRAINT crms_pkey DO UPDATE
       SET adapter = EXCLUDED.adapter, config = EXCLUDED.config, enabled = EXCLUDED.enabled,
           rate_limit = EXCLUDED.rate_limit, rate_period = EXCLUDED.rate_period,
           max_sync_errors = EXCLUDED.max_sync_errors, batch_size = EXCLUDED.batch_size,
           home_system = EXCLUDED.home_system, home_database = EXCLUDED.home_database,
           updated_at = now();

    -- NULL keeps the stored secret, so re-registering to change a setting does not
    -- require the token again.
    IF $4 IS NOT NULL THEN
        INSERT INTO etlify.crm_secrets AS s (crm, secret) VALUES (v_name, $4)
        ON CONFLICT (crm) DO UPDATE SET secret = EXCLUDED.secret;
    END IF;
    -- a new registration lifts the CRM's pause (the worker builds its adapter
    -- anew): what waited for it is ready now
    PERFORM etlify._lift_pause(v_name);
    PERFORM etlify._wake();
END
$$;

-- Makes the records that wait because their CRM asked for a pause ready now:
-- the queue rows of its mappings backed off but not for the records' own fault
-- (failed and parked records keep their backoff).
CREATE FUNCTION etlify._lift_pause(p_crm text) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE etlify.queue q SET not_before = '-infinity'
      FROM etlify.mappings m
     WHERE m.crm = p_crm AND q.mapping_id = m.id
       AND q.not_before > now() AND q.not_before < 'infinity'
       AND NOT EXISTS (SELECT 1 FROM etlify.records r
                        WHERE r.mapping_id = q.mapping_id AND r.key = q.key
                          AND r.state IN ('failed', 'parked'));
$$;

-- The capture triggers of one mapping: etlify._capture (src/capture.rs), once per
-- event, with the mapping id, the key column and the watched columns as arguments
-- (no watched column: every column). Postgres allows transition tables only on
-- single-event triggers.
CREATE FUNCTION etlify._capture_events()
RETURNS TABLE (suffix text, event text, transition_tables text)
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    VALUES ('_ins',   'INSERT',   'REFERENCING NEW TABLE AS etlify_new'),
           ('_upd',   'UPDATE',   'REFERENCING OLD TABLE AS etlify_old NEW TABLE AS etlify_new'),
           ('_del',   'DELETE',   'REFERENCING OLD TABLE AS etlify_old'),
           ('_trunc', 'TRUNCATE', '');
$$;

-- The triggers also hold the mapping's reference to its serializer: the TRUNCATE
-- trigger's WHEN clause names it as a regprocedure constant, which Postgres
-- records as a dependency. So the reference follows renames of the function and its schema,
-- DROP FUNCTION is refused while the mapping exists, and pg_dump writes it by name.
-- (A regprocedure column would do the same but pg_upgrade refuses such tables.)
-- A partitioned source gets them on every partition too, at every level: a
-- statement aimed at a partition fires that partition's statement triggers only.
CREATE FUNCTION etlify._install_capture(p_mapping etlify.mappings, p_serializer regprocedure) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rel regclass;
BEGIN
    FOR v_rel IN SELECT t.rel FROM etlify._capture_tables(p_mapping.source) t LOOP
        PERFORM etlify._install_capture_on(p_mapping, p_serializer, v_rel);
    END LOOP;
END
$$;

-- The tables of a source that carry capture triggers: itself, and for a
-- partitioned table every partition but foreign ones (no transition tables there).
CREATE FUNCTION etlify._capture_tables(p_source regclass) RETURNS TABLE (rel regclass)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p_source
    UNION
    SELECT t.relid FROM pg_partition_tree(p_source) t JOIN pg_class c ON c.oid = t.relid
     WHERE c.relkind IN ('r', 'p');
$$;

-- The capture function's arguments for a mapping: its id, the key column and the
-- watched columns, as SQL literals.
CREATE FUNCTION etlify._capture_args(p_mapping etlify.mappings) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(quote_literal(a), ', ')
      FROM unnest(ARRAY[p_mapping.id::text, p_mapping.key_column::text] || coalesce(p_mapping.watch, '{}')) AS a;
$$;

CREATE FUNCTION etlify._install_capture_on(p_mapping etlify.mappings, p_serializer regprocedure, p_rel regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_trg  text := 'etlify_capture_' || p_mapping.id;
    v_args text := etlify._capture_args(p_mapping);
    e      record;
BEGIN
    FOR e IN SELECT * FROM etlify._capture_events() LOOP
        -- the serializer reference sits on the TRUNCATE trigger only: a WHEN clause
        -- is prepared for every statement that fires its trigger
        EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s %s FOR EACH STATEMENT %s EXECUTE FUNCTION etlify._capture(%s)',
                       v_trg || e.suffix, e.event, p_rel, e.transition_tables,
                       CASE WHEN e.suffix = '_trunc'
                            THEN format('WHEN (%L::pg_catalog.regprocedure IS NOT NULL)', p_serializer::text)
                            ELSE '' END,
                       v_args);
        -- Not extension members (pg_dump must still dump them with the user's
        -- table), but dropped with the extension so that no trigger outlives it.
        EXECUTE format('ALTER TRIGGER %I ON %s DEPENDS ON EXTENSION etlify', v_trg || e.suffix, p_rel);
    END LOOP;
    IF p_mapping.subscriber THEN
        PERFORM etlify._subscriber_capture_on(p_mapping, p_serializer, p_rel, true);
    END IF;
END
$$;

-- Logical-replication apply fires row triggers only, and only ENABLE ALWAYS (or
-- REPLICA) ones; session_replication_role = replica skips the others too. So a
-- subscriber's mapping gets a row trigger as well (the same function, one row at
-- a time), enabled ALWAYS like its TRUNCATE trigger. Writes made both ways are
-- captured twice, which only costs a second look.
CREATE FUNCTION etlify._subscriber_capture_on(p_mapping etlify.mappings, p_serializer regprocedure,
                                              p_rel regclass, p_on boolean) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_trg  text := 'etlify_capture_' || p_mapping.id;
BEGIN
    IF NOT p_on THEN
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', v_trg || '_row', p_rel);
        EXECUTE format('ALTER TABLE %s ENABLE TRIGGER %I', p_rel, v_trg || '_trunc');
        RETURN;
    END IF;
    IF (SELECT c.relkind FROM pg_class c WHERE c.oid = p_rel) = 'r'
       AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = p_rel AND t.tgname = v_trg || '_row') THEN
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW '
                       'EXECUTE FUNCTION etlify._capture(%s)',
                       v_trg || '_row', p_rel, etlify._capture_args(p_mapping));
        EXECUTE format('ALTER TRIGGER %I ON %s DEPENDS ON EXTENSION etlify', v_trg || '_row', p_rel);
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', p_rel, v_trg || '_row');
    END IF;
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', p_rel, v_trg || '_trunc');
END
$$;

-- Turns subscriber capture on or off for a mapping (see _subscriber_capture_on).
CREATE FUNCTION etlify.capture_on_subscriber(crm text, source regclass, enabled boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    m     etlify.mappings := etlify._mapping($1, $2);
    v_ser regprocedure := etlify._serializer(m);
    v_rel regclass;
BEGIN
    PERFORM etlify._require_owner($2, 'etlify.capture_on_subscriber');
    IF v_ser IS NULL THEN
        PERFORM etlify._raise('55000', format('etlify.capture_on_subscriber: the capture triggers of %s are gone; declare the mapping again', $2));
    END IF;
    UPDATE etlify.mappings mm SET subscriber = coalesce($3, true) WHERE mm.id = m.id RETURNING * INTO m;
    FOR v_rel IN SELECT c.rel FROM etlify._capturing_tables(m.id) c LOOP
        PERFORM etlify._subscriber_capture_on(m, v_ser, v_rel, m.subscriber);
    END LOOP;
END
$$;

-- The tables that carry a mapping's capture triggers now.
CREATE FUNCTION etlify._capturing_tables(p_mapping int) RETURNS TABLE (rel regclass)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.tgrelid::regclass FROM pg_trigger t WHERE t.tgname = 'etlify_capture_' || p_mapping || '_ins';
$$;

CREATE FUNCTION etlify._drop_capture(p_mapping etlify.mappings) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rel regclass;
BEGIN
    FOR v_rel IN SELECT t.rel FROM etlify._capturing_tables(p_mapping.id) t LOOP
        PERFORM etlify._drop_capture_on(p_mapping.id, v_rel);
    END LOOP;
END
$$;

CREATE FUNCTION etlify._drop_capture_on(p_mapping int, p_rel regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT * FROM etlify._capture_events() UNION ALL SELECT '_row', NULL, NULL LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'etlify_capture_' || p_mapping || e.suffix, p_rel);
    END LOOP;
END
$$;

-- "Some rows of this mapping's source may be gone, which ones is not known": what
-- a TRUNCATE records, so that the drain re-checks every record (etlify._absorb).
CREATE FUNCTION etlify._all_dirty(p_mapping int) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO etlify.changes (mapping_id, keys, truncated, seq)
    VALUES (p_mapping, '{}', true, nextval('etlify.change_seq'));
$$;

-- How a statement names a source so that it reads that table's rows alone:
-- ONLY, except for a partitioned table, which is its partitions (inherited
-- children are not part of a source).
CREATE FUNCTION etlify._only(p_rel regclass) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN c.relkind = 'p' THEN '' ELSE 'ONLY' END FROM pg_class c WHERE c.oid = p_rel;
$$;

-- Whether a table has a live column of that name (false for a NULL name).
CREATE FUNCTION etlify._has_col(p_rel regclass, p_col text) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = p_rel AND a.attname = p_col
                      AND a.attnum > 0 AND NOT a.attisdropped);
$$;

-- After CREATE/ALTER TABLE. The key and watched columns of a mapping stay (see
-- below). Partitions come and go under a partitioned source: one created or attached gets
-- the capture triggers, and its rows are dirty (they joined the source); one
-- detached loses them, and the mapping's records are re-checked (its rows left).
-- SECURITY DEFINER: the role running the DDL has no rights on etlify's tables.
CREATE FUNCTION etlify._on_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET DateStyle = 'ISO, YMD' SET TimeZone = 'UTC' SET IntervalStyle = 'postgres' SET extra_float_digits = 1
AS $$
DECLARE
    m     etlify.mappings;
    v_ser regprocedure;
    v_rel regclass;
    v_col text;
    v_dep record;
BEGIN
    -- A mapping names its key and watched columns (the capture reads them by name):
    -- renaming or dropping one is refused here, rather than failing every write later.
    FOR m IN SELECT mm.* FROM etlify.mappings mm
              WHERE mm.source IN (SELECT d.objid FROM pg_event_trigger_ddl_commands() d
                                   WHERE d.classid = 'pg_class'::regclass) LOOP
        FOREACH v_col IN ARRAY ARRAY[m.key_column::text] || coalesce(m.watch, '{}') LOOP
            IF NOT etlify._has_col(m.source, v_col) THEN
                PERFORM etlify._raise('2BP01', format('etlify: column "%s" of %s is the key or a watched column of its mapping to CRM "%s"',
                    v_col, m.source, m.crm),
                    'Call etlify.unsync_table() first, and etlify.sync_table() again after the change.');
            END IF;
        END LOOP;
    END LOOP;

    -- The same for the columns that tie a dependency's rows to their records.
    FOR v_dep IN
        SELECT x.rel, x.col, mm.source, mm.crm
          FROM etlify.members mb JOIN etlify.mappings mm ON mm.id = mb.mapping_id
         CROSS JOIN LATERAL (
               SELECT mb.member AS rel, c AS col
                 FROM unnest(ARRAY[CASE WHEN mb.role = 'member' THEN mb.member_col END,
                                   CASE WHEN mb.role = 'link' THEN mb.link_source_col END]::text[]
                             || coalesce(mb.watch, '{}')) AS c
               UNION ALL SELECT mm.source, mb.source_col
               UNION ALL SELECT mb.link, mb.link_member_col WHERE mb.role = 'member'
               UNION ALL SELECT mb.link, mb.link_source_col WHERE mb.role = 'member') x
         WHERE x.col IS NOT NULL
           AND x.rel IN (SELECT d.objid FROM pg_event_trigger_ddl_commands() d
                          WHERE d.classid = 'pg_class'::regclass)
        UNION ALL
        -- a sync dependency's reference
        SELECT mm.source, n.source_col::text, mm.source, mm.crm
          FROM etlify.needs n JOIN etlify.mappings mm ON mm.id = n.mapping_id
         WHERE mm.source IN (SELECT d.objid FROM pg_event_trigger_ddl_commands() d
                              WHERE d.classid = 'pg_class'::regclass)
    LOOP
        IF NOT etlify._has_col(v_dep.rel, v_dep.col) THEN
            PERFORM etlify._raise('2BP01', format('etlify: column "%s" of %s ties it to the records of %s (CRM "%s") as a dependency',
                                                  v_dep.col, v_dep.rel, v_dep.source, v_dep.crm),
                'Call etlify.unsync_table() first, and etlify.sync_table() again after the change.');
        END IF;
    END LOOP;

    FOR m IN SELECT mm.* FROM etlify.mappings mm JOIN pg_class c ON c.oid = mm.source
              WHERE c.relkind = 'p' ORDER BY mm.id LOOP
        v_ser := etlify._serializer(m);
        CONTINUE WHEN v_ser IS NULL;
        FOR v_rel IN SELECT t.rel FROM etlify._capture_tables(m.source) t
                     EXCEPT SELECT c.rel FROM etlify._capturing_tables(m.id) c LOOP
            PERFORM etlify._install_capture_on(m, v_ser, v_rel);
            IF (SELECT c.relkind FROM pg_class c WHERE c.oid = v_rel) = 'r' THEN
                EXECUTE format(
                    'INSERT INTO etlify.queue AS q (mapping_id, key, change_seq) '
                    'SELECT %s, t.%I::text, (SELECT nextval(''etlify.change_seq'')) FROM ONLY %s t ORDER BY 2 '
                    'ON CONFLICT (mapping_id, key) DO UPDATE SET change_seq = EXCLUDED.change_seq',
                    m.id, m.key_column, v_rel);
                PERFORM etlify._wake();
            END IF;
        END LOOP;
        FOR v_rel IN SELECT c.rel FROM etlify._capturing_tables(m.id) c
                     EXCEPT SELECT t.rel FROM etlify._capture_tables(m.source) t LOOP
            PERFORM etlify._drop_capture_on(m.id, v_rel);
            PERFORM etlify._all_dirty(m.id);
            PERFORM etlify._wake();
        END LOOP;
    END LOOP;
    PERFORM etlify._follow_member_partitions();
END
$$;

CREATE EVENT TRIGGER etlify_ddl_end ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
    EXECUTE FUNCTION etlify._on_ddl_end();

-- The serializer a mapping's triggers depend on (NULL if they are gone).
CREATE FUNCTION etlify._serializer(p_mapping etlify.mappings) RETURNS regprocedure
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT d.refobjid::regprocedure
      FROM pg_trigger t
      JOIN pg_depend d ON d.classid = 'pg_trigger'::regclass AND d.objid = t.oid
                      AND d.refclassid = 'pg_proc'::regclass AND d.deptype = 'n'
     WHERE t.tgrelid = p_mapping.source AND t.tgname = 'etlify_capture_' || p_mapping.id || '_trunc'
       AND d.refobjid <> 'etlify._capture'::regproc
     LIMIT 1;
$$;

-- The statement that loads and serializes a batch of keys ($1, text[]), one row
-- per key in the order given: key, present (the row exists), included (sync_if
-- holds), payload, and its size; a payload over $2 bytes is not returned, so that
-- a serializer that returns megabytes per row cannot fill the worker's memory.
-- Built from the catalog as it is now, so renames are followed. It runs as the
-- mapping's owner with the mapping's search_path, so every name of ours in it is
-- qualified; sync_if is the user's own expression (the newline ends a trailing
-- "--" comment in it). The serializer sits in the outer target list of the inner
-- query so that it runs once per joined row only: inside a lateral subquery the
-- planner may flatten it into a scan that serializes the whole table before the
-- join. OFFSET 0 keeps the inner query apart, so it runs once per row.
CREATE FUNCTION etlify._fetch_sql(p_mapping etlify.mappings, p_serializer regprocedure) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format(
        'SELECT f.key, f.present, f.included, '
        'CASE WHEN pg_catalog.pg_column_size(f.payload) OPERATOR(pg_catalog.<=) $2::pg_catalog.int8 '
        'THEN f.payload END AS payload, pg_catalog.pg_column_size(f.payload)::pg_catalog.int8 AS size FROM ('
        'SELECT k._etlify_key AS key, k._etlify_ord AS ord, t.%1$I IS NOT NULL AS present, '
        't.%1$I IS NOT NULL AND coalesce((%2$s' || E'\n' || '), false) AS included, '
        'CASE WHEN t.%1$I IS NOT NULL AND (%2$s' || E'\n' || ') THEN %3$I.%4$I(t) END AS payload '
        'FROM pg_catalog.unnest($1::pg_catalog.text[]) WITH ORDINALITY AS k(_etlify_key, _etlify_ord) '
        'LEFT JOIN %5$s %6$s t ON t.%1$I OPERATOR(pg_catalog.=) k._etlify_key::%7$s '
        'OFFSET 0) f ORDER BY f.ord',
        p_mapping.key_column, coalesce(p_mapping.sync_if, 'true'), n.nspname, p.proname,
        etlify._only(p_mapping.source), p_mapping.source, p_mapping.key_type)
      FROM pg_proc p
      JOIN pg_namespace n ON n.oid = p.pronamespace
      JOIN pg_class c ON c.oid = p_mapping.source
     WHERE p.oid = p_serializer;
$$;

-- The statement sync_stale reads a whole source with (src/stale.rs): every row's
-- key, whether sync_if holds, and its payload (NULL past $1 bytes), in no order.
CREATE FUNCTION etlify._scan_sql(p_mapping etlify.mappings, p_serializer regprocedure) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format(
        'SELECT f.key, f.included, '
        'CASE WHEN pg_catalog.pg_column_size(f.payload) OPERATOR(pg_catalog.<=) $1::pg_catalog.int8 '
        'THEN f.payload END AS payload, pg_catalog.pg_column_size(f.payload)::pg_catalog.int8 AS size FROM ('
        'SELECT t.%1$I::pg_catalog.text AS key, coalesce((%2$s' || E'\n' || '), false) AS included, '
        'CASE WHEN (%2$s' || E'\n' || ') THEN %3$I.%4$I(t) END AS payload '
        'FROM %5$s %6$s t OFFSET 0) f',
        p_mapping.key_column, coalesce(p_mapping.sync_if, 'true'), n.nspname, p.proname,
        etlify._only(p_mapping.source), p_mapping.source)
      FROM pg_proc p
      JOIN pg_namespace n ON n.oid = p.pronamespace
      JOIN pg_class c ON c.oid = p_mapping.source
     WHERE p.oid = p_serializer;
$$;

-- sync_table's SQL half, as the extension's owner: checks that need catalog access,
-- then the mapping row and its triggers. p_search_path is the caller's.
CREATE FUNCTION etlify._declare_mapping(
    p_crm text, p_source regclass, p_object_type text, p_id_property text, p_serializer regproc,
    p_watch text[], p_sync_if text, p_dependencies jsonb, p_sync_dependencies jsonb,
    p_backfill boolean, p_search_path text
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- backfilled keys are written in canonical form (see etlify._canonical_key)
SET DateStyle = 'ISO, YMD' SET TimeZone = 'UTC' SET IntervalStyle = 'postgres' SET extra_float_digits = 1
AS $$
DECLARE
    v_caller   oid := etlify._caller();
    v_relkind  "char";
    v_rowtype  oid;
    v_pk       int2[];
    v_key_col  name;
    v_key_type regtype;
    v_proc     pg_proc;
    v_col      text;
    v_mapping  etlify.mappings;
BEGIN
    IF p_crm IS NULL OR NOT EXISTS (SELECT 1 FROM etlify.crms c WHERE c.name = p_crm) THEN
        PERFORM etlify._raise('42704', format('etlify.sync_table: unknown CRM "%s"', p_crm),
            'Register it first with etlify.register_crm().');
    END IF;
    IF p_source IS NULL THEN
        PERFORM etlify._raise('22004', 'etlify.sync_table: source must not be NULL');
    END IF;
    SELECT c.relkind, c.reltype INTO v_relkind, v_rowtype FROM pg_class c WHERE c.oid = p_source;
    IF v_relkind NOT IN ('r', 'p') THEN
        PERFORM etlify._raise('42809', format('etlify.sync_table: source %s is not a table', p_source));
    END IF;
    PERFORM etlify._require_owner(p_source, 'etlify.sync_table');
    IF coalesce(btrim(p_object_type), '') = '' THEN
        PERFORM etlify._raise('22023', format('etlify.sync_table: object_type must not be empty (source %s)', p_source));
    END IF;
    IF coalesce(btrim(p_id_property), '') = '' THEN
        PERFORM etlify._raise('22023', format('etlify.sync_table: id_property must not be empty (source %s)', p_source));
    END IF;
    IF EXISTS (SELECT 1 FROM etlify.mappings m WHERE m.crm = p_crm AND m.source = p_source) THEN
        PERFORM etlify._raise('42710', format('etlify.sync_table: %s is already synced to CRM "%s"', p_source, p_crm),
            'Call etlify.unsync_table() first to change the declaration.');
    END IF;

    -- primary key: one column (its text form is the record's key)
    -- (int2vector casts to a 0-based array: go through text for a 1-based one)
    SELECT string_to_array(i.indkey::text, ' ')::int2[] INTO v_pk FROM pg_index i WHERE i.indrelid = p_source AND i.indisprimary;
    IF v_pk IS NULL THEN
        PERFORM etlify._raise('42P16', format('etlify.sync_table: table %s has no primary key', p_source),
            'etlify identifies records by their primary key; add one.');
    END IF;
    IF cardinality(v_pk) <> 1 THEN
        PERFORM etlify._raise('0A000', format('etlify.sync_table: table %s has a composite primary key, which is not supported yet', p_source));
    END IF;
    SELECT a.attname, a.atttypid::regtype INTO v_key_col, v_key_type
      FROM pg_attribute a WHERE a.attrelid = p_source AND a.attnum = v_pk[1];

    -- serializer: function(source_row_type) RETURNS jsonb, that the caller may run
    IF p_serializer IS NULL THEN
        PERFORM etlify._raise('22004', 'etlify.sync_table: serializer must not be NULL');
    END IF;
    SELECT * INTO v_proc FROM pg_proc p WHERE p.oid = p_serializer;
    IF v_proc.pronargs <> 1 OR v_proc.proargtypes[0] <> v_rowtype
       OR v_proc.prorettype <> 'jsonb'::regtype OR v_proc.proretset OR v_proc.prokind <> 'f' THEN
        PERFORM etlify._raise('42P13', format('etlify.sync_table: serializer %s must be a function(%s) RETURNS jsonb, but it is %s(%s) RETURNS %s',
            p_serializer, p_source, p_serializer, pg_get_function_identity_arguments(p_serializer),
            CASE WHEN v_proc.proretset THEN 'SETOF ' ELSE '' END || v_proc.prorettype::regtype::text));
    END IF;
    IF NOT has_function_privilege(v_caller, p_serializer, 'EXECUTE') THEN
        PERFORM etlify._raise('42501', format('etlify.sync_table: permission denied for function %s', p_serializer));
    END IF;

    -- watched columns
    IF p_watch IS NOT NULL THEN
        IF cardinality(p_watch) = 0 THEN
            PERFORM etlify._raise('22023', format('etlify.sync_table: watch must not be empty (use NULL to watch every column of %s)', p_source));
        END IF;
        FOREACH v_col IN ARRAY p_watch LOOP
            IF NOT etlify._has_col(p_source, v_col) THEN  -- a NULL name included
                PERFORM etlify._raise('42703', format('etlify.sync_table: watched column "%s" does not exist in %s', v_col, p_source));
            END IF;
        END LOOP;
    END IF;

    IF p_sync_if IS NOT NULL AND btrim(p_sync_if) = '' THEN
        PERFORM etlify._raise('22023', format('etlify.sync_table: sync_if must not be empty (use NULL to sync every row of %s)', p_source));
    END IF;

    INSERT INTO etlify.mappings (crm, source, object_type, id_property, serializer, watch, sync_if,
                                 dependencies, sync_dependencies, owner, search_path, key_column, key_type)
    VALUES (p_crm, p_source, p_object_type, p_id_property, p_serializer::regprocedure::text, p_watch, p_sync_if,
            p_dependencies, p_sync_dependencies, v_caller::regrole, coalesce(p_search_path, ''), v_key_col, v_key_type)
    RETURNING * INTO v_mapping;
    PERFORM etlify._declare_needs(v_mapping, p_sync_dependencies, v_caller);

    -- sync_if and the serializer must plan as the statement the drain runs, as the
    -- caller would run it (never as us: both are the caller's SQL)
    BEGIN
        PERFORM etlify._check_fetch(v_caller, v_mapping.search_path,
                                    etlify._fetch_sql(v_mapping, p_serializer::regprocedure));
    EXCEPTION WHEN OTHERS THEN
        IF p_sync_if IS NOT NULL THEN
            PERFORM etlify._raise('22023', format('etlify.sync_table: sync_if "%s" is not a valid predicate over %s: %s', p_sync_if, p_source, SQLERRM));
        END IF;
        PERFORM etlify._raise('22023', format('etlify.sync_table: cannot load rows of %s through serializer %s: %s', p_source, p_serializer, SQLERRM));
    END;

    PERFORM etlify._install_capture(v_mapping, p_serializer::regprocedure);
    PERFORM etlify._declare_members(v_mapping, p_dependencies, v_caller);

    IF coalesce(p_backfill, true) THEN
        EXECUTE format(
            'INSERT INTO etlify.queue (mapping_id, key, change_seq) '
            'SELECT %s, t.%I::text, (SELECT nextval(''etlify.change_seq'')) FROM %s %s t',
            v_mapping.id, v_key_col, etlify._only(p_source), p_source);
        PERFORM etlify._wake();
    END IF;
END
$$;

-- No SET search_path and SECURITY INVOKER: it only reads the caller's search_path
-- (recorded with the mapping) and hands over to etlify._declare_mapping.
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
LANGUAGE sql
AS $$
    SELECT etlify._declare_mapping($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                                   pg_catalog.current_setting('search_path'));
$$;

-- Removes a mapping. Its queue rows and sync state are deleted later by the drain
-- (etlify._collect_forgotten): the mapping row is all the caller's DDL touches.
CREATE FUNCTION etlify._forget_mapping(p_mapping int) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM etlify.mappings WHERE id = p_mapping;
    DELETE FROM etlify.needs WHERE mapping_id = p_mapping;
    INSERT INTO etlify.forgotten (mapping_id) VALUES (p_mapping) ON CONFLICT DO NOTHING;
$$;

CREATE FUNCTION etlify.unsync_table(crm text, source regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_mapping etlify.mappings;
BEGIN
    SELECT * INTO v_mapping FROM etlify.mappings m WHERE m.crm = $1 AND m.source = $2;
    IF NOT FOUND THEN
        PERFORM etlify._raise('42704', format('etlify.unsync_table: %s is not synced to CRM "%s"', $2, $1));
    END IF;
    PERFORM etlify._require_owner($2, 'etlify.unsync_table');
    -- forgotten first: dropping its triggers then reads as nothing to re-check
    PERFORM etlify._forget_mapping(v_mapping.id);
    PERFORM etlify._drop_capture(v_mapping);
    PERFORM etlify._drop_members(v_mapping.id);
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
            PERFORM etlify._raise('42704', format('etlify: unknown CRM "%s"', p_crm));
        END IF;
        PERFORM etlify._raise('42704', format('etlify: %s is not synced to CRM "%s"', p_source, p_crm),
            'Declare it with etlify.sync_table().');
    END IF;
    RETURN v_mapping;
END
$$;

-- A dropped source table takes its mappings (and their state) with it, so that the
-- worker never works on a table that is gone. A dropped partition of a source took
-- its rows with it: the mapping's records are re-checked.
-- (SECURITY DEFINER: whoever drops the table cannot write etlify's tables.)
CREATE FUNCTION etlify._on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_mapping etlify.mappings;
    v_id      int;
    v_member  record;
BEGIN
    FOR v_mapping IN
        SELECT m.* FROM etlify.mappings m
          JOIN pg_event_trigger_dropped_objects() d ON d.objid = m.source::oid
         WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0
    LOOP
        PERFORM etlify._forget_mapping(v_mapping.id);
    END LOOP;
    -- A table that feeds other mappings' records (a dependency), or that their
    -- records wait for (a sync dependency), stays while they name it. Tables
    -- dropped with their mapping's source go.
    FOR v_member IN
        SELECT DISTINCT d.object_identity AS member, m.source::text AS source, m.crm, x.how
          FROM (SELECT mb.mapping_id, mb.member AS rel, 'feeds the records of %2$s (CRM "%3$s") as a dependency' AS how
                  FROM etlify.members mb
                UNION ALL
                SELECT n.mapping_id, n.target, 'holds records that the records of %2$s (CRM "%3$s") wait for (a sync dependency)'
                  FROM etlify.needs n) x
          JOIN etlify.mappings m ON m.id = x.mapping_id
          JOIN pg_event_trigger_dropped_objects() d ON d.objid = x.rel::oid
         WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0
    LOOP
        PERFORM etlify._raise('2BP01', format('etlify: table %1$s ' || v_member.how,
                                              v_member.member, v_member.source, v_member.crm),
            'Declare that mapping again without it first: etlify.unsync_table(), then etlify.sync_table().');
    END LOOP;
    FOR v_id IN SELECT DISTINCT mb.mapping_id FROM etlify.members mb
                 WHERE NOT EXISTS (SELECT 1 FROM etlify.mappings m WHERE m.id = mb.mapping_id) LOOP
        PERFORM etlify._drop_members(v_id);
    END LOOP;
    FOR v_id IN
        SELECT DISTINCT (regexp_match(d.object_identity, '^etlify_capture_(\d+)_ins on '))[1]::int
          FROM pg_event_trigger_dropped_objects() d
         WHERE d.object_type = 'trigger' AND d.object_identity ~ '^etlify_capture_\d+_ins on '
    LOOP
        IF EXISTS (SELECT 1 FROM etlify.mappings m WHERE m.id = v_id) THEN
            PERFORM etlify._all_dirty(v_id);
            PERFORM etlify._wake();
        END IF;
    END LOOP;
END
$$;

CREATE EVENT TRIGGER etlify_sql_drop ON sql_drop EXECUTE FUNCTION etlify._on_sql_drop();
