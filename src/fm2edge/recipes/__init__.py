"""Recipes shipped with fm2edge (the demo)."""
