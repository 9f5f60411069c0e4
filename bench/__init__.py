"""vmigrate benchmarks: they print figures; they never pass or fail on timing."""
