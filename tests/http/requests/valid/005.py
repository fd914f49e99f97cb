# Trailer fields are read and dropped (the http scope has no place for them).
requests = [dict(body=b"abc", headers=[(b"host", b"example.com"), (b"transfer-encoding", b"chunked")])]
