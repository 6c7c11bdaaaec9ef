# Alert rules, alerts and rollout plans arrive with the alerts issue.
