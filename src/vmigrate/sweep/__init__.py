"""A sweep: a base scenario, a matrix of values, repetitions; on one testbed, resumable.

A SWEEP.toml names a base scenario and a matrix; every combination of matrix values is a *cell*,
every cell runs `repetitions` times, each time in a fresh VM. Every cell's scenario is validated
before the first run, so a typo refuses the whole sweep instead of failing run 17. Each run's
figures land in SWEEP_DIR/sweep.db (SQLite, one row per run, one column per scenario key and per
numeric figure), so a sweep that was interrupted resumes where it stopped and anyone can query
the results with SQL. Per cell, the headline figures get n, mean, median, stdev and a 95 %
Student-t confidence interval (SWEEP_DIR/summary.json), drawn by report/comparison.py.

```toml
name = "strategies"
repetitions = 3
base = "memory.toml"                  # or a [base] table: a scenario, as in `vmigrate run`
[matrix]
"network.bandwidth_mbit" = [100, 1000]           # any scenario key: a list of values
migration = [{ strategy = "precopy" },           # a section: a list of tables, for values
             { strategy = "multifd", multifd_compression = "zstd" }]   # that go together
```

plan.py reads SWEEP.toml into cells and runs, execute.py runs them (runner.py: the real runner
on a testbed; progress.py: what the terminal shows meanwhile), database.py keeps each run in
sweep.db, summary.py turns it into summary.json (statistics from stats.py) and a table."""
