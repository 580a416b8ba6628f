-- Nexmark q13: bids enriched from a side table (a join with a table; Flink and
-- RisingWave write it as a lookup join FOR SYSTEM_TIME AS OF PROCTIME(), which gives
-- the same rows while the table does not change).
CREATE TABLE side_input (key bigint PRIMARY KEY, value varchar);
INSERT INTO side_input SELECT g, 'value-' || g FROM generate_series(0, 9999) g;
CREATE SOURCE bid WITH (connector = 'nexmark', nexmark.table.type = 'bid', nexmark.event.num = '10000', nexmark.min.event.gap.in.ns = '0');
CREATE MATERIALIZED VIEW nexmark_q13 AS
SELECT b.auction, b.bidder, b.price, b.date_time, s.value
FROM bid b JOIN side_input s ON b.auction % 10000 = s.key;
