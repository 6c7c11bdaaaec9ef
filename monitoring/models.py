# Execution records and their rollups arrive with the monitoring issue.
