"""The schema of each back end, as numbered upgrades: never edit an entry that has shipped.

SQLite keeps its version in `PRAGMA user_version`; PostgreSQL in `ponder_schema`, upgraded
under an advisory lock so processes starting together upgrade it once.
"""

from __future__ import annotations

# SQLite: each entry upgrades the schema by one version.
SQLITE: tuple[str, ...] = (
    """
    CREATE TABLE chains (
        id TEXT PRIMARY KEY,
        platform TEXT NOT NULL,
        workspace TEXT NOT NULL DEFAULT '',
        channel TEXT NOT NULL DEFAULT '',
        thread TEXT NOT NULL DEFAULT '',
        asker TEXT NOT NULL DEFAULT '',
        question TEXT NOT NULL,
        mode TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        answer TEXT,
        started_at REAL NOT NULL,
        finished_at REAL,
        total_seconds REAL,
        handles TEXT NOT NULL DEFAULT '[]',
        history TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX chains_thread ON chains (platform, thread, started_at);
    CREATE INDEX chains_status ON chains (status);
    CREATE TABLE steps (
        chain_id TEXT NOT NULL REFERENCES chains (id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        title TEXT NOT NULL,
        content TEXT NOT NULL,
        seconds REAL NOT NULL,
        PRIMARY KEY (chain_id, idx)
    );
    CREATE TABLE seen_events (
        event_id TEXT PRIMARY KEY,
        seen_at REAL NOT NULL
    );
    CREATE TABLE kv (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # The chain's language (decided once, at admission) and its anchor: where the platform
    # shows the chain's opening message, as the front door describes it, so a restart finds
    # it again without per-platform keys. `handles` becomes a JSON object keyed by slot.
    """
    ALTER TABLE chains ADD COLUMN language TEXT NOT NULL DEFAULT 'en';
    ALTER TABLE chains ADD COLUMN anchor TEXT NOT NULL DEFAULT '{}';
    UPDATE chains SET anchor = (SELECT value FROM kv WHERE key = 'discord:opening:' || chains.id)
        WHERE EXISTS (SELECT 1 FROM kv WHERE key = 'discord:opening:' || chains.id);
    UPDATE chains SET anchor = json_object('message_ts',
            (SELECT value FROM kv WHERE key = 'slack:question:' || chains.id))
        WHERE EXISTS (SELECT 1 FROM kv WHERE key = 'slack:question:' || chains.id);
    DELETE FROM kv WHERE key LIKE 'discord:opening:%' OR key LIKE 'slack:question:%';
    """,
    # Delivery, apart from thinking: final texts the platform has not taken yet ('owed'),
    # kept until it does ('done') or until PONDER_DELIVERY_HOURS have passed ('expired').
    """
    ALTER TABLE chains ADD COLUMN delivery TEXT NOT NULL DEFAULT 'done';
    ALTER TABLE chains ADD COLUMN owed TEXT NOT NULL DEFAULT '[]';
    CREATE INDEX chains_delivery ON chains (delivery);
    """,
    # Feedback on answers: one vote per person per answer (a second press replaces it), kept
    # with the chain and removed with it; `ponder stats` reads the days back by start time.
    """
    CREATE TABLE feedback (
        chain_id TEXT NOT NULL REFERENCES chains (id) ON DELETE CASCADE,
        voter TEXT NOT NULL,
        platform TEXT NOT NULL,
        vote TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (chain_id, voter)
    );
    CREATE INDEX feedback_voter ON feedback (voter);
    CREATE INDEX chains_started ON chains (started_at);
    """,
    # Installs by OAuth (Slack: one app in many workspaces): each workspace's installation as
    # the platform's library describes it (JSON: its tokens, bot user, scopes), and the
    # install links' one-time states until they are used or expire.
    """
    CREATE TABLE installations (
        platform TEXT NOT NULL,
        workspace TEXT NOT NULL,
        data TEXT NOT NULL,
        installed_at REAL NOT NULL,
        PRIMARY KEY (platform, workspace)
    );
    CREATE TABLE oauth_states (
        state TEXT PRIMARY KEY,
        expires_at REAL NOT NULL
    );
    """,
)


# PostgreSQL: the SQLite schema as it stands at v3, plus what several processes need. JSON is
# kept as text, as on SQLite, so both back ends read a row the same way. Times are epoch
# seconds; leases are compared with the server's clock (one clock for every process).
POSTGRES: tuple[str, ...] = (
    """
    CREATE TABLE chains (
        id TEXT PRIMARY KEY,
        platform TEXT NOT NULL,
        workspace TEXT NOT NULL DEFAULT '',
        channel TEXT NOT NULL DEFAULT '',
        thread TEXT NOT NULL DEFAULT '',
        asker TEXT NOT NULL DEFAULT '',
        question TEXT NOT NULL,
        mode TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        answer TEXT,
        started_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION,
        total_seconds DOUBLE PRECISION,
        handles TEXT NOT NULL DEFAULT '{}',
        history TEXT NOT NULL DEFAULT '[]',
        language TEXT NOT NULL DEFAULT 'en',
        anchor TEXT NOT NULL DEFAULT '{}',
        delivery TEXT NOT NULL DEFAULT 'done',
        owed TEXT NOT NULL DEFAULT '[]',
        -- The process running the chain and until when (renewed while it runs); a chain
        -- whose lease has run out was left by a process that is gone.
        lease_owner TEXT NOT NULL DEFAULT '',
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        stop_requested BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE INDEX chains_thread ON chains (platform, thread, started_at);
    CREATE INDEX chains_running ON chains (platform, asker) WHERE status = 'running';
    CREATE INDEX chains_owner ON chains (lease_owner) WHERE status = 'running';
    CREATE INDEX chains_finished ON chains (finished_at) WHERE status <> 'running';
    CREATE INDEX chains_delivery ON chains (delivery) WHERE delivery = 'owed';
    CREATE INDEX chains_asker ON chains (asker);
    CREATE TABLE steps (
        chain_id TEXT NOT NULL REFERENCES chains (id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        title TEXT NOT NULL,
        content TEXT NOT NULL,
        seconds DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (chain_id, idx)
    );
    CREATE TABLE seen_events (
        event_id TEXT PRIMARY KEY,
        seen_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX seen_events_at ON seen_events (seen_at);
    CREATE TABLE kv (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    -- A chain started within its limits, counted over every process, in one round trip: under
    -- the asker's and the thread's advisory locks (held to the end of the transaction); the
    -- count is a statement of its own, so its snapshot is taken once both locks are held and
    -- sees every chain committed before.
    CREATE FUNCTION ponder_start_chain(
        p_id TEXT, p_platform TEXT, p_workspace TEXT, p_channel TEXT, p_thread TEXT,
        p_asker TEXT, p_question TEXT, p_mode TEXT, p_status TEXT,
        p_started_at DOUBLE PRECISION, p_handles TEXT, p_history TEXT, p_language TEXT,
        p_anchor TEXT, p_owner TEXT, p_seconds DOUBLE PRECISION, p_limit BIGINT,
        OUT asker_running BIGINT, OUT thread_running BIGINT, OUT added BOOLEAN)
    LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        now_s DOUBLE PRECISION;
    BEGIN
        PERFORM pg_advisory_xact_lock(7202, hashtext(p_platform || ':' || p_asker)),
                pg_advisory_xact_lock(7203, hashtext(p_platform || ':' || p_thread));
        now_s := extract(epoch from clock_timestamp());
        SELECT count(*) FILTER (WHERE c.asker = p_asker),
               count(*) FILTER (WHERE c.thread = p_thread AND p_thread <> '')
          INTO asker_running, thread_running
          FROM chains c
         WHERE c.status = 'running' AND c.platform = p_platform AND c.lease_until > now_s
           AND (c.asker = p_asker OR c.thread = p_thread);
        added := thread_running = 0 AND asker_running < p_limit;
        IF added THEN
            INSERT INTO chains (id, platform, workspace, channel, thread, asker, question, mode,
                                status, started_at, handles, history, language, anchor,
                                lease_owner, lease_until)
            VALUES (p_id, p_platform, p_workspace, p_channel, p_thread, p_asker, p_question,
                    p_mode, p_status, p_started_at, p_handles, p_history, p_language, p_anchor,
                    p_owner, now_s + p_seconds);
        END IF;
    END
    $$;
    """,
    # Feedback on answers, as SQLite's v4.
    """
    CREATE TABLE feedback (
        chain_id TEXT NOT NULL REFERENCES chains (id) ON DELETE CASCADE,
        voter TEXT NOT NULL,
        platform TEXT NOT NULL,
        vote TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (chain_id, voter)
    );
    CREATE INDEX feedback_voter ON feedback (voter);
    CREATE INDEX chains_started ON chains (started_at);
    """,
    # Installs by OAuth, as SQLite's v5.
    """
    CREATE TABLE installations (
        platform TEXT NOT NULL,
        workspace TEXT NOT NULL,
        data TEXT NOT NULL,
        installed_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (platform, workspace)
    );
    CREATE TABLE oauth_states (
        state TEXT PRIMARY KEY,
        expires_at DOUBLE PRECISION NOT NULL
    );
    """,
    # Admission counted over every process, before the front door answers (so a refusal is
    # shown as privately as any other): each admitted question is a row (its id becomes the
    # chain's); a held one counts as a chain of its asker (and its thread's) until its chain
    # starts (`ponder_start_chain` lets go of it in the same transaction) or it is given up,
    # or its process dies (its lease, renewed with the chains'); every row counts against
    # PONDER_USER_RATE while it is inside the rate window. `ponder_busy` is the one count
    # both functions make; thread-less questions take no thread lock.
    """
    CREATE TABLE admissions (
        id TEXT PRIMARY KEY,
        platform TEXT NOT NULL,
        asker TEXT NOT NULL,
        thread TEXT NOT NULL DEFAULT '',
        admitted_at DOUBLE PRECISION NOT NULL,
        held BOOLEAN NOT NULL DEFAULT TRUE,
        lease_owner TEXT NOT NULL,
        lease_until DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX admissions_asker ON admissions (platform, asker, admitted_at);
    CREATE INDEX admissions_thread ON admissions (platform, thread) WHERE held;
    CREATE INDEX admissions_owner ON admissions (lease_owner) WHERE held;
    CREATE FUNCTION ponder_busy(
        p_platform TEXT, p_asker TEXT, p_thread TEXT, p_except TEXT, now_s DOUBLE PRECISION,
        OUT asker_running BIGINT, OUT thread_running BIGINT)
    LANGUAGE sql STABLE AS $$
        SELECT count(*) FILTER (WHERE b.asker = p_asker),
               count(*) FILTER (WHERE b.thread = p_thread AND p_thread <> '')
          FROM (SELECT c.asker, c.thread FROM chains c
                 WHERE c.status = 'running' AND c.platform = p_platform
                   AND c.lease_until > now_s AND c.id <> p_except
                   AND (c.asker = p_asker OR (p_thread <> '' AND c.thread = p_thread))
                UNION ALL
                SELECT a.asker, a.thread FROM admissions a
                 WHERE a.held AND a.platform = p_platform
                   AND a.lease_until > now_s AND a.id <> p_except
                   AND (a.asker = p_asker OR (p_thread <> '' AND a.thread = p_thread))) b
    $$;
    CREATE FUNCTION ponder_admit(
        p_id TEXT, p_platform TEXT, p_asker TEXT, p_thread TEXT, p_owner TEXT,
        p_seconds DOUBLE PRECISION, p_limit BIGINT, p_rate BIGINT, p_window DOUBLE PRECISION,
        OUT asker_running BIGINT, OUT thread_running BIGINT, OUT recent BIGINT,
        OUT oldest_age DOUBLE PRECISION, OUT added BOOLEAN)
    LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        now_s DOUBLE PRECISION;
    BEGIN
        PERFORM pg_advisory_xact_lock(7202, hashtext(p_platform || ':' || p_asker));
        IF p_thread <> '' THEN
            PERFORM pg_advisory_xact_lock(7203, hashtext(p_platform || ':' || p_thread));
        END IF;
        now_s := extract(epoch from clock_timestamp());
        -- The asker's questions that have left the window go as new ones come.
        DELETE FROM admissions
         WHERE platform = p_platform AND asker = p_asker AND admitted_at <= now_s - p_window
           AND (NOT held OR lease_until <= now_s);
        SELECT b.asker_running, b.thread_running INTO asker_running, thread_running
          FROM ponder_busy(p_platform, p_asker, p_thread, p_id, now_s) b;
        SELECT count(*), coalesce(now_s - min(a.admitted_at), 0) INTO recent, oldest_age
          FROM admissions a
         WHERE a.platform = p_platform AND a.asker = p_asker
           AND a.admitted_at > now_s - p_window AND a.id <> p_id;
        added := thread_running = 0 AND asker_running < p_limit AND recent < p_rate;
        IF added THEN
            INSERT INTO admissions (id, platform, asker, thread, admitted_at, held,
                                    lease_owner, lease_until)
            VALUES (p_id, p_platform, p_asker, p_thread, now_s, TRUE, p_owner,
                    now_s + p_seconds)
            ON CONFLICT (id) DO UPDATE SET held = TRUE, lease_owner = EXCLUDED.lease_owner,
                lease_until = EXCLUDED.lease_until;
        END IF;
    END
    $$;
    CREATE OR REPLACE FUNCTION ponder_start_chain(
        p_id TEXT, p_platform TEXT, p_workspace TEXT, p_channel TEXT, p_thread TEXT,
        p_asker TEXT, p_question TEXT, p_mode TEXT, p_status TEXT,
        p_started_at DOUBLE PRECISION, p_handles TEXT, p_history TEXT, p_language TEXT,
        p_anchor TEXT, p_owner TEXT, p_seconds DOUBLE PRECISION, p_limit BIGINT,
        OUT asker_running BIGINT, OUT thread_running BIGINT, OUT added BOOLEAN)
    LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        now_s DOUBLE PRECISION;
    BEGIN
        PERFORM pg_advisory_xact_lock(7202, hashtext(p_platform || ':' || p_asker));
        IF p_thread <> '' THEN
            PERFORM pg_advisory_xact_lock(7203, hashtext(p_platform || ':' || p_thread));
        END IF;
        now_s := extract(epoch from clock_timestamp());
        SELECT b.asker_running, b.thread_running INTO asker_running, thread_running
          FROM ponder_busy(p_platform, p_asker, p_thread, p_id, now_s) b;
        added := thread_running = 0 AND asker_running < p_limit;
        IF added THEN
            INSERT INTO chains (id, platform, workspace, channel, thread, asker, question, mode,
                                status, started_at, handles, history, language, anchor,
                                lease_owner, lease_until)
            VALUES (p_id, p_platform, p_workspace, p_channel, p_thread, p_asker, p_question,
                    p_mode, p_status, p_started_at, p_handles, p_history, p_language, p_anchor,
                    p_owner, now_s + p_seconds);
            UPDATE admissions SET held = FALSE WHERE id = p_id;
        END IF;
    END
    $$;
    """,
)
