"""The performance gate's own guards and the proofs that each guard can fail."""
