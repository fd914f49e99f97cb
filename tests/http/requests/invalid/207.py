status = 400
reason = 'Host'
# Host with a non-numeric port.
