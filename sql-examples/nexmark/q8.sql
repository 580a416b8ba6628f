-- Nexmark q8: people who opened an account and an auction in the same 10-second window
-- (a window join).
CREATE SOURCE person (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) WITH (connector = 'nexmark', nexmark.table.type = 'person', nexmark.event.num = '10000', nexmark.min.event.gap.in.ns = '0');
CREATE SOURCE auction (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) WITH (connector = 'nexmark', nexmark.table.type = 'auction', nexmark.event.num = '10000', nexmark.min.event.gap.in.ns = '0');
CREATE MATERIALIZED VIEW nexmark_q8 AS
SELECT p.id, p.name, p.starttime
FROM (SELECT id, name, window_start AS starttime, window_end AS endtime
      FROM TUMBLE(person, date_time, INTERVAL '10' SECOND)
      GROUP BY id, name, window_start, window_end) p
JOIN (SELECT seller, window_start AS starttime, window_end AS endtime
      FROM TUMBLE(auction, date_time, INTERVAL '10' SECOND)
      GROUP BY seller, window_start, window_end) a
  ON p.id = a.seller AND p.starttime = a.starttime AND p.endtime = a.endtime;
