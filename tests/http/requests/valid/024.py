requests = [dict(expect_continue=False)]
