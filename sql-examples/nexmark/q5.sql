-- Nexmark q5: the auctions with the most bids in each 10-second window sliding every 2 seconds.
CREATE SOURCE bid (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) WITH (connector = 'nexmark', nexmark.table.type = 'bid', nexmark.event.num = '10000', nexmark.min.event.gap.in.ns = '0');
CREATE MATERIALIZED VIEW nexmark_q5 AS
SELECT a.auction, a.num, m.max_num, a.window_start, a.window_end
FROM (SELECT auction, count(*) AS num, window_start, window_end
      FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
      GROUP BY auction, window_start, window_end) a
JOIN (SELECT max(num) AS max_num, window_start, window_end
      FROM (SELECT auction, count(*) AS num, window_start, window_end
            FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
            GROUP BY auction, window_start, window_end) c
      GROUP BY window_start, window_end) m
  ON a.window_start = m.window_start AND a.window_end = m.window_end
WHERE a.num >= m.max_num;
