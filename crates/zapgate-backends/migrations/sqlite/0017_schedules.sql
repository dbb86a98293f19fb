-- Audiences (a tenant's recipients with their variables and dates),
-- recurring schedules over them, and the runs the schedules made.
CREATE TABLE audiences (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX audiences_tenant ON audiences(tenant_id, id);

CREATE TABLE audience_members (
    audience_id  TEXT NOT NULL,
    recipient    TEXT NOT NULL,   -- ChatId, canonical
    variables    TEXT NOT NULL,   -- JSON object of strings
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (audience_id, recipient)
) WITHOUT ROWID;

CREATE TABLE schedules (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    name          TEXT NOT NULL,
    instance_id   TEXT NOT NULL,
    audience_id   TEXT NOT NULL,
    template_id   TEXT NOT NULL,
    cron          TEXT NOT NULL,
    time_zone     TEXT NOT NULL,
    date_field    TEXT,
    offsets_days  TEXT NOT NULL,   -- JSON array of day offsets
    priority      INTEGER NOT NULL,
    enabled       INTEGER NOT NULL,
    next_run_at   INTEGER,         -- the next occurrence; NULL once it never fires again
    last_run_at   INTEGER,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX schedules_tenant ON schedules(tenant_id, id);
CREATE INDEX schedules_audience ON schedules(audience_id);
CREATE INDEX schedules_due ON schedules(next_run_at) WHERE enabled;

-- One row per occurrence a scheduler started: the key makes a run once
-- however many schedulers saw it due. A running run is leased by the
-- scheduler sending it and resumes at its cursor after a crash.
CREATE TABLE schedule_runs (
    schedule_id  TEXT NOT NULL,
    occurrence   INTEGER NOT NULL,
    tenant_id    TEXT NOT NULL,
    run_date     TEXT NOT NULL,   -- the occurrence's date in the schedule's time zone
    missed       INTEGER NOT NULL,
    status       TEXT NOT NULL,   -- running | done | failed
    cursor       TEXT,            -- the last audience member done
    accepted     INTEGER NOT NULL DEFAULT 0,
    skipped      INTEGER NOT NULL DEFAULT 0,
    error        TEXT,
    lease_until  INTEGER NOT NULL DEFAULT 0,
    lease_owner  TEXT,            -- the scheduler sending it
    created_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    PRIMARY KEY (schedule_id, occurrence)
) WITHOUT ROWID;
CREATE INDEX schedule_runs_open ON schedule_runs(lease_until) WHERE status = 'running';
