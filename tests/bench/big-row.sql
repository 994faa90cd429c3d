-- bench big-rows: one 256 KiB row per transaction
SELECT repeat('x', 262144);
