"""Exchange errors that core code raises and the resources share (core imports no resource)."""


class BinanceBanned(RuntimeError):
    """HTTP 418: Binance banned this IP for ignoring rate limits."""
