# An ignored upgrade with a body: the body is delivered (llhttp would skip it).
requests = [dict(method="POST", body=b"hello"), dict(raw_path=b"/next", body=b"")]
