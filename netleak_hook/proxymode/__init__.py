"""Proxy mode: the relay in the daemon, the proxies' handshakes, stand-in DNS."""
