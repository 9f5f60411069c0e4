"""`make bench`: run every benchmark and print its table."""

from bench import calibration, drain, measurement, outage, planner, turnaround, warm_pause

if __name__ == "__main__":
    measurement.main()
    turnaround.main()
    outage.main()
    warm_pause.main()
    calibration.main()
    drain.main()
    planner.main()
