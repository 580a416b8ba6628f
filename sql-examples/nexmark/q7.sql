-- Nexmark q7: the highest bid of each 10-second tumbling window, with the bids that made it.
CREATE SOURCE bid (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) WITH (connector = 'nexmark', nexmark.table.type = 'bid', nexmark.event.num = '10000', nexmark.min.event.gap.in.ns = '0');
CREATE MATERIALIZED VIEW nexmark_q7 AS
SELECT b.auction, b.price, b.bidder, b.date_time, m.window_end
FROM bid b
JOIN (SELECT max(price) AS max_price, window_start, window_end
      FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND)
      GROUP BY window_start, window_end) m
  ON b.price = m.max_price
WHERE b.date_time >= m.window_start AND b.date_time < m.window_end;
