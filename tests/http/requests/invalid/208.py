status = 400
reason = 'Host'
# Host with a port above 65535.
