# Only GET upgrades to WebSocket; this one is plain HTTP with its body.
requests = [dict(method="POST", upgrade=None, body=b"ok")]
