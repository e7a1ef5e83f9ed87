"""Prometheus exporter for Cloudflare RealtimeKit livestreams."""

__version__ = "0.1.0"
