-- The server's clock (recovery targets are compared with commit times of this clock).
SELECT clock_timestamp();
