"""Turning off OpenSSL's server-side TLS session cache, which Python's ssl module cannot.

A resumed TLS session skips the handshake, and with it the client certificate check: a
session made while one client CA was trusted would outlive a reload that trusts another.
``OP_NO_TICKET`` and ``num_tickets = 0`` stop session tickets (TLS 1.2 and 1.3), but a TLS
1.2 server also keeps each session in its context's cache, by session ID, for two hours,
and ``ssl.SSLContext`` has no setter for OpenSSL's ``SSL_CTX_set_session_cache_mode``.

:func:`disable_session_cache` calls it through ctypes: on the ``SSL_CTX`` pointer that
CPython's ``_ssl`` keeps as the first field after the object header of every
``SSLContext`` (``PySSLContext``, unchanged since Python 2.7), in the libssl that
``_ssl`` itself is linked with. It reads the mode first and goes on only if that is
OpenSSL's default for a server, so a pointer that is not an ``SSL_CTX`` is never written
to; where any of this is missing it returns False and the caller falls back to refusing
old sessions (:class:`exporter.webconfig.TlsSwitch`).
"""

from __future__ import annotations

import ctypes
import logging
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import ssl

log = logging.getLogger(__name__)

# openssl/ssl.h: SSL_CTX_get/set_session_cache_mode are macros over SSL_CTX_ctrl.
_CTRL_SET_SESS_CACHE_MODE: Final = 44
_CTRL_GET_SESS_CACHE_MODE: Final = 45
_SESS_CACHE_OFF: Final = 0x0
_SESS_CACHE_SERVER: Final = 0x2  # the default of every SSL_CTX


def disable_session_cache(context: ssl.SSLContext) -> bool:
    """Turn off ``context``'s session cache; True if it is off now."""
    ctrl = _ssl_ctx_ctrl()
    if ctrl is None:
        return False
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer:
        return False
    mode = ctrl(pointer, _CTRL_GET_SESS_CACHE_MODE, 0, None)
    if mode == _SESS_CACHE_OFF:
        return True
    if mode != _SESS_CACHE_SERVER:
        log.debug("unexpected TLS session cache mode %#x: left as it is", mode)
        return False
    ctrl(pointer, _CTRL_SET_SESS_CACHE_MODE, _SESS_CACHE_OFF, None)
    return bool(ctrl(pointer, _CTRL_GET_SESS_CACHE_MODE, 0, None) == _SESS_CACHE_OFF)


def _ssl_ctx_ctrl() -> ctypes._NamedFuncPointer | None:
    try:
        import _ssl

        # dlsym on _ssl's handle also searches the libraries it was linked with.
        ctrl = ctypes.CDLL(_ssl.__file__).SSL_CTX_ctrl
    except (ImportError, AttributeError, OSError):
        return None
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    ctrl.restype = ctypes.c_long
    return ctrl
