status = 400
reason = "target"
# absolute-form without a host.
