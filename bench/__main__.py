"""`make bench`: run every benchmark and print its table."""

from bench import calibration, measurement, outage, planner, turnaround

if __name__ == "__main__":
    measurement.main()
    turnaround.main()
    outage.main()
    calibration.main()
    planner.main()
