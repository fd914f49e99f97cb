status = 501
reason = 'gzip'
# the same over two Transfer-Encoding fields.
