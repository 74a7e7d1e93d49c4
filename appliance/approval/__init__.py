"""Approval of intrusive scans: the question, the decision, and the wait for it (README "Approval")."""
