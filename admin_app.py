"""The app factory, by the name the mission fixed: it lives in ``edgectl.app``."""
from edgectl.app import create_app

__all__ = ["create_app"]
