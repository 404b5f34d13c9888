-- Sync groups: other tables whose changes dirty a mapping's records
-- (sync_table's `dependencies`). Each element is resolved once, at declaration,
-- into rows of etlify.members; the members' capture triggers (src/members.rs)
-- run one statement per writing statement, built here from the catalog, that
-- turns the statement's changed rows into the source keys they feed.

-- Single-column foreign keys from table a to table b: (constraint, column of a,
-- column of b).
CREATE FUNCTION etlify._single_fks(p_from regclass, p_to regclass)
RETURNS TABLE (conname name, from_col name, to_col name)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.conname, fa.attname, ta.attname
      FROM pg_constraint c
      JOIN pg_attribute fa ON fa.attrelid = c.conrelid AND fa.attnum = c.conkey[1]
      JOIN pg_attribute ta ON ta.attrelid = c.confrelid AND ta.attnum = c.confkey[1]
     WHERE c.contype = 'f' AND c.conrelid = p_from AND c.confrelid = p_to
       AND cardinality(c.conkey) = 1
     ORDER BY c.conname;
$$;

-- The single-column primary key of a table, if it has one.
CREATE FUNCTION etlify._pk_col(p_rel regclass) RETURNS name
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT a.attname FROM pg_index i
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
     WHERE i.indrelid = p_rel AND i.indisprimary AND i.indnkeyatts = 1;
$$;

-- A table named in a declaration, resolved as the declaring session would
-- (its search_path); NULL if there is none. Our own path is back before anything
-- else runs.
CREATE FUNCTION etlify._resolve_table(p_name text, p_search_path text) RETURNS regclass
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v regclass;
BEGIN
    PERFORM pg_catalog.set_config('search_path', p_search_path, true);
    BEGIN
        v := pg_catalog.to_regclass(p_name);
    EXCEPTION WHEN OTHERS THEN
        v := NULL;  -- not a name at all
    END;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    RETURN v;
END
$$;

-- The statement a member's capture trigger runs for one event (INSERT, UPDATE,
-- DELETE): the keys of the source records that the statement's changed rows feed,
-- as one text[] (canonical spelling: run under the settings of src/keys.rs).
-- p_new and p_old name the statement's new and old rows: the transition tables at
-- write time, an empty SELECT of the member when the declaration is checked.
--   changed  the member rows that matter, old and new versions: every inserted
--            or deleted row, and the updated rows whose watched or referencing
--            columns changed, or that entered or left `where`; then `where`.
CREATE FUNCTION etlify._member_sql(p_mapping int, p_position int, p_role text, p_event text,
                                   p_new text, p_old text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m       etlify.mappings;
    d       etlify.members;
    v_cols  text[];
    v_cmp   text[];
    v_need  text[];
    v_list  text;
    v_where text;
    v_rows  text;
    v_keys  text;
    v_key   text;
    v_only  text;
BEGIN
    SELECT * INTO m FROM etlify.mappings mm WHERE mm.id = p_mapping;
    SELECT * INTO d FROM etlify.members mb
     WHERE mb.mapping_id = p_mapping AND mb.position = p_position AND mb.role = p_role;
    IF m.id IS NULL OR d.mapping_id IS NULL THEN
        RETURN NULL;
    END IF;
    v_cols := ARRAY(SELECT a.attname::text FROM pg_attribute a
                     WHERE a.attrelid = d.member AND a.attnum > 0 AND NOT a.attisdropped
                     ORDER BY a.attnum);
    v_where := CASE WHEN p_role = 'member' AND d.where_sql IS NOT NULL
                    THEN '(' || d.where_sql || E'\n)' END;
    -- the columns `changed` carries: all of them for the user's SQL (where, keys),
    -- else only the one that leads to the source records (less to copy per row)
    v_need := CASE WHEN d.form = 'keys' OR v_where IS NOT NULL THEN v_cols
                   WHEN d.form = 'link' THEN ARRAY[d.link_source_col::text]
                   ELSE ARRAY[d.member_col::text] END;
    v_list := (SELECT string_agg(format('%I', c), ', ') FROM unnest(v_need) AS c);
    -- what counts as a change of an updated row: the watched columns (default all)
    -- and the columns that tie it to its source records
    v_cmp := CASE WHEN p_role = 'member' AND d.watch IS NOT NULL
                  THEN ARRAY(SELECT DISTINCT c FROM unnest(d.watch || ARRAY[d.member_col::text]) AS c
                              WHERE c IS NOT NULL)
                  ELSE v_cols END;

    IF p_event = 'INSERT' THEN
        v_rows := format('SELECT %s FROM %s n', v_list, p_new);
    ELSIF p_event = 'DELETE' THEN
        v_rows := format('SELECT %s FROM %s o', v_list, p_old);
    ELSE
        -- old and new rows pair up by position: Postgres writes both transition
        -- tables row by row, in the same order. An updated row matters when its
        -- compared columns changed (binary comparison, as the source's capture
        -- does, for any type, json too: the function, since an operator between two
        -- ROWs compares field by field, and no operator a search_path could
        -- resolve elsewhere), or when it entered or left `where`.
        v_rows := format(
            'SELECT v.* FROM '
            '(SELECT pg_catalog.row_number() OVER () AS etlify_i, o.* FROM %1$s o) a '
            'JOIN (SELECT pg_catalog.row_number() OVER () AS etlify_i, n.* FROM %2$s n) b '
            '  ON a.etlify_i OPERATOR(pg_catalog.=) b.etlify_i ',
            p_old, p_new);
        IF v_where IS NOT NULL THEN
            v_rows := v_rows || format(
                'CROSS JOIN LATERAL (SELECT %1$s FROM (SELECT %2$s) m) wa(w) '
                'CROSS JOIN LATERAL (SELECT %1$s FROM (SELECT %3$s) m) wb(w) ',
                v_where,
                (SELECT string_agg(format('a.%I', c), ', ') FROM unnest(v_cols) AS c),
                (SELECT string_agg(format('b.%I', c), ', ') FROM unnest(v_cols) AS c));
        END IF;
        -- the new version only when it leads elsewhere: an update that moved
        -- nothing names each record once
        v_rows := v_rows || format(
            'CROSS JOIN LATERAL (SELECT %1$s UNION ALL SELECT %2$s '
            '                     WHERE pg_catalog.record_image_ne(ROW(%1$s), ROW(%2$s))) v '
            'WHERE pg_catalog.record_image_ne(ROW(%3$s), ROW(%4$s))',
            (SELECT string_agg(format('a.%I', c), ', ') FROM unnest(v_need) AS c),
            (SELECT string_agg(format('b.%I', c), ', ') FROM unnest(v_need) AS c),
            (SELECT string_agg(format('a.%I', c), ', ') FROM unnest(v_cmp) AS c),
            (SELECT string_agg(format('b.%I', c), ', ') FROM unnest(v_cmp) AS c))
            || CASE WHEN v_where IS NOT NULL
                    THEN ' OR pg_catalog.record_image_ne(ROW(wa.w), ROW(wb.w))' ELSE '' END;
    END IF;
    IF v_where IS NOT NULL THEN
        v_rows := format('SELECT * FROM (%s) m WHERE %s', v_rows, v_where);
    END IF;

    v_key := format('%s', m.key_type);
    v_only := etlify._only(m.source);
    v_keys := CASE d.form
        WHEN 'has' THEN format('SELECT c.%I::%s::pg_catalog.text FROM changed c', d.member_col, v_key)
        WHEN 'link' THEN format('SELECT c.%I::%s::pg_catalog.text FROM changed c', d.link_source_col, v_key)
        WHEN 'belongs' THEN format(
            'SELECT s.%I::pg_catalog.text FROM %s %s s JOIN changed c ON s.%I OPERATOR(pg_catalog.=) c.%I',
            m.key_column, v_only, m.source, d.source_col, d.member_col)
        WHEN 'through' THEN format(
            'SELECT l.%I::%s::pg_catalog.text FROM %s %s l JOIN changed c ON l.%I OPERATOR(pg_catalog.=) c.%I',
            d.link_source_col, v_key,
            etlify._only(d.link),
            d.link, d.link_member_col, d.member_col)
        WHEN 'keys' THEN format('SELECT k::%s::pg_catalog.text FROM (%s' || E'\n' || ') AS k(k)',
                                v_key, d.keys_sql)
    END;
    RETURN format('WITH changed AS MATERIALIZED (%s) '
                  'SELECT pg_catalog.array_agg(DISTINCT q.k) FROM (%s) q(k) WHERE q.k IS NOT NULL',
                  v_rows, v_keys);
END
$$;

-- A column's type (NULL if there is no such column).
CREATE FUNCTION etlify._col_type(p_rel regclass, p_col name) RETURNS oid
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT a.atttypid FROM pg_attribute a
     WHERE a.attrelid = p_rel AND a.attname = p_col AND a.attnum > 0 AND NOT a.attisdropped;
$$;

-- A type with its domains looked through.
CREATE FUNCTION etlify._base_type(p_type oid) RETURNS oid
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH RECURSIVE d (oid, base, depth) AS (
        SELECT t.oid, t.typbasetype, 0 FROM pg_type t WHERE t.oid = p_type
        UNION ALL
        SELECT t.oid, t.typbasetype, d.depth + 1 FROM d JOIN pg_type t ON t.oid = d.base WHERE d.depth < 100
    )
    SELECT oid FROM d WHERE base = 0 ORDER BY depth LIMIT 1;
$$;

-- Whether values of two types spell alike as text: one base type, or two integer
-- types, or two string types.
CREATE FUNCTION etlify._same_spelling(p_a oid, p_b oid) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT a = b
        OR (a IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
            AND b IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype))
        OR (a IN ('text'::regtype, 'varchar'::regtype) AND b IN ('text'::regtype, 'varchar'::regtype))
      FROM (SELECT etlify._base_type(p_a)::regtype AS a, etlify._base_type(p_b)::regtype AS b) t;
