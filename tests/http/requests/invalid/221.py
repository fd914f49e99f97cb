status = 400
reason = 'userinfo'
# userinfo in an absolute-form target (RFC 9110 4.2.4).
