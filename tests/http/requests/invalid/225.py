status = 400
reason = 'request line'
# two spaces before the version.
