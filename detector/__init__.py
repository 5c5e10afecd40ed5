"""churn-detector: streaming activity-churn detection for SaaS products.

The pure engine (events, state, signals, alert state machine) has no I/O; Faust, Kafka,
files and Prometheus exposition live in adapter modules around it.
"""

__version__ = "0.1.0"
