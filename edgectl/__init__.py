"""The top: the `edgectl` command (``cli``) and the Flask app factory (``app``) that mounts every
surface. Nothing below imports it."""
