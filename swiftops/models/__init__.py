"""Models that swiftops generates itself (tiny random chat models for tests and demos)."""
