-- Nexmark q12: how many bids each user made in each 10-second window of processing time
-- (when the bids reached Millrace, not when they were made).
-- Which window a bid lands in depends on when the query ran, so the benchmark checks what
-- cannot depend on it: every bid is counted once, for its bidder.
-- verify view: SELECT bidder, sum(bid_count) AS bids FROM nexmark_q12 GROUP BY bidder
-- verify oracle: SELECT bidder, count(*) AS bids FROM bid GROUP BY bidder
CREATE SOURCE bid INCLUDE proctime AS p_time WITH (connector = 'nexmark', nexmark.table.type = 'bid', nexmark.event.num = '10000', nexmark.min.event.gap.in.ns = '0');
CREATE MATERIALIZED VIEW nexmark_q12 AS
SELECT bidder, count(*) AS bid_count, window_start AS starttime, window_end AS endtime
FROM TUMBLE(bid, p_time, INTERVAL '10' SECOND)
GROUP BY bidder, window_start, window_end;
