# absolute-form (RFC 9112 3.2.2): path and query come from the URL.
requests = [dict(target=b"http://example.com/abs/path?q=1", raw_path=b"/abs/path", query_string=b"q=1")]
