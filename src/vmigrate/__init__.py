"""vmigrate: live-migrate virtual machines and measure what the migration costs."""

__version__ = "0.1.0"
