requests = [dict(method="GET", target=b"/a/b%20c?x=1&y=%2F", raw_path=b"/a/b%20c", query_string=b"x=1&y=%2F",
                 headers=[(b"host", b"example.com"), (b"user-agent", b"curl/8"), (b"accept", b"*/*")])]
