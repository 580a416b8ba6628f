-- Nexmark q4: the average closing price of each category (the highest bid of each
-- auction while it was open, averaged per category).
CREATE SOURCE auction WITH (connector = 'nexmark', nexmark.table.type = 'auction', nexmark.event.num = '10000', nexmark.min.event.gap.in.ns = '0');
CREATE SOURCE bid WITH (connector = 'nexmark', nexmark.table.type = 'bid', nexmark.event.num = '10000', nexmark.min.event.gap.in.ns = '0');
CREATE MATERIALIZED VIEW nexmark_q4 AS
SELECT q.category, avg(q.final) AS avg_final
FROM (SELECT max(b.price) AS final, a.category
      FROM auction a JOIN bid b ON a.id = b.auction
      WHERE b.date_time BETWEEN a.date_time AND a.expires
      GROUP BY a.id, a.category) q
GROUP BY q.category;
