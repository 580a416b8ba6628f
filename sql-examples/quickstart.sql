-- Millrace quickstart: a stream of shop events from the built-in generator,
-- and the live views an analytics dashboard would read.
--
-- Start the server with this file, then watch the views change:
--   psql -h 127.0.0.1 -p 4588 -U millrace -d dev -c 'SELECT * FROM events_per_minute ORDER BY minute DESC LIMIT 5'

CREATE SOURCE IF NOT EXISTS shop_events (
    event_id bigint,
    user_id integer,
    product varchar,
    action varchar,
    amount numeric(10,2),
    ts timestamptz
) WITH (
    connector = 'datagen',
    datagen.rows.per.second = '200',
    fields.event_id.kind = 'sequence',
    fields.user_id.min = '1',
    fields.user_id.max = '500',
    fields.product.values = 'kettle,toaster,blender,mixer,grinder,juicer,scale,fryer',
    fields.action.values = 'view,view,view,view,cart,cart,purchase',
    fields.amount.min = '5',
    fields.amount.max = '250',
    fields.ts.kind = 'now'
);

-- Events per minute and action: the dashboard's traffic chart.
CREATE MATERIALIZED VIEW IF NOT EXISTS events_per_minute AS
SELECT date_trunc('minute', ts) AS minute, action, count(*) AS events
FROM shop_events
GROUP BY date_trunc('minute', ts), action;

-- Top products by revenue, with running totals since the start.
CREATE MATERIALIZED VIEW IF NOT EXISTS product_revenue AS
SELECT product, count(*) AS purchases, sum(amount) AS revenue, avg(amount) AS average_basket,
       max(amount) AS largest_order
FROM shop_events
WHERE action = 'purchase'
GROUP BY product;

-- Conversion per product: how many views turn into purchases.
CREATE MATERIALIZED VIEW IF NOT EXISTS product_funnel AS
SELECT product,
       count(*) FILTER (WHERE action = 'view') AS views,
       count(*) FILTER (WHERE action = 'cart') AS carts,
       count(*) FILTER (WHERE action = 'purchase') AS purchases,
       count(DISTINCT user_id) AS visitors
FROM shop_events
GROUP BY product;

-- Overall running totals.
CREATE MATERIALIZED VIEW IF NOT EXISTS shop_totals AS
SELECT count(*) AS events, count(DISTINCT user_id) AS users, sum(amount) FILTER (WHERE action = 'purchase') AS revenue
FROM shop_events;

-- Activity of the last five minutes: each event leaves the view five minutes
-- after it happened, with no new input (a temporal filter).
CREATE MATERIALIZED VIEW IF NOT EXISTS last_five_minutes AS
SELECT action, count(*) AS events, count(DISTINCT user_id) AS users
FROM shop_events
WHERE ts > now() - INTERVAL '5' MINUTE
GROUP BY action;
