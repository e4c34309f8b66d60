"""Plots and reports built from run directories."""
