status = 400
reason = "invalid request line"
before = [{"method": "POST", "body": b"xyz"}]
# As 232, with letters for the body (they read as part of a method) and a run of spaces.
