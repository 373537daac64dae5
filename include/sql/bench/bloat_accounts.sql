-- Make work for maintenance: update a share of the accounts (dead tuples, index churn).
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid %% %(every)s = 0;
