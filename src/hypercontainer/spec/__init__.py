"""What users ask for: pod and container specs, validated before anything is created."""
