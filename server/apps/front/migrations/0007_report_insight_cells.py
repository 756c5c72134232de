"""Cells for issue 14's sections: the all-time report reads them instead of scanning ab_sessions.

Three count tables kept by the ab_sessions triggers like 0003's (report/rollup.py: CELL_TABLES, cells_from):
ab_report_survival (variant, completed, whole seconds to completion or censoring: sessions), ab_report_daily
(variant, UTC day of entry: assigned, completed) and ab_report_loss (variant: the event-loss guard's sums).
The four ab_sessions trigger functions are re-installed with the new tables in their body: a frozen copy of
report/rollup.py's function_bodies() at the time of this migration (tests/report/test_rollup.py checks the
installed bodies equal the code's). The new cells are filled from the existing ab_sessions rows in the same
transaction, under the rollup's advisory lock and a lock on ab_sessions that holds off every writer's trigger
meanwhile, so no change slips between the fill and the new bodies. The index on the entry time that the
report reads the latest sessions by (ab_sessions_entered_at) is 0003's.
"""

from django.db import migrations

INSTALL_SQL = r'''
SELECT pg_advisory_xact_lock(27411234838377331);
LOCK TABLE ab_sessions IN SHARE ROW EXCLUSIVE MODE;
CREATE TABLE IF NOT EXISTS ab_report_survival (
    variant text NOT NULL, done boolean NOT NULL, seconds bigint NOT NULL, sessions bigint NOT NULL,
    PRIMARY KEY (variant, done, seconds)
);
CREATE TABLE IF NOT EXISTS ab_report_daily (
    variant text NOT NULL, day date NOT NULL, assigned bigint NOT NULL, completed bigint NOT NULL,
    PRIMARY KEY (variant, day)
);
CREATE TABLE IF NOT EXISTS ab_report_loss (
    variant text NOT NULL PRIMARY KEY,
    sessions bigint NOT NULL, stored bigint NOT NULL, n bigint NOT NULL, lost bigint NOT NULL,
    expected bigint NOT NULL, lost_sq numeric NOT NULL, expected_sq numeric NOT NULL, lost_expected numeric NOT NULL
);
CREATE OR REPLACE FUNCTION ab_report_on_session_insert() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    WITH nc AS MATERIALIZED (SELECT s.*, CASE WHEN s.min_variant <> s.max_variant THEN 'contaminated'
                     WHEN s.variant IS NULL THEN 'unassigned' ELSE 'analysed' END AS status
        FROM new_sessions AS s),
    ns AS MATERIALIZED (SELECT c.variant, u.key::integer AS step, u.value::double precision AS ms
        FROM nc AS c CROSS JOIN LATERAL jsonb_each_text(c.step_ms) AS u
        WHERE c.status = 'analysed'),
    nt AS MATERIALIZED (SELECT c.variant,
            (SELECT sum(u.value::numeric) FROM jsonb_each_text(c.step_ms) AS u)::double precision AS total_ms
        FROM nc AS c
        WHERE c.status = 'analysed' AND c.completed AND c.step_ms IS NOT NULL),
    u0 AS (INSERT INTO ab_report_funnel AS t (status, variant, max_step, abandoned_step, min_step, sessions, events, started, completed, abandoned)
    SELECT status, variant, max_step, abandoned_step, min_step, sum(sessions * sign)::bigint AS sessions, sum(events * sign)::bigint AS events, sum(started * sign)::bigint AS started, sum(completed * sign)::bigint AS completed, sum(abandoned * sign)::bigint AS abandoned FROM (SELECT *, 1 AS sign FROM (SELECT c.status, coalesce(c.variant, '') AS variant,
            coalesce(c.max_step, -1) AS max_step, coalesce(c.abandoned_step, -1) AS abandoned_step,
            coalesce(c.min_step, -1) AS min_step,
            count(*) AS sessions, sum(c.events)::bigint AS events, count(*) FILTER (WHERE c.started) AS started,
            count(*) FILTER (WHERE c.completed) AS completed, count(*) FILTER (WHERE c.abandoned) AS abandoned
            FROM nc AS c GROUP BY 1, 2, 3, 4, 5) AS x) AS d
    GROUP BY status, variant, max_step, abandoned_step, min_step HAVING sum(sessions * sign) <> 0 OR sum(events * sign) <> 0 OR sum(started * sign) <> 0 OR sum(completed * sign) <> 0 OR sum(abandoned * sign) <> 0
    ON CONFLICT (status, variant, max_step, abandoned_step, min_step) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions, events = t.events + EXCLUDED.events, started = t.started + EXCLUDED.started, completed = t.completed + EXCLUDED.completed, abandoned = t.abandoned + EXCLUDED.abandoned),
    u1 AS (INSERT INTO ab_report_step_values AS t (step, bucket, ms, variant, sessions)
    SELECT step, bucket, ms, variant, sum(sessions * sign)::bigint AS sessions FROM (SELECT *, 1 AS sign FROM (SELECT t.step, floor(ln(t.ms + 1) * 20)::integer AS bucket, t.ms, t.variant,
            count(*) AS sessions FROM ns AS t GROUP BY 1, 2, 3, 4) AS x) AS d
    GROUP BY step, bucket, ms, variant HAVING sum(sessions * sign) <> 0
    ON CONFLICT (step, bucket, ms, variant) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions),
    u2 AS (INSERT INTO ab_report_step_buckets AS t (variant, step, bucket, sessions, sum_ms)
    SELECT variant, step, bucket, sum(sessions * sign)::bigint AS sessions, sum(sum_ms * sign) AS sum_ms FROM (SELECT *, 1 AS sign FROM (SELECT t.variant, t.step, floor(ln(t.ms + 1) * 20)::integer AS bucket,
            count(*) AS sessions, sum(t.ms::numeric) AS sum_ms FROM ns AS t GROUP BY 1, 2, 3) AS x) AS d
    GROUP BY variant, step, bucket HAVING sum(sessions * sign) <> 0 OR sum(sum_ms * sign) <> 0
    ON CONFLICT (variant, step, bucket) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions, sum_ms = t.sum_ms + EXCLUDED.sum_ms),
    u3 AS (INSERT INTO ab_report_total_values AS t (bucket, total_ms, variant, sessions)
    SELECT bucket, total_ms, variant, sum(sessions * sign)::bigint AS sessions FROM (SELECT *, 1 AS sign FROM (SELECT floor(ln(t.total_ms + 1) * 20)::integer AS bucket, t.total_ms, t.variant,
            count(*) AS sessions FROM nt AS t GROUP BY 1, 2, 3) AS x) AS d
    GROUP BY bucket, total_ms, variant HAVING sum(sessions * sign) <> 0
    ON CONFLICT (bucket, total_ms, variant) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions),
    u4 AS (INSERT INTO ab_report_total_buckets AS t (variant, bucket, sessions, sum_ms, sum_sq)
    SELECT variant, bucket, sum(sessions * sign)::bigint AS sessions, sum(sum_ms * sign) AS sum_ms, sum(sum_sq * sign) AS sum_sq FROM (SELECT *, 1 AS sign FROM (SELECT t.variant, floor(ln(t.total_ms + 1) * 20)::integer AS bucket,
            count(*) AS sessions, sum(t.total_ms::numeric) AS sum_ms, sum(t.total_ms::numeric ^ 2) AS sum_sq
            FROM nt AS t GROUP BY 1, 2) AS x) AS d
    GROUP BY variant, bucket HAVING sum(sessions * sign) <> 0 OR sum(sum_ms * sign) <> 0 OR sum(sum_sq * sign) <> 0
    ON CONFLICT (variant, bucket) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions, sum_ms = t.sum_ms + EXCLUDED.sum_ms, sum_sq = t.sum_sq + EXCLUDED.sum_sq),
    u5 AS (INSERT INTO ab_report_survival AS t (variant, done, seconds, sessions)
    SELECT variant, done, seconds, sum(sessions * sign)::bigint AS sessions FROM (SELECT *, 1 AS sign FROM (SELECT c.variant, (c.completed AND c.completed_at IS NOT NULL) AS done, ceil(greatest(extract(epoch FROM
    CASE WHEN (c.completed AND c.completed_at IS NOT NULL) THEN c.completed_at ELSE c.last_event_at END - COALESCE(c.assigned_at, c.first_event_at)), 0))::bigint AS seconds,
            count(*) AS sessions FROM nc AS c WHERE c.status = 'analysed' GROUP BY 1, 2, 3) AS x) AS d
    GROUP BY variant, done, seconds HAVING sum(sessions * sign) <> 0
    ON CONFLICT (variant, done, seconds) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions),
    u6 AS (INSERT INTO ab_report_daily AS t (variant, day, assigned, completed)
    SELECT variant, day, sum(assigned * sign)::bigint AS assigned, sum(completed * sign)::bigint AS completed FROM (SELECT *, 1 AS sign FROM (SELECT c.variant, (COALESCE(c.assigned_at, c.first_event_at) AT TIME ZONE 'UTC')::date AS day,
            count(*) AS assigned, count(*) FILTER (WHERE c.completed) AS completed
            FROM nc AS c WHERE c.status = 'analysed' GROUP BY 1, 2) AS x) AS d
    GROUP BY variant, day HAVING sum(assigned * sign) <> 0 OR sum(completed * sign) <> 0
    ON CONFLICT (variant, day) DO UPDATE SET assigned = t.assigned + EXCLUDED.assigned, completed = t.completed + EXCLUDED.completed)
    INSERT INTO ab_report_loss AS t (variant, sessions, stored, n, lost, expected, lost_sq, expected_sq, lost_expected)
    SELECT variant, sum(sessions * sign)::bigint AS sessions, sum(stored * sign)::bigint AS stored, sum(n * sign)::bigint AS n, sum(lost * sign)::bigint AS lost, sum(expected * sign)::bigint AS expected, sum(lost_sq * sign) AS lost_sq, sum(expected_sq * sign) AS expected_sq, sum(lost_expected * sign) AS lost_expected FROM (SELECT *, 1 AS sign FROM (SELECT c.variant, count(*) AS sessions, sum(c.events)::bigint AS stored,
            count(c.seq_max) AS n, coalesce(sum(greatest(c.seq_max - c.seq_events, 0)::bigint), 0)::bigint AS lost,
            coalesce(sum(c.seq_max), 0)::bigint AS expected,
            coalesce(sum(greatest(c.seq_max - c.seq_events, 0)::bigint::numeric * greatest(c.seq_max - c.seq_events, 0)::bigint), 0) AS lost_sq,
            coalesce(sum(c.seq_max::numeric * c.seq_max), 0) AS expected_sq,
            coalesce(sum(greatest(c.seq_max - c.seq_events, 0)::bigint::numeric * c.seq_max), 0) AS lost_expected
            FROM nc AS c WHERE c.status = 'analysed' GROUP BY 1) AS x) AS d
    GROUP BY variant HAVING sum(sessions * sign) <> 0 OR sum(stored * sign) <> 0 OR sum(n * sign) <> 0 OR sum(lost * sign) <> 0 OR sum(expected * sign) <> 0 OR sum(lost_sq * sign) <> 0 OR sum(expected_sq * sign) <> 0 OR sum(lost_expected * sign) <> 0
    ON CONFLICT (variant) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions, stored = t.stored + EXCLUDED.stored, n = t.n + EXCLUDED.n, lost = t.lost + EXCLUDED.lost, expected = t.expected + EXCLUDED.expected, lost_sq = t.lost_sq + EXCLUDED.lost_sq, expected_sq = t.expected_sq + EXCLUDED.expected_sq, lost_expected = t.lost_expected + EXCLUDED.lost_expected;
    RETURN NULL;
END
$body$;
CREATE OR REPLACE FUNCTION ab_report_on_session_update() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    WITH nc AS MATERIALIZED (SELECT s.*, CASE WHEN s.min_variant <> s.max_variant THEN 'contaminated'
                     WHEN s.variant IS NULL THEN 'unassigned' ELSE 'analysed' END AS status
        FROM new_sessions AS s),
    ns AS MATERIALIZED (SELECT c.variant, u.key::integer AS step, u.value::double precision AS ms
        FROM nc AS c CROSS JOIN LATERAL jsonb_each_text(c.step_ms) AS u
        WHERE c.status = 'analysed'),
    nt AS MATERIALIZED (SELECT c.variant,
            (SELECT sum(u.value::numeric) FROM jsonb_each_text(c.step_ms) AS u)::double precision AS total_ms
        FROM nc AS c
        WHERE c.status = 'analysed' AND c.completed AND c.step_ms IS NOT NULL),
    oc AS MATERIALIZED (SELECT s.*, CASE WHEN s.min_variant <> s.max_variant THEN 'contaminated'
                     WHEN s.variant IS NULL THEN 'unassigned' ELSE 'analysed' END AS status
        FROM old_sessions AS s),
    os AS MATERIALIZED (SELECT c.variant, u.key::integer AS step, u.value::double precision AS ms
        FROM oc AS c CROSS JOIN LATERAL jsonb_each_text(c.step_ms) AS u
        WHERE c.status = 'analysed'),
    ot AS MATERIALIZED (SELECT c.variant,
            (SELECT sum(u.value::numeric) FROM jsonb_each_text(c.step_ms) AS u)::double precision AS total_ms
        FROM oc AS c
        WHERE c.status = 'analysed' AND c.completed AND c.step_ms IS NOT NULL),
    u0 AS (INSERT INTO ab_report_funnel AS t (status, variant, max_step, abandoned_step, min_step, sessions, events, started, completed, abandoned)
    SELECT status, variant, max_step, abandoned_step, min_step, sum(sessions * sign)::bigint AS sessions, sum(events * sign)::bigint AS events, sum(started * sign)::bigint AS started, sum(completed * sign)::bigint AS completed, sum(abandoned * sign)::bigint AS abandoned FROM (SELECT *, 1 AS sign FROM (SELECT c.status, coalesce(c.variant, '') AS variant,
            coalesce(c.max_step, -1) AS max_step, coalesce(c.abandoned_step, -1) AS abandoned_step,
            coalesce(c.min_step, -1) AS min_step,
            count(*) AS sessions, sum(c.events)::bigint AS events, count(*) FILTER (WHERE c.started) AS started,
            count(*) FILTER (WHERE c.completed) AS completed, count(*) FILTER (WHERE c.abandoned) AS abandoned
            FROM nc AS c GROUP BY 1, 2, 3, 4, 5) AS x UNION ALL SELECT *, -1 AS sign FROM (SELECT c.status, coalesce(c.variant, '') AS variant,
            coalesce(c.max_step, -1) AS max_step, coalesce(c.abandoned_step, -1) AS abandoned_step,
            coalesce(c.min_step, -1) AS min_step,
            count(*) AS sessions, sum(c.events)::bigint AS events, count(*) FILTER (WHERE c.started) AS started,
            count(*) FILTER (WHERE c.completed) AS completed, count(*) FILTER (WHERE c.abandoned) AS abandoned
            FROM oc AS c GROUP BY 1, 2, 3, 4, 5) AS x) AS d
    GROUP BY status, variant, max_step, abandoned_step, min_step HAVING sum(sessions * sign) <> 0 OR sum(events * sign) <> 0 OR sum(started * sign) <> 0 OR sum(completed * sign) <> 0 OR sum(abandoned * sign) <> 0
    ON CONFLICT (status, variant, max_step, abandoned_step, min_step) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions, events = t.events + EXCLUDED.events, started = t.started + EXCLUDED.started, completed = t.completed + EXCLUDED.completed, abandoned = t.abandoned + EXCLUDED.abandoned),
    u1 AS (INSERT INTO ab_report_step_values AS t (step, bucket, ms, variant, sessions)
    SELECT step, bucket, ms, variant, sum(sessions * sign)::bigint AS sessions FROM (SELECT *, 1 AS sign FROM (SELECT t.step, floor(ln(t.ms + 1) * 20)::integer AS bucket, t.ms, t.variant,
            count(*) AS sessions FROM ns AS t GROUP BY 1, 2, 3, 4) AS x UNION ALL SELECT *, -1 AS sign FROM (SELECT t.step, floor(ln(t.ms + 1) * 20)::integer AS bucket, t.ms, t.variant,
            count(*) AS sessions FROM os AS t GROUP BY 1, 2, 3, 4) AS x) AS d
    GROUP BY step, bucket, ms, variant HAVING sum(sessions * sign) <> 0
    ON CONFLICT (step, bucket, ms, variant) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions),
    u2 AS (INSERT INTO ab_report_step_buckets AS t (variant, step, bucket, sessions, sum_ms)
    SELECT variant, step, bucket, sum(sessions * sign)::bigint AS sessions, sum(sum_ms * sign) AS sum_ms FROM (SELECT *, 1 AS sign FROM (SELECT t.variant, t.step, floor(ln(t.ms + 1) * 20)::integer AS bucket,
            count(*) AS sessions, sum(t.ms::numeric) AS sum_ms FROM ns AS t GROUP BY 1, 2, 3) AS x UNION ALL SELECT *, -1 AS sign FROM (SELECT t.variant, t.step, floor(ln(t.ms + 1) * 20)::integer AS bucket,
            count(*) AS sessions, sum(t.ms::numeric) AS sum_ms FROM os AS t GROUP BY 1, 2, 3) AS x) AS d
    GROUP BY variant, step, bucket HAVING sum(sessions * sign) <> 0 OR sum(sum_ms * sign) <> 0
    ON CONFLICT (variant, step, bucket) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions, sum_ms = t.sum_ms + EXCLUDED.sum_ms),
    u3 AS (INSERT INTO ab_report_total_values AS t (bucket, total_ms, variant, sessions)
    SELECT bucket, total_ms, variant, sum(sessions * sign)::bigint AS sessions FROM (SELECT *, 1 AS sign FROM (SELECT floor(ln(t.total_ms + 1) * 20)::integer AS bucket, t.total_ms, t.variant,
            count(*) AS sessions FROM nt AS t GROUP BY 1, 2, 3) AS x UNION ALL SELECT *, -1 AS sign FROM (SELECT floor(ln(t.total_ms + 1) * 20)::integer AS bucket, t.total_ms, t.variant,
            count(*) AS sessions FROM ot AS t GROUP BY 1, 2, 3) AS x) AS d
    GROUP BY bucket, total_ms, variant HAVING sum(sessions * sign) <> 0
    ON CONFLICT (bucket, total_ms, variant) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions),
    u4 AS (INSERT INTO ab_report_total_buckets AS t (variant, bucket, sessions, sum_ms, sum_sq)
    SELECT variant, bucket, sum(sessions * sign)::bigint AS sessions, sum(sum_ms * sign) AS sum_ms, sum(sum_sq * sign) AS sum_sq FROM (SELECT *, 1 AS sign FROM (SELECT t.variant, floor(ln(t.total_ms + 1) * 20)::integer AS bucket,
            count(*) AS sessions, sum(t.total_ms::numeric) AS sum_ms, sum(t.total_ms::numeric ^ 2) AS sum_sq
            FROM nt AS t GROUP BY 1, 2) AS x UNION ALL SELECT *, -1 AS sign FROM (SELECT t.variant, floor(ln(t.total_ms + 1) * 20)::integer AS bucket,
            count(*) AS sessions, sum(t.total_ms::numeric) AS sum_ms, sum(t.total_ms::numeric ^ 2) AS sum_sq
            FROM ot AS t GROUP BY 1, 2) AS x) AS d
    GROUP BY variant, bucket HAVING sum(sessions * sign) <> 0 OR sum(sum_ms * sign) <> 0 OR sum(sum_sq * sign) <> 0
    ON CONFLICT (variant, bucket) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions, sum_ms = t.sum_ms + EXCLUDED.sum_ms, sum_sq = t.sum_sq + EXCLUDED.sum_sq),
    u5 AS (INSERT INTO ab_report_survival AS t (variant, done, seconds, sessions)
    SELECT variant, done, seconds, sum(sessions * sign)::bigint AS sessions FROM (SELECT *, 1 AS sign FROM (SELECT c.variant, (c.completed AND c.completed_at IS NOT NULL) AS done, ceil(greatest(extract(epoch FROM
    CASE WHEN (c.completed AND c.completed_at IS NOT NULL) THEN c.completed_at ELSE c.last_event_at END - COALESCE(c.assigned_at, c.first_event_at)), 0))::bigint AS seconds,
            count(*) AS sessions FROM nc AS c WHERE c.status = 'analysed' GROUP BY 1, 2, 3) AS x UNION ALL SELECT *, -1 AS sign FROM (SELECT c.variant, (c.completed AND c.completed_at IS NOT NULL) AS done, ceil(greatest(extract(epoch FROM
    CASE WHEN (c.completed AND c.completed_at IS NOT NULL) THEN c.completed_at ELSE c.last_event_at END - COALESCE(c.assigned_at, c.first_event_at)), 0))::bigint AS seconds,
            count(*) AS sessions FROM oc AS c WHERE c.status = 'analysed' GROUP BY 1, 2, 3) AS x) AS d
    GROUP BY variant, done, seconds HAVING sum(sessions * sign) <> 0
    ON CONFLICT (variant, done, seconds) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions),
    u6 AS (INSERT INTO ab_report_daily AS t (variant, day, assigned, completed)
    SELECT variant, day, sum(assigned * sign)::bigint AS assigned, sum(completed * sign)::bigint AS completed FROM (SELECT *, 1 AS sign FROM (SELECT c.variant, (COALESCE(c.assigned_at, c.first_event_at) AT TIME ZONE 'UTC')::date AS day,
            count(*) AS assigned, count(*) FILTER (WHERE c.completed) AS completed
            FROM nc AS c WHERE c.status = 'analysed' GROUP BY 1, 2) AS x UNION ALL SELECT *, -1 AS sign FROM (SELECT c.variant, (COALESCE(c.assigned_at, c.first_event_at) AT TIME ZONE 'UTC')::date AS day,
            count(*) AS assigned, count(*) FILTER (WHERE c.completed) AS completed
            FROM oc AS c WHERE c.status = 'analysed' GROUP BY 1, 2) AS x) AS d
    GROUP BY variant, day HAVING sum(assigned * sign) <> 0 OR sum(completed * sign) <> 0
    ON CONFLICT (variant, day) DO UPDATE SET assigned = t.assigned + EXCLUDED.assigned, completed = t.completed + EXCLUDED.completed)
    INSERT INTO ab_report_loss AS t (variant, sessions, stored, n, lost, expected, lost_sq, expected_sq, lost_expected)
    SELECT variant, sum(sessions * sign)::bigint AS sessions, sum(stored * sign)::bigint AS stored, sum(n * sign)::bigint AS n, sum(lost * sign)::bigint AS lost, sum(expected * sign)::bigint AS expected, sum(lost_sq * sign) AS lost_sq, sum(expected_sq * sign) AS expected_sq, sum(lost_expected * sign) AS lost_expected FROM (SELECT *, 1 AS sign FROM (SELECT c.variant, count(*) AS sessions, sum(c.events)::bigint AS stored,
            count(c.seq_max) AS n, coalesce(sum(greatest(c.seq_max - c.seq_events, 0)::bigint), 0)::bigint AS lost,
            coalesce(sum(c.seq_max), 0)::bigint AS expected,
            coalesce(sum(greatest(c.seq_max - c.seq_events, 0)::bigint::numeric * greatest(c.seq_max - c.seq_events, 0)::bigint), 0) AS lost_sq,
            coalesce(sum(c.seq_max::numeric * c.seq_max), 0) AS expected_sq,
            coalesce(sum(greatest(c.seq_max - c.seq_events, 0)::bigint::numeric * c.seq_max), 0) AS lost_expected
            FROM nc AS c WHERE c.status = 'analysed' GROUP BY 1) AS x UNION ALL SELECT *, -1 AS sign FROM (SELECT c.variant, count(*) AS sessions, sum(c.events)::bigint AS stored,
            count(c.seq_max) AS n, coalesce(sum(greatest(c.seq_max - c.seq_events, 0)::bigint), 0)::bigint AS lost,
            coalesce(sum(c.seq_max), 0)::bigint AS expected,
            coalesce(sum(greatest(c.seq_max - c.seq_events, 0)::bigint::numeric * greatest(c.seq_max - c.seq_events, 0)::bigint), 0) AS lost_sq,
            coalesce(sum(c.seq_max::numeric * c.seq_max), 0) AS expected_sq,
            coalesce(sum(greatest(c.seq_max - c.seq_events, 0)::bigint::numeric * c.seq_max), 0) AS lost_expected
            FROM oc AS c WHERE c.status = 'analysed' GROUP BY 1) AS x) AS d
    GROUP BY variant HAVING sum(sessions * sign) <> 0 OR sum(stored * sign) <> 0 OR sum(n * sign) <> 0 OR sum(lost * sign) <> 0 OR sum(expected * sign) <> 0 OR sum(lost_sq * sign) <> 0 OR sum(expected_sq * sign) <> 0 OR sum(lost_expected * sign) <> 0
    ON CONFLICT (variant) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions, stored = t.stored + EXCLUDED.stored, n = t.n + EXCLUDED.n, lost = t.lost + EXCLUDED.lost, expected = t.expected + EXCLUDED.expected, lost_sq = t.lost_sq + EXCLUDED.lost_sq, expected_sq = t.expected_sq + EXCLUDED.expected_sq, lost_expected = t.lost_expected + EXCLUDED.lost_expected;
    RETURN NULL;
END
$body$;
CREATE OR REPLACE FUNCTION ab_report_on_session_delete() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    WITH oc AS MATERIALIZED (SELECT s.*, CASE WHEN s.min_variant <> s.max_variant THEN 'contaminated'
                     WHEN s.variant IS NULL THEN 'unassigned' ELSE 'analysed' END AS status
        FROM old_sessions AS s),
    os AS MATERIALIZED (SELECT c.variant, u.key::integer AS step, u.value::double precision AS ms
        FROM oc AS c CROSS JOIN LATERAL jsonb_each_text(c.step_ms) AS u
        WHERE c.status = 'analysed'),
    ot AS MATERIALIZED (SELECT c.variant,
            (SELECT sum(u.value::numeric) FROM jsonb_each_text(c.step_ms) AS u)::double precision AS total_ms
        FROM oc AS c
        WHERE c.status = 'analysed' AND c.completed AND c.step_ms IS NOT NULL),
    u0 AS (INSERT INTO ab_report_funnel AS t (status, variant, max_step, abandoned_step, min_step, sessions, events, started, completed, abandoned)
    SELECT status, variant, max_step, abandoned_step, min_step, sum(sessions * sign)::bigint AS sessions, sum(events * sign)::bigint AS events, sum(started * sign)::bigint AS started, sum(completed * sign)::bigint AS completed, sum(abandoned * sign)::bigint AS abandoned FROM (SELECT *, -1 AS sign FROM (SELECT c.status, coalesce(c.variant, '') AS variant,
            coalesce(c.max_step, -1) AS max_step, coalesce(c.abandoned_step, -1) AS abandoned_step,
            coalesce(c.min_step, -1) AS min_step,
            count(*) AS sessions, sum(c.events)::bigint AS events, count(*) FILTER (WHERE c.started) AS started,
            count(*) FILTER (WHERE c.completed) AS completed, count(*) FILTER (WHERE c.abandoned) AS abandoned
            FROM oc AS c GROUP BY 1, 2, 3, 4, 5) AS x) AS d
    GROUP BY status, variant, max_step, abandoned_step, min_step HAVING sum(sessions * sign) <> 0 OR sum(events * sign) <> 0 OR sum(started * sign) <> 0 OR sum(completed * sign) <> 0 OR sum(abandoned * sign) <> 0
    ON CONFLICT (status, variant, max_step, abandoned_step, min_step) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions, events = t.events + EXCLUDED.events, started = t.started + EXCLUDED.started, completed = t.completed + EXCLUDED.completed, abandoned = t.abandoned + EXCLUDED.abandoned),
    u1 AS (INSERT INTO ab_report_step_values AS t (step, bucket, ms, variant, sessions)
    SELECT step, bucket, ms, variant, sum(sessions * sign)::bigint AS sessions FROM (SELECT *, -1 AS sign FROM (SELECT t.step, floor(ln(t.ms + 1) * 20)::integer AS bucket, t.ms, t.variant,
            count(*) AS sessions FROM os AS t GROUP BY 1, 2, 3, 4) AS x) AS d
    GROUP BY step, bucket, ms, variant HAVING sum(sessions * sign) <> 0
    ON CONFLICT (step, bucket, ms, variant) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions),
    u2 AS (INSERT INTO ab_report_step_buckets AS t (variant, step, bucket, sessions, sum_ms)
    SELECT variant, step, bucket, sum(sessions * sign)::bigint AS sessions, sum(sum_ms * sign) AS sum_ms FROM (SELECT *, -1 AS sign FROM (SELECT t.variant, t.step, floor(ln(t.ms + 1) * 20)::integer AS bucket,
            count(*) AS sessions, sum(t.ms::numeric) AS sum_ms FROM os AS t GROUP BY 1, 2, 3) AS x) AS d
    GROUP BY variant, step, bucket HAVING sum(sessions * sign) <> 0 OR sum(sum_ms * sign) <> 0
    ON CONFLICT (variant, step, bucket) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions, sum_ms = t.sum_ms + EXCLUDED.sum_ms),
    u3 AS (INSERT INTO ab_report_total_values AS t (bucket, total_ms, variant, sessions)
    SELECT bucket, total_ms, variant, sum(sessions * sign)::bigint AS sessions FROM (SELECT *, -1 AS sign FROM (SELECT floor(ln(t.total_ms + 1) * 20)::integer AS bucket, t.total_ms, t.variant,
            count(*) AS sessions FROM ot AS t GROUP BY 1, 2, 3) AS x) AS d
    GROUP BY bucket, total_ms, variant HAVING sum(sessions * sign) <> 0
    ON CONFLICT (bucket, total_ms, variant) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions),
    u4 AS (INSERT INTO ab_report_total_buckets AS t (variant, bucket, sessions, sum_ms, sum_sq)
    SELECT variant, bucket, sum(sessions * sign)::bigint AS sessions, sum(sum_ms * sign) AS sum_ms, sum(sum_sq * sign) AS sum_sq FROM (SELECT *, -1 AS sign FROM (SELECT t.variant, floor(ln(t.total_ms + 1) * 20)::integer AS bucket,
            count(*) AS sessions, sum(t.total_ms::numeric) AS sum_ms, sum(t.total_ms::numeric ^ 2) AS sum_sq
            FROM ot AS t GROUP BY 1, 2) AS x) AS d
    GROUP BY variant, bucket HAVING sum(sessions * sign) <> 0 OR sum(sum_ms * sign) <> 0 OR sum(sum_sq * sign) <> 0
    ON CONFLICT (variant, bucket) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions, sum_ms = t.sum_ms + EXCLUDED.sum_ms, sum_sq = t.sum_sq + EXCLUDED.sum_sq),
    u5 AS (INSERT INTO ab_report_survival AS t (variant, done, seconds, sessions)
    SELECT variant, done, seconds, sum(sessions * sign)::bigint AS sessions FROM (SELECT *, -1 AS sign FROM (SELECT c.variant, (c.completed AND c.completed_at IS NOT NULL) AS done, ceil(greatest(extract(epoch FROM
    CASE WHEN (c.completed AND c.completed_at IS NOT NULL) THEN c.completed_at ELSE c.last_event_at END - COALESCE(c.assigned_at, c.first_event_at)), 0))::bigint AS seconds,
            count(*) AS sessions FROM oc AS c WHERE c.status = 'analysed' GROUP BY 1, 2, 3) AS x) AS d
    GROUP BY variant, done, seconds HAVING sum(sessions * sign) <> 0
    ON CONFLICT (variant, done, seconds) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions),
    u6 AS (INSERT INTO ab_report_daily AS t (variant, day, assigned, completed)
    SELECT variant, day, sum(assigned * sign)::bigint AS assigned, sum(completed * sign)::bigint AS completed FROM (SELECT *, -1 AS sign FROM (SELECT c.variant, (COALESCE(c.assigned_at, c.first_event_at) AT TIME ZONE 'UTC')::date AS day,
            count(*) AS assigned, count(*) FILTER (WHERE c.completed) AS completed
            FROM oc AS c WHERE c.status = 'analysed' GROUP BY 1, 2) AS x) AS d
    GROUP BY variant, day HAVING sum(assigned * sign) <> 0 OR sum(completed * sign) <> 0
    ON CONFLICT (variant, day) DO UPDATE SET assigned = t.assigned + EXCLUDED.assigned, completed = t.completed + EXCLUDED.completed)
    INSERT INTO ab_report_loss AS t (variant, sessions, stored, n, lost, expected, lost_sq, expected_sq, lost_expected)
    SELECT variant, sum(sessions * sign)::bigint AS sessions, sum(stored * sign)::bigint AS stored, sum(n * sign)::bigint AS n, sum(lost * sign)::bigint AS lost, sum(expected * sign)::bigint AS expected, sum(lost_sq * sign) AS lost_sq, sum(expected_sq * sign) AS expected_sq, sum(lost_expected * sign) AS lost_expected FROM (SELECT *, -1 AS sign FROM (SELECT c.variant, count(*) AS sessions, sum(c.events)::bigint AS stored,
            count(c.seq_max) AS n, coalesce(sum(greatest(c.seq_max - c.seq_events, 0)::bigint), 0)::bigint AS lost,
            coalesce(sum(c.seq_max), 0)::bigint AS expected,
            coalesce(sum(greatest(c.seq_max - c.seq_events, 0)::bigint::numeric * greatest(c.seq_max - c.seq_events, 0)::bigint), 0) AS lost_sq,
            coalesce(sum(c.seq_max::numeric * c.seq_max), 0) AS expected_sq,
            coalesce(sum(greatest(c.seq_max - c.seq_events, 0)::bigint::numeric * c.seq_max), 0) AS lost_expected
            FROM oc AS c WHERE c.status = 'analysed' GROUP BY 1) AS x) AS d
    GROUP BY variant HAVING sum(sessions * sign) <> 0 OR sum(stored * sign) <> 0 OR sum(n * sign) <> 0 OR sum(lost * sign) <> 0 OR sum(expected * sign) <> 0 OR sum(lost_sq * sign) <> 0 OR sum(expected_sq * sign) <> 0 OR sum(lost_expected * sign) <> 0
    ON CONFLICT (variant) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions, stored = t.stored + EXCLUDED.stored, n = t.n + EXCLUDED.n, lost = t.lost + EXCLUDED.lost, expected = t.expected + EXCLUDED.expected, lost_sq = t.lost_sq + EXCLUDED.lost_sq, expected_sq = t.expected_sq + EXCLUDED.expected_sq, lost_expected = t.lost_expected + EXCLUDED.lost_expected;
    RETURN NULL;
END
$body$;
CREATE OR REPLACE FUNCTION ab_report_on_session_truncate() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    DELETE FROM ab_report_funnel; DELETE FROM ab_report_step_values; DELETE FROM ab_report_step_buckets; DELETE FROM ab_report_total_values; DELETE FROM ab_report_total_buckets; DELETE FROM ab_report_survival; DELETE FROM ab_report_daily; DELETE FROM ab_report_loss;
    RETURN NULL;
END
$body$;
INSERT INTO ab_report_survival (variant, done, seconds, sessions)
SELECT variant, done, seconds, sessions FROM (SELECT c.variant, (c.completed AND c.completed_at IS NOT NULL) AS done, ceil(greatest(extract(epoch FROM
    CASE WHEN (c.completed AND c.completed_at IS NOT NULL) THEN c.completed_at ELSE c.last_event_at END - COALESCE(c.assigned_at, c.first_event_at)), 0))::bigint AS seconds,
            count(*) AS sessions FROM (SELECT s.*, CASE WHEN s.min_variant <> s.max_variant THEN 'contaminated'
                     WHEN s.variant IS NULL THEN 'unassigned' ELSE 'analysed' END AS status
        FROM ab_sessions AS s) AS c WHERE c.status = 'analysed' GROUP BY 1, 2, 3) AS c;
INSERT INTO ab_report_daily (variant, day, assigned, completed)
SELECT variant, day, assigned, completed FROM (SELECT c.variant, (COALESCE(c.assigned_at, c.first_event_at) AT TIME ZONE 'UTC')::date AS day,
            count(*) AS assigned, count(*) FILTER (WHERE c.completed) AS completed
            FROM (SELECT s.*, CASE WHEN s.min_variant <> s.max_variant THEN 'contaminated'
                     WHEN s.variant IS NULL THEN 'unassigned' ELSE 'analysed' END AS status
        FROM ab_sessions AS s) AS c WHERE c.status = 'analysed' GROUP BY 1, 2) AS c;
INSERT INTO ab_report_loss (variant, sessions, stored, n, lost, expected, lost_sq, expected_sq, lost_expected)
SELECT variant, sessions, stored, n, lost, expected, lost_sq, expected_sq, lost_expected FROM (SELECT c.variant, count(*) AS sessions, sum(c.events)::bigint AS stored,
            count(c.seq_max) AS n, coalesce(sum(greatest(c.seq_max - c.seq_events, 0)::bigint), 0)::bigint AS lost,
            coalesce(sum(c.seq_max), 0)::bigint AS expected,
            coalesce(sum(greatest(c.seq_max - c.seq_events, 0)::bigint::numeric * greatest(c.seq_max - c.seq_events, 0)::bigint), 0) AS lost_sq,
            coalesce(sum(c.seq_max::numeric * c.seq_max), 0) AS expected_sq,
            coalesce(sum(greatest(c.seq_max - c.seq_events, 0)::bigint::numeric * c.seq_max), 0) AS lost_expected
            FROM (SELECT s.*, CASE WHEN s.min_variant <> s.max_variant THEN 'contaminated'
                     WHEN s.variant IS NULL THEN 'unassigned' ELSE 'analysed' END AS status
        FROM ab_sessions AS s) AS c WHERE c.status = 'analysed' GROUP BY 1) AS c;
'''

