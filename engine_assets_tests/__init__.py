"""Tests of the engine_assets code location."""
