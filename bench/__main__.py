"""`make bench`: run every benchmark and print its table."""

from bench import turnaround

if __name__ == "__main__":
    turnaround.main()
