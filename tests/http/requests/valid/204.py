requests = [
    dict(headers=[(b'host', b'[2001:db8::1]:443')]),
    dict(headers=[(b'host', b'xn--bcher-kva.example:8080')]),
    dict(headers=[(b'host', b"a.b-c_d~e!$&'()*+,;=%41")]),
    dict(headers=[(b'host', b'')]),
]
# valid Host forms: IP literal, port, every reg-name character, empty (RFC 9112 3.2).
