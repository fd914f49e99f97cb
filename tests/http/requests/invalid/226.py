status = 400
reason = 'request line'
# extra spaces that would put an H where HTTP/ should start.
