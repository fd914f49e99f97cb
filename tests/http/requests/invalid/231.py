status = 400
reason = 'method'
# a method that is not a token.
