-- One writer transaction like pgbench's: move a random amount on a random account.
UPDATE pgbench_accounts SET abalance = abalance + %(delta)s WHERE aid = %(aid)s;
