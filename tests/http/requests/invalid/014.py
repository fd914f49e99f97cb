status = 400
# obs-fold (RFC 9112 5.2).
