-- etlify catalog and state. Runs first in CREATE EXTENSION (schema etlify already exists).

-- Members of etlify_admin may declare mappings on the tables they own and use every
-- operation and view (see the grants at the end of operations.sql). Everything
-- else in schema etlify is closed to other roles.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'etlify_admin') THEN
        CREATE ROLE etlify_admin NOLOGIN;
    END IF;
END
$$;
--
-- Three kinds of tables:
--   configuration  crms, crm_secrets, mappings      dumped by pg_dump (pg_extension_config_dump)
--   work           queue                            "key K of mapping M may have changed"
--   state          records, sync_log                what the CRM holds, what was sent

CREATE TABLE etlify.crms (
    name            text PRIMARY KEY,
    adapter         text NOT NULL,
    config          jsonb NOT NULL DEFAULT '{}',
    enabled         boolean NOT NULL DEFAULT true,
    rate_limit      int CHECK (rate_limit IS NULL OR rate_limit > 0),
    rate_period     interval NOT NULL DEFAULT '10 seconds' CHECK (rate_period > '0'),
    max_sync_errors int NOT NULL DEFAULT 3 CHECK (max_sync_errors > 0),
    batch_size      int CHECK (batch_size IS NULL OR batch_size > 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- where the CRM was registered (or last resumed): a copy of the database (a
    -- restore, a template) finds another system or database here, and holds the
    -- CRM until an operator resumes it (etlify._home(), etlify.resume)
    home_system     text NOT NULL DEFAULT '',
    home_database   oid NOT NULL DEFAULT 0
);

-- Secrets live apart so that crms can be readable by monitoring roles while the
-- tokens stay readable by superusers only (REVOKE below, and no view joins it).
CREATE TABLE etlify.crm_secrets (
    crm    text PRIMARY KEY REFERENCES etlify.crms (name) ON DELETE CASCADE,
    secret text NOT NULL
);

CREATE TABLE etlify.mappings (
    id                serial PRIMARY KEY,
    crm               text NOT NULL REFERENCES etlify.crms (name),
    source            regclass NOT NULL,
    object_type       text NOT NULL,
    id_property       text NOT NULL,
    -- the serializer as declared (regprocedure text). The mapping's capture
    -- triggers hold the real reference (a dependency, see _install_capture), which
    -- follows renames and refuses DROP FUNCTION; this column is for people.
    serializer        text NOT NULL,
    watch             text[],
    sync_if           text,
    dependencies      jsonb,
    sync_dependencies jsonb,
    -- the role that declared the mapping: serializers and sync_if run as this role
    owner             regrole NOT NULL,
    -- search_path in force at sync_table: serializers and sync_if resolve names with it
    search_path       text NOT NULL,
    -- capture on a logical-replication subscriber too (etlify.capture_on_subscriber)
    subscriber        boolean NOT NULL DEFAULT false,
    -- the source's primary key column and type, fixed at declaration time
    key_column        name NOT NULL,
    key_type          regtype NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (crm, source)
);

-- A mapping's dependencies (sync groups), resolved at sync_table: each says how a
-- changed row of another table (the member) names the source records it feeds.
-- Written by etlify._declare_members; read by etlify._member_sql, which builds the
-- statement the member's capture triggers run (src/members.rs).
--   has      member.member_col holds a source key (a foreign key to the source, or
--            "column")
--   belongs  source.source_col references member.member_col (a foreign key from
--            the source, or "source_column")
--   through  member.member_col is referenced by link.link_member_col, and
--            link.link_source_col holds a source key ("through")
--   link     the "through" table itself: link_source_col holds a source key
--   keys     the escape hatch: keys_sql reads the changed rows from `changed`
-- A through dependency has two rows (roles member and link) at one position.
CREATE TABLE etlify.members (
    mapping_id       int NOT NULL,
    position         int NOT NULL,
    role             text NOT NULL CHECK (role IN ('member', 'link')),
    member           regclass NOT NULL,
    form             text NOT NULL CHECK (form IN ('has', 'belongs', 'through', 'link', 'keys')),
    member_col       name,
    source_col       name,
    link             regclass,
    link_member_col  name,
    link_source_col  name,
    watch            text[],
    where_sql        text,
    keys_sql         text,
    PRIMARY KEY (mapping_id, position, role)
);

-- A mapping's sync dependencies (dependency order), resolved at sync_table: before
-- a record is sent, the record of `target` (synced to CRM `crm`) whose key its
-- row holds in `source_col` must have a CRM id. Written by etlify._declare_needs,
-- read by the drain (etlify._await) and by etlify._work's ordering.
--   associate  NULL, or the association to create once the record is written:
--              {"default": true} or {"category": "...", "type_id": n}
CREATE TABLE etlify.needs (
    mapping_id int NOT NULL,
    position   int NOT NULL,
    crm        text NOT NULL,
    target     regclass NOT NULL,
    source_col name NOT NULL,
    associate  jsonb,
    PRIMARY KEY (mapping_id, position)
);

-- The associations etlify made and the CRM holds: one per (record, sync
-- dependency), between the record's object (from_id) and the referenced one
-- (to_id). A reference that moves removes the old one (src/engine/links.rs).
CREATE TABLE etlify.links (
    mapping_id int NOT NULL,
    key        text NOT NULL,
    position   int NOT NULL,
    from_id    text NOT NULL,
    to_id      text NOT NULL,
    PRIMARY KEY (mapping_id, key, position)
);

-- What writers append: one row per statement that changed records of a mapping,
-- with the changed keys. Append-only, no index, no foreign key: the cheapest write
-- there is, so that writers barely notice the mapping. The drain absorbs these
-- rows into etlify.queue (etlify._absorb) before each round.
-- Only the capture trigger writes here (no role has INSERT: it writes the heap
-- itself, or through SPI as the table's owner).
CREATE TABLE etlify.changes (
    mapping_id int NOT NULL,
    keys       text[] NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    -- primary-key moves of the statement, as pairs: old1, new1, old2, new2, ...
    moves      text[],
    -- a TRUNCATE: every record of the mapping may be gone
    truncated  boolean NOT NULL DEFAULT false,
    -- statements whose order matters (moves, truncates) are numbered from
    -- etlify.change_seq; NULL for plain changes, which commute
    seq        bigint,
    -- the table whose trigger wrote the row (NULL: etlify itself). Members of
    -- etlify_admin may run etlify._capture in triggers of their own, with any
    -- mapping's id: moves are applied only when they come from the mapping's
    -- source (etlify._absorb). A name, not a number, in a dump.
    rel        regclass
);
-- Publications FOR ALL TABLES include this table: without a replica identity,
-- the drain could not delete absorbed rows.
ALTER TABLE etlify.changes REPLICA IDENTITY FULL;

-- A bulk statement's keys make one large array: lz4 stores it in about half the
-- time pglz takes (measured: 13 ms against 26 ms for 100k keys). Servers built
-- without lz4 keep the default.
DO $$
BEGIN
    ALTER TABLE etlify.changes ALTER COLUMN keys SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    NULL;
END
$$;

-- Dirty records. One row per (mapping, key), whatever table the change came from.
-- change_seq is bumped by every statement that touches the key; the drain clears a
-- row only if change_seq is still the value it claimed, so a change committed while
-- the record was in flight keeps it dirty (never lose a change).
CREATE SEQUENCE etlify.change_seq;
CREATE TABLE etlify.queue (
    -- no foreign keys on the hot tables: unsync_table and the sql_drop event
    -- trigger delete a mapping's rows themselves
    mapping_id  int NOT NULL,
    key         text NOT NULL,
    change_seq  bigint NOT NULL,
    -- when the record became dirty (kept across further changes: oldest_pending_at)
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    -- earliest next attempt; 'infinity' while parked
    not_before  timestamptz NOT NULL DEFAULT '-infinity',
    -- set by a claimer that committed its claim and is now talking to the CRM
    claimed_by  text,
    claimed_at  timestamptz,
    -- the id_property value of an upsert (by that value, for a record with no CRM
    -- id yet) whose answer has not been recorded, and when it was claimed: until
    -- it is, the CRM may hold an object etlify does not know the id of (a worker
    -- killed mid-request, a timeout). See etlify._unanswered.
    sending     text,
    sent_at     timestamptz,
    PRIMARY KEY (mapping_id, key)
);
-- Only the primary key: every further index would be paid by writers and by the
-- worker's claims; the claim scans the mapping's part of the key index.

-- Sync state per (mapping, key): what the CRM holds for it.
CREATE TABLE etlify.records (
    mapping_id     int NOT NULL,
    key            text NOT NULL,
    state          text NOT NULL CHECK (state IN ('pending', 'synced', 'skipped', 'buffered', 'failed', 'parked', 'deleted')),
    crm_id         text,
    digest         bytea,
    last_synced_at timestamptz,
    error_count    int NOT NULL DEFAULT 0,
    last_error     text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    -- a buffered record waits for the record `waits_key` of its sync dependency
    -- `waits_position` (etlify.needs), and is released when that one syncs
    waits_position int,
    waits_key      text,
    PRIMARY KEY (mapping_id, key)
);
-- "which buffered records wait for these keys?": asked whenever records sync
CREATE INDEX records_waiting ON etlify.records (waits_key) WHERE state = 'buffered';
-- "does another record hold this CRM object?": asked before every archive, so that
-- the object of a row that exists is never archived
CREATE INDEX records_crm_id ON etlify.records (mapping_id, crm_id) WHERE crm_id IS NOT NULL;

-- One row; whoever applies ordered changes (moves, truncates) holds its lock, so
-- that they are applied in order and once. A table row rather than an advisory
-- lock: no other role can take it.
CREATE TABLE etlify.absorb_lock (one boolean PRIMARY KEY DEFAULT true CHECK (one));
INSERT INTO etlify.absorb_lock DEFAULT VALUES;

-- Mappings removed (unsync_table, DROP TABLE) whose queued changes and sync state
-- the drain still has to delete. Done there, in the drain's own transaction, so
-- that a user's DDL never waits on row locks the worker holds (measured: a DROP
-- TABLE deleting those rows itself deadlocked with the worker).
CREATE TABLE etlify.forgotten (
    mapping_id int PRIMARY KEY
);

-- Inline sends (drain(), an inline sync()/delete()) call the CRM inside the
-- caller's transaction; if it rolls back, the CRM keeps what was sent while the
-- records roll back. So before each request, a transaction of its own notes the
-- keys with the (sub)transaction that sends them (src/inline_sends.rs), and once
-- that one has ended without committing, etlify._settle_inline_sends makes them
-- dirty again. Not dumped: its transaction ids mean nothing in another cluster.
CREATE TABLE etlify.inline_sends (
    xid        xid8 NOT NULL,
    mapping_id int NOT NULL,
    key        text NOT NULL,
    -- the id_property value of an upsert of a record with no CRM id (see
    -- etlify.queue.sending): if the transaction rolls back, the object it made is
    -- looked up by it
    sending    text
);
-- no key: a FOR ALL TABLES publication would otherwise refuse the settling DELETE
ALTER TABLE etlify.inline_sends REPLICA IDENTITY FULL;

-- Recent requests, trimmed to etlify.sync_log_size rows by the code that appends.
CREATE TABLE etlify.sync_log_entries (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    crm         text NOT NULL,
    source      regclass,
    operation   text NOT NULL,
    records     int NOT NULL,
    http_status int,
    duration_ms double precision,
    error       text
);

REVOKE ALL ON ALL TABLES IN SCHEMA etlify FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA etlify FROM PUBLIC;
-- The capture triggers run as the writing role, who needs no privilege here: the
-- trigger writes etlify.changes itself (src/capture.rs).
GRANT USAGE ON SCHEMA etlify TO PUBLIC;

-- pg_dump keeps the configuration and the sync state, so that a restored copy
-- updates the same CRM objects. Not the secrets: a dump file carries no token, and
-- a restored copy cannot write to the CRM before an operator gives it one again.
SELECT pg_catalog.pg_extension_config_dump('etlify.crms', '');
SELECT pg_catalog.pg_extension_config_dump('etlify.mappings', '');
SELECT pg_catalog.pg_extension_config_dump('etlify.mappings_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('etlify.members', '');
SELECT pg_catalog.pg_extension_config_dump('etlify.needs', '');
SELECT pg_catalog.pg_extension_config_dump('etlify.links', '');
SELECT pg_catalog.pg_extension_config_dump('etlify.records', '');
SELECT pg_catalog.pg_extension_config_dump('etlify.queue', '');
SELECT pg_catalog.pg_extension_config_dump('etlify.changes', '');
SELECT pg_catalog.pg_extension_config_dump('etlify.change_seq', '');

-- The database's owner may dump it without being a superuser: pg_dump reads what
-- is dumped above.
DO $$
DECLARE
    v_owner regrole := (SELECT d.datdba::regrole FROM pg_catalog.pg_database d
                         WHERE d.datname = pg_catalog.current_database());
BEGIN
    EXECUTE format('GRANT SELECT ON etlify.crms, etlify.mappings, etlify.members, etlify.needs, etlify.links, etlify.records, etlify.queue, '
                   'etlify.changes, etlify.mappings_id_seq, etlify.change_seq TO %s', v_owner);
END
$$;
