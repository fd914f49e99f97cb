status = 400
reason = 'Host'
# Host with a space (RFC 9110 7.2; Starlette BadHost advisory).
