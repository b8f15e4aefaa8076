"""The Ray engine: scans spread over a Ray cluster (optional extra `ray`)."""
