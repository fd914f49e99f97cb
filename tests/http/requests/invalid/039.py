status = 501
# Methods are case-sensitive tokens.
