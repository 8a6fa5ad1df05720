"""Experiments with real process kills: random crashes (Fig. 9) and spot markets (Fig. 10)."""
