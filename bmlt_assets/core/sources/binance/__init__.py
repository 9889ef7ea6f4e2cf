"""Binance: its book-sync rules for raw depth streams (``sync``), the live recorder on ccxt.pro
(``recorder``) and the errors both share with the ``binance`` resource (``errors``)."""
