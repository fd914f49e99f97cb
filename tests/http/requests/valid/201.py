requests = [dict(headers=[(b'host', b'a'), (b'x', b'abc'), (b'y', b'd e')])]
# trailing whitespace is not part of a field value (RFC 9112 5.1).
