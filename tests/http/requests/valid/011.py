# Upgrade: h2c is never honoured: served as plain HTTP/1.1, then parsing continues.
requests = [dict(raw_path=b"/", upgrade=None), dict(raw_path=b"/next")]
