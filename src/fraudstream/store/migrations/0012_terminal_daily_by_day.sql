-- Terminal counts keyed by day first: an engine sealing a day's terminal table reads the one
-- day of counts that became final (engines/terminals.py), an index range instead of a scan of
-- every terminal's forty days; and each batch's upsert touches the current day's pages only.
ALTER TABLE terminal_daily DROP CONSTRAINT terminal_daily_pkey;
ALTER TABLE terminal_daily ADD PRIMARY KEY (day, terminal_id);
