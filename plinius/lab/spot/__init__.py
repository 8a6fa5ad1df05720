"""Spot-market replay: price traces, the bid rule, and what an interrupted run costs."""
