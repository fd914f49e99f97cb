status = 400
reason = "target"
# absolute-form with an impossible port.
