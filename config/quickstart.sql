-- The quick-start table guarded by config/optlock.toml. Safe to run again.
CREATE TABLE IF NOT EXISTS public.optlock_demo (
    id      int PRIMARY KEY,
    item    text NOT NULL,
    qty     int NOT NULL,
    version bigint NOT NULL DEFAULT 0
);
INSERT INTO public.optlock_demo (id, item, qty)
VALUES (1, 'espresso beans 1kg', 10), (2, 'oat milk 1l', 24)
ON CONFLICT (id) DO NOTHING;
