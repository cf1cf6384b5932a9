"""The daemon at run time: the worker loop, scheduler, health endpoint, metrics and systemd."""
