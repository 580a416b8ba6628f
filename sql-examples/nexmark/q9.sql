-- Nexmark q9: the winning bid of each auction (the highest bid while it was open; the
-- earliest among equal ones, then the lowest bidder id, so that the result is exact).
CREATE SOURCE auction WITH (connector = 'nexmark', nexmark.table.type = 'auction', nexmark.event.num = '10000', nexmark.min.event.gap.in.ns = '0');
CREATE SOURCE bid WITH (connector = 'nexmark', nexmark.table.type = 'bid', nexmark.event.num = '10000', nexmark.min.event.gap.in.ns = '0');
CREATE MATERIALIZED VIEW nexmark_q9 AS
SELECT id, item_name, description, initial_bid, reserve, date_time, expires, seller, category,
       auction, bidder, price, bid_date_time
FROM (SELECT a.id, a.item_name, a.description, a.initial_bid, a.reserve, a.date_time, a.expires,
             a.seller, a.category, b.auction, b.bidder, b.price, b.date_time AS bid_date_time,
             row_number() OVER (PARTITION BY a.id ORDER BY b.price DESC, b.date_time, b.bidder) AS rownum
      FROM auction a JOIN bid b ON a.id = b.auction
      WHERE b.date_time BETWEEN a.date_time AND a.expires) t
WHERE rownum <= 1;
