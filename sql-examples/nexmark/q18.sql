-- Nexmark q18: each bidder's last bid on each auction (deduplication). Bids at the same
-- time are told apart by their other columns, so that the result is exact.
CREATE SOURCE bid WITH (connector = 'nexmark', nexmark.table.type = 'bid', nexmark.event.num = '10000', nexmark.min.event.gap.in.ns = '0');
CREATE MATERIALIZED VIEW nexmark_q18 AS
SELECT auction, bidder, price, channel, url, date_time, extra
FROM (SELECT auction, bidder, price, channel, url, date_time, extra,
             row_number() OVER (PARTITION BY bidder, auction
                                ORDER BY date_time DESC, price DESC, channel, url, extra) AS rank_number
      FROM bid) t
WHERE rank_number <= 1;
