# Pipelined: answered in order, each after the previous response.
requests = [dict(raw_path=b"/1"), dict(raw_path=b"/2", body=b"abc"), dict(raw_path=b"/3")]