$$;


-- What a member's capture trigger needs (src/members.rs): the mapping's owner and
-- search_path (where and keys are the owner's SQL), and the statement. And when
-- the changed rows hold the source keys themselves, in a column whose values
-- spell like the keys (has_many by foreign key or "column", or a "through"
-- table's own rows) and no `where` reads them: that column (direct_col), and the
-- columns whose change counts (direct_watch; NULL: all of them). The trigger then
-- reads the keys from the transition tables itself, with no query (the common
-- case: a bulk UPDATE of investments pays no join).
CREATE FUNCTION etlify._member_plan(p_mapping int, p_position int, p_role text, p_event text,
                                    OUT owner oid, OUT search_path text, OUT sql text,
                                    OUT direct_col name, OUT direct_watch text[])
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT m.owner::oid, m.search_path,
           etlify._member_sql(p_mapping, p_position, p_role, p_event, 'etlify_new', 'etlify_old'),
           d.col,
           CASE WHEN d.col IS NOT NULL AND mb.role = 'member' AND mb.watch IS NOT NULL
                THEN ARRAY(SELECT DISTINCT c FROM unnest(mb.watch || ARRAY[mb.member_col::text]) AS c) END
      FROM etlify.mappings m
      LEFT JOIN etlify.members mb ON mb.mapping_id = m.id AND mb.position = p_position AND mb.role = p_role
      LEFT JOIN LATERAL (
          SELECT CASE WHEN mb.role = 'member' AND mb.form = 'has' AND mb.where_sql IS NULL THEN mb.member_col
                      WHEN mb.role = 'link' THEN mb.link_source_col END AS col
      ) c0 ON true
      LEFT JOIN LATERAL (
          SELECT c0.col WHERE etlify._same_spelling(etlify._col_type(mb.member, c0.col), m.key_type)
      ) d ON true
     WHERE m.id = p_mapping;
$$;

-- The elements of sync_table's `dependencies` or `sync_dependencies` list
-- (p_option), numbered from 1, each as an object with "table" (a bare name
-- becomes one), with the words that name it in errors. A list that is not an
-- array, an element that is neither, or a key not in p_keys, is an error naming
-- it. NULL: no elements.
CREATE FUNCTION etlify._elements(p_list jsonb, p_option text, p_noun text, p_keys text[])
RETURNS TABLE (pos int, element jsonb, what text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_extra text;
BEGIN
    IF p_list IS NULL THEN
        RETURN;
    END IF;
    IF jsonb_typeof(p_list) <> 'array' THEN
        PERFORM etlify._raise('22023', format('etlify.sync_table: %s must be a JSON array, got %s', p_option, p_list));
    END IF;
    pos := 0;
    FOR element IN SELECT x FROM jsonb_array_elements(p_list) AS x LOOP
        pos := pos + 1;
        what := format('etlify.sync_table: %s %s (%s)', p_noun, pos, element);
        IF jsonb_typeof(element) = 'string' THEN
            element := jsonb_build_object('table', element);
        ELSIF jsonb_typeof(element) <> 'object' OR jsonb_typeof(element -> 'table') IS DISTINCT FROM 'string' THEN
            PERFORM etlify._raise('22023', format('%s: an element is a table name or an object with "table"', what));
        END IF;
        v_extra := (SELECT string_agg(k, ', ') FROM jsonb_object_keys(element) AS k WHERE NOT (k = ANY (p_keys)));
        IF v_extra IS NOT NULL THEN
            PERFORM etlify._raise('22023', format('%s: unknown key %s (expected: %s)',
                                                  what, v_extra, array_to_string(p_keys, ', ')));
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Resolves and checks sync_table's dependencies (see SQL-API.md, "Sync groups"),
-- writes etlify.members and installs the members' capture triggers. Runs inside
-- etlify._declare_mapping, as the extension's owner; p_caller is the declaring role.
CREATE FUNCTION etlify._declare_members(p_mapping etlify.mappings, p_deps jsonb, p_caller oid) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_pos    int := 0;
    e        jsonb;
    v_ways   text[];
    v_member regclass;
    v_link   regclass;
    v_watch  text[];
    v_col    text;
    v_form   text;
    v_mcol   name;
    v_scol   name;
    v_lmcol  name;
    v_lscol  name;
    v_cands  text;
    v_n      int;
    v_event  text;
    v_what   text;
    v_checks text := '(SELECT * FROM ONLY %s LIMIT 0)';
BEGIN
    FOR v_pos, e, v_what IN
        SELECT * FROM etlify._elements(p_deps, 'dependencies', 'dependency',
                                       '{table, watch, where, column, source_column, through, keys}')
    LOOP
        v_ways := ARRAY(SELECT k FROM jsonb_object_keys(e) AS k
                         WHERE k IN ('column', 'source_column', 'through', 'keys'));
        IF cardinality(v_ways) > 1 THEN
            PERFORM etlify._raise('22023', format('%s: give at most one of column, source_column, through, keys',
                                                  v_what));
        END IF;
        v_member := etlify._resolve_table(e ->> 'table', p_mapping.search_path);
        IF v_member IS NULL THEN
            PERFORM etlify._raise('42P01', format('%s: table "%s" does not exist', v_what, e ->> 'table'));
        END IF;
        IF (SELECT c.relkind FROM pg_class c WHERE c.oid = v_member) NOT IN ('r', 'p') THEN
            PERFORM etlify._raise('42809', format('%s: %s is not a table', v_what, v_member));
        END IF;
        -- its rows reach the record's owner (keys, where): the declaring role must
        -- be able to read them, and may put triggers on the table
        IF NOT has_table_privilege(p_caller, v_member, 'SELECT')
           OR NOT has_table_privilege(p_caller, v_member, 'TRIGGER') THEN
            PERFORM etlify._raise('42501', format('%s: permission denied for table %s (SELECT and TRIGGER are needed)',
                                                  v_what, v_member));
        END IF;
        v_watch := NULL;
        IF e ? 'watch' THEN
            IF jsonb_typeof(e -> 'watch') <> 'array' OR jsonb_array_length(e -> 'watch') = 0 THEN
                PERFORM etlify._raise('22023', format('%s: watch must be a non-empty array of column names', v_what));
            END IF;
            v_watch := ARRAY(SELECT jsonb_array_elements_text(e -> 'watch'));
            FOREACH v_col IN ARRAY v_watch LOOP
                IF NOT etlify._has_col(v_member, v_col) THEN
                    PERFORM etlify._raise('42703', format('%s: watched column "%s" does not exist in %s',
                                                          v_what, v_col, v_member));
                END IF;
            END LOOP;
        END IF;
        IF e ? 'where' AND (jsonb_typeof(e -> 'where') <> 'string' OR btrim(e ->> 'where') = '') THEN
            PERFORM etlify._raise('22023', format('%s: where must be a non-empty SQL predicate', v_what));
        END IF;
        v_link := NULL; v_mcol := NULL; v_scol := NULL; v_lmcol := NULL; v_lscol := NULL;

        IF e ? 'keys' THEN
            v_form := 'keys';
            IF jsonb_typeof(e -> 'keys') <> 'string' OR btrim(e ->> 'keys') = '' THEN
                PERFORM etlify._raise('22023', format('%s: keys must be a query over "changed"', v_what));
            END IF;
        ELSIF e ? 'column' THEN
            v_form := 'has';
            v_mcol := e ->> 'column';
            IF NOT etlify._has_col(v_member, v_mcol) THEN
                PERFORM etlify._raise('42703', format('%s: column "%s" does not exist in %s', v_what, v_mcol, v_member));
            END IF;
        ELSIF e ? 'source_column' THEN
            v_form := 'belongs';
            v_scol := e ->> 'source_column';
            IF NOT etlify._has_col(p_mapping.source, v_scol) THEN
                PERFORM etlify._raise('42703', format('%s: source column "%s" does not exist in %s',
                                                      v_what, v_scol, p_mapping.source));
            END IF;
            v_mcol := etlify._pk_col(v_member);
            IF v_mcol IS NULL THEN
                PERFORM etlify._raise('42P16', format('%s: %s has no single-column primary key for "%s" to reference',
                                                      v_what, v_member, v_scol));
            END IF;
        ELSIF e ? 'through' THEN
            v_form := 'through';
            v_link := etlify._resolve_table(e ->> 'through', p_mapping.search_path);
            IF v_link IS NULL OR (SELECT c.relkind FROM pg_class c WHERE c.oid = v_link) NOT IN ('r', 'p') THEN
                PERFORM etlify._raise('42P01', format('%s: table "%s" does not exist', v_what, e ->> 'through'));
            END IF;
            IF NOT has_table_privilege(p_caller, v_link, 'SELECT')
               OR NOT has_table_privilege(p_caller, v_link, 'TRIGGER') THEN
                PERFORM etlify._raise('42501', format('%s: permission denied for table %s (SELECT and TRIGGER are needed)',
                                                      v_what, v_link));
            END IF;
            SELECT count(*), string_agg(f.conname, ', ') INTO v_n, v_cands FROM etlify._single_fks(v_link, p_mapping.source) f;
            IF v_n <> 1 THEN
                PERFORM etlify._raise('42P10', format('%s: %s needs exactly one single-column foreign key to %s, it has %s%s',
                                                      v_what, v_link, p_mapping.source, v_n,
                                                      coalesce(' (' || v_cands || ')', '')));
            END IF;
            SELECT f.from_col INTO v_lscol FROM etlify._single_fks(v_link, p_mapping.source) f;
            SELECT count(*), string_agg(f.conname, ', ') INTO v_n, v_cands FROM etlify._single_fks(v_link, v_member) f;
            IF v_n <> 1 THEN
                PERFORM etlify._raise('42P10', format('%s: %s needs exactly one single-column foreign key to %s, it has %s%s',
                                                      v_what, v_link, v_member, v_n,
                                                      coalesce(' (' || v_cands || ')', '')));
            END IF;
            SELECT f.from_col, f.to_col INTO v_lmcol, v_mcol FROM etlify._single_fks(v_link, v_member) f;
        ELSE
            -- by foreign key, whichever way it points
            SELECT count(*), string_agg(x.what, ', ') INTO v_n, v_cands FROM (
                SELECT format('%s.%s references %s', v_member, f.from_col, p_mapping.source) AS what
                  FROM etlify._single_fks(v_member, p_mapping.source) f
                 WHERE f.to_col = p_mapping.key_column
                UNION ALL
                SELECT format('%s.%s references %s', p_mapping.source, f.from_col, v_member)
                  FROM etlify._single_fks(p_mapping.source, v_member) f) x;
            IF v_n <> 1 THEN
                PERFORM etlify._raise('42P10', format(
                    '%s: %s foreign keys tie %s to %s%s; name the way with "column", "source_column", "through" or "keys"',
                    v_what, CASE WHEN v_n = 0 THEN 'no' ELSE v_n::text END, v_member, p_mapping.source,
                    coalesce(' (' || v_cands || ')', '')));
            END IF;
            SELECT f.from_col INTO v_mcol FROM etlify._single_fks(v_member, p_mapping.source) f
             WHERE f.to_col = p_mapping.key_column;
            IF v_mcol IS NOT NULL THEN
                v_form := 'has';
            ELSE
                v_form := 'belongs';
                SELECT f.from_col, f.to_col INTO v_scol, v_mcol FROM etlify._single_fks(p_mapping.source, v_member) f;
            END IF;
        END IF;

        INSERT INTO etlify.members (mapping_id, position, role, member, form, member_col, source_col,
                                    link, link_member_col, link_source_col, watch, where_sql, keys_sql)
        VALUES (p_mapping.id, v_pos, 'member', v_member, v_form, v_mcol, v_scol,
                v_link, v_lmcol, v_lscol, v_watch, e ->> 'where', e ->> 'keys');
        IF v_form = 'through' THEN
            -- a change of the join table's rows dirties the source too
            INSERT INTO etlify.members (mapping_id, position, role, member, form, link_source_col)
            VALUES (p_mapping.id, v_pos, 'link', v_link, 'link', v_lscol);
        END IF;

        -- where and keys are the caller's SQL: each event's statement must plan, as
        -- the caller, with the mapping's search_path
        FOR v_event IN VALUES ('INSERT'), ('UPDATE'), ('DELETE') LOOP
            BEGIN
                PERFORM etlify._check_fetch(p_caller, p_mapping.search_path,
                    etlify._member_sql(p_mapping.id, v_pos, 'member', v_event,
                                       format(v_checks, v_member), format(v_checks, v_member)));
            EXCEPTION WHEN OTHERS THEN
                PERFORM etlify._raise('22023', format('%s: cannot find the source keys of changed %s rows: %s',
                                                      v_what, v_member, SQLERRM));
            END;
        END LOOP;
    END LOOP;
    PERFORM etlify._install_members(p_mapping.id);
END
$$;

-- The capture triggers of a mapping's members (and of their partitions), named
-- etlify_member_<mapping>_<position>[_link]_<event>.
CREATE FUNCTION etlify._member_trigger(p_member etlify.members) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('etlify_member_%s_%s%s', p_member.mapping_id, p_member.position,
                  CASE WHEN p_member.role = 'link' THEN '_link' ELSE '' END);
$$;

CREATE FUNCTION etlify._install_member_on(p_member etlify.members, p_rel regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_trg text := etlify._member_trigger(p_member);
    e     record;
BEGIN
    FOR e IN SELECT * FROM etlify._capture_events() LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s %s FOR EACH STATEMENT '
                       'EXECUTE FUNCTION etlify._capture_member(%L, %L, %L)',
                       v_trg || e.suffix, e.event, p_rel, e.transition_tables,
                       p_member.mapping_id, p_member.position, p_member.role);
        EXECUTE format('ALTER TRIGGER %I ON %s DEPENDS ON EXTENSION etlify', v_trg || e.suffix, p_rel);
    END LOOP;
END
$$;

CREATE FUNCTION etlify._install_members(p_mapping int) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d     etlify.members;
    v_rel regclass;
BEGIN
    FOR d IN SELECT * FROM etlify.members mb WHERE mb.mapping_id = p_mapping ORDER BY mb.position, mb.role LOOP
        FOR v_rel IN SELECT t.rel FROM etlify._capture_tables(d.member) t LOOP
            PERFORM etlify._install_member_on(d, v_rel);
        END LOOP;
    END LOOP;
END
$$;

-- Partitions of a partitioned member come and go (etlify._on_ddl_end): one that
-- joins gets the triggers, one that leaves loses them, and either way the
-- mapping's records are re-checked (which rows fed which record is not known).
CREATE FUNCTION etlify._follow_member_partitions() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d     etlify.members;
    v_rel regclass;
    e     record;
BEGIN
    FOR d IN SELECT mb.* FROM etlify.members mb JOIN pg_class c ON c.oid = mb.member
              WHERE c.relkind = 'p' ORDER BY mb.mapping_id, mb.position, mb.role LOOP
        FOR v_rel IN SELECT t.rel FROM etlify._capture_tables(d.member) t
                     EXCEPT SELECT tg.tgrelid::regclass FROM pg_trigger tg
                             WHERE tg.tgname = etlify._member_trigger(d) || '_ins' LOOP
            PERFORM etlify._install_member_on(d, v_rel);
            PERFORM etlify._all_dirty(d.mapping_id);
            PERFORM etlify._wake();
        END LOOP;
        FOR v_rel IN SELECT tg.tgrelid::regclass FROM pg_trigger tg
                      WHERE tg.tgname = etlify._member_trigger(d) || '_ins'
                     EXCEPT SELECT t.rel FROM etlify._capture_tables(d.member) t LOOP
            FOR e IN SELECT * FROM etlify._capture_events() LOOP
                EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', etlify._member_trigger(d) || e.suffix, v_rel);
            END LOOP;
            PERFORM etlify._all_dirty(d.mapping_id);
            PERFORM etlify._wake();
        END LOOP;
    END LOOP;
END
$$;

-- Drops a mapping's member triggers and rows (unsync_table, a dropped source).
CREATE FUNCTION etlify._drop_members(p_mapping int) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t record;
BEGIN
    -- rows first: each DROP TRIGGER fires etlify._on_sql_drop, which must find
    -- nothing left to clean up
    DELETE FROM etlify.members WHERE mapping_id = p_mapping;
    FOR t IN SELECT tg.tgname, tg.tgrelid::regclass AS rel FROM pg_trigger tg
              WHERE tg.tgname LIKE 'etlify\_member\_' || p_mapping || '\_%' LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', t.tgname, t.rel);
    END LOOP;
END
$$;
