status = 400
reason = 'authority'
# an absolute-form target without a host (RFC 9110 4.2.1).
