"""Jobs: requests resolved into render specs, plans, durable records, and the runner loop."""
