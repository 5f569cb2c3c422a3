"""Plots and tables for the assets' materialization metadata in the Dagster UI."""
