status = 400
reason = 'Host'
# Host with a path separator.
