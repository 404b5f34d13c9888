-- Dependency order: sync_dependencies (see etlify.needs in bootstrap.sql).
--
-- A record is sent only once every record it references has a CRM id. The drain
-- loads the references of the claimed rows (etlify._refs_sql), asks etlify._await
-- which of them block, holds those records back as `buffered`, and releases them
-- (etlify._release) when the record they wait for syncs. Mappings are drained referenced first (etlify._work's order), so that a
-- record and the one it needs, both pending, go out in the same round.

-- Declares a mapping's sync dependencies: one etlify.needs row per element, or an
-- error naming the element, before anything is written.
CREATE FUNCTION etlify._declare_needs(p_mapping etlify.mappings, p_needs jsonb, p_caller oid) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_pos    int := 0;
    e        jsonb;
    v_what   text;
    v_target regclass;
    v_crm    text;
    v_col    name;
    v_pk     name;
    v_n      int;
    v_cands  text;
    v_assoc  jsonb;
    v_cycle  text;
BEGIN
    IF p_needs IS NULL THEN
        RETURN;
    END IF;
    FOR v_pos, e, v_what IN
        SELECT * FROM etlify._elements(p_needs, 'sync_dependencies', 'sync dependency',
                                       '{table, source_column, crm, associate}')
    LOOP

        v_target := etlify._resolve_table(e ->> 'table', p_mapping.search_path);
        IF v_target IS NULL OR (SELECT c.relkind FROM pg_class c WHERE c.oid = v_target) NOT IN ('r', 'p') THEN
            PERFORM etlify._raise('42P01', format('%s: table "%s" does not exist', v_what, e ->> 'table'));
        END IF;
        -- whether its records are in the CRM shows through the dependents' state
        IF NOT has_table_privilege(p_caller, v_target, 'SELECT') THEN
            PERFORM etlify._raise('42501', format('%s: permission denied for table %s (SELECT is needed)', v_what, v_target));
        END IF;
        v_pk := etlify._pk_col(v_target);
        IF v_pk IS NULL THEN
            PERFORM etlify._raise('42P16', format('%s: %s has no single-column primary key to reference', v_what, v_target));
        END IF;

        v_crm := coalesce(e ->> 'crm', p_mapping.crm);
        IF e ? 'crm' AND jsonb_typeof(e -> 'crm') <> 'string' THEN
            PERFORM etlify._raise('22023', format('%s: crm must be the name of a CRM', v_what));
        END IF;
        IF NOT EXISTS (SELECT 1 FROM etlify.crms c WHERE c.name = v_crm) THEN
            PERFORM etlify._raise('42704', format('%s: unknown CRM "%s"', v_what, v_crm));
        END IF;

        IF e ? 'source_column' THEN
            IF jsonb_typeof(e -> 'source_column') <> 'string' THEN
                PERFORM etlify._raise('22023', format('%s: source_column must be a column name', v_what));
            END IF;
            v_col := e ->> 'source_column';
            IF NOT etlify._has_col(p_mapping.source, v_col) THEN
                PERFORM etlify._raise('42703', format('%s: source column "%s" does not exist in %s',
                                                      v_what, v_col, p_mapping.source));
            END IF;
        ELSE
            SELECT count(*), string_agg(f.conname || ' (' || f.from_col || ')', ', '), min(f.from_col)
              INTO v_n, v_cands, v_col
              FROM etlify._single_fks(p_mapping.source, v_target) f;
            IF v_n <> 1 THEN
                PERFORM etlify._raise('42P10', format('%s: %s needs exactly one single-column foreign key to %s, it has %s%s',
                    v_what, p_mapping.source, v_target, v_n, coalesce(': ' || v_cands, '')),
                    'Name the column that holds the referenced key with "source_column".');
            END IF;
        END IF;
        -- the reference is compared with the target's keys as text: both columns
        -- must spell a value alike
        IF NOT etlify._same_spelling(etlify._col_type(p_mapping.source, v_col), etlify._col_type(v_target, v_pk)) THEN
            PERFORM etlify._raise('42804', format('%s: column "%s" of %s is of type %s, the key of %s is of type %s',
                v_what, v_col, p_mapping.source, etlify._col_type(p_mapping.source, v_col)::regtype,
                v_target, etlify._col_type(v_target, v_pk)::regtype));
        END IF;

        v_assoc := NULL;
        IF e ? 'associate' THEN
            v_assoc := e -> 'associate';
            IF v_assoc = 'false'::jsonb OR v_assoc = 'null'::jsonb THEN
                v_assoc := NULL;
            ELSIF v_assoc = 'true'::jsonb THEN
                v_assoc := '{"default": true}';
            ELSIF jsonb_typeof(v_assoc) <> 'object'
                  OR (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(v_assoc) AS k) <> '{category,type_id}'
                  OR NOT (v_assoc ->> 'category') IN ('HUBSPOT_DEFINED', 'USER_DEFINED', 'INTEGRATOR_DEFINED')
                  OR jsonb_typeof(v_assoc -> 'type_id') <> 'number'
                  OR (v_assoc ->> 'type_id') !~ '^[1-9][0-9]{0,17}$' THEN
                PERFORM etlify._raise('22023', format('%s: associate is true (the default association) or '
                    '{"category": "HUBSPOT_DEFINED" | "USER_DEFINED" | "INTEGRATOR_DEFINED", "type_id": a positive integer}',
                    v_what));
            END IF;
            IF v_assoc IS NOT NULL AND v_crm <> p_mapping.crm THEN
                PERFORM etlify._raise('22023', format('%s: an association links two objects of one CRM; %s is referenced in CRM "%s"',
                                                      v_what, v_target, v_crm));
            END IF;
        END IF;

        INSERT INTO etlify.needs (mapping_id, position, crm, target, source_col, associate)
        VALUES (p_mapping.id, v_pos, v_crm, v_target, v_col, v_assoc);
    END LOOP;

    -- a cycle: following the needs from this mapping leads back to it
    WITH RECURSIVE edge AS (
        SELECT m.crm AS from_crm, m.source AS from_t, n.crm AS to_crm, n.target AS to_t
          FROM etlify.needs n JOIN etlify.mappings m ON m.id = n.mapping_id
    ), walk (crm, t, path) AS (
        SELECT p_mapping.crm, p_mapping.source, ARRAY[p_mapping.source::text]
        UNION ALL
        SELECT e.to_crm, e.to_t, w.path || e.to_t::text
          FROM walk w JOIN edge e ON e.from_crm = w.crm AND e.from_t = w.t
    ) CYCLE crm, t SET is_cycle USING seen
    SELECT array_to_string(w.path, ' → ') INTO v_cycle FROM walk w
     WHERE cardinality(w.path) > 1 AND w.crm = p_mapping.crm AND w.t = p_mapping.source
     LIMIT 1;
    IF v_cycle IS NOT NULL THEN
        PERFORM etlify._raise('42P19', format('etlify.sync_table: sync_dependencies of %s make a cycle: %s',
                                              p_mapping.source, v_cycle),
            'A record cannot wait for a record that waits for it; drop one of these dependencies.');
    END IF;
END
$$;

-- The statement that loads the references of a batch of keys ($1, text[]): one
-- row per key in the order given, with the keys it references, one per sync
-- dependency in position order, spelled canonically (NULL: no reference, or no
-- row). Run like the fetch statement (etlify._fetch_sql), as the mapping's owner,
-- but under the settings keys are spelled under (src/keys.rs), and apart from
-- it: a record waits whether or not its serializer can run yet.
-- NULL when the mapping has no sync dependencies.
CREATE FUNCTION etlify._refs_sql(p_mapping etlify.mappings) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format(
        'SELECT k._etlify_key AS key, ARRAY[%4$s] AS refs '
        'FROM pg_catalog.unnest($1::pg_catalog.text[]) WITH ORDINALITY AS k(_etlify_key, _etlify_ord) '
        'LEFT JOIN %2$s %3$s t ON t.%1$I OPERATOR(pg_catalog.=) k._etlify_key::%5$s '
        'ORDER BY k._etlify_ord',
        p_mapping.key_column, etlify._only(p_mapping.source), p_mapping.source,
        string_agg(format('t.%I::pg_catalog.text', n.source_col), ', ' ORDER BY n.position),
        p_mapping.key_type)
      FROM etlify.needs n WHERE n.mapping_id = p_mapping.id
    HAVING count(*) > 0;
$$;

-- What the records of a claim wait for, given their references (parallel arrays:
-- key, position, referenced key, NULL for no reference: every key is looked up
-- for the associations etlify made before). One row per (key, position) with a
-- reference or such an association:
--   blocked   the referenced record has no CRM id (reason says why, naming it)
--   to_type   the referenced record's object type, to_id its CRM id
--   associate the association to make (etlify.needs), held_* the one made before
-- STABLE: it reads under the claim's snapshot, the one the payloads were read under
-- (a record serialized without its reference's id is never sent).
CREATE FUNCTION etlify._await(p_mapping int, p_keys text[], p_positions int[], p_refs text[])
RETURNS TABLE (key text, "position" int, ref text, blocked boolean, reason text,
               to_type text, to_id text, associate jsonb, held_from text, held_to text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH wanted AS (
        SELECT r.key, r.pos, r.ref FROM unnest(p_keys, p_positions, p_refs) AS r(key, pos, ref)
         WHERE r.ref IS NOT NULL
    ), held AS (
        SELECT l.key, l.position AS pos, l.from_id, l.to_id FROM etlify.links l
         WHERE l.mapping_id = p_mapping AND l.key = ANY (p_keys)
    ), pairs AS (
        SELECT coalesce(w.key, h.key) AS key, coalesce(w.pos, h.pos) AS pos, w.ref, h.from_id, h.to_id
          FROM wanted w FULL JOIN held h ON h.key = w.key AND h.pos = w.pos
    )
    SELECT p.key, p.pos, p.ref,
           p.ref IS NOT NULL AND rec.crm_id IS NULL,
           CASE WHEN p.ref IS NULL OR rec.crm_id IS NOT NULL THEN NULL
                ELSE format('waits for %s %s%s: %s', etlify._name_in_path(n.target, m.search_path), p.ref,
                            CASE WHEN n.crm <> m.crm THEN format(' in CRM "%s"', n.crm) ELSE '' END,
                            CASE WHEN tm.id IS NULL THEN format('%s is not synced to CRM "%s"',
                                                                etlify._name_in_path(n.target, m.search_path), n.crm)
                                 WHEN rec.state = 'parked' THEN 'it is parked (' || coalesce(rec.last_error, 'no error') || ')'
                                 WHEN rec.state = 'skipped' THEN 'it is skipped by sync_if'
                                 WHEN rec.state = 'deleted' THEN 'its row does not exist'
                                 WHEN rec.state = 'buffered' THEN 'it is buffered (' || coalesce(rec.last_error, '') || ')'
                                 WHEN rec.state = 'failed' THEN 'it failed (' || coalesce(rec.last_error, 'no error') || ')'
                                 ELSE 'it is not in the CRM yet' END)
           END,
           tm.object_type, rec.crm_id, n.associate, p.from_id, p.to_id
      FROM pairs p
      JOIN etlify.mappings m ON m.id = p_mapping
      JOIN etlify.needs n ON n.mapping_id = p_mapping AND n.position = p.pos
      LEFT JOIN etlify.mappings tm ON tm.crm = n.crm AND tm.source = n.target
      LEFT JOIN LATERAL (SELECT r.state, r.crm_id, r.last_error FROM etlify.records r
                          WHERE r.mapping_id = tm.id AND r.key = p.ref LIMIT 1) rec ON true
     ORDER BY p.key, p.pos;
$$;

-- Marks dirty the referenced records that buffered records wait for, unless they
-- are pending already, or cannot sync by being sent again (parked: reset_errors;
-- skipped or gone: a change of their row).
CREATE FUNCTION etlify._enqueue_awaited(p_mapping int, p_positions int[], p_refs text[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT tm.id AS mapping_id, array_agg(DISTINCT r.ref) AS keys
          FROM unnest(p_positions, p_refs) AS r(pos, ref)
          JOIN etlify.needs n ON n.mapping_id = p_mapping AND n.position = r.pos
          JOIN etlify.mappings tm ON tm.crm = n.crm AND tm.source = n.target
         WHERE NOT EXISTS (SELECT 1 FROM etlify.queue q WHERE q.mapping_id = tm.id AND q.key = r.ref)
           AND NOT EXISTS (SELECT 1 FROM etlify.records rec
                            WHERE rec.mapping_id = tm.id AND rec.key = r.ref
                              AND rec.state IN ('parked', 'skipped', 'deleted', 'synced'))
         GROUP BY tm.id
    LOOP
        PERFORM etlify._dirty(t.mapping_id, t.keys, now());
    END LOOP;
END
$$;

-- Releases the buffered records that wait for records of mapping p_mapping that
-- just synced (p_keys): they are dirty again, and go out in this drain round if
-- their mapping comes later in it (etlify._work). Called for every batch that
-- synced something: costs one lookup in etlify.needs when no one can wait.
CREATE FUNCTION etlify._release(p_mapping int, p_keys text[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    n record;
    v_keys text[];
BEGIN
    FOR n IN
        SELECT w.mapping_id, w.position
          FROM etlify.mappings tm
          JOIN etlify.needs w ON w.crm = tm.crm AND w.target = tm.source
         WHERE tm.id = p_mapping
    LOOP
        -- the partial index on waits_key: one probe per synced key
        v_keys := ARRAY(SELECT rec.key FROM etlify.records rec
                         WHERE rec.state = 'buffered' AND rec.waits_key = ANY (p_keys)
                           AND rec.mapping_id = n.mapping_id AND rec.waits_position = n.position);
        IF cardinality(v_keys) > 0 THEN
            PERFORM etlify._dirty(n.mapping_id, v_keys, now());
        END IF;
    END LOOP;
END
$$;

-- The sweep at the start of every drain: buffered records whose wait is over
-- (the record they wait for got a CRM id by a path that did not release them,
-- e.g. while they were being buffered), or whose dependency was declared away.
CREATE FUNCTION etlify._release_buffered() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d record;
BEGIN
    FOR d IN
        SELECT rec.mapping_id, array_agg(rec.key) AS keys
          FROM etlify.records rec
          LEFT JOIN etlify.needs n ON n.mapping_id = rec.mapping_id AND n.position = rec.waits_position
          LEFT JOIN etlify.mappings tm ON tm.crm = n.crm AND tm.source = n.target
          LEFT JOIN etlify.records ref ON ref.mapping_id = tm.id AND ref.key = rec.waits_key
         WHERE rec.state = 'buffered'
           AND (n.mapping_id IS NULL OR ref.crm_id IS NOT NULL)
           AND NOT EXISTS (SELECT 1 FROM etlify.queue q WHERE q.mapping_id = rec.mapping_id AND q.key = rec.key)
           AND EXISTS (SELECT 1 FROM etlify.mappings m WHERE m.id = rec.mapping_id)
         GROUP BY rec.mapping_id
    LOOP
        PERFORM etlify._dirty(d.mapping_id, d.keys, now());
    END LOOP;
END
$$;

-- The associations a batch made or removed: {key, position, from_id, to_id}
-- entries, to_id NULL for a removed one.
CREATE FUNCTION etlify._linked(p_mapping int, p_links jsonb) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM etlify.links l
     USING jsonb_to_recordset(p_links) AS x(key text, "position" int, from_id text, to_id text)
     WHERE l.mapping_id = p_mapping AND l.key = x.key AND l.position = x.position AND x.to_id IS NULL;
    INSERT INTO etlify.links AS l (mapping_id, key, position, from_id, to_id)
    SELECT p_mapping, x.key, x.position, x.from_id, x.to_id
      FROM jsonb_to_recordset(p_links) AS x(key text, "position" int, from_id text, to_id text)
     WHERE x.to_id IS NOT NULL
    ON CONFLICT (mapping_id, key, position) DO UPDATE SET from_id = EXCLUDED.from_id, to_id = EXCLUDED.to_id;
$$;

-- The order the drain visits mappings in: a mapping after every mapping it needs
-- records of (its depth: the longest chain of sync dependencies below it).
CREATE FUNCTION etlify._depths() RETURNS TABLE (mapping_id int, depth int)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH RECURSIVE edge AS (
        SELECT DISTINCT n.mapping_id AS from_id, tm.id AS to_id
          FROM etlify.needs n JOIN etlify.mappings tm ON tm.crm = n.crm AND tm.source = n.target
         WHERE tm.id <> n.mapping_id
    ), walk (id, depth) AS (
        SELECT m.id, 0 FROM etlify.mappings m
        UNION ALL
        -- cycles are refused at declaration; the bound keeps a bug from looping
        SELECT e.from_id, w.depth + 1 FROM walk w JOIN edge e ON e.to_id = w.id WHERE w.depth < 100
    )
    SELECT id, max(depth) FROM walk GROUP BY id;
$$;
