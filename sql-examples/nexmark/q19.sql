-- Nexmark q19: the ten highest bids of each auction (top-N per group). Equal prices are
-- ordered by the other columns, so that the numbering is exact.
CREATE SOURCE bid WITH (connector = 'nexmark', nexmark.table.type = 'bid', nexmark.event.num = '10000', nexmark.min.event.gap.in.ns = '0');
CREATE MATERIALIZED VIEW nexmark_q19 AS
SELECT auction, bidder, price, channel, url, date_time, extra, rank_number
FROM (SELECT auction, bidder, price, channel, url, date_time, extra,
             row_number() OVER (PARTITION BY auction
                                ORDER BY price DESC, bidder, date_time, channel, url, extra) AS rank_number
      FROM bid) t
WHERE rank_number <= 10;
