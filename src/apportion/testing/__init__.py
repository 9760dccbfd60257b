"""Test helpers shipped with apportion: the store conformance suite (needs the dev extra)."""
