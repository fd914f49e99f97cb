status = 400
reason = 'Host'
# Host with userinfo.
