requests = [dict(method="POST", body=b"hi"), dict(raw_path=b"/next")]
