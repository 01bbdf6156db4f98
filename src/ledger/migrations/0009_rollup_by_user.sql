-- One user's budget spend from the daily rollup without reading every
-- user's rows of the period.
--
-- The rollup's key starts with the day, so `day >= ? AND user_id = ?` read
-- all users' rows since the period began: 24 ms per budget check at 2,000
-- users (300k rollup rows), inside the write transaction that takes a hold.
-- Without the cost column, a call that adds to an existing rollup row does
-- not touch this index; only a user's first call of a day on a model adds
-- an entry.
CREATE INDEX calls_daily_by_user ON calls_daily (user_id, day);
