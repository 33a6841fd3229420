"""LeanBoard: the browser face of leantune (`leantune webui`)."""
