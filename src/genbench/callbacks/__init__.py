"""Thin Lightning callbacks over the evaluators and run bookkeeping."""
