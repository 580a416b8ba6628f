-- Nexmark q6: the average selling price of each seller's last ten closed auctions (the
-- winning bid of each auction, then a sliding average over the seller's auctions).
CREATE SOURCE auction WITH (connector = 'nexmark', nexmark.table.type = 'auction', nexmark.event.num = '10000', nexmark.min.event.gap.in.ns = '0');
CREATE SOURCE bid WITH (connector = 'nexmark', nexmark.table.type = 'bid', nexmark.event.num = '10000', nexmark.min.event.gap.in.ns = '0');
CREATE MATERIALIZED VIEW nexmark_q6 AS
SELECT seller, id, avg(final) OVER (PARTITION BY seller ORDER BY date_time, id
                                    ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) AS avg_final
FROM (SELECT a.id, a.seller, b.price AS final, b.date_time,
             row_number() OVER (PARTITION BY a.id ORDER BY b.price DESC, b.date_time, b.bidder) AS rn
      FROM auction a JOIN bid b ON a.id = b.auction
      WHERE b.date_time BETWEEN a.date_time AND a.expires) winners
WHERE rn = 1;