# Backwards: 0003's bodies of the same four functions (they do not name the new tables), then the tables go.
UNINSTALL_SQL = r'''
SELECT pg_advisory_xact_lock(27411234838377331);
LOCK TABLE ab_sessions IN SHARE ROW EXCLUSIVE MODE;
CREATE OR REPLACE FUNCTION ab_report_on_session_insert() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    WITH nc AS MATERIALIZED (SELECT s.*, CASE WHEN s.min_variant <> s.max_variant THEN 'contaminated'
                     WHEN s.variant IS NULL THEN 'unassigned' ELSE 'analysed' END AS status
        FROM new_sessions AS s),
    ns AS MATERIALIZED (SELECT c.variant, u.key::integer AS step, u.value::double precision AS ms
        FROM nc AS c CROSS JOIN LATERAL jsonb_each_text(c.step_ms) AS u
        WHERE c.status = 'analysed'),
    nt AS MATERIALIZED (SELECT c.variant,
            (SELECT sum(u.value::numeric) FROM jsonb_each_text(c.step_ms) AS u)::double precision AS total_ms
        FROM nc AS c
        WHERE c.status = 'analysed' AND c.completed AND c.step_ms IS NOT NULL),
    u0 AS (INSERT INTO ab_report_funnel AS t (status, variant, max_step, abandoned_step, min_step, sessions, events, started, completed, abandoned)
    SELECT status, variant, max_step, abandoned_step, min_step, sum(sessions * sign)::bigint AS sessions, sum(events * sign)::bigint AS events, sum(started * sign)::bigint AS started, sum(completed * sign)::bigint AS completed, sum(abandoned * sign)::bigint AS abandoned FROM (SELECT *, 1 AS sign FROM (SELECT c.status, coalesce(c.variant, '') AS variant,
            coalesce(c.max_step, -1) AS max_step, coalesce(c.abandoned_step, -1) AS abandoned_step,
            coalesce(c.min_step, -1) AS min_step,
            count(*) AS sessions, sum(c.events)::bigint AS events, count(*) FILTER (WHERE c.started) AS started,
            count(*) FILTER (WHERE c.completed) AS completed, count(*) FILTER (WHERE c.abandoned) AS abandoned
            FROM nc AS c GROUP BY 1, 2, 3, 4, 5) AS x) AS d
    GROUP BY status, variant, max_step, abandoned_step, min_step HAVING sum(sessions * sign) <> 0 OR sum(events * sign) <> 0 OR sum(started * sign) <> 0 OR sum(completed * sign) <> 0 OR sum(abandoned * sign) <> 0
    ON CONFLICT (status, variant, max_step, abandoned_step, min_step) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions, events = t.events + EXCLUDED.events, started = t.started + EXCLUDED.started, completed = t.completed + EXCLUDED.completed, abandoned = t.abandoned + EXCLUDED.abandoned),
    u1 AS (INSERT INTO ab_report_step_values AS t (step, bucket, ms, variant, sessions)
    SELECT step, bucket, ms, variant, sum(sessions * sign)::bigint AS sessions FROM (SELECT *, 1 AS sign FROM (SELECT t.step, floor(ln(t.ms + 1) * 20)::integer AS bucket, t.ms, t.variant,
            count(*) AS sessions FROM ns AS t GROUP BY 1, 2, 3, 4) AS x) AS d
    GROUP BY step, bucket, ms, variant HAVING sum(sessions * sign) <> 0
    ON CONFLICT (step, bucket, ms, variant) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions),
    u2 AS (INSERT INTO ab_report_step_buckets AS t (variant, step, bucket, sessions, sum_ms)
    SELECT variant, step, bucket, sum(sessions * sign)::bigint AS sessions, sum(sum_ms * sign) AS sum_ms FROM (SELECT *, 1 AS sign FROM (SELECT t.variant, t.step, floor(ln(t.ms + 1) * 20)::integer AS bucket,
            count(*) AS sessions, sum(t.ms::numeric) AS sum_ms FROM ns AS t GROUP BY 1, 2, 3) AS x) AS d
    GROUP BY variant, step, bucket HAVING sum(sessions * sign) <> 0 OR sum(sum_ms * sign) <> 0
    ON CONFLICT (variant, step, bucket) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions, sum_ms = t.sum_ms + EXCLUDED.sum_ms),
    u3 AS (INSERT INTO ab_report_total_values AS t (bucket, total_ms, variant, sessions)
    SELECT bucket, total_ms, variant, sum(sessions * sign)::bigint AS sessions FROM (SELECT *, 1 AS sign FROM (SELECT floor(ln(t.total_ms + 1) * 20)::integer AS bucket, t.total_ms, t.variant,
            count(*) AS sessions FROM nt AS t GROUP BY 1, 2, 3) AS x) AS d
    GROUP BY bucket, total_ms, variant HAVING sum(sessions * sign) <> 0
    ON CONFLICT (bucket, total_ms, variant) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions)
    INSERT INTO ab_report_total_buckets AS t (variant, bucket, sessions, sum_ms, sum_sq)
    SELECT variant, bucket, sum(sessions * sign)::bigint AS sessions, sum(sum_ms * sign) AS sum_ms, sum(sum_sq * sign) AS sum_sq FROM (SELECT *, 1 AS sign FROM (SELECT t.variant, floor(ln(t.total_ms + 1) * 20)::integer AS bucket,
            count(*) AS sessions, sum(t.total_ms::numeric) AS sum_ms, sum(t.total_ms::numeric ^ 2) AS sum_sq
            FROM nt AS t GROUP BY 1, 2) AS x) AS d
    GROUP BY variant, bucket HAVING sum(sessions * sign) <> 0 OR sum(sum_ms * sign) <> 0 OR sum(sum_sq * sign) <> 0
    ON CONFLICT (variant, bucket) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions, sum_ms = t.sum_ms + EXCLUDED.sum_ms, sum_sq = t.sum_sq + EXCLUDED.sum_sq;
    RETURN NULL;
END
$body$;
CREATE OR REPLACE FUNCTION ab_report_on_session_update() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    WITH nc AS MATERIALIZED (SELECT s.*, CASE WHEN s.min_variant <> s.max_variant THEN 'contaminated'
                     WHEN s.variant IS NULL THEN 'unassigned' ELSE 'analysed' END AS status
        FROM new_sessions AS s),
    ns AS MATERIALIZED (SELECT c.variant, u.key::integer AS step, u.value::double precision AS ms
        FROM nc AS c CROSS JOIN LATERAL jsonb_each_text(c.step_ms) AS u
        WHERE c.status = 'analysed'),
    nt AS MATERIALIZED (SELECT c.variant,
            (SELECT sum(u.value::numeric) FROM jsonb_each_text(c.step_ms) AS u)::double precision AS total_ms
        FROM nc AS c
        WHERE c.status = 'analysed' AND c.completed AND c.step_ms IS NOT NULL),
    oc AS MATERIALIZED (SELECT s.*, CASE WHEN s.min_variant <> s.max_variant THEN 'contaminated'
                     WHEN s.variant IS NULL THEN 'unassigned' ELSE 'analysed' END AS status
        FROM old_sessions AS s),
    os AS MATERIALIZED (SELECT c.variant, u.key::integer AS step, u.value::double precision AS ms
        FROM oc AS c CROSS JOIN LATERAL jsonb_each_text(c.step_ms) AS u
        WHERE c.status = 'analysed'),
    ot AS MATERIALIZED (SELECT c.variant,
            (SELECT sum(u.value::numeric) FROM jsonb_each_text(c.step_ms) AS u)::double precision AS total_ms
        FROM oc AS c
        WHERE c.status = 'analysed' AND c.completed AND c.step_ms IS NOT NULL),
    u0 AS (INSERT INTO ab_report_funnel AS t (status, variant, max_step, abandoned_step, min_step, sessions, events, started, completed, abandoned)
    SELECT status, variant, max_step, abandoned_step, min_step, sum(sessions * sign)::bigint AS sessions, sum(events * sign)::bigint AS events, sum(started * sign)::bigint AS started, sum(completed * sign)::bigint AS completed, sum(abandoned * sign)::bigint AS abandoned FROM (SELECT *, 1 AS sign FROM (SELECT c.status, coalesce(c.variant, '') AS variant,
            coalesce(c.max_step, -1) AS max_step, coalesce(c.abandoned_step, -1) AS abandoned_step,
            coalesce(c.min_step, -1) AS min_step,
            count(*) AS sessions, sum(c.events)::bigint AS events, count(*) FILTER (WHERE c.started) AS started,
            count(*) FILTER (WHERE c.completed) AS completed, count(*) FILTER (WHERE c.abandoned) AS abandoned
            FROM nc AS c GROUP BY 1, 2, 3, 4, 5) AS x UNION ALL SELECT *, -1 AS sign FROM (SELECT c.status, coalesce(c.variant, '') AS variant,
            coalesce(c.max_step, -1) AS max_step, coalesce(c.abandoned_step, -1) AS abandoned_step,
            coalesce(c.min_step, -1) AS min_step,
            count(*) AS sessions, sum(c.events)::bigint AS events, count(*) FILTER (WHERE c.started) AS started,
            count(*) FILTER (WHERE c.completed) AS completed, count(*) FILTER (WHERE c.abandoned) AS abandoned
            FROM oc AS c GROUP BY 1, 2, 3, 4, 5) AS x) AS d
    GROUP BY status, variant, max_step, abandoned_step, min_step HAVING sum(sessions * sign) <> 0 OR sum(events * sign) <> 0 OR sum(started * sign) <> 0 OR sum(completed * sign) <> 0 OR sum(abandoned * sign) <> 0
    ON CONFLICT (status, variant, max_step, abandoned_step, min_step) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions, events = t.events + EXCLUDED.events, started = t.started + EXCLUDED.started, completed = t.completed + EXCLUDED.completed, abandoned = t.abandoned + EXCLUDED.abandoned),
    u1 AS (INSERT INTO ab_report_step_values AS t (step, bucket, ms, variant, sessions)
    SELECT step, bucket, ms, variant, sum(sessions * sign)::bigint AS sessions FROM (SELECT *, 1 AS sign FROM (SELECT t.step, floor(ln(t.ms + 1) * 20)::integer AS bucket, t.ms, t.variant,
            count(*) AS sessions FROM ns AS t GROUP BY 1, 2, 3, 4) AS x UNION ALL SELECT *, -1 AS sign FROM (SELECT t.step, floor(ln(t.ms + 1) * 20)::integer AS bucket, t.ms, t.variant,
            count(*) AS sessions FROM os AS t GROUP BY 1, 2, 3, 4) AS x) AS d
    GROUP BY step, bucket, ms, variant HAVING sum(sessions * sign) <> 0
    ON CONFLICT (step, bucket, ms, variant) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions),
    u2 AS (INSERT INTO ab_report_step_buckets AS t (variant, step, bucket, sessions, sum_ms)
    SELECT variant, step, bucket, sum(sessions * sign)::bigint AS sessions, sum(sum_ms * sign) AS sum_ms FROM (SELECT *, 1 AS sign FROM (SELECT t.variant, t.step, floor(ln(t.ms + 1) * 20)::integer AS bucket,
            count(*) AS sessions, sum(t.ms::numeric) AS sum_ms FROM ns AS t GROUP BY 1, 2, 3) AS x UNION ALL SELECT *, -1 AS sign FROM (SELECT t.variant, t.step, floor(ln(t.ms + 1) * 20)::integer AS bucket,
            count(*) AS sessions, sum(t.ms::numeric) AS sum_ms FROM os AS t GROUP BY 1, 2, 3) AS x) AS d
    GROUP BY variant, step, bucket HAVING sum(sessions * sign) <> 0 OR sum(sum_ms * sign) <> 0
    ON CONFLICT (variant, step, bucket) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions, sum_ms = t.sum_ms + EXCLUDED.sum_ms),
    u3 AS (INSERT INTO ab_report_total_values AS t (bucket, total_ms, variant, sessions)
    SELECT bucket, total_ms, variant, sum(sessions * sign)::bigint AS sessions FROM (SELECT *, 1 AS sign FROM (SELECT floor(ln(t.total_ms + 1) * 20)::integer AS bucket, t.total_ms, t.variant,
            count(*) AS sessions FROM nt AS t GROUP BY 1, 2, 3) AS x UNION ALL SELECT *, -1 AS sign FROM (SELECT floor(ln(t.total_ms + 1) * 20)::integer AS bucket, t.total_ms, t.variant,
            count(*) AS sessions FROM ot AS t GROUP BY 1, 2, 3) AS x) AS d
    GROUP BY bucket, total_ms, variant HAVING sum(sessions * sign) <> 0
    ON CONFLICT (bucket, total_ms, variant) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions)
    INSERT INTO ab_report_total_buckets AS t (variant, bucket, sessions, sum_ms, sum_sq)
    SELECT variant, bucket, sum(sessions * sign)::bigint AS sessions, sum(sum_ms * sign) AS sum_ms, sum(sum_sq * sign) AS sum_sq FROM (SELECT *, 1 AS sign FROM (SELECT t.variant, floor(ln(t.total_ms + 1) * 20)::integer AS bucket,
            count(*) AS sessions, sum(t.total_ms::numeric) AS sum_ms, sum(t.total_ms::numeric ^ 2) AS sum_sq
            FROM nt AS t GROUP BY 1, 2) AS x UNION ALL SELECT *, -1 AS sign FROM (SELECT t.variant, floor(ln(t.total_ms + 1) * 20)::integer AS bucket,
            count(*) AS sessions, sum(t.total_ms::numeric) AS sum_ms, sum(t.total_ms::numeric ^ 2) AS sum_sq
            FROM ot AS t GROUP BY 1, 2) AS x) AS d
    GROUP BY variant, bucket HAVING sum(sessions * sign) <> 0 OR sum(sum_ms * sign) <> 0 OR sum(sum_sq * sign) <> 0
    ON CONFLICT (variant, bucket) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions, sum_ms = t.sum_ms + EXCLUDED.sum_ms, sum_sq = t.sum_sq + EXCLUDED.sum_sq;
    RETURN NULL;
END
$body$;
CREATE OR REPLACE FUNCTION ab_report_on_session_delete() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    WITH oc AS MATERIALIZED (SELECT s.*, CASE WHEN s.min_variant <> s.max_variant THEN 'contaminated'
                     WHEN s.variant IS NULL THEN 'unassigned' ELSE 'analysed' END AS status
        FROM old_sessions AS s),
    os AS MATERIALIZED (SELECT c.variant, u.key::integer AS step, u.value::double precision AS ms
        FROM oc AS c CROSS JOIN LATERAL jsonb_each_text(c.step_ms) AS u
        WHERE c.status = 'analysed'),
    ot AS MATERIALIZED (SELECT c.variant,
            (SELECT sum(u.value::numeric) FROM jsonb_each_text(c.step_ms) AS u)::double precision AS total_ms
        FROM oc AS c
        WHERE c.status = 'analysed' AND c.completed AND c.step_ms IS NOT NULL),
    u0 AS (INSERT INTO ab_report_funnel AS t (status, variant, max_step, abandoned_step, min_step, sessions, events, started, completed, abandoned)
    SELECT status, variant, max_step, abandoned_step, min_step, sum(sessions * sign)::bigint AS sessions, sum(events * sign)::bigint AS events, sum(started * sign)::bigint AS started, sum(completed * sign)::bigint AS completed, sum(abandoned * sign)::bigint AS abandoned FROM (SELECT *, -1 AS sign FROM (SELECT c.status, coalesce(c.variant, '') AS variant,
            coalesce(c.max_step, -1) AS max_step, coalesce(c.abandoned_step, -1) AS abandoned_step,
            coalesce(c.min_step, -1) AS min_step,
            count(*) AS sessions, sum(c.events)::bigint AS events, count(*) FILTER (WHERE c.started) AS started,
            count(*) FILTER (WHERE c.completed) AS completed, count(*) FILTER (WHERE c.abandoned) AS abandoned
            FROM oc AS c GROUP BY 1, 2, 3, 4, 5) AS x) AS d
    GROUP BY status, variant, max_step, abandoned_step, min_step HAVING sum(sessions * sign) <> 0 OR sum(events * sign) <> 0 OR sum(started * sign) <> 0 OR sum(completed * sign) <> 0 OR sum(abandoned * sign) <> 0
    ON CONFLICT (status, variant, max_step, abandoned_step, min_step) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions, events = t.events + EXCLUDED.events, started = t.started + EXCLUDED.started, completed = t.completed + EXCLUDED.completed, abandoned = t.abandoned + EXCLUDED.abandoned),
    u1 AS (INSERT INTO ab_report_step_values AS t (step, bucket, ms, variant, sessions)
    SELECT step, bucket, ms, variant, sum(sessions * sign)::bigint AS sessions FROM (SELECT *, -1 AS sign FROM (SELECT t.step, floor(ln(t.ms + 1) * 20)::integer AS bucket, t.ms, t.variant,
            count(*) AS sessions FROM os AS t GROUP BY 1, 2, 3, 4) AS x) AS d
    GROUP BY step, bucket, ms, variant HAVING sum(sessions * sign) <> 0
    ON CONFLICT (step, bucket, ms, variant) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions),
    u2 AS (INSERT INTO ab_report_step_buckets AS t (variant, step, bucket, sessions, sum_ms)
    SELECT variant, step, bucket, sum(sessions * sign)::bigint AS sessions, sum(sum_ms * sign) AS sum_ms FROM (SELECT *, -1 AS sign FROM (SELECT t.variant, t.step, floor(ln(t.ms + 1) * 20)::integer AS bucket,
            count(*) AS sessions, sum(t.ms::numeric) AS sum_ms FROM os AS t GROUP BY 1, 2, 3) AS x) AS d
    GROUP BY variant, step, bucket HAVING sum(sessions * sign) <> 0 OR sum(sum_ms * sign) <> 0
    ON CONFLICT (variant, step, bucket) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions, sum_ms = t.sum_ms + EXCLUDED.sum_ms),
    u3 AS (INSERT INTO ab_report_total_values AS t (bucket, total_ms, variant, sessions)
    SELECT bucket, total_ms, variant, sum(sessions * sign)::bigint AS sessions FROM (SELECT *, -1 AS sign FROM (SELECT floor(ln(t.total_ms + 1) * 20)::integer AS bucket, t.total_ms, t.variant,
            count(*) AS sessions FROM ot AS t GROUP BY 1, 2, 3) AS x) AS d
    GROUP BY bucket, total_ms, variant HAVING sum(sessions * sign) <> 0
    ON CONFLICT (bucket, total_ms, variant) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions)
    INSERT INTO ab_report_total_buckets AS t (variant, bucket, sessions, sum_ms, sum_sq)
    SELECT variant, bucket, sum(sessions * sign)::bigint AS sessions, sum(sum_ms * sign) AS sum_ms, sum(sum_sq * sign) AS sum_sq FROM (SELECT *, -1 AS sign FROM (SELECT t.variant, floor(ln(t.total_ms + 1) * 20)::integer AS bucket,
            count(*) AS sessions, sum(t.total_ms::numeric) AS sum_ms, sum(t.total_ms::numeric ^ 2) AS sum_sq
            FROM ot AS t GROUP BY 1, 2) AS x) AS d
    GROUP BY variant, bucket HAVING sum(sessions * sign) <> 0 OR sum(sum_ms * sign) <> 0 OR sum(sum_sq * sign) <> 0
    ON CONFLICT (variant, bucket) DO UPDATE SET sessions = t.sessions + EXCLUDED.sessions, sum_ms = t.sum_ms + EXCLUDED.sum_ms, sum_sq = t.sum_sq + EXCLUDED.sum_sq;
    RETURN NULL;
END
$body$;
CREATE OR REPLACE FUNCTION ab_report_on_session_truncate() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    DELETE FROM ab_report_funnel; DELETE FROM ab_report_step_values; DELETE FROM ab_report_step_buckets; DELETE FROM ab_report_total_values; DELETE FROM ab_report_total_buckets;
    RETURN NULL;
END
$body$;
DROP TABLE IF EXISTS ab_report_survival, ab_report_daily, ab_report_loss;
'''


class Migration(migrations.Migration):

    dependencies = [
        ("front", "0006_absession_seq"),
    ]

    operations = [
        migrations.RunSQL(INSTALL_SQL, UNINSTALL_SQL),
    ]
