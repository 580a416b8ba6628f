-- Orders and customers: a join, an aggregate over it, and a view over that view.
CREATE TABLE customers (id integer PRIMARY KEY, name text NOT NULL, country text);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id integer NOT NULL,
    amount numeric(10,2) NOT NULL,
    placed_at timestamptz NOT NULL
);

CREATE MATERIALIZED VIEW revenue_by_country AS
SELECT c.country, count(*) AS orders, sum(o.amount) AS revenue, avg(o.amount) AS average_order,
       min(o.placed_at) AS first_order, max(o.placed_at) AS last_order
FROM orders o JOIN customers c ON o.customer_id = c.id
GROUP BY c.country;

CREATE MATERIALIZED VIEW big_markets AS
SELECT country, revenue FROM revenue_by_country WHERE revenue > 100;

INSERT INTO customers VALUES (1, 'Ann', 'FR'), (2, 'Bob', 'DE'), (3, 'Cy', 'FR');
INSERT INTO orders VALUES
    (100, 1, 80.00, TIMESTAMPTZ '2026-01-05 10:00:00+00'),
    (101, 2, 15.50, TIMESTAMPTZ '2026-01-05 11:30:00+00'),
    (102, 3, 42.25, TIMESTAMPTZ '2026-01-06 09:15:00+00');

UPDATE orders SET amount = amount * 2 WHERE customer_id = 2;
DELETE FROM orders WHERE id = 102;

SELECT * FROM revenue_by_country ORDER BY country;
SELECT * FROM big_markets;
