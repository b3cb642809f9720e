"""Batch scoring of files with the packaged champion, under the service's record rules."""
