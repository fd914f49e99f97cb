requests = [dict(expect_continue=True, body=b"hi")]
