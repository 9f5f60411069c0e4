"""Draining hosts: the cluster file (cluster.py), the orders and placements a drain can follow
(order.py, placement.py), the drain simulated (planner.py) into a plan (plan.py), and the
search for the policy that finishes soonest (search.py)."""
