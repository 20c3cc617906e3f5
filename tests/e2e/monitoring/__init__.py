"""The live monitoring test's support: the shipped Prometheus and Alertmanager configuration
rendered for loopback ports and short test intervals, the two servers as processes, a webhook
receiver, the alert timeline and the dashboard's panel queries."""
