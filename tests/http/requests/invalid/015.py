status = 400
# Bare LF line ends.
