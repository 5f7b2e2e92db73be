"""Desired edge state -> HAProxy: render, validate, apply; the edge agent."""
