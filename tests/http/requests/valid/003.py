requests = [dict(method="POST", raw_path=b"/upload", body=b"hello world")]
