status = 400
reason = 'Host'
# Host with an unclosed IP literal.
