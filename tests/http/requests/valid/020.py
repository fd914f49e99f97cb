# A WebSocket upgrade: the bytes after the head are handed over untouched.
requests = [dict(raw_path=b"/ws", upgrade=b"websocket", remainder=b"\x81\x00")]
