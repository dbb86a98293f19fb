-- Provider circuits that are not closed, as each worker process last
-- reported them (circuits live in each process's memory). A process rewrites
-- its rows about every second while any is open; readers take only fresh
-- rows, so a process that died stops counting.
CREATE TABLE provider_circuits (
    reporter     TEXT NOT NULL,     -- the process
    endpoint     TEXT NOT NULL,     -- "{kind} {origin}" (see Provider::endpoint)
    provider     TEXT NOT NULL,     -- the kind
    state        TEXT NOT NULL,     -- open | half_open
    since        INTEGER NOT NULL,  -- when that process saw it leave closed
    reported_at  INTEGER NOT NULL,
    PRIMARY KEY (reporter, endpoint)
);
