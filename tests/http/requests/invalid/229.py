status = 501
reason = 'not implemented'
# a well-formed method llhttp does not know (RFC 9110 15.6.2: 501, not 400).
