-- Session settings that make every value's text rendering independent of the
-- client and the server's defaults, so two describes of equal data compare equal.
SET TimeZone = 'UTC';
SET DateStyle = 'ISO, YMD';
SET IntervalStyle = 'postgres';
SET extra_float_digits = 1;
SET bytea_output = 'hex';
