status = 400
# Methods are case-sensitive tokens.
