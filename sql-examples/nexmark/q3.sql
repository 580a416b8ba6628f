-- Nexmark q3: who sells in category 10 in some states (a join of auctions and sellers).
-- The generator writes state codes in lower case.
CREATE SOURCE auction WITH (connector = 'nexmark', nexmark.table.type = 'auction', nexmark.event.num = '10000', nexmark.min.event.gap.in.ns = '0');
CREATE SOURCE person WITH (connector = 'nexmark', nexmark.table.type = 'person', nexmark.event.num = '10000', nexmark.min.event.gap.in.ns = '0');
CREATE MATERIALIZED VIEW nexmark_q3 AS
SELECT p.name, p.city, p.state, a.id
FROM auction a JOIN person p ON a.seller = p.id
WHERE a.category = 10 AND (p.state = 'or' OR p.state = 'id' OR p.state = 'ca');
