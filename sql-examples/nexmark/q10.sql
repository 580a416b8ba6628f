-- Nexmark q10: bids with their day and hour:minute as text (the query writes them to a
-- partitioned file system in Flink; here, to a view), with built-in functions.
CREATE SOURCE bid WITH (connector = 'nexmark', nexmark.table.type = 'bid', nexmark.event.num = '10000', nexmark.min.event.gap.in.ns = '0');
CREATE MATERIALIZED VIEW nexmark_q10 AS
SELECT auction, bidder, price, date_time,
       CAST(CAST(date_time AS date) AS varchar) AS dt,
       lpad(CAST(CAST(extract(hour FROM date_time) AS int) AS varchar), 2, '0') || ':' ||
       lpad(CAST(CAST(extract(minute FROM date_time) AS int) AS varchar), 2, '0') AS hm
FROM bid;
