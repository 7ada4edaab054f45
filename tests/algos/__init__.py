"""Tests for remax.algos (a package, so that test file names may repeat in other test folders)."""
