"""Control-service plumbing: settings, process wiring, the worker loop, the CLI and the demo."""
