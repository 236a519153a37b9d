"""What SREs see and run: metrics, logs, the worker supervisor, the capacity planner, and the node's counters and
histograms that the metrics read."""
