"""Before a release: ``compare`` (this run against the last release's) and
``capacity`` (how far the load can rise before a target is missed)."""
