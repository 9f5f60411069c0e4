"""Draining hosts. Planned: the cluster file (cluster.py), the orders and placements a drain can
follow (order.py, placement.py), the drain simulated (planner.py) into a plan (plan.py), the
search for the policy that finishes soonest (search.py). Run for real on the testbed: the drain
file (drain_file.py), the planner's inputs declared or measured (inputs.py), the run
(run.py) and its policy carried out (schedule.py), the board of every guest (progress.py), the
drain's host series (series.py), its bill (bill.py, made up in account.py; schema.py)."""
