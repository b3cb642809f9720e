"""Team scale: the shared stack (PostgreSQL, S3, MLflow server) and the service fleet behind HAProxy,
as plain processes on loopback ports, started and stopped by PID."""
