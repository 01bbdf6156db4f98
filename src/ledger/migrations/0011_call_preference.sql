-- The preference that routed a call (`cost` or `quality`), whether the
-- call gave its own `prefer` or took the server's setting. `calibrate`
-- reads a score near a boundary by the rule that actually routed it; rows
-- from before this column (NULL) are read by the server's current setting.
ALTER TABLE calls ADD COLUMN prefer TEXT;
