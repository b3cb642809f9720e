"""Helpers the test tiers share: processes, project copies, trained champions."""
