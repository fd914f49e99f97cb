status = 400
reason = 'fragment'
# a fragment in the target (RFC 9112 3.2.1).
